//! Second chance on real frames (`BPF_PROG_TEST_RUN`).
//!
//! The load balancer's side: a tunnel packet of a connection lb does not track, whose ring slot
//! had another backend in the VIP's previous ring, carries that backend as a hop (an IPv4
//! option, an IPv6 destination option), byte for byte as docs/SECOND_CHANCE.md says, and
//! stays untracked; SYNs, tracked flows, DSR VIPs and previous owners that are down or another
//! VIP's carry none.
//!
//! The backend's side (`decap`), in a namespace of the test's own with real sockets: a packet
//! whose connection this host has (an established socket), or a SYN, is kept; one it has no
//! connection for is sent on to the hop (outer addresses rewritten, hop cleared, the MACs of the
//! route `lb decap` resolved), or dropped with the hop queued when no route is known yet; a hop
//! that is this host, or none, is kept; an ACK a listener's SYN cookie vouches for is kept.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};

use lb_common::{
    maps::{BackendState, HopRoute, DEFAULT_RING_SIZE},
    stats::DecapCounter,
};
use lb_tests::packet::{
    frames::{self, ip, Frame, LB_MAC},
    lab::{backend_mac, verdict, PacketLab, TUNNEL_SOURCE_V4, TUNNEL_SOURCE_V6},
};
use lb_user::datapath::Program;

const CLIENT4: &str = "198.51.100.7";
const CLIENT6: &str = "2001:db8:c::7";

/// The standard lab where every slot of VIP `vip`'s previous ring names `previous`.
fn lab_with_previous(vip: &str, previous: u32) -> PacketLab {
    let mut lab = PacketLab::standard();
    let id = lab.vip(vip).id;
    lab.second_chance
        .set(id, &vec![previous; DEFAULT_RING_SIZE as usize])
        .expect("previous ring");
    lab
}

/// Runs the balancer on `frame`: verdict and output.
fn balance(lab: &mut PacketLab, frame: &Frame) -> (u32, Vec<u8>) {
    lab.run(&frame.build()).expect("test run")
}

/// The plain tunnel frame the balancer makes of `frame` for backend `id` of VIP `vip`.
fn plain_tunnel(lab: &PacketLab, vip: &str, frame: &Frame, id: u32) -> Vec<u8> {
    let backend = lab.backend_address(vip, id);
    let source = ip(if backend.is_ipv4() {
        TUNNEL_SOURCE_V4
    } else {
        TUNNEL_SOURCE_V6
    });
    frames::tunnel(
        &frame.build(),
        backend_mac(id),
        source,
        backend,
        &frame.flow_key(),
    )
}

#[test]
fn an_untracked_packet_whose_slot_moved_carries_the_previous_owner() {
    for (vip, client, address, previous, moved) in [
        ("tun4", CLIENT4, "10.0.0.200", 7, 6),
        ("tun6", CLIENT6, "fd00::200", 9, 8),
    ] {
        let mut lab = lab_with_previous(vip, previous);
        let hop = lab.backend_address(vip, previous);
        let id = lab.vip(vip).id;
        let (mut carried, mut plain) = (0, 0);
        for port in 40_000..40_100 {
            let frame = Frame::ack(client, port, address, 80);
            let owner = lab.ring_backend(id, &frame.flow_key());
            let (action, out) = balance(&mut lab, &frame);
            assert_eq!(action, verdict::TX, "{frame:?}");
            let expected = plain_tunnel(&lab, vip, &frame, owner);
            let tracked = lab
                .datapath
                .conntrack(&frame.flow_key())
                .expect("conntrack");
            if owner == moved {
                assert_eq!(
                    out,
                    frames::with_hop(&expected, 14, hop),
                    "{vip} port {port}: with a hop"
                );
                assert_eq!(tracked, None, "a packet with a hop is not tracked");
                carried += 1;
            } else {
                assert_eq!(out, expected, "{vip} port {port}: its slot did not move");
                assert_eq!(tracked, Some(owner));
                plain += 1;
            }
        }
        assert!(
            carried > 20 && plain > 20,
            "{vip}: {carried} with a hop, {plain} without"
        );
        assert_eq!(lab.second_chance.hops_carried(), carried);
        frames::verify_checksums(&balance(&mut lab, &Frame::ack(client, 40_000, address, 80)).1);
    }
}

#[test]
fn syns_tracked_flows_dsr_and_unusable_previous_owners_carry_no_hop() {
    let mut lab = lab_with_previous("tun4", 7);
    let id = lab.vip("tun4").id;
    let moved: Vec<u16> = (41_000..41_200)
        .filter(|port| {
            let flow = Frame::ack(CLIENT4, *port, "10.0.0.200", 80).flow_key();
            lab.ring_backend(id, &flow) == 6
        })
        .take(3)
        .collect();
    // A SYN opens a connection on the backend its slot has now: no hop, tracked; the packets
    // after it are tracked hits, without a hop.
    let syn = Frame::syn(CLIENT4, moved[0], "10.0.0.200", 80);
    let (_, out) = balance(&mut lab, &syn);
    assert_eq!(out, plain_tunnel(&lab, "tun4", &syn, 6));
    let ack = Frame::ack(CLIENT4, moved[0], "10.0.0.200", 80);
    let (_, out) = balance(&mut lab, &ack);
    assert_eq!(out, plain_tunnel(&lab, "tun4", &ack, 6));

    // The previous owner down: no hop (and the packet is tracked as before).
    lab.set_state(7, BackendState::Down);
    let ack = Frame::ack(CLIENT4, moved[1], "10.0.0.200", 80);
    let (_, out) = balance(&mut lab, &ack);
    assert_eq!(out, plain_tunnel(&lab, "tun4", &ack, 6));
    lab.set_state(7, BackendState::Up);

    // A previous ring naming another VIP's backend (an id taken since): no hop.
    lab.second_chance
        .set(id, &vec![0; DEFAULT_RING_SIZE as usize])
        .expect("previous ring");
    let ack = Frame::ack(CLIENT4, moved[2], "10.0.0.200", 80);
    let (_, out) = balance(&mut lab, &ack);
    assert_eq!(out, plain_tunnel(&lab, "tun4", &ack, 6));
    assert_eq!(lab.second_chance.hops_carried(), 0);

    // DSR: nothing carries a hop.
    let mut lab = lab_with_previous("web4", 1);
    for port in 42_000..42_050 {
        let frame = Frame::ack(CLIENT4, port, "10.0.0.100", 80);
        let owner = lab.ring_backend(lab.vip("web4").id, &frame.flow_key());
        let (_, out) = balance(&mut lab, &frame);
        assert_eq!(out, frames::dsr(&frame.build(), backend_mac(owner)));
    }
    assert_eq!(lab.second_chance.hops_carried(), 0);
}

/// This host's tunnel address in the decap namespace (the standard lab's decap address).
const HERE: &str = "10.1.0.11";
/// The hop with a route.
const HOP: &str = "10.1.0.12";
/// The hop's MAC.
const HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
/// A hop without a route yet.
const UNKNOWN_HOP: &str = "10.1.0.13";
/// This host's IPv6 tunnel address (the standard lab's decap address) and an IPv6 hop.
const HERE6: &str = "fd01::11";
const HOP6: &str = "fd01::12";
/// The VIP the backend serves on `lo`.
const VIP: &str = "10.0.0.200";

/// A tunnel frame from the balancer to this host carrying `inner` (a client's frame) with
/// `hop`.
fn tunnel_to_here(inner: &Frame, hop: &str) -> Vec<u8> {
    let bytes = inner.build();
    let plain = frames::tunnel(
        &bytes,
        [0x02, 0, 0, 0, 0, 0x11],
        ip(TUNNEL_SOURCE_V4),
        ip(HERE),
        &inner.flow_key(),
    );
    frames::with_hop(&plain, 14, ip(hop))
}

/// What `decap` passes up of `tunnel`, which carries `inner`: the tunnel's Ethernet header
/// (the inner ethertype), then the inner packet.
fn stripped(tunnel: &[u8], inner: &Frame) -> Vec<u8> {
    let inner = inner.build();
    [&tunnel[..12], &inner[12..]].concat()
}

/// Runs `decap` on `frame` as received on interface `ifindex`: verdict and output.
fn decap_on(lab: &mut PacketLab, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
    use aya::programs::{TestRun as _, TestRunOptions};
    // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let context: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|word| word.to_ne_bytes())
        .collect();
    let program = lab.datapath.program(Program::Decap).expect("decap");
    let mut out = vec![0u8; frame.len() + 64];
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    options.data_out = Some(&mut out);
    options.ctx_in = Some(&context);
    let result = program.test_run(options).expect("test run");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// A namespace of the test's own for `decap`'s decisions: `v0` (this host, `HERE`/24, with a
/// veth peer), the VIP and the client's address on `lo`. It and `v0`'s MAC.
fn decap_namespace(tag: &str) -> (lb_lab::Netns, [u8; 6]) {
    let ns = lb_lab::Netns::new(tag);
    ns.ip_batch(&[
        "link add v0 type veth peer name v1".to_owned(),
        format!("addr add {HERE}/24 dev v0"),
        "link set v0 up".to_owned(),
        "link set v1 up".to_owned(),
        format!("addr add {VIP}/32 dev lo"),
        format!("addr add {CLIENT4}/32 dev lo"),
    ]);
    let v0_mac = ns.mac("v0");
    (ns, v0_mac)
}

/// Inside a [`decap_namespace`]: the packet lab, `v0`'s index, and `HOP_ROUTES` with a route
/// to `HOP` out of `v0`.
struct DecapLab {
    lab: PacketLab,
    v0: u32,
    routes: aya::maps::HashMap<aya::maps::MapData, lb_common::maps::DecapKey, HopRoute>,
    /// `pass` on `v0`: a test run may name an interface as the receiving one only when it runs
    /// an XDP program.
    _pass: lb_user::datapath::Datapath,
}

impl DecapLab {
    fn new(v0_mac: [u8; 6]) -> Self {
        let _pass = lb_tests::netns::pass_on(&["v0".to_owned()]);
        let name = std::ffi::CString::new("v0").expect("name");
        // SAFETY: a NUL-terminated name that outlives the call.
        let v0 = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(v0, 0, "v0's index");
        let mut lab = PacketLab::standard();
        let mut routes = lab.datapath.take_hop_routes().expect("hop routes");
        add_route(&mut routes, HOP, v0, v0_mac);
        Self {
            lab,
            v0,
            routes,
            _pass,
        }
    }
}

/// Routes `hop` out of `v0` (`v0_mac`) to `HOP_MAC`, as `lb decap` would.
fn add_route(
    routes: &mut aya::maps::HashMap<aya::maps::MapData, lb_common::maps::DecapKey, HopRoute>,
    hop: &str,
    v0: u32,
    v0_mac: [u8; 6],
) {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&HOP_MAC);
    macs[6..].copy_from_slice(&v0_mac);
    routes
        .insert(
            lb_common::maps::DecapKey::new(ip(hop)),
            HopRoute { ifindex: v0, macs },
            0,
        )
        .expect("hop route");
}

#[test]
fn the_backend_keeps_what_it_has_and_sends_the_rest_on_to_the_hop() {
    let (ns, v0_mac) = decap_namespace("schance");
    ns.run(|| {
        let DecapLab {
            mut lab,
            v0,
            mut routes,
            _pass,
        } = DecapLab::new(v0_mac);
        let mut neighbours = lab.datapath.take_hop_neighbours().expect("hop queue");
        let counter =
            |lab: &mut PacketLab, counter| lab.datapath.decap_counter(counter).expect("counter");

        let listener = TcpListener::bind((ip(VIP), 80)).expect("listen on the vip");
        let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        client
            .bind(&SocketAddr::new(ip(CLIENT4), 43_000).into())
            .expect("bind the client");
        client
            .connect(&SocketAddr::new(ip(VIP), 80).into())
            .expect("connect");
        let client: TcpStream = client.into();
        let (_server, _) = listener.accept().expect("accept");

        // Established here: kept, the tunnel stripped.
        let ours = Frame::ack(CLIENT4, 43_000, VIP, 80);
        let sent = tunnel_to_here(&ours, HOP);
        let (action, out) = decap_on(&mut lab, v0, &sent);
        assert_eq!(action, verdict::PASS);
        assert_eq!(out, stripped(&sent, &ours), "the inner packet");
        assert_eq!(counter(&mut lab, DecapCounter::HopLocal), 1);

        // A SYN is this host's whatever it has.
        let syn = Frame::syn(CLIENT4, 43_001, VIP, 80);
        let sent = tunnel_to_here(&syn, HOP);
        let (action, out) = decap_on(&mut lab, v0, &sent);
        assert_eq!((action, out), (verdict::PASS, stripped(&sent, &syn)));
        assert_eq!(counter(&mut lab, DecapCounter::HopLocal), 2);

        // No connection here (the listener's SYN cookie does not vouch for a random ACK, and
        // port 81 has no listener): sent on to the hop.
        for port in [80, 81] {
            let theirs = Frame::ack(CLIENT4, 43_002, VIP, port);
            let sent = tunnel_to_here(&theirs, HOP);
            let (action, out) = decap_on(&mut lab, v0, &sent);
            assert_eq!(action, verdict::TX, "back out of v0, the hop's interface");
            let mut expected = sent.clone();
            expected[..6].copy_from_slice(&HOP_MAC);
            expected[6..12].copy_from_slice(&v0_mac);
            expected[14 + 12..14 + 16].copy_from_slice(&ip_octets(HERE));
            expected[14 + 16..14 + 20].copy_from_slice(&ip_octets(HOP));
            expected[14 + 24..14 + 28].copy_from_slice(&[0; 4]);
            expected[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
            let parsed = etherparse::Ipv4HeaderSlice::from_slice(&expected[14..42]).expect("outer");
            let check = parsed.to_header().calc_header_checksum();
            expected[14 + 10..14 + 12].copy_from_slice(&check.to_be_bytes());
            assert_eq!(out, expected, "port {port}: to the hop, the hop cleared");
            frames::verify_checksums(&out);
        }
        assert_eq!(counter(&mut lab, DecapCounter::HopForwarded), 2);

        // At the hop, a cleared hop is an ordinary tunnel: stripped.
        let arrived = frames::with_hop(
            &frames::tunnel(
                &ours.build(),
                LB_MAC,
                ip(TUNNEL_SOURCE_V4),
                ip(HERE),
                &ours.flow_key(),
            ),
            14,
            ip("0.0.0.0"),
        );
        let (action, out) = decap_on(&mut lab, v0, &arrived);
        assert_eq!((action, out), (verdict::PASS, stripped(&arrived, &ours)));
        assert_eq!(counter(&mut lab, DecapCounter::Decapsulated), 1);

        // A hop that is this host: kept, never looped.
        let theirs = Frame::ack(CLIENT4, 43_003, VIP, 80);
        let sent = tunnel_to_here(&theirs, HERE);
        let (action, out) = decap_on(&mut lab, v0, &sent);
        assert_eq!((action, out), (verdict::PASS, stripped(&sent, &theirs)));
        assert_eq!(counter(&mut lab, DecapCounter::HopNotTaken), 1);

        // A hop without a route yet: dropped (TCP sends it again) and queued for lb decap.
        let (action, _) = decap_on(&mut lab, v0, &tunnel_to_here(&theirs, UNKNOWN_HOP));
        assert_eq!(action, verdict::DROP);
        assert_eq!(counter(&mut lab, DecapCounter::HopUnresolved), 1);
        let queued = neighbours.pop(0).expect("a queued hop");
        assert_eq!(queued[0].to_ne_bytes(), ip_octets(UNKNOWN_HOP));

        // IPv6 outside (a 4in6 tunnel): sent on to the hop, the destination options' hop
        // cleared.
        add_route(&mut routes, HOP6, v0, v0_mac);
        let theirs = Frame::ack(CLIENT4, 43_004, VIP, 80);
        let plain = frames::tunnel(
            &theirs.build(),
            [0x02, 0, 0, 0, 0, 0x11],
            ip(TUNNEL_SOURCE_V6),
            ip(HERE6),
            &theirs.flow_key(),
        );
        let sent = frames::with_hop(&plain, 14, ip(HOP6));
        let (action, out) = decap_on(&mut lab, v0, &sent);
        assert_eq!(action, verdict::TX);
        let mut expected = sent.clone();
        expected[..6].copy_from_slice(&HOP_MAC);
        expected[6..12].copy_from_slice(&v0_mac);
        let octets = |address: &str| match ip(address) {
            IpAddr::V6(v6) => v6.octets(),
            IpAddr::V4(_) => panic!("an IPv6 address"),
        };
        expected[14 + 8..14 + 24].copy_from_slice(&octets(HERE6));
        expected[14 + 24..14 + 40].copy_from_slice(&octets(HOP6));
        expected[14 + 48..14 + 64].copy_from_slice(&[0; 16]);
        assert_eq!(out, expected, "to the IPv6 hop, the hop cleared");
        assert_eq!(counter(&mut lab, DecapCounter::HopForwarded), 3);
        drop(client);
    });
}

fn ip_octets(address: &str) -> [u8; 4] {
    match ip(address) {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => panic!("an IPv4 address"),
    }
}

/// The SYN cookie branch: with `tcp_syncookies = 2` the listener answers every SYN with a
/// cookie and keeps no state. The client's ACK of that cookie has no socket yet, but
/// `bpf_tcp_check_syncookie` vouches for it: kept. An ACK with a wrong cookie is sent on.
#[test]
fn an_ack_of_a_syn_cookie_stays_on_the_backend() {
    use std::io::Read as _;

    let (ns, v0_mac) = decap_namespace("schance-cookie");
    ns.sysctl("net.ipv4.tcp_syncookies", "2");
    ns.run(|| {
        // (Every map the program uses must outlive it: keep the routes.)
        let DecapLab {
            mut lab,
            v0,
            routes: _routes,
            _pass,
        } = DecapLab::new(v0_mac);
        let _listener = TcpListener::bind((ip(VIP), 80)).expect("listen on the vip");

        // A SYN from the client's address, sent raw; the SYN-ACK's sequence is the cookie.
        // (The raw socket is read through a `TcpStream`, which only calls read(2) on it.)
        let tcp = socket2::Protocol::from(libc::IPPROTO_TCP);
        let receiver = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(tcp))
            .expect("raw socket");
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        let raw = socket2::Protocol::from(libc::IPPROTO_RAW);
        let sender = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(raw))
            .expect("raw socket");
        let port = 43_010;
        let syn = Frame::syn(CLIENT4, port, VIP, 80).build();
        sender
            .send_to(&syn[14..], &SocketAddr::new(ip(VIP), 0).into())
            .expect("send the syn");
        let mut receiver: std::net::TcpStream = receiver.into();
        let cookie = loop {
            let mut packet = [0u8; 1500];
            let length = receiver.read(&mut packet).expect("a syn-ack");
            let header = usize::from(packet[0] & 0x0f) * 4;
            let segment = &packet[header..length];
            let from_vip = packet[12..16] == ip_octets(VIP);
            let ports = [
                u16::from_be_bytes([segment[0], segment[1]]),
                u16::from_be_bytes([segment[2], segment[3]]),
            ];
            if from_vip && ports == [80, port] && segment[13] & 0x12 == 0x12 {
                break u32::from_be_bytes([segment[4], segment[5], segment[6], segment[7]]);
            }
        };
        let ack = |acknowledged: u32| {
            let mut bytes = Vec::new();
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], LB_MAC)
                .ipv4(ip_octets(CLIENT4), ip_octets(VIP), 64)
                .tcp(port, 80, 1001, 64240)
                .ack(acknowledged)
                .write(&mut bytes, &[])
                .expect("ack");
            let plain = frames::tunnel(
                &bytes,
                [0x02, 0, 0, 0, 0, 0x11],
                ip(TUNNEL_SOURCE_V4),
                ip(HERE),
                &Frame::ack(CLIENT4, port, VIP, 80).flow_key(),
            );
            frames::with_hop(&plain, 14, ip(HOP))
        };
        let (action, _) = decap_on(&mut lab, v0, &ack(cookie.wrapping_add(1)));
        assert_eq!(action, verdict::PASS, "the cookie's ACK is this host's");
        assert_eq!(
            lab.datapath
                .decap_counter(DecapCounter::HopLocal)
                .expect("counter"),
            1
        );
        // (The low bits encode the MSS, and a neighbouring value may be another valid one:
        // change the cookie's age bits instead.)
        let (action, _) = decap_on(&mut lab, v0, &ack(cookie.wrapping_add(0x4000_0001)));
        assert_eq!(action, verdict::TX, "a wrong cookie is sent on to the hop");
        assert_eq!(
            lab.datapath
                .decap_counter(DecapCounter::HopForwarded)
                .expect("counter"),
            1
        );
    });
}

/// A backend whose `lb decap` predates second chance (release a4d45e0, `tests/data/`) does
/// not know the hop option: it passes such a packet up untouched (the kernel, without a tunnel
/// device, drops it), as it did for any tunnel with options. Only packets of connections whose
/// slot moved carry a hop, and those broke before second chance too; plain tunnels still work.
#[test]
fn an_older_decap_passes_a_packet_with_a_hop_up_untouched() {
    use aya::{
        maps::HashMap,
        programs::{TestRun as _, TestRunOptions, Xdp},
        EbpfLoader,
    };
    use lb_tests::netns::previous::Release;

    let mut ebpf = EbpfLoader::new()
        .load(Release::V2.object())
        .expect("load release a4d45e0's object");
    let mut addresses: HashMap<_, lb_common::maps::DecapKey, u8> =
        HashMap::try_from(ebpf.map_mut("DECAP_ADDRS").expect("DECAP_ADDRS")).expect("DECAP_ADDRS");
    addresses
        .insert(lb_common::maps::DecapKey::new(ip(HERE)), 1, 0)
        .expect("decap address");
    let program: &mut Xdp = ebpf
        .program_mut("decap")
        .expect("decap")
        .try_into()
        .expect("an XDP program");
    program.load().expect("verifier");
    let run = |frame: &[u8]| {
        let mut out = vec![0u8; frame.len() + 64];
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.data_out = Some(&mut out);
        let result = program.test_run(options).expect("test run");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    };
    let ack = Frame::ack(CLIENT4, 44_000, VIP, 80);
    let with_hop = tunnel_to_here(&ack, HOP);
    assert_eq!(
        run(&with_hop),
        (verdict::PASS, with_hop.clone()),
        "untouched"
    );
    let plain = frames::tunnel(
        &ack.build(),
        [0x02, 0, 0, 0, 0, 0x11],
        ip(TUNNEL_SOURCE_V4),
        ip(HERE),
        &ack.flow_key(),
    );
    let (action, out) = run(&plain);
    assert_eq!(action, verdict::PASS);
    assert_eq!(
        out,
        stripped(&plain, &ack),
        "a plain tunnel is stripped as before"
    );
}
