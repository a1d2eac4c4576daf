//! Every BPF map of the datapath, defined once. Userspace owns their contents (lb-user's
//! `datapath` module); the programs only read them, except the counters and `FLOWS`.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, DevMapHash, HashMap, PerCpuArray, Queue},
    macros::btf_map,
};
use lb_common::{
    check_path::{CheckCounter, CheckPath},
    conntrack::{sets_for, FlowSet, IdleTimeouts},
    layout::Layout,
    least_conn::BackendLoad,
    maps::{
        Backend, DecapKey, HopRoute, Settings, Vip, VipKey, DEFAULT_CONNTRACK_SIZE,
        DEFAULT_RING_SIZE, FLOWS_FLAGS, LOADS_FLAGS, MAX_BACKENDS, MAX_INTERFACES, MAX_VIPS,
        RING_FLAGS, VIP_INDEX_FLAGS,
    },
    stats::{BackendStats, Counter, DecapCounter, SecondChanceCounter, VipStats},
    vip_index::{VipEntry, VIP_SLOTS as SLOTS},
};

/// VIP (address, port, protocol) → VIP id, ring size, forwarding mode. The truth the VIP
/// index is derived from; the program reads it only for keys whose slot says so.
#[btf_map]
pub static VIPS: HashMap<VipKey, Vip, { MAX_VIPS as usize }> = HashMap::new();

/// The VIP index's slots (`lb_common::vip_index`): hash of a VIP key → VIP id and tag.
#[btf_map]
pub static VIP_SLOTS: Array<u32, { SLOTS as usize }, { VIP_INDEX_FLAGS as usize }> = Array::new();

/// The VIP index's entries, by VIP id: the key to compare and the VIP.
#[btf_map]
pub static VIP_ENTRIES: Array<VipEntry, { MAX_VIPS as usize }, { VIP_INDEX_FLAGS as usize }> =
    Array::new();

/// A ring, the inner map type of `RINGS`: slot → backend id.
///
/// `BPF_F_INNER_MAP` lets rings of any size (the configured `table_size`) be inserted;
/// `BPF_F_MMAPABLE` lets userspace fill a new ring with one memcpy instead of a syscall per slot.
pub type Ring = Array<u32, { DEFAULT_RING_SIZE as usize }, { RING_FLAGS as usize }>;

/// VIP id → its Maglev ring.
///
/// Rings are replaced atomically: userspace fills a new inner map completely, then swaps the
/// outer slot in one `bpf_map_update_elem`. A packet holds either the old ring or the new one,
/// never a half-written one (Katran rewrites its ring in place, so a packet can see a mix).
#[btf_map]
pub static RINGS: ArrayOfMaps<Ring, { MAX_VIPS as usize }> = ArrayOfMaps::new();

/// VIP id → the ring it had before its last change, kept for its second-chance window: a
/// tunnel packet of a connection lb does not track, whose slot had another backend there,
/// carries that backend as a hop (`lb_common::tunnel`, `docs/SECOND_CHANCE.md`). Not pinned:
/// the agent keeps what it needs to rebuild them in its records.
#[btf_map]
pub static PREVIOUS_RINGS: ArrayOfMaps<Ring, { MAX_VIPS as usize }> = ArrayOfMaps::new();

/// Second-chance counters by [`SecondChanceCounter`]. Not pinned.
#[btf_map]
pub static SECOND_CHANCE_STATS: PerCpuArray<u64, { SecondChanceCounter::COUNT as usize }> =
    PerCpuArray::new();

/// Backend id → address, health state and next hop.
#[btf_map]
pub static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// Backend id → active flows and weight, for least-conn VIPs (`lb_common::least_conn`): the
/// agent writes its count of `FLOWS` a few times a second, and the program keeps it current in
/// between (one more for each of a backend's flows that becomes established, one less for each
/// close; `lb_common::least_conn::active_change`). Not pinned:
/// the agent that loads the program counts afresh.
#[btf_map]
pub static LOADS: Array<BackendLoad, { MAX_BACKENDS as usize }, { LOADS_FLAGS as usize }> =
    Array::new();

/// Flow → backend id: sets of flows (`lb_common::conntrack`), read and written by the program;
/// its size is set at load time (`conntrack_size`), and [`FLOW_SETS`] says it.
#[btf_map]
pub static FLOWS: Array<FlowSet, { DEFAULT_FLOW_SETS as usize }, { FLOWS_FLAGS as usize }> =
    Array::new();

/// The number of sets of `FLOWS`, written into the object by the loader.
#[no_mangle]
static FLOW_SETS: u32 = DEFAULT_FLOW_SETS;

/// Sets in the default `FLOWS`.
const DEFAULT_FLOW_SETS: u32 = sets_for(DEFAULT_CONNTRACK_SIZE);

/// The number of sets of `FLOWS`.
#[inline(always)]
pub fn flow_sets() -> u32 {
    // SAFETY: reading a plain static; volatile, so the value the loader wrote into the object
    // is read instead of the default being folded in at compile time.
    unsafe { core::ptr::read_volatile(&FLOW_SETS) }
}

/// Global settings (tunnel source addresses, the interface's MAC), one entry.
#[btf_map]
pub static SETTINGS: Array<Settings, 1> = Array::new();

/// Settings before the agent wrote any: no tunnel sources, every frame balanced.
static UNSET: Settings = Settings {
    tunnel_source_v4: [0; 4],
    tunnel_source_v6: [0; 16],
    local_mac: [0; 6],
    _pad: [0; 2],
    idle_timeouts: IdleTimeouts::new(0, 0, 0),
};

/// The settings, read once per packet.
#[inline(always)]
pub fn settings() -> &'static Settings {
    SETTINGS.get(0).unwrap_or(&UNSET)
}

/// The pinned state's layout (`lb_common::layout`): written by the agent, never read here.
#[btf_map]
pub static LAYOUT: Array<Layout, 1> = Array::new();

/// Egress interfaces other than the ingress one, for `XDP_REDIRECT`, keyed by ifindex.
#[btf_map]
pub static TX_PORTS: DevMapHash<{ MAX_INTERFACES as usize }> = DevMapHash::new();

/// Global counters by [`Counter`].
#[btf_map]
pub static STATS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

/// Per-VIP counters, by VIP id.
#[btf_map]
pub static VIP_STATS: PerCpuArray<VipStats, { MAX_VIPS as usize }> = PerCpuArray::new();

/// Per-backend counters, by backend id.
#[btf_map]
pub static BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// Local addresses the `decap` program strips tunnels for.
#[btf_map]
pub static DECAP_ADDRS: HashMap<DecapKey, u8, 64> = HashMap::new();

/// How `decap` reaches each second-chance hop (interface, MACs), by address: written by
/// `lb decap`, which resolves the hops the program queues in [`HOP_NEIGHBOURS`].
#[btf_map]
pub static HOP_ROUTES: HashMap<DecapKey, HopRoute, 1024> = HashMap::new();

/// Second-chance hops whose link-layer address `decap` did not know (the address's 16 bytes,
/// IPv4 in the first 4, as two little-endian double words): `lb decap` takes them and has the
/// kernel resolve them.
#[btf_map]
pub static HOP_NEIGHBOURS: Queue<[u64; 2], 64> = Queue::new();

/// `decap` counters by [`DecapCounter`].
#[btf_map]
pub static DECAP_STATS: PerCpuArray<u64, { DecapCounter::COUNT as usize }> = PerCpuArray::new();

/// Path slot (a backend id) → how `steer_check` sends that backend's checks. Owned by the
/// agent's check paths; not pinned: checks live and die with the agent.
#[btf_map]
pub static CHECK_PATHS: Array<CheckPath, { MAX_BACKENDS as usize }> = Array::new();

/// `steer_check` counters by [`CheckCounter`].
#[btf_map]
pub static CHECK_STATS: PerCpuArray<u64, { CheckCounter::COUNT as usize }> = PerCpuArray::new();
