//! Keys and values of the datapath's BPF maps, and their names and default sizes.
//!
//! Each map has one owner module in lb-ebpf and one in lb-user; the names here are the names of
//! the maps in the object file (and of their pins under the state directory).

/// Address family as stored in map keys and values.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub enum Family {
    /// IPv4: addresses use the first 4 of 16 bytes.
    V4 = 4,
    /// IPv6.
    V6 = 6,
}

/// Transport protocol of a VIP, as its IP protocol number.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Protocol {
    /// TCP (6).
    Tcp = 6,
    /// UDP (17).
    Udp = 17,
}

/// How packets of a VIP reach its backends.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum ForwardMode {
    /// Layer-2 direct server return: only the Ethernet addresses are rewritten.
    Dsr = 1,
    /// IP-in-IP (outer family = the backend's): IPIP, IP6IP6, or 4in6/6in4.
    Tunnel = 2,
}

/// How the datapath picks a new flow's backend (a VIP's `balance`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NewFlowRule {
    /// The backend in the flow's Maglev ring slot (`maglev`, `response-time`).
    Ring = 0,
    /// The less loaded of two candidates: the flow's ring slot and a second slot
    /// ([`crate::least_conn`]).
    LeastConn = 1,
}

/// Health of a backend as the datapath sees it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum BackendState {
    /// Slot never written or backend removed: treated like `Down`.
    Unused = 0,
    /// Healthy: in the ring, tracked flows stay.
    Up = 1,
    /// Weight 0: not in the ring, but tracked flows stay.
    Draining = 2,
    /// Failed health checks: not in the ring, tracked flows are re-hashed.
    Down = 3,
}

impl Protocol {
    /// Every protocol.
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    /// The protocol of an IP protocol number as stored in maps, if it is one of ours.
    pub const fn from_raw(number: u8) -> Option<Self> {
        match number {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// Lower-case name as in the configuration, the CLI and JSON: `tcp` or `udp`.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl ForwardMode {
    /// Every mode.
    pub const ALL: [ForwardMode; 2] = [ForwardMode::Dsr, ForwardMode::Tunnel];

    /// The mode stored in a [`Vip`] entry, if it is a known one.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(ForwardMode::Dsr),
            2 => Some(ForwardMode::Tunnel),
            _ => None,
        }
    }

    /// Lower-case name as in the configuration, the CLI and JSON: `dsr` or `tunnel`.
    pub const fn name(self) -> &'static str {
        match self {
            ForwardMode::Dsr => "dsr",
            ForwardMode::Tunnel => "tunnel",
        }
    }
}

impl BackendState {
    /// Every state.
    pub const ALL: [BackendState; 4] = [
        BackendState::Unused,
        BackendState::Up,
        BackendState::Draining,
        BackendState::Down,
    ];

    /// The state stored in a [`Backend`] entry; unknown values read as `Unused` (treated like
    /// `Down` by the datapath).
    pub const fn from_raw(raw: u8) -> Self {
        match raw {
            1 => BackendState::Up,
            2 => BackendState::Draining,
            3 => BackendState::Down,
            _ => BackendState::Unused,
        }
    }

    /// Whether tracked flows stay on a backend in this state (`Up` or `Draining`); flows
    /// tracked to any other state are re-hashed through the ring.
    pub const fn is_usable(self) -> bool {
        match self {
            BackendState::Up | BackendState::Draining => true,
            BackendState::Unused | BackendState::Down => false,
        }
    }

    /// Lower-case name as in the CLI and JSON: `unused`, `up`, `draining` or `down`.
    pub const fn name(self) -> &'static str {
        match self {
            BackendState::Unused => "unused",
            BackendState::Up => "up",
            BackendState::Draining => "draining",
            BackendState::Down => "down",
        }
    }
}

/// Maximum number of VIPs (size of `VIPS`, `RINGS`, `VIP_STATS`).
pub const MAX_VIPS: u32 = 1024;
/// Maximum number of (VIP, backend) pairs (size of `BACKENDS`, `BACKEND_STATS`).
pub const MAX_BACKENDS: u32 = 16384;
/// Default Maglev ring size (a prime).
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Default number of tracked flows (`FLOWS`: sets of 4; a set's least recently seen flow makes
/// room for a new one).
pub const DEFAULT_CONNTRACK_SIZE: u32 = 1 << 20;
/// Size of the devmap used for `XDP_REDIRECT` to another interface.
pub const MAX_INTERFACES: u32 = 64;
/// Map flags of every ring (inner map of `RINGS`): `BPF_F_INNER_MAP` (rings of any size can be
/// inserted, kernel 5.10) | `BPF_F_MMAPABLE` (userspace fills a ring with one memcpy, kernel 5.5).
pub const RING_FLAGS: u32 = 0x1000 | 0x400;
/// Map flags of `VIP_SLOTS` and `VIP_ENTRIES`: `BPF_F_MMAPABLE` (kernel 5.5), so the agent
/// writes each 32-bit word with one store (a `bpf_map_update_elem` copies with `memcpy`, which
/// a program reading at the same time may see half done).
pub const VIP_INDEX_FLAGS: u32 = 0x400;
/// Map flags of `FLOWS`: `BPF_F_MMAPABLE` (kernel 5.5), so `lb stats` and `/metrics` count its
/// flows by class reading memory, not a syscall per set.
pub const FLOWS_FLAGS: u32 = 0x400;
/// Map flags of `LOADS`: `BPF_F_MMAPABLE` (kernel 5.5), so the agent writes a census of
/// thousands of backends with stores, not a syscall each.
pub const LOADS_FLAGS: u32 = 0x400;
/// Ring slot value meaning "no backend" (never written by a well-formed ring).
pub const NO_BACKEND: u32 = u32::MAX;

/// Map names, shared by the object file and the pins under the state directory.
pub mod names {
    /// `HashMap<VipKey, Vip>`: which (address, port, protocol) are VIPs.
    pub const VIPS: &str = "VIPS";
    /// `ArrayOfMaps<Array<u32>>` indexed by VIP id: the VIP's Maglev ring of backend ids.
    pub const RINGS: &str = "RINGS";
    /// `Array<Backend>` indexed by backend id.
    pub const BACKENDS: &str = "BACKENDS";
    /// `Array<FlowSet>`: the connection-tracking table, flow → backend
    /// ([`crate::conntrack`]).
    pub const FLOWS: &str = "FLOWS";
    /// `LruHashMap<FlowKey, Conntrack>`, flow → backend: the connection-tracking table of
    /// layout version 0, which `FLOWS` replaced. Not in the object any more; named for the
    /// migration from version 0 and so that `lb detach` removes its pin.
    pub const CONNTRACK: &str = "CONNTRACK";
    /// `Array<Settings>` with one entry.
    pub const SETTINGS: &str = "SETTINGS";
    /// `DevMap` of egress interfaces for `XDP_REDIRECT`, keyed by ifindex % MAX_INTERFACES.
    pub const TX_PORTS: &str = "TX_PORTS";
    /// `PerCpuArray<u64>` indexed by [`crate::stats::Counter`].
    pub const STATS: &str = "STATS";
    /// `PerCpuArray<VipStats>` indexed by VIP id.
    pub const VIP_STATS: &str = "VIP_STATS";
    /// `PerCpuArray<BackendStats>` indexed by backend id.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// `Array<u32>` of [`crate::vip_index::VIP_SLOTS`] slot words: the VIP index's slots.
    pub const VIP_SLOTS: &str = "VIP_SLOTS";
    /// `Array<VipEntry>` indexed by VIP id: the VIP index's entries.
    pub const VIP_ENTRIES: &str = "VIP_ENTRIES";
    /// `HashMap<DecapKey, u8>`: outer destinations the `decap` program strips tunnels for.
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    /// `PerCpuArray<u64>` indexed by [`crate::stats::DecapCounter`].
    pub const DECAP_STATS: &str = "DECAP_STATS";
    /// `Array<CheckPath>` indexed by path slot: how `steer_check` sends each backend's
    /// health checks ([`crate::check_path`]). Not pinned.
    pub const CHECK_PATHS: &str = "CHECK_PATHS";
    /// `PerCpuArray<u64>` indexed by [`crate::check_path::CheckCounter`]. Not pinned.
    pub const CHECK_STATS: &str = "CHECK_STATS";
    /// `Array<BackendLoad>` indexed by backend id: active flows and weights of least-conn
    /// VIPs' backends ([`crate::least_conn`]). Not pinned: the agent counts them afresh.
    pub const LOADS: &str = "LOADS";
    /// `ArrayOfMaps<Array<u32>>` indexed by VIP id: the ring before the VIP's last change,
    /// for its second-chance window. Not pinned.
    pub const PREVIOUS_RINGS: &str = "PREVIOUS_RINGS";
    /// `PerCpuArray<u64>` indexed by [`crate::stats::SecondChanceCounter`]. Not pinned.
    pub const SECOND_CHANCE_STATS: &str = "SECOND_CHANCE_STATS";
    /// `Queue<[u32; 4]>`: second-chance hops `decap` has no route to yet.
    pub const HOP_NEIGHBOURS: &str = "HOP_NEIGHBOURS";
    /// `HashMap<DecapKey, HopRoute>`: how `decap` reaches each second-chance hop.
    pub const HOP_ROUTES: &str = "HOP_ROUTES";
    /// `Array<Layout>` with one entry: the layout of the pinned maps ([`crate::layout`]).
    pub const LAYOUT: &str = "LAYOUT";
    /// The balancer's maps: pinned under the state directory, so conntrack, rings and counters
    /// outlive the agent.
    pub const BALANCER: [&str; 12] = [
        VIPS,
        VIP_SLOTS,
        VIP_ENTRIES,
        RINGS,
        BACKENDS,
        FLOWS,
        SETTINGS,
        TX_PORTS,
        STATS,
        VIP_STATS,
        BACKEND_STATS,
        LAYOUT,
    ];
    /// Maps earlier layout versions pinned that this one does not have: removed with the
    /// others (`lb detach`).
    pub const RETIRED: [&str; 1] = [CONNTRACK];
    /// Name of the pinned XDP link in the state directory.
    pub const LINK: &str = "link";
}

/// Key of `VIPS`. Port 0 is an "all ports" VIP, looked up when the exact port misses.
///
/// Aligned to 4 bytes without padding (size 20), like [`crate::FlowKey`], so the XDP program
/// moves it by words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    /// VIP address, network byte order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// Port, network byte order; 0 = all ports.
    pub port: [u8; 2],
    /// [`Protocol`] number.
    pub protocol: u8,
    /// [`Family`] as 4 or 6.
    pub family: u8,
}

impl VipKey {
    /// The key as five little-endian 32-bit words (the address's four, then port, protocol
    /// and family): how the VIP index hashes and compares keys, a word at a time.
    #[inline(always)]
    pub const fn words(&self) -> [u32; 5] {
        let a = &self.addr;
        [
            u32::from_le_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_le_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_le_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_le_bytes([a[12], a[13], a[14], a[15]]),
            u32::from_le_bytes([self.port[0], self.port[1], self.protocol, self.family]),
        ]
    }

    /// The key whose [`Self::words`] are `words`.
    #[inline(always)]
    pub const fn from_words(words: [u32; 5]) -> Self {
        let w = [
            words[0].to_le_bytes(),
            words[1].to_le_bytes(),
            words[2].to_le_bytes(),
            words[3].to_le_bytes(),
            words[4].to_le_bytes(),
        ];
        Self {
            addr: [
                w[0][0], w[0][1], w[0][2], w[0][3], w[1][0], w[1][1], w[1][2], w[1][3], w[2][0],
                w[2][1], w[2][2], w[2][3], w[3][0], w[3][1], w[3][2], w[3][3],
            ],
            port: [w[4][0], w[4][1]],
            protocol: w[4][2],
            family: w[4][3],
        }
    }
}

/// Value of `VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vip {
    /// Index into `RINGS` and `VIP_STATS`.
    pub id: u32,
    /// Number of slots of the VIP's ring (prime). The ring is looked up at `hash % ring_size`.
    pub ring_size: u32,
    /// [`ForwardMode`] as u8.
    pub forward: u8,
    /// [`NewFlowRule`] as u8. Layout 3 had a zero pad byte here, which reads as
    /// [`NewFlowRule::Ring`]: the same maps serve builds with and without it.
    pub new_flows: u8,
    /// Always zero.
    pub _pad: [u8; 2],
}

/// Value of `BACKENDS`: where and how to send a packet for one backend of one VIP.
///
/// Next hops are resolved by the agent (ARP/ND through the kernel) and stored here, so the
/// per-packet path does no FIB lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Backend address, network byte order; IPv4 in the first 4 bytes. Tunnel mode's outer
    /// destination.
    pub addr: [u8; 16],
    /// [`Family`] of `addr`.
    pub family: u8,
    /// [`BackendState`] as u8.
    pub state: u8,
    /// Always zero.
    pub _pad: [u8; 2],
    /// Id of the VIP this backend serves (lets a restarted agent recover its id allocation).
    pub vip: u32,
    /// Interface the packet leaves by: `XDP_TX` if it is the ingress interface, else redirect.
    pub ifindex: u32,
    /// MTU of that interface: encapsulated packets that would exceed it are dropped and counted.
    pub mtu: u32,
    /// Destination MAC: the backend's (or its gateway's) address.
    pub dst_mac: [u8; 6],
    /// Source MAC: the egress interface's address.
    pub src_mac: [u8; 6],
}

/// Value of `CONNTRACK`, the connection-tracking table of layout version 0 (an LRU hash keyed
/// by [`crate::FlowKey`]); `FLOWS` replaced it ([`crate::conntrack`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conntrack {
    /// Backend id the flow is pinned to.
    pub backend: u32,
}

/// The single value of `SETTINGS`: global datapath settings.
///
/// Aligned to 4 bytes with explicit padding (size 44), so the XDP program copies addresses by
/// words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Outer source address of IPv4 tunnels.
    pub tunnel_source_v4: [u8; 4],
    /// Outer source address of IPv6 tunnels.
    pub tunnel_source_v6: [u8; 16],
    /// MAC of the interface the balancer runs on: only frames addressed to it (or to a
    /// broadcast or multicast address) are balanced. All zeros: every frame is (not set yet).
    pub local_mac: [u8; 6],
    /// Always zero.
    pub _pad: [u8; 2],
    /// How long established and closing flows stay protected from eviction while idle, in
    /// `FLOWS` ticks ([`crate::conntrack`]). All zeros (not set yet): no flow is protected,
    /// the table is a plain least-recently-seen cache.
    pub idle_timeouts: crate::conntrack::IdleTimeouts,
}

/// Key of `DECAP_ADDRS`: a local address tunnels may be addressed to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecapKey {
    /// Address, network byte order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// [`Family`] as 4 or 6.
    pub family: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

/// Value of `HOP_ROUTES` (`decap`'s, by [`DecapKey`] of a second-chance hop): how this backend
/// reaches the hop, resolved by `lb decap` through the kernel's routes and neighbours.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopRoute {
    /// The interface to send by.
    pub ifindex: u32,
    /// The hop's (or its gateway's) MAC, then the interface's: the frame's Ethernet addresses.
    pub macs: [u8; 12],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and byte arrays, with every
    // byte covered by a field (explicit padding), so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Vip {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Conntrack {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::check_path::CheckPath {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::least_conn::BackendLoad {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DecapKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HopRoute {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::flow::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::stats::VipStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::stats::BackendStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::layout::Layout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::vip_index::VipEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::conntrack::FlowSet {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<VipKey>(), 20);
        assert_eq!(size_of::<Vip>(), 12);
        assert_eq!(size_of::<Backend>(), 44);
        assert_eq!(size_of::<Conntrack>(), 4);
        assert_eq!(size_of::<Settings>(), 44);
        assert_eq!(size_of::<DecapKey>(), 20);
        assert_eq!(size_of::<crate::vip_index::VipEntry>(), 32);
        assert_eq!(size_of::<crate::conntrack::FlowSet>(), 208);
        assert_eq!(size_of::<crate::FlowKey>(), 40);
        assert_eq!(core::mem::align_of::<crate::FlowKey>(), 8);
        assert_eq!(core::mem::align_of::<VipKey>(), 4);
        assert_eq!(core::mem::align_of::<Settings>(), 4);
    }
}
