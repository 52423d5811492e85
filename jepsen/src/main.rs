//! shoal-jepsen: runs a real Shoal cluster (one node per network namespace),
//! injects faults while clients work, records every operation, and checks
//! the history for linearizability, lost writes, watch gaps and lease
//! expiry, and the replicas for identical state. See jepsen/README.md.

mod checker;
mod client;
mod cluster;
mod history;
mod nemesis;
mod netns;
mod output;
mod run;
mod verdict;
mod workload;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use run::RunSpec;

#[derive(Parser)]
#[command(
    name = "shoal-jepsen",
    about = "Fault-injection tests of a real Shoal cluster",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Remove every network namespace, bridge and veth that a run left behind
    /// (names shoal-j* / shj*), killing the processes inside.
    Cleanup,
    /// Print the fault schedule a seed gives (for --nemesis and --time-limit)
    /// without running anything.
    Schedule {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value = "all")]
        nemesis: String,
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
    },
    /// Re-run the checkers on a finished run directory (prints the failure
    /// report if it is invalid).
    Check { dir: PathBuf },
}

#[derive(Args)]
struct RunArgs {
    /// Number of Shoal nodes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Seconds of client load and faults per run (setup, settling and final
    /// reads come on top).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Number of runs; seeds are --seed, --seed+1, ...
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Seed of the first run (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Explicit seeds, comma-separated (one run each; overrides --seed/--runs).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// register | set | watch | lease | all (all four at once), or a comma list.
    #[arg(long, default_value = "all")]
    workload: String,
    /// Comma list of: kill, pause, partition, membership, crash (kill -9 of
    /// the whole cluster with the old leader back first, or one node
    /// restarted at once), slow-fsync (the leader fsyncs slower than its
    /// followers, then a crash), power-cut (kill -9 losing every unsynced
    /// write), clock (one node's wall clock jumps minutes, libfaketime),
    /// snapshot (a follower that must install a snapshot, crashed while it
    /// does); or all, or none.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Where run directories go.
    #[arg(long, default_value = "./jepsen-runs")]
    out: PathBuf,
    /// The shoal binary (default: $SHOAL_BIN, else next to this binary, else
    /// $CARGO_TARGET_DIR/debug/shoal, else ~/.cache/shoal/target/debug/shoal).
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    /// Passed to every node: snapshot (and purge the log) this often
    /// [default: 200, or 25 with the snapshot nemesis].
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Nodes (indexes, comma list, or `all`) that run the whole run with a
    /// slow Raft log fsync (SHOAL_FAULT_LOG_SYNC_DELAY_MS; debug builds).
    #[arg(long)]
    slow_fsync_nodes: Option<String>,
    /// The fsync delay of slow nodes (--slow-fsync-nodes and the slow-fsync
    /// nemesis), in ms.
    #[arg(long, default_value_t = nemesis::DEFAULT_FSYNC_DELAY_MS)]
    fsync_delay_ms: u64,
    /// Every node keeps unsynced writes in memory only
    /// (SHOAL_FAULT_LOSE_UNSYNCED=1; debug builds), so every kill -9 acts as
    /// a power cut. Implied by the power-cut nemesis.
    #[arg(long)]
    lose_unsynced: bool,
    /// Passed to every node as --election-timeout-ms [default: the node's].
    #[arg(long)]
    election_timeout_ms: Option<u64>,
    /// Keep the nodes' data directories in the run directory.
    #[arg(long)]
    keep_data: bool,
    /// The CI set: 8 fixed seeds covering every nemesis with all workloads,
    /// about three and a half minutes in total. Ignores
    /// --seed/--runs/--workload/--nemesis/--time-limit.
    #[arg(long)]
    ci: bool,
}

/// (workload, nemesis, seed, time limit): the `--ci` runs.
/// Seeds chosen (with `shoal-jepsen schedule`) so that the set covers kill
/// and pause of a random node, the leader and a majority; partitions
/// majorities-ring, isolate-leader, halves, leader-minority; and removing
/// the leader and a random node (the first five runs, the last of them with
/// the four original kinds mixed). Then: the leader with a slow fsync and
/// three whole-cluster crashes with the old leader back first (seed 2: the
/// combination that found the forked-replicas bug); power cuts of everyone
/// and of a majority, a fast restart of the leader and a whole-cluster
/// crash (seed 20); a follower that must install a snapshot, killed while
/// it does, then the leader killed while one installs, and the leader's
/// clock jumping forward (seed 2).
const CI_RUNS: &[(&str, &str, u64, u64)] = &[
    ("all", "kill", 3, 20),
    ("all", "pause", 9, 20),
    ("all", "partition", 3, 20),
    ("all", "membership", 7, 20),
    ("all", "kill,pause,partition,membership", 10, 20),
    ("all", "slow-fsync", 2, 20),
    ("all", "crash,power-cut", 20, 20),
    ("all", "snapshot,clock", 2, 20),
];

/// `0,2` / `all` / `` → node indexes.
fn parse_nodes(spec: &str, nodes: usize) -> Result<Vec<usize>> {
    let spec = spec.trim();
    if spec == "all" {
        return Ok((0..nodes).collect());
    }
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<usize>() {
            Ok(i) if i < nodes => out.push(i),
            _ => {
                bail!("`{part}` is not a node index below {nodes} (expected a comma list or `all`)")
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn find_shoal(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("--shoal-bin {} does not exist", p.display());
        }
        return Ok(p);
    }
    shoal_testkit::shoal_bin()
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match real_main(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal-jepsen: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

async fn real_main(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Some(Cmd::Cleanup) => {
            let removed = netns::cleanup_all()?;
            if removed.is_empty() {
                println!("nothing to clean up");
            }
            for r in removed {
                println!("removed {r}");
            }
            return Ok(0);
        }
        Some(Cmd::Schedule {
            seed,
            nemesis: spec,
            time_limit,
        }) => {
            let kinds = nemesis::parse_kinds(&spec)?;
            for p in nemesis::schedule(seed, &kinds, time_limit * 1000) {
                println!(
                    "{:>7.1}s  {:>5.1}s  {:<10} {}",
                    p.at_ms as f64 / 1000.0,
                    p.duration_ms as f64 / 1000.0,
                    p.kind,
                    p.variant
                );
            }
            return Ok(0);
        }
        Some(Cmd::Check { dir }) => return Ok(if verdict::recheck(&dir)? { 0 } else { 1 }),
        None => {}
    }
    let a = cli.run;
    if a.nodes < 3 || a.nodes > 20 {
        bail!("--nodes must be between 3 and 20");
    }
    netns::Net::preflight()?;
    let shoal_bin = find_shoal(a.shoal_bin)?;
    // Parse early so that a typo fails before any cluster starts.
    run::Workloads::parse(&a.workload)?;
    let kinds = nemesis::parse_kinds(&a.nemesis)?;
    if a.ci || kinds.iter().any(|k| k == nemesis::NEEDS_FAKE_CLOCK) {
        cluster::find_libfaketime()?;
    }
    let slow_fsync_nodes = parse_nodes(a.slow_fsync_nodes.as_deref().unwrap_or(""), a.nodes)?;

    let mut specs = Vec::new();
    let base = |seed, workload: &str, nemesis: &str, time_limit_s| RunSpec {
        seed,
        workload: workload.to_string(),
        nemesis: nemesis.to_string(),
        time_limit_s,
        nodes: a.nodes,
        shoal_bin: shoal_bin.clone(),
        out: a.out.clone(),
        snapshot_every: a.snapshot_every,
        keep_data: a.keep_data,
        slow_fsync_nodes: slow_fsync_nodes.clone(),
        fsync_delay_ms: a.fsync_delay_ms,
        lose_unsynced: a.lose_unsynced,
        election_timeout_ms: a.election_timeout_ms,
    };
    if a.ci {
        for (w, n, seed, t) in CI_RUNS {
            specs.push(base(*seed, w, n, *t));
        }
    } else {
        let seeds: Vec<u64> = if !a.seeds.is_empty() {
            a.seeds.clone()
        } else {
            let first = a.seed.unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                (t.as_nanos() as u64 ^ std::process::id() as u64) % 1_000_000
            });
            (0..a.runs as u64).map(|i| first + i).collect()
        };
        for seed in seeds {
            specs.push(base(seed, &a.workload, &a.nemesis, a.time_limit));
        }
    }

    // ctrl-c / SIGTERM: remove the active run's namespaces (which kills its
    // nodes) before exiting.
    tokio::spawn(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("\nshoal-jepsen: interrupted; cleaning up");
        if let Some(rid) = run::ACTIVE_RUN.lock().unwrap().clone() {
            netns::cleanup_run(&rid);
        }
        std::process::exit(130);
    });

    std::fs::create_dir_all(&a.out)?;
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut all_valid = true;
    for (i, spec) in specs.iter().enumerate() {
        let t = Instant::now();
        match run::run_one(spec, i + 1).await {
            Ok(r) => {
                all_valid &= r.valid;
                rows.push(r.row);
            }
            Err(e) => {
                all_valid = false;
                eprintln!("run {}: harness error: {e:#}", i + 1);
                rows.push(output::Row {
                    run: i + 1,
                    workload: spec.workload.clone(),
                    nemesis: spec.nemesis.clone(),
                    seed: spec.seed,
                    ops: 0,
                    info: 0,
                    faults: 0,
                    secs: t.elapsed().as_secs_f64(),
                    verdict: "ERROR".into(),
                    detail: format!("{e:#}"),
                    dir: String::new(),
                });
            }
        }
    }
    let table = output::table(&rows);
    println!("\n{table}");
    println!(
        "{} run(s) in {:.0}s: {}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        if all_valid {
            "all valid"
        } else {
            "NOT all valid"
        }
    );
    let _ = output::write_json(&a.out.join("summary.json"), &rows);
    Ok(if all_valid { 0 } else { 1 })
}
