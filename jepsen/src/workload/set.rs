//! Set workload: each worker adds unique elements (`jepsen/set/{worker}-{n}`);
//! after healing, every node lists the whole prefix.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{op_of, pace, Ctx, Process};
use crate::checker::set::FinalRead;

pub const PREFIX: &str = "jepsen/set/";

pub async fn worker(ctx: Ctx, worker: usize, workers: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = Process::new(worker, workers, 1000);
    let mut seq = 0u64;
    while !ctx.stopped() {
        let node = rng.random_range(0..ctx.n);
        let element = format!("{worker}-{seq}");
        seq += 1;
        let key = format!("{PREFIX}{element}");
        let start = ctx.rec.clock.now_ns();
        let reply = ctx.api.write(node, &key, &element).await;
        let op = op_of(
            "set",
            process.id,
            node,
            "add",
            &key,
            Some(element),
            None,
            start,
            ctx.rec.clock.now_ns(),
            &reply,
        );
        process.after(op.outcome);
        ctx.rec.record(op);
        pace(&mut rng).await;
    }
}

/// Lists the set on every node, one after the other, retrying each for up
/// to `patience`.
pub async fn final_reads(ctx: &Ctx, patience: Duration) -> Vec<FinalRead> {
    let mut reads = Vec::new();
    for node in 0..ctx.n {
        let deadline = tokio::time::Instant::now() + patience;
        let mut last_error;
        loop {
            match ctx.api.list(node, PREFIX).await {
                Ok(kvs) => {
                    let elements = kvs.into_iter().map(|(_, v)| v).collect();
                    reads.push(FinalRead {
                        node,
                        at_ns: ctx.rec.clock.now_ns(),
                        elements: Some(elements),
                        error: None,
                    });
                    break;
                }
                Err(e) => last_error = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                reads.push(FinalRead {
                    node,
                    at_ns: ctx.rec.clock.now_ns(),
                    elements: None,
                    error: Some(last_error),
                });
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    reads
}
