//! Lease time. The replicated state holds no time: a lease's TTL is measured
//! on each node's monotonic clock from when that node sees its grant or a
//! keepalive (the renewal count in the state changes), and only the leader
//! proposes expiry. A new leader starts every lease's TTL afresh, as etcd
//! does, so a leader change never shortens a lease, and no wall clock (a
//! jump, skew between nodes) can expire one early.
//!
//! The expiry names the renewal count the leader saw; a keepalive applied
//! in between makes it a no-op on every replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_storage::kv::Lease;

#[derive(Default)]
pub struct LeaseTimers {
    state: Mutex<TimerState>,
}

#[derive(Default)]
struct TimerState {
    /// Per lease: the renewal count last seen and when it was first seen.
    seen: HashMap<u64, (u64, Instant)>,
    /// Since when this node leads, in which term.
    leading: Option<(u64, Instant)>,
}

impl LeaseTimers {
    fn state(&self) -> std::sync::MutexGuard<'_, TimerState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Record the current leases and this node's leadership; returns the
    /// leases whose TTL has run out, with the renewal count seen, if this
    /// node leads.
    pub fn observe(
        &self,
        leases: &[Lease],
        leader_term: Option<u64>,
        now: Instant,
    ) -> Vec<(u64, u64)> {
        let mut state = self.state();
        state.leading = match (state.leading, leader_term) {
            (Some((term, since)), Some(current)) if term == current => Some((term, since)),
            (_, Some(current)) => Some((current, now)),
            (_, None) => None,
        };
        let mut seen = HashMap::with_capacity(leases.len());
        let mut expired = Vec::new();
        for lease in leases {
            let at = state.renewed_at(lease, now);
            seen.insert(lease.id, (lease.renewals, at));
            if state.leading.is_some() && state.deadline(lease, at) <= now {
                expired.push((lease.id, lease.renewals));
            }
        }
        state.seen = seen;
        expired
    }

    /// Milliseconds left of a lease's TTL as this node measures it.
    pub fn remaining_ms(&self, lease: &Lease) -> u64 {
        let state = self.state();
        let now = Instant::now();
        let at = state.renewed_at(lease, now);
        state
            .deadline(lease, at)
            .saturating_duration_since(now)
            .as_millis() as u64
    }
}

impl TimerState {
    /// When this node first saw the lease's current renewal (`now` if it
    /// has not seen it yet).
    fn renewed_at(&self, lease: &Lease, now: Instant) -> Instant {
        match self.seen.get(&lease.id) {
            Some(&(renewals, at)) if renewals == lease.renewals => at,
            _ => now,
        }
    }

    /// When a lease renewed (last seen renewed) at `at` runs out: a TTL
    /// after that, or after this node became leader if that is later.
    fn deadline(&self, lease: &Lease, at: Instant) -> Instant {
        let start = self.leading.map_or(at, |(_, since)| at.max(since));
        start + Duration::from_secs(lease.ttl_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: u64, ttl_seconds: u64, renewals: u64) -> Lease {
        Lease {
            id,
            ttl_seconds,
            renewals,
        }
    }

    #[test]
    fn a_lease_expires_a_ttl_after_its_last_renewal_is_seen() {
        let timers = LeaseTimers::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert!(timers.observe(&[lease(1, 2, 0)], Some(1), t0).is_empty());
        assert!(timers
            .observe(&[lease(1, 2, 0)], Some(1), t0 + s)
            .is_empty());
        // A keepalive seen at t0 + 1.5 s starts the TTL again.
        assert!(timers
            .observe(&[lease(1, 2, 1)], Some(1), t0 + s * 3 / 2)
            .is_empty());
        assert!(timers
            .observe(&[lease(1, 2, 1)], Some(1), t0 + s * 3)
            .is_empty());
        assert_eq!(
            timers.observe(&[lease(1, 2, 1)], Some(1), t0 + s * 4),
            vec![(1, 1)]
        );
    }

    #[test]
    fn followers_never_expire_and_a_new_leader_starts_every_ttl_afresh() {
        let timers = LeaseTimers::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert!(timers.observe(&[lease(1, 2, 0)], None, t0).is_empty());
        assert!(
            timers
                .observe(&[lease(1, 2, 0)], None, t0 + s * 10)
                .is_empty(),
            "a follower expires nothing"
        );
        // Leader from t0 + 10 s: the lease has its whole TTL from then.
        assert!(timers
            .observe(&[lease(1, 2, 0)], Some(2), t0 + s * 10)
            .is_empty());
        assert!(timers
            .observe(&[lease(1, 2, 0)], Some(2), t0 + s * 11)
            .is_empty());
        // A new term (another election won) restarts it again.
        assert!(timers
            .observe(&[lease(1, 2, 0)], Some(3), t0 + s * 12)
            .is_empty());
        assert!(timers
            .observe(&[lease(1, 2, 0)], Some(3), t0 + s * 13)
            .is_empty());
        assert_eq!(
            timers.observe(&[lease(1, 2, 0)], Some(3), t0 + s * 14),
            vec![(1, 0)]
        );
    }
}
