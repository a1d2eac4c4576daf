//! Health checks along the serving path: a backend is up only if it answers on the VIP, reached
//! the way clients' packets reach it. Real namespaces, the real agent, real backends: a DSR
//! backend that loses the VIP from its loopback, and a tunnel backend whose `lb decap` stops,
//! leave every ring within `fall × interval` + 250 ms, TCP and HTTP checks, IPv4 and IPv6, an
//! all-ports VIP (checked on its health port) and a mixed-family tunnel; new connections then never meet them, and the log says why. With
//! `health.target = "backend"` the same faults go unnoticed (today's checks of the backends' own
//! addresses), and clients' connections black-hole.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::netns::{
    agent::{wait_file, AgentFiles, AgentProcess, Signal},
    connections::{ask, failures},
    servers::{HttpAnswer, HttpServer, NameServer},
    topology::Lan,
    wait_until,
};
use lb_user::datapath::{read_ring_by_id, Datapath};

const PORT: u16 = 8080;
const HTTP_PORT: u16 = 8090;
const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 50;
const RISE: u64 = 2;
const FALL: u64 = 3;
/// Slack for scheduling on a loaded 2-core CI machine.
const BOUND_MS: u64 = 250;
const BACKENDS: usize = 2;
/// MTU of the LB-to-backend segment in tunnel mode (room for the outer header).
const TUNNEL_MTU: u32 = 1600;

/// A VIP of the lab: its address, whether its checks are HTTP, and its backends' family.
struct LabVip {
    name: &'static str,
    address: &'static str,
    http: bool,
    v6_backends: bool,
}

/// An all-ports VIP (port 0): its checks go to the health port.
const ALL_PORTS: LabVip = LabVip {
    name: "any4",
    address: "10.79.0.103",
    http: false,
    v6_backends: false,
};

const VIPS: [LabVip; 4] = [
    LabVip {
        name: "tcp4",
        address: "10.79.0.100",
        http: false,
        v6_backends: false,
    },
    LabVip {
        name: "http4",
        address: "10.79.0.101",
        http: true,
        v6_backends: false,
    },
    LabVip {
        name: "tcp6",
        address: "fd79::100",
        http: false,
        v6_backends: true,
    },
    LabVip {
        name: "http6",
        address: "fd79::101",
        http: true,
        v6_backends: true,
    },
];

/// Only a tunnel carries it: an IPv4 VIP on IPv6 backends.
const MIXED: LabVip = LabVip {
    name: "tcp4in6",
    address: "10.79.0.102",
    http: false,
    v6_backends: true,
};

/// client (host 0), lb (host 1), b1 and b2 (hosts 2, 3); in tunnel mode `lb decap` on each
/// backend. Fields drop in order: processes first, the namespaces last.
struct CheckLab {
    _agent: AgentProcess,
    decaps: Vec<Option<AgentProcess>>,
    _servers: Vec<(NameServer, HttpServer)>,
    vips: Vec<&'static LabVip>,
    /// The agent's pinned maps, opened at the first look at the rings.
    datapath: RefCell<Option<Datapath>>,
    /// The backends in each ring map seen, by the map's id: a ring map never changes once
    /// swapped in (the agent swaps in a new one), so only a new id is read (a read of every
    /// ring at each poll cost 170-240 ms on a loaded machine, and the measured time with it).
    members_by_ring: RefCell<HashMap<u32, BTreeSet<usize>>>,
    files: AgentFiles,
    lan: Lan,
}

impl CheckLab {
    fn new(tag: &str, forward: &str, target: &str) -> Self {
        let tunnel = forward == "tunnel";
        let lan = Lan::new(tag, &["client", "lb", "b1", "b2"]);
        let mut vips: Vec<&'static LabVip> = VIPS.iter().collect();
        vips.push(&ALL_PORTS);
        if tunnel {
            vips.push(&MIXED);
            lan.set_mtu(&[1, 2, 3], TUNNEL_MTU);
        }
        let mut servers = Vec::new();
        for i in 0..BACKENDS {
            let ns = &lan.host(2 + i).ns;
            ns.ip_batch(&vip_addresses(&vips, "add"));
            servers.push((
                NameServer::start(ns, PORT, &format!("b{}", i + 1)),
                HttpServer::start(ns, HTTP_PORT, HttpAnswer::Status(200)),
            ));
        }
        let lb = lan.host(1);
        lan.host(0).ns.ip_batch(&[
            format!("route add 10.79.0.0/24 via {}", lb.ip),
            format!("route add fd79::/64 via {}", lb.ip6),
        ]);
        let files = AgentFiles::new(tag);
        let decaps = if tunnel {
            (0..BACKENDS)
                .map(|i| Some(start_decap(&lan, &files, i, 1)))
                .collect()
        } else {
            Vec::new()
        };
        files.write_config(&config_text(&lan, &files, &vips, forward, target));
        let agent = AgentProcess::start(&lb.ns, &files, false);
        assert!(
            files.wait_log("datapath attached", 1, Duration::from_secs(15)),
            "agent did not attach:\n{}",
            files.log_text()
        );
        let lab = Self {
            _agent: agent,
            decaps,
            _servers: servers,
            vips,
            datapath: RefCell::default(),
            members_by_ring: RefCell::default(),
            files,
            lan,
        };
        let everyone: BTreeSet<usize> = (0..BACKENDS).collect();
        assert!(
            wait_until(Duration::from_secs(10), || lab.all_rings_hold(&everyone)).is_some(),
            "every backend serves every vip at start: {:?}\n{}",
            lab.rings(),
            lab.files.log_text()
        );
        lab
    }

    /// The backends (0-based) in each VIP's ring, by VIP address.
    fn rings(&self) -> BTreeMap<IpAddr, BTreeSet<usize>> {
        let mut datapath = self.datapath.borrow_mut();
        let datapath = datapath.get_or_insert_with(|| {
            Datapath::open_pinned(&self.files.state_dir).expect("open pinned maps")
        });
        let mut members_by_ring = self.members_by_ring.borrow_mut();
        datapath
            .vips()
            .expect("vips")
            .into_iter()
            .map(|(key, vip)| {
                let members = loop {
                    let Some(map_id) = datapath.ring_map_id(vip.id).expect("ring map id") else {
                        break BTreeSet::new();
                    };
                    if let Some(members) = members_by_ring.get(&map_id) {
                        break members.clone();
                    }
                    // Swapped out and freed since its id was read: read the new one.
                    let Ok(ring) = read_ring_by_id(map_id) else {
                        continue;
                    };
                    let members = self.members(datapath, &ring);
                    members_by_ring.insert(map_id, members.clone());
                    break members;
                };
                (key.address(), members)
            })
            .collect()
    }

    /// The backends (0-based) holding a slot of `ring`.
    fn members(&self, datapath: &mut Datapath, ring: &[u32]) -> BTreeSet<usize> {
        let backends: BTreeMap<u32, IpAddr> = datapath
            .backends()
            .expect("backends")
            .into_iter()
            .map(|(id, backend)| (id, backend.address()))
            .collect();
        let index = |address: IpAddr| {
            (0..BACKENDS).find(|i| {
                let host = self.lan.host(2 + i);
                address == IpAddr::V4(host.ip) || address == IpAddr::V6(host.ip6)
            })
        };
        ring.iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|id| backends.get(id).copied().and_then(index))
            .collect()
    }

    fn all_rings_hold(&self, members: &BTreeSet<usize>) -> bool {
        let rings = self.rings();
        self.vips
            .iter()
            .all(|vip| rings.get(&vip.address.parse::<IpAddr>().expect("vip")) == Some(members))
    }

    /// `lb status --json`.
    fn status_json(&self) -> serde_json::Value {
        let output = std::process::Command::new(lb_tests::netns::agent::lb_binary())
            .args(["status", "--json", "--state-dir"])
            .arg(&self.files.state_dir)
            .output()
            .expect("lb status");
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "lb status --json: {e}: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// `n` connections to every VIP from the client, each given `timeout`.
    fn connect_all(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Vec<(&'static str, Vec<Result<String, String>>)> {
        self.vips
            .iter()
            .map(|vip| {
                let address = SocketAddr::new(vip.address.parse().expect("vip"), PORT);
                (vip.name, ask(&self.lan.host(0).ns, address, n, timeout))
            })
            .collect()
    }

    /// Waits until `members` alone serve every VIP; how long that took from `since`.
    fn wait_rings(&self, members: &BTreeSet<usize>, since: Instant, what: &str) -> Duration {
        wait_until(Duration::from_secs(5), || self.all_rings_hold(members)).unwrap_or_else(|| {
            panic!(
                "{what}: rings {:?}\n{}",
                self.rings(),
                self.files.log_text()
            )
        });
        since.elapsed()
    }
}

fn start_decap(lan: &Lan, files: &AgentFiles, i: usize, attached: usize) -> AgentProcess {
    let log = files.dir.join(format!("decap-b{}.log", i + 1));
    let decap = AgentProcess::start_decap(&lan.host(2 + i).ns, "eth0", &log);
    assert!(
        wait_file(&log, "decap attached", attached, Duration::from_secs(10)),
        "lb decap on b{} did not attach:\n{}",
        i + 1,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    decap
}

/// `ip` lines that add or delete (`action`) every VIP address on a backend's loopback.
fn vip_addresses(vips: &[&LabVip], action: &str) -> Vec<String> {
    vips.iter()
        .map(|vip| vip.address)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|address| {
            let (prefix, nodad) = if address.contains(':') {
                ("128", if action == "add" { " nodad" } else { "" })
            } else {
                ("32", "")
            };
            format!("addr {action} {address}/{prefix} dev lo{nodad}")
        })
        .collect()
}

fn config_text(
    lan: &Lan,
    files: &AgentFiles,
    vips: &[&LabVip],
    forward: &str,
    target: &str,
) -> String {
    let mut text = format!(
        "interface = \"eth0\"\nstate_dir = \"{}\"\nconntrack_size = 65536\n\n\
         [health]\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"{TIMEOUT_MS}ms\"\nrise = {RISE}\nfall = {FALL}\ntarget = \"{target}\"\n",
        files.state_dir.display()
    );
    for vip in vips {
        let port = if vip.name == ALL_PORTS.name { 0 } else { PORT };
        text += &format!(
            "\n[[vip]]\nname = \"{}\"\naddress = \"{}\"\nport = {port}\nforward = \"{forward}\"\n",
            vip.name, vip.address
        );
        if port == 0 {
            text += &format!("health = {{ port = {PORT} }}\n");
        }
        if vip.http {
            text +=
                &format!("health = {{ type = \"http\", port = {HTTP_PORT}, path = \"/ready\" }}\n");
        }
        for i in 0..BACKENDS {
            text += &format!(
                "  [[vip.backend]]\n  address = \"{}\"\n",
                lan.host(2 + i).addr(vip.v6_backends)
            );
        }
    }
    text
}

/// Asserts no connection to any VIP failed.
fn assert_all_served(answers: &[(&str, Vec<Result<String, String>>)]) {
    for (vip, answers) in answers {
        assert!(failures(answers).is_empty(), "{vip}: {answers:?}");
    }
}

/// Asserts no connection failed and none reached backend `i`.
fn assert_served_without(answers: &[(&str, Vec<Result<String, String>>)], i: usize) {
    let name = format!("b{}", i + 1);
    assert_all_served(answers);
    for (vip, answers) in answers {
        assert!(
            answers.iter().all(|a| a.as_deref() != Ok(name.as_str())),
            "{vip}: a new connection reached {name}: {answers:?}"
        );
    }
}

/// The tests measure detection times: one lab at a time, so they do not share the two cores.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LAB.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn detection_limit() -> Duration {
    Duration::from_millis(FALL * INTERVAL_MS + BOUND_MS)
}

fn recovery_limit() -> Duration {
    Duration::from_millis(RISE * INTERVAL_MS + BOUND_MS)
}

#[test]
fn a_dsr_backend_without_the_vip_on_its_loopback_leaves_every_ring() {
    let _serial = one_at_a_time();
    let lab = CheckLab::new("vipdsr", "dsr", "vip");
    let everyone: BTreeSet<usize> = (0..BACKENDS).collect();
    let without_b1: BTreeSet<usize> = [1].into();

    // Checks have run, through the VIPs; no client has: the VIPs' and backends' counters,
    // which count clients' packets, are still zero.
    std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
    let output = std::process::Command::new(lb_tests::netns::agent::lb_binary())
        .args(["stats", "--json", "--state-dir"])
        .arg(&lab.files.state_dir)
        .output()
        .expect("lb stats");
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stats json");
    for vip in stats["vips"].as_array().expect("vips") {
        assert_eq!(vip["packets"], 0, "{vip}");
        assert_eq!(vip["new_flows"], 0, "{vip}");
        for backend in vip["backends"].as_array().expect("backends") {
            assert_eq!(backend["packets"], 0, "{backend}");
        }
    }
    let steered = lab.status_json()["agent"]["check_packets"]["steered"].as_u64();
    assert!(steered > Some(0), "checks counted apart: {steered:?}");

    // The classic DSR misconfiguration: b1 rebuilt without the VIPs on its loopback.
    let broken = Instant::now();
    lab.lan
        .host(2)
        .ns
        .ip_batch(&vip_addresses(&lab.vips, "del"));
    let detected = lab.wait_rings(&without_b1, broken, "b1 never left the rings");
    println!(
        "b1 out of every ring after {detected:?} (limit {:?})",
        detection_limit()
    );
    assert!(detected <= detection_limit(), "detected after {detected:?}");
    let log = lab.files.log_text();
    assert!(
        log.contains("via the vip; the backend's own address answers"),
        "the log tells a vip not served from a backend down:\n{log}"
    );
    let answers = lab.connect_all(20, Duration::from_secs(2));
    assert_served_without(&answers, 0);
    // `lb status` says where checks go and why b1 is down; checks are counted apart.
    let status = lab.status_json();
    let b1 = lab.lan.host(2).ip.to_string();
    let tcp4 = &status["vips"].as_array().expect("vips")[0];
    let backend = tcp4["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == b1.as_str())
        .expect("b1");
    assert_eq!(backend["check_target"], "vip", "{backend}");
    assert_eq!(backend["state"], "down", "{backend}");
    let check_packets = &status["agent"]["check_packets"];
    assert!(
        check_packets["steered"].as_u64() > Some(0),
        "{check_packets}"
    );

    // The VIPs back on its loopback: b1 serves again.
    let restored = Instant::now();
    lab.lan
        .host(2)
        .ns
        .ip_batch(&vip_addresses(&lab.vips, "add"));
    let back = lab.wait_rings(&everyone, restored, "b1 never came back");
    println!("b1 back after {back:?}");
    assert!(back <= recovery_limit(), "back after {back:?}");
    let answers = lab.connect_all(20, Duration::from_secs(2));
    assert_all_served(&answers);
}

#[test]
fn a_tunnel_backend_whose_decap_stops_leaves_every_ring() {
    let _serial = one_at_a_time();
    let mut lab = CheckLab::new("viptun", "tunnel", "vip");
    let everyone: BTreeSet<usize> = (0..BACKENDS).collect();
    let without_b2: BTreeSet<usize> = [0].into();

    let decap = lab.decaps[1].take().expect("b2's decap");
    let status = decap.stop(Signal::SIGTERM);
    assert!(status.success(), "lb decap exit: {status}");
    // From its exit on, b2 drops the tunnel.
    let broken = Instant::now();
    let detected = lab.wait_rings(&without_b2, broken, "b2 never left the rings");
    println!(
        "b2 out of every ring after {detected:?} (limit {:?})",
        detection_limit()
    );
    assert!(detected <= detection_limit(), "detected after {detected:?}");
    let answers = lab.connect_all(20, Duration::from_secs(2));
    assert_served_without(&answers, 1);
    let check_packets = &lab.status_json()["agent"]["check_packets"];
    assert!(
        check_packets["encapsulated"].as_u64() > Some(0),
        "{check_packets}"
    );

    let restored = Instant::now();
    lab.decaps[1] = Some(start_decap(&lab.lan, &lab.files, 1, 2));
    let back = lab.wait_rings(&everyone, restored, "b2 never came back");
    println!("b2 back after {back:?}");
    assert!(
        back <= recovery_limit() + Duration::from_millis(500),
        "back after {back:?} (lb decap takes a moment to attach)"
    );
    let answers = lab.connect_all(20, Duration::from_secs(2));
    assert_all_served(&answers);
}

#[test]
fn checks_of_backends_own_addresses_miss_a_vip_not_served() {
    let _serial = one_at_a_time();
    let lab = CheckLab::new("vipown", "dsr", "backend");
    let everyone: BTreeSet<usize> = (0..BACKENDS).collect();
    lab.lan
        .host(2)
        .ns
        .ip_batch(&vip_addresses(&lab.vips, "del"));
    std::thread::sleep(detection_limit() * 2);
    assert!(
        lab.all_rings_hold(&everyone),
        "target = \"backend\" checks the backend's own address, which still answers: {:?}",
        lab.rings()
    );
    let status = lab.status_json();
    let backend = &status["vips"][0]["backends"][0];
    assert_eq!(backend["check_target"], "backend", "{backend}");
    // And the clients pay: b1's share of new connections black-holes.
    let answers = lab.connect_all(10, Duration::from_millis(300));
    let failed: usize = answers.iter().map(|(_, a)| failures(a).len()).sum();
    println!("failed connections with target = \"backend\": {failed} of 50");
    assert!(failed > 0, "{answers:?}");

    // A reload to checks through the VIP sets up their path and takes b1 out.
    lab.files
        .write_config(&config_text(&lab.lan, &lab.files, &lab.vips, "dsr", "vip"));
    let without_b1: BTreeSet<usize> = [1].into();
    lab.wait_rings(&without_b1, Instant::now(), "b1 stayed after the reload");
    let answers = lab.connect_all(20, Duration::from_secs(2));
    assert_served_without(&answers, 0);
}

#[test]
fn when_every_backend_fails_through_the_vip_but_answers_at_its_own_address_they_keep_serving() {
    let _serial = one_at_a_time();
    // This host's strict reverse-path filter drops every answer from an IPv4 VIP (it has no
    // route back to one): a fault of the check path, not of the backends, as an agent upgraded
    // from checks of the backends' own addresses could meet. Clients' packets, which XDP
    // forwards before the stack, do not notice; IPv6 has no such filter.
    let lab = CheckLab::new("viphold", "dsr", "vip");
    let lb = &lab.lan.host(1).ns;
    lb.sysctl("net.ipv4.conf.all.rp_filter", "1");
    lb.sysctl("net.ipv4.conf.eth0.rp_filter", "1");
    // (Every IPv4 VIP of the lab: the assertion below reads all their rings.)
    for vip in ["tcp4", "http4", "any4"] {
        let line = format!(
            "vip {vip}: no backend passes its checks through the vip, but 2 answer at their own address"
        );
        assert!(
            lab.files.wait_log(&line, 1, Duration::from_secs(5)),
            "{line}:\n{}",
            lab.files.log_text()
        );
    }
    let everyone: BTreeSet<usize> = (0..BACKENDS).collect();
    assert!(
        lab.all_rings_hold(&everyone),
        "every backend keeps every vip: {:?}",
        lab.rings()
    );
    let answers = lab.connect_all(20, Duration::from_secs(2));
    assert_all_served(&answers);
    // The filter off (this host has no route back to the VIP, so even loose mode drops):
    // checks pass again, and the log says so.
    lb.sysctl("net.ipv4.conf.all.rp_filter", "0");
    lb.sysctl("net.ipv4.conf.eth0.rp_filter", "0");
    assert!(
        lab.files.wait_log(
            "vip tcp4: no backend is kept on its own address's answers any more",
            1,
            Duration::from_secs(5)
        ),
        "{}",
        lab.files.log_text()
    );
    let all_up = || {
        lab.status_json()["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .flat_map(|vip| vip["backends"].as_array().expect("backends").clone())
            .all(|backend| backend["state"] == "up")
    };
    assert!(
        wait_until(Duration::from_secs(5), all_up).is_some(),
        "every backend up again: {}",
        lab.status_json()
    );
}

#[test]
fn in_two_arms_checks_leave_by_the_backends_interface() {
    let _serial = one_at_a_time();
    // Clients reach lb's eth0 on the LAN; each backend is reached through an arm of its own
    // (lb's eth1 and eth2, subnets 10.81.1.0/24 and 10.81.2.0/24): clients' packets leave by
    // XDP_REDIRECT, checks by the check program's redirect, both out of the backend's arm.
    let lan = Lan::new("viparms", &["client", "lb", "b1", "b2"]);
    let lb = &lan.host(1).ns;
    let vip = "10.79.0.100";
    let mut servers = Vec::new();
    let mut pass = Vec::new();
    for i in 0..BACKENDS {
        let backend = &lan.host(2 + i).ns;
        let arm = format!("eth{}", i + 1);
        lb.add_veth(&arm, backend, "eth1");
        lb.ip_batch(&[
            format!("addr add 10.81.{}.1/24 dev {arm}", i + 1),
            format!("link set {arm} up"),
        ]);
        backend.ip_batch(&[
            format!("addr add 10.81.{}.2/24 dev eth1", i + 1),
            "link set eth1 up".to_owned(),
            format!("addr add {vip}/32 dev lo"),
        ]);
        // A veth delivers what XDP redirects only to a peer running an XDP program.
        pass.push(backend.run(|| lb_tests::netns::pass_on(&["eth1".to_owned()])));
        servers.push(NameServer::start(backend, PORT, &format!("b{}", i + 1)));
    }
    lan.host(0)
        .ns
        .ip(&format!("route add {vip}/32 via {}", lan.host(1).ip));
    let files = AgentFiles::new("viparms");
    let mut config = format!(
        "interface = \"eth0\"\nstate_dir = \"{}\"\nconntrack_size = 65536\n\n\
         [health]\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"{TIMEOUT_MS}ms\"\nrise = {RISE}\nfall = {FALL}\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{vip}\"\nport = {PORT}\nforward = \"dsr\"\n",
        files.state_dir.display()
    );
    for i in 0..BACKENDS {
        config += &format!("  [[vip.backend]]\n  address = \"10.81.{}.2\"\n", i + 1);
    }
    files.write_config(&config);
    let _agent = AgentProcess::start(lb, &files, false);
    assert!(
        files.wait_log("datapath attached", 1, Duration::from_secs(15)),
        "{}",
        files.log_text()
    );
    let address = SocketAddr::new(vip.parse().expect("vip"), PORT);
    let served = |n| ask(&lan.host(0).ns, address, n, Duration::from_secs(2));
    let answers = served(20);
    assert!(
        failures(&answers).is_empty(),
        "{answers:?}\n{}",
        files.log_text()
    );
    for name in ["b1", "b2"] {
        assert!(
            answers.iter().any(|a| a.as_deref() == Ok(name)),
            "{name}: {answers:?}"
        );
    }
    // b2 loses the VIP: out within fall × interval, through its arm.
    let broken = Instant::now();
    lan.host(3).ns.ip(&format!("addr del {vip}/32 dev lo"));
    assert!(
        files.wait_log(
            "backend 10.81.2.2 of vip web: Up -> Down",
            1,
            Duration::from_secs(5)
        ),
        "{}",
        files.log_text()
    );
    let detected = broken.elapsed();
    println!("b2 down after {detected:?} (limit {:?})", detection_limit());
    assert!(detected <= detection_limit(), "detected after {detected:?}");
    let answers = served(20);
    assert!(failures(&answers).is_empty(), "{answers:?}");
    assert!(
        answers.iter().all(|a| a.as_deref() == Ok("b1")),
        "{answers:?}"
    );
}
