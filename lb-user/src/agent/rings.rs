//! Maglev rings by what they are built from, so VIPs with the same backends share one build.
//!
//! A ring depends only on its size and on the address and weight of each member (the backend
//! ids in its slots are only names: see `lb_common::maglev`). When many VIPs are served by one
//! pool of backends, a health change of one backend changes every one of their rings the same
//! way: building each costs about a millisecond at 65,537 slots, and its fingerprint (what
//! `lb status` shows) another. [`RingCache`] builds a ring once per shape, in *positions*
//! (indices into the shape's sorted members), with its fingerprint and the slots each member
//! holds; a VIP then only renames the positions to its backend ids ([`SharedRing::ids`]).
//! Pure, no I/O.

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, OnceLock},
};

use lb_common::{
    maglev::{build_ring, MaglevBackend, MaglevError},
    maps::NO_BACKEND,
};

/// Slot bytes the cache keeps at most (4 per slot): 64 rings of 65,537 slots.
const CACHE_BYTES: usize = 16 << 20;

/// What a ring is built from: its size and its members (address, weight), sorted by address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingShape {
    size: u32,
    members: Vec<(IpAddr, u32)>,
}

impl RingShape {
    /// The shape of a ring of `size` slots over `members` (address, weight), in any order.
    pub fn new(size: u32, members: impl IntoIterator<Item = (IpAddr, u32)>) -> Self {
        let mut members: Vec<(IpAddr, u32)> = members.into_iter().collect();
        members.sort_unstable();
        Self { size, members }
    }

    /// Its slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Its members (address, weight), sorted by address.
    pub fn members(&self) -> &[(IpAddr, u32)] {
        &self.members
    }
}

/// A ring built once for every VIP of its shape.
#[derive(Debug, PartialEq, Eq)]
pub struct SharedRing {
    shape: RingShape,
    /// The member position in each slot (`NO_BACKEND`: none).
    positions: Vec<u32>,
    /// Slots held by each member, by position.
    slots: Vec<u32>,
    /// `crate::fingerprint::ring_fingerprint` of the ring: the same whatever ids a VIP gives
    /// its backends. Computed when first asked (about a millisecond at 65,537 slots): only the
    /// metrics ask.
    fingerprint: OnceLock<u64>,
}

impl SharedRing {
    /// Builds the ring of `shape`.
    fn build(shape: RingShape) -> Result<Self, MaglevError> {
        let identities: Vec<Vec<u8>> = shape
            .members
            .iter()
            .map(|(address, _)| identity(*address))
            .collect();
        let maglev: Vec<MaglevBackend<'_>> = shape
            .members
            .iter()
            .zip(&identities)
            .enumerate()
            .map(|(position, ((_, weight), identity))| MaglevBackend {
                id: position as u32,
                identity,
                weight: *weight,
            })
            .collect();
        let positions = build_ring(&maglev, shape.size)?;
        let mut slots = vec![0u32; shape.members.len()];
        for position in positions.iter().filter(|p| **p != NO_BACKEND) {
            slots[*position as usize] += 1;
        }
        Ok(Self {
            shape,
            positions,
            slots,
            fingerprint: OnceLock::new(),
        })
    }

    /// The ring with backend ids: `id_of(address)` names each member.
    pub fn ids(&self, id_of: &impl Fn(IpAddr) -> u32) -> Vec<u32> {
        let ids: Vec<u32> = self
            .shape
            .members
            .iter()
            .map(|(address, _)| id_of(*address))
            .collect();
        self.positions
            .iter()
            .map(|position| match ids.get(*position as usize) {
                Some(id) => *id,
                None => NO_BACKEND,
            })
            .collect()
    }

    /// Every member's address and slots.
    pub fn member_slots(&self) -> impl Iterator<Item = (IpAddr, u32)> + '_ {
        self.shape
            .members
            .iter()
            .zip(&self.slots)
            .map(|((address, _), slots)| (*address, *slots))
    }

    /// The ring's fingerprint.
    pub fn fingerprint(&self) -> u64 {
        *self.fingerprint.get_or_init(|| {
            let names: std::collections::BTreeMap<u32, String> = self
                .shape
                .members
                .iter()
                .enumerate()
                .map(|(position, (address, _))| (position as u32, address.to_string()))
                .collect();
            crate::fingerprint::ring_fingerprint(&self.positions, &names)
        })
    }

    /// Its size.
    pub fn size(&self) -> u32 {
        self.shape.size
    }

    /// What it was built from.
    pub fn shape(&self) -> &RingShape {
        &self.shape
    }

    /// Slot bytes it takes.
    fn bytes(&self) -> usize {
        self.positions.len() * size_of::<u32>()
    }
}

/// How many of the rings of `bytes` (in order) fit in the cache's [`CACHE_BYTES`] together.
fn within_budget(bytes: impl Iterator<Item = usize>) -> usize {
    let mut total = 0;
    bytes
        .take_while(|bytes| {
            total += bytes;
            total <= CACHE_BYTES
        })
        .count()
}

/// The Maglev identity of a backend: its address, so a backend keeps its slots whatever id it
/// gets and whatever the order of the configuration (and two instances build the same ring).
fn identity(address: IpAddr) -> Vec<u8> {
    address.to_string().into_bytes()
}

/// The rings built lately, most recently used first, up to 16 MiB of slots.
#[derive(Debug, Default)]
pub struct RingCache {
    rings: VecDeque<Arc<SharedRing>>,
    /// Rings built (not found in the cache) so far.
    built: u64,
}

impl RingCache {
    /// The ring of `shape`: from the cache, else built and cached.
    pub fn ring(&mut self, shape: RingShape) -> Result<Arc<SharedRing>, MaglevError> {
        if let Some(index) = self.rings.iter().position(|ring| ring.shape == shape) {
            let ring = self.rings.remove(index).expect("an index found above");
            self.rings.push_front(Arc::clone(&ring));
            return Ok(ring);
        }
        let ring = Arc::new(SharedRing::build(shape)?);
        self.built += 1;
        self.insert(Arc::clone(&ring));
        Ok(ring)
    }

    /// Caches `ring` as the most recently used, dropping the least recently used beyond
    /// [`CACHE_BYTES`].
    fn insert(&mut self, ring: Arc<SharedRing>) {
        self.rings.push_front(ring);
        let keep = within_budget(self.rings.iter().map(|ring| ring.bytes())).max(1);
        self.rings.truncate(keep);
    }

    /// Builds the rings of `shapes` the cache lacks, side by side on every core of the machine
    /// but one (left to the health checks and the kernel's packet work: on two cores, one
    /// thread), and caches them (as many as it keeps), so that [`RingCache::ring`] then finds
    /// them. A shape that cannot be built is left for `ring` to report.
    pub fn prepare(&mut self, shapes: impl IntoIterator<Item = RingShape>) {
        let mut missing: Vec<RingShape> = Vec::new();
        for shape in shapes {
            if !missing.contains(&shape) && !self.rings.iter().any(|ring| ring.shape == shape) {
                missing.push(shape);
            }
        }
        // No more than the cache keeps: the first ones would be dropped before they are asked.
        missing.truncate(within_budget(
            missing
                .iter()
                .map(|shape| shape.size as usize * size_of::<u32>()),
        ));
        if missing.is_empty() {
            return;
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_sub(1)
            .max(1);
        let per_thread = missing.len().div_ceil(threads);
        let built: Vec<SharedRing> = std::thread::scope(|scope| {
            let workers: Vec<_> = missing
                .chunks(per_thread)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .filter_map(|shape| SharedRing::build(shape.clone()).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap_or_default())
                .collect()
        });
        for ring in built {
            self.built += 1;
            self.insert(Arc::new(ring));
        }
    }

    /// Rings built so far (cache misses).
    pub fn built(&self) -> u64 {
        self.built
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slots of member `address` of `ring` (0 when it is not one).
    fn slots_of(ring: &SharedRing, address: IpAddr) -> u32 {
        ring.member_slots()
            .find(|(member, _)| *member == address)
            .map_or(0, |(_, slots)| slots)
    }

    fn address(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_shared_ring_is_the_ring_built_with_the_ids() {
        let members = [(address(3), 2), (address(1), 1), (address(2), 1)];
        let ids = |a: IpAddr| match a {
            IpAddr::V4(v4) => 100 + u32::from(v4.octets()[3]),
            IpAddr::V6(_) => unreachable!(),
        };
        let mut cache = RingCache::default();
        let shared = cache.ring(RingShape::new(251, members)).expect("ring");
        let identities: Vec<Vec<u8>> = members.iter().map(|(a, _)| identity(*a)).collect();
        let direct: Vec<MaglevBackend<'_>> = members
            .iter()
            .zip(&identities)
            .map(|((a, weight), identity)| MaglevBackend {
                id: ids(*a),
                identity,
                weight: *weight,
            })
            .collect();
        let ring = shared.ids(&ids);
        assert_eq!(ring, build_ring(&direct, 251).expect("ring"));
        for (a, _) in members {
            let held = ring.iter().filter(|slot| **slot == ids(a)).count() as u32;
            assert_eq!(slots_of(&shared, a), held);
        }
        assert_eq!(slots_of(&shared, address(9)), 0, "not a member");
        let names = members
            .iter()
            .map(|(a, _)| (ids(*a), a.to_string()))
            .collect();
        assert_eq!(
            shared.fingerprint(),
            crate::fingerprint::ring_fingerprint(&ring, &names),
            "the fingerprint lb status computes from the kernel's ring"
        );
        assert_eq!(shared.size(), 251);
    }

    #[test]
    fn one_build_per_shape_whatever_the_order_of_its_members() {
        let mut cache = RingCache::default();
        let a = cache
            .ring(RingShape::new(251, [(address(1), 1), (address(2), 1)]))
            .expect("ring");
        let b = cache
            .ring(RingShape::new(251, [(address(2), 1), (address(1), 1)]))
            .expect("ring");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(cache.built(), 1);
        let reweighted = cache
            .ring(RingShape::new(251, [(address(2), 2), (address(1), 1)]))
            .expect("ring");
        let resized = cache
            .ring(RingShape::new(257, [(address(2), 1), (address(1), 1)]))
            .expect("ring");
        assert_eq!(cache.built(), 3);
        assert_ne!(reweighted.positions, a.positions);
        assert_eq!(resized.size(), 257);
    }

    #[test]
    fn an_empty_ring_and_a_ring_without_weight_hold_no_backend() {
        let mut cache = RingCache::default();
        for members in [vec![], vec![(address(1), 0)]] {
            let ring = cache.ring(RingShape::new(251, members)).expect("ring");
            assert!(ring.ids(&|_| 7).iter().all(|slot| *slot == NO_BACKEND));
            assert_eq!(slots_of(&ring, address(1)), 0);
        }
    }

    #[test]
    fn the_cache_keeps_its_budget_and_the_most_recently_used() {
        let mut cache = RingCache::default();
        let size = 65537;
        let per_ring = size as usize * 4;
        let room = CACHE_BYTES / per_ring;
        for weight in 1..=room as u32 + 3 {
            cache
                .ring(RingShape::new(size, [(address(1), weight)]))
                .expect("ring");
            // The first one stays in use.
            cache
                .ring(RingShape::new(size, [(address(1), 1)]))
                .expect("ring");
        }
        assert_eq!(cache.rings.len(), room);
        assert_eq!(cache.built(), room as u64 + 3);
        cache
            .ring(RingShape::new(size, [(address(1), 1)]))
            .expect("ring");
        assert_eq!(cache.built(), room as u64 + 3, "still cached");
        cache
            .ring(RingShape::new(size, [(address(1), 2)]))
            .expect("ring");
        assert_eq!(cache.built(), room as u64 + 4, "evicted");
    }

    #[test]
    fn a_ring_larger_than_the_budget_is_still_kept_alone() {
        let mut cache = RingCache::default();
        let size = 4_194_301; // a prime above CACHE_BYTES / 4
        cache
            .ring(RingShape::new(size, [(address(1), 1)]))
            .expect("ring");
        assert_eq!(cache.rings.len(), 1);
    }

    #[test]
    fn prepared_rings_are_built_side_by_side_once_and_then_found() {
        let shape = |first: u8| {
            RingShape::new(
                65_537,
                (first..first + 4).map(|last| (address(last), u32::from(last % 3) + 1)),
            )
        };
        let mut cache = RingCache::default();
        cache.ring(shape(1)).expect("ring");
        // One cached, one asked twice, one that cannot be built (no slots): three built.
        let shapes = [1, 10, 20, 30, 10].map(shape);
        cache.prepare(shapes.iter().cloned().chain([RingShape::new(0, [])]));
        assert_eq!(cache.built(), 4);
        let mut alone = RingCache::default();
        for shape in &shapes {
            let prepared = cache.ring(shape.clone()).expect("ring");
            assert_eq!(prepared, alone.ring(shape.clone()).expect("ring"));
        }
        assert_eq!(cache.built(), 4, "every prepared ring found");
        assert!(cache.ring(RingShape::new(0, [])).is_err(), "still reported");
    }
}
