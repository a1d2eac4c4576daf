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
    written: Written,
}

/// The words of both maps.
struct Written {
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
        let written = Written {
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
    /// module documentation.
    fn sync(&mut self) -> std::io::Result<()> {
        let target = VipIndex::of(&self.vips);
        let target_entry = |id: usize| -> Option<[u32; ENTRY_WORDS]> {
            target.entries.get(&(id as u32)).map(entry_words)
        };
        // Entries that will hold another key than now (a key change, not a value change).
        let rekeyed: Vec<usize> = (0..MAX_VIPS as usize)
            .filter(|&id| {
                target_entry(id)
                    .is_some_and(|new| key_words(&new) != key_words(&self.written.entries[id]))
            })
            .collect();
        // 1. Slots pointing at them ask VIPS.
        for slot in 0..VIP_SLOTS as usize {
            let word = self.written.slots[slot];
            if rekeyed.iter().any(|&id| points_at(word, id as u32)) && word != 0 {
                self.write_slot(slot, ASK_VIPS);
            }
        }
        // 2. Entries; an entry that was ever published is rewritten only after every program
        // run that may still read it has ended.
        if rekeyed
            .iter()
            .any(|&id| self.written.entries[id] != [0; ENTRY_WORDS])
        {
            wait_for_program_runs();
        }
        for id in 0..MAX_VIPS as usize {
            if let Some(new) = target_entry(id) {
                if new != self.written.entries[id] {
                    self.write_entry(id, new);
                }
            }
        }
        // 3. Final slot words.
        for slot in 0..VIP_SLOTS as usize {
            let word = target.slot(slot as u32);
            if word != self.written.slots[slot] {
                self.write_slot(slot, word);
            }
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
        u32::from_ne_bytes([*forward, _pad[0], _pad[1], _pad[2]]),
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
