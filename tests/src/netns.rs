//! Network namespaces for tests: uniquely named, removed on drop (also when a test fails), and
//! a way to run code inside one.

use std::{
    fs::File,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{setns, CloneFlags};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output if it fails. Returns stdout.
pub fn sh(command: &str) -> String {
    let output = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    if !output.status.success() {
        panic!(
            "`{command}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A network namespace created for a test and deleted on drop.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates `lbt-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "lbt-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&format!("ip netns add {name}"));
        let netns = Self { name };
        netns.ip("link set lo up");
        netns
    }

    /// Runs `ip -n <name> <args>`.
    pub fn ip(&self, args: &str) -> String {
        sh(&format!("ip -n {} {args}", self.name))
    }

    /// Runs several `ip` commands (one per line, without `ip`) in one process.
    pub fn ip_batch(&self, commands: &[String]) {
        let script = commands.join("\n");
        sh(&format!(
            "printf '%s\\n' '{script}' | ip -n {} -batch -",
            self.name
        ));
    }

    /// Runs a shell command inside the namespace (network namespace only: `nsenter`, which,
    /// unlike `ip netns exec`, does not remount /sys and is much faster).
    pub fn exec(&self, command: &str) -> String {
        sh(&format!("nsenter --net=/run/netns/{} {command}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace; sockets and netlink calls made by
    /// `f` belong to it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                    setns(file, CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Spawns a long-running thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
    }

    /// MAC address of an interface in this namespace.
    pub fn mac(&self, interface: &str) -> [u8; 6] {
        let out = self.ip(&format!("-br link show dev {interface}"));
        let mac = out
            .split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("no MAC in {out:?}"));
        lb_user::nexthop::parse_mac(mac).unwrap_or_else(|| panic!("bad MAC {mac}"))
    }

    /// Interface index of an interface in this namespace.
    pub fn ifindex(&self, interface: &str) -> u32 {
        let out = self.ip(&format!("-o link show dev {interface}"));
        out.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex in {out:?}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
