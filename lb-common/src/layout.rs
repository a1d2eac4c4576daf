//! The layout of the pinned state: a version number for the key and value layouts of every
//! map, recorded in the state itself (the `LAYOUT` map) when a datapath is first loaded, so a
//! later agent or CLI can tell whether it may adopt the maps as they are, must migrate them,
//! or must refuse.
//!
//! [`LAYOUT_VERSION`] must change whenever a shared type's layout or a map's size or meaning
//! does: [`SHAPE`] lists the sizes, alignments and field offsets of every shared type and the
//! map sizes, and a unit test fails when [`fingerprint`] of it differs from the fingerprint
//! recorded for the current version (see `RECORDED` in the tests). Bumping the version means
//! recording the new fingerprint and teaching the agent to migrate from the previous one.
//!
//! Version 0 is the state of agents from before this scheme: it has no `LAYOUT` map. Version 1
//! added `LAYOUT` and the interface MAC in `Settings` (17 → 20 counters, too). Version 2
//! replaced the `CONNTRACK` LRU hash map by the `FLOWS` set table and added the VIP index
//! (`VIP_SLOTS`, `VIP_ENTRIES`). Version 3 gave every flow of `FLOWS` a class beside its last
//! tick (the stamp), made `FLOWS` mmapable, added the idle timeouts to `Settings` and a counter
//! (`conntrack_evicted_protected`).

use core::mem::{align_of, offset_of, size_of};

use crate::{
    conntrack::{FlowSet, WAYS},
    maps::{Backend, DecapKey, Settings, Vip, VipKey, FLOWS_FLAGS, MAX_BACKENDS, MAX_VIPS},
    stats::{BackendStats, Counter, VipStats},
    vip_index::{VipEntry, VIP_SLOTS},
    FlowKey,
};

/// The layout this build writes and reads.
pub const LAYOUT_VERSION: u32 = 3;

/// The fingerprint version 2 recorded in its `LAYOUT`.
pub const V2_FINGERPRINT: u64 = 0x995b_e082_dd3c_ab7e;

/// The fingerprint version 1 recorded in its `LAYOUT` (the build of that version computed it
/// from its own shapes, which this build no longer has).
pub const V1_FINGERPRINT: u64 = 0xbd77_a4b7_7538_63f2;

/// Value of the `LAYOUT` map (one entry): which layout the pinned maps have.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// [`LAYOUT_VERSION`] of the build that created the maps.
    pub version: u32,
    /// Always zero.
    pub _pad: u32,
    /// [`fingerprint`] of that build's shapes.
    pub fingerprint: u64,
}

impl Layout {
    /// The layout of this build.
    pub const CURRENT: Layout = Layout {
        version: LAYOUT_VERSION,
        _pad: 0,
        fingerprint: fingerprint(SHAPE),
    };
}

/// Sizes, alignments and field offsets of every type shared through maps, and the sizes of the
/// maps whose size is fixed by this build.
pub const SHAPE: &[usize] = &[
    size_of::<VipKey>(),
    align_of::<VipKey>(),
    offset_of!(VipKey, addr),
    offset_of!(VipKey, port),
    offset_of!(VipKey, protocol),
    offset_of!(VipKey, family),
    size_of::<Vip>(),
    align_of::<Vip>(),
    offset_of!(Vip, id),
    offset_of!(Vip, ring_size),
    offset_of!(Vip, forward),
    size_of::<Backend>(),
    align_of::<Backend>(),
    offset_of!(Backend, addr),
    offset_of!(Backend, family),
    offset_of!(Backend, state),
    offset_of!(Backend, vip),
    offset_of!(Backend, ifindex),
    offset_of!(Backend, mtu),
    offset_of!(Backend, dst_mac),
    offset_of!(Backend, src_mac),
    size_of::<FlowSet>(),
    align_of::<FlowSet>(),
    offset_of!(FlowSet, tags),
    offset_of!(FlowSet, stamps),
    offset_of!(FlowSet, keys),
    WAYS,
    size_of::<FlowKey>(),
    align_of::<FlowKey>(),
    offset_of!(FlowKey, src),
    offset_of!(FlowKey, dst),
    offset_of!(FlowKey, src_port),
    offset_of!(FlowKey, dst_port),
    offset_of!(FlowKey, protocol),
    offset_of!(FlowKey, family),
    size_of::<Settings>(),
    align_of::<Settings>(),
    offset_of!(Settings, tunnel_source_v4),
    offset_of!(Settings, tunnel_source_v6),
    offset_of!(Settings, local_mac),
    offset_of!(Settings, idle_timeouts),
    size_of::<DecapKey>(),
    size_of::<VipStats>(),
    size_of::<BackendStats>(),
    size_of::<Layout>(),
    size_of::<VipEntry>(),
    offset_of!(VipEntry, key),
    offset_of!(VipEntry, vip),
    VIP_SLOTS as usize,
    FLOWS_FLAGS as usize,
    Counter::COUNT as usize,
    MAX_VIPS as usize,
    MAX_BACKENDS as usize,
];

/// FNV-1a (64-bit) over `shape`'s numbers.
pub const fn fingerprint(shape: &[usize]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < shape.len() {
        let bytes = (shape[i] as u64).to_le_bytes();
        let mut j = 0;
        while j < bytes.len() {
            hash ^= bytes[j] as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
            j += 1;
        }
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprint of every layout version this build knows. A failure here means a shared
    /// type or a map size changed: bump `LAYOUT_VERSION`, add the new fingerprint below, and
    /// teach the agent's migration (lb-user `datapath/layout.rs`) the step from the previous
    /// version.
    const RECORDED: &[(u32, u64)] = &[
        (1, V1_FINGERPRINT),
        (2, V2_FINGERPRINT),
        (3, 0xa62f_60e8_5d9e_c127),
    ];

    #[test]
    fn the_layout_version_changes_with_the_shapes() {
        let current = fingerprint(SHAPE);
        let recorded = RECORDED
            .iter()
            .find(|(version, _)| *version == LAYOUT_VERSION)
            .map(|(_, fingerprint)| *fingerprint);
        assert_eq!(
            recorded,
            Some(current),
            "the shapes of the shared types changed (fingerprint {current:#018x}): bump \
             LAYOUT_VERSION, record the new fingerprint in RECORDED, and add the migration"
        );
    }
}
