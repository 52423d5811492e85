//! The CPU msg-bench's servers and the bench itself use during a run, sampled
//! from /proc.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0;
    };
    // Fields after the command name (which may contain spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU samples (servers, this process) every 50 ms until stopped.
pub(super) fn sample_cpu(
    pids: Vec<u32>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<(Instant, u64, u64)>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        loop {
            let servers: u64 = pids.iter().map(|pid| cpu_ticks(Some(*pid))).sum();
            samples.push((Instant::now(), servers, cpu_ticks(None)));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.changed() => {
                    let servers: u64 = pids.iter().map(|pid| cpu_ticks(Some(*pid))).sum();
                    samples.push((Instant::now(), servers, cpu_ticks(None)));
                    return samples;
                }
            }
        }
    })
}

/// The CPU the servers and the bench used over a run.
#[derive(Default)]
pub(super) struct CpuUse {
    /// Servers' CPU, 100 = one core busy all the time.
    pub(super) server_pct: f64,
    /// This process's CPU, likewise.
    pub(super) bench_pct: f64,
    /// Seconds of CPU the servers used (every core counted).
    pub(super) server_secs: f64,
}

/// The servers' and bench's CPU between `from` and `to`, from the samples
/// on either side of them (the servers are idle just before and after a
/// run, so the seconds are those of the run).
pub(super) fn cpu_between(samples: &[(Instant, u64, u64)], from: Instant, to: Instant) -> CpuUse {
    let first = samples
        .iter()
        .rev()
        .find(|s| s.0 <= from)
        .or(samples.first());
    let last = samples.iter().find(|s| s.0 >= to).or(samples.last());
    let (Some(first), Some(last)) = (first, last) else {
        return CpuUse::default();
    };
    let secs = last.0.saturating_duration_since(first.0).as_secs_f64();
    if secs <= 0.0 {
        return CpuUse::default();
    }
    let per_sec = ticks_per_sec();
    let server_secs = last.1.saturating_sub(first.1) as f64 / per_sec;
    let bench_secs = last.2.saturating_sub(first.2) as f64 / per_sec;
    CpuUse {
        server_pct: server_secs / secs * 100.0,
        bench_pct: bench_secs / secs * 100.0,
        server_secs,
    }
}
