//! The processes the demo started (agent, servers, `lb xdp-pass`): each in its own process
//! group, so Ctrl-C reaches only the demo, which stops them in order. Their pids are recorded
//! in a file, so `--clean` and the next demo find them after this one died.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd;

/// The running processes and the file their pids go to.
pub(super) struct Processes {
    /// `<pid> <role>` per line, appended at each start.
    pid_file: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: Vec<Proc>,
    /// Set by [`Processes::stop_all`]: nothing is started afterwards.
    stopped: bool,
}

/// One process and what it is for (`agent`, `server-b2`, `xdp-p0`).
struct Proc {
    role: String,
    child: Child,
}

impl Processes {
    /// No processes yet; their pids will go to `pid_file`.
    pub(super) fn new(pid_file: PathBuf) -> Self {
        Self {
            pid_file,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts `command` as `role` (`RUST_LOG=info`, stdout and stderr appended to `log`) and
    /// records its pid. Fails once [`Self::stop_all`] ran (the demo is being interrupted).
    pub(super) fn spawn(&self, role: &str, mut command: Command, log: &Path) -> Result<()> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        let mut state = self.state();
        if state.stopped {
            bail!("interrupted");
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::display(&command)))?;
        // A command of `Netns::command`: nsenter execs the program, so this is the program's pid.
        let mut pids = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.pid_file)?;
        writeln!(pids, "{} {role}", child.id())?;
        state.running.push(Proc {
            role: role.to_owned(),
            child,
        });
        Ok(())
    }

    /// Exit status of the process `role`, if it has exited.
    pub(super) fn exited(&self, role: &str) -> Option<ExitStatus> {
        let mut state = self.state();
        let proc = state.running.iter_mut().find(|p| p.role == role)?;
        proc.child.try_wait().ok().flatten()
    }

    /// Stops process `role` (SIGTERM) and waits for it.
    pub(super) fn stop(&self, role: &str) -> Result<()> {
        let proc = {
            let mut state = self.state();
            let i = state
                .running
                .iter()
                .position(|p| p.role == role)
                .with_context(|| format!("no process {role}"))?;
            state.running.remove(i)
        };
        stop_children(vec![proc], Duration::from_secs(3));
        Ok(())
    }

    /// Whether [`Self::stop_all`] ran.
    pub(super) fn all_stopped(&self) -> bool {
        self.state().stopped
    }

    /// Stops every process, the agents first with SIGTERM (it detaches its program and removes
    /// its pins); nothing starts afterwards. Returns `false` if an earlier call did it already.
    pub(super) fn stop_all(&self) -> bool {
        let procs = {
            let mut state = self.state();
            if state.stopped {
                return false;
            }
            state.stopped = true;
            std::mem::take(&mut state.running)
        };
        let (agent, others): (Vec<Proc>, Vec<Proc>) =
            procs.into_iter().partition(|p| p.role.starts_with("agent"));
        stop_children(agent, Duration::from_secs(5));
        stop_children(others, Duration::from_secs(3));
        true
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps them.
fn stop_children(mut procs: Vec<Proc>, grace: Duration) {
    for p in &procs {
        let _ = kill(Pid::from_raw(p.child.id() as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline
        && procs
            .iter_mut()
            .any(|p| matches!(p.child.try_wait(), Ok(None)))
    {
        thread::sleep(Duration::from_millis(20));
    }
    for p in &mut procs {
        if matches!(p.child.try_wait(), Ok(None)) {
            eprintln!("cleanup: {} did not stop on SIGTERM, killing it", p.role);
            let _ = p.child.kill();
        }
        let _ = p.child.wait();
    }
}
