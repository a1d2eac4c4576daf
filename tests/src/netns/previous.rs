//! A previous release's datapath, set up in a state directory the way its agent left it after
//! `kill -9` (or `--keep-datapath`): the release's own XDP object (`tests/data/`, see its
//! README), its maps pinned by name and its XDP link pinned as `link`, programmed with one DSR
//! VIP. Upgrade tests run traffic through it and start today's agent on its state.

use std::{net::IpAddr, path::Path};

use std::collections::BTreeMap;

use aya::{
    maps::{Array, ArrayOfMaps, HashMap, MapData},
    programs::{links::FdLink, Xdp, XdpMode},
    EbpfLoader,
};
use lb_common::{
    conntrack::sets_for,
    encoding::addr_bytes,
    layout::{Layout, V1_FINGERPRINT, V2_FINGERPRINT},
    maglev::{build_ring, MaglevBackend},
    maps::{Backend, BackendState, ForwardMode, Protocol, Vip, VipKey, DEFAULT_RING_SIZE},
    vip_index::{VipEntry, VipIndex},
};
use lb_user::datapath::Datapath;

use crate::netns::Netns;

/// A release whose pinned state upgrades must keep migrating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Commit 9ef4dc5, the last before the pinned state recorded its layout: layout 0 (no
    /// `LAYOUT`, 17 counters, 20-byte settings, conntrack in the `CONNTRACK` LRU map).
    V0,
    /// Commit a686308: layout 1 (`LAYOUT`, the interface MAC in the settings, still
    /// `CONNTRACK`).
    V1,
    /// Commit a4d45e0: layout 2 (`FLOWS`, a set table whose stamps were only a tick; the VIP
    /// index).
    V2,
}

/// Layout 0's object.
static V0_OBJECT: &[u8] = aya::include_bytes_aligned!("../../data/lb-v0.bpf.o");
/// Layout 1's object.
static V1_OBJECT: &[u8] = aya::include_bytes_aligned!("../../data/lb-v1.bpf.o");
/// Layout 2's object.
static V2_OBJECT: &[u8] = aya::include_bytes_aligned!("../../data/lb-v2.bpf.o");

/// `SETTINGS`' value in layouts 1 and 2 (28 bytes: no idle timeouts).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default)]
struct OldSettings {
    tunnel_source_v4: [u8; 4],
    tunnel_source_v6: [u8; 16],
    local_mac: [u8; 6],
    _pad: [u8; 2],
}

// SAFETY: repr(C), byte arrays only, every byte a field: any bit pattern is a value.
unsafe impl aya::Pod for OldSettings {}

/// The maps layout 0 pinned, by name.
const V0_MAPS: [&str; 9] = [
    "VIPS",
    "RINGS",
    "BACKENDS",
    "CONNTRACK",
    "SETTINGS",
    "TX_PORTS",
    "STATS",
    "VIP_STATS",
    "BACKEND_STATS",
];

impl Release {
    /// Its layout version.
    pub fn layout_version(self) -> u32 {
        match self {
            Self::V0 => 0,
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    /// Its XDP object (`tests/data/`).
    pub fn object(self) -> &'static [u8] {
        match self {
            Self::V0 => V0_OBJECT,
            Self::V1 => V1_OBJECT,
            Self::V2 => V2_OBJECT,
        }
    }

    /// The maps it pinned, by name.
    fn maps(self) -> Vec<&'static str> {
        match self {
            Self::V0 => V0_MAPS.to_vec(),
            Self::V1 => V0_MAPS.into_iter().chain(["LAYOUT"]).collect(),
            Self::V2 => V0_MAPS
                .into_iter()
                .filter(|map| *map != "CONNTRACK")
                .chain(["FLOWS", "LAYOUT", "VIP_SLOTS", "VIP_ENTRIES"])
                .collect(),
        }
    }

    /// The fingerprint it recorded in `LAYOUT`, if it had one.
    fn fingerprint(self) -> Option<u64> {
        match self {
            Self::V0 => None,
            Self::V1 => Some(V1_FINGERPRINT),
            Self::V2 => Some(V2_FINGERPRINT),
        }
    }
}

/// One backend as that release's agent would program it.
#[derive(Clone, Copy, Debug)]
pub struct OldBackend {
    /// Its id (index of `BACKENDS`).
    pub id: u32,
    /// Its address.
    pub address: IpAddr,
    /// Its MAC (the DSR next hop).
    pub mac: [u8; 6],
}

/// Sets up `release`'s datapath in `state_dir`, attached to `interface` of `ns`,
/// with one DSR VIP (id 0) on `vip:port/tcp` over `backends` (weights 1, a ring of the default
/// size whose slots are the ones today's agent computes for the same configuration). The
/// loaded object is dropped: only the pins keep the datapath, as after its agent was killed.
pub fn start(
    release: Release,
    ns: &Netns,
    state_dir: &Path,
    interface: &str,
    conntrack_size: u32,
    (vip, port): (IpAddr, u16),
    backends: &[OldBackend],
) {
    let (interface_mac, ifindex) = (ns.mac(interface), ns.ifindex(interface));
    let state_dir = state_dir.to_path_buf();
    let interface = interface.to_owned();
    let backends = backends.to_vec();
    ns.run(move || {
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let mut loader = EbpfLoader::new();
        let flow_sets = sets_for(conntrack_size);
        if release == Release::V2 {
            loader.map_max_entries("FLOWS", flow_sets);
            loader.override_global("FLOW_SETS", &flow_sets, true);
        } else {
            loader.map_max_entries("CONNTRACK", conntrack_size);
        }
        for map in release.maps() {
            loader.map_pin_path(map, state_dir.join(map));
        }
        let mut ebpf = loader
            .load(release.object())
            .expect("load the previous release's object");
        if let Some(fingerprint) = release.fingerprint() {
            let mut settings: Array<_, OldSettings> =
                Array::try_from(ebpf.map_mut("SETTINGS").expect("SETTINGS")).expect("type");
            let local = OldSettings {
                local_mac: interface_mac,
                ..OldSettings::default()
            };
            settings.set(0, local, 0).expect("settings");
            let mut layout: Array<_, Layout> =
                Array::try_from(ebpf.map_mut("LAYOUT").expect("LAYOUT")).expect("type");
            let recorded = Layout {
                version: release.layout_version(),
                _pad: 0,
                fingerprint,
            };
            layout.set(0, recorded, 0).expect("layout");
        }

        let mut entries: Array<_, Backend> =
            Array::try_from(ebpf.map_mut("BACKENDS").expect("BACKENDS")).expect("BACKENDS type");
        for backend in &backends {
            let (addr, family) = addr_bytes(backend.address);
            let entry = Backend {
                addr,
                family: family as u8,
                state: BackendState::Up as u8,
                vip: 0,
                ifindex,
                mtu: 1500,
                dst_mac: backend.mac,
                src_mac: interface_mac,
                ..Backend::default()
            };
            entries.set(backend.id, entry, 0).expect("backend entry");
        }

        let identities: Vec<Vec<u8>> = backends
            .iter()
            .map(|b| b.address.to_string().into_bytes())
            .collect();
        let members: Vec<MaglevBackend<'_>> = backends
            .iter()
            .zip(&identities)
            .map(|(b, identity)| MaglevBackend {
                id: b.id,
                identity,
                weight: 1,
            })
            .collect();
        let slots = build_ring(&members, DEFAULT_RING_SIZE).expect("ring");
        let ring = Datapath::prepare_ring(0, &slots).expect("ring map");
        let mut rings: ArrayOfMaps<_, MapData> =
            ArrayOfMaps::try_from(ebpf.map_mut("RINGS").expect("RINGS")).expect("RINGS type");
        rings.set(0, ring.map_data(), 0).expect("ring slot");

        let mut vips: HashMap<_, VipKey, Vip> =
            HashMap::try_from(ebpf.map_mut("VIPS").expect("VIPS")).expect("VIPS type");
        let key = VipKey::new(vip, port, Protocol::Tcp);
        let entry = Vip::new(0, DEFAULT_RING_SIZE, ForwardMode::Dsr);
        vips.insert(key, entry, 0).expect("vip");
        if release == Release::V2 {
            // Layout 2 finds VIPs through the VIP index, which its agent derived from VIPS.
            let index = VipIndex::of(&BTreeMap::from([(key, entry)]));
            let mut slots: Array<_, u32> =
                Array::try_from(ebpf.map_mut("VIP_SLOTS").expect("VIP_SLOTS")).expect("type");
            for (slot, word) in &index.slots {
                slots.set(*slot, *word, 0).expect("VIP slot");
            }
            let mut entries: Array<_, VipEntry> =
                Array::try_from(ebpf.map_mut("VIP_ENTRIES").expect("VIP_ENTRIES")).expect("type");
            entries
                .set(0, VipEntry { key, vip: entry }, 0)
                .expect("VIP entry");
        }

        let program: &mut Xdp = ebpf
            .program_mut("lb")
            .expect("lb program")
            .try_into()
            .expect("an XDP program");
        program.load().expect("verifier");
        let id = program.attach(&interface, XdpMode::Driver).expect("attach");
        let link = FdLink::try_from(program.take_link(id).expect("link")).expect("fd link");
        link.pin(state_dir.join("link")).expect("pin the link");
    });
}
