//! The VIP planner: from what the datapath holds for one VIP ([`Written`]) and what it should
//! hold ([`VipTarget`]), the ordered list of map writes that gets it there ([`plan`]), with no
//! kernel access. `apply` carries the writes out.
//!
//! The order keeps every packet correct while the maps change:
//! 1. a backend entry that becomes usable (or changes next hop) is written before any ring
//!    points at it, and the egress interface it needs is in `TX_PORTS` before the entry;
//! 2. a VIP whose ring shrinks gets its smaller `ring_size` before the smaller ring is swapped
//!    in, and a VIP whose ring grows gets its larger size only after: a packet never indexes
//!    past the end of the ring it holds;
//! 3. rings are swapped whole, and only when their content changes;
//! 4. a new VIP is inserted into `VIPS` only after its ring exists;
//! 5. a backend entry that stops being usable is written after the ring without it is in place,
//!    so its tracked flows re-hash into the new ring;
//! 6. entries of backends the VIP no longer has are cleared last; a removed VIP leaves `VIPS`
//!    before its backends are cleared ([`plan_removal`]).

use std::collections::BTreeMap;

use lb_common::maps::{Backend, Vip, VipKey, NO_BACKEND};

/// One write to the datapath's maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapWrite {
    /// Let `XDP_REDIRECT` use interface `ifindex` (`TX_PORTS`).
    TxPort {
        /// The egress interface.
        ifindex: u32,
    },
    /// Write `BACKENDS[id]` (the default entry clears it).
    Backend {
        /// Backend id.
        id: u32,
        /// The entry.
        entry: Backend,
    },
    /// Swap in a new ring for VIP `vip` (`RINGS[vip]`).
    Ring {
        /// VIP id.
        vip: u32,
        /// Backend id per slot.
        slots: Vec<u32>,
    },
    /// Insert or replace the `VIPS` entry of `key`.
    Vip {
        /// The VIP's key.
        key: VipKey,
        /// Its entry.
        entry: Vip,
    },
    /// Remove `key` from `VIPS`: its packets stop matching at once.
    RemoveVip {
        /// The VIP's key.
        key: VipKey,
    },
}

/// What the datapath holds for one VIP, as far as this agent wrote (or adopted) it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Its `VIPS` entry (`None`: not in `VIPS`).
    pub entry: Option<Vip>,
    /// Its ring, as a digest (`None`: unknown or never written).
    pub ring: Option<RingDigest>,
    /// Its backends' `BACKENDS` entries in use, by id.
    pub backends: BTreeMap<u32, Backend>,
}

impl Written {
    /// Records that `write` reached the kernel.
    pub fn record(&mut self, write: &MapWrite) {
        match write {
            MapWrite::TxPort { .. } => {}
            MapWrite::Backend { id, entry } if *entry == Backend::default() => {
                self.backends.remove(id);
            }
            MapWrite::Backend { id, entry } => {
                self.backends.insert(*id, *entry);
            }
            MapWrite::Ring { slots, .. } => self.ring = Some(RingDigest::of(slots)),
            MapWrite::Vip { entry, .. } => self.entry = Some(*entry),
            MapWrite::RemoveVip { .. } => self.entry = None,
        }
    }
}

/// What the agent keeps of a ring it wrote: enough to tell whether a new one differs and
/// whether it holds a backend, without its slots (65,537 ids a VIP: 262 MB at 1000 VIPs).
/// Two different rings share a digest with a chance of 2^-64: the new one is then not
/// written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingDigest {
    /// Slots.
    len: usize,
    /// A 64-bit hash of the slots.
    hash: u64,
    /// Whether a slot holds a backend.
    has_backend: bool,
}

impl RingDigest {
    /// The digest of `ring`.
    pub fn of(ring: &[u32]) -> Self {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ring.hash(&mut hasher);
        Self {
            len: ring.len(),
            hash: hasher.finish(),
            has_backend: ring.iter().any(|slot| *slot != NO_BACKEND),
        }
    }

    /// Whether a slot of the ring holds a backend.
    pub fn has_backend(&self) -> bool {
        self.has_backend
    }
}

/// What the datapath should hold for one VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipTarget {
    /// Its `VIPS` key.
    pub key: VipKey,
    /// Its `VIPS` entry.
    pub entry: Vip,
    /// Its ring: a backend id per slot (`NO_BACKEND` everywhere when it has none).
    pub ring: Vec<u32>,
    /// The `BACKENDS` entry of every backend it has, by id.
    pub backends: BTreeMap<u32, Backend>,
}

/// The writes that take the datapath from `written` to `target`, in the order of the module
/// docs. `attach_ifindex` is the interface the balancer runs on: backends reached through it
/// are sent with `XDP_TX` and need no `TX_PORTS` entry.
pub fn plan(written: &Written, target: &VipTarget, attach_ifindex: u32) -> Vec<MapWrite> {
    let mut writes = Vec::new();
    let changed = |id: &u32, entry: &Backend| written.backends.get(id) != Some(entry);
    for (id, entry) in &target.backends {
        if entry.state().is_usable() && changed(id, entry) {
            if entry.ifindex != attach_ifindex {
                writes.push(MapWrite::TxPort {
                    ifindex: entry.ifindex,
                });
            }
            writes.push(MapWrite::Backend {
                id: *id,
                entry: *entry,
            });
        }
    }
    let vip_write = (written.entry != Some(target.entry)).then_some(MapWrite::Vip {
        key: target.key,
        entry: target.entry,
    });
    let shrinks = written
        .entry
        .is_some_and(|old| target.entry.ring_size < old.ring_size);
    if shrinks {
        writes.extend(vip_write.clone());
    }
    if written.ring != Some(RingDigest::of(&target.ring)) {
        writes.push(MapWrite::Ring {
            vip: target.entry.id,
            slots: target.ring.clone(),
        });
    }
    if !shrinks {
        writes.extend(vip_write);
    }
    for (id, entry) in &target.backends {
        if !entry.state().is_usable() && changed(id, entry) {
            writes.push(MapWrite::Backend {
                id: *id,
                entry: *entry,
            });
        }
    }
    for id in written.backends.keys() {
        if !target.backends.contains_key(id) {
            writes.push(MapWrite::Backend {
                id: *id,
                entry: Backend::default(),
            });
        }
    }
    writes
}

/// The writes that remove a VIP: out of `VIPS` first, then its backend entries cleared.
pub fn plan_removal(key: VipKey, written: &Written) -> Vec<MapWrite> {
    let mut writes = Vec::new();
    if written.entry.is_some() {
        writes.push(MapWrite::RemoveVip { key });
    }
    writes.extend(written.backends.keys().map(|id| MapWrite::Backend {
        id: *id,
        entry: Backend::default(),
    }));
    writes
}

#[cfg(test)]
mod tests {
    use lb_common::maps::{BackendState, ForwardMode, Protocol};

    use super::*;

    const ATTACH: u32 = 2;

    fn key() -> VipKey {
        VipKey::new("10.0.0.100".parse().unwrap(), 80, Protocol::Tcp)
    }

    fn backend(last: u8, state: BackendState, ifindex: u32) -> Backend {
        Backend {
            addr: [10, 0, 0, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            family: 4,
            state: state as u8,
            vip: 7,
            ifindex,
            mtu: 1500,
            dst_mac: [2, 0, 0, 0, 0, last],
            src_mac: [2, 0, 0, 0, 0, 1],
            ..Backend::default()
        }
    }

    fn target(ring_size: u32, ring: Vec<u32>, backends: &[(u32, Backend)]) -> VipTarget {
        VipTarget {
            key: key(),
            entry: Vip::new(7, ring_size, ForwardMode::Dsr),
            ring,
            backends: backends.iter().copied().collect(),
        }
    }

    /// `written` after applying `writes`.
    fn after(mut written: Written, writes: &[MapWrite]) -> Written {
        for write in writes {
            written.record(write);
        }
        written
    }

    /// Position of the first write matching `wanted`.
    fn position(writes: &[MapWrite], wanted: impl Fn(&MapWrite) -> bool) -> usize {
        writes
            .iter()
            .position(wanted)
            .unwrap_or_else(|| panic!("missing write in {writes:#?}"))
    }

    fn is_ring(write: &MapWrite) -> bool {
        matches!(write, MapWrite::Ring { .. })
    }

    fn is_vip(write: &MapWrite) -> bool {
        matches!(write, MapWrite::Vip { .. })
    }

    fn is_backend(id: u32) -> impl Fn(&MapWrite) -> bool {
        move |write| matches!(write, MapWrite::Backend { id: written, .. } if *written == id)
    }

    #[test]
    fn a_new_vip_gets_its_backends_then_its_ring_then_its_vips_entry() {
        let up = backend(11, BackendState::Up, ATTACH);
        let down = backend(12, BackendState::Down, ATTACH);
        let target = target(7, vec![0; 7], &[(0, up), (1, down)]);
        let writes = plan(&Written::default(), &target, ATTACH);
        let ring = position(&writes, is_ring);
        assert!(position(&writes, is_backend(0)) < ring, "{writes:#?}");
        assert!(ring < position(&writes, is_vip), "{writes:#?}");
        assert!(
            ring < position(&writes, is_backend(1)),
            "an unusable entry comes after the ring: {writes:#?}"
        );
        assert_eq!(
            writes.len(),
            4,
            "no TX_PORTS write for the attach interface"
        );
    }

    #[test]
    fn nothing_to_do_when_the_datapath_holds_the_target() {
        let target = target(7, vec![0; 7], &[(0, backend(11, BackendState::Up, ATTACH))]);
        let written = after(
            Written::default(),
            &plan(&Written::default(), &target, ATTACH),
        );
        assert_eq!(plan(&written, &target, ATTACH), []);
    }

    #[test]
    fn a_backend_reached_through_another_interface_gets_its_tx_port_first() {
        let target = target(7, vec![0; 7], &[(0, backend(11, BackendState::Up, 9))]);
        let writes = plan(&Written::default(), &target, ATTACH);
        assert_eq!(writes[0], MapWrite::TxPort { ifindex: 9 });
        assert!(is_backend(0)(&writes[1]));
    }

    #[test]
    fn a_failing_backend_leaves_the_ring_before_its_entry_says_down() {
        let up = [
            (0, backend(11, BackendState::Up, ATTACH)),
            (1, backend(12, BackendState::Up, ATTACH)),
        ];
        let before = target(7, vec![0, 1, 0, 1, 0, 1, 0], &up);
        let written = after(
            Written::default(),
            &plan(&Written::default(), &before, ATTACH),
        );
        let failed = target(
            7,
            vec![0; 7],
            &[up[0], (1, backend(12, BackendState::Down, ATTACH))],
        );
        let writes = plan(&written, &failed, ATTACH);
        assert_eq!(writes.len(), 2, "{writes:#?}");
        assert!(
            is_ring(&writes[0]) && is_backend(1)(&writes[1]),
            "{writes:#?}"
        );
    }

    #[test]
    fn a_recovering_backend_is_up_in_its_entry_before_the_ring_points_at_it() {
        let down = [
            (0, backend(11, BackendState::Up, ATTACH)),
            (1, backend(12, BackendState::Down, ATTACH)),
        ];
        let before = target(7, vec![0; 7], &down);
        let written = after(
            Written::default(),
            &plan(&Written::default(), &before, ATTACH),
        );
        let recovered = target(
            7,
            vec![0, 1, 0, 1, 0, 1, 0],
            &[down[0], (1, backend(12, BackendState::Up, ATTACH))],
        );
        let writes = plan(&written, &recovered, ATTACH);
        assert!(
            is_backend(1)(&writes[0]) && is_ring(&writes[1]),
            "{writes:#?}"
        );
    }

    #[test]
    fn a_shrinking_ring_is_indexed_with_its_new_size_before_the_swap() {
        let backends = [(0, backend(11, BackendState::Up, ATTACH))];
        let big = target(13, vec![0; 13], &backends);
        let written = after(Written::default(), &plan(&Written::default(), &big, ATTACH));
        let small = target(7, vec![0; 7], &backends);
        let writes = plan(&written, &small, ATTACH);
        assert!(
            position(&writes, is_vip) < position(&writes, is_ring),
            "{writes:#?}"
        );
        let written = after(written, &writes);
        let writes = plan(&written, &big, ATTACH);
        assert!(
            position(&writes, is_ring) < position(&writes, is_vip),
            "{writes:#?}"
        );
    }

    #[test]
    fn removed_backends_are_cleared_after_the_ring_without_them() {
        let both = [
            (0, backend(11, BackendState::Up, ATTACH)),
            (1, backend(12, BackendState::Up, ATTACH)),
        ];
        let before = target(7, vec![0, 1, 0, 1, 0, 1, 0], &both);
        let written = after(
            Written::default(),
            &plan(&Written::default(), &before, ATTACH),
        );
        let writes = plan(&written, &target(7, vec![0; 7], &both[..1]), ATTACH);
        assert_eq!(
            writes,
            [
                MapWrite::Ring {
                    vip: 7,
                    slots: vec![0; 7]
                },
                MapWrite::Backend {
                    id: 1,
                    entry: Backend::default()
                }
            ]
        );
        assert!(!after(written, &writes).backends.contains_key(&1));
    }

    #[test]
    fn an_empty_ring_is_still_swapped_in_whole() {
        let down = [(0, backend(11, BackendState::Down, ATTACH))];
        let writes = plan(
            &Written::default(),
            &target(7, vec![NO_BACKEND; 7], &down),
            ATTACH,
        );
        assert!(writes.iter().any(is_ring));
    }

    #[test]
    fn a_removed_vip_stops_matching_before_its_backends_are_cleared() {
        let target = target(7, vec![0; 7], &[(0, backend(11, BackendState::Up, ATTACH))]);
        let written = after(
            Written::default(),
            &plan(&Written::default(), &target, ATTACH),
        );
        let writes = plan_removal(key(), &written);
        assert_eq!(writes[0], MapWrite::RemoveVip { key: key() });
        assert!(is_backend(0)(&writes[1]));
        let written = after(written, &writes);
        assert_eq!((written.entry, written.backends.len()), (None, 0));
    }

    #[test]
    fn a_ring_digest_tells_rings_apart_and_whether_they_hold_a_backend() {
        let ring: Vec<u32> = (0..65537).map(|slot| slot % 16).collect();
        assert_eq!(RingDigest::of(&ring), RingDigest::of(&ring.clone()));
        let mut moved = ring.clone();
        moved[40000] = 3;
        assert_ne!(
            RingDigest::of(&moved),
            RingDigest::of(&ring),
            "one slot moved"
        );
        assert_ne!(RingDigest::of(&ring[..7]), RingDigest::of(&ring[..11]));
        assert!(RingDigest::of(&ring).has_backend());
        assert!(!RingDigest::of(&[NO_BACKEND; 7]).has_backend());
        // An unchanged ring is not swapped again; a changed one is.
        let backends = [(0, backend(11, BackendState::Up, ATTACH))];
        let written = after(
            Written::default(),
            &plan(
                &Written::default(),
                &target(7, vec![0; 7], &backends),
                ATTACH,
            ),
        );
        assert!(!plan(&written, &target(7, vec![0; 7], &backends), ATTACH)
            .iter()
            .any(is_ring));
        let mut other = vec![0; 7];
        other[3] = NO_BACKEND;
        assert!(plan(&written, &target(7, other, &backends), ATTACH)
            .iter()
            .any(is_ring));
    }

    #[test]
    fn an_adopted_vip_with_a_larger_ring_shrinks_safely() {
        let backends = [(0, backend(11, BackendState::Up, ATTACH))];
        let adopted = Written {
            entry: Some(Vip::new(7, 65537, ForwardMode::Dsr)),
            ring: None,
            backends: backends.iter().copied().collect(),
        };
        let writes = plan(&adopted, &target(7, vec![0; 7], &backends), ATTACH);
        assert_eq!(
            writes.len(),
            2,
            "the unchanged entry is not rewritten: {writes:#?}"
        );
        assert!(is_vip(&writes[0]) && is_ring(&writes[1]), "{writes:#?}");
    }
}
