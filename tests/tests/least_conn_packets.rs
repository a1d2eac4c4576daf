//! Least connections in the datapath, on frames through `BPF_PROG_TEST_RUN`: a least-conn
//! VIP's new flow goes to the less loaded (for its weight) of its two candidates, as
//! `lb_common::least_conn` predicts; the backend's count in `LOADS` takes it in once it is
//! established and gives it back when the client closes; a flood of SYNs counts nothing; a
//! flow that cannot be tracked, a packet that opens nothing and a maglev VIP keep to the ring.

use std::collections::HashMap;

use lb_common::{
    conntrack::{conntrack_hash, set_index, sets_for},
    least_conn::{prefers_second, second_slot, BackendLoad},
    maps::{BackendState, NewFlowRule},
    stats::Counter,
    FlowKey,
};
use lb_tests::packet::{
    frames::{Frame, Kind},
    lab::{backend_of, verdict, PacketLab, LAB_CONNTRACK_SIZE},
};

const CLIENT4: &str = "198.51.100.7";
const WEB4: &str = "10.0.0.100";

/// The standard lab with `web4` (TCP, backends 0 and 1) and `dns4` (UDP, 2 and 3) least-conn.
fn lab() -> PacketLab {
    let mut lab = PacketLab::standard();
    lab.set_new_flow_rule("web4", NewFlowRule::LeastConn);
    lab.set_new_flow_rule("dns4", NewFlowRule::LeastConn);
    lab
}

fn load(active: u64, weight: u32) -> BackendLoad {
    BackendLoad {
        active,
        weight,
        _pad: 0,
    }
}

/// A flow's two candidates in VIP `vip`'s ring: its ring slot's backend and its second slot's.
fn candidates(lab: &PacketLab, vip: &str, flow: &FlowKey) -> (u32, u32) {
    let vip = lab.vip(vip).id;
    let ring = &lab.rings[&vip];
    let second = second_slot(conntrack_hash(flow), ring.len() as u32).expect("a ring");
    (lab.ring_backend(vip, flow), ring[second as usize])
}

/// Where the datapath should send a new flow, by the loads in `loads`.
fn predicted(lab: &PacketLab, vip: &str, flow: &FlowKey, loads: &HashMap<u32, BackendLoad>) -> u32 {
    let (ring, second) = candidates(lab, vip, flow);
    if second != ring && prefers_second(loads[&ring], loads[&second]) {
        second
    } else {
        ring
    }
}

/// Runs `frame` and returns the backend it was sent to.
fn send(lab: &mut PacketLab, frame: &Frame) -> u32 {
    let (result, out) = lab.run(&frame.build()).expect("test run");
    assert_eq!(result, verdict::TX, "{frame:?}");
    backend_of(&out)
}

fn active(lab: &PacketLab, id: u32) -> i64 {
    lab.loads.get(id).active as i64
}

#[test]
fn a_new_flow_goes_to_the_less_loaded_of_its_two_candidates_for_its_weight() {
    // Backend 0 holds 40 flows, 1 holds 10, of equal weight; then 0 weighs three times 1.
    for (loads, favoured) in [
        ([(0, load(40, 100)), (1, load(10, 100))], 1),
        ([(0, load(40, 300)), (1, load(20, 100))], 0),
    ] {
        // (A lab of its own: 800 established flows would fill some of its sets.)
        let mut lab = lab();
        let mut model: HashMap<u32, BackendLoad> = loads.into_iter().collect();
        let mut ring_only = model.clone();
        for (id, load) in &model {
            lab.loads.set(*id, *load);
        }
        // Flows whose two candidates differ, by where they went: toward the favoured
        // backend's second slot, the other's, or their ring slot's.
        let (mut to_favoured, mut to_other, mut kept) = (0, 0, 0);
        for port in 10_000..10_400 {
            let port = port + favoured as u16 * 1000;
            let frame = Frame::syn(CLIENT4, port, WEB4, 80);
            let flow = frame.flow_key();
            let expected = predicted(&lab, "web4", &flow, &model);
            assert_eq!(send(&mut lab, &frame), expected, "{frame:?}");
            // Established: it counts from now on.
            assert_eq!(
                send(&mut lab, &Frame::ack(CLIENT4, port, WEB4, 80)),
                expected
            );
            let (ring, second) = candidates(&lab, "web4", &flow);
            match (expected != ring, expected == favoured) {
                (true, true) => to_favoured += 1,
                (true, false) => to_other += 1,
                (false, _) if second != ring => kept += 1,
                (false, _) => {}
            }
            model.get_mut(&expected).expect("a backend").active += 1;
            ring_only.get_mut(&ring).expect("a backend").active += 1;
        }
        assert!(
            to_favoured > 30 && to_favoured > to_other,
            "{to_favoured} flows moved to the less loaded backend, {to_other} away from it"
        );
        assert!(kept > 0, "{kept} kept theirs once the counts evened out");
        // Active flows per unit of weight end up close; by the ring alone they stay apart.
        let gap = |loads: &HashMap<u32, BackendLoad>| {
            let per_weight = |id: u32| loads[&id].active as f64 / f64::from(loads[&id].weight);
            (per_weight(0) - per_weight(1)).abs()
        };
        assert!(
            gap(&model) * 4.0 < gap(&ring_only),
            "gap per unit of weight: {} with least-conn, {} by the ring",
            gap(&model),
            gap(&ring_only)
        );
        for (id, load) in &model {
            assert_eq!(lab.loads.get(*id), *load, "backend {id}'s count");
        }
    }
}

#[test]
fn a_second_candidate_that_is_not_up_or_unknown_weights_leave_the_ring_choice() {
    let mut lab = lab();
    let ports = 20_000..20_200;
    // Weights not written yet (an agent that has not counted): the ring decides.
    lab.loads.set(0, load(1000, 0));
    lab.loads.set(1, load(0, 0));
    for port in ports.clone() {
        let frame = Frame::syn(CLIENT4, port, WEB4, 80);
        let ring = lab.ring_backend(lab.vip("web4").id, &frame.flow_key());
        assert_eq!(send(&mut lab, &frame), ring);
    }
    // Backend 1 draining (still in the ring for a moment): no new flow is sent to it as a
    // second candidate, however idle.
    lab.loads.set(0, load(1000, 100));
    lab.loads.set(1, load(0, 100));
    lab.set_state(1, BackendState::Draining);
    for port in ports {
        let frame = Frame::syn(CLIENT4, port + 1000, WEB4, 80);
        let (ring, second) = candidates(&lab, "web4", &frame.flow_key());
        if ring == 0 && second == 1 {
            assert_eq!(send(&mut lab, &frame), 0, "{frame:?}");
        }
    }
    // A maglev VIP ignores loads and counts nothing.
    lab.loads.set(4, load(1000, 100));
    lab.loads.set(5, load(0, 100));
    for port in 21_000..21_100 {
        let frame = Frame::syn("2001:db8::7", port, "fd00::100", 80);
        let ring = lab.ring_backend(lab.vip("web6").id, &frame.flow_key());
        assert_eq!(send(&mut lab, &frame), ring);
    }
    assert_eq!((active(&lab, 4), active(&lab, 5)), (1000, 0));
}

#[test]
fn counts_follow_opens_and_closes() {
    let mut lab = lab();
    for id in 0..4 {
        lab.loads.set(id, load(0, 100));
    }
    let tcp = |kind: Kind, port: u16| {
        let mut frame = Frame::syn(CLIENT4, port, WEB4, 80);
        frame.kind = kind;
        frame
    };

    // A SYN: not counted yet. The SYN again: the same backend, even though the counts now
    // favour the other candidate. Established (the handshake's ACK): +1; its next packets:
    // unchanged. FIN: -1, and the FIN again: no more.
    let first = send(&mut lab, &tcp(Kind::TcpSyn, 30_000));
    assert_eq!(active(&lab, first), 0, "a bare SYN does not count");
    lab.loads.set(first, load(500, 100));
    assert_eq!(
        send(&mut lab, &tcp(Kind::TcpSyn, 30_000)),
        first,
        "a SYN sent again"
    );
    assert_eq!(active(&lab, first), 500);
    lab.loads.set(first, load(0, 100));
    assert_eq!(send(&mut lab, &tcp(Kind::TcpAck, 30_000)), first);
    assert_eq!(active(&lab, first), 1);
    assert_eq!(send(&mut lab, &tcp(Kind::TcpAck, 30_000)), first);
    assert_eq!(active(&lab, first), 1);
    assert_eq!(send(&mut lab, &tcp(Kind::TcpFin, 30_000)), first);
    assert_eq!(active(&lab, first), 0);
    assert_eq!(send(&mut lab, &tcp(Kind::TcpFin, 30_000)), first);
    assert_eq!(active(&lab, first), 0, "a closing flow is taken off once");

    // A reset takes it off too; one the count never included (the agent's count came in
    // between) takes it below zero, which weighs as zero.
    let second = send(&mut lab, &tcp(Kind::TcpSyn, 30_001));
    assert_eq!(send(&mut lab, &tcp(Kind::TcpAck, 30_001)), second);
    assert_eq!(active(&lab, second), 1);
    lab.loads.set(second, load(0, 100));
    assert_eq!(send(&mut lab, &tcp(Kind::TcpRst, 30_001)), second);
    assert_eq!(active(&lab, second), -1);
    lab.loads.set(0, load(0, 100));
    lab.loads.set(1, load(0, 100));

    // A SYN answered by a reset was never counted: nothing to take off.
    let refused = send(&mut lab, &tcp(Kind::TcpSyn, 30_003));
    assert_eq!(send(&mut lab, &tcp(Kind::TcpRst, 30_003)), refused);
    assert_eq!((active(&lab, 0), active(&lab, 1)), (0, 0));

    // UDP: the second datagram establishes the flow, the next ones do not count again.
    let dns = send(&mut lab, &Frame::udp(CLIENT4, 30_002, WEB4, 53));
    assert!(dns == 2 || dns == 3, "a dns4 backend");
    assert_eq!(active(&lab, dns), 0);
    for _ in 0..3 {
        assert_eq!(send(&mut lab, &Frame::udp(CLIENT4, 30_002, WEB4, 53)), dns);
        assert_eq!(active(&lab, dns), 1);
    }

    // An untracked TCP flow's packet (a restart forgot it) opens nothing: the ring decides,
    // as on every other instance, and nothing is counted.
    lab.loads.set(0, load(1000, 100));
    lab.loads.set(1, load(1000, 100));
    for port in 31_000..31_050 {
        let frame = tcp(Kind::TcpAck, port);
        let ring = lab.ring_backend(lab.vip("web4").id, &frame.flow_key());
        assert_eq!(send(&mut lab, &frame), ring);
    }
    assert_eq!((active(&lab, 0), active(&lab, 1)), (1000, 1000));
}

/// A flood of SYNs from spoofed sources, four times the table, evicting each other and the
/// idle: it counts nothing, so it cannot steer new flows away from a backend; the established
/// flows keep their counts and their backends.
#[test]
fn a_syn_flood_counts_nothing() {
    let mut lab = lab();
    lab.loads.set(0, load(0, 100));
    lab.loads.set(1, load(0, 100));
    let established: Vec<(u16, u32)> = (20_000..20_010)
        .map(|port| {
            let backend = send(&mut lab, &Frame::syn(CLIENT4, port, WEB4, 80));
            assert_eq!(
                send(&mut lab, &Frame::ack(CLIENT4, port, WEB4, 80)),
                backend
            );
            (port, backend)
        })
        .collect();
    let counts = (active(&lab, 0), active(&lab, 1));
    assert_eq!(counts.0 + counts.1, 10);
    for n in 0..4 * LAB_CONNTRACK_SIZE {
        let source = format!("203.0.{}.{}", (n >> 8) & 0xff, n & 0xff);
        send(&mut lab, &Frame::syn(&source, 1024, WEB4, 80));
    }
    assert_eq!(
        (active(&lab, 0), active(&lab, 1)),
        counts,
        "the flood counted"
    );
    for (port, backend) in established {
        assert_eq!(
            send(&mut lab, &Frame::ack(CLIENT4, port, WEB4, 80)),
            backend
        );
    }
    assert_eq!((active(&lab, 0), active(&lab, 1)), counts);
}

#[test]
fn a_new_flow_that_cannot_be_tracked_keeps_to_the_ring() {
    let mut lab = lab();
    lab.loads.set(0, load(0, 100));
    lab.loads.set(1, load(0, 100));
    let sets = sets_for(LAB_CONNTRACK_SIZE);
    let set_of = |port: u16| {
        let flow = Frame::syn(CLIENT4, port, WEB4, 80).flow_key();
        set_index(conntrack_hash(&flow), sets)
    };
    let target = set_of(40_000);
    let ports: Vec<u16> = (40_000..60_000).filter(|&p| set_of(p) == target).collect();
    // Four established flows fill the set.
    for &port in &ports[..4] {
        send(&mut lab, &Frame::syn(CLIENT4, port, WEB4, 80));
        send(&mut lab, &Frame::ack(CLIENT4, port, WEB4, 80));
    }
    // A fifth flow of the set whose candidates differ, its second far less loaded.
    let frame = ports[4..]
        .iter()
        .map(|&port| Frame::syn(CLIENT4, port, WEB4, 80))
        .find(|frame| {
            let (ring, second) = candidates(&lab, "web4", &frame.flow_key());
            ring != second
        })
        .expect("a flow whose two candidates differ");
    let (ring, second) = candidates(&lab, "web4", &frame.flow_key());
    lab.loads.set(ring, load(1000, 100));
    lab.loads.set(second, load(0, 100));
    let full = lab
        .datapath
        .counter(Counter::ConntrackFull)
        .expect("counter");
    assert_eq!(
        send(&mut lab, &frame),
        ring,
        "untracked: its later packets take the ring"
    );
    assert_eq!(
        lab.datapath
            .counter(Counter::ConntrackFull)
            .expect("counter"),
        full + 1
    );
    assert_eq!(
        (active(&lab, ring), active(&lab, second)),
        (1000, 0),
        "not counted"
    );
}
