//! Running `lb run` as a real process inside a test namespace, with its own state directory
//! and configuration file, all removed on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

pub use nix::sys::signal::Signal;
use nix::{sys::signal::kill, unistd::Pid};

use crate::netns::{wait_every, Netns};

/// Waits until the file at `path` (a log another process writes) contains `needle` at least
/// `count` times; false if not within `timeout`.
pub fn wait_file(path: &Path, needle: &str, count: usize, timeout: Duration) -> bool {
    wait_every(timeout, Duration::from_millis(20), || {
        fs::read_to_string(path)
            .unwrap_or_default()
            .matches(needle)
            .count()
            >= count
    })
    .is_some()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The `lb` binary of the same build profile as the running executable: test executables live
/// in `target/<profile>/deps/`, binaries such as the benchmarks in `target/<profile>/`, and `lb`
/// in `target/<profile>/`. A binary cannot depend on another crate's binary, so it must be built
/// first: `cargo build -p lb-user` (`--release` for release benchmarks; `cargo xtask test` does
/// it before running tests). The error says which command to run.
pub fn find_lb_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot locate the running executable: {e}"))?;
    let dirs: Vec<&Path> = exe.ancestors().skip(1).take(2).collect();
    if let Some(lb) = dirs
        .iter()
        .map(|dir| dir.join("lb"))
        .find(|lb| lb.is_file())
    {
        return Ok(lb);
    }
    let release = dirs
        .iter()
        .any(|dir| dir.file_name().is_some_and(|name| name == "release"));
    let looked: Vec<String> = dirs.iter().map(|dir| dir.display().to_string()).collect();
    Err(format!(
        "the lb binary is not built for this profile (looked in {}): run `cargo build{} -p lb-user` first",
        looked.join(" and "),
        if release { " --release" } else { "" }
    ))
}

/// [`find_lb_binary`], panicking with its message.
pub fn lb_binary() -> PathBuf {
    find_lb_binary().unwrap_or_else(|message| panic!("{message}"))
}

/// A scratch directory and a bpffs state directory for one agent; removed on drop (the state
/// directory's pins too, which detaches a datapath left running).
pub struct AgentFiles {
    /// Scratch directory (config, logs).
    pub dir: PathBuf,
    /// The agent's `state_dir`.
    pub state_dir: PathBuf,
    /// The configuration file.
    pub config: PathBuf,
    /// The agent's log (stderr of every run, appended).
    pub log: PathBuf,
}

impl AgentFiles {
    /// New unique paths.
    pub fn new(tag: &str) -> Self {
        let unique = format!(
            "lbt-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&unique);
        fs::create_dir_all(&dir).expect("scratch dir");
        Self {
            state_dir: PathBuf::from("/sys/fs/bpf").join(&unique),
            config: dir.join("lb.toml"),
            log: dir.join("agent.log"),
            dir,
        }
    }

    /// Writes the configuration file (atomically, as an editor would: write then rename).
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.join("lb.toml.tmp");
        fs::write(&tmp, text).expect("write config");
        fs::rename(&tmp, &self.config).expect("rename config");
    }

    /// The agent log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        wait_file(&self.log, needle, count, timeout)
    }

    /// How many backends are up in the pinned `BACKENDS` (0 while nothing is pinned).
    pub fn backends_up(&self) -> usize {
        lb_user::datapath::Datapath::open_pinned(&self.state_dir)
            .and_then(|mut datapath| datapath.backends())
            .map_or(0, |backends| {
                backends
                    .iter()
                    .filter(|(_, b)| b.state == lb_common::maps::BackendState::Up as u8)
                    .count()
            })
    }
}

impl Drop for AgentFiles {
    fn drop(&mut self) {
        let _ = lb_user::datapath::remove_pins(&self.state_dir);
        lb_user::status::remove(&self.state_dir);
        lb_user::records::remove(&self.state_dir);
        let _ = fs::remove_file(lb_user::status::socket_for(&self.state_dir));
        if std::env::var_os("LB_KEEP_TEST_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A running `lb run` (or `lb decap`); killed on drop.
pub struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    /// Starts `lb run --config <files.config>` in `ns` (network namespace only, so the state
    /// directory in /sys/fs/bpf is the same for every run and for the test).
    pub fn start(ns: &Netns, files: &AgentFiles, keep_datapath: bool) -> Self {
        let mut command = lb_command(ns, &files.log);
        command.args(["run", "--config"]).arg(&files.config);
        if keep_datapath {
            command.arg("--keep-datapath");
        }
        Self {
            child: command.spawn().expect("spawn lb run"),
        }
    }

    /// [`Self::start`] without `CAP_NET_RAW` (out of its bounding set, as a unit that does not
    /// grant it): no raw sockets.
    pub fn start_without_raw_sockets(ns: &Netns, files: &AgentFiles) -> Self {
        let mut command = logged(ns.command("setpriv"), &files.log);
        command
            .args(["--bounding-set=-net_raw", "--"])
            .arg(lb_binary())
            .args(["run", "--config"])
            .arg(&files.config);
        Self {
            child: command.spawn().expect("spawn setpriv lb run"),
        }
    }

    /// Starts `lb run --fresh-state --config <files.config>` in `ns`: the pinned maps are
    /// recreated (every tracked flow forgotten), the link kept.
    pub fn start_fresh(ns: &Netns, files: &AgentFiles) -> Self {
        let mut command = lb_command(ns, &files.log);
        command
            .args(["run", "--fresh-state", "--config"])
            .arg(&files.config);
        Self {
            child: command.spawn().expect("spawn lb run --fresh-state"),
        }
    }

    /// Starts `lb decap --interface <interface>` in `ns`, appending its output to `log`.
    pub fn start_decap(ns: &Netns, interface: &str, log: &Path) -> Self {
        let mut command = lb_command(ns, log);
        command.args(["decap", "--interface", interface]);
        Self {
            child: command.spawn().expect("spawn lb decap"),
        }
    }

    /// Starts `argv` (a unit's command line; `argv[0]` is the `lb` binary) in `ns`, logging
    /// at info level to `log` (appended).
    pub fn start_argv(ns: &Netns, argv: &[String], log: &Path) -> Self {
        let log = open_log(log);
        let (program, args) = argv.split_first().expect("a command line");
        let child = ns
            .command(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        Self { child }
    }

    /// Sends `signal` and waits for the exit.
    pub fn stop(mut self, signal: Signal) -> std::process::ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("kill");
        self.child.wait().expect("wait")
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("kill");
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// `lb` inside `ns`'s network namespace (only: /sys/fs/bpf stays the test's), logging at info
/// level to `log` (appended).
fn lb_command(ns: &Netns, log: &Path) -> Command {
    logged(ns.command(lb_binary()), log)
}

/// `command` logging at info level to `log` (appended), with nothing on its input.
fn logged(mut command: Command, log: &Path) -> Command {
    let log = open_log(log);
    command
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    command
}

/// `log`, opened for appending (created if missing).
fn open_log(log: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The count `field` (`decapsulated`, `hop_forwarded`, ...) that `lb decap` logged when it
/// stopped, in its log at `log`; panics naming `who` if the log has none.
pub fn decap_count(log: &Path, field: &str, who: &str) -> u64 {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .find_map(|line| line.split(&format!("{field}=")).nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} count in the decap log of {who}:\n{text}"))
}
