//! Ring maps: created and filled through mmap before any packet can see them, and read back
//! the same way (one copy instead of a syscall per slot).

use std::{os::fd::AsFd as _, sync::atomic::Ordering};

use aya::maps::MapData;
use lb_common::maps::RING_FLAGS;

use super::mapping::Mapping;

/// A ring map filled by [`super::Datapath::prepare_ring`], waiting for [`super::Datapath::swap_ring`].
pub struct PreparedRing(pub(super) MapData);

impl PreparedRing {
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
