//! The redundancy lab of issue #15: two lb instances behind a router, every host a namespace.
//!
//! ```text
//!  client ── router ──┬── lb1   (lb run + bird2 | FRR | keepalived)
//!  10.79.0.2  10.77.0.10 ├── lb2
//!                     ├── b1 b2 b3 [b4]   DSR backends: the VIPs on lo, answering with
//!                     │                   their name and echoing, default route via router
//!               switch (bridge, lb's pass program on every port)
//! ```
//!
//! With [`Routing::Bgp`] the router runs bird2 (one eBGP session per instance, BFD, the VIP
//! routes merged into one multipath route, the kernel hashing flows by their ports) and every
//! instance runs the real `lb run` plus bird2 (or FRR on lb2) announcing what lb keeps in its
//! kernel table. With [`Routing::Vrrp`] the router routes the VIPs to a floating address that
//! keepalived keeps on one instance, with `lb status --check` as its track script.
//!
//! Every process (agents, daemons, servers) is stopped and every namespace, file and pin
//! removed on drop, also when a test fails; `LB_KEEP_TEST_LOGS=1` keeps the files (agent and
//! daemon logs, configurations) under the temp directory.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use lb_common::maps::Protocol;
use lb_lab::{
    routing::{
        bird::{Bird, LbHostBird, RouterBird, Session},
        frr::{Frr, LbHostFrr, RouterFrr},
        keepalived::{Keepalived, TrackScript, Vrrp},
        Peer, Upstream, LAB_BFD,
    },
    Scratch,
};
use lb_user::cli::{Explanation, View};

pub use crate::netns::wait_until;
use crate::netns::{
    agent::{lb_binary, AgentFiles, AgentProcess, Signal},
    connections,
    servers::NameServer,
    topology::Lan,
};

/// The VIPs: name, address, port. Every backend serves both; every instance announces both.
pub const VIPS: [(&str, &str, u16); 2] =
    [("web", "10.78.0.100", 8080), ("api", "10.78.0.101", 9090)];
/// The prefix the VIPs come from (the router accepts host routes from it only).
pub const VIP_PREFIX: &str = "10.78.0.0/24";
/// lb's `[announce] table`.
pub const TABLE: u32 = 250;
/// lb's `[announce] protocol`.
pub const PROTOCOL: u32 = 250;
/// lb's `[announce] drain`.
pub const DRAIN: Duration = Duration::from_secs(2);
/// Health-check interval.
pub const INTERVAL_MS: u64 = 200;
/// Health-check `fall`.
pub const FALL: u64 = 3;
/// Health-check `rise`.
pub const RISE: u64 = 2;
/// The router's AS.
pub const ROUTER_ASN: u32 = 65000;
/// The AS of every lb instance.
pub const LB_ASN: u32 = 65001;
/// The router's `fib_multipath_hash_seed`.
pub const HASH_SEED: u32 = 0x00c0_ffee;
/// The floating address of [`Routing::Vrrp`].
pub const FLOATING: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
/// VRRP advertisement interval.
pub const ADVERT: Duration = Duration::from_millis(300);
/// The client's /24 behind the router.
const UPSTREAM: [u8; 3] = [10, 79, 0];
/// The instances' names (hosts 1 and 2 of the LAN).
pub const INSTANCES: [&str; 2] = ["lb1", "lb2"];
/// Where backend `name`'s `lb decap` logs.
pub fn decap_log(scratch: &Scratch, name: &str) -> PathBuf {
    scratch.dir.join(format!("decap-{name}.log"))
}

/// MTU of the instances' and backends' links in tunnel mode: room for the outer header and
/// the second-chance hop.
const TUNNEL_MTU: u32 = 1600;
/// Index of the router on the LAN; instance `i` is host `1 + i`, backend `j` host `3 + j`.
const ROUTER: usize = 0;

/// A BGP daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    /// bird2.
    Bird,
    /// FRR (zebra, bgpd, bfdd).
    Frr,
}

/// How the router reaches the instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// BGP with BFD: `router` on the router, bird2 on lb1, `lb2` on lb2.
    Bgp {
        /// The router's daemon.
        router: Speaker,
        /// lb2's daemon.
        lb2: Speaker,
    },
    /// keepalived on both instances, the router's VIP routes via [`FLOATING`].
    Vrrp,
}

impl Routing {
    /// bird2 everywhere.
    pub const BIRD: Self = Self::Bgp {
        router: Speaker::Bird,
        lb2: Speaker::Bird,
    };
}

/// How to build the lab.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The routing.
    pub routing: Routing,
    /// Backend hosts (3 or 4); the first three are in the configuration, a fourth waits for
    /// [`RedundancyLab::write_configs`] with 4.
    pub backends: usize,
    /// Leave flooding on at the instances' switch ports (a bridge floods frames for a MAC it
    /// no longer knows, a dead instance's, to every port). Off by default.
    pub flood: bool,
    /// Start the agents with `--keep-datapath`.
    pub keep_datapath: bool,
    /// Tunnel mode (`forward = "tunnel"`), `lb decap` on every backend, room for the outer
    /// header and the second-chance hop; DSR if false.
    pub tunnel: bool,
}

impl Options {
    /// `routing`, three backends, flooding off.
    pub fn new(routing: Routing) -> Self {
        Self {
            routing,
            backends: 3,
            flood: false,
            keep_datapath: false,
            tunnel: false,
        }
    }
}

/// One lb instance: its agent and routing daemon, files, host.
pub struct Instance {
    /// keepalived ([`Routing::Vrrp`]).
    pub keepalived: Option<Keepalived>,
    /// bird2 ([`Routing::Bgp`]).
    pub bird: Option<Bird>,
    /// FRR (lb2 with `lb2: Speaker::Frr`).
    pub frr: Option<Frr>,
    /// The running `lb run`, if any.
    pub agent: Option<AgentProcess>,
    /// Its configuration, log and state directory.
    pub files: AgentFiles,
    /// `lb1`, `lb2`.
    pub name: &'static str,
    /// The routing daemon's files.
    pub dir: PathBuf,
}

/// The lab; see the module documentation.
pub struct RedundancyLab {
    /// The instances (dropped first: their daemons and agents stop before the network goes).
    pub instances: Vec<Instance>,
    /// The router's bird.
    pub router_bird: Option<Bird>,
    /// The router's FRR.
    pub router_frr: Option<Frr>,
    /// Per backend, its server on each VIP port (`None`: stopped).
    pub servers: Vec<Vec<Option<NameServer>>>,
    /// `lb decap` on each backend (tunnel mode; stopped before the network goes).
    pub decaps: Vec<AgentProcess>,
    /// The client behind the router.
    pub upstream: Upstream,
    /// The namespaces.
    pub lan: Lan,
    /// Daemon files.
    pub scratch: Scratch,
    /// How it was built.
    pub options: Options,
}

impl RedundancyLab {
    /// Builds the network, starts the backends' servers and writes the configurations (three
    /// backends); nothing of lb or the routing daemons runs yet ([`Self::start`]).
    pub fn new(tag: &str, options: Options) -> Self {
        let mut names = vec!["router", "lb1", "lb2"];
        let backend_names = ["b1", "b2", "b3", "b4"];
        names.extend_from_slice(&backend_names[..options.backends]);
        let lan = Lan::new(tag, &names);
        let router = lan.host(ROUTER);
        let upstream = Upstream::try_new(lan.naming(), "client", &router.ns, UPSTREAM, HASH_SEED)
            .unwrap_or_else(|e| panic!("the client behind the router: {}", e.full_message()));
        let mut servers = Vec::new();
        for (j, name) in backend_names[..options.backends].iter().enumerate() {
            let backend = lan.host(3 + j);
            let mut batch: Vec<String> = VIPS
                .iter()
                .map(|(_, address, _)| format!("addr add {address}/32 dev lo"))
                .collect();
            batch.push(format!("route add default via {}", router.ip));
            backend.ns.ip_batch(&batch);
            servers.push(
                VIPS.iter()
                    .map(|(_, _, port)| Some(NameServer::start(&backend.ns, *port, name)))
                    .collect(),
            );
        }
        if !options.flood {
            // A bridge floods a frame whose destination it does not know (a dead host's MAC)
            // to every port; the surviving instance must not see the dead one's traffic.
            for i in 0..INSTANCES.len() {
                let port = &lan.host(1 + i).port;
                lan.switch
                    .exec(&format!("bridge link set dev {port} flood off"));
            }
        }
        if options.routing == Routing::Vrrp {
            let batch: Vec<String> = VIPS
                .iter()
                .map(|(_, address, _)| format!("route add {address}/32 via {FLOATING}"))
                .collect();
            router.ns.ip_batch(&batch);
        }
        let scratch = Scratch::try_new(tag).expect("scratch directory");
        let mut decaps = Vec::new();
        if options.tunnel {
            let hosts: Vec<usize> = (1..3 + options.backends).collect();
            lan.set_mtu(&hosts, TUNNEL_MTU);
            for (j, name) in backend_names[..options.backends].iter().enumerate() {
                let log = decap_log(&scratch, name);
                decaps.push(AgentProcess::start_decap(&lan.host(3 + j).ns, "eth0", &log));
                assert!(
                    crate::netns::agent::wait_file(
                        &log,
                        "decap attached",
                        1,
                        Duration::from_secs(10)
                    ),
                    "lb decap on {name}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        let instances = INSTANCES
            .iter()
            .map(|name| Instance {
                keepalived: None,
                bird: None,
                frr: None,
                agent: None,
                files: AgentFiles::new(&format!("{tag}-{name}")),
                name,
                dir: scratch.try_subdir(name).expect("daemon directory"),
            })
            .collect();
        let lab = Self {
            instances,
            router_bird: None,
            router_frr: None,
            servers,
            upstream,
            lan,
            scratch,
            options,
            decaps,
        };
        lab.write_configs(3);
        lab
    }

    /// Starts the router's daemon, both agents and both instances' daemons, and waits until
    /// the router sends every VIP to both instances (BGP) or one instance holds the floating
    /// address (VRRP).
    pub fn start(&mut self) {
        match self.options.routing {
            Routing::Bgp { router, .. } => {
                self.start_router(router);
                for i in 0..INSTANCES.len() {
                    self.start_agent(i, self.options.keep_datapath);
                    self.start_routing(i);
                }
                for i in 0..INSTANCES.len() {
                    self.wait_established(i);
                }
                for (_, address, _) in VIPS {
                    let waited = self.wait_next_hops(address, &[0, 1], Duration::from_secs(10));
                    assert!(
                        waited.is_some(),
                        "the router has no 2-way route to {address}: {:?}\n{}",
                        self.router_route(address),
                        self.logs()
                    );
                }
            }
            Routing::Vrrp => {
                for i in 0..INSTANCES.len() {
                    self.start_agent(i, self.options.keep_datapath);
                }
                // lb1 first: with the higher priority it becomes master, lb2 then backs it up.
                self.start_routing(0);
                let master = self.wait_until(Duration::from_secs(10), || self.holds_floating(0));
                assert!(master.is_some(), "lb1 never became master\n{}", self.logs());
                self.start_routing(1);
            }
        }
    }

    /// The router's host.
    pub fn router(&self) -> &lb_lab::Host {
        self.lan.host(ROUTER)
    }

    /// Instance `i`'s host.
    pub fn host(&self, i: usize) -> &lb_lab::Host {
        self.lan.host(1 + i)
    }

    /// Backend `j`'s host.
    pub fn backend(&self, j: usize) -> &lb_lab::Host {
        self.lan.host(3 + j)
    }

    /// Stops every backend's `lb decap`: the packets each sent on to a second-chance hop (from
    /// its exit log), by backend.
    pub fn stop_decaps(&mut self) -> Vec<u64> {
        let names = ["b1", "b2", "b3", "b4"];
        std::mem::take(&mut self.decaps)
            .into_iter()
            .zip(names)
            .map(|(decap, name)| {
                decap.stop(Signal::SIGTERM);
                crate::netns::agent::decap_count(
                    &decap_log(&self.scratch, name),
                    "hop_forwarded",
                    name,
                )
            })
            .collect()
    }

    /// The instance whose host has address `address`.
    pub fn instance_at(&self, address: Ipv4Addr) -> Option<usize> {
        (0..INSTANCES.len()).find(|&i| self.host(i).ip == address)
    }

    /// The name (`b1`...) of the backend at `address`.
    pub fn backend_name(&self, address: &str) -> Option<String> {
        (0..self.servers.len())
            .find(|&j| self.backend(j).ip.to_string() == address)
            .map(|j| format!("b{}", j + 1))
    }

    /// VIP `v` as a socket address.
    pub fn vip(v: usize) -> SocketAddr {
        let (_, address, port) = VIPS[v];
        SocketAddr::new(address.parse().expect("vip"), port)
    }

    /// Writes both instances' configuration with the first `backends` backends, identical but
    /// for `state_dir` (two instances on one machine cannot share it). A running agent
    /// reloads it.
    pub fn write_configs(&self, backends: usize) {
        for instance in &self.instances {
            instance
                .files
                .write_config(&self.config_text(instance, backends));
        }
    }

    /// The configuration of `instance`.
    fn config_text(&self, instance: &Instance, backends: usize) -> String {
        let mut text = format!(
            "interface = \"eth0\"\nstate_dir = \"{}\"\nconntrack_size = 65536\n\n\
             [announce]\ntable = {TABLE}\nprotocol = {PROTOCOL}\ndrain = \"{}s\"\n\n\
             [health]\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"100ms\"\nrise = {RISE}\nfall = {FALL}\n",
            instance.files.state_dir.display(),
            DRAIN.as_secs()
        );
        for (name, address, port) in VIPS {
            text += &format!(
                "\n[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\n\
                 protocol = \"tcp\"\nforward = \"{}\"\n",
                if self.options.tunnel { "tunnel" } else { "dsr" }
            );
            for j in 0..backends {
                text += &format!(
                    "\n  [[vip.backend]]\n  address = \"{}\"\n",
                    self.backend(j).ip
                );
            }
        }
        text
    }

    /// Starts instance `i`'s agent and waits until it attached.
    pub fn start_agent(&mut self, i: usize, keep_datapath: bool) {
        let files = &self.instances[i].files;
        let attached = files.log_text().matches("datapath attached").count();
        let agent = AgentProcess::start(&self.host(i).ns, files, keep_datapath);
        assert!(
            files.wait_log("datapath attached", attached + 1, Duration::from_secs(20)),
            "{} did not attach:\n{}",
            INSTANCES[i],
            files.log_text()
        );
        self.instances[i].agent = Some(agent);
    }

    /// Starts instance `i`'s routing daemon (bird2, FRR or keepalived).
    pub fn start_routing(&mut self, i: usize) {
        let host = self.host(i);
        let router = self.router();
        let dir = self.instances[i].dir.clone();
        match self.options.routing {
            Routing::Bgp {
                lb2: Speaker::Frr, ..
            } if i == 1 => {
                let config = LbHostFrr {
                    hostname: INSTANCES[i].to_owned(),
                    router_id: host.ip,
                    asn: LB_ASN,
                    table: TABLE,
                    upstream: Peer {
                        name: "router".into(),
                        address: IpAddr::V4(router.ip),
                        asn: ROUTER_ASN,
                    },
                    vip_prefixes: vec![VIP_PREFIX.to_owned()],
                    bfd: LAB_BFD,
                };
                self.instances[i].frr = Some(Frr::start(&host.ns, &dir, &config.daemon_files()));
            }
            Routing::Bgp { .. } => {
                let config = self.lb_host_bird(i).config();
                self.instances[i].bird = Some(Bird::start(&host.ns, &dir, &config));
            }
            Routing::Vrrp => {
                let config = self.vrrp(i).config();
                self.instances[i].keepalived = Some(Keepalived::start(&host.ns, &dir, &config));
            }
        }
    }

    /// Instance `i`'s bird configuration.
    pub fn lb_host_bird(&self, i: usize) -> LbHostBird {
        LbHostBird {
            router_id: self.host(i).ip,
            asn: LB_ASN,
            interface: "eth0".into(),
            table: TABLE,
            protocol: PROTOCOL,
            upstream4: Some(Session {
                local: IpAddr::V4(self.host(i).ip),
                peer: Peer {
                    name: "router".into(),
                    address: IpAddr::V4(self.router().ip),
                    asn: ROUTER_ASN,
                },
            }),
            upstream6: None,
            bfd: LAB_BFD,
        }
    }

    /// The router's bird configuration.
    pub fn router_bird_config(&self) -> RouterBird {
        RouterBird {
            router_id: self.router().ip,
            asn: ROUTER_ASN,
            interface: "eth0".into(),
            local4: Some(IpAddr::V4(self.router().ip)),
            local6: None,
            instances: (0..INSTANCES.len())
                .map(|i| Peer {
                    name: INSTANCES[i].to_owned(),
                    address: IpAddr::V4(self.host(i).ip),
                    asn: LB_ASN,
                })
                .collect(),
            vip_prefixes: vec![VIP_PREFIX.to_owned()],
            bfd: LAB_BFD,
        }
    }

    /// Instance `i`'s keepalived configuration: lb1 priority 150, lb2 100.
    pub fn vrrp(&self, i: usize) -> Vrrp {
        let files = &self.instances[i].files;
        Vrrp {
            router_id: INSTANCES[i].to_owned(),
            interface: "eth0".into(),
            virtual_router_id: 51,
            priority: if i == 0 { 150 } else { 100 },
            advert_interval: ADVERT,
            floating: FLOATING,
            prefix_len: 24,
            track_script: Some(TrackScript {
                command: format!(
                    "{} status --check --state-dir {}",
                    lb_binary().display(),
                    files.state_dir.display()
                ),
                interval_seconds: 1,
                fall: 1,
                rise: 2,
            }),
        }
    }

    /// The router's FRR configuration.
    pub fn router_frr_config(&self) -> RouterFrr {
        RouterFrr {
            hostname: "router".into(),
            router_id: self.router().ip,
            asn: ROUTER_ASN,
            instances: (0..INSTANCES.len())
                .map(|i| Peer {
                    name: INSTANCES[i].to_owned(),
                    address: IpAddr::V4(self.host(i).ip),
                    asn: LB_ASN,
                })
                .collect(),
            vip_prefixes: vec![VIP_PREFIX.to_owned()],
            maximum_paths: 16,
            bfd: LAB_BFD,
        }
    }

    /// Starts the router's daemon.
    fn start_router(&mut self, speaker: Speaker) {
        let dir = self.scratch.try_subdir("router").expect("router directory");
        match speaker {
            Speaker::Bird => {
                let config = self.router_bird_config().config();
                self.router_bird = Some(Bird::start(&self.router().ns, &dir, &config));
            }
            Speaker::Frr => {
                let files = self.router_frr_config().daemon_files();
                self.router_frr = Some(Frr::start(&self.router().ns, &dir, &files));
            }
        }
    }

    /// Waits until instance `i`'s BGP session with the router is established, on both sides.
    pub fn wait_established(&mut self, i: usize) {
        let timeout = Duration::from_secs(15);
        let router_ip = IpAddr::V4(self.router().ip);
        let instance = &mut self.instances[i];
        if let Some(bird) = &mut instance.bird {
            bird.wait_established(&["upstream4"], timeout);
        }
        if let Some(frr) = &mut instance.frr {
            frr.try_wait_established(router_ip, timeout)
                .unwrap_or_else(|e| panic!("{}", e.full_message()));
        }
        let name = format!("{}_4", INSTANCES[i]);
        let address = IpAddr::V4(self.host(i).ip);
        if let Some(bird) = &mut self.router_bird {
            bird.wait_established(&[&name], timeout);
        }
        if let Some(frr) = &mut self.router_frr {
            frr.try_wait_established(address, timeout)
                .unwrap_or_else(|e| panic!("{}", e.full_message()));
        }
    }

    /// The router's route to `address` (`ip route show exact`).
    pub fn router_route(&self, address: &str) -> String {
        self.router()
            .ns
            .ip(&format!("route show exact {address}/32"))
    }

    /// The instances the router's route to `address` goes through (its next hops).
    pub fn next_hops(&self, address: &str) -> BTreeSet<usize> {
        let route = self.router_route(address);
        let words: Vec<&str> = route.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .filter_map(|ip| self.instance_at(ip))
            .collect()
    }

    /// Waits until the router sends `address` exactly through `instances`; how long it took.
    pub fn wait_next_hops(
        &self,
        address: &str,
        instances: &[usize],
        timeout: Duration,
    ) -> Option<Duration> {
        let expected: BTreeSet<usize> = instances.iter().copied().collect();
        self.wait_until(timeout, || self.next_hops(address) == expected)
    }

    /// Whether instance `i` has lb's route for `address` in its table.
    pub fn announced(&self, i: usize, address: &str) -> bool {
        !self
            .host(i)
            .ns
            .table_routes(TABLE, &format!("exact {address}/32 proto {PROTOCOL}"))
            .trim()
            .is_empty()
    }

    /// Whether instance `i` holds the floating address.
    pub fn holds_floating(&self, i: usize) -> bool {
        self.host(i)
            .ns
            .ip("-br addr show dev eth0")
            .contains(&format!("{FLOATING}/"))
    }

    /// Takes instance `i`'s host off the network: its switch port goes down (downing its own
    /// `eth0` would flush its routes, which a dead host does not do).
    pub fn kill_host(&self, i: usize) {
        let port = &self.host(i).port;
        self.lan.switch.ip(&format!("link set {port} down"));
    }

    /// Stops instance `i`'s agent with `signal`; returns when it exited.
    pub fn stop_agent(&mut self, i: usize, signal: Signal) -> std::process::ExitStatus {
        self.instances[i]
            .agent
            .take()
            .expect("agent running")
            .stop(signal)
    }

    /// Stops backend `j`'s server on VIP `v`'s port.
    pub fn stop_server(&mut self, j: usize, v: usize) {
        self.servers[j][v] = None;
    }

    /// Starts backend `j`'s server on VIP `v`'s port again.
    pub fn start_server(&mut self, j: usize, v: usize) {
        let server = NameServer::start(&self.backend(j).ns, VIPS[v].2, &format!("b{}", j + 1));
        self.servers[j][v] = Some(server);
    }

    /// `n` connections from the client to VIP `v`, one after the other: the backend names,
    /// or errors.
    pub fn connect(&self, v: usize, n: usize) -> Vec<Result<String, String>> {
        connections::ask(
            &self.upstream.client,
            Self::vip(v),
            n,
            Duration::from_secs(2),
        )
    }

    /// `lb explain` on instance `i` for a client flow to VIP `v`.
    pub fn explain(&self, i: usize, v: usize, client: SocketAddr) -> Explanation {
        let mut view = View::open(&self.instances[i].files.state_dir).expect("open the maps");
        lb_user::cli::explain(&mut view, Self::vip(v), Protocol::Tcp, client).expect("explain")
    }

    /// The client's socket address with port `port`.
    pub fn client_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.upstream.client_ip), port)
    }

    /// New flows instance `i` has counted for VIP `v`.
    pub fn new_flows(&self, i: usize, v: usize) -> u64 {
        let mut view = View::open(&self.instances[i].files.state_dir).expect("open the maps");
        let stats = lb_user::cli::stats(&mut view).expect("stats");
        stats
            .vips
            .iter()
            .find(|vip| vip.name == VIPS[v].0)
            .map_or(0, |vip| vip.new_flows)
    }

    /// `lb status --json` of instance `i`.
    pub fn status_json(&self, i: usize) -> serde_json::Value {
        let output = self
            .host(i)
            .ns
            .command(lb_binary())
            .args(["status", "--json", "--state-dir"])
            .arg(&self.instances[i].files.state_dir)
            .output()
            .expect("lb status");
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "lb status --json: {e}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// The ring fingerprints of instance `i`, by VIP.
    pub fn fingerprints(&self, i: usize) -> Vec<String> {
        let status = self.status_json(i);
        status["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .map(|vip| vip["ring_fingerprint"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// [`wait_until`].
    pub fn wait_until(
        &self,
        timeout: Duration,
        condition: impl FnMut() -> bool,
    ) -> Option<Duration> {
        wait_until(timeout, condition)
    }

    /// Every agent's and daemon's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for instance in &self.instances {
            text += &format!(
                "--- {} agent:\n{}\n",
                instance.name,
                instance.files.log_text()
            );
            if let Some(bird) = &instance.bird {
                text += &format!("--- {}:\n{}\n", bird.daemon.name, bird.daemon.log_tail(30));
            }
            if let Some(frr) = &instance.frr {
                text += &format!("--- FRR:\n{}\n", frr.log_tail(20));
            }
            if let Some(keepalived) = &instance.keepalived {
                text += &format!(
                    "--- {}:\n{}\n",
                    keepalived.daemon.name,
                    keepalived.daemon.log_tail(30)
                );
            }
        }
        if let Some(bird) = &self.router_bird {
            text += &format!("--- {}:\n{}\n", bird.daemon.name, bird.daemon.log_tail(30));
        }
        if let Some(frr) = &self.router_frr {
            text += &format!("--- router FRR:\n{}\n", frr.log_tail(20));
        }
        text
    }
}
