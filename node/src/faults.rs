//! Fault-injection hooks for the fault tests (`tests/`, `jepsen/`), read from
//! the environment at start. Only debug builds honour them; a release build
//! ignores the variables, so production nodes cannot be slowed or made to
//! lose writes by an environment setting.
//!
//! - `SHOAL_FAULT_LOG_SYNC_DELAY_MS=N`: the Raft log writer sleeps N ms before
//!   every fsync (a leader whose own disk is slower than its followers').
//! - `SHOAL_FAULT_LOSE_UNSYNCED=1`: writes that were not fsynced stay in
//!   process memory, so `kill -9` loses what a power cut would lose.
//! - `SHOAL_FAULT_LIFECYCLE_DELAY_MS=N`: the workflow runner waits N ms
//!   between seeing a committed status change and publishing its lifecycle
//!   event (a leader that dies in between).
//! - `SHOAL_FAULT_INBOX_DELAY_MS=N`: the leader's workflow intake waits N ms
//!   between seeing an event arrive in the workflow event inbox and offering
//!   it (a leader that dies in between).
//! - `SHOAL_FAULT_WAKE_DELAY_MS=N`: a workflow instance's actor waits N ms
//!   before it evaluates a state the runner handed it (a state that a later
//!   write overtakes meanwhile).
//! - `SHOAL_FAULT_SNAPSHOT_IMPORT_DELAY_MS=N`: installing a snapshot holds
//!   the state machine's readers off N ms longer (a large state on a slow
//!   disk).

use std::time::Duration;

#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub log_sync_delay: Option<Duration>,
    pub lose_unsynced_writes: bool,
    pub lifecycle_delay: Option<Duration>,
    pub inbox_delay: Option<Duration>,
    pub wake_delay: Option<Duration>,
    pub snapshot_import_delay: Option<Duration>,
}

impl Faults {
    pub fn from_env() -> Faults {
        if !cfg!(debug_assertions) {
            return Faults::default();
        }
        let log_sync_delay = delay_from_env("SHOAL_FAULT_LOG_SYNC_DELAY_MS");
        let lose_unsynced_writes =
            std::env::var("SHOAL_FAULT_LOSE_UNSYNCED").is_ok_and(|v| v.trim() == "1");
        let lifecycle_delay = delay_from_env("SHOAL_FAULT_LIFECYCLE_DELAY_MS");
        let inbox_delay = delay_from_env("SHOAL_FAULT_INBOX_DELAY_MS");
        let wake_delay = delay_from_env("SHOAL_FAULT_WAKE_DELAY_MS");
        let snapshot_import_delay = delay_from_env("SHOAL_FAULT_SNAPSHOT_IMPORT_DELAY_MS");
        let faults = Faults {
            log_sync_delay,
            lose_unsynced_writes,
            lifecycle_delay,
            inbox_delay,
            wake_delay,
            snapshot_import_delay,
        };
        if log_sync_delay.is_some()
            || lose_unsynced_writes
            || lifecycle_delay.is_some()
            || inbox_delay.is_some()
            || wake_delay.is_some()
            || snapshot_import_delay.is_some()
        {
            tracing::warn!(?faults, "fault injection is on (debug build)");
        }
        faults
    }
}

fn delay_from_env(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}
