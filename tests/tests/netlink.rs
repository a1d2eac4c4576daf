//! lb's netlink module against the real kernel, in two network namespaces joined by a veth
//! pair: the load balancer's side (`10.77.0.1`, `fd77::1`, a route to `10.78.0.0/24` via the
//! backend) and a backend (`10.77.0.2`, `fd77::2`). Route lookups, link facts, neighbour
//! resolution through `NTF_USE` (no datagram sent: the UDP counters of both sides stay still),
//! an unanswered neighbour, and a new MAC seen through the subscription.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_tests::netns::Netns;
use lb_user::{
    netlink::{Change, Event, LinkId, NeighbourState, Netlink, Subscription},
    nexthop::{self, NextHopError, Snapshot},
};

/// The load balancer's side and a backend, wired and addressed.
struct Pair {
    lb: Netns,
    backend: Netns,
}

impl Pair {
    fn new(tag: &str) -> Self {
        let pair = Self {
            lb: Netns::new(&format!("{tag}-lb")),
            backend: Netns::new(&format!("{tag}-b")),
        };
        // As in the labs: no duplicate address detection, so that the link-local addresses
        // are usable at once (the kernel solicits neighbours only from a link-local address
        // that is not tentative).
        for ns in [&pair.lb, &pair.backend] {
            ns.sysctl("net/ipv6/conf/default/accept_dad", "0");
        }
        pair.lb.add_veth("eth0", &pair.backend, "eth0");
        for (ns, host) in [(&pair.lb, 1), (&pair.backend, 2)] {
            ns.ip(&format!("addr add 10.77.0.{host}/24 dev eth0"));
            ns.ip(&format!("addr add fd77::{host}/64 dev eth0 nodad"));
            ns.ip("link set eth0 up");
        }
        pair.lb.ip("route add 10.78.0.0/24 via 10.77.0.2");
        pair
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// Runs `f` on a current-thread tokio runtime, on a thread inside `ns`.
fn block_on_in<T: Send>(ns: &Netns, f: impl std::future::Future<Output = T> + Send) -> T {
    ns.run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
}

/// The UDP counters of `ns` (`/proc/net/snmp`'s `Udp:` rows and `/proc/net/snmp6`'s `Udp6`
/// ones), read from a thread inside it: `/proc/net` is the process's namespace's,
/// `/proc/thread-self/net` the thread's.
fn udp_counters(ns: &Netns) -> HashMap<String, u64> {
    ns.run(|| {
        let mut counters = HashMap::new();
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("snmp");
        let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        for (name, value) in udp[0]
            .split_whitespace()
            .zip(udp[1].split_whitespace())
            .skip(1)
        {
            counters.insert(format!("Udp{name}"), value.parse().expect("counter"));
        }
        let snmp6 = std::fs::read_to_string("/proc/thread-self/net/snmp6").expect("snmp6");
        for line in snmp6.lines().filter(|l| l.starts_with("Udp6")) {
            let mut words = line.split_whitespace();
            let (Some(name), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            counters.insert(name.to_owned(), value.parse().expect("counter"));
        }
        counters
    })
}

#[test]
fn route_lookups_give_the_interface_the_gateway_and_locality() {
    let pair = Pair::new("nlroute");
    let eth0 = pair.lb.ifindex("eth0");
    let mac = pair.lb.mac("eth0");
    pair.lb.run(|| {
        let mut netlink = Netlink::open().expect("netlink");
        let on_link = netlink.route_to(ip("10.77.0.2")).expect("route");
        assert_eq!(
            (on_link.ifindex, on_link.gateway, on_link.local),
            (eth0, None, false)
        );
        let v6 = netlink.route_to(ip("fd77::2")).expect("route");
        assert_eq!((v6.ifindex, v6.gateway, v6.local), (eth0, None, false));
        let routed = netlink.route_to(ip("10.78.0.5")).expect("route");
        assert_eq!(
            (routed.ifindex, routed.gateway),
            (eth0, Some(ip("10.77.0.2")))
        );
        assert!(netlink.route_to(ip("10.77.0.1")).expect("route").local);
        assert!(netlink.route_to(ip("127.0.0.1")).expect("route").local);
        let unreachable = netlink
            .route_to(ip("10.99.0.1"))
            .expect_err("no default route");
        assert_eq!(unreachable.refused_with(), Some(libc::ENETUNREACH));

        // Link facts, by name and by index, and the interface's addresses.
        let link = netlink.link(LinkId::Name("eth0".into())).expect("link");
        assert_eq!((link.index, link.mtu, link.mac), (eth0, 1500, Some(mac)));
        assert_eq!(link.xdp, None);
        assert_eq!(netlink.link(LinkId::Index(eth0)).expect("link"), link);
        assert!(netlink.link(LinkId::Index(1)).expect("lo").loopback);
        let missing = netlink
            .link(LinkId::Name("nosuch0".into()))
            .expect_err("missing");
        assert_eq!(missing.refused_with(), Some(libc::ENODEV));
        let addresses = netlink.addresses(eth0).expect("addresses");
        assert_eq!(addresses[0], ip("10.77.0.1"), "{addresses:?}");
        assert!(addresses.contains(&ip("fd77::1")), "{addresses:?}");
        assert_eq!(lb_user::interface::index("eth0").expect("index"), eth0);
        assert_eq!(lb_user::interface::mac("eth0").expect("mac"), Some(mac));
    });
    // The next hop of a backend behind the gateway, and the errors DSR and local addresses get.
    let error = block_on_in(
        &pair.lb,
        nexthop::resolve(ip("10.78.0.5"), true, Duration::ZERO),
    );
    assert!(
        matches!(error, Err(NextHopError::NotOnLink { gateway, .. }) if gateway == ip("10.77.0.2")),
        "{error:?}"
    );
    let error = block_on_in(
        &pair.lb,
        nexthop::resolve(ip("10.77.0.1"), true, Duration::ZERO),
    );
    assert!(
        matches!(error, Err(NextHopError::Local { .. })),
        "{error:?}"
    );
    let error = block_on_in(
        &pair.lb,
        nexthop::resolve(ip("10.99.0.1"), false, Duration::ZERO),
    );
    assert!(
        matches!(error, Err(NextHopError::NoRoute { .. })),
        "{error:?}"
    );
}

#[test]
fn a_neighbour_that_answers_is_resolved_without_sending_a_datagram() {
    let pair = Pair::new("nlresolve");
    let backend_mac = pair.backend.mac("eth0");
    let eth0 = pair.lb.ifindex("eth0");
    let lb_before = udp_counters(&pair.lb);
    let backend_before = udp_counters(&pair.backend);

    for address in ["10.77.0.2", "fd77::2"] {
        let started = Instant::now();
        let hop = block_on_in(
            &pair.lb,
            nexthop::resolve(ip(address), true, Duration::from_secs(1)),
        )
        .unwrap_or_else(|error| panic!("{address}: {error}"));
        println!("{address} resolved in {:?}", started.elapsed());
        assert_eq!(hop.dst_mac, backend_mac, "{address}");
        assert_eq!(
            (hop.ifindex, hop.mtu, hop.src_mac, hop.gateway),
            (eth0, 1500, pair.lb.mac("eth0"), None)
        );
    }
    // Behind the gateway: the gateway's MAC.
    let routed = block_on_in(
        &pair.lb,
        nexthop::resolve(ip("10.78.0.5"), false, Duration::from_secs(1)),
    )
    .expect("resolve behind the gateway");
    assert_eq!(
        (routed.dst_mac, routed.gateway),
        (backend_mac, Some(ip("10.77.0.2")))
    );

    // The kernel resolved the entries itself; no datagram left either side (the discard-port
    // datagram of old made the backend count a `NoPorts`).
    assert_eq!(udp_counters(&pair.lb), lb_before, "the lb side sent no UDP");
    assert_eq!(
        udp_counters(&pair.backend),
        backend_before,
        "the backend received no UDP"
    );
    let entries = pair.lb.run(|| {
        Netlink::open()
            .expect("netlink")
            .neighbours()
            .expect("dump")
    });
    for address in ["10.77.0.2", "fd77::2"] {
        let entry = entries
            .iter()
            .find(|n| n.address == ip(address) && n.ifindex == eth0)
            .unwrap_or_else(|| panic!("{address} in {entries:?}"));
        assert_eq!(entry.usable_mac(), Some(backend_mac), "{entry:?}");
    }
}

#[test]
fn an_unanswered_neighbour_times_out_and_a_static_one_is_left_alone() {
    let pair = Pair::new("nlsilent");
    let eth0 = pair.lb.ifindex("eth0");
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let error = block_on_in(&pair.lb, nexthop::resolve(ip("10.77.0.9"), true, wait));
    let took = started.elapsed();
    assert!(
        matches!(
            error,
            Err(NextHopError::Unresolved { neighbor, waited, .. })
                if neighbor == ip("10.77.0.9") && waited == wait
        ),
        "{error:?}"
    );
    assert!(took >= wait && took < wait * 3, "gave up after {took:?}");
    // The request created the entry and the kernel is probing it.
    let entry = pair.lb.run(|| {
        Netlink::open()
            .expect("netlink")
            .neighbour(ip("10.77.0.9"), eth0)
            .expect("lookup")
    });
    let entry = entry.expect("the resolution request created the entry");
    assert!(
        matches!(
            entry.state,
            NeighbourState::Incomplete | NeighbourState::Failed
        ),
        "{entry:?}"
    );

    // An operator's static entry is used as it is: no request (which would clear PERMANENT).
    let mac = [2, 0, 0, 0, 0x77, 0x50];
    pair.lb
        .ip("neigh add 10.77.0.50 lladdr 02:00:00:00:77:50 dev eth0 nud permanent");
    let hop = block_on_in(&pair.lb, nexthop::resolve(ip("10.77.0.50"), true, wait))
        .expect("static entry");
    assert_eq!(hop.dst_mac, mac);
    assert!(
        pair.lb
            .ip("neigh show 10.77.0.50 dev eth0")
            .contains("PERMANENT"),
        "the static entry stays static"
    );
}

#[test]
fn a_new_mac_is_announced_within_milliseconds() {
    let pair = Pair::new("nlwatch");
    let eth0 = pair.lb.ifindex("eth0");
    let backend = ip("10.77.0.2");
    let new_mac = [2, 0, 0, 0, 0x77, 2];
    let lb_name = pair.lb.name.clone();
    let (seen, snapshot_mac) = block_on_in(&pair.lb, async {
        let hop = nexthop::resolve(backend, true, Duration::from_secs(1))
            .await
            .expect("resolve");
        let mut subscription = Subscription::open().expect("subscribe");
        let mut snapshot = Snapshot::take().expect("tables");
        assert_eq!(snapshot.refresh(backend, &hop), hop, "the tables agree");

        // The backend is replaced: the entry is overridden, as a gratuitous ARP does.
        let changed = Instant::now();
        lb_lab::sh(&format!(
            "ip -n {lb_name} neigh replace 10.77.0.2 lladdr 02:00:00:00:77:02 dev eth0 nud stale"
        ));
        let seen = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match subscription.next().await.expect("announcement") {
                    Event::Changes(changes) => {
                        let moved = changes.iter().any(|change| {
                            matches!(change, Change::Neighbour(n)
                                if n.address == backend && n.ifindex == eth0
                                    && n.mac == Some(new_mac))
                        });
                        for change in &changes {
                            snapshot.apply(change);
                        }
                        if moved {
                            return changed.elapsed();
                        }
                    }
                    Event::Lost => snapshot = Snapshot::take().expect("tables"),
                }
            }
        })
        .await
        .expect("the new MAC is announced");
        (seen, snapshot.refresh(backend, &hop).dst_mac)
    });
    println!("new MAC announced after {seen:?}");
    assert!(seen < Duration::from_millis(200), "{seen:?}");
    assert_eq!(
        snapshot_mac, new_mac,
        "the snapshot follows the announcement"
    );
}
