//! Floods of new flows against the flow table (`FLOWS`, `lb_common::conntrack`): however many
//! new flows arrive, an established flow that is still active keeps its entry, so it keeps its
//! backend when the ring changes.
//!
//! Packet tests run the real program with `BPF_PROG_TEST_RUN` on a 1024-flow table: 100
//! established flows, then a million new flows from random sources; then flows aged past
//! their timeout (their stamps rewritten: the table's clock, controlled) become evictable, and
//! a set full of protected flows leaves a new flow untracked (counted) but forwarded. The
//! netns test is the scenario the table must survive: a SYN flood 300 times the table while a
//! backend rejoins, with 40 long-lived connections open through the real agent.

use lb_common::{
    conntrack::{stamp, FlowClass},
    stats::Counter,
    FlowKey,
};
use lb_tests::packet::{
    flood::FloodFrames,
    frames::Frame,
    lab::{backend_of, verdict, PacketLab},
};

/// The table of the packet tests: 256 sets of 4.
const TABLE: u32 = 1024;
/// Established flows in it.
const ESTABLISHED: u16 = 100;
/// New flows of a flood: ~1000 times the table.
const FLOOD: usize = 1_000_000;
/// The client of the established flows.
const CLIENT: &str = "198.51.100.7";

/// Runs `count` frames like `template`, each from a random source, through the program: each
/// is forwarded.
fn flood(lab: &mut PacketLab, template: &Frame, count: usize) {
    let mut frames = FloodFrames::new(template, 0x5eed);
    for _ in 0..count {
        let (verdict, _) = lab.run(frames.next_frame()).expect("run");
        assert_eq!(verdict, verdict::TX, "a flood frame is forwarded");
    }
}

/// Sends `frames` in order; returns the backend the last went to.
fn send(lab: &mut PacketLab, frames: &[Frame]) -> u32 {
    let mut backend = None;
    for frame in frames {
        let (verdict, out) = lab.run(&frame.build()).expect("run");
        assert_eq!(verdict, verdict::TX, "{frame:?}");
        backend = Some(backend_of(&out));
    }
    backend.expect("a frame")
}

/// A flow of the test: its packets' template and where it is tracked.
struct Flow {
    next: Frame,
    key: FlowKey,
    backend: u32,
}

/// Opens `ESTABLISHED` flows of `vip` with `open` (frames per client port), each of class
/// `class` afterwards.
fn establish(lab: &mut PacketLab, open: impl Fn(u16) -> Vec<Frame>, class: FlowClass) -> Vec<Flow> {
    (0..ESTABLISHED)
        .map(|i| {
            let frames = open(40000 + i);
            let backend = send(lab, &frames);
            let next = frames.last().expect("frames").clone();
            let key = next.flow_key();
            let tracked = lab
                .datapath
                .tracked_flow(&key)
                .expect("read")
                .expect("tracked");
            assert_eq!((tracked.backend, tracked.class()), (backend, class));
            Flow { next, key, backend }
        })
        .collect()
}

/// Every flow is tracked to its backend, in `class`, and its next packet goes there.
fn all_kept(lab: &mut PacketLab, flows: &[Flow], class: FlowClass) {
    for flow in flows {
        let tracked = lab.datapath.tracked_flow(&flow.key).expect("read");
        assert_eq!(
            tracked.map(|t| (t.backend, t.class())),
            Some((flow.backend, class)),
            "{:?}",
            flow.key
        );
        assert_eq!(send(lab, std::slice::from_ref(&flow.next)), flow.backend);
    }
}

fn counter(lab: &mut PacketLab, counter: Counter) -> u64 {
    lab.datapath.counter(counter).expect("counter")
}

/// A flood of `template`s against `ESTABLISHED` flows opened by `open` on VIP `vip`; then the
/// ring changes to one backend, and every flow still reaches its own.
fn flood_against_established(
    vip: &str,
    open: impl Fn(u16) -> Vec<Frame>,
    class: FlowClass,
    template: Frame,
) {
    let mut lab = PacketLab::standard_with_conntrack(TABLE);
    let flows = establish(&mut lab, open, class);
    let vip = lab.vip(vip).clone();
    let before = lab.datapath.vip_stats(vip.id).expect("stats");
    flood(&mut lab, &template, FLOOD);
    let after = lab.datapath.vip_stats(vip.id).expect("stats");
    assert_eq!(
        after.new_flows - before.new_flows,
        FLOOD as u64,
        "every frame a new flow"
    );
    assert_eq!(counter(&mut lab, Counter::ConntrackEvictedProtected), 0);
    let now = lb_user::datapath::FlowClock::read_or_assume().now();
    let occupancy = lab.datapath.flow_census(now).expect("census").occupancy;
    println!(
        "after {FLOOD} new flows: {occupancy:?}, conntrack_full {}",
        counter(&mut lab, Counter::ConntrackFull)
    );
    assert_eq!(
        occupancy.established,
        u64::from(ESTABLISHED),
        "{occupancy:?}"
    );
    assert_eq!(
        occupancy.unconfirmed,
        occupancy.capacity - u64::from(ESTABLISHED),
        "the flood fills every other way: {occupancy:?}"
    );
    all_kept(&mut lab, &flows, class);
    // The ring changes: every flow still reaches the backend it is tracked to.
    let (first, _) = vip.backends[0];
    lab.set_ring(vip.id, &[first]);
    let moved = flows.iter().filter(|flow| flow.backend != first).count();
    assert!(
        moved > 10,
        "the new ring moves flows, or this proves nothing"
    );
    all_kept(&mut lab, &flows, class);
}

#[test]
fn a_syn_flood_never_evicts_an_established_tcp_connection() {
    flood_against_established(
        "web4",
        |port| {
            vec![
                Frame::syn(CLIENT, port, "10.0.0.100", 80),
                Frame::ack(CLIENT, port, "10.0.0.100", 80),
            ]
        },
        FlowClass::TcpEstablished,
        Frame::syn("192.0.2.1", 1, "10.0.0.100", 80),
    );
}

#[test]
fn a_udp_flood_never_evicts_an_established_udp_flow() {
    flood_against_established(
        "dns4",
        |port| vec![Frame::udp(CLIENT, port, "10.0.0.100", 53); 2],
        FlowClass::UdpEstablished,
        Frame::udp("192.0.2.1", 1, "10.0.0.100", 53),
    );
}

/// Rewrites a tracked flow's stamp as if its last packet were `ticks` ticks older.
fn age(lab: &mut PacketLab, key: &FlowKey, ticks: u32) {
    let tracked = lab
        .datapath
        .tracked_flow(key)
        .expect("read")
        .expect("tracked");
    let seen = tracked.stamp >> 2;
    let aged = stamp(seen.wrapping_sub(ticks), tracked.class());
    assert!(lab.datapath.set_flow_stamp(key, aged).expect("write"));
}

#[test]
fn idle_and_closed_flows_become_evictable_after_their_timeouts() {
    // 201 protected flows: a larger table, so that no set is full of them.
    let mut lab = PacketLab::standard_with_conntrack(4 * TABLE);
    let timeouts = lab.datapath.idle_timeouts().expect("timeouts");
    let tcp = |port| {
        vec![
            Frame::syn(CLIENT, port, "10.0.0.100", 80),
            Frame::ack(CLIENT, port, "10.0.0.100", 80),
        ]
    };
    let closing = |port| {
        let mut fin = Frame::ack(CLIENT, port, "10.0.0.100", 80);
        fin.kind = lb_tests::packet::frames::Kind::TcpFin;
        let mut frames = tcp(port);
        frames.push(fin);
        // The close handshake's last ACK: the flow stays tracked and closing.
        frames.push(Frame::ack(CLIENT, port, "10.0.0.100", 80));
        frames
    };
    let established = establish(&mut lab, tcp, FlowClass::TcpEstablished);
    let (active, idle) = established.split_at(50);
    let closed = establish(&mut lab, |port| closing(port + 1000), FlowClass::TcpClosing);
    let (closing_active, closing_idle) = closed.split_at(50);
    let mut reset = Frame::ack(CLIENT, 43000, "10.0.0.100", 80);
    reset.kind = lb_tests::packet::frames::Kind::TcpRst;
    send(
        &mut lab,
        &[Frame::syn(CLIENT, 43000, "10.0.0.100", 80), reset.clone()],
    );
    let tracked = lab
        .datapath
        .tracked_flow(&reset.flow_key())
        .expect("read")
        .expect("tracked");
    assert_eq!(
        tracked.class(),
        FlowClass::TcpClosing,
        "a client's RST closes too"
    );

    // Half of each idle exactly their timeout: no longer protected.
    for flow in idle {
        age(&mut lab, &flow.key, timeouts.tcp());
    }
    for flow in closing_idle {
        age(&mut lab, &flow.key, timeouts.tcp_closing());
    }
    assert!(timeouts.tcp_closing() < timeouts.tcp(), "{timeouts:?}");
    let now = lb_user::datapath::FlowClock::read_or_assume().now();
    let occupancy = lab.datapath.flow_census(now).expect("census").occupancy;
    assert_eq!(
        (occupancy.established, occupancy.closing, occupancy.idle),
        (50, 51, 100)
    );

    flood(
        &mut lab,
        &Frame::syn("192.0.2.1", 1, "10.0.0.100", 80),
        FLOOD / 2,
    );
    all_kept(&mut lab, active, FlowClass::TcpEstablished);
    all_kept(&mut lab, closing_active, FlowClass::TcpClosing);
    for flow in idle.iter().chain(closing_idle) {
        assert_eq!(
            lab.datapath.tracked_flow(&flow.key).expect("read"),
            None,
            "an idle flow made room: {:?}",
            flow.key
        );
    }
    assert_eq!(counter(&mut lab, Counter::ConntrackEvictedProtected), 0);
}

#[test]
fn a_set_full_of_protected_flows_leaves_a_new_flow_untracked_but_forwarded() {
    use lb_common::conntrack::{conntrack_hash, set_index, sets_for};

    let mut lab = PacketLab::standard_with_conntrack(TABLE);
    let set_of = |port: u16| {
        let flow = Frame::syn(CLIENT, port, "10.0.0.100", 80).flow_key();
        set_index(conntrack_hash(&flow), sets_for(TABLE))
    };
    let target = set_of(50000);
    let ports: Vec<u16> = (50000..65000)
        .filter(|&port| set_of(port) == target)
        .take(5)
        .collect();
    for &port in &ports[..4] {
        send(
            &mut lab,
            &[
                Frame::syn(CLIENT, port, "10.0.0.100", 80),
                Frame::ack(CLIENT, port, "10.0.0.100", 80),
            ],
        );
    }
    let new = Frame::syn(CLIENT, ports[4], "10.0.0.100", 80);
    let expected = lab.ring_backend(lab.vip("web4").id, &new.flow_key());
    assert_eq!(
        send(&mut lab, std::slice::from_ref(&new)),
        expected,
        "the ring's backend"
    );
    assert_eq!(
        lab.datapath.tracked_flow(&new.flow_key()).expect("read"),
        None
    );
    assert_eq!(counter(&mut lab, Counter::ConntrackFull), 1);
    // Its next packet takes the ring again, and is still not tracked.
    let next = Frame::ack(CLIENT, ports[4], "10.0.0.100", 80);
    assert_eq!(send(&mut lab, std::slice::from_ref(&next)), expected);
    assert_eq!(counter(&mut lab, Counter::ConntrackFull), 2);
    for &port in &ports[..4] {
        let key = Frame::ack(CLIENT, port, "10.0.0.100", 80).flow_key();
        let tracked = lab
            .datapath
            .tracked_flow(&key)
            .expect("read")
            .expect("tracked");
        assert_eq!(tracked.class(), FlowClass::TcpEstablished);
    }
}

mod agent {
    use std::time::Duration;

    use lb_common::stats::Counter;
    use lb_tests::{
        netns::{
            connections::{assert_echo, assert_none_broken, Held, Pingers},
            dsr_lab::*,
            flood::send_flood,
            servers::NameServer,
            wait_every,
        },
        packet::frames::Frame,
    };
    use lb_user::datapath::Datapath;

    /// The lab's table, and the flood: 300 times it.
    const TABLE: usize = 1024;
    const FLOOD: usize = 300 * TABLE;
    /// The flood's rate (frames per second).
    const RATE: u32 = 85_000;
    /// Long-lived connections.
    const HELD: usize = 40;

    /// One run of the scenario: b2 down, `HELD` connections to b1 and b3, a SYN flood of
    /// `FLOOD` spoofed sources, and b2 back a second into it (its slots come back: the ring
    /// changes under the connections). Every connection must survive.
    fn flood_while_a_backend_rejoins(run: usize) {
        let mut lab = AgentLab::new(&format!("flood{run}"));
        lab.write_config(&[1, 1, 1], &format!("conntrack_size = {TABLE}"));
        lab.servers[1] = None;
        let _agent = lab.start_agent(false);
        assert!(
            lab.wait_until(Duration::from_secs(5), || !lab.in_ring(1))
                .is_some(),
            "b2 is down"
        );
        let held = lab.hold(HELD);
        assert!(held.iter().all(|held| held.backend != "b2"));
        let ports: Vec<u16> = held.iter().map(|held| held.local.port()).collect();
        let drops_before = lab.lan.transmit_drops();
        // Each connection echoes a line every 100 ms.
        let pingers = Pingers::start(held, Duration::from_millis(100));

        let flood = send_flood(
            &lab.lan.host(0).ns,
            "eth0",
            Frame::syn("192.0.2.1", 1, VIP, PORT),
            lab.lan.host(1).mac,
            FLOOD,
            RATE,
        );
        // b2 comes back a second into the flood: once the flood's first second of new flows
        // (83 tables' worth) has reached the datapath.
        let mut datapath = Datapath::open_pinned(&lab.files.state_dir).expect("open");
        let vip = datapath.vips().expect("vips")[0].1.id;
        let new_flows = |datapath: &mut Datapath| datapath.vip_stats(vip).expect("stats").new_flows;
        let before = new_flows(&mut datapath);
        assert!(
            wait_every(Duration::from_secs(10), Duration::from_millis(20), || {
                new_flows(&mut datapath) >= before + u64::from(RATE)
            })
            .is_some(),
            "the flood does not reach the datapath"
        );
        lab.servers[1] = Some(NameServer::start(&lab.lan.host(3).ns, PORT, "b2"));
        assert!(
            lab.wait_until(Duration::from_secs(5), || lab.in_ring(1))
                .is_some(),
            "b2 rejoins:\n{}",
            lab.files.log_text()
        );
        let sent = flood.join().expect("flood");
        // Every connection echoes a few more times on the ring b2 is back in.
        assert!(
            pingers.wait_rounds(3, Duration::from_secs(10)),
            "the long-lived connections stopped echoing"
        );
        let pinged = pingers.stop();
        println!(
            "run {run}: {} SYNs in {:?}; {} of {HELD} long-lived connections broke",
            sent.frames,
            sent.elapsed,
            pinged.iter().filter(|p| p.broken.is_some()).count()
        );
        assert_none_broken(&pinged);
        // Kept open to the end: the flow table must show them established.
        let mut held: Vec<Held> = pinged.into_iter().map(|p| p.held).collect();
        assert_echo(&mut held, "after the flood");

        // The ring moved some of them to b2, and they stayed where they were.
        let moved = ports
            .iter()
            .filter(|port| {
                let explained = lab.explain(**port);
                assert_eq!(explained["reason"], "tracked", "{explained}");
                assert_eq!(explained["tracking"]["protected"], true, "{explained}");
                explained["ring_backend"] != explained["backend"]
            })
            .count();
        println!("run {run}: the new ring would move {moved} of them");
        assert!(
            moved > 0,
            "the ring must move some, or this run proves nothing"
        );
        let stats = lab.lb(&["stats", "--json"]);
        let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats");
        let flows = &stats["flows"];
        assert_eq!(flows["capacity"], TABLE, "{flows}");
        assert!(
            flows["established"].as_u64() >= Some(HELD as u64),
            "the held connections are established: {flows}"
        );
        assert_eq!(
            datapath
                .counter(Counter::ConntrackEvictedProtected)
                .expect("counter"),
            0
        );
        // Every flood frame reached the datapath as a new flow, but those the lab's veths lost
        // on the way (a veth whose peer runs XDP holds 256 frames: on a busy machine a few
        // hundred of 300k are lost before any program sees them).
        let new_flows = new_flows(&mut datapath);
        let lost = lab.lan.transmit_drops() - drops_before;
        println!("run {run}: {new_flows} new flows, {lost} frames lost by the lab's veths");
        assert!(
            new_flows + lost >= FLOOD as u64,
            "the flood reached the datapath: {new_flows} new flows, {lost} frames lost"
        );
    }

    #[test]
    fn a_syn_flood_while_a_backend_rejoins_breaks_no_established_connection() {
        for run in 1..=3 {
            flood_while_a_backend_rejoins(run);
        }
    }
}
