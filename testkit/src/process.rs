//! [`Process`]: one child process with its output in log files, killed when
//! dropped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::{file_tail, remove_faketime_files, strip_ansi};

/// A slot for one child process (any program: `shoal`, etcd, a broker)
/// whose stdout and stderr are appended to log files. It can be started,
/// and started again after the process has ended; it remembers how the
/// process last ended. Dropping it kills the process (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    /// Stopped with SIGSTOP and not yet continued.
    paused: bool,
    /// How the process ended, once it was reaped.
    last_exit: Option<ExitStatus>,
    /// The running process is under libfaketime (its files are removed
    /// once it has been reaped).
    faketime: bool,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

/// Makes the kernel kill the process `command` starts (SIGKILL) when the
/// thread that started it ends: if the harness dies without running its
/// destructors (SIGKILL, abort), its children go too. Start the command
/// from a thread that lives as long as the process should (the main thread).
pub fn set_parent_death_signal(command: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

impl Process {
    /// A slot whose processes append stdout to `stdout_log` and stderr to
    /// `stderr_log` (the same path for one combined log). Nothing runs yet.
    pub fn new(stdout_log: &Path, stderr_log: &Path) -> Process {
        Process {
            child: None,
            paused: false,
            last_exit: None,
            faketime: false,
            stdout_log: stdout_log.to_path_buf(),
            stderr_log: stderr_log.to_path_buf(),
        }
    }

    /// Starts `command` with stdin closed and its output appended to the
    /// logs, after the line `header` (if not empty) in each log. Fails if a
    /// process is already running in this slot.
    pub fn start(&mut self, command: &mut Command, header: &str) -> Result<()> {
        if self.child.is_some() {
            bail!("a process is already running (pid {:?})", self.pid());
        }
        let stdout = open_log(&self.stdout_log, header)?;
        let stderr = if self.stderr_log == self.stdout_log {
            stdout.try_clone().context("cannot duplicate a log file")?
        } else {
            open_log(&self.stderr_log, header)?
        };
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        self.faketime = command.get_envs().any(|(name, value)| {
            name == "LD_PRELOAD" && value.is_some_and(|v| v.to_string_lossy().contains("faketime"))
        });
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", command.get_program().to_string_lossy()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// The process id, while it runs (or has exited but is not reaped yet).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process was started and has not been seen to end, and is
    /// not paused: one worth sending requests to. Does not reap.
    pub fn is_up(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    /// Whether the process is stopped with SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// How the process ended the last time it was reaped.
    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    /// Reaps the process if it has exited and returns how it ended; `None`
    /// while it runs, or if nothing was started.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        match child.try_wait().context("waitpid failed")? {
            None => Ok(None),
            Some(status) => {
                let pid = child.id();
                self.reaped(pid, status);
                Ok(Some(status))
            }
        }
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && matches!(self.try_exit(), Ok(None))
    }

    fn reaped(&mut self, pid: u32, status: ExitStatus) {
        self.child = None;
        self.paused = false;
        self.last_exit = Some(status);
        if self.faketime {
            remove_faketime_files(pid);
        }
    }

    /// SIGKILL the process and reap it (a paused process is killed too).
    /// Does nothing if nothing runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.last_exit = Some(status);
            }
            if self.faketime {
                remove_faketime_files(child.id());
            }
        }
        self.paused = false;
    }

    /// Sends a signal (`libc::SIGTERM`, ...) to the running process.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("signal {signal}: the process is not running"))?;
        let pid = libc::pid_t::try_from(pid).context("pid does not fit in pid_t")?;
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own child, which is not reaped yet, so it cannot have been reused.
        let result = unsafe { libc::kill(pid, signal) };
        if result != 0 {
            bail!(
                "kill({pid}, {signal}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but answers
    /// nothing, like a hung machine.
    pub fn pause(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// Continues a paused process (SIGCONT).
    pub fn resume(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit by itself and reaps
    /// it; an error (with the log's tail) if it still runs then. Returns the
    /// exit status (the last one if the process had already been reaped).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.is_none() {
                return self
                    .last_exit
                    .ok_or_else(|| anyhow!("wait_exit: the process was never started"));
            }
            if let Some(status) = self.try_exit()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the process did not exit within {timeout:?}\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM (continuing the process first if it is paused) and
    /// waits up to `timeout` for it to exit; see [`Process::wait_exit`].
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if self.paused {
            self.resume()?;
        }
        self.signal(libc::SIGTERM)?;
        self.wait_exit(timeout).await
    }

    /// SIGTERM, up to `grace` for a clean exit, then SIGKILL (blocking; for
    /// use outside an async context too). Returns how the process ended, in
    /// words.
    pub fn stop(&mut self, grace: Duration) -> String {
        if self.child.is_none() {
            return "already stopped".into();
        }
        if let Ok(Some(status)) = self.try_exit() {
            return format!("had already exited ({status})");
        }
        if self.paused {
            let _ = self.resume();
        }
        let _ = self.signal(libc::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < grace {
            if let Ok(Some(status)) = self.try_exit() {
                return format!(
                    "exited after SIGTERM in {} ms ({status})",
                    started.elapsed().as_millis()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        format!(
            "did not exit within {} ms of SIGTERM; killed (SIGKILL)",
            grace.as_millis()
        )
    }

    /// The log files: (stdout, stderr), the same path for a combined log.
    pub fn log_paths(&self) -> (&Path, &Path) {
        (&self.stdout_log, &self.stderr_log)
    }

    /// The last `lines` lines of stderr and of stdout (once for a combined
    /// log), without colour sequences, each under a header naming the file.
    pub fn log_tail(&self, lines: usize) -> String {
        let tail = |path: &Path| file_tail(path, lines, strip_ansi);
        if self.stdout_log == self.stderr_log {
            tail(&self.stdout_log)
        } else {
            format!("{}{}", tail(&self.stderr_log), tail(&self.stdout_log))
        }
    }
}

fn open_log(path: &Path, header: &str) -> Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if !header.is_empty() {
        writeln!(file, "{header}")
            .with_context(|| format!("cannot write to {}", path.display()))?;
    }
    Ok(file)
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}
