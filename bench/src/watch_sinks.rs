//! watch-bench's sinks: what the watchers of each scenario do with an event
//! (check it against the writes, record when it arrived).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::watch::{Problems, Sink};

/// When the process started; every stored instant is nanoseconds since this, plus 1 (0 = unset).
pub(super) fn nanos(base: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(base).as_nanos() as u64 + 1
}

// ---------------------------------------------------------------- scenario 1

pub(super) struct KeySink {
    pub(super) base: Instant,
    /// seq -> index of the watcher whose key the write goes to.
    pub(super) target: Vec<u32>,
    pub(super) sent_at: Vec<AtomicU64>,
    pub(super) put_rev: Vec<AtomicU64>,
    pub(super) recv_count: Vec<AtomicU32>,
    pub(super) latency: Vec<AtomicU64>,
    pub(super) event_rev: Vec<AtomicU64>,
    /// Per watcher: last revision received (order check).
    pub(super) last_rev: Vec<AtomicU64>,
    pub(super) total: AtomicU64,
    pub(super) first_receipts: AtomicUsize,
    pub(super) failures: Arc<Problems>,
}

impl Sink for KeySink {
    fn on_event(
        &self,
        w: usize,
        revision: u64,
        kind: &str,
        key: &str,
        value: Option<&[u8]>,
        at: Instant,
    ) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let own = format!("bench/w/{w}");
        if key != own {
            self.failures.add(
                "event for a key the watcher does not watch",
                format!("watcher of {own} got {key} at revision {revision}"),
            );
            return;
        }
        if kind != "put" {
            self.failures.add(
                "unexpected event type",
                format!("{own}: {kind:?} at revision {revision}"),
            );
        }
        let previous = self.last_rev[w].fetch_max(revision, Ordering::Relaxed);
        if previous >= revision {
            self.failures.add(
                "revision not increasing on one watch",
                format!("{own}: {revision} after {previous}"),
            );
        }
        let seq = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<usize>().ok());
        let Some(seq) = seq.filter(|s| *s < self.target.len()) else {
            self.failures.add(
                "event with a value the bench did not write",
                format!("{own}: {:?}", value.map(String::from_utf8_lossy)),
            );
            return;
        };
        if self.target[seq] as usize != w {
            self.failures.add(
                "write delivered to the wrong watcher",
                format!("write {seq} (to bench/w/{}) at {own}", self.target[seq]),
            );
            return;
        }
        if self.recv_count[seq].fetch_add(1, Ordering::AcqRel) > 0 {
            self.failures.add(
                "duplicate event",
                format!("write {seq} to {own} delivered again at revision {revision}"),
            );
            return;
        }
        let sent = self.sent_at[seq].load(Ordering::Acquire);
        if sent == 0 {
            self.failures.add(
                "event before its PUT was sent",
                format!("write {seq} to {own}"),
            );
        } else {
            self.latency[seq].store(
                nanos(self.base, at).saturating_sub(sent).max(1),
                Ordering::Relaxed,
            );
        }
        self.event_rev[seq].store(revision, Ordering::Relaxed);
        self.first_receipts.fetch_add(1, Ordering::AcqRel);
    }
}

// ---------------------------------------------------------------- scenario 2

pub(super) const FAN_PREFIX: &str = "bench/fan/";
pub(super) const FAN_KEY: &str = "bench/fan/x";

pub(super) struct FanSink {
    pub(super) base: Instant,
    pub(super) writes: usize,
    pub(super) sent_at: Vec<AtomicU64>,
    pub(super) put_rev: Vec<AtomicU64>,
    /// Revision the first watcher saw for each write (all must agree).
    pub(super) seen_rev: Vec<AtomicU64>,
    pub(super) count: Vec<AtomicUsize>,
    pub(super) first: Vec<AtomicU64>,
    pub(super) last: Vec<AtomicU64>,
    /// Per watcher: the next write it should see.
    pub(super) next: Vec<AtomicUsize>,
    pub(super) total: AtomicU64,
    pub(super) failures: Arc<Problems>,
}

impl Sink for FanSink {
    fn on_event(
        &self,
        w: usize,
        revision: u64,
        kind: &str,
        key: &str,
        value: Option<&[u8]>,
        at: Instant,
    ) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if key != FAN_KEY {
            self.failures.add(
                "fanout watcher got an unexpected key",
                format!("watcher {w}: {key} at revision {revision}"),
            );
            return;
        }
        if kind != "put" {
            self.failures.add(
                "unexpected event type",
                format!("fan watcher {w}: {kind:?} at revision {revision}"),
            );
        }
        let n = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.strip_prefix('f'))
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n < self.writes);
        let Some(n) = n else {
            self.failures.add(
                "fanout event with a value the bench did not write",
                format!("watcher {w}: {:?}", value.map(String::from_utf8_lossy)),
            );
            return;
        };
        let expected = self.next[w].swap(n + 1, Ordering::Relaxed);
        if n != expected {
            let kind = if n < expected {
                "fanout duplicate or reordered event"
            } else {
                "fanout event missed"
            };
            self.failures.add(
                kind,
                format!("watcher {w}: got write {n}, expected write {expected}"),
            );
        }
        if let Err(other) =
            self.seen_rev[n].compare_exchange(0, revision, Ordering::Relaxed, Ordering::Relaxed)
        {
            if other != revision {
                self.failures.add(
                    "fanout watchers disagree on a revision",
                    format!("write {n}: {revision} vs {other}"),
                );
            }
        }
        let sent = self.sent_at[n].load(Ordering::Acquire);
        if sent == 0 {
            self.failures
                .add("event before its PUT was sent", format!("fan write {n}"));
        } else {
            let latency = nanos(self.base, at).saturating_sub(sent).max(1);
            self.first[n].fetch_min(latency, Ordering::Relaxed);
            self.last[n].fetch_max(latency, Ordering::Relaxed);
        }
        self.count[n].fetch_add(1, Ordering::AcqRel);
    }
}
