//! History compaction: the leader keeps the last `--history-revisions`
//! revisions of key history and proposes dropping older ones.

use std::sync::Arc;
use std::time::Duration;

use shoal_storage::kv::Command;

use super::shoal::Shoal;

/// How often the leader considers compacting history.
const COMPACT_CHECK: Duration = Duration::from_secs(5);

/// On the leader: keep the last `history_revisions` revisions of history.
/// Compacts in steps of a tenth of the window so it is not a write per tick.
pub async fn compact_history(shoal: Arc<Shoal>) {
    let keep = shoal.settings.history_revisions;
    let step = (keep / 10).max(1);
    let mut tick = tokio::time::interval(COMPACT_CHECK);
    loop {
        tick.tick().await;
        if !shoal.is_leader() {
            continue;
        }
        let Ok(counters) = shoal.read(|store| store.counters()).await else {
            continue;
        };
        let target = (counters.revision + 1).saturating_sub(keep);
        if target >= counters.compact_revision + step {
            if let Err(e) = shoal.write(Command::Compact { revision: target }).await {
                tracing::warn!(error = %e, "compaction not applied; will retry");
            }
        }
    }
}
