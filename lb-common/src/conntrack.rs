//! The connection-tracking table (`FLOWS`): flow → backend, as a set-associative table the
//! XDP program reads and writes itself, in place of a kernel LRU hash map.
//!
//! An LRU hash map costs a helper call per packet (jhash of the 40-byte key, a bucket walk, a
//! memcmp: about 25 ns of a conntrack hit on the benchmark machine), and an insert, which every
//! TCP SYN does, about 140 ns (a node taken from the LRU's free list under a lock, the bucket
//! locked, the replaced node pushed back): more than all the rest of a SYN's work. `FLOWS` is
//! an array of [`FlowSet`]s of [`WAYS`] flows. A flow's set is chosen by [`conntrack_hash`];
//! the program finds it there with inlined array reads.
//!
//! **What a flood may evict.** Every flow has a [`FlowClass`], kept beside the tick it was last
//! seen in its way's stamp ([`stamp`]). A new flow is [`FlowClass::Unconfirmed`]: a bare SYN,
//! a first datagram, or the first packet lb sees of a connection it did not track. Its next
//! packet (not a SYN) makes it established ([`after_packet`]); a client's FIN or RST makes a
//! TCP flow closing. An established or closing flow is *protected* while it has been idle for
//! less than its class's timeout ([`IdleTimeouts`], the `[conntrack]` settings): a new flow
//! takes the way it already had, else an empty way, else the way seen longest ago among those
//! that are not protected ([`way_for`]); when every way is protected the new flow is not
//! tracked (it still takes the ring, so it works unless the ring changes before its next
//! packet). So however many new flows arrive, from however many sources, they evict only each
//! other and idle flows, never an established connection that is still talking.
//!
//! Concurrency: programs on several CPUs may write one set at once (different flows, same
//! set). A way's [`FlowSet::tags`] word, written and read as one 8-byte access, holds both the
//! flow's 31-bit check (from bits of the hash that do not choose the set) and its backend, so
//! a reader that sees a key and a tag word written for different flows finds the check wrong
//! (but for a 2^-31 chance) and treats the flow as untracked: it takes the ring, as an evicted
//! flow does.

use crate::{
    word_hash::{finish, round},
    FlowKey,
};

/// Flows per set.
pub const WAYS: usize = 4;

/// A set of `FLOWS` (its value type): [`WAYS`] flows and their backends.
///
/// 208 bytes, aligned to 8: the tag words first, so a lookup reads one cache line of tags
/// (and stamps) before the one key it compares.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSet {
    /// Per way: the flow's check in the low 32 bits (odd; 0: the way is empty) and its backend
    /// id in the high 32.
    pub tags: [u64; WAYS],
    /// Per way: the flow's [`stamp`]: when it was last seen, in [`ticks`], and its
    /// [`FlowClass`].
    pub stamps: [u32; WAYS],
    /// Per way: the flow.
    pub keys: [FlowKey; WAYS],
}

/// What lb knows of a tracked flow: the low two bits of its [`stamp`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowClass {
    /// Seen once (a bare SYN, a single datagram, a connection's first packet lb saw): never
    /// protected, so new flows evict each other first.
    Unconfirmed = 0,
    /// A TCP flow lb saw a packet of after its first: protected while idle less than
    /// [`IdleTimeouts::tcp`].
    TcpEstablished = 1,
    /// A UDP flow that sent a second datagram: protected while idle less than
    /// [`IdleTimeouts::udp`].
    UdpEstablished = 2,
    /// A TCP flow whose client sent a FIN or RST: protected while idle less than
    /// [`IdleTimeouts::tcp_closing`], so the close handshake keeps its backend, then evictable.
    TcpClosing = 3,
}

impl FlowClass {
    /// Every class, in stamp order.
    pub const ALL: [FlowClass; 4] = [
        FlowClass::Unconfirmed,
        FlowClass::TcpEstablished,
        FlowClass::UdpEstablished,
        FlowClass::TcpClosing,
    ];

    /// The class in a stamp's low two bits.
    #[inline(always)]
    pub const fn of_stamp(stamp: u32) -> Self {
        match stamp & CLASS_MASK {
            0 => FlowClass::Unconfirmed,
            1 => FlowClass::TcpEstablished,
            2 => FlowClass::UdpEstablished,
            _ => FlowClass::TcpClosing,
        }
    }

    /// The established class of a flow of IP protocol `protocol`.
    #[inline(always)]
    pub const fn established(protocol: u8) -> Self {
        if protocol == crate::maps::Protocol::Tcp as u8 {
            FlowClass::TcpEstablished
        } else {
            FlowClass::UdpEstablished
        }
    }

    /// Whether a flow of this class is one of its backend's active flows: established, and
    /// not closing. A bare SYN or a single datagram is not (a flood of them adds nothing).
    #[inline(always)]
    pub const fn is_established(self) -> bool {
        matches!(self, FlowClass::TcpEstablished | FlowClass::UdpEstablished)
    }

    /// Lower-case name as in the CLI, JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            FlowClass::Unconfirmed => "unconfirmed",
            FlowClass::TcpEstablished => "tcp_established",
            FlowClass::UdpEstablished => "udp_established",
            FlowClass::TcpClosing => "tcp_closing",
        }
    }
}

/// The class bits of a stamp.
const CLASS_MASK: u32 = 0b11;

/// A way's stamp: `now` ([`ticks`], its low 30 bits) and `class`.
#[inline(always)]
pub const fn stamp(now: u32, class: FlowClass) -> u32 {
    (now << 2) | class as u32
}

/// Ticks since the flow of `stamp` was last seen, at `now` (modulo 2^30 ticks: 8.7 years at
/// the shortest tick).
#[inline(always)]
pub const fn idle_ticks(stamp: u32, now: u32) -> u32 {
    (now << 2).wrapping_sub(stamp & !CLASS_MASK) >> 2
}

/// How long a flow of each class stays protected while idle, in [`ticks`], indexed by
/// [`FlowClass`] (`SETTINGS`' `idle_timeouts`): an established or closing flow idle for less
/// than its class's timeout is never evicted for a new flow. Unconfirmed flows' entry is 0
/// (never protected).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdleTimeouts {
    /// By [`FlowClass`]: unconfirmed (0), TCP established, UDP established, TCP closing.
    pub by_class: [u32; 4],
}

impl IdleTimeouts {
    /// Timeouts of `tcp`, `udp` and `tcp_closing` ticks.
    pub const fn new(tcp: u32, udp: u32, tcp_closing: u32) -> Self {
        Self {
            by_class: [0, tcp, udp, tcp_closing],
        }
    }

    /// TCP established flows' timeout.
    pub const fn tcp(&self) -> u32 {
        self.by_class[FlowClass::TcpEstablished as usize]
    }

    /// UDP established flows' timeout.
    pub const fn udp(&self) -> u32 {
        self.by_class[FlowClass::UdpEstablished as usize]
    }

    /// Closing TCP flows' timeout.
    pub const fn tcp_closing(&self) -> u32 {
        self.by_class[FlowClass::TcpClosing as usize]
    }

    /// Whether the flow of `stamp` is protected at `now`: established or closing, and idle
    /// for less than its class's timeout.
    #[inline(always)]
    pub fn protects(&self, stamp: u32, now: u32) -> bool {
        let timeout = self.by_class[(stamp & CLASS_MASK) as usize];
        idle_ticks(stamp, now) < timeout
    }
}

/// The class of a tracked flow after one more of its packets, which is not a SYN (a SYN takes
/// the ring and starts over, unconfirmed): a TCP FIN or RST (`closes`) makes it closing; an
/// unconfirmed flow of protocol `protocol` becomes established; any other stays as it is.
#[inline(always)]
pub const fn after_packet(class: FlowClass, protocol: u8, closes: bool) -> FlowClass {
    if closes {
        FlowClass::TcpClosing
    } else if class as u32 == FlowClass::Unconfirmed as u32 {
        FlowClass::established(protocol)
    } else {
        class
    }
}

/// Where a flow is tracked: [`conntrack_hash`]'s result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackHash {
    /// Scaled to the number of sets, the flow's set ([`set_index`]).
    pub set: u32,
    /// The flow's check, stored in its tag word: odd, so never 0 (an empty way).
    pub check: u32,
}

impl ConntrackHash {
    /// The IPv6 flow label of the flow's tunnel packets (RFC 6438): 20 bits of the hash, so
    /// routers between us and the backend can spread tunnels over paths per flow. Taken from
    /// this hash because every packet computes it; the ring's hash only new flows do.
    #[inline(always)]
    pub const fn flow_label(self) -> u32 {
        (self.check >> 1) & 0x000f_ffff
    }
}

/// Seed of [`conntrack_hash`]: fixed, so `lb explain` and every build find flows where the
/// program put them.
const CONNTRACK_HASH_SEED: u64 = 0x6c62_5f63_745f_3031; // "lb_ct_01"

/// The set and check of `key`: a multiplicative hash (`word_hash`) of its [`FlowKey::words`] (IPv4 keys'
/// zero words skipped), then a final mix. 64 bits, so the check is independent of the set.
#[inline(always)]
pub fn conntrack_hash(key: &FlowKey) -> ConntrackHash {
    let w = key.words();
    let mut h = round(CONNTRACK_HASH_SEED, w[0]);
    h = round(h, w[4]);
    if key.family == crate::maps::Family::V6 as u8 {
        h = round(h, w[1]);
        h = round(h, w[2]);
        h = round(h, w[3]);
        h = round(h, w[5]);
        h = round(h, w[6]);
        h = round(h, w[7]);
    }
    h = round(h, w[8]);
    h = round(h, w[9]);
    h = finish(h);
    ConntrackHash {
        set: (h >> 32) as u32,
        check: h as u32 | 1,
    }
}

/// The set of a flow of hash `hash` in a table of `sets` sets: `hash.set · sets / 2^32`, a
/// multiplication instead of `hash.set % sets` (a 64-bit division in BPF, tens of cycles).
/// `None` for a table without sets.
#[inline(always)]
pub const fn set_index(hash: ConntrackHash, sets: u32) -> Option<u32> {
    if sets == 0 {
        None
    } else {
        // Below `sets`, since `hash.set < 2^32`.
        Some(((hash.set as u64 * sets as u64) >> 32) as u32)
    }
}

/// Sets of a table tracking `flows` flows (the `conntrack_size` setting): `flows / WAYS`,
/// rounded up.
pub const fn sets_for(flows: u32) -> u32 {
    let sets = flows.div_ceil(WAYS as u32);
    if sets == 0 {
        1
    } else {
        sets
    }
}

/// A tag word: `check` and `backend`.
#[inline(always)]
pub const fn tag(check: u32, backend: u32) -> u64 {
    (check as u64) | ((backend as u64) << 32)
}

/// The check of a tag word (0: empty way).
#[inline(always)]
pub const fn tag_check(tag: u64) -> u32 {
    tag as u32
}

/// The backend of a tag word.
#[inline(always)]
pub const fn tag_backend(tag: u64) -> u32 {
    (tag >> 32) as u32
}

/// The clock of stamps: `jiffies >> 8`, about a second (0.26 s at HZ=1000, 1.02 s at HZ=250),
/// so a flow's packets write its stamp at most once a tick (or when its class changes).
#[inline(always)]
pub const fn ticks(jiffies: u64) -> u32 {
    (jiffies >> 8) as u32
}

/// The way of `set` holding the flow whose check is `check` and whose key `is_key` accepts
/// (a way's tag is compared first, then its key).
#[inline(always)]
pub fn find_way(tags: &[u64; WAYS], check: u32, is_key: impl Fn(usize) -> bool) -> Option<usize> {
    (0..WAYS).find(|&way| tag_check(tags[way]) == check && is_key(way))
}

/// Where a new flow goes in a set: the way it already has (`found`), else the first empty way,
/// else the way seen longest ago among those whose flow `timeouts` does not protect; `None`
/// when every way holds a protected flow (the new flow is not tracked).
#[inline(always)]
pub fn way_for(
    tags: &[u64; WAYS],
    stamps: &[u32; WAYS],
    found: Option<usize>,
    now: u32,
    timeouts: &IdleTimeouts,
) -> Option<usize> {
    if found.is_some() {
        return found;
    }
    let mut way = None;
    let mut oldest = 0;
    for candidate in 0..WAYS {
        if tag_check(tags[candidate]) == 0 {
            return Some(candidate);
        }
        let stamp = stamps[candidate];
        if timeouts.protects(stamp, now) {
            continue;
        }
        let idle = idle_ticks(stamp, now);
        if way.is_none() || idle > oldest {
            (way, oldest) = (Some(candidate), idle);
        }
    }
    way
}

/// How full a table is, by class: what `lb stats` (`flows` in its JSON) and `/metrics` report,
/// and what sizing `conntrack_size` is judged by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct Occupancy {
    /// Flows the table can hold (sets × [`WAYS`]).
    pub capacity: u64,
    /// Established flows (TCP or UDP) idle for less than their timeout: protected.
    pub established: u64,
    /// Closing TCP flows idle for less than their timeout: protected.
    pub closing: u64,
    /// Unconfirmed flows: seen once, evictable.
    pub unconfirmed: u64,
    /// Established or closing flows idle past their timeout: evictable.
    pub idle: u64,
}

impl Occupancy {
    /// Flows tracked, of any class.
    pub const fn tracked(&self) -> u64 {
        self.established + self.closing + self.unconfirmed + self.idle
    }

    /// Flows no new flow may evict.
    pub const fn protected(&self) -> u64 {
        self.established + self.closing
    }

    /// Adds the flows of `set` at `now`, and its ways to the capacity.
    pub fn add(&mut self, set: &FlowSet, now: u32, timeouts: &IdleTimeouts) {
        self.capacity += WAYS as u64;
        for way in 0..WAYS {
            if tag_check(set.tags[way]) != 0 {
                self.count(set.stamps[way], now, timeouts);
            }
        }
    }

    /// Counts one tracked flow, of `stamp`, at `now`.
    pub fn count(&mut self, stamp: u32, now: u32, timeouts: &IdleTimeouts) {
        let class = FlowClass::of_stamp(stamp);
        let counter = if class == FlowClass::Unconfirmed {
            &mut self.unconfirmed
        } else if !timeouts.protects(stamp, now) {
            &mut self.idle
        } else if class == FlowClass::TcpClosing {
            &mut self.closing
        } else {
            &mut self.established
        };
        *counter += 1;
    }
}

/// Whether a tracked flow of `stamp` is an active connection at `now`: established (lb saw a
/// packet of it after its first), not closing (no FIN or RST from its client) and active within
/// its timeout. What `active_flows` counts per backend: a flood of bare SYNs adds nothing, and
/// a flow leaves the count when its client closes it, when it idles out or is evicted.
pub fn is_active(stamp: u32, now: u32, timeouts: &IdleTimeouts) -> bool {
    FlowClass::of_stamp(stamp).is_established() && timeouts.protects(stamp, now)
}

impl FlowSet {
    /// The way tracking `key` in this set, if it does.
    pub fn way_of(&self, key: &FlowKey) -> Option<usize> {
        let check = conntrack_hash(key).check;
        find_way(&self.tags, check, |way| self.keys[way] == *key)
    }

    /// The backend `key` is tracked to in this set, if it is.
    pub fn backend_of(&self, key: &FlowKey) -> Option<u32> {
        self.way_of(key).map(|way| tag_backend(self.tags[way]))
    }

    /// Tracks `key` to `backend` in an empty way with `stamp`, unless the set already tracks
    /// it or has no empty way: how userspace carries another table's flows over without
    /// evicting any.
    pub fn track_if_room(&mut self, key: &FlowKey, backend: u32, stamp: u32) -> Tracking {
        if self.way_of(key).is_some() {
            return Tracking::Already;
        }
        let Some(way) = (0..WAYS).find(|&way| tag_check(self.tags[way]) == 0) else {
            return Tracking::NoRoom;
        };
        self.keys[way] = *key;
        self.stamps[way] = stamp;
        self.tags[way] = tag(conntrack_hash(key).check, backend);
        Tracking::Added
    }
}

/// What [`FlowSet::track_if_room`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracking {
    /// The flow was tracked already; its entry is unchanged.
    Already,
    /// The flow is now tracked.
    Added,
    /// Every way holds another flow; the flow is not tracked.
    NoRoom,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::Protocol;

    fn flow(port: u16) -> FlowKey {
        FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 100], port, 80, Protocol::Tcp)
    }

    #[test]
    fn every_field_moves_the_hash() {
        let base = conntrack_hash(&flow(40000));
        let variants = [
            FlowKey::v4([10, 0, 0, 2], [10, 0, 0, 100], 40000, 80, Protocol::Tcp),
            FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 101], 40000, 80, Protocol::Tcp),
            FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 100], 40001, 80, Protocol::Tcp),
            FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 100], 40000, 81, Protocol::Tcp),
            FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 100], 40000, 80, Protocol::Udp),
        ];
        for variant in variants {
            let hash = conntrack_hash(&variant);
            assert_ne!(hash.set, base.set, "{variant:?}");
            assert_ne!(hash.check, base.check, "{variant:?}");
        }
        let mut v6 = FlowKey::v6([1; 16], [2; 16], 1, 2, Protocol::Tcp);
        let before = conntrack_hash(&v6);
        v6.src[9] ^= 1;
        assert_ne!(conntrack_hash(&v6), before);
        assert_eq!(base.check & 1, 1, "checks are odd, never an empty way's 0");
    }

    #[test]
    fn sets_spread_evenly() {
        const SETS: u32 = 97;
        let mut count = [0u32; SETS as usize];
        for port in 1024..(1024 + 97 * 100) {
            let set = set_index(conntrack_hash(&flow(port)), SETS).expect("sets");
            count[set as usize] += 1;
        }
        for c in count {
            assert!((60..140).contains(&c), "uneven spread {count:?}");
        }
    }

    /// Timeouts of the tests: TCP 100 ticks, UDP 10, closing 5.
    const TIMEOUTS: IdleTimeouts = IdleTimeouts::new(100, 10, 5);

    fn udp(port: u16) -> FlowKey {
        FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 100], port, 53, Protocol::Udp)
    }

    /// What the datapath does with a new flow (a SYN, a first datagram): tracks it unconfirmed
    /// where [`way_for`] says, if anywhere. The way it took.
    fn new_flow(set: &mut FlowSet, key: &FlowKey, backend: u32, now: u32) -> Option<usize> {
        let found = set.way_of(key);
        let way = way_for(&set.tags, &set.stamps, found, now, &TIMEOUTS)?;
        set.keys[way] = *key;
        set.stamps[way] = stamp(now, FlowClass::Unconfirmed);
        set.tags[way] = tag(conntrack_hash(key).check, backend);
        Some(way)
    }

    /// What the datapath does with a tracked flow's next packet (not a SYN).
    fn next_packet(set: &mut FlowSet, key: &FlowKey, now: u32, closes: bool) {
        let way = set.way_of(key).expect("tracked");
        let class = FlowClass::of_stamp(set.stamps[way]);
        set.stamps[way] = stamp(now, after_packet(class, key.protocol, closes));
    }

    fn class_of(set: &FlowSet, key: &FlowKey) -> FlowClass {
        FlowClass::of_stamp(set.stamps[set.way_of(key).expect("tracked")])
    }

    #[test]
    fn a_second_packet_establishes_and_a_fin_or_rst_closes() {
        use FlowClass::*;
        assert_eq!(
            after_packet(Unconfirmed, Protocol::Tcp as u8, false),
            TcpEstablished
        );
        assert_eq!(
            after_packet(Unconfirmed, Protocol::Udp as u8, false),
            UdpEstablished
        );
        assert_eq!(
            after_packet(TcpEstablished, Protocol::Tcp as u8, false),
            TcpEstablished
        );
        assert_eq!(
            after_packet(TcpEstablished, Protocol::Tcp as u8, true),
            TcpClosing
        );
        assert_eq!(
            after_packet(Unconfirmed, Protocol::Tcp as u8, true),
            TcpClosing
        );
        assert_eq!(
            after_packet(TcpClosing, Protocol::Tcp as u8, false),
            TcpClosing,
            "the close handshake's last ACK keeps it closing"
        );
        for class in FlowClass::ALL {
            assert_eq!(FlowClass::of_stamp(stamp(12345, class)), class);
            assert_eq!(idle_ticks(stamp(12345, class), 12345), 0);
            assert_eq!(idle_ticks(stamp(12345, class), 12350), 5);
        }
    }

    #[test]
    fn new_flows_never_evict_a_protected_flow() {
        let mut set = FlowSet::default();
        // Two established TCP flows, one established UDP flow, one closing.
        for (port, now) in [(1, 10), (2, 11)] {
            new_flow(&mut set, &flow(port), u32::from(port), now).expect("room");
            next_packet(&mut set, &flow(port), now, false);
        }
        new_flow(&mut set, &udp(3), 3, 12).expect("room");
        next_packet(&mut set, &udp(3), 12, false);
        new_flow(&mut set, &flow(4), 4, 13).expect("room");
        next_packet(&mut set, &flow(4), 13, true);
        assert_eq!(class_of(&set, &flow(1)), FlowClass::TcpEstablished);
        assert_eq!(class_of(&set, &udp(3)), FlowClass::UdpEstablished);
        assert_eq!(class_of(&set, &flow(4)), FlowClass::TcpClosing);
        // A flood of new flows, all while every flow is within its timeout: none is tracked.
        for port in 100..10_000 {
            assert_eq!(new_flow(&mut set, &flow(port), 9, 14), None, "port {port}");
        }
        for port in [1, 2, 4] {
            assert_eq!(set.backend_of(&flow(port)), Some(u32::from(port)));
        }
        assert_eq!(set.backend_of(&udp(3)), Some(3));
        // The closing flow's timeout (5 ticks) passes first: then a new flow may take its way.
        assert_eq!(new_flow(&mut set, &flow(500), 5, 17), None, "idle 4 ticks");
        assert_eq!(
            new_flow(&mut set, &flow(501), 5, 18),
            Some(3),
            "idle 5 ticks"
        );
        // An unconfirmed flow is evictable at once; the UDP flow still protected (idle 9 < 10).
        assert_eq!(new_flow(&mut set, &flow(502), 5, 21), Some(3));
        assert_eq!(set.backend_of(&flow(501)), None);
        // Idle 10 ticks, the UDP flow is older than the unconfirmed 502 and goes first.
        assert_eq!(new_flow(&mut set, &flow(503), 5, 22), Some(2));
        assert_eq!(set.backend_of(&udp(3)), None);
        assert_eq!(set.backend_of(&flow(502)), Some(5));
        for port in [1, 2] {
            assert_eq!(set.backend_of(&flow(port)), Some(u32::from(port)));
        }
    }

    #[test]
    fn new_flows_evict_unconfirmed_and_idle_flows_oldest_first() {
        let mut set = FlowSet::default();
        for (port, now) in [(1, 10), (2, 11), (3, 12), (4, 13)] {
            assert_eq!(
                new_flow(&mut set, &flow(port), u32::from(port), now),
                Some(usize::from(port) - 1)
            );
        }
        // A SYN on a tracked 5-tuple keeps its way.
        assert_eq!(new_flow(&mut set, &flow(3), 33, 20), Some(2));
        assert_eq!(set.backend_of(&flow(3)), Some(33));
        // The full set of unconfirmed flows replaces the one seen longest ago (port 1, at 10).
        assert_eq!(new_flow(&mut set, &flow(5), 5, 20), Some(0));
        assert_eq!(set.backend_of(&flow(1)), None);
        // An established flow idle past its timeout goes before younger unconfirmed ones
        // (SYNs sent again keep their ways and are stamped anew).
        next_packet(&mut set, &flow(2), 21, false);
        for port in [3, 4, 5] {
            new_flow(&mut set, &flow(port), u32::from(port), 125);
        }
        assert_eq!(
            new_flow(&mut set, &flow(6), 6, 130),
            Some(1),
            "idle 109 ticks > 100"
        );
        // Between an idle established flow and an older unconfirmed one, the older goes.
        let mut set = FlowSet::default();
        new_flow(&mut set, &flow(1), 1, 10);
        for (port, now) in [(2, 50), (3, 51), (4, 52)] {
            new_flow(&mut set, &flow(port), 0, now);
            next_packet(&mut set, &flow(port), now, false);
        }
        assert_eq!(new_flow(&mut set, &flow(7), 7, 200), Some(0));
    }

    #[test]
    fn ticks_survive_the_clock_wrapping() {
        let tags = [tag(1, 0); WAYS];
        let top = (1 << 30) - 1;
        let stamps = [top - 1, 3, top, 2].map(|t| stamp(t, FlowClass::Unconfirmed));
        // At now = 4 the oldest is 2^30 - 2 (6 ticks ago), not 2 (2 ticks ago).
        assert_eq!(way_for(&tags, &stamps, None, 4, &TIMEOUTS), Some(0));
        assert_eq!(idle_ticks(stamp(top, FlowClass::TcpEstablished), 1), 2);
        assert!(TIMEOUTS.protects(stamp(top, FlowClass::TcpEstablished), 98));
        assert!(!TIMEOUTS.protects(stamp(top, FlowClass::TcpEstablished), 99));
    }

    #[test]
    fn converted_flows_take_empty_ways_only() {
        let mut set = FlowSet::default();
        for port in 0..3 {
            new_flow(&mut set, &flow(port), u32::from(port), 50);
        }
        let established = stamp(50, FlowClass::TcpEstablished);
        assert_eq!(
            set.track_if_room(&flow(1), 99, established),
            Tracking::Already
        );
        assert_eq!(
            set.backend_of(&flow(1)),
            Some(1),
            "a tracked flow keeps its entry"
        );
        assert_eq!(set.track_if_room(&flow(7), 7, established), Tracking::Added);
        assert_eq!(set.backend_of(&flow(7)), Some(7));
        assert_eq!(class_of(&set, &flow(7)), FlowClass::TcpEstablished);
        assert_eq!(
            set.track_if_room(&flow(8), 8, established),
            Tracking::NoRoom
        );
        for port in [0, 1, 2, 7] {
            assert!(set.backend_of(&flow(port)).is_some(), "nothing evicted");
        }
    }

    #[test]
    fn occupancy_counts_each_class() {
        let mut set = FlowSet::default();
        new_flow(&mut set, &flow(1), 1, 10);
        new_flow(&mut set, &flow(2), 2, 10);
        next_packet(&mut set, &flow(2), 10, false);
        new_flow(&mut set, &flow(3), 3, 10);
        next_packet(&mut set, &flow(3), 10, true);
        let mut occupancy = Occupancy::default();
        occupancy.add(&set, 12, &TIMEOUTS);
        occupancy.add(&FlowSet::default(), 12, &TIMEOUTS);
        assert_eq!(
            occupancy,
            Occupancy {
                capacity: 8,
                established: 1,
                closing: 1,
                unconfirmed: 1,
                idle: 0
            }
        );
        let mut later = Occupancy::default();
        later.add(&set, 20, &TIMEOUTS);
        assert_eq!((later.established, later.closing, later.idle), (1, 0, 1));
        assert_eq!((later.tracked(), later.protected()), (3, 1));
    }

    #[test]
    fn the_hash_is_stable_across_releases() {
        // Where a pinned FLOWS holds its flows: an agent adopting a running datapath keeps the
        // table, so a change would lose every tracked flow. Change it only with a new layout
        // version (and a migration that moves the flows).
        assert_eq!(conntrack_hash(&flow(40000)), STABLE);
    }

    const STABLE: ConntrackHash = ConntrackHash {
        set: 1_701_319_866,
        check: 2_735_252_367,
    };
}
