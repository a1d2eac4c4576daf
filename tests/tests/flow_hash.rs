//! The flow hash in lb-common predicts the kernel's choice exactly.
//!
//! Each VIP's ring maps slot `i` to backend `i` (16381 backends, each with its own MAC), so the
//! destination MAC of a forwarded frame reveals the slot the kernel hashed the flow to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    flow_hash,
    maps::{BackendState, ForwardMode, Protocol, Vip, VipKey},
};
use lb_tests::packet::{
    frames::{Frame, Kind},
    lab::{backend_of, verdict, PacketLab},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

const RING_SIZE: u32 = 16381; // prime, below MAX_BACKENDS
const FLOWS: usize = 4000;

#[test]
fn userspace_flow_hash_matches_the_kernels_slot_for_random_flows() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut lab = PacketLab::empty();
    let v4: IpAddr = "10.0.0.100".parse().expect("v4");
    let v6: IpAddr = "fd00::100".parse().expect("v6");
    for id in 0..RING_SIZE {
        let backend: IpAddr = Ipv4Addr::from(0x0a00_0000 + id).into();
        lab.set_backend(id, backend, BackendState::Up);
    }
    let identity: Vec<u32> = (0..RING_SIZE).collect();
    let vips = [
        (0, v4, Protocol::Tcp),
        (1, v4, Protocol::Udp),
        (2, v6, Protocol::Tcp),
        (3, v6, Protocol::Udp),
    ];
    for (id, address, protocol) in vips {
        lab.datapath.set_ring(id, &identity).expect("ring");
        let vip = Vip::new(id, RING_SIZE, ForwardMode::Dsr);
        lab.datapath
            .set_vip(&VipKey::new(address, 0, protocol), &vip)
            .expect("vip");
    }

    for n in 0..FLOWS {
        let (vip_address, client): (IpAddr, IpAddr) = if rng.gen_bool(0.5) {
            (v4, Ipv4Addr::from(rng.gen::<u32>()).into())
        } else {
            (v6, Ipv6Addr::from(rng.gen::<u128>()).into())
        };
        let kind = [Kind::TcpSyn, Kind::TcpAck, Kind::Udp][rng.gen_range(0..3)];
        let frame = Frame::new(
            kind,
            client,
            rng.gen(),
            vip_address,
            rng.gen_range(1..=u16::MAX),
        );
        let (verdict, output) = lab.run(&frame.build()).expect("run");
        assert_eq!(verdict, verdict::TX, "flow {n}: {frame:?}");
        let expected = flow_hash(&frame.flow_key()) % RING_SIZE;
        assert_eq!(
            backend_of(&output),
            expected,
            "flow {n} (seed {seed}): {frame:?}"
        );
    }
}
