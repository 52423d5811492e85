//! Running the Python clients in `tests/py/` (the official OpenTelemetry SDK
//! and Elasticsearch client) against a node.
//!
//! The interpreter is `$SHOAL_PYTHON`, else the venv that `./scripts/setup`
//! creates at `$HOME/.cache/shoal/pyenv`. A missing interpreter or package
//! fails the test, telling to run `./scripts/setup`: it is never skipped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::cli::CliOutput;

/// How long one script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The Python interpreter with the test clients installed.
pub fn python_bin() -> PathBuf {
    let path = crate::node::setup_tool("SHOAL_PYTHON", "pyenv/bin/python");
    assert!(
        path.is_file(),
        "the Python venv with the OpenTelemetry SDK and the elasticsearch client was not found \
         at {}: run ./scripts/setup, or set SHOAL_PYTHON to an interpreter that has them",
        path.display()
    );
    path
}

/// Path of a script in `tests/py/`.
pub fn py_script(name: &str) -> PathBuf {
    let path = crate::package_dir().join("py").join(name);
    assert!(path.is_file(), "missing test script {}", path.display());
    path
}

/// Runs `python tests/py/SCRIPT ARGS...` to completion (60 s at most).
/// A script that fails because a package is missing panics with the hint
/// to run `./scripts/setup`; other failures are returned for the test to
/// judge.
pub async fn run_python(script: &str, args: &[&str]) -> CliOutput {
    run_python_with_env(script, args, &[]).await
}

/// [`run_python`] with these environment variables set for the script
/// (e.g. `OTEL_EXPORTER_OTLP_HEADERS`, which the OpenTelemetry SDK reads).
pub async fn run_python_with_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let python = python_bin();
    let mut command = Command::new(&python);
    command
        .arg(py_script(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true);
    // The SDK reads OTEL_* variables; the developer's must not change a
    // test. requests lets REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE win over the
    // CA file a client is given (the OTLP/HTTP exporter's certificate).
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("OTEL_")
            || name_text == "REQUESTS_CA_BUNDLE"
            || name_text == "CURL_CA_BUNDLE"
        {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} {args:?} did not finish within {SCRIPT_TIMEOUT:?}"))
        .expect("waiting for python failed");
    let output = CliOutput {
        status: output.status,
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !output.stderr.contains("ModuleNotFoundError"),
        "{script}: a Python package is missing from {}: run ./scripts/setup\n{}",
        python.display(),
        output.stderr
    );
    output
}
