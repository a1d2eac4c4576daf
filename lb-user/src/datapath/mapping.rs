//! Shared mappings of `BPF_F_MMAPABLE` array maps (rings, the VIP index, `FLOWS`, `LOADS`):
//! their value area in this process's memory, read and written one aligned 32- or 64-bit word
//! at a time, so a program reading a word at the same time sees it old or new, never half
//! written.

use std::{
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

/// A mapping of an mmapable array map's values, unmapped when dropped.
pub(super) struct Mapping {
    area: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory; every access goes through atomic 32-bit loads
// and stores, which any thread may perform.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared references only load and store through `AtomicU32`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of the values of the map `fd`, to read and write.
    pub(super) fn read_write(fd: BorrowedFd<'_>, len: usize) -> std::io::Result<Self> {
        Self::new(fd, len, true)
    }

    /// Maps the first `len` bytes of the values of the map `fd`, to read only.
    pub(super) fn read_only(fd: BorrowedFd<'_>, len: usize) -> std::io::Result<Self> {
        Self::new(fd, len, false)
    }

    fn new(fd: BorrowedFd<'_>, len: usize, writable: bool) -> std::io::Result<Self> {
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: mmap of a BPF_F_MMAPABLE array map's fd, shared, at offset 0, `len` bytes
        // (at most the value area; the kernel page-rounds it, and refuses more). Checked below.
        let area = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                protection,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if area == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let area = NonNull::new(area.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Self {
            area,
            len,
            writable,
        })
    }

    /// The 32-bit word at byte `offset` (a multiple of 4, below `len`).
    fn word(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len,
            "offset {offset} out of the mapping"
        );
        // SAFETY: in bounds and 4-byte aligned (checked above; the mapping is page-aligned),
        // and live for as long as `self`. The kernel and programs access the same memory,
        // which AtomicU32 permits.
        unsafe { &*self.area.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// The 64-bit word at byte `offset` (a multiple of 8, below `len`).
    fn word64(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len,
            "offset {offset} out of the mapping"
        );
        // SAFETY: as in `word`, 8-byte aligned.
        unsafe { &*self.area.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// Reads the 64-bit word at byte `offset`.
    pub(super) fn load64(&self, offset: usize, order: Ordering) -> u64 {
        self.word64(offset).load(order)
    }

    /// Writes the 64-bit word at byte `offset` (of a [`Self::read_write`] mapping).
    pub(super) fn store64(&self, offset: usize, value: u64, order: Ordering) {
        assert!(self.writable, "a store into a read-only mapping");
        self.word64(offset).store(value, order);
    }

    /// Reads the word at byte `offset`.
    pub(super) fn load(&self, offset: usize, order: Ordering) -> u32 {
        self.word(offset).load(order)
    }

    /// Writes the word at byte `offset` (of a [`Self::read_write`] mapping).
    pub(super) fn store(&self, offset: usize, value: u32, order: Ordering) {
        assert!(self.writable, "a store into a read-only mapping");
        self.word(offset).store(value, order);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`; no reference to it survives
        // `self`.
        unsafe { libc::munmap(self.area.as_ptr().cast(), self.len) };
    }
}
