//! A ready lab for agent tests: client, lb and three DSR backends (`b1`..`b3`, each answering
//! with its name and then echoing) on one bridge, a configuration file and a state directory.
//! The test starts `lb run` itself.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_user::datapath::Datapath;

use crate::netns::{
    agent::{AgentFiles, AgentProcess},
    connections::{self, Held},
    servers::{HttpAnswer, HttpServer, NameServer},
    topology::Lan,
};

/// The VIP.
pub const VIP: &str = "10.78.0.100";
/// Its port.
pub const PORT: u16 = 8080;
/// Health-check interval.
pub const INTERVAL_MS: u64 = 200;
/// Health-check timeout.
pub const TIMEOUT_MS: u64 = 100;
/// rise.
pub const RISE: u64 = 2;
/// fall.
pub const FALL: u64 = 3;
/// Slack for scheduling on a loaded 2-core CI machine.
pub const BOUND_MS: u64 = 250;
/// Backend names.
pub const NAMES: [&str; 3] = ["b1", "b2", "b3"];

/// The lab.
pub struct AgentLab {
    /// Backend servers (`None`: stopped).
    pub servers: Vec<Option<NameServer>>,
    /// Agent files.
    pub files: AgentFiles,
    /// The namespaces.
    pub lan: Lan,
}

impl AgentLab {
    /// Builds the lab and writes a configuration with weights 1, 1, 1.
    pub fn new(tag: &str) -> Self {
        Self::with_extra_hosts(tag, &[])
    }

    /// Like [`Self::new`], with more hosts on the bridge after `b3` (hosts 5, 6, ...).
    pub fn with_extra_hosts(tag: &str, extra: &[&str]) -> Self {
        let mut names = vec!["client", "lb", "b1", "b2", "b3"];
        names.extend_from_slice(extra);
        let lan = Lan::new(tag, &names);
        let mut servers = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let backend = lan.host(2 + i);
            backend.ns.ip(&format!("addr add {VIP}/32 dev lo"));
            servers.push(Some(NameServer::start(&backend.ns, PORT, name)));
        }
        lan.host(0)
            .ns
            .ip(&format!("route add {VIP}/32 via {}", lan.host(1).ip));
        let files = AgentFiles::new(tag);
        let lab = Self {
            servers,
            files,
            lan,
        };
        lab.write_config(&[1, 1, 1], "");
        lab
    }

    /// See the name.
    pub fn backend_ip(&self, i: usize) -> IpAddr {
        IpAddr::V4(self.lan.host(2 + i).ip)
    }

    /// See the name.
    pub fn write_config(&self, weights: &[u32; 3], extra: &str) {
        self.files
            .write_config(&self.config_text(weights, extra, &self.files.state_dir));
    }

    /// The configuration text for `weights`, with `extra` top-level lines and `state_dir`.
    pub fn config_text(
        &self,
        weights: &[u32; 3],
        extra: &str,
        state_dir: &std::path::Path,
    ) -> String {
        self.config_text_with_health(weights, extra, "", state_dir)
    }

    /// Like [`Self::write_config`], with more `[health]` keys (`health`: lines such as
    /// `type = "http"`).
    pub fn write_config_with_health(&self, weights: &[u32; 3], health: &str) {
        self.files.write_config(&self.config_text_with_health(
            weights,
            "",
            health,
            &self.files.state_dir,
        ));
    }

    /// Like [`Self::config_text`], with more `[health]` keys. `conntrack_size` is 65536
    /// unless `extra` sets it.
    pub fn config_text_with_health(
        &self,
        weights: &[u32; 3],
        extra: &str,
        health: &str,
        state_dir: &std::path::Path,
    ) -> String {
        let conntrack_size = if extra.contains("conntrack_size") {
            ""
        } else {
            "conntrack_size = 65536\n"
        };
        let mut text = format!(
            "interface = \"eth0\"\nstate_dir = \"{}\"\n{conntrack_size}{extra}\n\
             [health]\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"{TIMEOUT_MS}ms\"\nrise = {RISE}\nfall = {FALL}\n{health}\n\
             [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\nforward = \"dsr\"\n",
            state_dir.display()
        );
        for (i, weight) in weights.iter().enumerate() {
            text += &format!(
                "\n  [[vip.backend]]\n  address = \"{}\"\n  weight = {weight}\n",
                self.backend_ip(i)
            );
        }
        text
    }

    /// See the name.
    pub fn start_agent(&self, keep_datapath: bool) -> AgentProcess {
        let agent = AgentProcess::start(&self.lan.host(1).ns, &self.files, keep_datapath);
        assert!(
            self.files.wait_log(
                "datapath attached",
                self.attached_count() + 1,
                Duration::from_secs(15)
            ),
            "agent did not attach:\n{}",
            self.files.log_text()
        );
        agent
    }

    /// Runs `lb ARGS --state-dir <the lab's>` in the load balancer's namespace (routes are per
    /// namespace; maps and sockets are seen from any).
    pub fn lb(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.lan.host(1).ns.name))
            .arg(crate::netns::agent::lb_binary())
            .args(args)
            .arg("--state-dir")
            .arg(&self.files.state_dir)
            .output()
            .expect("run lb")
    }

    /// An HTTP health endpoint answering 200 on `port` beside each backend's service.
    pub fn start_health_servers(&self, port: u16) -> Vec<HttpServer> {
        (0..NAMES.len())
            .map(|i| HttpServer::start(&self.lan.host(2 + i).ns, port, HttpAnswer::Status(200)))
            .collect()
    }

    /// `lb status --json`, which must succeed.
    pub fn status_json(&self) -> serde_json::Value {
        let output = self.lb(&["status", "--json"]);
        assert!(
            output.status.success(),
            "lb status --json: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("status json")
    }

    /// Backend `i`'s entry in `lb status --json` (of the first VIP).
    pub fn backend_status(&self, i: usize) -> serde_json::Value {
        let address = self.backend_ip(i).to_string();
        let status = self.status_json();
        status["vips"][0]["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .find(|b| b["address"] == address.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("no backend {address} in {status}"))
    }

    /// `lb explain --json` for the lab client's flow from `client_port` to the VIP, which must
    /// succeed.
    pub fn explain(&self, client_port: u16) -> serde_json::Value {
        let output = self.lb(&[
            "explain",
            "--json",
            "--vip",
            &format!("{VIP}:{PORT}/tcp"),
            "--client",
            &format!("{}:{client_port}", self.lan.host(0).ip),
        ]);
        assert!(
            output.status.success(),
            "lb explain: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("explain json")
    }

    /// See the name.
    pub fn attached_count(&self) -> usize {
        self.files.log_text().matches("datapath attached").count()
    }

    /// Whether backend `i` has slots in the VIP's ring right now.
    /// See the name.
    pub fn in_ring(&self, i: usize) -> bool {
        let ring = self.ring();
        let id = self.backend_id(i);
        ring.contains(&id)
    }

    /// See the name.
    pub fn ring(&self) -> Vec<u32> {
        let mut datapath = Datapath::open_pinned(&self.files.state_dir).expect("open pinned maps");
        let vips = datapath.vips().expect("vips");
        let (_, vip) = vips.first().expect("one vip");
        datapath.ring(vip.id).expect("ring").expect("ring present")
    }

    /// See the name.
    pub fn backend_id(&self, i: usize) -> u32 {
        let mut datapath = Datapath::open_pinned(&self.files.state_dir).expect("open pinned maps");
        let address = self.backend_ip(i);
        datapath
            .backends()
            .expect("backends")
            .into_iter()
            .find(|(_, b)| b.address() == address)
            .map(|(id, _)| id)
            .expect("backend entry")
    }

    /// The VIP's address.
    pub fn vip(&self) -> SocketAddr {
        SocketAddr::new(VIP.parse().expect("vip"), PORT)
    }

    /// [`connections::ask`] `n` times from the client (2 s each): the answering backends.
    pub fn connect(&self, n: usize) -> Vec<Result<String, String>> {
        connections::ask(&self.lan.host(0).ns, self.vip(), n, Duration::from_secs(2))
    }

    /// [`connections::hold`] `n` connections from the client.
    pub fn hold(&self, n: usize) -> Vec<Held> {
        connections::hold(&self.lan.host(0).ns, self.vip(), n)
    }

    /// [`crate::netns::wait_until`].
    pub fn wait_until(
        &self,
        timeout: Duration,
        condition: impl FnMut() -> bool,
    ) -> Option<Duration> {
        crate::netns::wait_until(timeout, condition)
    }
}
