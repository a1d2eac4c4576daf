//! `cargo xtask setup`: check the machine and install whatever is missing.
//!
//! Every check prints one line per item: `ok: ...` when it was already there,
//! `installed: ...` when setup fixed it. Problems that cannot be fixed are
//! reported with what is missing and what to do; setup goes on with the
//! remaining checks and fails at the end.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd;

const BPF_LINKER_VERSION: &str = "0.10.4";
/// cargo-deb builds the Debian package (`cargo xtask package`).
const CARGO_DEB_VERSION: &str = "3.8.0";
const BPFFS: &str = "/sys/fs/bpf";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Commands needed by the tests and the demo, and the Debian package providing each.
const APT_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("tcpdump", "tcpdump"),
    ("bpftool", "bpftool"),
    ("ps", "procps"),
    // `promtool check rules` / `test rules` validate docs/prometheus-alerts.yml. The package
    // also holds the Prometheus server, which `apt_install` keeps from starting.
    ("promtool", "prometheus"),
    // The redundancy labs run their own routing daemons in namespaces; the packages' own
    // services must not run (see `check_package_daemons`).
    ("bird", "bird2"),
    ("keepalived", "keepalived"),
    ("vtysh", "frr"),
    // The package: cargo-deb calls dpkg-shlibdeps for `Depends`; the package test unpacks
    // with dpkg-deb, verifies the units with systemd-analyze and renders the man pages. The
    // systemd package is harmless without systemd as PID 1 (its scripts check for a running
    // systemd; Debian's container images install it routinely): it provides the tools only.
    ("dpkg-deb", "dpkg"),
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("systemd-analyze", "systemd"),
    ("man", "man-db"),
    ("script", "bsdutils"),
    // The systemd test (tests/tests/systemd.rs) bootstraps a Debian 12 root once (cached in
    // /var/cache/lb-tests) and boots it with systemd as PID 1 in a container.
    ("debootstrap", "debootstrap"),
    ("systemd-nspawn", "systemd-container"),
];

/// What the routing packages start when their services run: the process name and the pid
/// file their service uses. The labs' daemons have pid files of their own, in their
/// namespaces, and are never these.
const PACKAGE_DAEMONS: &[(&str, &str)] = &[
    ("bird", "/run/bird/bird.pid"),
    ("keepalived", "/run/keepalived.pid"),
    ("watchfrr", "/run/frr/watchfrr.pid"),
    ("zebra", "/run/frr/zebra.pid"),
    ("bgpd", "/run/frr/bgpd.pid"),
    ("bfdd", "/run/frr/bfdd.pid"),
    ("staticd", "/run/frr/staticd.pid"),
    ("mgmtd", "/run/frr/mgmtd.pid"),
];

/// The routing packages' systemd units, disabled when setup installed the package on a
/// systemd host.
const PACKAGE_UNITS: &[(&str, &str)] = &[
    ("bird2", "bird.service"),
    ("keepalived", "keepalived.service"),
    ("frr", "frr.service"),
];

/// Debian's hook asked before any package starts a service (`invoke-rc.d`,
/// `deb-systemd-invoke`); exit status 101 means "forbidden".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Services that packages of [`APT_TOOLS`] would enable, to be disabled again: the tests
/// need the tools, not the daemons.
const UNWANTED_SERVICES: &[(&str, &str)] = &[("prometheus", "prometheus")];

/// Result of one successful check.
enum Done {
    Ok(String),
    Installed(String),
    /// Something was wrong and setup repaired it (a daemon stopped).
    Fixed(String),
}

pub fn run() -> Result<()> {
    let start = Instant::now();

    // Everything below (mounting bpffs, apt-get, loading XDP programs in the
    // tests) needs root, so there is no point going on without it.
    let root = check_root().context("setup failed")?;
    report(Ok(root))?;

    let checks: &[fn() -> Result<Done>] = &[
        check_bpffs,
        check_btf,
        check_xdp,
        check_nightly,
        check_rust_src,
        check_nightly_clippy,
        check_bpf_linker,
        check_cargo_deb,
    ];
    let mut failed = 0;
    for check in checks {
        if report(check()).is_err() {
            failed += 1;
        }
    }
    let (results, installed) = check_apt_tools();
    for result in results {
        if report(result).is_err() {
            failed += 1;
        }
    }
    if report(check_package_daemons(&installed)).is_err() {
        failed += 1;
    }

    if failed > 0 {
        bail!("setup failed: {failed} problem(s), see the `FAILED:` lines above");
    }
    println!("setup complete ({:.2}s)", start.elapsed().as_secs_f64());
    Ok(())
}

fn report(result: Result<Done>) -> Result<()> {
    match result {
        Ok(Done::Ok(msg)) => println!("ok: {msg}"),
        Ok(Done::Installed(msg)) => println!("installed: {msg}"),
        Ok(Done::Fixed(msg)) => println!("fixed: {msg}"),
        Err(err) => {
            eprintln!("FAILED: {err:#}");
            return Err(err);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- kernel --

fn check_root() -> Result<Done> {
    let euid = effective_uid().context("cannot determine the effective user id")?;
    if euid != 0 {
        bail!(
            "running as uid {euid}, not root: lb's tests need root to load BPF/XDP programs \
             and to create network namespaces; re-run as root"
        );
    }
    Ok(Done::Ok("running as root".into()))
}

/// Effective uid, from /proc/self/status (`Uid: real effective saved fs`).
fn effective_uid() -> Result<u32> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .context("no Uid: line in /proc/self/status")?;
    let euid = line
        .split_whitespace()
        .nth(1)
        .context("malformed Uid: line in /proc/self/status")?;
    euid.parse()
        .context("malformed Uid: line in /proc/self/status")
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some(BPFFS) && fstype == Some("bpf")
    }))
}

fn check_bpffs() -> Result<Done> {
    if bpffs_mounted()? {
        return Ok(Done::Ok(format!("bpffs mounted at {BPFFS}")));
    }
    if !Path::new(BPFFS).is_dir() {
        bail!(
            "{BPFFS} does not exist: the kernel lacks BPF support (CONFIG_BPF_SYSCALL) \
             or sysfs is not mounted; use a kernel with BPF enabled"
        );
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS])).with_context(|| {
        format!("cannot mount bpffs at {BPFFS} (in a container: run it privileged)")
    })?;
    if !bpffs_mounted()? {
        bail!("mounted bpffs at {BPFFS} but it does not show up in /proc/mounts");
    }
    Ok(Done::Installed(format!("bpffs mounted at {BPFFS}")))
}

fn check_btf() -> Result<Done> {
    if Path::new(VMLINUX_BTF).exists() {
        Ok(Done::Ok(format!("kernel BTF ({VMLINUX_BTF})")))
    } else {
        bail!(
            "kernel BTF missing ({VMLINUX_BTF} does not exist): use a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y"
        )
    }
}

fn check_xdp() -> Result<Done> {
    const SYMBOLS: &[&str] = &["xdp_do_redirect", "bpf_prog_test_run_xdp"];
    if let Some(sym) = kallsyms_find(SYMBOLS) {
        return Ok(Done::Ok(format!(
            "kernel XDP support ({sym} in /proc/kallsyms)"
        )));
    }
    // Fall back to the kernel config, if there is one.
    if let Some((source, config)) = kernel_config() {
        let has = |opt: &str| config.lines().any(|l| l == format!("{opt}=y"));
        // XDP is part of the core network stack once BPF_SYSCALL is enabled
        // (XDP_SOCKETS depends on it too).
        if let Some(opt) = ["CONFIG_XDP_SOCKETS", "CONFIG_BPF_SYSCALL"]
            .into_iter()
            .find(|o| has(o))
        {
            return Ok(Done::Ok(format!(
                "kernel XDP support ({opt}=y in {source})"
            )));
        }
        bail!("kernel without XDP support: CONFIG_BPF_SYSCALL=y not set in {source}; use a kernel with BPF and XDP enabled");
    }
    bail!(
        "cannot confirm kernel XDP support: none of {SYMBOLS:?} in /proc/kallsyms and no kernel \
         config (/proc/config.gz, /boot/config-$(uname -r)); use a kernel with \
         CONFIG_BPF_SYSCALL=y and XDP (and make sure /proc/kallsyms is readable)"
    )
}

/// The first of `symbols` found in /proc/kallsyms.
fn kallsyms_find(symbols: &[&str]) -> Option<String> {
    let file = fs::File::open("/proc/kallsyms").ok()?;
    let mut line = String::new();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        // "ffffffff81234567 T name [module]"
        if let Some(name) = line.split_whitespace().nth(2) {
            if symbols.contains(&name) {
                return Some(name.to_string());
            }
        }
    }
}

/// The kernel config text and where it came from.
fn kernel_config() -> Option<(String, String)> {
    if let Ok(release) = fs::read_to_string("/proc/sys/kernel/osrelease") {
        let path = format!("/boot/config-{}", release.trim());
        if let Ok(text) = fs::read_to_string(&path) {
            return Some((path, text));
        }
    }
    if Path::new("/proc/config.gz").exists() {
        if let Some(text) = cmd::probe("zcat", &["/proc/config.gz"]) {
            return Some(("/proc/config.gz".into(), text));
        }
    }
    None
}

// ------------------------------------------------------------------ rust --

fn require_rustup() -> Result<()> {
    if cmd::which("rustup").is_none() {
        bail!("rustup not found in PATH: install it from https://rustup.rs and add ~/.cargo/bin to PATH");
    }
    Ok(())
}

fn has_nightly() -> Result<bool> {
    let list =
        cmd::probe("rustup", &["toolchain", "list"]).context("`rustup toolchain list` failed")?;
    Ok(list.lines().any(|l| l.starts_with("nightly")))
}

fn check_nightly() -> Result<Done> {
    require_rustup()?;
    if has_nightly()? {
        return Ok(Done::Ok("rust nightly toolchain".into()));
    }
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
    .context("cannot install the nightly toolchain (needed to build lb-ebpf)")?;
    if !has_nightly()? {
        bail!("installed nightly but `rustup toolchain list` does not show it");
    }
    Ok(Done::Installed("rust nightly toolchain".into()))
}

/// Whether nightly has the component `name` (`rust-src`, `clippy`).
fn has_nightly_component(name: &str) -> Result<bool> {
    let list = cmd::probe(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context(
        "`rustup component list --toolchain nightly --installed` failed (is nightly installed?)",
    )?;
    Ok(list
        .lines()
        .any(|l| l.trim() == name || l.starts_with(&format!("{name}-"))))
}

/// Adds the component `name` to nightly unless it has it; `why` says what needs it.
fn check_nightly_component(name: &str, why: &str) -> Result<Done> {
    require_rustup()?;
    let what = format!("{name} component (nightly)");
    if has_nightly_component(name)? {
        return Ok(Done::Ok(what));
    }
    cmd::run(Command::new("rustup").args(["component", "add", name, "--toolchain", "nightly"]))
        .with_context(|| format!("cannot add {name} to nightly (needed for {why})"))?;
    if !has_nightly_component(name)? {
        bail!("added {name} but `rustup component list` does not show it");
    }
    Ok(Done::Installed(what))
}

fn check_rust_src() -> Result<Done> {
    check_nightly_component("rust-src", "build-std of lb-ebpf")
}

fn check_nightly_clippy() -> Result<Done> {
    check_nightly_component("clippy", "the lint gate on lb-ebpf")
}

/// Version reported by `bpf-linker --version` ("bpf-linker 0.10.4"), if it runs.
fn bpf_linker_version() -> Option<String> {
    let out = cmd::probe("bpf-linker", &["--version"])?;
    out.split_whitespace().nth(1).map(str::to_string)
}

fn check_bpf_linker() -> Result<Done> {
    let found = bpf_linker_version();
    if found.as_deref() == Some(BPF_LINKER_VERSION) {
        return Ok(Done::Ok(format!("bpf-linker {BPF_LINKER_VERSION}")));
    }
    match &found {
        Some(v) => println!("bpf-linker {v} found, need {BPF_LINKER_VERSION}; installing it (cargo install, takes ~2 min)..."),
        None => println!("bpf-linker not found; installing {BPF_LINKER_VERSION} (cargo install, takes ~2 min)..."),
    }
    cmd::run(Command::new("cargo").args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
    ]))
    .context("cannot install bpf-linker (see the cargo output above)")?;
    match bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => {
            Ok(Done::Installed(format!("bpf-linker {BPF_LINKER_VERSION}")))
        }
        other => bail!(
            "installed bpf-linker {BPF_LINKER_VERSION} but `bpf-linker --version` reports {}: \
             make sure ~/.cargo/bin comes first in PATH",
            other.as_deref().unwrap_or("nothing (not in PATH?)")
        ),
    }
}

/// Version reported by `cargo deb --version` ("cargo-deb 3.8.0"), if it runs.
fn cargo_deb_version() -> Option<String> {
    let out = cmd::probe("cargo", &["deb", "--version"])?;
    out.split_whitespace().nth(1).map(str::to_string)
}

fn check_cargo_deb() -> Result<Done> {
    let found = cargo_deb_version();
    if found.as_deref() == Some(CARGO_DEB_VERSION) {
        return Ok(Done::Ok(format!("cargo-deb {CARGO_DEB_VERSION}")));
    }
    match &found {
        Some(v) => println!("cargo-deb {v} found, need {CARGO_DEB_VERSION}; installing it (cargo install, takes ~2 min)..."),
        None => println!("cargo-deb not found; installing {CARGO_DEB_VERSION} (cargo install, takes ~2 min)..."),
    }
    cmd::run(Command::new("cargo").args([
        "install",
        &format!("cargo-deb@{CARGO_DEB_VERSION}"),
        "--locked",
    ]))
    .context("cannot install cargo-deb (see the cargo output above)")?;
    match cargo_deb_version() {
        Some(v) if v == CARGO_DEB_VERSION => {
            Ok(Done::Installed(format!("cargo-deb {CARGO_DEB_VERSION}")))
        }
        other => bail!(
            "installed cargo-deb {CARGO_DEB_VERSION} but `cargo deb --version` reports {}: \
             make sure ~/.cargo/bin comes first in PATH",
            other.as_deref().unwrap_or("nothing (not in PATH?)")
        ),
    }
}

// ------------------------------------------------------------------- apt --

/// One result per tool in [`APT_TOOLS`]; missing ones are installed with apt-get. Also returns
/// the packages this run installed.
fn check_apt_tools() -> (Vec<Result<Done>>, Vec<&'static str>) {
    let describe = |tool: &str, pkg: &str| match cmd::which(tool) {
        Some(path) => format!("{tool} ({pkg}) at {}", path.display()),
        None => format!("{tool} ({pkg})"),
    };
    let missing: Vec<_> = APT_TOOLS
        .iter()
        .filter(|(tool, _)| cmd::which(tool).is_none())
        .collect();
    let mut pkgs: Vec<&'static str> = missing.iter().map(|(_, pkg)| *pkg).collect();
    pkgs.dedup();
    let installed = if pkgs.is_empty() {
        Ok(())
    } else {
        apt_install(&pkgs)
    };
    if installed.is_err() {
        pkgs.clear();
    }

    let results = APT_TOOLS
        .iter()
        .map(|(tool, pkg)| {
            let was_missing = missing.iter().any(|(t, _)| t == tool);
            if !was_missing {
                return Ok(Done::Ok(describe(tool, pkg)));
            }
            if let Err(err) = &installed {
                bail!("{tool} not found in PATH and apt-get could not install {pkg}: {err:#}");
            }
            if cmd::which(tool).is_none() {
                bail!(
                    "installed {pkg} but `{tool}` is still not in PATH; add /usr/sbin and /sbin to PATH"
                );
            }
            Ok(Done::Installed(describe(tool, pkg)))
        })
        .collect();
    (results, pkgs)
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    if cmd::which("apt-get").is_none() {
        bail!(
            "apt-get not found (not a Debian-based system?): install {} by hand",
            pkgs.join(" ")
        );
    }
    println!("installing missing packages: {}", pkgs.join(" "));
    cmd::run(Command::new("apt-get").arg("update"))?;
    let running_before: Vec<(u32, String)> = UNWANTED_SERVICES
        .iter()
        .flat_map(|(_, process)| processes_named(process))
        .collect();
    let installed = {
        let _no_starts = NoServiceStarts::new()?;
        cmd::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(pkgs),
        )
    };
    for (package, process) in UNWANTED_SERVICES {
        if pkgs.contains(package) {
            stop_service(process, &running_before)?;
        }
    }
    installed
}

/// While alive, a `policy-rc.d` that forbids starting services (unless the machine has one
/// already, as Debian container images do); removed on drop if it was ours.
struct NoServiceStarts {
    created: bool,
}

impl NoServiceStarts {
    fn new() -> Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(Self { created: false });
        }
        use std::os::unix::fs::PermissionsExt;
        fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# cargo xtask setup: no service starts while it installs packages.\nexit 101\n",
        )
        .with_context(|| format!("cannot write {POLICY_RC_D}"))?;
        fs::set_permissions(POLICY_RC_D, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {POLICY_RC_D} executable"))?;
        Ok(Self { created: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created {
            let _ = fs::remove_file(POLICY_RC_D);
        }
    }
}

/// Makes sure the install left no `process` daemon running: disables the unit where systemd
/// runs (so it does not start at the next boot either) and stops any such process that was not
/// running before (`before`: pid and name of those).
fn stop_service(process: &str, before: &[(u32, String)]) -> Result<()> {
    if Path::new("/run/systemd/system").is_dir() && cmd::which("systemctl").is_some() {
        cmd::run(Command::new("systemctl").args([
            "disable",
            "--now",
            &format!("{process}.service"),
        ]))?;
    }
    for (pid, name) in processes_named(process) {
        if before.iter().any(|(old, _)| *old == pid) {
            continue;
        }
        println!("stopping {name} (pid {pid}), started by the install");
        cmd::run(Command::new("kill").arg(pid.to_string()))?;
    }
    Ok(())
}

// -------------------------------------------------------- package daemons --

/// The routing packages' own services must not run in the host's namespace: a bird or FRR
/// there would announce the host's routes, a keepalived would run VRRP on its interfaces, and
/// the labs' daemons would share their default sockets. The install cannot start them
/// ([`NoServiceStarts`]); this stops those that run anyway (found by their services' pid
/// files, in the host namespace only, so the labs' daemons are never touched) if setup
/// installed their package, and on a systemd host disables the services of packages this run
/// installed. A daemon of a package that was already installed is the machine owner's: it is
/// reported, not stopped.
fn check_package_daemons(installed: &[&str]) -> Result<Done> {
    if Path::new("/run/systemd/system").is_dir() {
        for (pkg, unit) in PACKAGE_UNITS {
            if installed.contains(pkg) {
                cmd::run(Command::new("systemctl").args(["disable", "--now", unit]))
                    .with_context(|| format!("cannot disable {unit} (installed with {pkg})"))?;
            }
        }
    }
    let host_netns = fs::metadata("/proc/self/ns/net")
        .context("reading /proc/self/ns/net")?
        .ino();
    let mut stopped = Vec::new();
    let mut foreign = Vec::new();
    for (name, pid_file) in PACKAGE_DAEMONS {
        let Some(pid) = running_daemon(name, pid_file, host_netns) else {
            continue;
        };
        if !installed.contains(&package_of(name)) {
            foreign.push(format!("{name} (pid {pid}, {pid_file})"));
            continue;
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM)
            .with_context(|| format!("cannot stop {name} (pid {pid})"))?;
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while running_daemon(name, pid_file, host_netns).is_some() {
            if Instant::now() > deadline {
                bail!("{name} (pid {pid}) started by its package did not stop on SIGTERM");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        stopped.push(format!("{name} (pid {pid})"));
    }
    if !foreign.is_empty() {
        bail!(
            "routing daemons run in the host namespace: {}; the redundancy labs run their own \
             in namespaces and need these stopped (`service bird stop`, `service keepalived \
             stop`, `service frr stop`)",
            foreign.join(", ")
        );
    }
    if stopped.is_empty() {
        Ok(Done::Ok(
            "no bird, keepalived or FRR service running in the host namespace".into(),
        ))
    } else {
        Ok(Done::Fixed(format!(
            "stopped what the packages started in the host namespace: {}",
            stopped.join(", ")
        )))
    }
}

/// The package of daemon `name`.
fn package_of(name: &str) -> &'static str {
    match name {
        "bird" => "bird2",
        "keepalived" => "keepalived",
        _ => "frr",
    }
}

/// The pid in `pid_file` if that process runs, is called `name` and lives in the network
/// namespace `netns` (inode).
fn running_daemon(name: &str, pid_file: &str, netns: u64) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let in_host = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino() == netns;
    (comm.trim() == name && in_host).then_some(pid)
}

/// Running processes whose name (`/proc/PID/comm`) is `name`: pid and name.
fn processes_named(name: &str) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim_end() == name).then(|| (pid, comm.trim_end().to_owned()))
        })
        .collect()
}
