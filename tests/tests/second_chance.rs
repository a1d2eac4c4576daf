//! Second chance with the real agent, `lb decap` on the backends and real connections: 40
//! long-lived connections to a tunnel VIP served by b1 and b2; b3 is added (the ring gives it
//! part of their slots; tracked flows stay); then the agent restarts with `--fresh-state`,
//! forgetting every tracked flow. Every connection goes on: a packet whose slot moved to b3
//! carries its previous owner as a hop, and b3's `decap`, which has no such connection, sends
//! it there. Without second chance (`second_chance = "0s"`) the same run breaks the
//! connections whose slot moved. The same holds for connections a flood kept out of the
//! flow table (full of flows it protects), then a ring change.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_tests::netns::{
    agent::{decap_count, wait_file, AgentFiles, AgentProcess},
    connections::{hold, Held},
    servers::NameServer,
    topology::Lan,
    wait_until,
};
use lb_user::datapath::Datapath;
use nix::sys::signal::Signal;

const VIP: &str = "10.79.0.100";
const PORT: u16 = 8080;
/// Long-lived connections.
const HELD: usize = 40;
/// MTU between the load balancer and the backends: room for the outer header and the hop.
const TUNNEL_MTU: u32 = 1600;
/// Where each backend's `lb decap` serves its metrics (in its own namespace).
const DECAP_METRICS: &str = "127.0.0.1:9301";

/// client (host 0), lb (1), b1 to b3 (2 to 4), each backend running `lb decap`.
struct Lab {
    files: AgentFiles,
    /// `conntrack_size`.
    conntrack_size: u32,
    decaps: Vec<AgentProcess>,
    _servers: Vec<NameServer>,
    lan: Lan,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let lan = Lan::new(tag, &["client", "lb", "b1", "b2", "b3"]);
        lan.set_mtu(&[1, 2, 3, 4], TUNNEL_MTU);
        let files = AgentFiles::new(tag);
        let mut servers = Vec::new();
        let mut decaps = Vec::new();
        for i in 0..3 {
            let ns = &lan.host(2 + i).ns;
            ns.ip(&format!("addr add {VIP}/32 dev lo"));
            servers.push(NameServer::start(ns, PORT, &format!("b{}", i + 1)));
            let log = decap_log(&files, i);
            let argv: Vec<String> = [
                lb_tests::netns::agent::lb_binary().display().to_string(),
                "decap".into(),
                "--interface".into(),
                "eth0".into(),
                "--metrics".into(),
                DECAP_METRICS.into(),
            ]
            .into();
            decaps.push(AgentProcess::start_argv(ns, &argv, &log));
            assert!(
                wait_file(&log, "decap attached", 1, Duration::from_secs(10)),
                "lb decap on b{}:\n{}",
                i + 1,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        lan.host(0)
            .ns
            .ip(&format!("route add {VIP}/32 via {}", lan.host(1).ip));
        Self {
            files,
            conntrack_size: 65536,
            decaps,
            _servers: servers,
            lan,
        }
    }

    fn backend_ip(&self, i: usize) -> IpAddr {
        IpAddr::V4(self.lan.host(2 + i).ip)
    }

    /// The configuration with backends `backends` (0-based) and `second_chance`.
    fn write_config(&self, backends: &[usize], second_chance: &str) {
        let mut text = format!(
            "interface = \"eth0\"\nstate_dir = \"{}\"\nconntrack_size = {}\n\n\
             [health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 2\n\
             slow_start = \"0s\"\n\n\
             [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\n\
             forward = \"tunnel\"\nsecond_chance = \"{second_chance}\"\n",
            self.files.state_dir.display(),
            self.conntrack_size
        );
        for i in backends {
            text += &format!(
                "\n  [[vip.backend]]\n  address = \"{}\"\n",
                self.backend_ip(*i)
            );
        }
        self.files.write_config(&text);
    }

    /// Starts the agent (`keep_datapath`: leave it attached on stop) and waits until it
    /// attached and the ring holds b1 and b2.
    fn start_agent(&self, keep_datapath: bool) -> AgentProcess {
        let agent = AgentProcess::start(&self.lan.host(1).ns, &self.files, keep_datapath);
        assert!(
            self.files
                .wait_log("datapath attached", 1, Duration::from_secs(15)),
            "{}",
            self.files.log_text()
        );
        self.wait_ring(&[0, 1]);
        agent
    }

    /// The backends (0-based) in the VIP's ring now.
    fn in_ring(&self) -> BTreeSet<usize> {
        let Ok(mut datapath) = Datapath::open_pinned(&self.files.state_dir) else {
            return BTreeSet::new();
        };
        let backends = datapath.backends().unwrap_or_default();
        let Some((_, vip)) = datapath.vips().unwrap_or_default().into_iter().next() else {
            return BTreeSet::new();
        };
        let ring: BTreeSet<u32> = datapath
            .ring(vip.id)
            .ok()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .collect();
        (0..3)
            .filter(|i| {
                backends
                    .iter()
                    .any(|(id, b)| b.address() == self.backend_ip(*i) && ring.contains(id))
            })
            .collect()
    }

    fn wait_ring(&self, expected: &[usize]) {
        let expected: BTreeSet<usize> = expected.iter().copied().collect();
        assert!(
            wait_until(Duration::from_secs(10), || self.in_ring() == expected).is_some(),
            "ring {:?}, expected {expected:?}\n{}",
            self.in_ring(),
            self.files.log_text()
        );
    }

    /// `lb status --json` from the lb namespace.
    fn status(&self) -> serde_json::Value {
        let output = self
            .lan
            .host(1)
            .ns
            .command(lb_tests::netns::agent::lb_binary())
            .args(["status", "--json", "--state-dir"])
            .arg(&self.files.state_dir)
            .output()
            .expect("lb status");
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("lb status: {}", String::from_utf8_lossy(&output.stderr)))
    }

    /// `lb explain --json` for the held connection from `client`.
    fn explain(&self, client: SocketAddr) -> serde_json::Value {
        let output = self
            .lan
            .host(1)
            .ns
            .command(lb_tests::netns::agent::lb_binary())
            .args([
                "explain",
                "--json",
                "--vip",
                &format!("{VIP}:{PORT}/tcp"),
                "--client",
            ])
            .arg(client.to_string())
            .arg("--state-dir")
            .arg(&self.files.state_dir)
            .output()
            .expect("lb explain");
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("lb explain: {}", String::from_utf8_lossy(&output.stderr)))
    }

    /// Backend `i`'s `lb_decap_packets_total{outcome="hop_forwarded"}`, scraped from its
    /// `lb decap --metrics` (0 if it does not answer).
    fn decap_forwarded_metric(&self, i: usize) -> u64 {
        use std::io::{Read as _, Write as _};
        self.lan.host(2 + i).ns.run(|| {
            let address: SocketAddr = DECAP_METRICS.parse().expect("address");
            let Ok(mut stream) = std::net::TcpStream::connect(address) else {
                return 0;
            };
            let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut body = String::new();
            let _ = stream.read_to_string(&mut body);
            body.lines()
                .find(|line| line.starts_with("lb_decap_packets_total{outcome=\"hop_forwarded\"}"))
                .and_then(|line| line.split_whitespace().last())
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        })
    }

    /// Stops every `lb decap`; the packets each sent on to a hop (from its exit log).
    fn stop_decaps(&mut self) -> Vec<u64> {
        let decaps = std::mem::take(&mut self.decaps);
        decaps
            .into_iter()
            .enumerate()
            .map(|(i, decap)| {
                decap.stop(Signal::SIGTERM);
                decap_count(
                    &decap_log(&self.files, i),
                    "hop_forwarded",
                    &format!("b{}", i + 1),
                )
            })
            .collect()
    }
}

fn decap_log(files: &AgentFiles, backend: usize) -> std::path::PathBuf {
    files.dir.join(format!("decap-b{}.log", backend + 1))
}

/// Echoes once on every held connection (the first packets of a moved one may wait for a
/// retransmission): those that broke.
fn broken(held: &mut [Held], text: &str) -> Vec<String> {
    held.iter_mut()
        .filter_map(|h| {
            h.echo(text)
                .err()
                .map(|error| format!("{} on {}: {error}", h.local, h.backend))
        })
        .collect()
}

/// What the run leaves: the connections that broke, the lab, the held connections and the
/// running agent.
type Run = (Vec<String>, Lab, Vec<Held>, AgentProcess);

/// The run both tests share: hold, add b3, restart with `--fresh-state`.
fn hold_add_and_restart(tag: &str, second_chance: &str) -> Run {
    let lab = Lab::new(tag);
    lab.write_config(&[0, 1], second_chance);
    let agent = lab.start_agent(true);
    let vip = SocketAddr::new(VIP.parse().expect("vip"), PORT);
    let mut held = hold(&lab.lan.host(0).ns, vip, HELD);
    assert!(broken(&mut held, "before").is_empty());

    // b3 comes: the ring moves part of b1's and b2's slots to it; tracked flows stay.
    lab.write_config(&[0, 1, 2], second_chance);
    lab.wait_ring(&[0, 1, 2]);
    let failed = broken(&mut held, "after b3 came");
    assert!(failed.is_empty(), "{failed:?}");

    // A restart that forgets every tracked flow.
    assert!(agent.stop(Signal::SIGTERM).success());
    let fresh = AgentProcess::start_fresh(&lab.lan.host(1).ns, &lab.files);
    assert!(
        lab.files
            .wait_log("datapath attached", 2, Duration::from_secs(15)),
        "{}",
        lab.files.log_text()
    );
    lab.wait_ring(&[0, 1, 2]);
    let failed = broken(&mut held, "after the restart");
    (failed, lab, held, fresh)
}

#[test]
fn connections_survive_a_ring_change_and_a_fresh_state_restart() {
    let (failed, mut lab, mut held, _agent) = hold_add_and_restart("schance", "240s");
    assert!(
        failed.is_empty(),
        "broken: {failed:?}\n{}",
        lab.files.log_text()
    );
    assert!(
        lab.files.log_text().contains("previous ring restored"),
        "{}",
        lab.files.log_text()
    );
    // The snapshot counts hops within a second.
    let mut status = serde_json::Value::Null;
    let counted = wait_until(Duration::from_secs(3), || {
        status = lab.status();
        status["agent"]["second_chance_hops"].as_u64().unwrap_or(0) > 0
    });
    assert!(counted.is_some(), "no packet carried a hop: {status}");
    let hops = status["agent"]["second_chance_hops"].as_u64().unwrap_or(0);
    assert_eq!(status["vips"][0]["second_chance_seconds"], 240.0);
    assert!(broken(&mut held, "once more").is_empty());
    // `lb explain` names, for each connection whose slot moved, the backend it lives on as the
    // hop its packets carry.
    let mut hopping = 0;
    for h in &held {
        let explained = lab.explain(h.local);
        if explained["hop"] == true {
            hopping += 1;
            let previous = explained["previous_backend"].as_str().unwrap_or_default();
            let on = lab.backend_ip((h.backend[1..].parse::<usize>().expect("bN")) - 1);
            assert_eq!(previous, on.to_string(), "{explained}");
        }
    }
    assert!(hopping > 0, "lb explain shows no connection carrying a hop");
    // b3's decap, which the moved connections reach first, counts what it sent on.
    let metric = wait_until(Duration::from_secs(3), || lab.decap_forwarded_metric(2) > 0);
    assert!(
        metric.is_some(),
        "b3's lb decap --metrics shows no packet sent on"
    );
    let forwarded = lab.stop_decaps();
    println!(
        "0 of {HELD} broken; {hopping} carry a hop (lb explain); the load balancer sent {hops} \
         packets with a hop, the backends sent {forwarded:?} on to theirs"
    );
    assert!(forwarded.iter().sum::<u64>() > 0, "{forwarded:?}");
}

#[test]
fn without_second_chance_the_connections_whose_slot_moved_break() {
    let (failed, _lab, _held, _agent) = hold_add_and_restart("schance-off", "0s");
    println!("second_chance = \"0s\": {} of {HELD} broken", failed.len());
    assert!(!failed.is_empty(), "no connection's slot moved to b3?");
}

#[test]
fn connections_a_flood_kept_out_of_the_flow_table_survive_a_ring_change() {
    use lb_tests::{netns::flood::send_flood_copies, packet::frames::Frame};
    // The smallest table (1024 flows); a flood of 20,000 flows of two packets each fills it
    // with established flows, which are protected for 15 minutes: connections opened after
    // it are not tracked, and take the ring at every packet.
    let mut lab = Lab::new("schance-flood");
    lab.conntrack_size = 1024;
    lab.write_config(&[0, 1], "240s");
    let _agent = lab.start_agent(false);
    let flood = send_flood_copies(
        &lab.lan.host(0).ns,
        "eth0",
        Frame::ack("192.0.2.1", 1, VIP, PORT),
        lab.lan.host(1).mac,
        20_000,
        40_000,
        2,
    );
    flood.join().expect("the flood");
    let vip = SocketAddr::new(VIP.parse().expect("vip"), PORT);
    let mut held = hold(&lab.lan.host(0).ns, vip, HELD);
    let untracked = held
        .iter()
        .filter(|h| lab.explain(h.local)["tracked_backend"].is_null())
        .count();
    assert!(
        untracked > HELD / 2,
        "only {untracked} of {HELD} untracked: the flood did not fill the table"
    );

    lab.write_config(&[0, 1, 2], "240s");
    lab.wait_ring(&[0, 1, 2]);
    let moved = held
        .iter()
        .filter(|h| lab.explain(h.local)["hop"] == true)
        .count();
    let failed = broken(&mut held, "after b3 came");
    println!(
        "after a flood filled the table: {untracked} of {HELD} connections untracked, {moved} \
         of them moved to b3 and carry a hop, {} broken",
        failed.len()
    );
    assert!(
        moved > 0,
        "no untracked connection's slot moved: nothing tested"
    );
    assert!(
        failed.is_empty(),
        "broken: {failed:?}\n{}",
        lab.files.log_text()
    );
}
