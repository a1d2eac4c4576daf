//! A Debian 12 container booted with systemd as PID 1 (`systemd-nspawn --boot`), for the
//! tests that run the package's units under a real init (`tests/tests/systemd.rs`).
//!
//! The root file system is bootstrapped once with `debootstrap` from the Debian mirror the
//! host's apt uses and cached in [`CACHE`] (outside the work tree: about 250 MB, a minute to
//! build); each [`Container`] boots a copy-on-write overlay of it, so every run starts from a
//! clean root and the cache is never written. Its `/sys/fs/bpf` is a bpffs mounted for it
//! alone, so nothing it pins reaches the host's. The host has no systemd (`--register=no`,
//! `--keep-unit`) and the container has no udev: device units never appear in it.
//!
//! Everything is undone on drop, also when a test fails: the container's PID 1 is killed
//! (which ends every process in it, and with its network namespace its veth), the overlay and
//! the bpffs are unmounted, the scratch directory removed.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::deploy::describe;

/// Where the bootstrapped root is kept between runs.
pub const CACHE: &str = "/var/cache/lb-tests/bookworm-root";
/// The packages the root gets beyond debootstrap's minimal base (`minbase`: apt, dpkg...).
pub const PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,procps";
/// The mirror when the host's apt sources name none.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The cached root, bootstrapped first if it is not there. A lock file serializes runs that
/// would build it at once; it is built in a directory of its own and renamed into place when
/// complete, so an interrupted build leaves no half root behind.
pub fn cached_root() -> PathBuf {
    let cache = PathBuf::from(CACHE);
    if cache.join("etc/os-release").exists() {
        return cache;
    }
    let parent = cache.parent().expect("the cache has a parent");
    fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
    let lock_path = parent.join("bookworm-root.lock");
    let lock = fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("lock file {}: {e}", lock_path.display()));
    // SAFETY: flock on a file descriptor we own, released when `lock` is closed.
    let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock {}", lock_path.display());
    if cache.join("etc/os-release").exists() {
        return cache; // Another run built it while this one waited.
    }
    let building = parent.join(format!("bookworm-root.building-{}", std::process::id()));
    let _ = fs::remove_dir_all(&building);
    let mirror = apt_mirror();
    let started = Instant::now();
    println!(
        "bootstrapping Debian 12 into {} from {mirror} (once; cached for later runs)",
        cache.display()
    );
    let output = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
        ])
        .arg(&building)
        .arg(&mirror)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "debootstrap: {e} (`cargo xtask setup` installs debootstrap and systemd-container)"
            )
        });
    if !output.status.success() {
        let _ = fs::remove_dir_all(&building);
        panic!(
            "debootstrap bookworm from {mirror} failed ({}):\n{}",
            output.status,
            describe(&output)
        );
    }
    prepare_root(&building);
    fs::rename(&building, &cache)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", building.display(), cache.display()));
    println!(
        "bootstrapped {} in {:.0} s",
        cache.display(),
        started.elapsed().as_secs_f64()
    );
    cache
}

/// What a test container needs of a fresh root: no timer running apt behind the test's back
/// (it would hold dpkg's lock), an empty machine id (systemd makes one at each boot).
fn prepare_root(root: &Path) {
    let units = root.join("etc/systemd/system");
    fs::create_dir_all(&units).expect("units dir");
    for unit in [
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer",
        "e2scrub_all.timer",
    ] {
        let link = units.join(unit);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link).expect("mask a timer");
    }
    fs::write(root.join("etc/machine-id"), "").expect("machine-id");
    fs::write(root.join("etc/hostname"), "lb-gateway\n").expect("hostname");
}

/// The Debian mirror of the host's apt sources (`URIs:` of a deb822 `.sources` file, or a
/// `deb URL bookworm ...` line), else [`DEFAULT_MIRROR`].
pub fn apt_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter_map(|file| fs::read_to_string(file).ok())
        .find_map(|text| mirror_in(&text))
        .unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
}

/// The first Debian archive (not the security one) serving bookworm in a sources file.
fn mirror_in(text: &str) -> Option<String> {
    let is_debian = |uri: &str| uri.trim_end_matches('/').ends_with("/debian");
    // deb822: stanzas separated by blank lines.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        if let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) {
            if suites.split_whitespace().any(|s| s == "bookworm") {
                if let Some(uri) = uris.split_whitespace().find(|u| is_debian(u)) {
                    return Some(uri.to_owned());
                }
            }
        }
    }
    text.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["deb", uri, "bookworm", ..] if is_debian(uri) => Some((*uri).to_owned()),
            _ => None,
        }
    })
}

/// A booted container: its machine name, its PID 1, the host end of its veth.
pub struct Container {
    /// The machine name (also its veth's: `ve-<name>`).
    pub name: String,
    /// Its PID 1 (systemd), as the host sees it.
    pub leader: u32,
    /// The scratch directory: the overlay's layers, the merged root, the bpffs, the log.
    dir: PathBuf,
    nspawn: Child,
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
            nspawn: Command::new("true").spawn().expect("placeholder"),
            mounts: Vec::new(),
        };
        let _ = container.nspawn.wait();
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
        container.nspawn = Command::new("systemd-nspawn")
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
        let pid = self.nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!(
                    "systemd-nspawn exited ({status}) before booting:\n{}",
                    self.console()
                );
            }
            let children =
                fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            let leader = children.split_whitespace().find_map(|child| {
                let comm = fs::read_to_string(format!("/proc/{child}/comm")).ok()?;
                (comm.trim() == "systemd").then(|| child.parse().ok())?
            });
            if let Some(leader) = leader {
                return leader;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no systemd in the container after 20 s:\n{}",
            self.console()
        );
    }

    /// `systemctl is-system-running --wait`, retried while systemd's bus is not up yet.
    fn wait_booted(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = self.run("systemctl is-system-running --wait");
            let state = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            match state.as_str() {
                "running" => return,
                "degraded" => {
                    let failed = self.sh("systemctl --failed --no-legend");
                    println!("the container booted degraded (not lb's doing): {failed}");
                    return;
                }
                _ if Instant::now() > deadline => panic!(
                    "the container did not finish booting in 60 s ({state}):\n{}\n{}",
                    describe(&output),
                    self.console()
                ),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.nspawn.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = self.nspawn.kill();
                let _ = self.nspawn.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_debian_mirror_in_both_source_formats() {
        let deb822 =
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n\
                      Suites: bookworm-security\n";
        assert_eq!(
            mirror_in(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let security_first =
            "Types: deb\nURIs: http://m/debian-security\nSuites: bookworm-security\n";
        assert_eq!(mirror_in(security_first), None);
        let one_line = "# comment\ndeb http://m.example/debian/ bookworm main\n";
        assert_eq!(
            mirror_in(one_line).as_deref(),
            Some("http://m.example/debian/")
        );
        assert_eq!(
            mirror_in("deb https://packages.example/apt cloud-sdk main\n"),
            None
        );
    }
}
