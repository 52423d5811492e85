//! The bounded buffer between a publisher and one slow consumer (a
//! subscriber session or a link to a peer node). A publisher never waits on
//! it: when it is full the overflow policy decides, drop the oldest message
//! (counted) or disconnect the consumer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
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

struct State<T> {
    items: VecDeque<T>,
    /// Dropped since the consumer last looked.
    dropped: u64,
    closed: bool,
}

pub struct BoundedQueue<T> {
    state: Mutex<State<T>>,
    ready: Notify,
    capacity: usize,
    overflow: Overflow,
    /// Mirrors `State::closed`, so publishers can skip a closed queue without the lock.
    closed: AtomicBool,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the oldest message was dropped to make room.
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
    pub fn new(capacity: usize, overflow: Overflow) -> Arc<BoundedQueue<T>> {
        Arc::new(BoundedQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                dropped: 0,
                closed: false,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
            overflow,
            closed: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn push(&self, item: T) -> Pushed {
        let outcome = {
            let mut state = self.lock();
            if state.closed {
                return Pushed::Closed;
            }
            if state.items.len() < self.capacity {
                state.items.push_back(item);
                Pushed::Queued
            } else {
                match self.overflow {
                    Overflow::DropOldest => {
                        state.items.pop_front();
                        state.items.push_back(item);
                        state.dropped += 1;
                        Pushed::DroppedOldest
                    }
                    Overflow::Disconnect => {
                        state.closed = true;
                        self.closed.store(true, Ordering::Release);
                        Pushed::Closed
                    }
                }
            }
        };
        self.ready.notify_one();
        outcome
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
                    let items = state.items.drain(..take).collect();
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
        self.lock().closed = true;
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drop_oldest_keeps_the_newest_and_counts() {
        let queue = BoundedQueue::new(2, Overflow::DropOldest);
        assert_eq!(queue.push(1), Pushed::Queued);
        assert_eq!(queue.push(2), Pushed::Queued);
        assert_eq!(queue.push(3), Pushed::DroppedOldest);
        let batch = queue.next_batch(10).await.unwrap();
        assert_eq!(batch.items, vec![2, 3]);
        assert_eq!(batch.dropped, 1);
    }

    #[tokio::test]
    async fn disconnect_closes_on_overflow() {
        let queue = BoundedQueue::new(1, Overflow::Disconnect);
        assert_eq!(queue.push(1), Pushed::Queued);
        assert_eq!(queue.push(2), Pushed::Closed);
        assert_eq!(queue.next_batch(10).await.unwrap().items, vec![1]);
        assert!(queue.next_batch(10).await.is_none());
    }
}
