//! Space alarms, like etcd's: a node that runs out of room must refuse
//! writes, not crash on them (a Raft log append that fails with ENOSPC stops
//! the node's Raft, and RocksDB turns read-only on a failed flush).
//!
//! Every second each node measures two things and raises an alarm for each
//! limit it is past:
//!
//! - `quota`: its replicated state machine (keys, history, leases) is larger
//!   than `--quota-backend-mb`;
//! - `disk`: the file system of its data directory has less than
//!   `--min-free-disk-mb` free.
//!
//! A node publishes its alarms over gossip. While any live member has one,
//! every node refuses replicated writes that would grow the store (puts,
//! transactions with puts, lease grants, rollbacks) with 507, so a follower
//! that is out of room is not sent entries it cannot write; deletes, lease
//! revocations, keepalives and history compaction still go, because they
//! are how space is freed. A node's own `disk` alarm also stops what it
//! writes locally: log ingest and outbox entries for webhooks and Kafka.
//!
//! Deleted data leaves the store's files only when RocksDB compacts them,
//! so while `quota` is raised a node rewrites its state machine's files
//! (etcd's defragmentation) after each history compaction; the alarm goes
//! once the size is under the quota again (etcd waits for an operator's
//! `alarm disarm`; here it clears itself).

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_storage::kv::{Command, TxnOp};

use super::shoal::Shoal;
use crate::cluster::keys;

/// How often a node measures its store and its disk.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between two rewrites of the state machine's files.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alarm {
    /// The replicated store is past `--quota-backend-mb` on some node.
    Quota,
    /// Some node's disk has less than `--min-free-disk-mb` free.
    Disk,
}

impl Alarm {
    const ALL: [Alarm; 2] = [Alarm::Quota, Alarm::Disk];

    fn bit(self) -> u8 {
        match self {
            Alarm::Quota => 1,
            Alarm::Disk => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alarm::Quota => "quota",
            Alarm::Disk => "disk",
        }
    }

    fn from_name(name: &str) -> Option<Alarm> {
        Alarm::ALL.into_iter().find(|alarm| alarm.name() == name)
    }
}

impl fmt::Display for Alarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Alarm::Quota => {
                "the replicated store is past its quota (--quota-backend-mb) on a node: delete \
                 keys and compact history (POST /v1/kv/compact) to free space; only deletes, \
                 lease revocations and compaction are taken until then"
            }
            Alarm::Disk => {
                "a node's disk has less than --min-free-disk-mb free: free space on it; only \
                 deletes, lease revocations and compaction are taken until then"
            }
        })
    }
}

/// The alarms raised on this node, and on any live member (this node's
/// included), as bit sets of [`Alarm::bit`].
#[derive(Default)]
pub struct SpaceAlarms {
    local: AtomicU8,
    cluster: AtomicU8,
}

impl SpaceAlarms {
    /// The alarm that refuses this command, if any: only commands that add
    /// to the store are refused.
    pub fn refuses(&self, command: &Command) -> Option<Alarm> {
        let raised = self.cluster.load(Ordering::Relaxed);
        if raised == 0 || !grows(command) {
            return None;
        }
        Alarm::ALL
            .into_iter()
            .find(|alarm| raised & alarm.bit() != 0)
    }

    /// Whether this node's own disk alarm is raised.
    pub fn local_disk(&self) -> bool {
        self.local.load(Ordering::Relaxed) & Alarm::Disk.bit() != 0
    }
}

/// Whether applying the command can make the store larger. Deletes and
/// compaction write small records (a delete is an event in history) but
/// are what frees space, so they are let through.
fn grows(command: &Command) -> bool {
    match command {
        Command::Txn(txn) => txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| matches!(op, TxnOp::Put { .. })),
        Command::LeaseGrant { .. } | Command::Rollback { .. } => true,
        Command::LeaseKeepAlive { .. }
        | Command::LeaseRevoke { .. }
        | Command::LeaseExpire { .. }
        | Command::Compact { .. } => false,
    }
}

fn names(bits: u8) -> Vec<&'static str> {
    Alarm::ALL
        .into_iter()
        .filter(|alarm| bits & alarm.bit() != 0)
        .map(Alarm::name)
        .collect()
}

/// Bytes free for unprivileged writers on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes only into the struct it is given, and `path`
    // is a NUL-terminated string that outlives the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Measure, raise and clear alarms, publish them, and give space back
/// while the quota alarm is raised. Runs for the node's lifetime.
pub async fn watch_space(shoal: Arc<Shoal>) {
    let quota = shoal.settings.quota_backend_bytes;
    let min_free = shoal.settings.min_free_disk_bytes;
    let data_dir = shoal.settings.data_dir.clone();
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    let mut reclaimed: Option<(Instant, u64)> = None;
    let reclaiming = Arc::new(AtomicBool::new(false));
    let mut statvfs_failed = false;
    loop {
        tick.tick().await;
        // Apart from the store's figures: on a full disk the store's
        // measure (which may flush) can fail, and the disk alarm must not.
        let free = match free_bytes(&data_dir) {
            Ok(free) => Some(free),
            Err(e) => {
                if !statvfs_failed {
                    tracing::warn!(error = %e, "cannot read the data directory's free space");
                }
                None
            }
        };
        statvfs_failed = free.is_none();
        let store = shoal
            .read(move |store| {
                Ok((
                    store.state_machine_bytes(quota)?,
                    store.counters()?.compact_revision,
                ))
            })
            .await
            .ok();
        // What could not be measured keeps its alarm as it was.
        let before = shoal.space.local.load(Ordering::Relaxed);
        let mut local = before;
        if let Some((state_bytes, _)) = store {
            metrics::gauge!("shoal_storage_state_machine_bytes").set(state_bytes as f64);
            local = set_bit(local, Alarm::Quota, state_bytes > quota);
        }
        if let Some(free) = free {
            metrics::gauge!("shoal_storage_free_bytes").set(free as f64);
            local = set_bit(local, Alarm::Disk, free < min_free);
        }
        shoal.space.local.store(local, Ordering::Relaxed);
        if before != local {
            tracing::warn!(
                alarms = ?names(local),
                state_bytes = ?store.map(|(bytes, _)| bytes),
                free_bytes = ?free,
                "space alarms changed on this node"
            );
        }
        let disk_low = local & Alarm::Disk.bit() != 0;
        shoal.logs.set_disk_low(disk_low);
        shoal.messaging.set_disk_low(disk_low);
        shoal
            .cluster
            .gossip
            .publish(&[(keys::ALARMS, names(local).join(","))])
            .await;
        let mut cluster = local;
        for member in shoal.cluster.gossip.members().await.values() {
            if member.alive && !member.left && member.node_id != shoal.node_id {
                for alarm in member.alarms.iter().filter_map(|a| Alarm::from_name(a)) {
                    cluster |= alarm.bit();
                }
            }
        }
        shoal.space.cluster.store(cluster, Ordering::Relaxed);
        for alarm in Alarm::ALL {
            metrics::gauge!("shoal_space_alarm", "alarm" => alarm.name())
                .set(f64::from(cluster & alarm.bit() != 0));
        }
        let Some((_, compact_revision)) = store else {
            continue;
        };
        let compacted_since = reclaimed.is_none_or(|(at, revision)| {
            revision != compact_revision && at.elapsed() >= RECLAIM_INTERVAL
        });
        // One rewrite at a time, beside the checks (it can take long).
        if local & Alarm::Quota.bit() != 0
            && compacted_since
            && !reclaiming.swap(true, Ordering::Relaxed)
        {
            reclaimed = Some((Instant::now(), compact_revision));
            let (shoal, reclaiming) = (shoal.clone(), reclaiming.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                match shoal.read(|store| store.reclaim_space()).await {
                    Ok(()) => tracing::info!(
                        took_ms = started.elapsed().as_millis() as u64,
                        "rewrote the state machine's files to give back freed space"
                    ),
                    Err(e) => tracing::warn!(error = %e, "could not give back freed space"),
                }
                reclaiming.store(false, Ordering::Relaxed);
            });
        }
    }
}

fn set_bit(bits: u8, alarm: Alarm, raised: bool) -> u8 {
    if raised {
        bits | alarm.bit()
    } else {
        bits & !alarm.bit()
    }
}
