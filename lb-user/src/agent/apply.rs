//! Carries out the planner's writes on the datapath, in order, recording each one that reached
//! the kernel; the first failure stops the rest of that VIP's writes (what was written stays
//! recorded).
//!
//! Many VIPs are applied together ([`apply_all`], in groups of [`group_size`]): every swap of `RINGS` costs an RCU grace
//! period (about 12 ms here), so the rings of a whole group are swapped with one batched
//! update and one wait. Each VIP's writes keep their planned order: its writes before its
//! ring, its ring, its writes after. Writes of different VIPs touch different entries, so
//! interleaving them changes nothing a packet can see.

use lb_common::maps::Backend;

use super::plan::{MapWrite, Written};
use crate::datapath::{Datapath, DatapathError, PreparedRing};

/// Ring bytes prepared and swapped in one group (a slot takes 8 bytes of kernel memory, and
/// the agent holds each new ring twice, as target and as write, 8 bytes more): 32 MiB is 64
/// rings of 65,537 slots, so 1000 VIPs take 16 grace periods while the new rings waiting
/// beside the old ones stay bounded.
const GROUP_RING_BYTES: usize = 32 << 20;

/// What a successful [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rings swapped.
    pub rings: usize,
    /// The kernel's id of the last ring map swapped in, if it could be read.
    pub ring_map_id: Option<u32>,
    /// Backend entries cleared: their ids are free again.
    pub cleared: Vec<u32>,
}

/// One VIP's part of [`apply_all`]: what the datapath holds for it, and its planned writes.
pub struct VipWrites<'a> {
    /// Updated with every write that reaches the kernel.
    pub written: &'a mut Written,
    /// In the planner's order.
    pub writes: Vec<MapWrite>,
}

/// Applies `writes` to `datapath` in order, recording each in `written`.
pub fn apply(
    datapath: &mut Datapath,
    written: &mut Written,
    writes: Vec<MapWrite>,
) -> Result<Applied, DatapathError> {
    let mut results = apply_all(datapath, vec![VipWrites { written, writes }]);
    results.pop().unwrap_or_else(|| Ok(Applied::default()))
}

/// A VIP of a group on its way through [`apply_all`].
struct InGroup<'a> {
    vip: VipWrites<'a>,
    applied: Applied,
    /// Its writes carried out so far.
    done: usize,
    /// Its ring, created and filled, waiting for the swap.
    ring: Option<(u32, PreparedRing)>,
    /// That ring's map id.
    ring_map_id: Option<u32>,
    failed: Option<DatapathError>,
}

/// How many VIPs with rings of `ring_slots` slots to apply together: as many as
/// [`GROUP_RING_BYTES`] of new rings, at least one.
pub fn group_size(ring_slots: usize) -> usize {
    (GROUP_RING_BYTES / (ring_slots.max(1) * 8)).max(1)
}

/// Applies the writes of many VIPs (a group: see [`group_size`]), a result per VIP in the
/// order given: every VIP's writes before its ring, then all their rings in one swap, then
/// every VIP's writes after it.
pub fn apply_all(
    datapath: &mut Datapath,
    vips: Vec<VipWrites<'_>>,
) -> Vec<Result<Applied, DatapathError>> {
    let mut group: Vec<InGroup> = vips
        .into_iter()
        .map(|vip| InGroup {
            vip,
            applied: Applied::default(),
            done: 0,
            ring: None,
            ring_map_id: None,
            failed: None,
        })
        .collect();
    // Before the ring: each VIP's writes up to its ring, which is prepared.
    for member in &mut group {
        if let Err(error) = member.run_until_ring(datapath) {
            member.failed = Some(error);
        }
    }
    let swapping: Vec<usize> = (0..group.len())
        .filter(|&i| group[i].failed.is_none() && group[i].ring.is_some())
        .collect();
    let rings: Vec<(u32, PreparedRing)> = swapping
        .iter()
        .filter_map(|&i| group[i].ring.take())
        .collect();
    for (&i, swapped) in swapping.iter().zip(datapath.swap_rings(&rings)) {
        match swapped {
            Ok(()) => group[i].ring_swapped(),
            Err(error) => group[i].failed = Some(error),
        }
    }
    // After the ring: the rest of each VIP's writes.
    for member in &mut group {
        if member.failed.is_none() {
            if let Err(error) = member.run_rest(datapath) {
                member.failed = Some(error);
            }
        }
    }
    group
        .into_iter()
        .map(|member| match member.failed {
            Some(error) => Err(error),
            None => Ok(member.applied),
        })
        .collect()
}

impl InGroup<'_> {
    /// Carries out the writes before the VIP's ring and prepares the ring.
    fn run_until_ring(&mut self, datapath: &mut Datapath) -> Result<(), DatapathError> {
        while let Some(write) = self.vip.writes.get(self.done) {
            if let MapWrite::Ring { vip, slots } = write {
                let ring = Datapath::prepare_ring(*vip, slots)?;
                self.ring_map_id = ring.map_id().ok();
                self.ring = Some((*vip, ring));
                return Ok(());
            }
            self.write(datapath)?;
        }
        Ok(())
    }

    /// Records the ring swapped in.
    fn ring_swapped(&mut self) {
        self.vip.written.record(&self.vip.writes[self.done]);
        self.applied.rings += 1;
        self.applied.ring_map_id = self.ring_map_id;
        self.done += 1;
    }

    /// Carries out the writes left.
    fn run_rest(&mut self, datapath: &mut Datapath) -> Result<(), DatapathError> {
        while self.done < self.vip.writes.len() {
            self.write(datapath)?;
        }
        Ok(())
    }

    /// Carries out the next write (not a ring) and records it.
    fn write(&mut self, datapath: &mut Datapath) -> Result<(), DatapathError> {
        let write = &self.vip.writes[self.done];
        match write {
            MapWrite::TxPort { ifindex } => datapath.add_tx_port(*ifindex)?,
            MapWrite::Backend { id, entry } => {
                datapath.set_backend(*id, entry)?;
                if *entry == Backend::default() {
                    self.applied.cleared.push(*id);
                }
            }
            MapWrite::Ring { vip, slots } => {
                let ring = Datapath::prepare_ring(*vip, slots)?;
                self.applied.ring_map_id = ring.map_id().ok();
                datapath.swap_ring(*vip, &ring)?;
                self.applied.rings += 1;
            }
            MapWrite::Vip { key, entry } => datapath.set_vip(key, entry)?,
            MapWrite::RemoveVip { key } => datapath.remove_vip(key)?,
        }
        self.vip.written.record(write);
        self.done += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use lb_common::maps::{BackendState, ForwardMode, Protocol, Vip, VipKey, MAX_VIPS, NO_BACKEND};

    use super::*;
    use crate::{
        agent::plan::{plan, VipTarget},
        datapath::Options,
    };

    /// The interface the balancer runs on (no `TX_PORTS` write).
    const ATTACH: u32 = 1;
    const RING: u32 = 251;

    fn datapath() -> Datapath {
        Datapath::load(&Options {
            conntrack_size: 1024,
            pin_dir: None,
            fresh_state: false,
        })
        .expect("loading the datapath (needs root)")
    }

    /// VIP `id` with two backends (ids `2 id`, `2 id + 1`), the first up and in its ring, the
    /// second down.
    fn target(id: u32) -> VipTarget {
        let backend = |state: BackendState| Backend {
            state: state as u8,
            vip: id,
            ifindex: ATTACH,
            mtu: 1500,
            ..Backend::default()
        };
        VipTarget {
            key: VipKey::new(IpAddr::from([10, 9, 0, id as u8]), 80, Protocol::Tcp),
            entry: Vip::new(id, RING, ForwardMode::Dsr),
            ring: vec![2 * id; RING as usize],
            backends: [
                (2 * id, backend(BackendState::Up)),
                (2 * id + 1, backend(BackendState::Down)),
            ]
            .into(),
        }
    }

    /// Applies the plans from `written` to `targets` together.
    fn apply_plans(
        datapath: &mut Datapath,
        written: &mut [Written],
        targets: &[VipTarget],
    ) -> Vec<Result<Applied, DatapathError>> {
        let vips = written
            .iter_mut()
            .zip(targets)
            .map(|(written, target)| VipWrites {
                writes: plan(written, target, ATTACH),
                written,
            })
            .collect();
        apply_all(datapath, vips)
    }

    #[test]
    fn vips_applied_together_each_get_all_their_writes() {
        let mut datapath = datapath();
        let targets: Vec<VipTarget> = (0..5).map(target).collect();
        let mut written = vec![Written::default(); targets.len()];
        let results = apply_plans(&mut datapath, &mut written, &targets);
        for ((result, written), target) in results.into_iter().zip(&written).zip(&targets) {
            let applied = result.expect("applied");
            assert_eq!(applied.rings, 1);
            let id = target.entry.id;
            assert_eq!(
                applied.ring_map_id,
                datapath.ring_map_id(id).expect("RINGS"),
                "the map the kernel holds"
            );
            assert_eq!(plan(written, target, ATTACH), [], "all recorded");
            assert_eq!(datapath.ring(id).expect("RINGS"), Some(target.ring.clone()));
            assert_eq!(
                datapath.backend(2 * id).expect("BACKENDS"),
                target.backends[&(2 * id)]
            );
        }
        let vips = datapath.vips().expect("VIPS");
        assert_eq!(vips.len(), targets.len());
        for target in &targets {
            assert!(vips.contains(&(target.key, target.entry)));
        }
    }

    #[test]
    fn a_vip_whose_ring_the_kernel_refuses_fails_alone() {
        let mut datapath = datapath();
        // Id MAX_VIPS is past the end of RINGS: its backends are written, its ring refused.
        let targets = [target(1), target(MAX_VIPS), target(3)];
        let mut written = vec![Written::default(); targets.len()];
        let results = apply_plans(&mut datapath, &mut written, &targets);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(results[1].is_err());
        for index in [0, 2] {
            let id = targets[index].entry.id;
            assert_eq!(
                datapath.ring(id).expect("RINGS"),
                Some(targets[index].ring.clone())
            );
        }
        assert_eq!(written[1].ring, None, "a refused ring is not recorded");
        assert_eq!(written[1].entry, None, "its VIPS entry waits for its ring");
        assert!(
            !datapath
                .vips()
                .expect("VIPS")
                .iter()
                .any(|(key, _)| *key == targets[1].key),
            "not in VIPS"
        );
    }

    #[test]
    fn rings_replaced_together_are_new_maps() {
        let mut datapath = datapath();
        let mut targets: Vec<VipTarget> = (0..3).map(target).collect();
        let mut written = vec![Written::default(); targets.len()];
        let first: Vec<Option<u32>> = apply_plans(&mut datapath, &mut written, &targets)
            .into_iter()
            .map(|r| r.expect("applied").ring_map_id)
            .collect();
        for target in &mut targets {
            target.ring = vec![NO_BACKEND; RING as usize];
        }
        let second = apply_plans(&mut datapath, &mut written, &targets);
        for ((result, before), target) in second.into_iter().zip(first).zip(&targets) {
            let applied = result.expect("applied");
            assert_ne!(applied.ring_map_id, before);
            assert_eq!(
                datapath.ring(target.entry.id).expect("RINGS"),
                Some(target.ring.clone())
            );
        }
    }
}
