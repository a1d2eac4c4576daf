//! Smoke test of the datapath in network namespaces: a client, the load balancer (one arm:
//! XDP_TX back out of the interface packets came in on) and two DSR backends on one bridge.
//! Real TCP connections to the VIP must reach both backends and get their answers.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use aya::programs::XdpMode;
use lb_common::{
    encoding::addr_bytes,
    maglev::{build_ring, MaglevBackend},
    maps::{Backend, BackendState, ForwardMode, Protocol, Vip, VipKey, DEFAULT_RING_SIZE},
    stats::Counter,
};
use lb_tests::netns::{
    servers::{ask_name, NameServer},
    topology::Lan,
};
use lb_user::datapath::{Datapath, Options, Program};

const VIP: &str = "10.78.0.100";
const PORT: u16 = 8080;
const CONNECTIONS: usize = 60;

#[test]
fn dsr_tcp_connections_reach_both_backends_and_get_answers() {
    let lan = Lan::new("smoke", &["client", "lb", "b1", "b2"]);
    let (client, lb, backends) = (lan.host(0), lan.host(1), [lan.host(2), lan.host(3)]);

    // Backends own the VIP on loopback and answer the client directly (DSR).
    let mut servers = Vec::new();
    for (i, backend) in backends.iter().enumerate() {
        backend.ns.ip(&format!("addr add {VIP}/32 dev lo"));
        servers.push(NameServer::start(&backend.ns, PORT, &format!("b{}", i + 1)));
    }
    // The client reaches the VIP through the load balancer.
    client.ns.ip(&format!("route add {VIP}/32 via {}", lb.ip));

    let vip_address: IpAddr = VIP.parse().expect("vip");
    let mut datapath = lb.ns.run(|| {
        let mut datapath = Datapath::load(&Options {
            conntrack_size: 4096,
            pin_dir: None,
            fresh_state: false,
        })
        .expect("load");
        for (id, backend) in backends.iter().enumerate() {
            let (addr, family) = addr_bytes(IpAddr::V4(backend.ip));
            let entry = Backend {
                addr,
                family: family as u8,
                state: BackendState::Up as u8,
                ifindex: lb.ifindex,
                mtu: 1500,
                dst_mac: backend.mac,
                src_mac: lb.mac,
                ..Backend::default()
            };
            datapath.set_backend(id as u32, &entry).expect("backend");
        }
        let identities: Vec<[u8; 4]> = backends.iter().map(|b| b.ip.octets()).collect();
        let members: Vec<MaglevBackend<'_>> = identities
            .iter()
            .enumerate()
            .map(|(id, identity)| MaglevBackend {
                id: id as u32,
                identity,
                weight: 1,
            })
            .collect();
        let ring = build_ring(&members, DEFAULT_RING_SIZE).expect("ring");
        datapath.set_ring(0, &ring).expect("set ring");
        let vip = Vip::new(0, DEFAULT_RING_SIZE, ForwardMode::Dsr);
        datapath
            .set_vip(&VipKey::new(vip_address, PORT, Protocol::Tcp), &vip)
            .expect("vip");
        datapath
            .attach(Program::Balancer, "eth0", XdpMode::Driver)
            .expect("attach native XDP");
        datapath
    });

    let answers: Vec<Result<String, String>> = client.ns.run(|| {
        (0..CONNECTIONS)
            .map(|_| {
                ask_name(SocketAddr::new(vip_address, PORT), Duration::from_secs(3))
                    .map_err(|e| e.to_string())
            })
            .collect()
    });
    let failures: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} connections failed: {failures:?}",
        failures.len()
    );
    let per_backend: Vec<usize> = ["b1", "b2"]
        .iter()
        .map(|n| answers.iter().filter(|a| a.as_deref() == Ok(*n)).count())
        .collect();
    println!("connections per backend: {per_backend:?}");
    assert!(
        per_backend.iter().all(|&n| n > 0),
        "both backends must answer: {per_backend:?}"
    );
    assert_eq!(
        per_backend.iter().sum::<usize>(),
        CONNECTIONS,
        "every answer names a backend"
    );

    let stats = datapath.vip_stats(0).expect("vip stats");
    assert_eq!(
        stats.new_flows as usize, CONNECTIONS,
        "one new flow per connection"
    );
    assert!(
        stats.packets as usize >= 3 * CONNECTIONS,
        "SYN, ACK, FIN... per connection: {stats:?}"
    );
    assert_eq!(
        datapath.counter(Counter::Tx).expect("tx"),
        stats.packets,
        "every VIP packet sent with XDP_TX"
    );
    drop(servers);
}
