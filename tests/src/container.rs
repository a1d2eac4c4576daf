//! A Debian 12 container booted with systemd as PID 1 (`systemd-nspawn --boot`), for the
//! tests that run the package's units under a real init (`tests/tests/systemd.rs`).
//!
//! The root file system is [`lb_lab::debian_root`]'s, bootstrapped once and cached outside
//! the work tree; each [`Container`] boots a copy-on-write overlay of it, so every run starts
//! from a clean root and the cache is never written. Its `/sys/fs/bpf` is a bpffs mounted for it
//! alone, so nothing it pins reaches the host's. The host has no systemd (`--register=no`,
//! `--keep-unit`) and the container has no udev: device units never appear in it.
//!
//! Everything is undone on drop, also when a test fails: the container's PID 1 is killed
//! (which ends every process in it, and with its network namespace its veth), the overlay and
//! the bpffs are unmounted, the scratch directory removed.

use std::{
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use lb_lab::debian_root::cached_root;

use crate::{deploy::describe, netns::wait_every};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A booted container: its machine name, its PID 1, the host end of its veth.
pub struct Container {
    /// The machine name (also its veth's: `ve-<name>`).
    pub name: String,
    /// Its PID 1 (systemd), as the host sees it.
    pub leader: u32,
    /// The scratch directory: the overlay's layers, the merged root, the bpffs, the log.
    dir: PathBuf,
    /// `systemd-nspawn`, once started.
    nspawn: Option<Child>,
    mounts: Vec<PathBuf>,
}

impl Container {
    /// Boots a container from the [`cached_root`] and waits until systemd has finished
    /// booting it. `extra` are more `systemd-nspawn` arguments.
    pub fn boot(extra: &[&str]) -> Self {
        let lower = cached_root();
        // Short: the host end of the veth is `ve-<name>` and interface names have 15 bytes.
        let name = format!(
            "lb{}{}",
            std::process::id() % 1_000_000,
            NEXT.fetch_add(1, Ordering::Relaxed) % 10
        );
        let dir = std::env::temp_dir().join(format!("lbt-container-{name}"));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["upper", "work", "root", "bpf"] {
            fs::create_dir_all(dir.join(sub)).expect("scratch dirs");
        }
        let mut container = Self {
            name,
            leader: 0,
            dir,
            nspawn: None,
            mounts: Vec::new(),
        };
        let root = container.dir.join("root");
        container.mount(
            Command::new("mount")
                .args(["-t", "overlay", "lbt-root", "-o"])
                .arg(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.display(),
                    container.dir.join("upper").display(),
                    container.dir.join("work").display()
                ))
                .arg(&root),
            &root,
        );
        let bpf = container.dir.join("bpf");
        container.mount(
            Command::new("mount")
                .args(["-t", "bpf", "lbt-bpf"])
                .arg(&bpf),
            &bpf,
        );
        let log = fs::File::create(container.console_log()).expect("console log");
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "--quiet",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--network-veth",
                "--console=read-only",
                "--capability=CAP_BPF,CAP_PERFMON,CAP_SYS_ADMIN,CAP_NET_ADMIN",
                "--system-call-filter=bpf perf_event_open",
            ])
            .arg(format!("--machine={}", container.name))
            .arg(format!("--bind={}:/sys/fs/bpf", bpf.display()))
            .args(extra)
            .arg(format!("--directory={}", root.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn (`cargo xtask setup` installs systemd-container)");
        container.nspawn = Some(nspawn);
        container.leader = container.wait_for_leader();
        container.wait_booted();
        container
    }

    fn mount(&mut self, command: &mut Command, target: &Path) {
        let output = command.output().expect("mount");
        assert!(
            output.status.success(),
            "{command:?}: {}",
            describe(&output)
        );
        self.mounts.push(target.to_owned());
    }

    /// The console's output (the boot messages).
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    fn console(&self) -> String {
        fs::read_to_string(self.console_log()).unwrap_or_default()
    }

    /// The nspawn process's child, once it runs systemd.
    fn wait_for_leader(&mut self) -> u32 {
        let pid = self.nspawn.as_ref().expect("started").id();
        let mut leader = None;
        wait_every(Duration::from_secs(20), Duration::from_millis(50), || {
            let exited = self.nspawn.as_mut().expect("started").try_wait();
            if let Ok(Some(status)) = exited {
                panic!(
                    "systemd-nspawn exited ({status}) before booting:\n{}",
                    self.console()
                );
            }
            let children =
                fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            leader = children.split_whitespace().find_map(|child| {
                let comm = fs::read_to_string(format!("/proc/{child}/comm")).ok()?;
                (comm.trim() == "systemd").then(|| child.parse().ok())?
            });
            leader.is_some()
        });
        leader.unwrap_or_else(|| {
            panic!(
                "no systemd in the container after 20 s:\n{}",
                self.console()
            )
        })
    }

    /// `systemctl is-system-running --wait`, retried while systemd's bus is not up yet.
    fn wait_booted(&self) {
        let mut state = String::new();
        let mut output = None;
        let booted = wait_every(Duration::from_secs(60), Duration::from_millis(200), || {
            let ran = self.run("systemctl is-system-running --wait");
            state = String::from_utf8_lossy(&ran.stdout).trim().to_owned();
            output = Some(ran);
            match state.as_str() {
                "running" => true,
                "degraded" => {
                    let failed = self.sh("systemctl --failed --no-legend");
                    println!("the container booted degraded (not lb's doing): {failed}");
                    true
                }
                _ => false,
            }
        });
        if booted.is_none() {
            panic!(
                "the container did not finish booting in 60 s ({state}):\n{}\n{}",
                output.as_ref().map(describe).unwrap_or_default(),
                self.console()
            );
        }
    }

    /// The merged root as the host sees it (to copy files in and out).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The container's `/sys/fs/bpf`, as the host sees it.
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    /// `sh -c script` inside every namespace of the container (`nsenter -a`): its mounts,
    /// network, PIDs, as a login on it would.
    pub fn run(&self, script: &str) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-a", "/bin/sh", "-c", script])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("nsenter into the container: {e}"))
    }

    /// [`Self::run`], panicking with the output (and the journal's end) if it fails; returns
    /// stdout and stderr.
    pub fn sh(&self, script: &str) -> String {
        let output = self.run(script);
        assert!(
            output.status.success(),
            "in the container, `{script}` failed ({}):\n{}",
            output.status,
            describe(&output)
        );
        describe(&output)
    }

    /// Writes `contents` to `path` inside the container.
    pub fn write(&self, path: &str, contents: &[u8]) {
        let target = self.root().join(path.trim_start_matches('/'));
        fs::create_dir_all(target.parent().expect("a file in a directory")).expect("mkdir");
        let mut file = fs::File::create(&target).unwrap_or_else(|e| panic!("{path}: {e}"));
        file.write_all(contents).expect("write");
    }

    /// Whether `path` exists inside the container.
    pub fn exists(&self, path: &str) -> bool {
        self.run(&format!("test -e '{path}'")).status.success()
    }

    /// The text of `path` inside the container, empty if it cannot be read.
    pub fn read(&self, path: &str) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(self.root().join(path.trim_start_matches('/'))) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The unit's journal (all of it), for messages.
    pub fn journal(&self, unit: &str) -> String {
        describe(&self.run(&format!("journalctl -u {unit} --no-pager -o cat")))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Killing PID 1 of a PID namespace kills every process in it; nspawn then exits.
        if self.leader != 0 {
            // SAFETY: a plain kill(2) of the container's init, which this struct started.
            unsafe { libc::kill(self.leader as libc::pid_t, libc::SIGKILL) };
        }
        if let Some(nspawn) = self.nspawn.as_mut() {
            let exited = wait_every(Duration::from_secs(10), Duration::from_millis(50), || {
                !matches!(nspawn.try_wait(), Ok(None))
            });
            if exited.is_none() {
                let _ = nspawn.kill();
                let _ = nspawn.wait();
            }
        }
        for target in self.mounts.iter().rev() {
            let status = Command::new("umount").arg(target).status();
            if !status.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
