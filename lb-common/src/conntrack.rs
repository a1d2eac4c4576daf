//! The connection-tracking table (`FLOWS`): flow → backend, as a set-associative table the
//! XDP program reads and writes itself, in place of a kernel LRU hash map.
//!
//! An LRU hash map costs a helper call per packet (jhash of the 40-byte key, a bucket walk, a
//! memcmp: about 25 ns of a conntrack hit on the benchmark machine), and an insert, which every
//! TCP SYN does, about 140 ns (a node taken from the LRU's free list under a lock, the bucket
//! locked, the replaced node pushed back): more than all the rest of a SYN's work. `FLOWS` is
//! an array of [`FlowSet`]s of [`WAYS`] flows. A flow's set is chosen by [`conntrack_hash`];
//! the program finds it there with inlined array reads, and tracks a new flow in the way it
//! already had, else an empty one, else the one least recently seen ([`way_for`]): per set,
//! the least recently used flow is forgotten, as the LRU map forgot the least recently used
//! flow of all.
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
/// (and `seen`) before the one key it compares.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSet {
    /// Per way: the flow's check in the low 32 bits (odd; 0: the way is empty) and its backend
    /// id in the high 32.
    pub tags: [u64; WAYS],
    /// Per way: when the flow was last seen, in [`ticks`].
    pub seen: [u32; WAYS],
    /// Per way: the flow.
    pub keys: [FlowKey; WAYS],
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

/// The clock of `seen`: `jiffies >> 8`, about a second (0.26 s at HZ=1000, 1 s at HZ=250),
/// so a flow's packets write its `seen` at most once a tick.
#[inline(always)]
pub const fn ticks(jiffies: u64) -> u32 {
    (jiffies >> 8) as u32
}

/// Flows seen this recently (in ticks) are active: evicting one to track a new flow means the
/// table is too small (counted as `conntrack_full`).
pub const ACTIVE_TICKS: u32 = 2;

/// The way of `set` holding the flow whose check is `check` and whose key `is_key` accepts
/// (a way's tag is compared first, then its key).
#[inline(always)]
pub fn find_way(tags: &[u64; WAYS], check: u32, is_key: impl Fn(usize) -> bool) -> Option<usize> {
    (0..WAYS).find(|&way| tag_check(tags[way]) == check && is_key(way))
}

/// Where a new flow goes in a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The way.
    pub way: usize,
    /// Whether it holds a flow seen within [`ACTIVE_TICKS`] (not the new flow itself), which
    /// the new one replaces.
    pub evicts_active: bool,
}

/// Where a flow goes: the way it already has (`found`), else the first empty way, else the
/// way seen longest ago (the first of those).
#[inline(always)]
pub fn way_for(
    tags: &[u64; WAYS],
    seen: &[u32; WAYS],
    found: Option<usize>,
    now: u32,
) -> Placement {
    if let Some(way) = found {
        return Placement {
            way,
            evicts_active: false,
        };
    }
    let mut way = 0;
    let mut oldest = 0;
    for candidate in 0..WAYS {
        if tag_check(tags[candidate]) == 0 {
            return Placement {
                way: candidate,
                evicts_active: false,
            };
        }
        let age = now.wrapping_sub(seen[candidate]);
        if candidate == 0 || age > oldest {
            (way, oldest) = (candidate, age);
        }
    }
    Placement {
        way,
        evicts_active: oldest < ACTIVE_TICKS,
    }
}

impl FlowSet {
    /// The backend `key` is tracked to in this set, if it is.
    pub fn backend_of(&self, key: &FlowKey) -> Option<u32> {
        let check = conntrack_hash(key).check;
        find_way(&self.tags, check, |way| self.keys[way] == *key)
            .map(|way| tag_backend(self.tags[way]))
    }

    /// Tracks `key` to `backend` as the datapath does, seen at `now` ([`ticks`]): userspace's
    /// insert, for converting another table's entries. Returns the placement.
    pub fn track(&mut self, key: &FlowKey, backend: u32, now: u32) -> Placement {
        let check = conntrack_hash(key).check;
        let found = find_way(&self.tags, check, |way| self.keys[way] == *key);
        let placement = way_for(&self.tags, &self.seen, found, now);
        self.keys[placement.way] = *key;
        self.seen[placement.way] = now;
        self.tags[placement.way] = tag(check, backend);
        placement
    }

    /// Tracks `key` to `backend` in an empty way, seen at tick 0 (long ago), unless the set
    /// already tracks it or has no empty way: how userspace converts another table's flows
    /// without evicting any.
    pub fn track_if_room(&mut self, key: &FlowKey, backend: u32) -> Tracking {
        let check = conntrack_hash(key).check;
        if find_way(&self.tags, check, |way| self.keys[way] == *key).is_some() {
            return Tracking::Already;
        }
        let Some(way) = (0..WAYS).find(|&way| tag_check(self.tags[way]) == 0) else {
            return Tracking::NoRoom;
        };
        self.keys[way] = *key;
        self.seen[way] = 0;
        self.tags[way] = tag(check, backend);
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

    #[test]
    fn a_set_keeps_its_recent_flows() {
        let mut set = FlowSet::default();
        for (port, now) in [(1, 10), (2, 11), (3, 12), (4, 13)] {
            assert!(!set.track(&flow(port), u32::from(port), now).evicts_active);
        }
        assert_eq!(set.backend_of(&flow(3)), Some(3));
        // A SYN on a tracked 5-tuple keeps its way.
        assert_eq!(set.track(&flow(3), 33, 20).way, 2);
        assert_eq!(set.backend_of(&flow(3)), Some(33));
        // The full set replaces the flow seen longest ago (port 1, at 10), not an active one.
        let placement = set.track(&flow(5), 5, 20);
        assert_eq!(
            placement,
            Placement {
                way: 0,
                evicts_active: false
            }
        );
        assert_eq!(set.backend_of(&flow(1)), None);
        assert_eq!(set.backend_of(&flow(5)), Some(5));
        // Every way active: the next flow evicts one, and says so.
        for port in [2, 4, 5] {
            set.track(&flow(port), 9, 21);
        }
        assert!(set.track(&flow(6), 6, 21).evicts_active);
    }

    #[test]
    fn converted_flows_take_empty_ways_only() {
        let mut set = FlowSet::default();
        for port in 0..3 {
            assert!(!set.track(&flow(port), u32::from(port), 50).evicts_active);
        }
        assert_eq!(set.track_if_room(&flow(1), 99), Tracking::Already);
        assert_eq!(
            set.backend_of(&flow(1)),
            Some(1),
            "a tracked flow keeps its entry"
        );
        assert_eq!(set.track_if_room(&flow(7), 7), Tracking::Added);
        assert_eq!(set.backend_of(&flow(7)), Some(7));
        assert_eq!(set.seen[3], 0, "a converted flow counts as seen long ago");
        assert_eq!(set.track_if_room(&flow(8), 8), Tracking::NoRoom);
        for port in [0, 1, 2, 7] {
            assert!(set.backend_of(&flow(port)).is_some(), "nothing evicted");
        }
        // The datapath's next new flow in this set evicts the converted one first.
        assert_eq!(way_for(&set.tags, &set.seen, None, 51).way, 3);
    }

    #[test]
    fn ticks_survive_the_clock_wrapping() {
        let tags = [tag(1, 0); WAYS];
        let seen = [u32::MAX - 1, 3, u32::MAX, 2];
        // At now = 4 the oldest is u32::MAX - 1 (6 ticks ago), not 2 (2 ticks ago).
        assert_eq!(way_for(&tags, &seen, None, 4).way, 0);
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
