//! Finding the VIP of a packet and the backend of its flow.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::helpers::bpf_jiffies64;
use lb_common::{
    conntrack::{
        after_packet, conntrack_hash, find_way, set_index, stamp, tag, tag_backend, tag_check,
        ticks, way_for, ConntrackHash, FlowClass, FlowSet, IdleTimeouts, WAYS,
    },
    least_conn::{active_change, prefers_second, second_slot},
    lookup::{self, Source},
    maps::{Backend, BackendState, ForwardMode, NewFlowRule, Protocol, Vip, VipKey, NO_BACKEND},
    stats::{Counter, SecondChanceCounter},
    vip_index::{self, vip_hash_of_words},
    FlowKey,
};

use crate::{
    maps::{
        flow_sets, BACKENDS, FLOWS, LOADS, PREVIOUS_RINGS, RINGS, VIPS, VIP_ENTRIES, VIP_SLOTS,
    },
    net::StackKey,
    parse::Packet,
    stats,
};

/// The VIP a flow is addressed to: the keys of [`lookup::vip_keys`] in order (exact port, then
/// the address's all-ports VIP), each looked up in the VIP index (`lb_common::vip_index`) and,
/// when its slot says so, in `VIPS`.
#[inline(always)]
pub fn vip(flow: &FlowKey) -> Option<Vip> {
    let [exact, all_ports] = lookup::vip_key_words(flow);
    find_vip(exact).or_else(|| find_vip(all_ports))
}

/// The VIP of the key whose [`VipKey::words`] are `key`.
#[inline(always)]
fn find_vip(key: [u32; 5]) -> Option<Vip> {
    let hash = vip_hash_of_words(key);
    let word = *VIP_SLOTS.get(hash.slot)?;
    let probe = vip_index::probe(word, hash.tag);
    if let Some(entry) = probe.candidate.and_then(|id| VIP_ENTRIES.get(id)) {
        if same_words(entry.key.words(), key) {
            return Some(entry.vip);
        }
    }
    if !probe.ask_vips {
        return None;
    }
    let key = StackKey::new(key);
    // SAFETY: the kernel returned a pointer to a value of VIPS, valid for this program run;
    // we copy it out immediately.
    VIPS.get_ptr(key.as_key::<VipKey>())
        .map(|vip| unsafe { *vip })
}

/// Whether two keys' words are equal, by folding their differences: `==` on arrays becomes a
/// call to a byte-by-byte `memcmp` in BPF.
#[inline(always)]
fn same_words<const N: usize>(a: [u32; N], b: [u32; N]) -> bool {
    let mut difference = 0;
    for i in 0..N {
        difference |= a[i] ^ b[i];
    }
    difference == 0
}

/// A backend chosen for a packet.
pub struct Choice {
    /// Index into `BACKENDS` and `BACKEND_STATS`.
    pub id: u32,
    /// Its entry (in the map: read where needed, not copied).
    pub backend: &'static Backend,
    /// The IPv6 flow label of the flow's tunnel packets.
    pub flow_label: u32,
    /// The second-chance hop the tunnel packet carries: the backend that had the flow's ring
    /// slot before the VIP's last ring change.
    pub hop: Option<&'static Backend>,
}

/// Chooses the backend of a packet's flow, by the rule of [`lookup::source`].
///
/// A tracked flow stays on its backend while that backend is up or draining; a SYN (a new
/// connection, even on a reused 5-tuple) and an untracked flow go through the VIP's Maglev ring,
/// and so does a tracked flow whose backend went down (it is re-hashed). A flow given a backend
/// by the ring is tracked (`FLOWS`, see `lb_common::conntrack`) if its set has a way no
/// protected flow holds (`timeouts`); an ICMP error follows its flow the same way but is never
/// tracked itself, nor counts as the flow's packet. `None`: no backend.
///
/// A least-conn VIP's new flow (a SYN, or the first packet of a UDP flow) that can be tracked
/// goes to the less loaded of two candidates instead ([`least_loaded`]); its backend's active
/// count takes it in once it is established ([`FlowTable::seen`]). A flow that cannot be
/// tracked, or a packet that opens nothing, keeps to the ring, where every later packet and
/// every other instance would send it.
#[inline(always)]
pub fn backend(packet: &Packet, vip: &Vip, timeouts: &IdleTimeouts) -> Option<Choice> {
    let flow = &packet.flow;
    let hash = conntrack_hash(flow);
    let flow_label = hash.flow_label();
    let table = FlowTable::of(hash);
    let found = table.as_ref().and_then(|table| table.find(flow));
    // A SYN takes the ring whatever is tracked: its tracked backend is not even read.
    let tracked = found
        .filter(|_| !packet.syn)
        .map(|(way, id)| (way, id, BACKENDS.get(id)));
    let state = tracked.map(|(_, _, backend)| {
        backend.map_or(BackendState::Unused, |backend| {
            BackendState::from_raw(backend.state)
        })
    });
    let least_conn = vip.new_flows == NewFlowRule::LeastConn as u8;
    match (lookup::source(state, packet.syn), tracked, &table) {
        (Source::Tracked, Some((way, id, Some(backend))), Some(table)) => {
            if !packet.icmp_error {
                table.seen(way, packet, least_conn.then_some(id));
            }
            stats::vip_conntrack_hit(vip.id);
            return Some(Choice {
                id,
                backend,
                flow_label,
                hop: None,
            });
        }
        (Source::Rehash, _, _) => stats::count(Counter::Rehashed),
        (Source::Tracked | Source::Ring, _, _) => {}
    }
    let (slot, ring) = from_ring(flow, vip)?;
    let (mut id, mut backend) = ring;
    // A packet of a TCP connection lb does not track (a restart, another instance's flow)
    // whose slot had another backend before the last ring change carries that one as a hop,
    // and stays untracked so that every packet carries it while the window lasts.
    let hop = match (packet.syn || packet.icmp_error, found) {
        (false, None) if flow.protocol == Protocol::Tcp as u8 => previous_owner(vip, slot, ring),
        _ => None,
    };
    if hop.is_some() {
        stats::count_second_chance(SecondChanceCounter::HopsCarried);
        stats::new_flow(vip.id, id);
    } else if !packet.icmp_error {
        // (An error message about a flow is no reason to track it.)
        let opens = packet.syn || (flow.protocol != Protocol::Tcp as u8 && found.is_none());
        if least_conn && opens {
            (id, backend) = least_loaded(hash, vip, ring, found, table.as_ref(), packet.syn);
        }
        if let Some(table) = &table {
            // A re-hashed flow keeps its class; a SYN, or a flow seen for the first time, is
            // unconfirmed.
            let rehashed = tracked.map(|(way, _, _)| way);
            let is_tracked = match table.track(
                flow,
                found.map(|(way, _)| way),
                rehashed,
                id,
                packet,
                timeouts,
            ) {
                Tracked::Yes => true,
                Tracked::No => {
                    stats::count(Counter::ConntrackFull);
                    false
                }
                Tracked::EvictingProtected(victim) => {
                    stats::count(Counter::ConntrackEvictedProtected);
                    // (If its VIP is not least-conn, nothing reads that count.)
                    if victim.counted {
                        count_active(victim.backend, u64::MAX);
                    }
                    true
                }
            };
            if !is_tracked {
                (id, backend) = ring;
            }
        }
        stats::new_flow(vip.id, id);
    }
    Some(Choice {
        id,
        backend,
        flow_label,
        hop,
    })
}

/// The backend in ring slot `slot` of the VIP's previous ring, if it is not `ring`'s backend,
/// is usable and of the same family (the hop rides in the outer header); tunnel VIPs only.
#[inline(always)]
fn previous_owner(vip: &Vip, slot: u32, ring: (u32, &'static Backend)) -> Option<&'static Backend> {
    if vip.forward != ForwardMode::Tunnel as u8 {
        return None;
    }
    let id = *PREVIOUS_RINGS.get_value(vip.id, &slot)?;
    if id == ring.0 || id == NO_BACKEND {
        return None;
    }
    let previous = BACKENDS.get(id)?;
    let usable = BackendState::from_raw(previous.state).is_usable();
    // (An id freed and taken by another VIP's backend since is no hop.)
    let same = previous.vip == vip.id && previous.family == ring.1.family;
    (usable && same).then_some(previous)
}

/// What [`FlowTable::track`] did.
enum Tracked {
    /// The flow is tracked, in its own way, an empty one or an evictable flow's.
    Yes,
    /// Every way holds a protected flow: the flow is not tracked.
    No,
    /// The flow is tracked in the way of a flow that became protected after the way was
    /// chosen (its next packet, on another CPU, in between).
    EvictingProtected(Victim),
}

/// A protected flow evicted.
struct Victim {
    /// The backend it was tracked to.
    backend: u32,
    /// Whether it was one of its backend's active flows (established, not closing).
    counted: bool,
}

/// The set of `FLOWS` a flow belongs to.
struct FlowTable {
    set: *mut FlowSet,
    check: u32,
    /// The set's tag words, read once (each in one 8-byte load).
    tags: [u64; WAYS],
}

impl FlowTable {
    /// The set of the flow of `hash`; `None` if `FLOWS` has no such set (never, once loaded).
    #[inline(always)]
    fn of(hash: ConntrackHash) -> Option<Self> {
        let set = FLOWS.get_ptr_mut(set_index(hash, flow_sets())?)?;
        // SAFETY: `set` points to a FLOWS value, valid for this program run; each tag word is
        // read with one aligned 8-byte load (another CPU may be writing it).
        let tags = core::array::from_fn(|way| unsafe { read_volatile(&(*set).tags[way]) });
        Some(Self {
            set,
            check: hash.check,
            tags,
        })
    }

    /// The way holding `flow` and the backend it is tracked to.
    #[inline(always)]
    fn find(&self, flow: &FlowKey) -> Option<(usize, u32)> {
        let words = flow.words();
        // SAFETY: as in `of`; a key being rewritten reads as a mix, which the tag's check
        // (written last, read first) rejects.
        let way = find_way(&self.tags, self.check, |way| unsafe {
            same_words((*self.set).keys[way].words(), words)
        })?;
        Some((way, tag_backend(*self.tags.get(way)?)))
    }

    /// The flow in `way` sent `packet` (not a SYN) now: its stamp takes the tick and the class
    /// the packet gives it ([`after_packet`]), written only when either changed. When that
    /// makes it established, or closes it after, its backend `counted` (a least-conn VIP's)
    /// has one active flow more, or less ([`active_change`]).
    #[inline(always)]
    fn seen(&self, way: usize, packet: &Packet, counted: Option<u32>) {
        let now = now();
        // SAFETY: as in `of`; a stamp is one aligned 4-byte word, and any value is safe (it
        // only decides which way a new flow may take).
        unsafe {
            if let Some(old) = (*self.set).stamps.get_mut(way) {
                let was = FlowClass::of_stamp(*old);
                let class = after_packet(was, packet.flow.protocol, packet.closes);
                let new = stamp(now, class);
                if *old != new {
                    *old = new;
                }
                if let (Some(id), Some(delta)) = (counted, active_change(was, class)) {
                    count_active(id, delta);
                }
            }
        }
    }

    /// The class of the flow in `way`.
    #[inline(always)]
    fn class(&self, way: usize) -> FlowClass {
        // SAFETY: as in `seen`.
        let stamp = unsafe { read_volatile((*self.set).stamps.as_ptr().add(way % WAYS)) };
        FlowClass::of_stamp(stamp)
    }

    /// Tracks `flow` to `backend` in the way it has (`found`), an empty one, or the evictable
    /// one seen longest ago ([`way_for`]). Its class: unconfirmed, but for a flow re-hashed
    /// from the way `rehashed`, whose class `packet` carries on ([`after_packet`]).
    #[inline(always)]
    fn track(
        &self,
        flow: &FlowKey,
        found: Option<usize>,
        rehashed: Option<usize>,
        backend: u32,
        packet: &Packet,
        timeouts: &IdleTimeouts,
    ) -> Tracked {
        let now = now();
        // SAFETY: as in `of`. The key and the stamp are written before the tag word, which is
        // written with one aligned 8-byte store: a reader sees the old flow, the new one, or a
        // mix that the check rejects.
        unsafe {
            let stamps = (*self.set).stamps;
            let Some(way) = way_for(&self.tags, &stamps, found, now, timeouts) else {
                return Tracked::No;
            };
            let way = way % WAYS;
            let class = match rehashed {
                Some(old) => after_packet(
                    FlowClass::of_stamp(stamps[old % WAYS]),
                    flow.protocol,
                    packet.closes,
                ),
                None => FlowClass::Unconfirmed,
            };
            let set = &mut *self.set;
            // Read again: the flow there may have become protected since `stamps` was read.
            let victim = read_volatile(set.stamps.as_ptr().add(way));
            let evicts = found.is_none() && tag_check(self.tags[way]) != 0;
            let key = set.keys.as_mut_ptr().add(way);
            let words = flow.words();
            for (i, word) in words.iter().enumerate() {
                key.cast::<u32>().add(i).write(u32::from_le(*word));
            }
            set.stamps[way] = stamp(now, class);
            write_volatile(set.tags.as_mut_ptr().add(way), tag(self.check, backend));
            if evicts && timeouts.protects(victim, now) {
                Tracked::EvictingProtected(Victim {
                    backend: tag_backend(self.tags[way]),
                    counted: FlowClass::of_stamp(victim).is_established(),
                })
            } else {
                Tracked::Yes
            }
        }
    }
}

/// The clock of `FLOWS`' stamps ([`ticks`]).
#[inline(always)]
fn now() -> u32 {
    // SAFETY: a helper without arguments; the verifier inlines it as a load of jiffies.
    ticks(unsafe { bpf_jiffies64() })
}

/// The VIP's ring slot for `flow` ([`lookup::ring_slot`]) and the backend there.
#[inline(always)]
fn from_ring(flow: &FlowKey, vip: &Vip) -> Option<(u32, (u32, &'static Backend))> {
    let slot = lookup::ring_slot(flow, vip.ring_size)?;
    let id = *RINGS.get_value(vip.id, &slot)?;
    if id == NO_BACKEND {
        return None;
    }
    Some((slot, (id, BACKENDS.get(id)?)))
}

/// Which of a least-conn VIP's two candidates a new flow goes to: the backend of its ring slot
/// (`ring`) or that of its second slot ([`second_slot`]), if that one is up and has fewer
/// active flows for its weight ([`prefers_second`]). A SYN sent again (`syn`, its flow
/// `found` tracked but never confirmed) keeps the backend the first one got while it is up:
/// the counts may have changed since. (Asked after weighing, so that the benchmark's repeated
/// SYN times the whole choice.)
#[inline(always)]
fn least_loaded(
    hash: ConntrackHash,
    vip: &Vip,
    ring: (u32, &'static Backend),
    found: Option<(usize, u32)>,
    table: Option<&FlowTable>,
    syn: bool,
) -> (u32, &'static Backend) {
    let weighed = weigh(hash, vip, ring);
    if let (true, Some((way, id)), Some(table)) = (syn, found, table) {
        if id != weighed.0 && table.class(way) as u32 == FlowClass::Unconfirmed as u32 {
            if let Some(backend) = BACKENDS.get(id).filter(|backend| is_up(backend)) {
                return (id, backend);
            }
        }
    }
    weighed
}

/// The less loaded of a flow's two candidates (see [`least_loaded`]).
#[inline(always)]
fn weigh(hash: ConntrackHash, vip: &Vip, ring: (u32, &'static Backend)) -> (u32, &'static Backend) {
    let Some(slot) = second_slot(hash, vip.ring_size) else {
        return ring;
    };
    let Some(&id) = RINGS.get_value(vip.id, &slot) else {
        return ring;
    };
    if id == ring.0 || id == NO_BACKEND {
        return ring;
    }
    let Some(backend) = BACKENDS.get(id).filter(|backend| is_up(backend)) else {
        return ring;
    };
    match (LOADS.get(ring.0), LOADS.get(id)) {
        (Some(first), Some(second)) if prefers_second(*first, *second) => (id, backend),
        _ => ring,
    }
}

/// Whether new flows may go to `backend`.
#[inline(always)]
fn is_up(backend: &Backend) -> bool {
    backend.state == BackendState::Up as u8
}

/// Adds `delta` (wrapping: `u64::MAX` takes one off) to backend `id`'s active flows in `LOADS`.
///
/// A plain read and write, not an atomic add (Rust has none for BPF): when two CPUs count for
/// the same backend at the same instant, one of the two may be lost. The agent's next count
/// (a few times a second) sets it right; in between, a count off by a few moves at most a few
/// new flows to their other candidate.
#[inline(always)]
fn count_active(id: u32, delta: u64) {
    if let Some(load) = LOADS.get_ptr_mut(id) {
        // SAFETY: `load` points to a LOADS value, valid for this program run; the count is one
        // aligned 8-byte word, so another CPU or the agent sees it old or new, never torn.
        unsafe {
            let active = &raw mut (*load).active;
            write_volatile(active, read_volatile(active).wrapping_add(delta));
        }
    }
}
