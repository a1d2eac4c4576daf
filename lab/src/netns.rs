//! One network namespace: created with a unique or a given name, removed on drop (also when a
//! test fails), and ways to run commands and code inside it.

use std::{
    ffi::OsStr,
    fs::File,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
};

use nix::sched::{setns, CloneFlags};

use crate::{
    command::{run_with_input, try_sh},
    error::{or_panic, LabError},
};

/// Numbers the namespaces [`Netns::new`] creates in this process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace under /run/netns, deleted on drop.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates `lbt-<tag>-<pid>-<n>`: unique in this process and across processes, so tests can
    /// run in parallel. Panics if it cannot.
    pub fn new(tag: &str) -> Self {
        or_panic(Self::create(unique_name(tag)))
    }

    /// Creates the namespace `name`, with its loopback up. A name another process can predict
    /// lets it find and remove the namespace (the demo's leftovers).
    pub fn create(name: impl Into<String>) -> Result<Self, LabError> {
        let name = name.into();
        try_sh(&format!("ip netns add {name}"))?;
        // Owned from here: a failure below deletes it again.
        let netns = Self { name };
        netns.try_ip("link set lo up")?;
        Ok(netns)
    }

    /// Its file, `/run/netns/<name>` (what `nsenter --net=` and `setns` take).
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip -n <name> <args>`; returns its stdout.
    pub fn try_ip(&self, args: &str) -> Result<String, LabError> {
        try_sh(&format!("ip -n {} {args}", self.name))
    }

    /// [`Self::try_ip`], panicking with the error.
    pub fn ip(&self, args: &str) -> String {
        or_panic(self.try_ip(args))
    }

    /// The routes of routing table `table` that `ip route show table TABLE FILTER` prints:
    /// empty while the table does not exist (the kernel creates it with its first route, and
    /// `ip` fails on it before that).
    pub fn table_routes(&self, table: u32, filter: &str) -> String {
        match self.try_ip(&format!("route show table {table} {filter}")) {
            Err(error) if error.to_string().contains("FIB table does not exist") => String::new(),
            shown => or_panic(shown),
        }
    }

    /// Runs several `ip` commands (one per entry, without `ip`) in one `ip -batch` process.
    pub fn try_ip_batch(&self, commands: &[String]) -> Result<(), LabError> {
        let mut ip = Command::new("ip");
        ip.args(["-n", &self.name, "-batch", "-"]);
        run_with_input(&mut ip, &(commands.join("\n") + "\n")).map(drop)
    }

    /// [`Self::try_ip_batch`], panicking with the error.
    pub fn ip_batch(&self, commands: &[String]) {
        or_panic(self.try_ip_batch(commands))
    }

    /// Runs a shell command inside the namespace (network namespace only: `nsenter`, which,
    /// unlike `ip netns exec`, does not remount /sys and is much faster); returns its stdout.
    pub fn try_exec(&self, command: &str) -> Result<String, LabError> {
        try_sh(&format!("nsenter --net={} {command}", self.path()))
    }

    /// [`Self::try_exec`], panicking with the error.
    pub fn exec(&self, command: &str) -> String {
        or_panic(self.try_exec(command))
    }

    /// A command that runs `program` in this network namespace only (`nsenter --net`: mounts,
    /// so /sys/fs/bpf, stay the caller's). nsenter execs the program, so the child's pid is the
    /// program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net={}", self.path())).arg(program);
        command
    }

    /// Runs `f` on a thread that has entered this namespace; sockets and netlink calls made by
    /// `f` belong to it.
    pub fn try_run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter(&self.name)?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// [`Self::try_run`], panicking if the namespace cannot be entered.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        or_panic(self.try_run(f))
    }

    /// Spawns a long-running thread inside this namespace (it panics if it cannot enter it).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            or_panic(enter(&name));
            f()
        })
    }

    /// Writes `value` to `/proc/sys/<key>` (dots or slashes: `net.ipv4.ip_forward`) inside
    /// this namespace; the `net.*` settings are per namespace.
    pub fn try_sysctl(&self, key: &str, value: &str) -> Result<(), LabError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.try_run(|| std::fs::write(&path, value))?
            .map_err(|source| LabError::Sysctl {
                namespace: self.name.clone(),
                path: path.clone(),
                source,
            })
    }

    /// [`Self::try_sysctl`], panicking with the error.
    pub fn sysctl(&self, key: &str, value: &str) {
        or_panic(self.try_sysctl(key, value))
    }

    /// Adds a veth pair: `interface` in this namespace, `peer_interface` in `peer` (a cable
    /// between two machines; both ends down).
    pub fn try_add_veth(
        &self,
        interface: &str,
        peer: &Netns,
        peer_interface: &str,
    ) -> Result<(), LabError> {
        try_sh(&format!(
            "ip link add {interface} netns {} type veth peer name {peer_interface} netns {}",
            self.name, peer.name
        ))
        .map(drop)
    }

    /// [`Self::try_add_veth`], panicking with the error.
    pub fn add_veth(&self, interface: &str, peer: &Netns, peer_interface: &str) {
        or_panic(self.try_add_veth(interface, peer, peer_interface))
    }

    /// MAC address of an interface in this namespace.
    pub fn try_mac(&self, interface: &str) -> Result<[u8; 6], LabError> {
        let args = format!("-br link show dev {interface}");
        let out = self.try_ip(&args)?;
        out.split_whitespace()
            .nth(2)
            .and_then(parse_mac)
            .ok_or_else(|| LabError::Output {
                what: "MAC",
                command: format!("ip -n {} {args}", self.name),
                output: out.clone(),
            })
    }

    /// [`Self::try_mac`], panicking with the error.
    pub fn mac(&self, interface: &str) -> [u8; 6] {
        or_panic(self.try_mac(interface))
    }

    /// Interface index of an interface in this namespace.
    pub fn try_ifindex(&self, interface: &str) -> Result<u32, LabError> {
        let args = format!("-o link show dev {interface}");
        let out = self.try_ip(&args)?;
        out.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| LabError::Output {
                what: "ifindex",
                command: format!("ip -n {} {args}", self.name),
                output: out.clone(),
            })
    }

    /// [`Self::try_ifindex`], panicking with the error.
    pub fn ifindex(&self, interface: &str) -> u32 {
        or_panic(self.try_ifindex(interface))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `lbt-<tag>-<pid>-<n>`.
pub(crate) fn unique_name(tag: &str) -> String {
    format!(
        "lbt-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Moves the calling thread into network namespace `name`.
fn enter(name: &str) -> Result<(), LabError> {
    let path = format!("/run/netns/{name}");
    let error = |source| LabError::Enter {
        name: name.to_owned(),
        source,
    };
    let file = File::open(&path).map_err(error)?;
    setns(file, CloneFlags::CLONE_NEWNET).map_err(|errno| error(errno.into()))
}

/// `02:00:0a:ff:00:01` as bytes.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("<NO-CARRIER>"), None);
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("x"), unique_name("x"));
        assert!(unique_name("smoke").starts_with(&format!("lbt-smoke-{}-", std::process::id())));
    }
}
