//! Daemons a lab runs inside its namespaces (bird, FRR, keepalived), each with a scratch
//! directory of its own files (configuration, control socket, pid file, log), stopped and
//! removed on drop, also when a test fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::{command::display, error::LabError};

/// Numbers the scratch directories of this process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long a daemon gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A directory for one lab's files, `<tmp>/lbt-<tag>-<pid>-<n>`, removed on drop (kept when
/// `LB_KEEP_TEST_LOGS` is set, to read the daemons' logs after a failure).
pub struct Scratch {
    /// The directory.
    pub dir: PathBuf,
    /// Whether to remove it on drop.
    remove: bool,
}

impl Scratch {
    /// Creates a new, unique directory.
    pub fn try_new(tag: &str) -> Result<Self, LabError> {
        let dir = std::env::temp_dir().join(format!(
            "lbt-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        create_dir(&dir)?;
        Ok(Self { dir, remove: true })
    }

    /// An existing directory owned by someone else (the demo's), never removed by this value.
    pub fn existing(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            remove: false,
        }
    }

    /// A subdirectory (created).
    pub fn try_subdir(&self, name: &str) -> Result<PathBuf, LabError> {
        let dir = self.dir.join(name);
        create_dir(&dir)?;
        Ok(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.remove && std::env::var_os("LB_KEEP_TEST_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir(dir: &Path) -> Result<(), LabError> {
    fs::create_dir_all(dir).map_err(|source| LabError::Write {
        path: dir.display().to_string(),
        source,
    })
}

/// Writes `text` to `path`.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), LabError> {
    fs::write(path, text).map_err(|source| LabError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// A daemon process; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    /// What it is, for messages: `bird in lbt-red-router-123-4`.
    pub name: String,
    /// Its stdout and stderr (appended).
    pub log: PathBuf,
    /// `None` once stopped.
    child: Option<Child>,
}

impl Daemon {
    /// Starts `command` (stdin closed, stdout and stderr appended to `log`). Use a command of
    /// [`crate::Netns::command`]: nsenter execs the program, so the process is the daemon's.
    pub fn try_spawn(name: &str, mut command: Command, log: &Path) -> Result<Self, LabError> {
        let line = display(&command);
        let open = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|source| LabError::Write {
                    path: log.display().to_string(),
                    source,
                })
        };
        let out = open()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(out)
            .spawn()
            .map_err(|source| LabError::Start {
                command: line,
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// An error if it has exited (with the end of its log), else `Ok`.
    pub fn check_running(&mut self) -> Result<(), LabError> {
        let Some(child) = &mut self.child else {
            return Err(self.exited_error(None));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.exited_error(Some(status))),
            Err(_) => Err(self.exited_error(None)),
        }
    }

    fn exited_error(&self, status: Option<ExitStatus>) -> LabError {
        use std::os::unix::process::ExitStatusExt;
        LabError::Exited {
            name: self.name.clone(),
            status: status.unwrap_or_else(|| ExitStatus::from_raw(0)),
            log: self.log.display().to_string(),
            tail: self.log_tail(20),
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends `signal` (SIGHUP to reload, SIGKILL to crash it).
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Stops it: SIGTERM, and SIGKILL if it has not exited after a few seconds. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Calls `probe` every 20 ms until it returns `Some`, or fails with `what` and the last
/// `detail` after `timeout`; `check` runs first each time (a daemon that exited fails at once).
pub(crate) fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), LabError>,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        check()?;
        let detail = match probe() {
            Ok(value) => return Ok(value),
            Err(detail) => detail,
        };
        if Instant::now() > deadline {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                waited: timeout,
                detail,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
