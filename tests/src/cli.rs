//! Running the `shoal` binary as a command-line tool.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::node::{shoal_bin, Node};
use shoal_testkit::inherited_shoal_vars;

/// How long one CLI invocation may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);

/// The result of one `shoal` invocation.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl CliOutput {
    /// stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The non-empty lines of stdout.
    pub fn lines(&self) -> Vec<String> {
        self.stdout_text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Asserts exit status 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "shoal exited with {}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout_text(),
            self.stderr
        );
        self
    }

    /// Asserts a non-zero exit with a readable message on stderr and no panic.
    #[track_caller]
    pub fn assert_clean_failure(&self) -> &Self {
        assert!(
            !self.status.success(),
            "expected a failure, shoal exited with {}\nstdout: {}",
            self.status,
            self.stdout_text()
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "a failing command must explain itself on stderr (stdout: {})",
            self.stdout_text()
        );
        assert!(
            !self.stderr.contains("panicked") && !self.stdout_text().contains("panicked"),
            "the CLI panicked:\n{}",
            self.stderr
        );
        self
    }
}

/// A `shoal` command with the given arguments: inherited `SHOAL_*` variables
/// removed, stdin closed, stdout and stderr piped, killed when dropped.
pub fn shoal_command(args: &[&str]) -> Command {
    let mut command = Command::new(shoal_bin());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for name in inherited_shoal_vars() {
        command.env_remove(name);
    }
    command
}

/// Runs `shoal ARGS` to completion (20 s at most) with optional stdin bytes
/// and extra environment variables.
pub async fn run_shoal(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> CliOutput {
    let mut command = shoal_command(args);
    command.envs(env.iter().copied());
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", shoal_bin().display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        tokio::spawn(async move {
            // The command may exit without reading everything; that is its business.
            let _ = pipe.write_all(&input).await;
            let _ = pipe.shutdown().await;
        });
    }
    let output = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`shoal {}` did not finish within {CLI_TIMEOUT:?}",
                args.join(" ")
            )
        })
        .expect("waiting for shoal failed");
    CliOutput {
        status: output.status,
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Node {
    /// `["kv", "--endpoint", URL, ARGS...]`.
    pub fn cli_args(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["kv".to_string(), "--endpoint".to_string(), self.endpoint()];
        all.extend(args.iter().map(|a| a.to_string()));
        all
    }

    /// Runs `shoal kv --endpoint URL ARGS...` against this node.
    pub async fn run_cli(&self, args: &[&str]) -> CliOutput {
        let all = self.cli_args(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run_shoal(&all, None, &[]).await
    }

    /// Like [`Node::run_cli`], feeding `stdin` to the command.
    pub async fn run_cli_stdin(&self, args: &[&str], stdin: &[u8]) -> CliOutput {
        let all = self.cli_args(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run_shoal(&all, Some(stdin), &[]).await
    }

    /// Starts `shoal kv --endpoint URL ARGS...` without waiting for it (for
    /// `watch`); the child is killed when dropped.
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        let all = self.cli_args(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        shoal_command(&all)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", shoal_bin().display()))
    }
}
