//! The VIP index: how the datapath finds a packet's VIP with two array reads instead of a
//! lookup in the `VIPS` hash map.
//!
//! A hash-map lookup costs the XDP program a helper call, a jhash of the 20-byte key and a
//! memcmp: about 28 ns per lookup on the benchmark machine, more than everything else a
//! conntrack hit does, and twice that for a packet to no VIP (the exact port, then port 0).
//! Array lookups are inlined by the verifier. So the datapath reads:
//!
//! - `VIP_SLOTS`, [`VIP_SLOTS`] 32-bit words indexed by a hash of the [`VipKey`]: a slot names
//!   the VIP id whose key hashes there (with a tag of the hash's other bits, so a key that is
//!   not a VIP rarely reads an entry), and an overflow bit when more keys hash there;
//! - `VIP_ENTRIES`, one [`VipEntry`] (key and [`Vip`]) per VIP id, which the datapath compares
//!   with the packet's key.
//!
//! `VIPS` stays the one truth (the agent writes it, the CLI reads it): the index is derived from
//! it ([`VipIndex::of`]), and a slot whose keys are not all in it says so with its overflow bit,
//! on which the datapath asks `VIPS`. A slot holding only the overflow bit is always correct,
//! which is how the agent rewrites slots safely (see lb-user's `datapath::vip_index`).

use crate::{
    maps::{Vip, VipKey},
    word_hash::round,
};

/// Number of `VIP_SLOTS` (a power of two): four per VIP at `MAX_VIPS`, so few keys share a slot.
pub const VIP_SLOTS: u32 = 4096;
/// log2 of [`VIP_SLOTS`].
const SLOT_BITS: u32 = 12;
/// Bits of a slot word holding the VIP id + 1 (0: no VIP).
const ID_MASK: u32 = 0xffff;
/// Where the tag starts in a slot word.
const TAG_SHIFT: u32 = 16;
/// The tag's bits (15).
const TAG_MASK: u32 = 0x7fff;
/// The overflow bit: some key hashing to this slot is not the slot's VIP; ask `VIPS`.
const OVERFLOW: u32 = 1 << 31;

/// Value of `VIP_ENTRIES`, indexed by VIP id: the VIP's key and its `VIPS` entry.
///
/// Aligned to 4 bytes without padding (size 32), so both sides move it by 32-bit words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipEntry {
    /// The VIP's key in `VIPS`.
    pub key: VipKey,
    /// Its value in `VIPS`.
    pub vip: Vip,
}

/// Where a key lives in the index: its slot and the tag its slot word carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipHash {
    /// Index into `VIP_SLOTS`.
    pub slot: u32,
    /// The tag of the key, stored in the slot word.
    pub tag: u32,
}

/// Seed of [`vip_hash`]: fixed, so the index is the same for every build.
const VIP_HASH_SEED: u64 = 0x6c62_5f76_6970_5f31; // "lb_vip_1"

/// The slot and tag of `key`: a multiplicative hash of its five 32-bit words
/// ([`VipKey::words`]), slot and tag taken from the product's high bits (the well-mixed ones).
#[inline(always)]
pub fn vip_hash(key: &VipKey) -> VipHash {
    vip_hash_of_words(key.words())
}

/// [`vip_hash`] of a key given as its five little-endian words.
#[inline(always)]
pub fn vip_hash_of_words(words: [u32; 5]) -> VipHash {
    let mut h = VIP_HASH_SEED;
    for word in words {
        h = round(h, word);
    }
    VipHash {
        slot: (h >> (64 - SLOT_BITS)) as u32,
        tag: (h >> (64 - SLOT_BITS - 15)) as u32 & TAG_MASK,
    }
}

/// What the datapath does with the slot word of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotProbe {
    /// The VIP id whose `VIP_ENTRIES` entry to compare with the key, if the slot names one
    /// with the key's tag.
    pub candidate: Option<u32>,
    /// Whether `VIPS` must be asked when the candidate is not the key.
    pub ask_vips: bool,
}

/// The datapath's reading of slot word `word` for a key of tag `tag`.
#[inline(always)]
pub const fn probe(word: u32, tag: u32) -> SlotProbe {
    let id_plus_one = word & ID_MASK;
    let candidate = if id_plus_one != 0 && (word >> TAG_SHIFT) & TAG_MASK == tag {
        Some(id_plus_one - 1)
    } else {
        None
    };
    SlotProbe {
        candidate,
        ask_vips: word & OVERFLOW != 0,
    }
}

/// A slot word: `vip` (VIP id and tag) stored directly, `overflow` if other keys hash here.
pub const fn slot_word(vip: Option<(u32, u32)>, overflow: bool) -> u32 {
    let stored = match vip {
        Some((id, tag)) => ((id + 1) & ID_MASK) | ((tag & TAG_MASK) << TAG_SHIFT),
        None => 0,
    };
    stored | if overflow { OVERFLOW } else { 0 }
}

/// The slot word that sends every key of its slot to `VIPS`: always correct, whatever the
/// entries hold, so the agent writes it before it changes an entry a slot points to.
pub const ASK_VIPS: u32 = OVERFLOW;

/// Whether `word` points at VIP id `id`'s entry.
pub const fn points_at(word: u32, id: u32) -> bool {
    word & ID_MASK == (id + 1) & ID_MASK
}

#[cfg(feature = "user")]
pub use self::build::VipIndex;

#[cfg(feature = "user")]
mod build {
    use std::collections::BTreeMap;

    use super::{slot_word, vip_hash, VipEntry};
    use crate::maps::{Vip, VipKey, MAX_VIPS};

    /// The index of a set of VIPs: every `VIP_ENTRIES` entry and every non-empty slot word.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct VipIndex {
        /// `VIP_ENTRIES` by VIP id.
        pub entries: BTreeMap<u32, VipEntry>,
        /// `VIP_SLOTS` by slot; slots not listed are 0 (no key hashes there).
        pub slots: BTreeMap<u32, u32>,
    }

    impl VipIndex {
        /// The index of `vips` (the content of `VIPS`).
        ///
        /// Entry `id` holds the smallest key with that id (ids are unique, but the index stays
        /// correct if they are not); a slot names the lowest-id key hashing there whose entry
        /// is its own, and has the overflow bit when any other key hashes there. Ids at or
        /// above `MAX_VIPS` have no entry, so their keys are only found through `VIPS`.
        pub fn of(vips: &BTreeMap<VipKey, Vip>) -> Self {
            let mut entries: BTreeMap<u32, VipEntry> = BTreeMap::new();
            for (key, vip) in vips {
                if vip.id < MAX_VIPS {
                    entries.entry(vip.id).or_insert(VipEntry {
                        key: *key,
                        vip: *vip,
                    });
                }
            }
            let mut by_slot: BTreeMap<u32, Vec<(&VipKey, &Vip)>> = BTreeMap::new();
            for (key, vip) in vips {
                by_slot
                    .entry(vip_hash(key).slot)
                    .or_default()
                    .push((key, vip));
            }
            let slots = by_slot
                .into_iter()
                .map(|(slot, keys)| {
                    let direct = keys
                        .iter()
                        .filter(|(key, vip)| entries.get(&vip.id).is_some_and(|e| e.key == **key))
                        .min_by_key(|(_, vip)| vip.id);
                    let overflow = keys.len() > usize::from(direct.is_some());
                    let stored = direct.map(|(key, vip)| (vip.id, vip_hash(key).tag));
                    (slot, slot_word(stored, overflow))
                })
                .collect();
            Self { entries, slots }
        }

        /// The slot word of `slot` (0 when no key hashes there).
        pub fn slot(&self, slot: u32) -> u32 {
            self.slots.get(&slot).copied().unwrap_or(0)
        }

        /// Where the datapath finds `key`, following the datapath's rule: `Some` VIP from the
        /// slot's entry, `None` when the slot does not hold it; `ask_vips` as in
        /// [`super::SlotProbe`].
        pub fn find(&self, key: &VipKey) -> (Option<Vip>, bool) {
            let hash = vip_hash(key);
            let probe = super::probe(self.slot(hash.slot), hash.tag);
            let found = probe
                .candidate
                .and_then(|id| self.entries.get(&id))
                .filter(|entry| entry.key == *key)
                .map(|entry| entry.vip);
            (found, probe.ask_vips)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::IpAddr};

    use super::*;
    use crate::maps::{ForwardMode, Protocol};

    fn key(address: &str, port: u16) -> VipKey {
        VipKey::new(address.parse::<IpAddr>().unwrap(), port, Protocol::Tcp)
    }

    /// The datapath's answer for `key` over `index` and `vips`: the slot's VIP, else `VIPS`.
    fn datapath_lookup(
        index: &VipIndex,
        vips: &BTreeMap<VipKey, Vip>,
        key: &VipKey,
    ) -> Option<Vip> {
        match index.find(key) {
            (Some(vip), _) => Some(vip),
            (None, true) => vips.get(key).copied(),
            (None, false) => None,
        }
    }

    #[test]
    fn every_vip_is_found_and_nothing_else() {
        // 1024 VIPs in 4096 slots: many share a slot, some fall back to VIPS.
        let mut vips = BTreeMap::new();
        for i in 0..1024u32 {
            let address = format!("10.{}.{}.1", i / 256, i % 256);
            vips.insert(key(&address, 80), Vip::new(i, 65537, ForwardMode::Dsr));
        }
        let index = VipIndex::of(&vips);
        let overflowing = index.slots.values().filter(|w| **w & OVERFLOW != 0).count();
        assert!(
            overflowing > 0,
            "the test should exercise overflowing slots"
        );
        for (k, vip) in &vips {
            assert_eq!(datapath_lookup(&index, &vips, k), Some(*vip), "{k:?}");
            assert_eq!(datapath_lookup(&index, &vips, &k.all_ports()), None);
            let mut other = *k;
            other.port = 81u16.to_be_bytes();
            assert_eq!(datapath_lookup(&index, &vips, &other), None);
        }
    }

    #[test]
    fn a_lone_key_needs_no_vips_lookup() {
        let vips = BTreeMap::from([(key("10.0.0.100", 80), Vip::new(3, 7, ForwardMode::Tunnel))]);
        let index = VipIndex::of(&vips);
        assert_eq!(
            index.find(&key("10.0.0.100", 80)),
            (Some(Vip::new(3, 7, ForwardMode::Tunnel)), false)
        );
        assert_eq!(index.find(&key("10.0.0.101", 80)).0, None);
        assert_eq!(index.slots.len(), 1);
    }

    #[test]
    fn duplicate_ids_fall_back_to_vips() {
        let a = key("10.0.0.1", 80);
        let b = key("10.0.0.2", 80);
        let vips = BTreeMap::from([
            (a, Vip::new(5, 7, ForwardMode::Dsr)),
            (b, Vip::new(5, 11, ForwardMode::Dsr)),
        ]);
        let index = VipIndex::of(&vips);
        for k in [a, b] {
            assert_eq!(datapath_lookup(&index, &vips, &k), vips.get(&k).copied());
        }
    }

    #[test]
    fn ask_vips_is_a_safe_slot_word() {
        let probe = probe(ASK_VIPS, 123);
        assert_eq!(
            probe,
            SlotProbe {
                candidate: None,
                ask_vips: true
            }
        );
        assert!(points_at(slot_word(Some((9, 1)), false), 9));
        assert!(!points_at(ASK_VIPS, 0));
    }

    #[test]
    fn the_hash_is_stable_across_releases() {
        // The slots of a pinned VIP_SLOTS are where this hash puts keys: an agent adopting a
        // running datapath rewrites them before its program replaces the old one, so a change
        // would make the old program miss every VIP meanwhile. Change it only with a new
        // layout version.
        assert_eq!(vip_hash(&key("10.0.0.100", 80)), STABLE);
    }

    const STABLE: VipHash = VipHash {
        slot: 2306,
        tag: 3962,
    };
}
