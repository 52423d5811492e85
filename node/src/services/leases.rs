//! Lease expiry: every node follows the leases and measures their TTLs
//! (see `lease_timers`); the leader proposes the expiry of those that ran
//! out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_storage::kv::Command;

use super::shoal::Shoal;

/// How often each node looks at the leases.
const LEASE_CHECK: Duration = Duration::from_millis(200);

/// On every node: follow the leases; on the leader, revoke those whose TTL
/// has run out.
pub async fn run(shoal: Arc<Shoal>) {
    let mut tick = tokio::time::interval(LEASE_CHECK);
    loop {
        tick.tick().await;
        let leases = match shoal.read(|store| store.lease_list()).await {
            Ok(leases) => leases,
            Err(e) => {
                tracing::warn!(error = %e, "reading leases failed");
                continue;
            }
        };
        let leader_term = {
            let metrics = shoal.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.state == openraft::ServerState::Leader).then_some(metrics.current_term)
        };
        let expired = shoal
            .lease_timers
            .observe(&leases, leader_term, Instant::now());
        if expired.is_empty() {
            continue;
        }
        tracing::info!(leases = ?expired, "leases expired");
        if let Err(e) = shoal.write(Command::LeaseExpire { leases: expired }).await {
            tracing::warn!(error = %e, "lease expiry not applied; will retry");
        }
    }
}
