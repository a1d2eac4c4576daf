//! `cargo xtask demo [--keep | --clean]`: lb end to end in network namespaces, narrated.
//!
//! The lab: a "switch" namespace with a bridge `br0`, and one namespace per host (client, lb,
//! three backends), each with `eth0` plugged into the bridge. The real `lb run` forwards TCP
//! connections from the client to the backends (DSR); the demo stops and restarts a backend and
//! shows what the agent does. Everything is named `lbdemo-<pid>...` and removed at the end, on
//! errors and on Ctrl-C (`--keep` leaves the lab running; `--clean` removes every demo lab).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use crate::{cmd, header, setup, workspace_root};

/// Prefix of everything the demo creates: namespaces, temp and state directories.
const PREFIX: &str = "lbdemo";
const VIP: &str = "10.99.1.100";
const PORT: u16 = 8080;
const LB_IP: &str = "10.99.0.2";
/// The hosts plugged into the bridge: (name, address). Switch port `pN` is host N's peer.
const HOSTS: [(&str, &str); 5] = [
    ("client", "10.99.0.10"),
    ("lb", LB_IP),
    ("b1", "10.99.0.11"),
    ("b2", "10.99.0.12"),
    ("b3", "10.99.0.13"),
];
/// The backends: (name, address, weight), as in the configuration.
const BACKENDS: [(&str, &str, u32); 3] = [
    ("b1", "10.99.0.11", 1),
    ("b2", "10.99.0.12", 1),
    ("b3", "10.99.0.13", 2),
];
/// Each connection's connect and read timeout (a lost SYN is sent again after 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A traffic phase stops after this many failed connections (so a broken lab fails fast).
const MAX_FAILURES: usize = 5;
/// Time between the agent's log line of a state change and the next traffic (the agent logs
/// first, then swaps the ring).
const SETTLE: Duration = Duration::from_millis(250);
/// The demo's time budget, printed and checked at the end.
const BUDGET: Duration = Duration::from_secs(120);

/// The backend server: answers every connection with its name, then echoes until EOF.
const SERVER_PY: &str = r#"
import socketserver, sys
name = sys.argv[1]
class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall((name + "\n").encode())
        while True:
            data = self.request.recv(4096)
            if not data:
                break
            self.request.sendall(data)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer(("0.0.0.0", 8080), Handler).serve_forever()
"#;

/// The demo's configuration with the given `state_dir` (`examples/demo.toml` is this text with
/// `state_dir = "/sys/fs/bpf/lbdemo"`; a unit test keeps them equal).
fn config_text(state_dir: &str) -> String {
    let mut text = format!(
        r#"# The lab of `cargo xtask demo`: lb in a network namespace, its eth0 on a bridge with a
# client and three backends (10.99.0.0/24). The demo runs this file with
# state_dir = "/sys/fs/bpf/lbdemo-<pid>".
interface = "eth0"
state_dir = "{state_dir}"
conntrack_size = 65536

# A backend is checked every 500 ms (a TCP connect to port 8080, 200 ms timeout): 3 failures
# in a row take it out of the ring, 2 successes bring it back.
[health]
interval = "500ms"
timeout = "200ms"
rise = 2
fall = 3

# Connections to 10.99.1.100:8080 are spread over the backends by weight: b3 gets twice the
# share of b1 or b2. DSR: lb only rewrites MAC addresses; each backend has the VIP on its
# loopback and answers the client directly.
[[vip]]
name = "web"
address = "{VIP}"
port = {PORT}
protocol = "tcp"
forward = "dsr"
"#
    );
    for (_, address, weight) in BACKENDS {
        text += &format!("\n  [[vip.backend]]\n  address = \"{address}\"\n  weight = {weight}\n");
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// `cargo xtask demo [--keep]`.
pub fn run(keep: bool) -> Result<()> {
    let start = Instant::now();
    install_signal_handler()?;

    header("setup");
    setup::run()?;
    header("build: cargo build -p lb-user");
    let root = workspace_root();
    let build_start = Instant::now();
    cmd::run(
        Command::new("cargo")
            .args(["build", "-p", "lb-user"])
            .current_dir(&root),
    )?;
    let lb = target_dir(&root).join("debug").join("lb");
    if !lb.is_file() {
        bail!("{} not found after `cargo build -p lb-user`", lb.display());
    }
    let build_time = build_start.elapsed();

    remove_leftovers();

    let lab = Arc::new(Lab::new(lb)?);
    let _ = LAB.set(lab.clone());
    let mut guard = Guard {
        lab: lab.clone(),
        armed: true,
    };
    let failures = demo(&lab)?;

    if keep && failures.is_empty() {
        guard.armed = false;
        lab.keep()?;
    } else {
        if keep {
            println!("\n(--keep: the lab is removed anyway because a check failed)");
        }
        header(
            "cleaning up: stopping the agent (it detaches), servers, xdp-pass; deleting namespaces",
        );
        lab.cleanup();
        println!("lab removed");
    }
    let total = start.elapsed();
    // The budget leaves out compiling (minutes on a first run, a second afterwards).
    let demo_time = total.saturating_sub(build_time);
    header(&format!(
        "total time {:.1}s: cargo build {:.1}s, the demo itself {:.1}s",
        total.as_secs_f64(),
        build_time.as_secs_f64(),
        demo_time.as_secs_f64()
    ));
    if !failures.is_empty() {
        bail!(
            "the demo failed {} check(s):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    if demo_time > BUDGET {
        bail!(
            "the demo took {:.1}s, more than its {}s budget",
            demo_time.as_secs_f64(),
            BUDGET.as_secs()
        );
    }
    println!("demo passed");
    Ok(())
}

/// `cargo xtask demo --clean`: removes every demo lab (running, kept or left over).
pub fn clean() -> Result<()> {
    let ids = lab_ids();
    if ids.is_empty() {
        println!("nothing to clean: no {PREFIX}-* namespaces, temp or state directories");
        return Ok(());
    }
    let mut problems = Vec::new();
    for id in &ids {
        println!("removing {id}");
        problems.extend(clean_lab(id));
    }
    if !problems.is_empty() {
        bail!("cleanup incomplete:\n  {}", problems.join("\n  "));
    }
    println!("removed {} lab(s)", ids.len());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The narrated demo

/// Runs every step; returns the failed checks (errors that make going on pointless are `Err`).
fn demo(lab: &Lab) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    let ns = |name: &str| lab.ns(name);

    header(&format!(
        "building the lab: network namespaces {}-*",
        lab.id
    ));
    println!(
        "Six network namespaces stand in for six machines. A bridge br0 (namespace {}) is",
        ns("sw")
    );
    println!("the switch; every other host has one cable (a veth pair) to it, called eth0:");
    println!();
    for (name, address) in HOSTS {
        let role = match name {
            "client" => format!("routes the VIP {VIP} via lb ({LB_IP})"),
            "lb" => "runs `lb run` (XDP on eth0)".to_owned(),
            _ => format!("TCP server on port {PORT}, VIP {VIP} on lo"),
        };
        println!("    {name:<7} {address:<11} {:<18} {role}", ns(name));
    }
    println!();
    println!("VIP {VIP}:{PORT} is the service address clients use; no host owns it on eth0.");
    let t = Instant::now();
    lab.build_network()?;
    println!(
        "network ready, every link up ({:.1}s)",
        t.elapsed().as_secs_f64()
    );

    header("starting the backend servers (each answers with its own name, then echoes)");
    for (name, ..) in BACKENDS {
        lab.start_server(name)?;
    }
    lab.wait_servers(&["b1", "b2", "b3"], Duration::from_secs(10))?;
    for (name, address, _) in BACKENDS {
        println!(
            "{name}: listening on {address}:{PORT} (and on the VIP {VIP}:{PORT}, its lo address)"
        );
    }

    header("starting the agent: lb run --config (in namespace lb)");
    fs::write(
        &lab.config,
        config_text(&lab.state_dir.display().to_string()),
    )?;
    println!(
        "configuration {} (the same as examples/demo.toml):",
        lab.config.display()
    );
    println!(
        "    VIP \"web\" {VIP}:{PORT} tcp dsr, backends b1 weight 1, b2 weight 1, b3 weight 2"
    );
    println!("    health: every 500ms, timeout 200ms, down after 3 failures, up after 2 successes");
    let t = Instant::now();
    lab.start_agent()?;
    let line = lab.wait_log("datapath attached", 0, Duration::from_secs(30))?;
    println!(
        "the agent checked every backend once, programmed VIP and ring, and attached its XDP program ({:.1}s):",
        t.elapsed().as_secs_f64()
    );
    println!("    {line}");

    let all_up = [true, true, true];
    header("a. 300 connections from the client to the VIP");
    println!("Every connection is new and gets a fresh source port from the client's kernel. Its");
    println!("first packet (SYN) reaches lb's XDP program before the kernel sees it; the program");
    println!("hashes the 5-tuple onto the VIP's Maglev ring (b3 has twice the slots of b1 or b2),");
    println!("remembers the choice in connection tracking, rewrites the destination MAC to the");
    println!(
        "backend's and sends the frame back out of eth0 (XDP_TX). The backend, owning the VIP"
    );
    println!("on lo, accepts it and answers the client directly (direct server return).");
    let tally = lab.traffic(300)?;
    tally.print(all_up);
    tally.check("a", all_up, &mut failures);

    header("b. b2 fails: its server is stopped");
    println!("Nothing tells lb; it notices because its health checks to 10.99.0.12:{PORT} fail.");
    println!("After 3 failed checks in a row (checks are 500 ms apart, so 1 to 1.5 s) b2 leaves");
    println!(
        "the ring: the agent builds a new ring without it and swaps it in with one map update."
    );
    let log_mark = lab.log_len();
    let t = Instant::now();
    lab.stop_process("server-b2")?;
    match lab.wait_log(
        "backend 10.99.0.12 of vip web: Up -> Down",
        log_mark,
        Duration::from_secs(10),
    ) {
        Ok(line) => {
            println!(
                "b2 detected down after {:.2}s; the agent logged:",
                t.elapsed().as_secs_f64()
            );
            println!("    {line}");
            settle();
        }
        Err(error) => {
            failures.push(format!("b. b2 was never detected down: {error:#}"));
            return Ok(failures);
        }
    }
    let b2_down = [true, false, true];
    println!("200 connections: b2 must get none and none may fail (b1 and b3 share its part 1:2).");
    let tally = lab.traffic(200)?;
    tally.print(b2_down);
    println!("failed connections: {}", tally.failed);
    tally.check("b", b2_down, &mut failures);

    header("c. b2 comes back: its server is restarted");
    println!("The next 2 successful checks (about 1 s) bring b2 back into the ring.");
    let log_mark = lab.log_len();
    let t = Instant::now();
    lab.start_server("b2")?;
    match lab.wait_log(
        "backend 10.99.0.12 of vip web: Down -> Up",
        log_mark,
        Duration::from_secs(10),
    ) {
        Ok(line) => {
            println!(
                "b2 detected up after {:.2}s; the agent logged:",
                t.elapsed().as_secs_f64()
            );
            println!("    {line}");
            settle();
        }
        Err(error) => {
            failures.push(format!("c. b2 was never detected up again: {error:#}"));
            return Ok(failures);
        }
    }
    println!("300 connections: the shares are back to 1:1:2.");
    let tally = lab.traffic(300)?;
    tally.print(all_up);
    tally.check("c", all_up, &mut failures);

    header("d. what the agent logged");
    for line in lab.log_text().lines() {
        println!("    {line}");
    }

    header(&format!("d. lb check --config {}", lab.config.display()));
    let out = Command::new(&lab.lb)
        .arg("check")
        .arg("--config")
        .arg(&lab.config)
        .output()?;
    print_indented(&out.stdout);
    print_indented(&out.stderr);
    if !out.status.success() {
        failures.push(format!("d. lb check failed ({})", out.status));
    }

    if has_stats(&lab.lb) {
        for what in ["stats", "status"] {
            header(&format!(
                "d. lb {what} --state-dir {} (in namespace lb)",
                lab.state_dir.display()
            ));
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", ns("lb")))
                .arg(&lab.lb)
                .arg(what)
                .arg("--state-dir")
                .arg(&lab.state_dir)
                .stdin(Stdio::null())
                .output()?;
            print_indented(&out.stdout);
            print_indented(&out.stderr);
            if !out.status.success() {
                failures.push(format!("d. lb {what} failed ({})", out.status));
            }
        }
    } else {
        header("d. lb stats / lb status");
        println!(
            "Per-VIP and per-backend counters (`lb stats`) and the agent's view (`lb status`)"
        );
        println!("come with issue #4; this demo shows them once `lb stats` exists.");
    }
    Ok(failures)
}

/// Whether this `lb` has the operator commands (`lb stats`, `lb status`: issue #4).
fn has_stats(lb: &Path) -> bool {
    Command::new(lb)
        .args(["stats", "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The agent logs a state change, then rebuilds and swaps the ring: give it a moment.
fn settle() {
    thread::sleep(SETTLE);
}

fn print_indented(bytes: &[u8]) {
    for line in String::from_utf8_lossy(bytes).lines() {
        println!("    {line}");
    }
}

/// Connections of one traffic phase.
struct Tally {
    /// Connections answered by each backend (in [`BACKENDS`] order).
    counts: [usize; 3],
    /// Connections that failed.
    failed: usize,
    /// Connections not attempted because too many failed.
    skipped: usize,
    /// First errors, for the report.
    errors: Vec<String>,
    /// Answers that name no backend.
    unknown: usize,
    elapsed: Duration,
    /// The slowest answered connection: (duration, 1-based index).
    slowest: (Duration, usize),
}

impl Tally {
    fn total(&self) -> usize {
        self.counts.iter().sum::<usize>() + self.failed + self.unknown + self.skipped
    }

    fn expected(up: [bool; 3]) -> [f64; 3] {
        let sum: u32 = BACKENDS
            .iter()
            .zip(up)
            .filter(|(_, u)| *u)
            .map(|(b, _)| b.2)
            .sum();
        let mut shares = [0.0; 3];
        for (i, (b, u)) in BACKENDS.iter().zip(up).enumerate() {
            if u && sum > 0 {
                shares[i] = f64::from(b.2) / f64::from(sum);
            }
        }
        shares
    }

    fn print(&self, up: [bool; 3]) {
        let expected = Self::expected(up);
        let answered: usize = self.counts.iter().sum();
        println!();
        println!("    backend  address     weight  expected  connections  actual");
        for (i, (name, address, weight)) in BACKENDS.iter().enumerate() {
            let exp = if up[i] {
                format!("{:.1}%", expected[i] * 100.0)
            } else {
                "down".to_owned()
            };
            let actual = if answered > 0 {
                self.counts[i] as f64 * 100.0 / answered as f64
            } else {
                0.0
            };
            println!(
                "    {name:<8} {address:<11} {weight:>6}  {exp:>8}  {:>11}  {actual:>5.1}%",
                self.counts[i]
            );
        }
        println!(
            "    {} connections in {:.2}s, {} answered, {} failed{}",
            self.total(),
            self.elapsed.as_secs_f64(),
            answered,
            self.failed,
            if self.skipped > 0 {
                format!(", {} not attempted", self.skipped)
            } else {
                String::new()
            }
        );
        if self.slowest.0 > Duration::from_millis(500) {
            println!(
                "    the slowest connection (number {}) took {:.2}s",
                self.slowest.1,
                self.slowest.0.as_secs_f64()
            );
        }
        for error in &self.errors {
            println!("    error: {error}");
        }
        println!();
    }

    /// Every connection answered, down backends got none, up ones about their share.
    fn check(&self, step: &str, up: [bool; 3], failures: &mut Vec<String>) {
        if self.failed + self.skipped + self.unknown > 0 {
            failures.push(format!(
                "{step}. {} of {} connections failed or were not answered by a backend",
                self.failed + self.skipped + self.unknown,
                self.total()
            ));
        }
        let answered: usize = self.counts.iter().sum();
        let expected = Self::expected(up);
        for (i, (name, ..)) in BACKENDS.iter().enumerate() {
            let actual = if answered > 0 {
                self.counts[i] as f64 / answered as f64
            } else {
                0.0
            };
            if !up[i] && self.counts[i] > 0 {
                failures.push(format!(
                    "{step}. {name} is down but got {} connections",
                    self.counts[i]
                ));
            } else if up[i] && (self.counts[i] == 0 || (actual - expected[i]).abs() > 0.12) {
                failures.push(format!(
                    "{step}. {name} got {:.1}% of the connections, expected about {:.1}%",
                    actual * 100.0,
                    expected[i] * 100.0
                ));
            }
        }
        if failures.iter().any(|f| f.starts_with(&format!("{step}. "))) {
            println!("CHECK FAILED (see the end of the output)");
        } else {
            println!("check passed: every connection answered, shares as expected");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The lab

/// One lab: its names, paths and the processes it started.
struct Lab {
    /// `lbdemo-<pid>`: prefix of the namespaces, name of the temp and state directories.
    id: String,
    /// Temp directory: configuration, logs, pids.
    dir: PathBuf,
    config: PathBuf,
    agent_log: PathBuf,
    state_dir: PathBuf,
    /// The backend server's script (in `dir`).
    server_py: PathBuf,
    /// The `lb` binary.
    lb: PathBuf,
    inner: Mutex<Inner>,
    /// Serialises [`Lab::cleanup`].
    cleaning: Mutex<()>,
}

#[derive(Default)]
struct Inner {
    procs: Vec<Proc>,
    /// Set by the first cleanup: nothing is started afterwards.
    cleaned: bool,
}

/// A process the demo started (in its own process group, so Ctrl-C reaches only the demo,
/// which stops them in order).
struct Proc {
    role: String,
    child: Child,
}

/// Cleans the lab up when dropped (errors, panics), unless disarmed (`--keep`).
struct Guard {
    lab: Arc<Lab>,
    armed: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed && !self.lab.inner().cleaned {
            eprintln!("\n==> cleaning up the lab");
            self.lab.cleanup();
            eprintln!("lab removed");
        }
    }
}

/// The lab, for the signal handler.
static LAB: OnceLock<Arc<Lab>> = OnceLock::new();

impl Lab {
    fn new(lb: PathBuf) -> Result<Self> {
        let id = format!("{PREFIX}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("server.py"), SERVER_PY.trim_start())?;
        Ok(Self {
            config: dir.join("lb.toml"),
            agent_log: dir.join("agent.log"),
            server_py: dir.join("server.py"),
            state_dir: Path::new("/sys/fs/bpf").join(&id),
            dir,
            id,
            lb,
            inner: Mutex::new(Inner::default()),
            cleaning: Mutex::new(()),
        })
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.id)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Namespaces, veths, bridge, addresses, routes, checksum offload, xdp-pass on the ports.
    fn build_network(&self) -> Result<()> {
        let sw = self.ns("sw");
        // One `ip` process in the root namespace creates the namespaces and the cables.
        let mut script = format!("netns add {sw}\n");
        for (i, (host, _)) in HOSTS.iter().enumerate() {
            script += &format!("netns add {}\n", self.ns(host));
            script += &format!(
                "link add eth0 netns {} type veth peer name p{i} netns {sw}\n",
                self.ns(host)
            );
        }
        ip_batch(None, &script)?;

        // Then one `ip` process per namespace, all at once.
        let mut batches = Vec::new();
        let mut sw_script =
            "link set lo up\nlink add br0 type bridge\nlink set br0 up\n".to_owned();
        for i in 0..HOSTS.len() {
            sw_script += &format!("link set p{i} master br0\nlink set p{i} up\n");
        }
        batches.push((sw.clone(), sw_script));
        for (host, address) in HOSTS {
            let mut s =
                format!("link set lo up\naddr add {address}/24 dev eth0\nlink set eth0 up\n");
            if host == "client" {
                s += &format!("route add {VIP}/32 via {LB_IP}\n");
            } else if host.starts_with('b') {
                s += &format!("addr add {VIP}/32 dev lo\n");
            }
            batches.push((self.ns(host), s));
        }
        let mut children = Vec::new();
        for (ns, script) in &batches {
            children.push((
                format!("ip -n {ns} -batch -"),
                spawn_ip_batch(Some(ns), script)?,
            ));
        }
        // Checksums are filled in by the veth only if TX offload is off: frames that XDP sends
        // back out (XDP_TX) would otherwise reach a backend with partial checksums.
        for (host, _) in HOSTS {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{}", self.ns(host)))
                .args(["ethtool", "-K", "eth0", "tx", "off"]);
            let line = cmd::display(&c);
            children.push((
                line,
                c.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()?,
            ));
        }
        for (line, child) in children {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "`{line}` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        println!("namespaces, bridge, cables, addresses and routes set up; TX checksum offload off on every eth0");

        // A veth delivers frames sent with XDP_TX only if its peer runs an XDP program.
        for i in 0..HOSTS.len() {
            let port = format!("p{i}");
            self.spawn(
                &format!("xdp-{port}"),
                &sw,
                &self.lb,
                &["xdp-pass", "--interface", &port],
                &self.dir.join(format!("xdp-{port}.log")),
            )?;
        }
        for i in 0..HOSTS.len() {
            let role = format!("xdp-p{i}");
            let log = self.dir.join(format!("{role}.log"));
            self.wait_file(
                &role,
                &log,
                "pass program attached",
                Duration::from_secs(30),
            )?;
        }
        println!("switch ports p0-p{} run `lb xdp-pass` (veths deliver XDP_TX frames only to a peer with XDP)", HOSTS.len() - 1);
        self.wait_links(Duration::from_secs(10))
    }

    /// Waits until every link is operationally up. The kernel activates a device's queueing
    /// discipline (until then it drops what is sent) when it sees the carrier, in a work item
    /// that runs up to a second later on a busy machine; the operational state changes with it.
    fn wait_links(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut namespaces: Vec<String> = HOSTS.iter().map(|(host, _)| self.ns(host)).collect();
        namespaces.push(self.ns("sw"));
        loop {
            let mut down = Vec::new();
            let children: Vec<(String, Child)> = namespaces
                .iter()
                .map(|ns| {
                    let child = Command::new("ip")
                        .args(["-n", ns, "-br", "link", "show", "up"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("starting ip")?;
                    Ok((ns.clone(), child))
                })
                .collect::<Result<_>>()?;
            for (ns, child) in children {
                let out = String::from_utf8_lossy(&child.wait_with_output()?.stdout).into_owned();
                // `eth0@if2  UP  ...`; lo is UNKNOWN, br0 follows its ports.
                for line in out.lines() {
                    let mut fields = line.split_whitespace();
                    let (Some(name), Some(state)) = (fields.next(), fields.next()) else {
                        continue;
                    };
                    let name = name.split('@').next().unwrap_or(name);
                    if name != "lo" && state != "UP" {
                        down.push(format!("{ns}/{name} {state}"));
                    }
                }
            }
            if down.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "links not up after {}s: {}",
                    timeout.as_secs(),
                    down.join(", ")
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_server(&self, name: &str) -> Result<()> {
        self.spawn(
            &format!("server-{name}"),
            &self.ns(name),
            Path::new("python3"),
            &[&self.server_py.display().to_string(), name],
            &self.dir.join(format!("server-{name}.log")),
        )
    }

    /// Waits until each backend accepts connections (from the lb namespace, as health checks do).
    fn wait_servers(&self, names: &[&str], timeout: Duration) -> Result<()> {
        let addresses: Vec<(String, SocketAddr)> = names
            .iter()
            .map(|n| {
                let address = BACKENDS.iter().find(|b| b.0 == *n).expect("backend").1;
                (
                    n.to_string(),
                    SocketAddr::new(address.parse().expect("address"), PORT),
                )
            })
            .collect();
        let deadline = Instant::now() + timeout;
        in_netns(&self.ns("lb"), || -> Result<()> {
            for (name, address) in &addresses {
                loop {
                    if let Some(status) = self.exited(&format!("server-{name}")) {
                        bail!(
                            "the server of {name} exited ({status}): {}",
                            self.file_text(&format!("server-{name}.log"))
                        );
                    }
                    if TcpStream::connect_timeout(address, Duration::from_millis(200)).is_ok() {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("the server of {name} does not accept connections on {address}");
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
            Ok(())
        })?
    }

    fn start_agent(&self) -> Result<()> {
        let config = self.config.display().to_string();
        self.spawn(
            "agent",
            &self.ns("lb"),
            &self.lb,
            &["run", "--config", &config],
            &self.agent_log,
        )
    }

    /// Starts `program args` inside namespace `ns`, stdout and stderr to `log`, and records its
    /// pid in the lab's pid file (for `--clean`).
    fn spawn(&self, role: &str, ns: &str, program: &Path, args: &[&str], log: &Path) -> Result<()> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        let mut inner = self.inner();
        if inner.cleaned {
            bail!("interrupted");
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::display(&command)))?;
        // nsenter (network namespace only) execs the program: this is the program's pid.
        let mut pids = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pids"))?;
        writeln!(pids, "{} {role}", child.id())?;
        inner.procs.push(Proc {
            role: role.to_owned(),
            child,
        });
        Ok(())
    }

    /// Exit status of the process `role`, if it has exited.
    fn exited(&self, role: &str) -> Option<ExitStatus> {
        let mut inner = self.inner();
        let proc = inner.procs.iter_mut().find(|p| p.role == role)?;
        proc.child.try_wait().ok().flatten()
    }

    /// Stops process `role` (SIGTERM) and waits for it.
    fn stop_process(&self, role: &str) -> Result<()> {
        let proc = {
            let mut inner = self.inner();
            let i = inner
                .procs
                .iter()
                .position(|p| p.role == role)
                .with_context(|| format!("no process {role}"))?;
            inner.procs.remove(i)
        };
        stop_children(vec![proc], Duration::from_secs(3));
        Ok(())
    }

    fn file_text(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.agent_log).unwrap_or_default()
    }

    fn log_len(&self) -> usize {
        self.log_text().len()
    }

    /// Waits for a line containing `needle` in the agent's log after byte `from`; returns it.
    fn wait_log(&self, needle: &str, from: usize, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if let Some(line) = text
                .get(from..)
                .unwrap_or("")
                .lines()
                .find(|l| l.contains(needle))
            {
                return Ok(line.to_owned());
            }
            if let Some(status) = self.exited("agent") {
                bail!("the agent exited ({status}); its log:\n{text}");
            }
            if Instant::now() > deadline {
                bail!(
                    "no \"{needle}\" in the agent's log after {}s; the log:\n{text}",
                    timeout.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for `needle` in the log file of process `role`.
    fn wait_file(&self, role: &str, log: &Path, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read_to_string(log).unwrap_or_default();
            if text.contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.exited(role) {
                bail!("{role} exited ({status}): {text}");
            }
            if Instant::now() > deadline {
                bail!(
                    "{role}: no \"{needle}\" after {}s: {text}",
                    timeout.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Opens `n` connections to the VIP from the client namespace, one after the other.
    fn traffic(&self, n: usize) -> Result<Tally> {
        let vip = SocketAddr::new(VIP.parse().expect("VIP"), PORT);
        let start = Instant::now();
        let mut tally = in_netns(&self.ns("client"), || {
            let mut tally = Tally {
                counts: [0; 3],
                failed: 0,
                skipped: 0,
                errors: Vec::new(),
                unknown: 0,
                elapsed: Duration::ZERO,
                slowest: (Duration::ZERO, 0),
            };
            for done in 0..n {
                if tally.failed >= MAX_FAILURES {
                    tally.skipped = n - done;
                    tally
                        .errors
                        .push(format!("gave up after {MAX_FAILURES} failures"));
                    break;
                }
                let t = Instant::now();
                let answer = ask_name(vip);
                if answer.is_ok() && t.elapsed() > tally.slowest.0 {
                    tally.slowest = (t.elapsed(), done + 1);
                }
                match answer {
                    Ok(name) => match BACKENDS.iter().position(|b| b.0 == name) {
                        Some(i) => tally.counts[i] += 1,
                        None => {
                            tally.unknown += 1;
                            tally.errors.push(format!("unexpected answer {name:?}"));
                        }
                    },
                    Err(error) => {
                        tally.failed += 1;
                        if tally.errors.len() < 3 {
                            tally.errors.push(format!(
                                "connection {} of {n} (at {:.2}s): {error}",
                                done + 1,
                                start.elapsed().as_secs_f64()
                            ));
                        }
                    }
                }
            }
            tally
        })?;
        tally.elapsed = start.elapsed();
        Ok(tally)
    }

    /// `--keep`: the lab stays; tell the user how to use and remove it.
    fn keep(&self) -> Result<()> {
        fs::write(self.dir.join("kept"), "")?;
        let client = self.ns("client");
        let lb_ns = self.ns("lb");
        header("the lab keeps running (--keep)");
        println!("One connection to the VIP from the client (prints the backend's name):");
        println!(
            "    nsenter --net=/run/netns/{client} python3 -c 'import socket; print(socket.create_connection((\"{VIP}\", {PORT})).recv(64).decode(), end=\"\")'"
        );
        println!("100 connections, counted by backend:");
        println!(
            "    nsenter --net=/run/netns/{client} python3 -c 'import socket, collections; print(collections.Counter(socket.create_connection((\"{VIP}\", {PORT})).recv(64).decode().strip() for _ in range(100)))'"
        );
        println!("Stop b2's server, watch the agent take it out, start it again:");
        println!("    kill $(ip netns pids {})", self.ns("b2"));
        println!("    tail -f {}", self.agent_log.display());
        println!(
            "    nsenter --net=/run/netns/{} python3 {} b2 >/dev/null 2>&1 &",
            self.ns("b2"),
            self.server_py.display()
        );
        let soon = if has_stats(&self.lb) {
            ""
        } else {
            " (coming with issue #4)"
        };
        println!(
            "Counters and health{soon} (nsenter, not `ip netns exec`: that one hides /sys/fs/bpf):"
        );
        for what in ["stats --watch", "status"] {
            println!(
                "    nsenter --net=/run/netns/{lb_ns} {} {what} --state-dir {}",
                self.lb.display(),
                self.state_dir.display()
            );
        }
        println!(
            "Configuration (the agent reloads it when the file changes): {}",
            self.config.display()
        );
        println!("Agent log: {}", self.agent_log.display());
        println!("Remove the lab:");
        println!("    cargo xtask demo --clean");
        Ok(())
    }

    /// Stops everything and removes the lab. Idempotent; never fails (prints problems).
    fn cleanup(&self) {
        // Held throughout: a second caller (Ctrl-C during the cleanup) waits for the first.
        let _cleaning = self
            .cleaning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let procs = {
            let mut inner = self.inner();
            if inner.cleaned {
                return;
            }
            inner.cleaned = true;
            std::mem::take(&mut inner.procs)
        };
        // The agent first, with SIGTERM: it detaches its program and removes its pins.
        let (agent, others): (Vec<Proc>, Vec<Proc>) =
            procs.into_iter().partition(|p| p.role == "agent");
        stop_children(agent, Duration::from_secs(5));
        stop_children(others, Duration::from_secs(3));
        for problem in clean_lab(&self.id) {
            eprintln!("cleanup: {problem}");
        }
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

/// Connects to the VIP and reads the backend's name.
fn ask_name(vip: SocketAddr) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&vip, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    }
    Ok(line.trim_end().to_owned())
}

/// Runs `f` on a thread that entered network namespace `ns` (its sockets belong to it).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(&path).with_context(|| format!("opening {path}"))?;
                setns(file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn spawn_ip_batch(ns: Option<&str>, script: &str) -> Result<Child> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    c.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().context("starting ip")?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())?;
    Ok(child)
}

fn ip_batch(ns: Option<&str>, script: &str) -> Result<()> {
    let out = spawn_ip_batch(ns, script)?.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -batch failed ({}): {}\nscript:\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C, leftovers, --clean

/// Write end of the self-pipe the signal handler writes to (-1: none yet).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: nix::libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let byte = signal as u8;
    // write(2) is async-signal-safe; nothing else happens in the handler.
    unsafe { nix::libc::write(fd, (&byte as *const u8).cast(), 1) };
}

/// SIGINT, SIGTERM and SIGHUP clean the lab up and exit with status 130: the handler wakes a
/// thread through a pipe. (Handlers, unlike a blocked signal mask, are not inherited by the
/// programs the demo starts.)
fn install_signal_handler() -> Result<()> {
    let (mut reader, writer) = std::io::pipe().context("signal pipe")?;
    SIGNAL_PIPE.store(writer.into_raw_fd(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only calls write(2).
        unsafe { sigaction(signal, &action) }
            .with_context(|| format!("installing a {signal} handler"))?;
    }
    thread::spawn(move || {
        let mut byte = [0u8; 1];
        let _ = reader.read_exact(&mut byte);
        let name = Signal::try_from(i32::from(byte[0])).map_or("a signal", |s| s.as_str());
        eprintln!("\n==> interrupted ({name}): cleaning up");
        if let Some(lab) = LAB.get() {
            lab.cleanup();
            eprintln!("lab removed");
        }
        std::process::exit(130);
    });
    Ok(())
}

/// Every demo lab on the machine (`lbdemo-<pid>`), from namespaces, temp and state directories.
fn lab_ids() -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            return;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() {
            let id = format!("{PREFIX}-{pid}");
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    };
    for name in netns_names() {
        add(&name);
    }
    for dir in [std::env::temp_dir(), PathBuf::from("/sys/fs/bpf")] {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                add(&entry.file_name().to_string_lossy());
            }
        }
    }
    ids
}

/// At start: removes labs of earlier demos that are no longer running (kept ones stay).
fn remove_leftovers() {
    for id in lab_ids() {
        let pid = id.trim_start_matches(&format!("{PREFIX}-"));
        let running =
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "xtask");
        if running {
            continue;
        }
        if std::env::temp_dir().join(&id).join("kept").exists() {
            println!("note: {id} is a lab kept with --keep; `cargo xtask demo --clean` removes it");
            continue;
        }
        println!("removing leftovers of an earlier demo: {id}");
        for problem in clean_lab(&id) {
            eprintln!("cleanup: {problem}");
        }
    }
}

/// Names under /run/netns.
fn netns_names() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes lab `id` (its processes, namespaces, state and temp directories) whoever started it.
/// Returns what could not be removed.
fn clean_lab(id: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let namespaces: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{id}-")))
        .collect();
    let inodes: HashSet<u64> = namespaces
        .iter()
        .filter_map(|n| fs::metadata(format!("/run/netns/{n}")).ok())
        .map(|m| m.ino())
        .collect();
    let dir = std::env::temp_dir().join(id);

    // Processes: the recorded ones (the agent first, so it detaches), then anything else still
    // in the lab's namespaces. A pid counts only while it is in one of them (pids get reused).
    let recorded = fs::read_to_string(dir.join("pids")).unwrap_or_default();
    let mut agents = Vec::new();
    let mut others = Vec::new();
    for line in recorded.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(Ok(pid)), Some(role)) = (parts.next().map(str::parse::<i32>), parts.next()) {
            if in_namespaces(pid, &inodes) {
                if role == "agent" {
                    agents.push(pid)
                } else {
                    others.push(pid)
                }
            }
        }
    }
    terminate(&agents, &inodes, Duration::from_secs(5));
    terminate(&others, &inodes, Duration::from_secs(3));
    let stray: Vec<i32> = fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| *pid != std::process::id() as i32 && in_namespaces(*pid, &inodes))
                .collect()
        })
        .unwrap_or_default();
    terminate(&stray, &inodes, Duration::from_secs(3));

    if !namespaces.is_empty() {
        let script: String = namespaces
            .iter()
            .map(|n| format!("netns del {n}\n"))
            .collect();
        let out = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(script.as_bytes())?;
                child.wait_with_output()
            });
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => problems.push(format!(
                "ip netns del: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(error) => problems.push(format!("ip netns del: {error}")),
        }
    }

    // Pins left behind (the agent was killed): unlinking the link's pin detaches the program.
    let state_dir = Path::new("/sys/fs/bpf").join(id);
    if state_dir.exists() {
        if let Ok(entries) = fs::read_dir(&state_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let removed = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                if let Err(error) = removed {
                    problems.push(format!("{}: {error}", path.display()));
                }
            }
        }
        if let Err(error) = fs::remove_dir(&state_dir) {
            problems.push(format!("{}: {error}", state_dir.display()));
        }
    }
    if dir.exists() {
        if let Err(error) = fs::remove_dir_all(&dir) {
            problems.push(format!("{}: {error}", dir.display()));
        }
    }
    problems
}

/// Whether process `pid` lives in one of the network namespaces `inodes`.
fn in_namespaces(pid: i32, inodes: &HashSet<u64>) -> bool {
    fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| inodes.contains(&m.ino()))
}

/// SIGTERM to `pids` (not our children), SIGKILL to those still there after `grace`.
fn terminate(pids: &[i32], inodes: &HashSet<u64>, grace: Duration) {
    if pids.is_empty() {
        return;
    }
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    let alive = || {
        pids.iter()
            .copied()
            .filter(|p| in_namespaces(*p, inodes))
            .collect::<Vec<_>>()
    };
    while Instant::now() < deadline && !alive().is_empty() {
        thread::sleep(Duration::from_millis(20));
    }
    for pid in alive() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `state_dir` of `examples/demo.toml`; the demo uses `/sys/fs/bpf/lbdemo-<pid>`.
    const EXAMPLE_STATE_DIR: &str = "/sys/fs/bpf/lbdemo";

    #[test]
    fn example_config_is_the_demo_config() {
        let example = workspace_root().join("examples/demo.toml");
        let text = fs::read_to_string(&example).expect("examples/demo.toml");
        assert_eq!(
            text,
            config_text(EXAMPLE_STATE_DIR),
            "regenerate {} from demo::config_text",
            example.display()
        );
    }
}
