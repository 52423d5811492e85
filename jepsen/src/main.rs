//! shoal-jepsen: runs a real Shoal cluster (one node per network namespace),
//! injects faults while clients work, records every operation, and checks
//! the history for linearizability, lost writes and watch gaps.
//! See jepsen/README.md.

mod checker;
mod client;
mod cluster;
mod history;
mod nemesis;
mod netns;
mod output;
mod run;
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
    /// register | set | watch | all (all three at once), or a comma list.
    #[arg(long, default_value = "all")]
    workload: String,
    /// kill, pause, partition, membership (comma list), all, or none.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Where run directories go.
    #[arg(long, default_value = "./jepsen-runs")]
    out: PathBuf,
    /// The shoal binary (default: next to this binary, else
    /// $CARGO_TARGET_DIR/debug/shoal, else ~/.cache/shoal/target/debug/shoal).
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    /// Passed to every node: snapshot (and purge the log) this often.
    #[arg(long, default_value_t = 200)]
    snapshot_every: u64,
    /// Keep the nodes' data directories in the run directory.
    #[arg(long)]
    keep_data: bool,
    /// The CI set: fixed seeds covering every nemesis with all workloads,
    /// about two minutes in total. Ignores --seed/--runs/--workload/--nemesis/--time-limit.
    #[arg(long)]
    ci: bool,
}

/// (workload, nemesis, seed, time limit): the `--ci` runs.
/// Seeds chosen (with `shoal-jepsen schedule`) so that the set covers kill
/// and pause of a random node, the leader and a majority; partitions
/// majorities-ring, isolate-leader, halves, leader-minority; and removing
/// the leader and a random node.
const CI_RUNS: &[(&str, &str, u64, u64)] = &[
    ("all", "kill", 3, 20),
    ("all", "pause", 9, 20),
    ("all", "partition", 3, 20),
    ("all", "membership", 7, 20),
    ("all", "all", 10, 20),
];

fn find_shoal(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("--shoal-bin {} does not exist", p.display());
        }
        return Ok(p);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("shoal"));
        }
    }
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug/shoal"));
    }
    if let Ok(h) = std::env::var("HOME") {
        candidates.push(PathBuf::from(h).join(".cache/shoal/target/debug/shoal"));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "no shoal binary found: build it (cargo build -p shoal) or pass --shoal-bin"
        )
    })
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
        Some(Cmd::Check { dir }) => return Ok(if run::recheck(&dir)? { 0 } else { 1 }),
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
    nemesis::parse_kinds(&a.nemesis)?;

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
