//! The bounded buffer between a publisher and one slow consumer (a
//! subscriber session or a link to a peer node). A publisher never waits on
//! it: when it is full the overflow policy decides, drop the oldest message
//! (counted) or disconnect the consumer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Drop the oldest buffered message and count it (the default).
    #[default]
    DropOldest,
    /// Close the consumer; it must reconnect.
    Disconnect,
}

/// The memory a node lets all its subscribers' queues hold together. Past
/// it, a subscriber whose backlog is more than its fair share (the budget
/// over the number of queues) and is sent another message is cut off and
/// its queue emptied: a few slow consumers cannot make the node hold
/// gigabytes, and consumers that keep up (whose queues stay short) are not
/// touched. A message is charged once ([`BudgetCharge`]), however many
/// queues hold it: they share one copy.
pub struct BufferBudget {
    used: AtomicU64,
    limit: u64,
    queues: AtomicU64,
}

impl BufferBudget {
    pub fn new(limit: u64) -> Arc<BufferBudget> {
        Arc::new(BufferBudget {
            used: AtomicU64::new(0),
            limit,
            queues: AtomicU64::new(0),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn fair_share(&self) -> u64 {
        self.limit / self.queues.load(Ordering::Relaxed).max(1)
    }

    fn give_back(&self, bytes: u64) {
        // Never below zero, whatever the order of concurrent updates.
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

/// A message's bytes charged to a budget while anything holds the message:
/// made once per message and shared by every queue it is put in, given back
/// when the last holder drops it.
pub struct BudgetCharge {
    budget: Arc<BufferBudget>,
    bytes: u64,
}

impl BudgetCharge {
    pub fn new(budget: &Arc<BufferBudget>, bytes: u64) -> BudgetCharge {
        budget.used.fetch_add(bytes, Ordering::Relaxed);
        BudgetCharge {
            budget: budget.clone(),
            bytes,
        }
    }
}

impl Drop for BudgetCharge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

struct State<T> {
    /// Items with the bytes each is counted for.
    items: VecDeque<(T, u64)>,
    bytes: u64,
    /// Dropped since the consumer last looked.
    dropped: u64,
    closed: bool,
}

/// How much a queue may hold.
#[derive(Clone)]
pub struct QueueLimits {
    /// Most items.
    pub capacity: usize,
    /// Most bytes of items.
    pub max_bytes: u64,
    /// The node's budget this queue's items are charged to ([`BudgetCharge`]),
    /// if any: past it, a queue with a backlog past its share is cut off.
    pub budget: Option<Arc<BufferBudget>>,
}

pub struct BoundedQueue<T> {
    state: Mutex<State<T>>,
    ready: Notify,
    limits: QueueLimits,
    overflow: Overflow,
    /// Mirrors `State::closed`, so publishers can skip a closed queue without the lock.
    closed: AtomicBool,
    /// Set when the queue was cut off because the node's budget was used up.
    cut_off: AtomicBool,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the oldest messages were dropped to make room.
    DroppedOldest,
    /// The consumer is gone (or was disconnected by this push).
    Closed,
}

/// One drain of the queue.
pub struct Batch<T> {
    pub items: Vec<T>,
    /// Messages dropped since the previous drain.
    pub dropped: u64,
}

impl<T> BoundedQueue<T> {
    pub fn new(limits: QueueLimits, overflow: Overflow) -> Arc<BoundedQueue<T>> {
        if let Some(budget) = &limits.budget {
            budget.queues.fetch_add(1, Ordering::Relaxed);
        }
        Arc::new(BoundedQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                dropped: 0,
                closed: false,
            }),
            ready: Notify::new(),
            limits: QueueLimits {
                capacity: limits.capacity.max(1),
                ..limits
            },
            overflow,
            closed: AtomicBool::new(false),
            cut_off: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queue an item counted as `bytes` (in this queue's limits; an item
    /// for a budgeted queue carries its own [`BudgetCharge`]).
    pub fn push(&self, item: T, bytes: u64) -> Pushed {
        let outcome = {
            let mut state = self.lock();
            if state.closed {
                return Pushed::Closed;
            }
            let budget = self.limits.budget.as_deref();
            // Only a backlog counts against the fair share: a consumer that
            // keeps up is not cut off for the size of the one message it is sent.
            if budget.is_some_and(|b| b.used() > b.limit && state.bytes > b.fair_share()) {
                self.shut_and_empty(&mut state);
                self.cut_off.store(true, Ordering::Release);
                metrics::counter!("shoal_subscribers_cut_off_total").increment(1);
                Pushed::Closed
            } else {
                let fits = |state: &State<T>| {
                    state.items.len() < self.limits.capacity
                        && state.bytes + bytes <= self.limits.max_bytes
                };
                let mut outcome = Pushed::Queued;
                while !fits(&state) && !state.items.is_empty() {
                    if self.overflow == Overflow::Disconnect {
                        // A consumer that cannot take what it is sent may
                        // never read its backlog either: free it now.
                        self.shut_and_empty(&mut state);
                        outcome = Pushed::Closed;
                        break;
                    }
                    if let Some((_, size)) = state.items.pop_front() {
                        self.release(&mut state, size);
                    }
                    state.dropped += 1;
                    outcome = Pushed::DroppedOldest;
                }
                if outcome != Pushed::Closed {
                    state.items.push_back((item, bytes));
                    state.bytes += bytes;
                }
                outcome
            }
        };
        self.ready.notify_one();
        outcome
    }

    fn shut(&self, state: &mut State<T>) {
        state.closed = true;
        self.closed.store(true, Ordering::Release);
    }

    /// Closes the queue and frees what it holds (the consumer is told it was
    /// closed, not sent the rest).
    fn shut_and_empty(&self, state: &mut State<T>) {
        self.shut(state);
        state.items.clear();
        state.bytes = 0;
    }

    fn release(&self, state: &mut State<T>, bytes: u64) {
        state.bytes = state.bytes.saturating_sub(bytes);
    }

    /// Wait for messages and take them all (at most `max`); None once the
    /// queue is closed and empty.
    pub async fn next_batch(&self, max: usize) -> Option<Batch<T>> {
        loop {
            // Register interest before looking, so a push in between is not missed.
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if !state.items.is_empty() || state.dropped > 0 {
                    let take = state.items.len().min(max.max(1));
                    let mut items = Vec::with_capacity(take);
                    let mut freed = 0;
                    for (item, size) in state.items.drain(..take) {
                        items.push(item);
                        freed += size;
                    }
                    self.release(&mut state, freed);
                    let dropped = std::mem::take(&mut state.dropped);
                    return Some(Batch { items, dropped });
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Stop accepting messages and wake the consumer.
    pub fn close(&self) {
        self.shut(&mut self.lock());
        self.ready.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the queue was closed because the node's budget was used up.
    pub fn was_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for BoundedQueue<T> {
    /// The queue no longer takes a share of the budget (what it held is
    /// given back as its items' charges drop).
    fn drop(&mut self) {
        if let Some(budget) = &self.limits.budget {
            budget.queues.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(capacity: usize, budget: Option<Arc<BufferBudget>>) -> QueueLimits {
        QueueLimits {
            capacity,
            max_bytes: 1000,
            budget,
        }
    }

    #[tokio::test]
    async fn bytes_past_the_queue_limit_drop_the_oldest() {
        let queue = BoundedQueue::new(limits(100, None), Overflow::DropOldest);
        assert_eq!(queue.push(1, 400), Pushed::Queued);
        assert_eq!(queue.push(2, 400), Pushed::Queued);
        assert_eq!(queue.push(3, 700), Pushed::DroppedOldest);
        let batch = queue.next_batch(10).await.unwrap();
        assert_eq!(batch.items, vec![3]);
        assert_eq!(batch.dropped, 2);
    }

    /// An item charged to `budget` as a message is: `n`, with its charge.
    fn charged(budget: &Arc<BufferBudget>, n: i32, bytes: u64) -> (i32, Arc<BudgetCharge>) {
        (n, Arc::new(BudgetCharge::new(budget, bytes)))
    }

    fn numbers(batch: Batch<(i32, Arc<BudgetCharge>)>) -> Vec<i32> {
        batch.items.into_iter().map(|(n, _)| n).collect()
    }

    #[tokio::test]
    async fn a_queue_behind_past_the_budget_is_cut_off_and_gives_its_bytes_back() {
        let budget = BufferBudget::new(1000);
        let slow = BoundedQueue::new(limits(100, Some(budget.clone())), Overflow::DropOldest);
        let fast = BoundedQueue::new(limits(100, Some(budget.clone())), Overflow::DropOldest);
        assert_eq!(slow.push(charged(&budget, 1, 600), 600), Pushed::Queued);
        assert_eq!(fast.push(charged(&budget, 1, 300), 300), Pushed::Queued);
        assert_eq!(numbers(fast.next_batch(10).await.unwrap()), vec![1]);
        assert_eq!(budget.used(), 600);
        // Within the budget; then past it, but `fast` has no backlog.
        assert_eq!(slow.push(charged(&budget, 2, 300), 300), Pushed::Queued);
        assert_eq!(fast.push(charged(&budget, 2, 300), 300), Pushed::Queued);
        assert_eq!(numbers(fast.next_batch(10).await.unwrap()), vec![2]);
        // Past it, the queue whose backlog is more than its share (1000 / 2)
        // is cut off, and what it held is given back.
        assert_eq!(slow.push(charged(&budget, 3, 300), 300), Pushed::Closed);
        assert!(slow.was_cut_off());
        assert!(slow.next_batch(10).await.is_none(), "its backlog is gone");
        assert_eq!(budget.used(), 0);
        assert_eq!(fast.push(charged(&budget, 4, 300), 300), Pushed::Queued);
        drop(fast);
        assert_eq!(budget.used(), 0, "a dropped queue gives its bytes back");
    }

    #[tokio::test]
    async fn a_message_in_many_queues_is_charged_once() {
        let budget = BufferBudget::new(1000);
        let queues: Vec<_> = (0..10)
            .map(|_| BoundedQueue::new(limits(100, Some(budget.clone())), Overflow::DropOldest))
            .collect();
        let message = charged(&budget, 1, 400);
        for queue in &queues {
            assert_eq!(queue.push(message.clone(), 400), Pushed::Queued);
        }
        drop(message);
        assert_eq!(budget.used(), 400, "ten queues share one copy");
        for queue in &queues[..9] {
            assert_eq!(numbers(queue.next_batch(10).await.unwrap()), vec![1]);
        }
        assert_eq!(budget.used(), 400, "the last queue still holds it");
        assert_eq!(numbers(queues[9].next_batch(10).await.unwrap()), vec![1]);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_newest_and_counts() {
        let queue = BoundedQueue::new(limits(2, None), Overflow::DropOldest);
        assert_eq!(queue.push(1, 1), Pushed::Queued);
        assert_eq!(queue.push(2, 1), Pushed::Queued);
        assert_eq!(queue.push(3, 1), Pushed::DroppedOldest);
        let batch = queue.next_batch(10).await.unwrap();
        assert_eq!(batch.items, vec![2, 3]);
        assert_eq!(batch.dropped, 1);
    }

    #[tokio::test]
    async fn disconnect_closes_on_overflow_and_frees_the_backlog() {
        let budget = BufferBudget::new(1000);
        let queue = BoundedQueue::new(limits(1, Some(budget.clone())), Overflow::Disconnect);
        assert_eq!(queue.push(charged(&budget, 1, 10), 10), Pushed::Queued);
        assert_eq!(queue.push(charged(&budget, 2, 10), 10), Pushed::Closed);
        assert_eq!(budget.used(), 0, "the closed queue's backlog is freed");
        assert!(queue.next_batch(10).await.is_none());
        assert_eq!(queue.push(charged(&budget, 3, 10), 10), Pushed::Closed);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_queue_without_a_backlog_is_not_cut_off_past_the_budget() {
        let budget = BufferBudget::new(1000);
        let slow = BoundedQueue::new(limits(100, Some(budget.clone())), Overflow::DropOldest);
        let fast = BoundedQueue::new(limits(100, Some(budget.clone())), Overflow::DropOldest);
        assert_eq!(slow.push(charged(&budget, 1, 900), 900), Pushed::Queued);
        // Bigger than its share (500) and past the budget, but `fast` holds
        // nothing: it keeps up.
        assert_eq!(fast.push(charged(&budget, 1, 600), 600), Pushed::Queued);
        assert!(!fast.was_cut_off());
        assert_eq!(numbers(fast.next_batch(10).await.unwrap()), vec![1]);
        assert_eq!(budget.used(), 900);
    }
}
