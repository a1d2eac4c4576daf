//! Both forwarding modes end to end (issue #5): real sockets from a client namespace through the
//! agent-programmed XDP load balancer to backends, TCP and UDP over IPv4 and IPv6. In `dsr` mode
//! the backends hold the VIPs on their loopback; in `tunnel` mode they also run `lb decap`, and
//! the mixed-family tunnels (IPv4 in IPv6, IPv6 in IPv4) are covered too.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use lb_common::stats::Counter;
use lb_tests::netns::{
    agent::{wait_file, AgentFiles, AgentProcess, Signal},
    connections::bulk,
    servers::{ask_name, ask_name_udp, NameServer, UdpNameServer},
    topology::Lan,
    wait_every, Netns,
};
use lb_user::datapath::Datapath;

const PORT: u16 = 8080;
const BACKENDS: [&str; 2] = ["b1", "b2"];
/// Connections (or UDP sockets) per VIP: each backend gets at least one unless the hash is
/// broken (chance 2 × 2^-40).
const FLOWS: usize = 40;
/// MTU of the LB-to-backend segment in tunnel mode: room for the outer header of a full-size
/// client packet (the client keeps 1500), as an operator gives a tunnel network.
const TUNNEL_MTU: u32 = 1600;

/// One VIP of the lab and the family of its backends.
struct LabVip {
    name: &'static str,
    address: &'static str,
    udp: bool,
    v6_backends: bool,
}

impl LabVip {
    fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.address.parse().expect("vip"), PORT)
    }
}

/// Same-family VIPs, served in both modes.
const SAME_FAMILY: [LabVip; 4] = [
    LabVip {
        name: "tcp4",
        address: "10.78.0.100",
        udp: false,
        v6_backends: false,
    },
    LabVip {
        name: "udp4",
        address: "10.78.0.100",
        udp: true,
        v6_backends: false,
    },
    LabVip {
        name: "tcp6",
        address: "fd78::100",
        udp: false,
        v6_backends: true,
    },
    LabVip {
        name: "udp6",
        address: "fd78::100",
        udp: true,
        v6_backends: true,
    },
];

/// Mixed-family VIPs: only a tunnel can carry them.
const MIXED_FAMILY: [LabVip; 2] = [
    LabVip {
        name: "tcp4in6",
        address: "10.78.0.101",
        udp: false,
        v6_backends: true,
    },
    LabVip {
        name: "tcp6in4",
        address: "fd78::101",
        udp: false,
        v6_backends: false,
    },
];

/// client (host 0), lb (host 1), b1 and b2 (hosts 2, 3), the agent and, in tunnel mode, one
/// `lb decap` per backend.
///
/// Fields drop in order: processes and servers first, then the agent's files, the namespaces
/// last.
struct ModesLab {
    _agent: AgentProcess,
    decaps: Vec<AgentProcess>,
    _servers: (Vec<NameServer>, Vec<UdpNameServer>),
    vips: Vec<&'static LabVip>,
    files: AgentFiles,
    lan: Lan,
}

impl ModesLab {
    fn new(tag: &str, forward: &str) -> Self {
        let tunnel = forward == "tunnel";
        let lan = Lan::new(tag, &["client", "lb", "b1", "b2"]);
        let mut vips: Vec<&'static LabVip> = SAME_FAMILY.iter().collect();
        if tunnel {
            vips.extend(MIXED_FAMILY.iter());
            lan.set_mtu(&[1, 2, 3], TUNNEL_MTU);
        }
        let addresses: BTreeSet<&str> = vips.iter().map(|v| v.address).collect();
        let (mut tcp, mut udp) = (Vec::new(), Vec::new());
        for (i, name) in BACKENDS.iter().enumerate() {
            let ns = &lan.host(2 + i).ns;
            let lines: Vec<String> = addresses
                .iter()
                .map(|a| {
                    format!(
                        "addr add {a} dev lo{}",
                        if a.contains(':') { " nodad" } else { "" }
                    )
                })
                .collect();
            ns.ip_batch(&lines);
            tcp.push(NameServer::start(ns, PORT, name));
            for vip in vips.iter().filter(|v| v.udp) {
                udp.push(UdpNameServer::start(ns, vip.socket(), name));
            }
        }
        let client = lan.host(0);
        let lb = lan.host(1);
        client.ns.ip_batch(&[
            format!("route add 10.78.0.0/24 via {}", lb.ip),
            format!("route add fd78::/64 via {}", lb.ip6),
        ]);
        let files = AgentFiles::new(tag);
        let decaps = if tunnel {
            (0..BACKENDS.len())
                .map(|i| {
                    AgentProcess::start_decap(&lan.host(2 + i).ns, "eth0", &decap_log(&files, i))
                })
                .collect()
        } else {
            Vec::new()
        };
        files.write_config(&config_text(&lan, &files, &vips, forward));
        let agent = AgentProcess::start(&lb.ns, &files, false);
        assert!(
            files.wait_log("datapath attached", 1, Duration::from_secs(15)),
            "agent did not attach:\n{}",
            files.log_text()
        );
        for i in 0..decaps.len() {
            assert!(
                wait_file(
                    &decap_log(&files, i),
                    "decap attached",
                    1,
                    Duration::from_secs(10)
                ),
                "lb decap on b{} did not attach:\n{}",
                i + 1,
                std::fs::read_to_string(decap_log(&files, i)).unwrap_or_default()
            );
        }
        Self {
            lan,
            files,
            vips,
            decaps,
            _agent: agent,
            _servers: (tcp, udp),
        }
    }

    fn client(&self) -> &Netns {
        &self.lan.host(0).ns
    }

    /// Checks every VIP: `FLOWS` flows all answered, spread over both backends; one TCP
    /// connection carries 64 KiB both ways (full-size segments); UDP flows stick to a backend.
    fn check_every_vip(&self) {
        for vip in &self.vips {
            let names = if vip.udp {
                self.check_udp(vip)
            } else {
                self.check_tcp(vip)
            };
            println!(
                "{}: {} flows via {}: {:?}",
                vip.name,
                FLOWS,
                vip.address,
                count_by_name(&names)
            );
            for backend in BACKENDS {
                assert!(
                    names.iter().any(|n| n == backend),
                    "{}: no flow reached {backend}: {names:?}",
                    vip.name
                );
            }
        }
        for vip in self.vips.iter().filter(|v| v.udp) {
            self.check_path_mtu_reaches_the_backend(vip);
        }
        let mut datapath = Datapath::open_pinned(&self.files.state_dir).expect("open pinned maps");
        for counter in [Counter::TooBig, Counter::NoBackend, Counter::ParseError] {
            assert_eq!(
                datapath.counter(counter).expect("counter"),
                0,
                "{counter:?} packets at the load balancer"
            );
        }
    }

    fn check_tcp(&self, vip: &LabVip) -> Vec<String> {
        let address = vip.socket();
        self.client().run(|| {
            let names: Vec<String> = (0..FLOWS)
                .map(|i| {
                    ask_name(address, Duration::from_secs(2)).unwrap_or_else(|e| {
                        panic!("{}: connection {i} to {address} failed: {e}", vip.name)
                    })
                })
                .collect();
            bulk(address);
            names
        })
    }

    fn check_udp(&self, vip: &LabVip) -> Vec<String> {
        let address = vip.socket();
        let any: SocketAddr = if address.is_ipv6() {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .expect("any");
        self.client().run(|| {
            (0..FLOWS)
                .map(|i| {
                    let socket = UdpSocket::bind(any).expect("bind");
                    socket.connect(address).expect("connect");
                    socket
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .expect("timeout");
                    let name = ask_name_udp(&socket, &format!("hello {i}"))
                        .unwrap_or_else(|e| panic!("{}: datagram {i} to {address}: {e}", vip.name));
                    for again in 0..3 {
                        let next =
                            ask_name_udp(&socket, &format!("again {i}.{again}")).expect("answer");
                        assert_eq!(next, name, "{}: a UDP flow changed backend", vip.name);
                    }
                    name
                })
                .collect()
        })
    }

    /// A router between the backends and the client reports that the answer of a UDP flow was
    /// too big (IPv4 "fragmentation needed", ICMPv6 "packet too big"), addressed to the VIP as
    /// routers do. The load balancer must hand it to the backend serving the flow, whose kernel
    /// then lowers its path MTU to the client; the other backend learns nothing. (The client
    /// plays the router here: any host can send it.)
    fn check_path_mtu_reaches_the_backend(&self, vip: &LabVip) {
        let address = vip.socket();
        let any: SocketAddr = if address.is_ipv6() {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .expect("any");
        let client = self.lan.host(0);
        let (name, client_port) = client.ns.run(|| {
            let socket = UdpSocket::bind(any).expect("bind");
            socket.connect(address).expect("connect");
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let name = ask_name_udp(&socket, "before the icmp error").expect("answer");
            (name, socket.local_addr().expect("local").port())
        });
        let mtu: u16 = if address.is_ipv6() { 1280 } else { 1400 };
        client
            .ns
            .run(|| send_too_big(client.addr(address.is_ipv6()), address, client_port, mtu));
        let serving = BACKENDS
            .iter()
            .position(|b| *b == name)
            .expect("backend name");
        let route_mtu = |i: usize| {
            let route = self
                .lan
                .host(2 + i)
                .ns
                .ip(&format!("route get {}", client.addr(address.is_ipv6())));
            route
                .split_whitespace()
                .skip_while(|w| *w != "mtu")
                .nth(1)
                .map(|m| m.parse::<u16>().expect("mtu"))
        };
        assert!(
            wait_every(
                Duration::from_secs(10),
                Duration::from_millis(20),
                || route_mtu(serving) == Some(mtu)
            )
            .is_some(),
            "{}: {name} did not learn the path MTU {mtu}: {:?}",
            vip.name,
            route_mtu(serving)
        );
        let other = 1 - serving;
        assert_eq!(
            route_mtu(other),
            None,
            "{}: {} learned a path MTU for a flow it does not serve",
            vip.name,
            BACKENDS[other]
        );
        println!(
            "{}: ICMP too-big about a flow of {name} reached {name} (path MTU {mtu})",
            vip.name
        );
        // Forget it, so the next VIP's check starts clean.
        for i in 0..BACKENDS.len() {
            self.lan.host(2 + i).ns.ip("route flush cache");
            self.lan.host(2 + i).ns.ip("-6 route flush cache");
        }
    }

    /// Packets the load balancer forwarded to each backend host (over all its backend entries).
    fn forwarded_per_backend(&self) -> Vec<u64> {
        let mut datapath = Datapath::open_pinned(&self.files.state_dir).expect("open pinned maps");
        let entries = datapath.backends().expect("backends");
        (0..BACKENDS.len())
            .map(|i| {
                let host = self.lan.host(2 + i);
                entries
                    .iter()
                    .filter(|(_, b)| {
                        let address = b.address();
                        address == host.addr(false) || address == host.addr(true)
                    })
                    .map(|(id, _)| datapath.backend_stats(*id).expect("backend stats").packets)
                    .sum()
            })
            .collect()
    }

    /// Stops every `lb decap` and returns how many tunnel packets each stripped (from its exit
    /// line).
    fn stop_decaps(&mut self) -> Vec<u64> {
        let decaps = std::mem::take(&mut self.decaps);
        decaps
            .into_iter()
            .enumerate()
            .map(|(i, decap)| {
                assert!(
                    decap.stop(Signal::SIGTERM).success(),
                    "lb decap on b{} failed",
                    i + 1
                );
                lb_tests::netns::agent::decap_count(
                    &decap_log(&self.files, i),
                    "decapsulated",
                    &format!("b{}", i + 1),
                )
            })
            .collect()
    }
}

/// Sends, from `from`, an ICMP "fragmentation needed" / ICMPv6 "packet too big" with `mtu` to
/// the VIP, quoting a UDP answer from the VIP to `from:client_port`.
fn send_too_big(from: std::net::IpAddr, vip: SocketAddr, client_port: u16, mtu: u16) {
    use etherparse::{
        icmpv4::DestUnreachableHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type,
        PacketBuilder,
    };
    use socket2::{Domain, Protocol, Socket, Type};
    let mut quote = Vec::new();
    let answer = [0u8; 1400];
    let (domain, protocol, message) = match (vip.ip(), from) {
        (std::net::IpAddr::V4(v), std::net::IpAddr::V4(c)) => {
            PacketBuilder::ipv4(v.octets(), c.octets(), 64)
                .udp(vip.port(), client_port)
                .write(&mut quote, &answer)
                .expect("quote");
            quote.truncate(548);
            let kind =
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: mtu,
                });
            (
                Domain::IPV4,
                Protocol::ICMPV4,
                [
                    Icmpv4Header::with_checksum(kind, &quote)
                        .to_bytes()
                        .to_vec(),
                    quote,
                ]
                .concat(),
            )
        }
        (std::net::IpAddr::V6(v), std::net::IpAddr::V6(c)) => {
            PacketBuilder::ipv6(v.octets(), c.octets(), 64)
                .udp(vip.port(), client_port)
                .write(&mut quote, &answer)
                .expect("quote");
            quote.truncate(1232);
            let kind = Icmpv6Type::PacketTooBig { mtu: mtu.into() };
            let header = Icmpv6Header::with_checksum(kind, c.octets(), v.octets(), &quote)
                .expect("checksum");
            (
                Domain::IPV6,
                Protocol::ICMPV6,
                [header.to_bytes().to_vec(), quote].concat(),
            )
        }
        _ => panic!("mixed families"),
    };
    let socket = Socket::new(domain, Type::RAW, Some(protocol)).expect("raw socket");
    socket
        .send_to(&message, &SocketAddr::new(vip.ip(), 0).into())
        .expect("send icmp");
}

fn decap_log(files: &AgentFiles, backend: usize) -> std::path::PathBuf {
    files.dir.join(format!("decap-b{}.log", backend + 1))
}

/// Checks go to the backends' own addresses: the tunnel test counts every tunnel packet the
/// backends strip as a client's (checks through the VIP are tested in `vip_checks.rs`).
fn config_text(lan: &Lan, files: &AgentFiles, vips: &[&LabVip], forward: &str) -> String {
    let mut text = format!(
        "interface = \"eth0\"\nstate_dir = \"{}\"\nconntrack_size = 65536\n\n\
         [health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 3\n\
         target = \"backend\"\n",
        files.state_dir.display()
    );
    for vip in vips {
        let protocol = if vip.udp { "udp" } else { "tcp" };
        text += &format!(
            "\n[[vip]]\nname = \"{}\"\naddress = \"{}\"\nport = {PORT}\nprotocol = \"{protocol}\"\nforward = \"{forward}\"\n",
            vip.name, vip.address
        );
        for i in 0..BACKENDS.len() {
            text += &format!(
                "  [[vip.backend]]\n  address = \"{}\"\n",
                lan.host(2 + i).addr(vip.v6_backends)
            );
        }
    }
    text
}

fn count_by_name(names: &[String]) -> Vec<(String, usize)> {
    let distinct: BTreeSet<&String> = names.iter().collect();
    distinct
        .into_iter()
        .map(|n| (n.clone(), names.iter().filter(|m| *m == n).count()))
        .collect()
}

#[test]
fn dsr_forwards_tcp_and_udp_over_ipv4_and_ipv6() {
    let lab = ModesLab::new("dsr", "dsr");
    lab.check_every_vip();
}

#[test]
fn tunnel_forwards_tcp_and_udp_over_ipv4_and_ipv6_to_backends_running_lb_decap() {
    let mut lab = ModesLab::new("tunnel", "tunnel");
    lab.check_every_vip();
    let forwarded = lab.forwarded_per_backend();
    let stripped = lab.stop_decaps();
    println!(
        "tunnel packets sent to b1, b2: {forwarded:?}; stripped by their lb decap: {stripped:?}"
    );
    // Only tunnels can carry the mixed-family VIPs; the equality shows every packet the load
    // balancer sent to a backend arrived as a tunnel that `lb decap` stripped.
    assert_eq!(
        stripped, forwarded,
        "tunnel packets stripped by each backend vs sent to it"
    );
}
