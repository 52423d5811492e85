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
/// it, a subscriber that holds more than its fair share (the budget over
/// the number of queues) and is sent another message is cut off and its
/// queue emptied: a few slow consumers cannot make the node hold
/// gigabytes, and consumers that keep up (whose queues stay short) are not
/// touched. A message is counted in every queue that holds it (an upper
/// bound: queues share one copy).
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

    fn take(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
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
    /// The node's budget this queue counts against, if any.
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

    /// Queue an item counted as `bytes`.
    pub fn push(&self, item: T, bytes: u64) -> Pushed {
        let outcome = {
            let mut state = self.lock();
            if state.closed {
                return Pushed::Closed;
            }
            let budget = self.limits.budget.as_deref();
            // Only a backlog counts against the fair share: a consumer that
            // keeps up is not cut off for the size of the one message it is sent.
            if budget.is_some_and(|b| b.used() + bytes > b.limit && state.bytes > b.fair_share()) {
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
                    if let Some(budget) = budget {
                        budget.take(bytes);
                    }
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
        let freed = std::mem::take(&mut state.bytes);
        if let Some(budget) = &self.limits.budget {
            budget.give_back(freed);
        }
    }

    fn release(&self, state: &mut State<T>, bytes: u64) {
        state.bytes = state.bytes.saturating_sub(bytes);
        if let Some(budget) = &self.limits.budget {
            budget.give_back(bytes);
        }
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
    /// What a queue still holds when it goes is given back to the budget.
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(budget) = &self.limits.budget {
            budget.give_back(state.bytes);
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

    #[tokio::test]
    async fn a_queue_behind_past_the_budget_is_cut_off_and_gives_its_bytes_back() {
        let budget = BufferBudget::new(1000);
        let slow = BoundedQueue::new(limits(100, Some(budget.clone())), Overflow::DropOldest);
        let fast = BoundedQueue::new(limits(100, Some(budget.clone())), Overflow::DropOldest);
        assert_eq!(slow.push(1, 600), Pushed::Queued);
        assert_eq!(fast.push(1, 300), Pushed::Queued);
        assert_eq!(fast.next_batch(10).await.unwrap().items, vec![1]);
        assert_eq!(budget.used(), 600);
        // Within the budget; then past it, but `fast` holds less than its
        // share (1000 / 2).
        assert_eq!(slow.push(2, 300), Pushed::Queued);
        assert_eq!(fast.push(2, 300), Pushed::Queued);
        assert_eq!(fast.next_batch(10).await.unwrap().items, vec![2]);
        // Past it, the queue holding more than its share is cut off.
        assert_eq!(fast.push(3, 100), Pushed::Queued);
        assert_eq!(fast.next_batch(10).await.unwrap().items, vec![3]);
        assert_eq!(slow.push(3, 300), Pushed::Closed);
        assert!(slow.was_cut_off());
        assert!(slow.next_batch(10).await.is_none(), "its backlog is gone");
        assert_eq!(budget.used(), 0);
        assert_eq!(fast.push(4, 300), Pushed::Queued);
        drop(fast);
        assert_eq!(budget.used(), 0, "a dropped queue gives its bytes back");
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
        assert_eq!(queue.push(1, 10), Pushed::Queued);
        assert_eq!(queue.push(2, 10), Pushed::Closed);
        assert_eq!(budget.used(), 0, "the closed queue's backlog is freed");
        assert!(queue.next_batch(10).await.is_none());
        assert_eq!(queue.push(3, 10), Pushed::Closed);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_queue_without_a_backlog_is_not_cut_off_past_the_budget() {
        let budget = BufferBudget::new(1000);
        let slow = BoundedQueue::new(limits(100, Some(budget.clone())), Overflow::DropOldest);
        let fast = BoundedQueue::new(limits(100, Some(budget.clone())), Overflow::DropOldest);
        assert_eq!(slow.push(1, 900), Pushed::Queued);
        // Bigger than its share (500) and past the budget, but `fast` holds
        // nothing: it keeps up.
        assert_eq!(fast.push(1, 600), Pushed::Queued);
        assert!(!fast.was_cut_off());
        assert_eq!(fast.next_batch(10).await.unwrap().items, vec![1]);
        assert_eq!(budget.used(), 900);
    }
}
