//! `steer_check`, the tc program that sends health checks along the serving path, run on real
//! frames (`BPF_PROG_TEST_RUN`, the check socket's mark in the context): its output frame is
//! byte-exact, and it is the frame the `lb` XDP program makes of a client's packet of the same
//! flow to the same backend (DSR: the MACs; tunnel: the same outer header, IPv4 or IPv6, mixed
//! families too). Packets that are not checks', or whose path is unknown, are dropped and
//! counted.

use std::net::IpAddr;

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{
    check_path::{check_mark, CheckCounter, CheckPath},
    encoding::addr_bytes,
    maps::ForwardMode,
};
use lb_tests::packet::{
    frames::{self, ip, Frame, LB_MAC},
    lab::{
        backend_mac, verdict, PacketLab, MTU, TEST_RUN_IFINDEX, TUNNEL_SOURCE_V4, TUNNEL_SOURCE_V6,
    },
};
use lb_user::datapath::{check_counts, CheckMaps, Datapath};

/// `TC_ACT_REDIRECT` and `TC_ACT_SHOT`.
const REDIRECT: u32 = 7;
const SHOT: u32 = 2;
/// The size of `struct __sk_buff` up to and including `mark` (the only field set).
const SKB_CONTEXT: usize = 12;
/// The check interface's MAC in the input frames (the program overwrites it).
const CHECK_INTERFACE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc4, 0xec];

/// Runs `steer_check` on `frame` with socket mark `mark`: the verdict and the frame after.
fn steer(datapath: &mut Datapath, frame: &[u8], mark: u32) -> (u32, Vec<u8>) {
    let mut context = [0u8; SKB_CONTEXT];
    context[8..12].copy_from_slice(&mark.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&context);
    let result = datapath
        .check_steering_program()
        .expect("steer_check")
        .test_run(opts)
        .expect("test run");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// The path of backend `id` of the lab (the same MACs and egress as its `BACKENDS` entry).
fn path(id: u32, backend: IpAddr, forward: ForwardMode, mtu: u32) -> CheckPath {
    let (addr, family) = addr_bytes(backend);
    CheckPath {
        addr,
        family: family as u8,
        forward: forward as u8,
        _pad: [0; 2],
        ifindex: TEST_RUN_IFINDEX,
        mtu,
        macs: CheckPath::macs(backend_mac(id), LB_MAC),
    }
}

/// One check of a lab VIP: from the lb host's address to the VIP, steered to one backend.
struct Case {
    vip: &'static str,
    source: &'static str,
}

const CASES: [Case; 6] = [
    Case {
        vip: "web4",
        source: "10.0.0.2",
    },
    Case {
        vip: "web6",
        source: "fd00::2",
    },
    Case {
        vip: "tun4",
        source: "10.0.0.2",
    },
    Case {
        vip: "tun6",
        source: "fd00::2",
    },
    Case {
        vip: "tun4in6",
        source: "10.0.0.2",
    },
    Case {
        vip: "tun6in4",
        source: "fd00::2",
    },
];

fn count(maps: &CheckMaps, counter: CheckCounter) -> u64 {
    check_counts(&maps.stats)
        .expect("counts")
        .into_iter()
        .find(|(c, _)| *c == counter)
        .map_or(0, |(_, n)| n)
}

#[test]
fn a_check_leaves_exactly_as_the_datapath_sends_a_clients_packet() {
    let mut lab = PacketLab::standard();
    let mut maps = lab.datapath.take_check_maps().expect("check maps");
    for case in CASES {
        let vip = lab.vip(case.vip);
        let (vip_id, address, port, forward) = (vip.id, vip.address, vip.port, vip.forward);
        for (id, backend) in vip.backends.clone() {
            let check = Frame::syn(case.source, 40000 + id as u16, &address.to_string(), port)
                .to_mac(CHECK_INTERFACE_MAC);
            maps.paths
                .set(id, path(id, backend, forward, MTU), 0)
                .expect("path");
            let (action, out) = steer(&mut lab.datapath, &check.build(), check_mark(id));
            assert_eq!(action, REDIRECT, "{}: backend {backend}", case.vip);
            let expected = match forward {
                ForwardMode::Dsr => frames::dsr(&check.build(), backend_mac(id)),
                ForwardMode::Tunnel => {
                    let source = ip(if backend.is_ipv4() {
                        TUNNEL_SOURCE_V4
                    } else {
                        TUNNEL_SOURCE_V6
                    });
                    frames::tunnel(
                        &check.build(),
                        backend_mac(id),
                        source,
                        backend,
                        &check.flow_key(),
                    )
                }
            };
            assert_eq!(
                out, expected,
                "{}: the frame steered to {backend}",
                case.vip
            );
            frames::verify_checksums(&out);

            // The datapath, given the same packet from a client, with only this backend in the
            // ring: the same frame, byte for byte.
            lab.set_ring(vip_id, &[id]);
            let (xdp, forwarded) = lab.run(&check.clone().to_mac(LB_MAC).build()).expect("run");
            assert_eq!(xdp, verdict::TX, "{}: the datapath forwards", case.vip);
            assert_eq!(
                out, forwarded,
                "{}: check and client packets to {backend}",
                case.vip
            );
        }
    }
    assert!(count(&maps, CheckCounter::Steered) > 0);
    assert!(count(&maps, CheckCounter::Encapsulated) > 0);
}

#[test]
fn packets_that_are_not_checks_or_have_no_path_are_dropped_and_counted() {
    let mut lab = PacketLab::standard();
    let mut maps = lab.datapath.take_check_maps().expect("check maps");
    let frame = Frame::syn("10.0.0.2", 40000, "10.0.0.200", 80)
        .to_mac(CHECK_INTERFACE_MAC)
        .build();
    // No mark (or another one): not a check's.
    for mark in [0, 0x4c43_0006, 6] {
        assert_eq!(
            steer(&mut lab.datapath, &frame, mark).0,
            SHOT,
            "mark {mark:#x}"
        );
    }
    assert_eq!(count(&maps, CheckCounter::NotCheck), 3);
    // A check whose path is not written yet.
    assert_eq!(steer(&mut lab.datapath, &frame, check_mark(6)).0, SHOT);
    assert_eq!(count(&maps, CheckCounter::NoPath), 1);
    // A tunnel whose outer header would not fit the egress MTU.
    let big = Frame::syn("10.0.0.2", 40000, "10.0.0.200", 80)
        .with_payload(1480)
        .to_mac(CHECK_INTERFACE_MAC)
        .build();
    maps.paths
        .set(6, path(6, ip("10.1.0.11"), ForwardMode::Tunnel, 1500), 0)
        .expect("path");
    assert_eq!(steer(&mut lab.datapath, &big, check_mark(6)).0, SHOT);
    assert_eq!(count(&maps, CheckCounter::TooBig), 1);
    assert_eq!(count(&maps, CheckCounter::Encapsulated), 0);
}
