//! Ring maps: created and filled through mmap before any packet can see them, and read back
//! the same way (one copy instead of a syscall per slot).

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    sync::atomic::Ordering,
};

use aya::maps::MapData;
use lb_common::maps::RING_FLAGS;

use super::mapping::Mapping;

/// A ring map filled by [`super::Datapath::prepare_ring`], waiting for [`super::Datapath::swap_ring`].
pub struct PreparedRing(pub(super) MapData);

impl PreparedRing {
    /// The kernel's id of the ring map (what `RINGS` holds once it is swapped in).
    pub fn map_id(&self) -> std::io::Result<u32> {
        Ok(self.0.info().map_err(std::io::Error::other)?.id())
    }

    /// The ring map, e.g. to insert into another object's `RINGS` (upgrade tests set up an
    /// older release's datapath this way).
    pub fn map_data(&self) -> &MapData {
        &self.0
    }
}

/// Bytes between two slots of a ring's mapping: the kernel lays array values out at a stride
/// of `round_up(value_size, 8)`, so each 4-byte slot occupies 8 bytes.
const STRIDE: usize = 8;

/// Reads a ring map through mmap (one copy instead of a syscall per slot).
pub(super) fn read_ring(map: &MapData) -> std::io::Result<Vec<u32>> {
    let size = map.info().map_err(std::io::Error::other)?.max_entries() as usize;
    let mapping = Mapping::read_only(map.fd().as_fd(), size * STRIDE)?;
    Ok((0..size)
        .map(|index| mapping.load(index * STRIDE, Ordering::Relaxed))
        .collect())
}

/// Reads the ring map the kernel knows as `map_id` (what `RINGS` holds), if it still exists.
pub fn read_ring_by_id(map_id: u32) -> std::io::Result<Vec<u32>> {
    let map = MapData::from_id(map_id).map_err(std::io::Error::other)?;
    read_ring(&map)
}

/// Creates a ring map (`RING_FLAGS`) holding `slots`, written through mmap before any program
/// can reach it.
pub(super) fn new_ring(slots: &[u32]) -> std::io::Result<MapData> {
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let size = u32::try_from(slots.len()).map_err(std::io::Error::other)?;
    let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_ARRAY, 4, 4, size, RING_FLAGS);
    let map = MapData::create(obj, "lb_ring", None).map_err(std::io::Error::other)?;
    let mapping = Mapping::read_write(map.fd().as_fd(), slots.len() * STRIDE)?;
    for (index, slot) in slots.iter().enumerate() {
        mapping.store(index * STRIDE, *slot, Ordering::Relaxed);
    }
    drop(mapping);
    Ok(map)
}

/// `bpf(2)`'s command to update many elements at once.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr` (see the kernel's `include/uapi/linux/bpf.h`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Puts each prepared ring into `rings` (an `ARRAY_OF_MAPS`) at its VIP's index with one
/// `BPF_MAP_UPDATE_BATCH`, which the kernel follows with a single RCU grace period. Returns how
/// many were updated: all of them, or on an error how many the kernel got through first (the
/// kernel updates in order and reports that count).
pub(super) fn swap_batch(
    rings: BorrowedFd<'_>,
    prepared: &[(u32, PreparedRing)],
) -> Result<usize, (usize, std::io::Error)> {
    if prepared.is_empty() {
        return Ok(0);
    }
    let keys: Vec<u32> = prepared.iter().map(|(vip, _)| *vip).collect();
    let fds: Vec<u32> = prepared
        .iter()
        .map(|(_, ring)| ring.0.fd().as_fd().as_raw_fd() as u32)
        .collect();
    let count = u32::try_from(prepared.len()).map_err(|e| (0, std::io::Error::other(e)))?;
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: fds.as_ptr() as u64,
        count,
        map_fd: rings.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` batch member of the size passed; `keys` and `fds`
    // hold `count` 4-byte elements each (the map's key and value size) and outlive the call;
    // the kernel writes only `attr.count`.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if result == 0 {
        Ok(prepared.len())
    } else {
        let error = std::io::Error::last_os_error();
        Err(((attr.count as usize).min(prepared.len()), error))
    }
}
