//! The datapath's packet fixture table: every row is one frame through the real XDP program
//! (`BPF_PROG_TEST_RUN`), with the verdict and the exact output frame it must produce.
//!
//! Expected backends come from userspace's prediction (`flow_hash` over the ring the lab wrote),
//! so each forwarding row also proves that kernel and userspace agree.
//!
//! The table is one `#[test]` per group of rows (`dsr_v4`, `tunnel_mtu`, `icmp_errors`,
//! `decap`, ...), so a group can be run alone: `cargo test -p lb-tests --test packets icmp`.
//! Every row runs on a fresh lab; a group reports all its failing rows at once.

use lb_common::{
    maps::BackendState,
    stats::{Counter, Counter as C},
};
use lb_tests::packet::{
    frames::{self, ip, Frame, Ipv6Ext},
    lab::{backend_mac, backend_of, verdict, PacketLab, TUNNEL_SOURCE_V4, TUNNEL_SOURCE_V6},
};
use lb_user::datapath::Program;

/// What a row expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// `XDP_PASS` with the frame untouched.
    Pass,
    /// `XDP_DROP`.
    Drop,
    /// `XDP_TX` to the backend the VIP's ring gives the flow, rewritten for the VIP's mode.
    Forward,
    /// `XDP_TX` to the backend `before` returned (a tracked flow), rewritten for the VIP's mode.
    ForwardTracked,
    /// `decap`: `XDP_PASS` with the outer header stripped.
    Decapsulated,
    /// The kernel refuses to run XDP on the frame (shorter than an Ethernet header).
    Rejected,
}

/// Arranges state before the row's frame; returns the backend the flow is tracked to, if any.
type Before = fn(&mut PacketLab, &Frame) -> Option<u32>;

struct Case {
    what: &'static str,
    program: Program,
    input: Frame,
    /// Overrides the built input bytes (raw edits etherparse cannot express).
    raw: Option<fn(Vec<u8>) -> Vec<u8>>,
    before: Option<Before>,
    expect: Expect,
    /// A global counter the row's frame must bump by exactly one.
    counter: Option<Counter>,
}

fn case(what: &'static str, input: Frame, expect: Expect, counter: Option<Counter>) -> Case {
    Case {
        what,
        program: Program::Balancer,
        input,
        raw: None,
        before: None,
        expect,
        counter,
    }
}

impl Case {
    fn before(mut self, before: Before) -> Self {
        self.before = Some(before);
        self
    }
    fn raw(mut self, raw: fn(Vec<u8>) -> Vec<u8>) -> Self {
        self.raw = Some(raw);
        self
    }
    fn decap(mut self) -> Self {
        self.program = Program::Decap;
        self
    }
}

const CLIENT4: &str = "198.51.100.7";
const CLIENT6: &str = "2001:db8:c::7";

/// IPv4 to DSR VIPs: TCP from the ring and from conntrack, UDP.
#[test]
fn dsr_v4() {
    use Expect::*;
    run_rows(vec![
        case(
            "TCP SYN to an IPv4 DSR VIP goes to its ring's backend",
            Frame::syn(CLIENT4, 40000, "10.0.0.100", 80),
            Forward,
            Some(C::Tx),
        ),
        case(
            "TCP ACK of an untracked IPv4 flow is hashed like its SYN",
            Frame::ack(CLIENT4, 40000, "10.0.0.100", 80),
            Forward,
            Some(C::Tx),
        ),
        case(
            "TCP ACK after the SYN hits conntrack and stays",
            Frame::ack(CLIENT4, 40010, "10.0.0.100", 80),
            ForwardTracked,
            Some(C::Tx),
        )
        .before(track),
        case(
            "UDP to an IPv4 DSR VIP",
            Frame::udp(CLIENT4, 5353, "10.0.0.100", 53),
            Forward,
            Some(C::Tx),
        ),
    ]);
}

/// IPv6 to DSR VIPs.
#[test]
fn dsr_v6() {
    use Expect::*;
    run_rows(vec![
        case(
            "TCP SYN to an IPv6 DSR VIP",
            Frame::syn(CLIENT6, 40000, "fd00::100", 80),
            Forward,
            Some(C::Tx),
        ),
        case(
            "TCP ACK with payload to an IPv6 DSR VIP",
            Frame::ack(CLIENT6, 40001, "fd00::100", 80),
            Forward,
            Some(C::Tx),
        ),
        case(
            "UDP to an IPv6 DSR VIP",
            Frame::udp(CLIENT6, 5353, "fd00::100", 53),
            Forward,
            Some(C::Tx),
        ),
    ]);
}

/// Tunnel VIPs whose backends have the VIP's family.
#[test]
fn tunnel_ipip_and_ip6ip6() {
    use Expect::*;
    run_rows(vec![
        case(
            "TCP SYN to an IPv4 tunnel VIP is IPIP-encapsulated",
            Frame::syn(CLIENT4, 40000, "10.0.0.200", 80),
            Forward,
            Some(C::Tx),
        ),
        case(
            "TCP ACK with payload to an IPv4 tunnel VIP",
            Frame::ack(CLIENT4, 40001, "10.0.0.200", 80),
            Forward,
            Some(C::Tx),
        ),
        case(
            "TCP SYN to an IPv6 tunnel VIP is IP6IP6-encapsulated",
            Frame::syn(CLIENT6, 40000, "fd00::200", 80),
            Forward,
            Some(C::Tx),
        ),
    ]);
}

/// Tunnel VIPs whose backends have the other family.
#[test]
fn tunnel_4in6_and_6in4() {
    use Expect::*;
    run_rows(vec![
        case(
            "IPv4 VIP with an IPv6 backend is 4in6-encapsulated",
            Frame::ack(CLIENT4, 40000, "10.0.0.210", 80),
            Forward,
            Some(C::Tx),
        ),
        case(
            "IPv6 VIP with an IPv4 backend is 6in4-encapsulated",
            Frame::ack(CLIENT6, 40000, "fd00::210", 80),
            Forward,
            Some(C::Tx),
        ),
    ]);
}

/// What the outer header copies from the inner packet, and its length.
#[test]
fn tunnel_header_fields() {
    use Expect::*;
    let mut dscp = Frame::ack(CLIENT4, 40005, "10.0.0.200", 80);
    dscp.dscp = 46;
    let mut no_df = Frame::ack(CLIENT4, 40006, "10.0.0.200", 80);
    no_df.dont_fragment = false;
    run_rows(vec![
        case(
            "tunnel copies DSCP into the outer header",
            dscp,
            Forward,
            Some(C::Tx),
        ),
        case(
            "tunnel copies a clear DF bit into the outer header",
            no_df,
            Forward,
            Some(C::Tx),
        ),
        case(
            "short frame with Ethernet padding: tunnel length from the IP header",
            Frame::syn(CLIENT4, 40007, "10.0.0.200", 80),
            Forward,
            Some(C::Tx),
        )
        .raw(pad_to_60),
    ]);
}

/// The egress MTU: the largest packet that fits, and one byte more.
#[test]
fn tunnel_mtu() {
    use Expect::*;
    run_rows(vec![
        case(
            "a tunnelled packet that would exceed the MTU is dropped",
            Frame::ack(CLIENT4, 40000, "10.0.0.200", 80).with_payload(1500 - 20 - 20 - 19),
            Drop,
            Some(C::TooBig),
        ),
        case(
            "the largest tunnelled packet that fits the MTU is forwarded",
            Frame::ack(CLIENT4, 40000, "10.0.0.200", 80).with_payload(1500 - 20 - 20 - 20),
            Forward,
            Some(C::Tx),
        ),
    ]);
}

/// A port-0 VIP matches every port of its protocol, and only that protocol.
#[test]
fn all_ports_vip() {
    use Expect::*;
    run_rows(vec![
        case(
            "any port reaches an all-ports VIP",
            Frame::syn(CLIENT4, 40000, "10.0.0.150", 31337),
            Forward,
            Some(C::Tx),
        ),
        case(
            "a UDP packet to an all-ports TCP VIP is not the VIP's",
            Frame::udp(CLIENT4, 40000, "10.0.0.150", 31337),
            Pass,
            Some(C::NotVip),
        ),
    ]);
}

/// Addresses, ports and protocols no VIP matches are passed untouched.
#[test]
fn not_a_vip() {
    use Expect::*;
    run_rows(vec![
        case(
            "an address that is not a VIP is passed untouched",
            Frame::syn(CLIENT4, 40000, "10.0.0.99", 80),
            Pass,
            Some(C::NotVip),
        ),
        case(
            "a VIP address on another port is passed untouched",
            Frame::syn(CLIENT4, 40000, "10.0.0.100", 8080),
            Pass,
            Some(C::NotVip),
        ),
        case(
            "UDP to a TCP-only VIP port is passed untouched",
            Frame::udp(CLIENT4, 40000, "10.0.0.100", 80),
            Pass,
            Some(C::NotVip),
        ),
        case(
            "an IPv6 address that is not a VIP is passed untouched",
            Frame::syn(CLIENT6, 40000, "fd00::99", 80),
            Pass,
            Some(C::NotVip),
        ),
    ]);
}

/// Only frames for this host are balanced: another host's (a bridge flooding frames for a dead
/// instance's port, a promiscuous NIC) pass untouched, so two instances never both forward one
/// packet; broadcast and multicast frames are this host's too.
#[test]
fn other_hosts_frames() {
    use Expect::*;
    const DEAD_INSTANCE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x2b];
    run_rows(vec![
        case(
            "a SYN to a DSR VIP addressed to another host's MAC is passed untouched",
            Frame::syn(CLIENT4, 40000, "10.0.0.100", 80).to_mac(DEAD_INSTANCE),
            Pass,
            Some(C::OtherMac),
        ),
        case(
            "an established flow to a tunnel VIP addressed to another host's MAC is passed",
            Frame::ack(CLIENT6, 40000, "fd00::200", 80).to_mac(DEAD_INSTANCE),
            Pass,
            Some(C::OtherMac),
        ),
        case(
            "a broadcast-addressed SYN to a DSR VIP is balanced",
            Frame::syn(CLIENT4, 40000, "10.0.0.100", 80).to_mac([0xff; 6]),
            Forward,
            Some(C::Tx),
        ),
        case(
            "a multicast-addressed SYN to a DSR VIP is balanced",
            Frame::syn(CLIENT4, 40000, "10.0.0.100", 80).to_mac([0x01, 0, 0x5e, 0, 0, 1]),
            Forward,
            Some(C::Tx),
        ),
    ]);
}

/// One 802.1Q tag: kept, with the tunnel header after it.
#[test]
fn vlan() {
    use Expect::*;
    run_rows(vec![
        case(
            "802.1Q-tagged TCP to a DSR VIP keeps its tag",
            Frame::syn(CLIENT4, 40000, "10.0.0.100", 80).with_vlan(42),
            Forward,
            Some(C::Tx),
        ),
        case(
            "802.1Q-tagged UDP to an IPv6 VIP keeps its tag",
            Frame::udp(CLIENT6, 40000, "fd00::100", 53).with_vlan(4094),
            Forward,
            Some(C::Tx),
        ),
        case(
            "802.1Q-tagged traffic to a tunnel VIP: tag kept, outer header after it",
            Frame::ack(CLIENT4, 40000, "10.0.0.200", 80).with_vlan(7),
            Forward,
            Some(C::Tx),
        ),
        case(
            "802.1Q-tagged traffic to a non-VIP is passed",
            Frame::syn(CLIENT4, 40000, "10.0.0.99", 80).with_vlan(7),
            Pass,
            Some(C::NotVip),
        ),
    ]);
}

/// IPv4 options: the transport header is read after them.
#[test]
fn ipv4_options() {
    use Expect::*;
    let mut v4_options = Frame::syn(CLIENT4, 40001, "10.0.0.100", 80);
    v4_options.ipv4_options = vec![0x94, 0x04, 0, 0, 1, 1, 1, 0]; // router alert + NOPs + EOL
    let mut v4_max_options = Frame::ack(CLIENT4, 40002, "10.0.0.200", 80);
    v4_max_options.ipv4_options = vec![1; 40]; // IHL 15
    run_rows(vec![
        case(
            "IPv4 options (IHL 7) are honoured: ports read after them",
            v4_options,
            Forward,
            Some(C::Tx),
        ),
        case(
            "IPv4 with 40 bytes of options (IHL 15) through a tunnel",
            v4_max_options,
            Forward,
            Some(C::Tx),
        ),
    ]);
}

/// IPv4 fragments, first and later, are passed.
#[test]
fn ipv4_fragments() {
    use Expect::*;
    let mut first_fragment = Frame::udp(CLIENT4, 40003, "10.0.0.100", 53);
    first_fragment.more_fragments = true;
    first_fragment.dont_fragment = false;
    let mut later_fragment = Frame::udp(CLIENT4, 40003, "10.0.0.100", 53);
    later_fragment.fragment_offset = 100;
    later_fragment.dont_fragment = false;
    run_rows(vec![
        case(
            "first IPv4 fragment is passed and counted",
            first_fragment,
            Pass,
            Some(C::Fragment),
        ),
        case(
            "later IPv4 fragment is passed and counted",
            later_fragment,
            Pass,
            Some(C::Fragment),
        ),
    ]);
}

/// IPv6 with extension headers is passed.
#[test]
fn ipv6_extension_headers() {
    use Expect::*;
    let with_ext = |ext| {
        let mut frame = Frame::syn(CLIENT6, 40004, "fd00::100", 80);
        frame.ipv6_ext = Some(ext);
        frame
    };
    run_rows(vec![
        case(
            "IPv6 hop-by-hop options are passed and counted",
            with_ext(Ipv6Ext::HopByHop),
            Pass,
            Some(C::Ipv6ExtensionHeader),
        ),
        case(
            "IPv6 routing header is passed and counted",
            with_ext(Ipv6Ext::Routing),
            Pass,
            Some(C::Ipv6ExtensionHeader),
        ),
        case(
            "IPv6 fragment header is passed and counted",
            with_ext(Ipv6Ext::Fragment),
            Pass,
            Some(C::Ipv6ExtensionHeader),
        ),
        case(
            "IPv6 destination options are passed and counted",
            with_ext(Ipv6Ext::DestinationOptions),
            Pass,
            Some(C::Ipv6ExtensionHeader),
        ),
    ]);
}

/// Neither TCP nor UDP: ARP, ICMP echo.
#[test]
fn other_protocols() {
    use Expect::*;
    run_rows(vec![
        case(
            "ARP is passed untouched",
            Frame::syn(CLIENT4, 1, "10.0.0.100", 80),
            Pass,
            Some(C::NotIp),
        )
        .raw(as_arp),
        case(
            "ICMP to a VIP address is passed to the host",
            Frame::syn(CLIENT4, 1, "10.0.0.100", 80),
            Pass,
            Some(C::NotTcpUdp),
        )
        .raw(as_icmp),
    ]);
}

/// Malformed headers are dropped; frames shorter than Ethernet never reach XDP.
#[test]
fn malformed() {
    use Expect::*;
    run_rows(vec![
        case(
            "IPv4 header with version 6 is dropped",
            Frame::syn(CLIENT4, 1, "10.0.0.100", 80),
            Drop,
            Some(C::ParseError),
        )
        .raw(bad_version),
        case(
            "IPv4 header with IHL 4 is dropped",
            Frame::syn(CLIENT4, 1, "10.0.0.100", 80),
            Drop,
            Some(C::ParseError),
        )
        .raw(ihl_4),
        case(
            "IPv4 total length beyond the frame is dropped",
            Frame::syn(CLIENT4, 1, "10.0.0.100", 80),
            Drop,
            Some(C::ParseError),
        )
        .raw(long_total_length),
        case(
            "a zero-length frame is refused by the kernel (XDP never sees < 14 bytes)",
            Frame::syn(CLIENT4, 1, "10.0.0.100", 80),
            Rejected,
            None,
        )
        .raw(|_| Vec::new()),
    ]);
}

/// Backends down or draining: no backend, re-hash, tracked flows kept, SYNs to the ring.
#[test]
fn backend_states() {
    use Expect::*;
    run_rows(vec![
        case(
            "all backends down: dropped and counted",
            Frame::syn(CLIENT4, 40000, "10.0.0.160", 80),
            Drop,
            Some(C::NoBackend),
        ),
        case(
            "tracked flow whose backend is down is re-hashed",
            Frame::ack(CLIENT4, 40021, "10.0.0.100", 80),
            Forward,
            Some(C::Rehashed),
        )
        .before(track_then_down),
        case(
            "tracked flow whose backend is draining stays",
            Frame::ack(CLIENT4, 40022, "10.0.0.100", 80),
            ForwardTracked,
            Some(C::Tx),
        )
        .before(track_then_drain),
        case(
            "a SYN on a tracked tuple of a draining backend picks from the ring",
            Frame::syn(CLIENT4, 40022, "10.0.0.100", 80),
            Forward,
            Some(C::Tx),
        )
        .before(track_then_drain),
    ]);
}

/// Ring swaps: tracked flows stay, SYNs take the new ring.
#[test]
fn ring_swaps() {
    use Expect::*;
    run_rows(vec![
        case(
            "tracked flow stays on its backend after a ring swap",
            Frame::ack(CLIENT4, 40020, "10.0.0.100", 80),
            ForwardTracked,
            Some(C::Tx),
        )
        .before(track_then_swap),
        case(
            "tracked tunnel flow stays after a ring swap (IPv6)",
            Frame::ack(CLIENT6, 40023, "fd00::200", 80),
            ForwardTracked,
            Some(C::Tx),
        )
        .before(track_then_swap),
        case(
            "a SYN on a tracked IPv6 tuple picks from the ring (new ring after a swap)",
            Frame::syn(CLIENT6, 40024, "fd00::100", 80),
            Forward,
            Some(C::Tx),
        )
        .before(track_then_swap),
    ]);
}

/// ICMP errors about a VIP's flows follow the flow; others are passed or dropped.
#[test]
fn icmp_errors() {
    use Expect::*;
    run_rows(vec![
        case(
            "ICMP fragmentation-needed about a DSR flow's answer reaches the flow's backend",
            Frame::ack(CLIENT4, 40030, "10.0.0.100", 80),
            Forward,
            Some(C::IcmpError),
        )
        .raw(icmp_error),
        case(
            "ICMPv6 packet-too-big about a UDP flow's answer reaches the flow's backend",
            Frame::udp(CLIENT6, 5353, "fd00::100", 53),
            Forward,
            Some(C::IcmpError),
        )
        .raw(icmp_error),
        case(
            "ICMP error about a tracked flow follows it to its backend after a ring swap",
            Frame::ack(CLIENT6, 40031, "fd00::100", 80),
            ForwardTracked,
            Some(C::IcmpError),
        )
        .before(track_then_swap)
        .raw(icmp_error),
        case(
            "ICMP error about a tunnel VIP's flow is encapsulated to the flow's backend",
            Frame::ack(CLIENT4, 40032, "10.0.0.200", 80),
            Forward,
            Some(C::IcmpError),
        )
        .raw(icmp_error),
        case(
            "ICMP error to one address quoting another's packet is passed to the host",
            Frame::ack(CLIENT4, 40033, "10.0.0.100", 80),
            Pass,
            Some(C::NotTcpUdp),
        )
        .raw(icmp_error_to_another_vip),
        case(
            "ICMP error quoting less than both ports is dropped",
            Frame::ack(CLIENT4, 40034, "10.0.0.100", 80),
            Drop,
            Some(C::ParseError),
        )
        .raw(icmp_error_short_quote),
    ]);
}

/// The `decap` program.
#[test]
fn decap() {
    use Expect::*;
    run_rows(vec![
        case(
            "decap strips IPIP addressed to us",
            Frame::ack(CLIENT4, 40000, "10.0.0.200", 80),
            Decapsulated,
            None,
        )
        .raw(encapsulated_v4)
        .decap(),
        case(
            "decap strips IP6IP6 addressed to us",
            Frame::ack(CLIENT6, 40000, "fd00::200", 80),
            Decapsulated,
            None,
        )
        .raw(encapsulated_v6)
        .decap(),
        case(
            "decap strips 6in4 addressed to us",
            Frame::ack(CLIENT6, 40000, "fd00::210", 80),
            Decapsulated,
            None,
        )
        .raw(encapsulated_6in4)
        .decap(),
        case(
            "decap keeps a VLAN tag",
            Frame::ack(CLIENT4, 40000, "10.0.0.200", 80).with_vlan(9),
            Decapsulated,
            None,
        )
        .raw(encapsulated_v4)
        .decap(),
        case(
            "decap passes IPIP addressed to another host untouched",
            Frame::ack(CLIENT4, 40000, "10.0.0.200", 80),
            Pass,
            None,
        )
        .raw(encapsulated_elsewhere)
        .decap(),
        case(
            "decap passes plain TCP untouched",
            Frame::ack(CLIENT4, 40000, "10.0.0.100", 80),
            Pass,
            None,
        )
        .decap(),
        case(
            "decap drops IPIP whose inner header is not IPv4",
            Frame::ack(CLIENT4, 40000, "10.0.0.200", 80),
            Drop,
            None,
        )
        .raw(encapsulated_bad_inner)
        .decap(),
    ]);
}

/// Runs every row, then fails listing each row that failed and why.
fn run_rows(rows: Vec<Case>) {
    let mut failures = Vec::new();
    for case in rows {
        if let Err(error) = std::panic::catch_unwind(|| run_case(&case)) {
            let message = error
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| error.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {message}", case.what));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn run_case(case: &Case) {
    let mut lab = PacketLab::standard();
    let tracked = case.before.and_then(|before| before(&mut lab, &case.input));
    let mut input = case.input.build();
    if let Some(raw) = case.raw {
        input = raw(input);
    }
    let before = case
        .counter
        .map(|c| lab.datapath.counter(c).expect("counter"));
    let result = lab.run_program(case.program, &input);
    if let Expect::Rejected = case.expect {
        assert!(
            result.is_err(),
            "the kernel ran the program on a {}-byte frame",
            input.len()
        );
        return;
    }
    let (verdict, output) = result.expect("test run");
    assert_ne!(verdict, verdict::ABORTED, "XDP_ABORTED");
    match case.expect {
        Expect::Pass => {
            assert_eq!(verdict, verdict::PASS, "verdict");
            assert_eq!(output, input, "a passed frame must be untouched");
        }
        Expect::Drop => assert_eq!(verdict, verdict::DROP, "verdict"),
        Expect::Forward | Expect::ForwardTracked => {
            assert_eq!(verdict, verdict::TX, "verdict");
            let backend = if let Expect::ForwardTracked = case.expect {
                tracked.expect("row has no tracked backend")
            } else {
                predicted_backend(&lab, &case.input)
            };
            assert_eq!(backend_of(&output), backend, "backend");
            assert_eq!(
                output,
                forwarded(&lab, &case.input, &input, backend),
                "output frame"
            );
            frames::verify_checksums(&output);
        }
        Expect::Decapsulated => {
            assert_eq!(verdict, verdict::PASS, "verdict");
            let original = case.input.build();
            assert_eq!(
                output,
                frames::dsr(&original, backend_mac(0xdeca)),
                "decapsulated frame"
            );
            frames::verify_checksums(&output);
        }
        Expect::Rejected => unreachable!(),
    }
    if let (Some(counter), Some(before)) = (case.counter, before) {
        let after = lab.datapath.counter(counter).expect("counter");
        assert_eq!(after - before, 1, "counter {}", counter.name());
    }
}

/// The lab VIP a frame is addressed to.
fn vip_of<'a>(lab: &'a PacketLab, frame: &Frame) -> &'a lb_tests::packet::lab::LabVip {
    let flow = frame.flow_key();
    lab.vips
        .values()
        .find(|v| {
            v.address == frame.dst
                && (v.port == frame.dst_port || v.port == 0)
                && v.protocol as u8 == flow.protocol
        })
        .unwrap_or_else(|| panic!("no lab VIP for {frame:?}"))
}

fn predicted_backend(lab: &PacketLab, frame: &Frame) -> u32 {
    lab.ring_backend(vip_of(lab, frame).id, &frame.flow_key())
}

/// The exact frame the program must emit for `input` sent to `backend`.
fn forwarded(lab: &PacketLab, frame: &Frame, input: &[u8], backend: u32) -> Vec<u8> {
    let vip = vip_of(lab, frame);
    let address = vip
        .backends
        .iter()
        .find(|(id, _)| *id == backend)
        .expect("backend of the VIP")
        .1;
    match vip.forward {
        lb_common::maps::ForwardMode::Dsr => frames::dsr(input, backend_mac(backend)),
        lb_common::maps::ForwardMode::Tunnel => {
            let source = if address.is_ipv4() {
                ip(TUNNEL_SOURCE_V4)
            } else {
                ip(TUNNEL_SOURCE_V6)
            };
            frames::tunnel(
                input,
                backend_mac(backend),
                source,
                address,
                &frame.flow_key(),
            )
        }
    }
}

/// Sends the flow's SYN; returns the backend it went to.
fn track(lab: &mut PacketLab, frame: &Frame) -> Option<u32> {
    let mut syn = frame.clone();
    syn.kind = frames::Kind::TcpSyn;
    syn.payload.clear();
    let (verdict, output) = lab.run(&syn.build()).expect("syn");
    assert_eq!(verdict, verdict::TX, "SYN verdict");
    Some(backend_of(&output))
}

/// The VIP's backends other than `tracked`.
fn others(lab: &PacketLab, frame: &Frame, tracked: u32) -> (u32, Vec<u32>) {
    let vip = vip_of(lab, frame);
    (
        vip.id,
        vip.backends
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| *id != tracked)
            .collect(),
    )
}

fn track_then_swap(lab: &mut PacketLab, frame: &Frame) -> Option<u32> {
    let tracked = track(lab, frame)?;
    let (vip, others) = others(lab, frame, tracked);
    lab.set_ring(vip, &others);
    Some(tracked)
}

fn track_then_down(lab: &mut PacketLab, frame: &Frame) -> Option<u32> {
    let tracked = track(lab, frame)?;
    let (vip, others) = others(lab, frame, tracked);
    lab.set_ring(vip, &others);
    lab.set_state(tracked, BackendState::Down);
    Some(tracked)
}

fn track_then_drain(lab: &mut PacketLab, frame: &Frame) -> Option<u32> {
    let tracked = track(lab, frame)?;
    let (vip, others) = others(lab, frame, tracked);
    lab.set_ring(vip, &others);
    lab.set_state(tracked, BackendState::Draining);
    Some(tracked)
}

fn pad_to_60(mut frame: Vec<u8>) -> Vec<u8> {
    assert!(frame.len() <= 60);
    frame.resize(60, 0xee);
    frame
}

/// An ARP request (etherparse 0.16 has no ARP builder; the 28-byte body is RFC 826).
fn as_arp(frame: Vec<u8>) -> Vec<u8> {
    let mut out = vec![0xff; 6];
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&0x0806u16.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet, IPv4, lengths, request
    out.extend_from_slice(&frames::CLIENT_MAC);
    out.extend_from_slice(&[198, 51, 100, 7]);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&[10, 0, 0, 100]);
    out
}

fn as_icmp(_: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(frames::CLIENT_MAC, frames::LB_MAC)
        .ipv4([198, 51, 100, 7], [10, 0, 0, 100], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut out, b"ping")
        .expect("icmp");
    out
}

/// An ICMP error about the answer of the frame's flow, quoting 64 bytes of it.
fn icmp_error(frame: Vec<u8>) -> Vec<u8> {
    frames::icmp_error_about_answer(&frame, 64, None)
}

fn icmp_error_to_another_vip(frame: Vec<u8>) -> Vec<u8> {
    frames::icmp_error_about_answer(&frame, 64, Some(ip("10.0.0.200")))
}

/// The quote ends after the IPv4 header and one port.
fn icmp_error_short_quote(frame: Vec<u8>) -> Vec<u8> {
    frames::icmp_error_about_answer(&frame, 22, None)
}

fn bad_version(mut frame: Vec<u8>) -> Vec<u8> {
    frame[14] = 0x65;
    frame
}

fn ihl_4(mut frame: Vec<u8>) -> Vec<u8> {
    frame[14] = 0x44;
    frame
}

fn long_total_length(mut frame: Vec<u8>) -> Vec<u8> {
    let len = (frame.len() - 14 + 1) as u16;
    frame[16..18].copy_from_slice(&len.to_be_bytes());
    frame
}

/// The frame as our own tunnel would deliver it to backend 0xdeca (whose address `decap`
/// accepts: see `decap_lab`).
fn encapsulate(frame: Vec<u8>, outer_source: &str, outer_destination: &str) -> Vec<u8> {
    let l2 = frames::l2_len(&frame);
    let inner_v4 = frame[l2] >> 4 == 4;
    let flow = if inner_v4 {
        lb_common::FlowKey::default()
    } else {
        lb_common::FlowKey {
            family: 6,
            ..Default::default()
        }
    };
    frames::tunnel(
        &frame,
        backend_mac(0xdeca),
        ip(outer_source),
        ip(outer_destination),
        &flow,
    )
}

fn encapsulated_v4(frame: Vec<u8>) -> Vec<u8> {
    encapsulate(frame, TUNNEL_SOURCE_V4, DECAP_V4)
}

fn encapsulated_v6(frame: Vec<u8>) -> Vec<u8> {
    encapsulate(frame, TUNNEL_SOURCE_V6, DECAP_V6)
}

fn encapsulated_6in4(frame: Vec<u8>) -> Vec<u8> {
    encapsulate(frame, TUNNEL_SOURCE_V4, DECAP_V4)
}

fn encapsulated_elsewhere(frame: Vec<u8>) -> Vec<u8> {
    encapsulate(frame, TUNNEL_SOURCE_V4, "10.1.0.99")
}

fn encapsulated_bad_inner(frame: Vec<u8>) -> Vec<u8> {
    let mut out = encapsulated_v4(frame);
    out[14 + 20] = 0x55; // inner "IPv5"
    out
}

const DECAP_V4: &str = "10.1.0.11";
const DECAP_V6: &str = "fd01::11";

#[test]
fn every_truncation_of_a_valid_frame_is_dropped_as_a_parse_error() {
    let mut lab = PacketLab::standard();
    let mut options = Frame::syn("198.51.100.7", 1, "10.0.0.100", 80);
    options.ipv4_options = vec![1; 12];
    let frames = [
        Frame::syn("198.51.100.7", 40000, "10.0.0.100", 80).build(),
        Frame::ack("2001:db8:c::7", 40000, "fd00::100", 80).build(),
        Frame::udp("198.51.100.7", 40000, "10.0.0.100", 53)
            .with_vlan(3)
            .build(),
        Frame::udp("2001:db8:c::7", 40000, "fd00::100", 53)
            .with_vlan(3)
            .build(),
        options.build(),
    ];
    for frame in frames {
        for len in 0..frame.len() {
            let truncated = &frame[..len];
            let before = lab.datapath.counter(Counter::ParseError).expect("counter");
            match lab.run(truncated) {
                Err(_) => assert!(len < 14, "the kernel refused a {len}-byte frame"),
                Ok((verdict, _)) => {
                    assert!(len >= 14, "the kernel ran XDP on a {len}-byte frame");
                    assert_eq!(verdict, verdict::DROP, "{len} of {} bytes", frame.len());
                    let after = lab.datapath.counter(Counter::ParseError).expect("counter");
                    assert_eq!(after - before, 1, "parse_error counter at {len} bytes");
                }
            }
        }
        let (verdict, _) = lab.run(&frame).expect("whole frame");
        assert_eq!(verdict, verdict::TX, "the untruncated frame is forwarded");
    }
}

#[test]
fn vip_and_backend_counters_follow_the_packets() {
    let mut lab = PacketLab::standard();
    let vip = lab.vip("web4").id;
    let syn = Frame::syn("198.51.100.7", 41000, "10.0.0.100", 80).build();
    let ack = Frame::ack("198.51.100.7", 41000, "10.0.0.100", 80).build();
    let (_, out) = lab.run(&syn).expect("syn");
    let backend = backend_of(&out);
    for _ in 0..3 {
        lab.run(&ack).expect("ack");
    }
    let stats = lab.datapath.vip_stats(vip).expect("vip stats");
    assert_eq!(stats.packets, 4);
    assert_eq!(stats.bytes, (syn.len() + 3 * ack.len()) as u64);
    assert_eq!(stats.new_flows, 1);
    assert_eq!(stats.conntrack_hits, 3);
    let backend_stats = lab.datapath.backend_stats(backend).expect("backend stats");
    assert_eq!(backend_stats.packets, 4);
    assert_eq!(backend_stats.new_flows, 1);
    assert_eq!(
        lab.datapath
            .conntrack(&Frame::ack("198.51.100.7", 41000, "10.0.0.100", 80).flow_key())
            .expect("ct"),
        Some(backend)
    );
}

#[test]
fn an_icmp_error_is_forwarded_without_tracking_its_flow() {
    let mut lab = PacketLab::standard();
    let vip = lab.vip("web4").id;
    let flow = Frame::ack("198.51.100.7", 41001, "10.0.0.100", 80);
    let error = frames::icmp_error_about_answer(&flow.build(), 64, None);
    let (verdict, out) = lab.run(&error).expect("icmp error");
    assert_eq!(verdict, verdict::TX);
    assert_eq!(
        backend_of(&out),
        lab.ring_backend(vip, &flow.flow_key()),
        "the flow's ring backend"
    );
    assert_eq!(
        lab.datapath.conntrack(&flow.flow_key()).expect("ct"),
        None,
        "an error message creates no entry"
    );
    let stats = lab.datapath.vip_stats(vip).expect("vip stats");
    assert_eq!((stats.packets, stats.new_flows), (1, 0));
}

/// Egress on another interface than the ingress: `XDP_REDIRECT` through `TX_PORTS`, and a drop
/// (counted) when the interface was never registered. Runs in its own namespace, where a veth
/// pair provides a real second interface.
#[test]
fn another_egress_interface_is_reached_by_redirect() {
    let netns = lb_tests::netns::Netns::new("redirect");
    netns.ip("link add out0 type veth peer name out1");
    netns.ip("link set out0 up");
    netns.ip("link set out1 up");
    let egress = netns.ifindex("out0");
    netns.run(|| {
        let mut lab = PacketLab::standard();
        let frame = Frame::syn("198.51.100.7", 42000, "10.0.0.100", 80);
        let input = frame.build();
        let vip = lab.vip("web4").clone();
        let backend = lab.ring_backend(vip.id, &frame.flow_key());
        let mut entry = lab.datapath.backend(backend).expect("backend");
        entry.ifindex = egress;
        lab.datapath
            .set_backend(backend, &entry)
            .expect("set backend");

        let before = lab
            .datapath
            .counter(Counter::RedirectFailed)
            .expect("counter");
        let (verdict, _) = lab.run(&input).expect("run");
        assert_eq!(verdict, verdict::DROP, "unregistered egress interface");
        assert_eq!(
            lab.datapath
                .counter(Counter::RedirectFailed)
                .expect("counter")
                - before,
            1
        );

        lab.datapath.add_tx_port(egress).expect("tx port");
        let (verdict, output) = lab.run(&input).expect("run");
        assert_eq!(verdict, verdict::REDIRECT);
        assert_eq!(output, frames::dsr(&input, backend_mac(backend)));
        assert!(lab.datapath.counter(Counter::Redirect).expect("counter") >= 1);
    });
}

/// 100k random frames (random bytes, and valid frames with random bytes flipped) through the
/// real program: every one gets a verdict, never XDP_ABORTED.
#[test]
fn random_frames_never_abort() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut lab = PacketLab::standard();
    let templates = [
        Frame::syn("198.51.100.7", 1, "10.0.0.200", 80).build(),
        Frame::ack("2001:db8:c::7", 1, "fd00::200", 80)
            .with_vlan(3)
            .build(),
        Frame::udp("198.51.100.7", 1, "10.0.0.100", 53).build(),
    ];
    for n in 0..100_000 {
        let frame: Vec<u8> = if n % 2 == 0 {
            (0..rng.gen_range(14..300)).map(|_| rng.gen()).collect()
        } else {
            let mut frame = templates[n % 3].clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(12..frame.len());
                frame[i] = rng.gen();
            }
            frame
        };
        let (verdict, _) = lab.run(&frame).expect("run");
        assert_ne!(
            verdict,
            verdict::ABORTED,
            "seed {seed}, frame {n}: {frame:02x?}"
        );
    }
}

/// The VIP index (`lb_common::vip_index`): with 1000 VIPs many keys share a slot, and some are
/// only found through `VIPS`; every VIP is matched by the kernel, nothing else is, and removed
/// VIPs stop matching while the others sharing their slot go on.
#[test]
fn the_vip_index_finds_every_vip_and_only_them() {
    use lb_common::{
        maps::{ForwardMode, Protocol, Vip, VipKey},
        vip_index::vip_hash,
    };
    use std::collections::BTreeMap;

    let mut lab = PacketLab::empty();
    let address = |i: u32| format!("10.{}.{}.1", i / 256, i % 256);
    let key = |i: u32| VipKey::new(ip(&address(i)), 80, Protocol::Tcp);
    let mut by_slot: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for i in 0..1000 {
        // No ring: a matched packet is dropped as no_backend, an unmatched one passed.
        lab.datapath
            .set_vip(&key(i), &Vip::new(i, 65537, ForwardMode::Dsr))
            .expect("set vip");
        by_slot.entry(vip_hash(&key(i)).slot).or_default().push(i);
    }
    assert!(by_slot.values().any(|ids| ids.len() > 1), "no shared slot");
    let matched = |lab: &mut PacketLab, i: u32| {
        let frame = Frame::syn(CLIENT4, 40000, &address(i), 80).build();
        let (verdict, _) = lab.run(&frame).expect("run");
        let other_port = Frame::syn(CLIENT4, 40000, &address(i), 81).build();
        assert_eq!(
            lab.run(&other_port).expect("run").0,
            verdict::PASS,
            "VIP {i} port 81"
        );
        verdict == verdict::DROP
    };
    for i in 0..1000 {
        assert!(matched(&mut lab, i), "VIP {i}");
    }
    // Remove the first VIP of every shared slot, and every other lone one.
    let removed: Vec<u32> = by_slot
        .values()
        .filter_map(|ids| (ids.len() > 1 || ids[0] % 2 == 0).then_some(ids[0]))
        .collect();
    for &i in &removed {
        lab.datapath.remove_vip(&key(i)).expect("remove vip");
    }
    for i in 0..1000 {
        assert_eq!(matched(&mut lab, i), !removed.contains(&i), "VIP {i}");
    }
    // Put them back, each under the id another one had: every entry gets a new key.
    for (n, &i) in removed.iter().enumerate() {
        let id = removed[(n + 1) % removed.len()];
        lab.datapath
            .set_vip(&key(i), &Vip::new(id, 65537, ForwardMode::Dsr))
            .expect("set vip");
    }
    for i in 0..1000 {
        assert!(matched(&mut lab, i), "VIP {i} after it came back");
    }
}

/// Connection tracking (`lb_common::conntrack`): five new flows (bare SYNs, unconfirmed) of one
/// set of four; the fifth takes the way of the flow seen longest ago (all are as recent here:
/// the first way), and the others stay tracked. Unconfirmed flows are never protected, so
/// nothing counts as untracked or as a protected flow evicted. (Established flows: `flood.rs`.)
#[test]
fn a_full_set_of_unconfirmed_flows_forgets_one_to_track_a_new_one() {
    use lb_common::conntrack::{conntrack_hash, set_index, sets_for};
    use lb_tests::packet::lab::LAB_CONNTRACK_SIZE;

    let mut lab = PacketLab::standard();
    let sets = sets_for(LAB_CONNTRACK_SIZE);
    let set_of = |port: u16| {
        let flow = Frame::syn(CLIENT4, port, "10.0.0.100", 80).flow_key();
        set_index(conntrack_hash(&flow), sets)
    };
    let target = set_of(40000);
    let ports: Vec<u16> = (40000..60000)
        .filter(|&port| set_of(port) == target)
        .take(5)
        .collect();
    assert_eq!(ports.len(), 5, "five flows of one set");
    for &port in &ports {
        let (verdict, _) = lab
            .run(&Frame::syn(CLIENT4, port, "10.0.0.100", 80).build())
            .expect("syn");
        assert_eq!(verdict, verdict::TX);
    }
    let tracked = |lab: &mut PacketLab, port: u16| {
        let flow = Frame::ack(CLIENT4, port, "10.0.0.100", 80).flow_key();
        lab.datapath.conntrack(&flow).expect("conntrack")
    };
    assert_eq!(
        tracked(&mut lab, ports[0]),
        None,
        "the first flow was forgotten"
    );
    for &port in &ports[1..] {
        assert!(tracked(&mut lab, port).is_some(), "port {port} tracked");
    }
    for counter in [Counter::ConntrackFull, Counter::ConntrackEvictedProtected] {
        assert_eq!(
            lab.datapath.counter(counter).expect("counter"),
            0,
            "{counter:?}"
        );
    }
    // A tracked flow's packets are hits, which establish them; the forgotten one's next
    // packet takes the ring, and finds its set full of established flows: it goes untracked.
    let vip = lab.vip("web4").id;
    let before = lab.datapath.vip_stats(vip).expect("vip stats");
    for &port in ports[1..].iter().chain(&ports[..1]) {
        lab.run(&Frame::ack(CLIENT4, port, "10.0.0.100", 80).build())
            .expect("ack");
    }
    let after = lab.datapath.vip_stats(vip).expect("vip stats");
    assert_eq!(after.conntrack_hits - before.conntrack_hits, 4);
    assert_eq!(after.new_flows - before.new_flows, 1);
    assert_eq!(
        tracked(&mut lab, ports[0]),
        None,
        "no room among established flows"
    );
    assert_eq!(
        lab.datapath
            .counter(Counter::ConntrackFull)
            .expect("counter"),
        1
    );
}
