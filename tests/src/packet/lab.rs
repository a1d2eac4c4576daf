//! A packet lab: the real XDP object loaded into the kernel, configured with a fixed set of VIPs,
//! and run on frames through `BPF_PROG_TEST_RUN`.

use std::{collections::HashMap, net::IpAddr};

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    encoding::addr_bytes,
    maglev::{build_ring, MaglevBackend},
    maps::{
        Backend, BackendState, DecapKey, ForwardMode, NewFlowRule, Protocol, Settings, Vip, VipKey,
        DEFAULT_RING_SIZE,
    },
    FlowKey,
};
use lb_user::{
    config::ConntrackConfig,
    datapath::{Datapath, FlowClock, Loads, Options, Program, SecondChanceMaps},
};

use crate::packet::frames::{ip, LB_MAC};

/// `BPF_PROG_TEST_RUN` runs XDP programs as if received on loopback (ifindex 1).
pub const TEST_RUN_IFINDEX: u32 = 1;
/// Outer source of IPv4 tunnels.
pub const TUNNEL_SOURCE_V4: &str = "192.0.2.1";
/// Outer source of IPv6 tunnels.
pub const TUNNEL_SOURCE_V6: &str = "2001:db8::1";
/// MTU of every backend's egress interface in the lab.
pub const MTU: u32 = 1500;
/// Size of `CONNTRACK` in the lab: small, so loading is quick.
pub const LAB_CONNTRACK_SIZE: u32 = 4096;

/// XDP verdicts.
pub mod verdict {
    /// XDP_ABORTED.
    pub const ABORTED: u32 = 0;
    /// XDP_DROP.
    pub const DROP: u32 = 1;
    /// XDP_PASS.
    pub const PASS: u32 = 2;
    /// XDP_TX.
    pub const TX: u32 = 3;
    /// XDP_REDIRECT.
    pub const REDIRECT: u32 = 4;
}

/// A VIP of the lab.
#[derive(Clone, Debug)]
pub struct LabVip {
    /// VIP id.
    pub id: u32,
    /// Address.
    pub address: IpAddr,
    /// Port (0 = all).
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Forwarding mode.
    pub forward: ForwardMode,
    /// Backend ids and addresses.
    pub backends: Vec<(u32, IpAddr)>,
}

/// The lab's settings: its tunnel sources, `local_mac` and the default idle timeouts.
fn lab_settings(local_mac: [u8; 6]) -> Settings {
    let IpAddr::V4(v4) = ip(TUNNEL_SOURCE_V4) else {
        unreachable!()
    };
    let IpAddr::V6(v6) = ip(TUNNEL_SOURCE_V6) else {
        unreachable!()
    };
    Settings {
        tunnel_source_v4: v4.octets(),
        tunnel_source_v6: v6.octets(),
        local_mac,
        _pad: [0; 2],
        idle_timeouts: ConntrackConfig::default().idle_timeouts(&FlowClock::read_or_assume()),
    }
}

/// The MAC the lab gives backend `id`: distinct per backend, so an output frame names its
/// backend.
pub fn backend_mac(id: u32) -> [u8; 6] {
    let id = id.to_be_bytes();
    [0x02, 0xbe, id[0], id[1], id[2], id[3]]
}

/// The backend id a frame was sent to, read from its destination MAC.
pub fn backend_of(frame: &[u8]) -> u32 {
    assert_eq!(
        frame[..2],
        [0x02, 0xbe],
        "destination MAC is not a lab backend's"
    );
    u32::from_be_bytes([frame[2], frame[3], frame[4], frame[5]])
}

/// The loaded datapath plus what the lab wrote into it.
pub struct PacketLab {
    /// The datapath under test.
    pub datapath: Datapath,
    /// Ring contents per VIP id, as last written.
    pub rings: HashMap<u32, Vec<u32>>,
    /// VIPs by name.
    pub vips: HashMap<&'static str, LabVip>,
    /// `LOADS`: what least-conn VIPs' backends are weighed by.
    pub loads: Loads,
    /// `PREVIOUS_RINGS` and `SECOND_CHANCE_STATS`.
    pub second_chance: SecondChanceMaps,
}

impl PacketLab {
    /// An empty lab: the object loaded, tunnel sources set, no VIP.
    pub fn empty() -> Self {
        Self::empty_with_conntrack(LAB_CONNTRACK_SIZE)
    }

    /// An empty lab whose `CONNTRACK` holds `conntrack_size` flows.
    pub fn empty_with_conntrack(conntrack_size: u32) -> Self {
        let mut datapath = Datapath::load(&Options {
            conntrack_size,
            pin_dir: None,
            fresh_state: false,
        })
        .expect("load datapath");
        datapath
            .set_settings(&lab_settings(LB_MAC))
            .expect("settings");
        let loads = datapath.take_loads().expect("LOADS");
        let second_chance = datapath
            .take_second_chance_maps()
            .expect("second-chance maps");
        Self {
            datapath,
            rings: HashMap::new(),
            vips: HashMap::new(),
            loads,
            second_chance,
        }
    }

    /// Balances frames whatever their destination MAC (`local_mac` unset), as before the agent
    /// writes its settings. The benchmark needs it: live frames recycle their pages, and a
    /// forwarded frame leaves the backend's MAC (or tunnel header bytes) where the next run
    /// reads its destination.
    pub fn balance_every_mac(&mut self) {
        self.datapath
            .set_settings(&lab_settings([0; 6]))
            .expect("settings");
    }

    /// The standard lab used by the fixture table.
    pub fn standard() -> Self {
        Self::standard_with_conntrack(LAB_CONNTRACK_SIZE)
    }

    /// The standard lab with a `CONNTRACK` of `conntrack_size` flows (the benchmark uses the
    /// default size).
    pub fn standard_with_conntrack(conntrack_size: u32) -> Self {
        let mut lab = Self::empty_with_conntrack(conntrack_size);
        let tcp = Protocol::Tcp;
        let udp = Protocol::Udp;
        let dsr = ForwardMode::Dsr;
        let tunnel = ForwardMode::Tunnel;
        lab.add_vip(
            "web4",
            0,
            "10.0.0.100",
            80,
            tcp,
            dsr,
            &[(0, "10.0.0.11"), (1, "10.0.0.12")],
        );
        lab.add_vip(
            "dns4",
            1,
            "10.0.0.100",
            53,
            udp,
            dsr,
            &[(2, "10.0.0.21"), (3, "10.0.0.22")],
        );
        lab.add_vip(
            "web6",
            2,
            "fd00::100",
            80,
            tcp,
            dsr,
            &[(4, "fd00::11"), (5, "fd00::12")],
        );
        lab.add_vip(
            "tun4",
            3,
            "10.0.0.200",
            80,
            tcp,
            tunnel,
            &[(6, "10.1.0.11"), (7, "10.1.0.12")],
        );
        lab.add_vip(
            "tun6",
            4,
            "fd00::200",
            80,
            tcp,
            tunnel,
            &[(8, "fd01::11"), (9, "fd01::12")],
        );
        lab.add_vip("any4", 5, "10.0.0.150", 0, tcp, dsr, &[(10, "10.0.0.31")]);
        lab.add_vip("down4", 6, "10.0.0.160", 80, tcp, dsr, &[(11, "10.0.0.41")]);
        lab.set_state(11, BackendState::Down);
        lab.set_ring(6, &[]);
        lab.add_vip(
            "tun4in6",
            7,
            "10.0.0.210",
            80,
            tcp,
            tunnel,
            &[(12, "fd01::21")],
        );
        lab.add_vip(
            "dns6",
            8,
            "fd00::100",
            53,
            udp,
            dsr,
            &[(13, "fd00::21"), (14, "fd00::22")],
        );
        lab.add_vip(
            "tun6in4",
            9,
            "fd00::210",
            80,
            tcp,
            tunnel,
            &[(15, "10.1.0.21")],
        );
        // The `decap` program of the same object accepts tunnels to the first backend of each
        // tunnel VIP.
        for address in ["10.1.0.11", "fd01::11"] {
            lab.datapath
                .add_decap_address(&DecapKey::new(ip(address)))
                .expect("decap address");
        }
        lab
    }

    /// Adds a VIP with up backends of weight 1 and a Maglev ring of the default size.
    #[expect(
        clippy::too_many_arguments,
        reason = "one line per VIP in the fixture reads best"
    )]
    pub fn add_vip(
        &mut self,
        name: &'static str,
        id: u32,
        address: &str,
        port: u16,
        protocol: Protocol,
        forward: ForwardMode,
        backends: &[(u32, &str)],
    ) {
        let address = ip(address);
        let backends: Vec<(u32, IpAddr)> = backends.iter().map(|(id, a)| (*id, ip(a))).collect();
        for (backend_id, backend) in &backends {
            self.set_backend(*backend_id, *backend, BackendState::Up);
            let mut entry = self.datapath.backend(*backend_id).expect("read backend");
            entry.vip = id;
            self.datapath
                .set_backend(*backend_id, &entry)
                .expect("set backend");
        }
        let vip = LabVip {
            id,
            address,
            port,
            protocol,
            forward,
            backends,
        };
        let up: Vec<u32> = vip.backends.iter().map(|(id, _)| *id).collect();
        self.set_ring(id, &up);
        self.datapath
            .set_vip(
                &VipKey::new(address, port, protocol),
                &Vip::new(id, DEFAULT_RING_SIZE, forward),
            )
            .expect("set vip");
        self.vips.insert(name, vip);
    }

    /// Makes VIP `name` pick its new flows' backends by `rule`.
    pub fn set_new_flow_rule(&mut self, name: &str, rule: NewFlowRule) {
        let vip = &self.vips[name];
        self.datapath
            .set_vip(
                &VipKey::new(vip.address, vip.port, vip.protocol),
                &Vip::new(vip.id, DEFAULT_RING_SIZE, vip.forward).picking(rule),
            )
            .expect("set vip");
    }

    /// Writes backend `id` (egress = the test-run ingress, so forwarding is `XDP_TX`).
    pub fn set_backend(&mut self, id: u32, address: IpAddr, state: BackendState) {
        let (addr, family) = addr_bytes(address);
        let backend = Backend {
            addr,
            family: family as u8,
            state: state as u8,
            ifindex: TEST_RUN_IFINDEX,
            mtu: MTU,
            dst_mac: backend_mac(id),
            src_mac: LB_MAC,
            ..Backend::default()
        };
        self.datapath
            .set_backend(id, &backend)
            .expect("set backend");
    }

    /// Changes the state of backend `id`.
    pub fn set_state(&mut self, id: u32, state: BackendState) {
        let mut backend = self.datapath.backend(id).expect("read backend");
        backend.state = state as u8;
        self.datapath
            .set_backend(id, &backend)
            .expect("set backend");
    }

    /// Builds and swaps in the Maglev ring of VIP `vip` over backends `ids` (weight 1 each).
    pub fn set_ring(&mut self, vip: u32, ids: &[u32]) {
        let identities: Vec<[u8; 4]> = ids.iter().map(|id| id.to_be_bytes()).collect();
        let backends: Vec<MaglevBackend<'_>> = ids
            .iter()
            .zip(&identities)
            .map(|(id, identity)| MaglevBackend {
                id: *id,
                identity,
                weight: 1,
            })
            .collect();
        let ring = build_ring(&backends, DEFAULT_RING_SIZE).expect("build ring");
        self.datapath.set_ring(vip, &ring).expect("set ring");
        self.rings.insert(vip, ring);
    }

    /// The backend the ring of VIP `vip` gives `flow`, predicted in userspace.
    pub fn ring_backend(&self, vip: u32, flow: &FlowKey) -> u32 {
        let ring = &self.rings[&vip];
        ring[(lb_common::flow_hash(flow) % ring.len() as u32) as usize]
    }

    /// A VIP by name.
    pub fn vip(&self, name: &str) -> &LabVip {
        &self.vips[name]
    }

    /// Address of backend `id` of VIP `name`.
    pub fn backend_address(&self, name: &str, id: u32) -> IpAddr {
        self.vips[name]
            .backends
            .iter()
            .find(|(b, _)| *b == id)
            .expect("backend of vip")
            .1
    }

    /// Runs `program` once on `frame`: the verdict and the frame as the program left it.
    pub fn run_program(
        &mut self,
        program: Program,
        frame: &[u8],
    ) -> std::io::Result<(u32, Vec<u8>)> {
        let xdp = self.datapath.program(program).expect("program");
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let result = xdp.test_run(opts).map_err(std::io::Error::other)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Runs the load balancer once on `frame`.
    pub fn run(&mut self, frame: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
        self.run_program(Program::Balancer, frame)
    }
}
