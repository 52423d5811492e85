//! The `main` of a benchmark binary: a multi-threaded runtime, a 30-minute
//! cap, and exit status 2 with the error when the benchmark itself fails.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

/// Longest a benchmark may run.
const CAP: Duration = Duration::from_secs(1800);

pub fn run_benchmark(name: &str, run: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(async { tokio::time::timeout(CAP, run).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{name}: {e:#}");
            ExitCode::from(2)
        }
        Err(_) => {
            eprintln!("{name}: gave up after {} minutes", CAP.as_secs() / 60);
            ExitCode::from(2)
        }
    }
}
