//! Ring maps: created and filled through mmap before any packet can see them, and read back
//! the same way (one copy instead of a syscall per slot).

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::MapData;
use lb_common::maps::RING_FLAGS;

/// A ring map filled by [`super::Datapath::prepare_ring`], waiting for [`super::Datapath::swap_ring`].
pub struct PreparedRing(pub(super) MapData);

impl PreparedRing {
    /// The ring map, e.g. to insert into another object's `RINGS` (upgrade tests set up an
    /// older release's datapath this way).
    pub fn map_data(&self) -> &MapData {
        &self.0
    }
}

/// Reads a ring map through mmap (one copy instead of a syscall per slot).
pub(super) fn read_ring(map: &MapData) -> std::io::Result<Vec<u32>> {
    const STRIDE: usize = 8;
    let size = map.info().map_err(std::io::Error::other)?.max_entries() as usize;
    let bytes = size * STRIDE;
    // SAFETY: read-only shared mapping of a BPF_F_MMAPABLE array's value area (size * STRIDE
    // bytes); checked before use and unmapped before returning.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if area == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let slots = (0..size)
        // SAFETY: `index * STRIDE + 4 <= bytes`, inside the live mapping.
        .map(|index| unsafe {
            area.cast::<u8>()
                .add(index * STRIDE)
                .cast::<u32>()
                .read_unaligned()
        })
        .collect();
    // SAFETY: unmapping exactly the mapping created above; no reference to it survives.
    unsafe { libc::munmap(area, bytes) };
    Ok(slots)
}

/// Creates a ring map (`RING_FLAGS`) holding `slots`, written through mmap.
///
/// The kernel lays array values out at a stride of `round_up(value_size, 8)`, so each 4-byte
/// slot occupies 8 bytes of the mapping.
pub(super) fn new_ring(slots: &[u32]) -> std::io::Result<MapData> {
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const STRIDE: usize = 8;
    let size = u32::try_from(slots.len()).map_err(std::io::Error::other)?;
    let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_ARRAY, 4, 4, size, RING_FLAGS);
    let map = MapData::create(obj, "lb_ring", None).map_err(std::io::Error::other)?;
    let bytes = slots.len() * STRIDE;
    // SAFETY: mmap of a BPF_F_MMAPABLE array fd, shared, read-write, at offset 0, covering the
    // value area (size * STRIDE bytes; the kernel page-rounds it). The result is checked
    // before use and unmapped before returning.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if area == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let Some(area) = NonNull::new(area.cast::<u8>()) else {
        return Err(std::io::Error::other("mmap returned null"));
    };
    for (index, slot) in slots.iter().enumerate() {
        // SAFETY: `index * STRIDE + 4 <= bytes`, inside the live mapping; nothing else
        // references it (no program can reach this map yet). Unaligned-safe write.
        unsafe {
            area.as_ptr()
                .add(index * STRIDE)
                .cast::<u32>()
                .write_unaligned(*slot)
        };
    }
    // SAFETY: unmapping exactly the mapping created above; no reference to it survives.
    unsafe { libc::munmap(area.as_ptr().cast(), bytes) };
    Ok(map)
}
