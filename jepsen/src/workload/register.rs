//! Register workload: reads, writes and compare-and-sets of small values on a
//! few keys. Each key serves a bounded number of operations and is then
//! replaced by a fresh one (Jepsen's "independent" keys), which keeps each
//! key's history small enough for the linearizability search even when many
//! operations are indeterminate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{op_of, pace, Ctx, Process};

/// Keys in use at once.
pub const SLOTS: usize = 3;
/// Operations per key before moving to the next one.
pub const OPS_PER_KEY: u64 = 100;
/// Values are 0..VALUES.
const VALUES: u32 = 5;

pub struct Keys {
    counters: Vec<AtomicU64>,
}

impl Keys {
    pub fn new() -> Arc<Keys> {
        Arc::new(Keys {
            counters: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The key for the next operation on `slot`.
    fn next(&self, slot: usize) -> String {
        let n = self.counters[slot].fetch_add(1, Ordering::Relaxed);
        format!("jepsen/r{slot}-{}", n / OPS_PER_KEY)
    }
}

pub async fn worker(ctx: Ctx, keys: Arc<Keys>, worker: usize, workers: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = Process::new(worker, workers, 0);
    while !ctx.stopped() {
        let node = rng.random_range(0..ctx.n);
        let key = keys.next(rng.random_range(0..SLOTS));
        let choice = rng.random_range(0..100);
        let start = ctx.rec.clock.now_ns();
        let op = if choice < 50 {
            let reply = ctx.api.read(node, &key).await;
            let value = reply.value.clone().flatten();
            op_of(
                "register",
                process.id,
                node,
                "read",
                &key,
                value,
                None,
                start,
                ctx.rec.clock.now_ns(),
                &reply,
            )
        } else if choice < 75 {
            let value = rng.random_range(0..VALUES).to_string();
            let reply = ctx.api.write(node, &key, &value).await;
            op_of(
                "register",
                process.id,
                node,
                "write",
                &key,
                Some(value),
                None,
                start,
                ctx.rec.clock.now_ns(),
                &reply,
            )
        } else {
            let old = rng.random_range(0..VALUES).to_string();
            let new = rng.random_range(0..VALUES).to_string();
            let reply = ctx.api.cas(node, &key, &old, &new).await;
            op_of(
                "register",
                process.id,
                node,
                "cas",
                &key,
                Some(new),
                Some(old),
                start,
                ctx.rec.clock.now_ns(),
                &reply,
            )
        };
        process.after(op.outcome);
        ctx.rec.record(op);
        pace(&mut rng).await;
    }
}
