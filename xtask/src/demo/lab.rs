//! One demo lab: its names and paths, its network (built with `lb_lab`), the processes it
//! runs in it (backend servers, the agent, `lb xdp-pass` on the switch ports), their logs, and
//! its removal.

use std::fs;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lb_lab::{routing::Upstream, Host, Lan, Naming, Netns};

use super::clean::clean_lab;
use super::config::{BACKENDS, HOSTS, LB_IP, PORT, PREFIX, REMOTE, ROUTER_IP, SUBNETS, VIP};
use super::processes::Processes;

/// The backend server: answers every connection with its name, then echoes until EOF.
const SERVER_PY: &str = r#"
import http.server, os, socketserver, sys, threading
name, sick = sys.argv[1], sys.argv[2]
class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall((name + "\n").encode())
        while True:
            data = self.request.recv(4096)
            if not data:
                break
            self.request.sendall(data)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = 503 if os.path.exists(sick) else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"sick\n" if status == 503 else b"ok\n")
    def log_message(self, *args):
        pass
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
http.server.ThreadingHTTPServer.allow_reuse_address = True
health = http.server.ThreadingHTTPServer(("0.0.0.0", 8081), Health)
threading.Thread(target=health.serve_forever, daemon=True).start()
socketserver.ThreadingTCPServer(("0.0.0.0", 8080), Handler).serve_forever()
"#;

/// One lab: its names, paths, network and the processes it started.
pub(super) struct Lab {
    /// `lbdemo-<pid>`: prefix of the namespaces, name of the temp and state directories.
    pub(super) id: String,
    /// Temp directory: configuration, logs, pids.
    pub(super) dir: PathBuf,
    /// The agent's configuration file.
    pub(super) config: PathBuf,
    /// The agent's log.
    pub(super) agent_log: PathBuf,
    /// The agent's `state_dir` (bpffs).
    pub(super) state_dir: PathBuf,
    /// The backend server's script (in `dir`).
    pub(super) server_py: PathBuf,
    /// The `lb` binary.
    pub(super) lb: PathBuf,
    /// The namespaces, once built. Never dropped: they are removed by name ([`clean_lab`]),
    /// which also covers a demo that was killed, and `--keep` leaves them running.
    network: OnceLock<ManuallyDrop<Lan>>,
    /// The remote client behind the router (redundancy chapter); removed by name like the rest.
    upstream: OnceLock<ManuallyDrop<Upstream>>,
    processes: Processes,
    /// Serialises [`Lab::cleanup`].
    cleaning: Mutex<()>,
}

/// Cleans the lab up when dropped (errors, panics), unless disarmed (`--keep`).
pub(super) struct Guard {
    /// The lab to clean up.
    pub(super) lab: Arc<Lab>,
    /// Whether to.
    pub(super) armed: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed && !self.lab.is_cleaned() {
            eprintln!("\n==> cleaning up the lab");
            self.lab.cleanup();
            eprintln!("lab removed");
        }
    }
}

impl Lab {
    /// The paths of lab `lbdemo-<pid>`; writes the server script into its temp directory.
    pub(super) fn new(lb: PathBuf) -> Result<Self> {
        let id = format!("{PREFIX}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("server.py"), SERVER_PY.trim_start())?;
        Ok(Self {
            config: dir.join("lb.toml"),
            agent_log: dir.join("agent.log"),
            server_py: dir.join("server.py"),
            state_dir: Path::new("/sys/fs/bpf").join(&id),
            processes: Processes::new(dir.join("pids")),
            dir,
            id,
            lb,
            network: OnceLock::new(),
            upstream: OnceLock::new(),
            cleaning: Mutex::new(()),
        })
    }

    /// The name of `host`'s namespace (`sw`: the switch), as [`Naming::Prefixed`] gives it.
    pub(super) fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.id)
    }

    /// Runs `lb ARGS --state-dir <lb's state dir>` in the lb namespace; its output.
    pub(super) fn lb_output(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(self
            .host_ns("lb")?
            .command(&self.lb)
            .args(args)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(std::process::Stdio::null())
            .output()?)
    }

    /// The namespace of `host`, once the network is built.
    pub(super) fn host_ns(&self, host: &str) -> Result<&Netns> {
        let lan = self
            .network
            .get()
            .context("the lab's network is not built")?;
        let host = lan
            .host_named(host)
            .with_context(|| format!("no host {host} in the lab"))?;
        Ok(&host.ns)
    }

    /// Host `name`, once the network is built.
    pub(super) fn host(&self, name: &str) -> Result<&Host> {
        let lan = self
            .network
            .get()
            .context("the lab's network is not built")?;
        lan.host_named(name)
            .with_context(|| format!("no host {name} in the lab"))
    }

    /// The switch's namespace.
    pub(super) fn switch(&self) -> Result<&Netns> {
        Ok(&self
            .network
            .get()
            .context("the lab's network is not built")?
            .switch)
    }

    /// The remote client behind the router.
    pub(super) fn remote(&self) -> Result<&Upstream> {
        self.upstream
            .get()
            .map(|u| &**u)
            .context("the lab's network is not built")
    }

    /// Starts `command` as process `role`, logging to `<role>.log` in the lab's directory.
    pub(super) fn spawn(&self, role: &str, command: std::process::Command) -> Result<PathBuf> {
        let log = self.dir.join(format!("{role}.log"));
        self.processes.spawn(role, command, &log)?;
        Ok(log)
    }

    /// Namespaces, cables, bridge, addresses and checksum offload (`lb_lab`), the VIP's route
    /// and addresses, `lb xdp-pass` on the switch ports; returns once every link is up.
    pub(super) fn build_network(&self) -> Result<()> {
        let mut lan = Lan::empty(Naming::Prefixed(self.id.clone()))?;
        for (name, n) in HOSTS {
            lan.plug(name, SUBNETS.host(n))?;
        }
        let [a, b, c] = REMOTE;
        for host in &lan.hosts {
            if host.name == "client" {
                host.ns.try_ip(&format!("route add {VIP}/32 via {LB_IP}"))?;
            } else if host.name.starts_with('b') {
                host.ns.try_ip_batch(&[
                    format!("addr add {VIP}/32 dev lo"),
                    // DSR answers to the remote client go through the router.
                    format!("route add {a}.{b}.{c}.0/24 via {ROUTER_IP}"),
                ])?;
            } else if host.name.starts_with("lb") {
                // The bridge floods frames for a MAC it no longer knows (a dead host's) to
                // every port: the other instance must not forward them too.
                lan.switch
                    .try_exec(&format!("bridge link set dev {} flood off", host.port))?;
            }
        }
        let router = lan.host_named("router").context("no router in the lab")?;
        let upstream = Upstream::try_new(lan.naming(), "remote", &router.ns, REMOTE, 0x00c0_ffee)?;
        println!("namespaces, bridge, cables, addresses and routes set up; TX checksum offload off on every eth0");
        if self.network.set(ManuallyDrop::new(lan)).is_err()
            || self.upstream.set(ManuallyDrop::new(upstream)).is_err()
        {
            bail!("the lab's network is built twice");
        }
        let lan = self.network.get().expect("just set");

        // A veth delivers frames sent with XDP_TX only if its peer runs an XDP program.
        let ports = lan.ports();
        for port in &ports {
            let mut command = lan.switch.command(&self.lb);
            command.args(["xdp-pass", "--interface", port]);
            let role = format!("xdp-{port}");
            self.processes
                .spawn(&role, command, &self.dir.join(format!("{role}.log")))?;
        }
        for port in &ports {
            let role = format!("xdp-{port}");
            let log = self.dir.join(format!("{role}.log"));
            self.wait_file(
                &role,
                &log,
                "pass program attached",
                Duration::from_secs(30),
            )?;
        }
        println!("switch ports p0-p{} run `lb xdp-pass` (veths deliver XDP_TX frames only to a peer with XDP)", ports.len() - 1);
        Ok(lan.wait_links_up(Duration::from_secs(10))?)
    }

    /// Starts backend `name`'s server (in its namespace).
    pub(super) fn start_server(&self, name: &str) -> Result<()> {
        let mut command = self.host_ns(name)?.command("python3");
        command
            .arg(&self.server_py)
            .arg(name)
            .arg(self.sick_file(name));
        let role = format!("server-{name}");
        self.processes
            .spawn(&role, command, &self.dir.join(format!("{role}.log")))
    }

    /// The file whose presence makes backend `name`'s `/healthz` answer 503.
    pub(super) fn sick_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sick"))
    }

    /// Waits until each backend accepts connections (from the lb namespace, as health checks do).
    pub(super) fn wait_servers(&self, names: &[&str], timeout: Duration) -> Result<()> {
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
        self.host_ns("lb")?.try_run(|| -> Result<()> {
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

    /// Starts `lb run` in the lb namespace.
    pub(super) fn start_agent(&self) -> Result<()> {
        let mut command = self.host_ns("lb")?.command(&self.lb);
        command.arg("run").arg("--config").arg(&self.config);
        self.processes.spawn("agent", command, &self.agent_log)
    }

    /// Exit status of the process `role`, if it has exited.
    fn exited(&self, role: &str) -> Option<ExitStatus> {
        self.processes.exited(role)
    }

    /// Stops process `role` (SIGTERM) and waits for it.
    pub(super) fn stop_process(&self, role: &str) -> Result<()> {
        self.processes.stop(role)
    }

    /// The text of file `name` in the lab's temp directory.
    fn file_text(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// The agent's log so far.
    pub(super) fn log_text(&self) -> String {
        fs::read_to_string(&self.agent_log).unwrap_or_default()
    }

    /// The length of the agent's log so far (a mark for [`Self::wait_log`]).
    pub(super) fn log_len(&self) -> usize {
        self.log_text().len()
    }

    /// Waits for a line containing `needle` in the agent's log after byte `from`; returns it.
    pub(super) fn wait_log(&self, needle: &str, from: usize, timeout: Duration) -> Result<String> {
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
    pub(super) fn wait_file(
        &self,
        role: &str,
        log: &Path,
        needle: &str,
        timeout: Duration,
    ) -> Result<()> {
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

    /// Whether [`Self::cleanup`] ran.
    pub(super) fn is_cleaned(&self) -> bool {
        self.processes.all_stopped()
    }

    /// Stops everything and removes the lab. Idempotent; never fails (prints problems).
    pub(super) fn cleanup(&self) {
        // Held throughout: a second caller (Ctrl-C during the cleanup) waits for the first.
        let _cleaning = self
            .cleaning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !self.processes.stop_all() {
            return;
        }
        for problem in clean_lab(&self.id) {
            eprintln!("cleanup: {problem}");
        }
    }
}
