//! msg-bench's report: the tables of a run, and what it ran on.

use std::path::Path;
use std::process::Command;

use super::{Args, Outcome, Scenario, System, NATS, SHOAL};

pub(super) struct Row {
    pub(super) topology: &'static str,
    pub(super) scenario: Scenario,
    pub(super) payload: usize,
    pub(super) results: Vec<(System, anyhow::Result<Outcome>)>,
}

pub(super) fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes.trailing_zeros() >= 10 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

pub(super) fn ms_short(nanos: u64) -> String {
    let ms = nanos as f64 / 1e6;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.1}")
    }
}

fn scenario_label(row: &Row, args: &Args) -> String {
    let place = if row.topology == "single" {
        "1 server"
    } else {
        "3 servers, A→B"
    };
    match row.scenario {
        Scenario::Throughput => format!("1→1 stream, {place}"),
        Scenario::Fanout => format!("1→{} fan-out, {place}", args.fanout),
        Scenario::Latency => format!("latency @{} msg/s, {place}", args.rate),
    }
}

fn result_of(row: &Row, system: System) -> Option<&anyhow::Result<Outcome>> {
    row.results
        .iter()
        .find(|(s, _)| *s == system)
        .map(|(_, r)| r)
}

fn rate_cell(result: Option<&anyhow::Result<Outcome>>, scenario: Scenario) -> String {
    match result {
        None => "–".into(),
        Some(Err(_)) => "error".into(),
        Some(Ok(o)) if scenario == Scenario::Fanout => {
            format!(
                "{} ({}/sub)",
                thousands(o.rate()),
                thousands(o.rate() / o.subscribers as f64)
            )
        }
        Some(Ok(o)) => thousands(o.rate()),
    }
}

fn latency_cell(result: Option<&anyhow::Result<Outcome>>) -> String {
    match result {
        Some(Ok(Outcome {
            latency: Some(s), ..
        })) => format!("{} / {} ms", ms_short(s.p50), ms_short(s.p99)),
        Some(Err(_)) => "error".into(),
        _ => "–".into(),
    }
}

fn lost_cell(result: Option<&anyhow::Result<Outcome>>) -> String {
    match result {
        Some(Ok(o)) if o.lost() == 0 => "0".into(),
        Some(Ok(o)) => format!(
            "{} ({:.1}%)",
            thousands(o.lost() as f64),
            o.lost() as f64 * 100.0 / o.expected.max(1) as f64
        ),
        Some(Err(_)) => "error".into(),
        None => "–".into(),
    }
}

pub(super) fn print_report(rows: &[Row], args: &Args) {
    println!();
    println!("| scenario | payload | NATS msgs/s | Shoal msgs/s | ratio | NATS p50/p99 | Shoal p50/p99 | NATS lost | Shoal lost |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        let (nats, shoal) = (result_of(row, NATS), result_of(row, SHOAL));
        let ratio = match (nats, shoal) {
            (Some(Ok(n)), Some(Ok(s))) if n.rate() > 0.0 && row.scenario != Scenario::Latency => {
                format!("{:.2}", s.rate() / n.rate())
            }
            _ => "–".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            scenario_label(row, args),
            size_label(row.payload),
            rate_cell(nats, row.scenario),
            rate_cell(shoal, row.scenario),
            ratio,
            latency_cell(nats),
            latency_cell(shoal),
            lost_cell(nats),
            lost_cell(shoal),
        );
    }

    println!();
    println!("Details of the runs in the table (CPU: 100% = one core, first publish → last delivery, servers summed):");
    println!();
    println!("| scenario | payload | system | sent | publish msgs/s | delivered | lost | dup | time s | p50 / p99 / max | server CPU | bench CPU | notes |");
    println!(
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    let mut errors = Vec::new();
    for row in rows {
        for (system, result) in &row.results {
            let label = scenario_label(row, args);
            match result {
                Err(e) => {
                    println!(
                        "| {label} | {} | {} | error | | | | | | | | | see below |",
                        size_label(row.payload),
                        system.name()
                    );
                    errors.push(format!(
                        "{label}, {}, {}: {e:#}",
                        size_label(row.payload),
                        system.name()
                    ));
                }
                Ok(o) => {
                    let mut notes = Vec::new();
                    if o.all_rates.len() > 1 {
                        let rates: Vec<String> =
                            o.all_rates.iter().map(|r| thousands(*r)).collect();
                        notes.push(format!(
                            "median of {} runs: {} msgs/s",
                            rates.len(),
                            rates.join(" / ")
                        ));
                    }
                    if o.dropped_reported > 0 {
                        notes.push(format!("{} reported dropped", o.dropped_reported));
                    }
                    if o.nats_slow_consumer > 0 {
                        notes.push(format!("{} slow-consumer events", o.nats_slow_consumer));
                    }
                    if o.nats_disconnected > 0 {
                        notes.push(format!("{} disconnects", o.nats_disconnected));
                    }
                    if o.malformed > 0 {
                        notes.push(format!("{} malformed", o.malformed));
                    }
                    if let Some(wait) = o.interest_wait {
                        notes.push(format!("interest seen on A after {} ms", wait.as_millis()));
                    }
                    for ended in &o.ended {
                        notes.push(format!("stream ended: {ended}"));
                    }
                    let latency = o
                        .latency
                        .as_ref()
                        .map(|s| {
                            format!(
                                "{} / {} / {} ms",
                                ms_short(s.p50),
                                ms_short(s.p99),
                                ms_short(s.max)
                            )
                        })
                        .unwrap_or_else(|| "–".into());
                    println!(
                        "| {label} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {latency} | {:.0}% | {:.0}% | {} |",
                        size_label(row.payload),
                        system.name(),
                        thousands(o.sent as f64),
                        thousands(o.sent as f64 / o.publish_secs.max(1e-9)),
                        thousands(o.delivered as f64),
                        thousands(o.lost() as f64),
                        o.duplicates,
                        o.elapsed_secs,
                        o.cpu.server_pct,
                        o.cpu.bench_pct,
                        notes.join("; "),
                    );
                }
            }
        }
    }
    for error in &errors {
        println!("error: {error}");
    }

    // The targets, stated as measured (nothing is tuned to meet them).
    println!();
    println!("Targets:");
    for row in rows {
        let (Some(Ok(nats)), Some(Ok(shoal))) = (result_of(row, NATS), result_of(row, SHOAL))
        else {
            continue;
        };
        match row.scenario {
            Scenario::Throughput | Scenario::Fanout if nats.rate() > 0.0 => {
                let ratio = shoal.rate() / nats.rate();
                println!(
                    "- Shoal ≥ 0.5 × NATS throughput, {}, {}: {ratio:.2} × ({})",
                    scenario_label(row, args),
                    size_label(row.payload),
                    if ratio >= 0.5 { "met" } else { "NOT met" }
                );
            }
            Scenario::Latency => {
                if let Some(s) = &shoal.latency {
                    println!(
                        "- Shoal p99 < 5 ms, {}, {}: {} ms ({})",
                        scenario_label(row, args),
                        size_label(row.payload),
                        ms_short(s.p99),
                        if s.p99 < 5_000_000 { "met" } else { "NOT met" }
                    );
                }
            }
            _ => {}
        }
    }
}

/// Each system with TLS and/or ACLs on beside itself with them off
/// (`plain`: Shoal, or NATS for `nats-tls`): delivered msgs/s and latency,
/// with the ratio to the plain figure. The targets are checked for
/// Shoal; NATS's ratios show what the same security costs the peer.
pub(super) fn print_security_report(
    rows: &[Row],
    args: &Args,
    systems: &[System],
    plain_system: System,
) {
    let variants: Vec<System> = systems
        .iter()
        .copied()
        .filter(|s| s.plain() == plain_system && *s != plain_system)
        .collect();
    if variants.is_empty() || !systems.contains(&plain_system) {
        return;
    }
    let plain_name = plain_system.name();
    println!();
    println!("{plain_name} with security on, beside {plain_name} without (in parentheses: × plain; for latency, p99 × plain):");
    println!();
    let names: Vec<&str> = variants.iter().map(|v| v.name()).collect();
    println!(
        "| scenario | payload | {plain_name} | {} |",
        names.join(" | ")
    );
    println!("| --- | ---: | ---: |{}", " ---: |".repeat(variants.len()));
    let mut targets = Vec::new();
    for row in rows {
        let Some(Ok(plain)) = result_of(row, plain_system) else {
            continue;
        };
        let mut cells = Vec::new();
        for variant in &variants {
            let Some(Ok(o)) = result_of(row, *variant) else {
                cells.push("error".to_string());
                continue;
            };
            let cell = match (&row.scenario, &o.latency, &plain.latency) {
                (Scenario::Latency, Some(l), Some(p)) => {
                    let ratio = l.p99 as f64 / p.p99.max(1) as f64;
                    targets.push(format!(
                        "- {} p99 ≤ 1.2 × plain, {}, {}: {ratio:.2} × ({})",
                        variant.name(),
                        scenario_label(row, args),
                        size_label(row.payload),
                        if ratio <= 1.2 { "met" } else { "NOT met" }
                    ));
                    format!("{} / {} ms ({ratio:.2})", ms_short(l.p50), ms_short(l.p99))
                }
                (Scenario::Latency, _, _) => "–".to_string(),
                _ => {
                    let ratio = o.rate() / plain.rate().max(1e-9);
                    targets.push(format!(
                        "- {} ≥ 0.9 × plain throughput, {}, {}: {ratio:.2} × ({})",
                        variant.name(),
                        scenario_label(row, args),
                        size_label(row.payload),
                        if ratio >= 0.9 { "met" } else { "NOT met" }
                    ));
                    format!("{} ({ratio:.2})", thousands(o.rate()))
                }
            };
            cells.push(cell);
        }
        let plain_cell = match (&row.scenario, &plain.latency) {
            (Scenario::Latency, Some(l)) => format!("{} / {} ms", ms_short(l.p50), ms_short(l.p99)),
            (Scenario::Latency, None) => "–".to_string(),
            _ => thousands(plain.rate()),
        };
        println!(
            "| {} | {} | {plain_cell} | {} |",
            scenario_label(row, args),
            size_label(row.payload),
            cells.join(" | ")
        );
    }
    print_server_cpu(rows, args, &variants, plain_system);
    if plain_system == SHOAL {
        println!();
        println!("Targets (security on):");
        for target in targets {
            println!("{target}");
        }
    }
}

/// The servers' CPU per delivered message of the throughput and fan-out
/// rows, each variant beside the plain system. The bench's clients run on
/// the same cores as the servers and decrypt what these encrypt, so the
/// msgs/s above count the clients' TLS work too; a server on cores of its
/// own is bound by this figure instead (in parentheses: plain's µs over the
/// variant's, the share of plain throughput such a server keeps).
fn print_server_cpu(rows: &[Row], args: &Args, variants: &[System], plain_system: System) {
    let plain_name = plain_system.name();
    let names: Vec<&str> = variants.iter().map(|v| v.name()).collect();
    println!();
    println!("{plain_name}'s servers' CPU per delivered message, µs (in parentheses: plain's µs / the variant's):");
    println!();
    println!(
        "| scenario | payload | {plain_name} | {} |",
        names.join(" | ")
    );
    println!("| --- | ---: | ---: |{}", " ---: |".repeat(variants.len()));
    for row in rows {
        if row.scenario == Scenario::Latency {
            continue;
        }
        let Some(Ok(plain)) = result_of(row, plain_system) else {
            continue;
        };
        let plain_us = plain.server_us_per_message();
        let cells: Vec<String> = variants
            .iter()
            .map(|variant| match result_of(row, *variant) {
                Some(Ok(o)) => {
                    let us = o.server_us_per_message();
                    format!("{us:.2} ({:.2})", plain_us / us.max(1e-9))
                }
                _ => "error".to_string(),
            })
            .collect();
        println!(
            "| {} | {} | {plain_us:.2} | {} |",
            scenario_label(row, args),
            size_label(row.payload),
            cells.join(" | ")
        );
    }
}

pub(super) fn command_output(program: &Path, arg: &str) -> String {
    match Command::new(program).arg(arg).output() {
        Ok(out) => {
            String::from_utf8_lossy(&out.stdout).trim().to_string()
                + String::from_utf8_lossy(&out.stderr).trim()
        }
        Err(e) => format!("? ({e})"),
    }
}

/// Client crate versions, from the workspace lock file the bench was built with.
pub(super) fn locked_versions(names: &[&str]) -> String {
    let lock = include_str!("../../Cargo.lock");
    let mut out = Vec::new();
    for name in names {
        let needle = format!("name = \"{name}\"\nversion = \"");
        let versions: Vec<&str> = lock
            .match_indices(&needle)
            .filter_map(|(i, _)| lock[i + needle.len()..].split('"').next())
            .collect();
        out.push(format!("{name} {}", versions.join("/")));
    }
    out.join(", ")
}

pub(super) fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("nproc {cpus}, {model}, Linux {kernel}")
}

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
