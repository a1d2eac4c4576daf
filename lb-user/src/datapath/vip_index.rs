//! Keeping the VIP index (`VIP_SLOTS`, `VIP_ENTRIES`; see `lb_common::vip_index`) equal to
//! what `VIPS` holds, without a packet ever finding a wrong VIP on the way.
//!
//! Both maps are `BPF_F_MMAPABLE` and written through mmap, one 32-bit word per store, so a
//! program reading a word sees it old or new, never half written. `VIPS` is the truth, and a
//! slot holding only the overflow bit ([`ASK_VIPS`]) sends the datapath to it, so that word is
//! correct whatever the entries hold. A change is therefore written in three steps:
//!
//! 1. every slot pointing at an entry that will hold another key is set to [`ASK_VIPS`];
//! 2. if such an entry was ever published, the writer waits for an RCU grace period (every
//!    program run that read the old slot word has finished), then writes the entries: a
//!    changed value in place (each field one store: old or new), a new key where no slot
//!    points;
//! 3. the slots get their final words.
//!
//! A VIP being added is in `VIPS` before the index changes, one being removed leaves `VIPS`
//! after (the callers in `maps.rs` keep that order), so the [`ASK_VIPS`] slots of step 1 find
//! what the index is about to say.

use std::{collections::BTreeMap, os::fd::BorrowedFd, sync::atomic::Ordering};

use super::mapping::Mapping;
use lb_common::{
    maps::{Vip, VipKey, MAX_VIPS},
    vip_index::{points_at, VipEntry, VipIndex, ASK_VIPS, VIP_SLOTS},
};

/// Bytes between two `VIP_SLOTS` values: a BPF array stores values at an 8-byte stride.
const SLOT_STRIDE: usize = 8;
/// Bytes of a `VIP_ENTRIES` value.
const ENTRY_SIZE: usize = size_of::<VipEntry>();
/// 32-bit words of a [`VipEntry`].
const ENTRY_WORDS: usize = ENTRY_SIZE / 4;

/// The writer of the VIP index, holding a copy of `VIPS` and of what the two maps hold.
pub(super) struct VipIndexWriter {
    slots: Mapping,
    entries: Mapping,
    /// The content of `VIPS`, as the caller last said.
    vips: BTreeMap<VipKey, Vip>,
    /// What the maps hold.
    written: IndexWords,
}

/// The words of both maps.
struct IndexWords {
    slots: Vec<u32>,
    entries: Vec<[u32; ENTRY_WORDS]>,
}

impl VipIndexWriter {
    /// Maps both arrays, reads what they hold and makes them the index of `vips`.
    pub(super) fn open(
        slots: BorrowedFd<'_>,
        entries: BorrowedFd<'_>,
        vips: BTreeMap<VipKey, Vip>,
    ) -> std::io::Result<Self> {
        let slots = Mapping::read_write(slots, VIP_SLOTS as usize * SLOT_STRIDE)?;
        let entries = Mapping::read_write(entries, MAX_VIPS as usize * ENTRY_SIZE)?;
        let written = IndexWords {
            slots: (0..VIP_SLOTS as usize)
                .map(|slot| slots.load(slot * SLOT_STRIDE, Ordering::Acquire))
                .collect(),
            entries: (0..MAX_VIPS as usize)
                .map(|id| {
                    std::array::from_fn(|word| {
                        entries.load(id * ENTRY_SIZE + word * 4, Ordering::Acquire)
                    })
                })
                .collect(),
        };
        let mut writer = Self {
            slots,
            entries,
            vips,
            written,
        };
        writer.sync()?;
        Ok(writer)
    }

    /// `VIPS` now maps `key` to `vip` (the caller wrote it first).
    pub(super) fn insert(&mut self, key: VipKey, vip: Vip) -> std::io::Result<()> {
        self.vips.insert(key, vip);
        self.sync()
    }

    /// `key` is about to leave `VIPS` (the caller removes it after this).
    pub(super) fn remove(&mut self, key: &VipKey) -> std::io::Result<()> {
        self.vips.remove(key);
        self.sync()
    }

    /// Writes what differs between the maps and the index of `vips`, in the order of the
    /// module documentation (see [`plan`]).
    fn sync(&mut self) -> std::io::Result<()> {
        let plan = plan(&self.written, &VipIndex::of(&self.vips));
        for slot in plan.ask_vips {
            self.write_slot(slot, ASK_VIPS);
        }
        if plan.wait {
            wait_for_program_runs();
        }
        for (id, words) in plan.entries {
            self.write_entry(id, words);
        }
        for (slot, word) in plan.slots {
            self.write_slot(slot, word);
        }
        Ok(())
    }

    fn write_slot(&mut self, slot: usize, word: u32) {
        self.slots
            .store(slot * SLOT_STRIDE, word, Ordering::Release);
        self.written.slots[slot] = word;
    }

    /// Writes entry `id` word by word, the value (id, ring size, mode) before the key.
    fn write_entry(&mut self, id: usize, words: [u32; ENTRY_WORDS]) {
        for word in (0..ENTRY_WORDS).rev() {
            if words[word] != self.written.entries[id][word] {
                self.entries
                    .store(id * ENTRY_SIZE + word * 4, words[word], Ordering::Release);
            }
        }
        self.written.entries[id] = words;
    }
}

/// The writes that take the maps from `written` to `target`, in three steps (see the module
/// documentation). Pure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IndexPlan {
    /// 1. Slots set to [`ASK_VIPS`]: they point at an entry that will hold another key.
    ask_vips: Vec<usize>,
    /// 2. Wait for a grace period first: one of those entries was published.
    wait: bool,
    /// 2. Entries written (id, words).
    entries: Vec<(usize, [u32; ENTRY_WORDS])>,
    /// 3. Slots given their final word (slot, word).
    slots: Vec<(usize, u32)>,
}

/// Plans the writes from `written` to `target`.
fn plan(written: &IndexWords, target: &VipIndex) -> IndexPlan {
    let target_entry = |id: usize| -> Option<[u32; ENTRY_WORDS]> {
        target.entries.get(&(id as u32)).map(entry_words)
    };
    // Entries that will hold another key than now (a key change, not a value change).
    let rekeyed: Vec<usize> = (0..written.entries.len())
        .filter(|&id| {
            target_entry(id).is_some_and(|new| key_words(&new) != key_words(&written.entries[id]))
        })
        .collect();
    let mut slots = written.slots.clone();
    let mut plan = IndexPlan::default();
    for (slot, word) in slots.iter_mut().enumerate() {
        if *word != 0 && rekeyed.iter().any(|&id| points_at(*word, id as u32)) {
            *word = ASK_VIPS;
            plan.ask_vips.push(slot);
        }
    }
    plan.wait = rekeyed
        .iter()
        .any(|&id| written.entries[id] != [0; ENTRY_WORDS]);
    plan.entries = (0..written.entries.len())
        .filter_map(|id| {
            let new = target_entry(id)?;
            (new != written.entries[id]).then_some((id, new))
        })
        .collect();
    plan.slots = slots
        .iter()
        .enumerate()
        .filter_map(|(slot, word)| {
            let new = target.slot(slot as u32);
            (new != *word).then_some((slot, new))
        })
        .collect();
    plan
}

/// The words of an entry as they sit in memory (the struct's bytes, four at a time).
fn entry_words(entry: &VipEntry) -> [u32; ENTRY_WORDS] {
    let VipEntry { key, vip } = entry;
    let VipKey {
        addr,
        port,
        protocol,
        family,
    } = key;
    let Vip {
        id,
        ring_size,
        forward,
        new_flows,
        _pad,
    } = vip;
    let word = |at: usize| u32::from_ne_bytes([addr[at], addr[at + 1], addr[at + 2], addr[at + 3]]);
    [
        word(0),
        word(4),
        word(8),
        word(12),
        u32::from_ne_bytes([port[0], port[1], *protocol, *family]),
        *id,
        *ring_size,
        u32::from_ne_bytes([*forward, *new_flows, _pad[0], _pad[1]]),
    ]
}

/// The words of an entry's key (the first 20 bytes).
fn key_words(words: &[u32; ENTRY_WORDS]) -> [u32; 5] {
    [words[0], words[1], words[2], words[3], words[4]]
}

/// Waits for an RCU grace period: every XDP program run that began before has ended (they run
/// inside RCU read-side sections). `membarrier(MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()`;
/// where it is unavailable (kernels with `nohz_full` refuse it), a pause far longer than any
/// program run stands in.
pub(super) fn wait_for_program_runs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integer arguments and touches no memory of ours.
    let result = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) };
    if result != 0 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use lb_common::maps::{ForwardMode, Protocol};

    use super::*;

    fn key(last: u8) -> VipKey {
        VipKey::new(IpAddr::from([10, 0, 0, last]), 80, Protocol::Tcp)
    }

    fn vip(id: u32, ring_size: u32) -> Vip {
        Vip::new(id, ring_size, ForwardMode::Dsr)
    }

    fn empty() -> IndexWords {
        IndexWords {
            slots: vec![0; VIP_SLOTS as usize],
            entries: vec![[0; ENTRY_WORDS]; MAX_VIPS as usize],
        }
    }

    /// `written` once `plan` is carried out, checking each step writes something new.
    fn carried_out(mut written: IndexWords, plan: &IndexPlan) -> IndexWords {
        for &slot in &plan.ask_vips {
            written.slots[slot] = ASK_VIPS;
        }
        for (id, words) in &plan.entries {
            assert_ne!(
                written.entries[*id], *words,
                "entry {id} rewritten unchanged"
            );
            written.entries[*id] = *words;
        }
        for (slot, word) in &plan.slots {
            assert_ne!(
                written.slots[*slot], *word,
                "slot {slot} rewritten unchanged"
            );
            written.slots[*slot] = *word;
        }
        written
    }

    /// The maps after indexing `vips` from `written`, and the plan that did it.
    fn index(written: IndexWords, vips: &[(VipKey, Vip)]) -> (IndexWords, IndexPlan) {
        let target = VipIndex::of(&vips.iter().copied().collect());
        let plan = plan(&written, &target);
        let after = carried_out(written, &plan);
        assert_eq!(
            super::plan(&after, &target),
            IndexPlan::default(),
            "nothing left to write"
        );
        (after, plan)
    }

    /// The slots pointing at entry `id`.
    fn pointing_at(written: &IndexWords, id: u32) -> Vec<usize> {
        (0..written.slots.len())
            .filter(|&slot| written.slots[slot] != 0 && points_at(written.slots[slot], id))
            .collect()
    }

    #[test]
    fn new_vips_are_entered_without_asking_or_waiting() {
        let (written, plan) = index(empty(), &[(key(1), vip(0, 7)), (key(2), vip(1, 7))]);
        assert!(plan.ask_vips.is_empty() && !plan.wait, "{plan:?}");
        assert_eq!(plan.entries.len(), 2);
        assert!(!pointing_at(&written, 0).is_empty() && !pointing_at(&written, 1).is_empty());
    }

    #[test]
    fn a_changed_value_is_written_in_place() {
        let (written, _) = index(empty(), &[(key(1), vip(0, 7))]);
        let (_, plan) = index(written, &[(key(1), vip(0, 13))]);
        assert!(plan.ask_vips.is_empty() && !plan.wait, "{plan:?}");
        assert_eq!(plan.entries.len(), 1);
        assert!(
            plan.slots.is_empty(),
            "the slots still point at the same entry"
        );
    }

    #[test]
    fn an_entry_taking_another_key_is_asked_around_and_waited_for() {
        let (written, _) = index(empty(), &[(key(1), vip(0, 7))]);
        let old_slots = pointing_at(&written, 0);
        // Key 1 leaves, key 2 gets its id.
        let (after, plan) = index(written, &[(key(2), vip(0, 7))]);
        assert_eq!(
            plan.ask_vips, old_slots,
            "every slot that led to the old key"
        );
        assert!(plan.wait, "the old key was published");
        assert_eq!(plan.entries.len(), 1);
        assert!(!pointing_at(&after, 0).is_empty(), "the new key is found");
    }

    #[test]
    fn an_entry_never_published_needs_no_wait() {
        // Entry 5 holds nothing yet: taking a key is not a change of key any run could see.
        let (_, plan) = index(empty(), &[(key(2), vip(5, 7))]);
        assert!(!plan.wait && plan.ask_vips.is_empty(), "{plan:?}");
    }
}
