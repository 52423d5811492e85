//! Lease workload: each worker runs lease sessions one after the other.
//! A session grants a lease, attaches a fresh key to it
//! (`jepsen/lease/{worker}-{n}`), and then either
//! - keeps it alive: a keepalive every ~0.5 s (TTL 3 s) and linearizable
//!   reads of the key in between, for 2–6 s, then revokes it or lets it
//!   lapse; or
//! - never touches it again (TTL 1 s): it must expire on its own.
//!
//! After healing, the final check waits until no lease and no key under the
//! prefix is left (nobody keeps anything alive any more).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{op_of, pace, Ctx, Process};
use crate::client::Reply;
use crate::history::{Op, Outcome};

pub const PREFIX: &str = "jepsen/lease/";
/// TTL of the leases that are kept alive.
pub const KEPT_TTL_S: u64 = 3;
/// TTL of the leases that are left to expire.
pub const EXPIRING_TTL_S: u64 = 1;
/// Keepalives of a kept lease come this often (a sixth of its TTL).
const KEEPALIVE_EVERY: Duration = Duration::from_millis(500);

/// The lease state after healing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FinalState {
    pub node: usize,
    pub at_ns: u64,
    /// How long the final check waited for the leases to go.
    pub waited_ms: u64,
    /// Leases still alive: (id, remaining ms).
    pub leases: Option<Vec<(u64, u64)>>,
    /// Keys still under the prefix.
    pub keys: Option<Vec<String>>,
    pub error: Option<String>,
}

struct Session {
    key: String,
    lease: u64,
    node: usize,
}

/// Records a lease operation: the lease id goes into the history entry.
#[allow(clippy::too_many_arguments)]
fn record<T>(
    ctx: &Ctx,
    process: &mut Process,
    node: usize,
    f: &str,
    key: &str,
    value: Option<String>,
    lease: Option<u64>,
    start: u64,
    reply: &Reply<T>,
) -> Op {
    let mut op = op_of(
        "lease",
        process.id,
        node,
        f,
        key,
        value,
        None,
        start,
        ctx.rec.clock.now_ns(),
        reply,
    );
    op.lease = lease;
    process.after(op.outcome);
    ctx.rec.record(op.clone());
    op
}

pub async fn worker(ctx: Ctx, worker: usize, workers: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = Process::new(worker, workers, 3000);
    let mut seq = 0u64;
    while !ctx.stopped() {
        let key = format!("{PREFIX}{worker}-{seq}");
        seq += 1;
        let kept = rng.random_bool(0.7);
        let ttl = if kept { KEPT_TTL_S } else { EXPIRING_TTL_S };
        match open(&ctx, &mut process, &mut rng, &key, ttl).await {
            Some(session) if kept => keep_alive(&ctx, &mut process, &mut rng, session).await,
            Some(_) => {}
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        pace(&mut rng).await;
    }
}

/// Grants a lease and attaches `key` to it. None if the grant did not
/// succeed (an unknown lease cannot be kept alive).
async fn open(
    ctx: &Ctx,
    process: &mut Process,
    rng: &mut StdRng,
    key: &str,
    ttl: u64,
) -> Option<Session> {
    let node = rng.random_range(0..ctx.n);
    let start = ctx.rec.clock.now_ns();
    let reply = ctx.api.lease_grant(node, ttl).await;
    let lease = reply.value;
    record(
        ctx,
        process,
        node,
        "grant",
        key,
        Some(ttl.to_string()),
        lease,
        start,
        &reply,
    );
    let lease = lease.filter(|_| reply.outcome == Outcome::Ok)?;
    let node = rng.random_range(0..ctx.n);
    let start = ctx.rec.clock.now_ns();
    let reply = ctx.api.put_with_lease(node, key, "leased", lease).await;
    record(
        ctx,
        process,
        node,
        "put",
        key,
        Some("leased".into()),
        Some(lease),
        start,
        &reply,
    );
    Some(Session {
        key: key.to_string(),
        lease,
        node,
    })
}

/// Keepalives and reads for 2–6 s (or until the run stops or the lease is
/// reported gone), then a revoke or nothing.
async fn keep_alive(ctx: &Ctx, process: &mut Process, rng: &mut StdRng, s: Session) {
    let until = tokio::time::Instant::now() + Duration::from_millis(rng.random_range(2000..6000));
    let mut node = s.node;
    while !ctx.stopped() && tokio::time::Instant::now() < until {
        let next = tokio::time::Instant::now() + KEEPALIVE_EVERY;
        node = rng.random_range(0..ctx.n);
        let start = ctx.rec.clock.now_ns();
        let reply = ctx.api.lease_keepalive(node, s.lease).await;
        let op = record(
            ctx,
            process,
            node,
            "keepalive",
            &s.key,
            None,
            Some(s.lease),
            start,
            &reply,
        );
        if op.outcome == Outcome::Fail && is_lease_gone(&op) {
            return;
        }
        while !ctx.stopped() && tokio::time::Instant::now() + Duration::from_millis(50) < next {
            let read_node = rng.random_range(0..ctx.n);
            let start = ctx.rec.clock.now_ns();
            let reply = ctx.api.read(read_node, &s.key).await;
            let value = reply.value.clone().flatten();
            record(
                ctx,
                process,
                read_node,
                "read",
                &s.key,
                value,
                Some(s.lease),
                start,
                &reply,
            );
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..250))).await;
        }
        tokio::time::sleep_until(next).await;
    }
    // At the end of the run the lease lapses, so the final check also sees
    // kept leases expire.
    if ctx.stopped() || rng.random_bool(0.5) {
        return;
    }
    let start = ctx.rec.clock.now_ns();
    let reply = ctx.api.lease_revoke(node, s.lease).await;
    record(
        ctx,
        process,
        node,
        "revoke",
        &s.key,
        None,
        Some(s.lease),
        start,
        &reply,
    );
}

/// A definite "this lease does not exist (any more)".
pub fn is_lease_gone(op: &Op) -> bool {
    op.error
        .as_deref()
        .is_some_and(|e| e.contains("lease_not_found"))
}

/// After healing: waits (up to `patience`) until no lease and no key under
/// the prefix is left, asking the nodes in turn; returns the last state seen.
pub async fn final_state(ctx: &Ctx, patience: Duration) -> FinalState {
    let start = tokio::time::Instant::now();
    let mut attempt = 0usize;
    loop {
        let node = attempt % ctx.n;
        attempt += 1;
        let state = read_state(ctx, node, start).await;
        let empty = state.leases.as_ref().is_some_and(Vec::is_empty)
            && state.keys.as_ref().is_some_and(Vec::is_empty);
        if empty || start.elapsed() >= patience {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn read_state(ctx: &Ctx, node: usize, start: tokio::time::Instant) -> FinalState {
    let mut state = FinalState {
        node,
        ..Default::default()
    };
    match ctx.api.leases(node).await {
        Ok(l) => state.leases = Some(l),
        Err(e) => state.error = Some(e.to_string()),
    }
    match ctx.api.list(node, PREFIX).await {
        Ok(kvs) => state.keys = Some(kvs.into_iter().map(|(k, _)| k).collect()),
        Err(e) => state.error = Some(e.to_string()),
    }
    state.at_ns = ctx.rec.clock.now_ns();
    state.waited_ms = start.elapsed().as_millis() as u64;
    state
}
