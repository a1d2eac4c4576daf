//! Id allocation for VIPs (indexes of `RINGS` and `VIP_STATS`) and backends (indexes of
//! `BACKENDS` and `BACKEND_STATS`), and adoption of the ids a previous agent left in the pinned
//! maps: an unchanged VIP or backend keeps its id, so its tracked flows and counters stay.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use lb_common::maps::{Backend, Vip, VipKey};

use super::plan::Written;

/// Free ids, and the ids adopted from a previous agent not yet claimed.
#[derive(Debug)]
pub struct Ids {
    free_vips: Vec<u32>,
    free_backends: Vec<u32>,
    adopted_vips: HashMap<VipKey, (u32, Written)>,
    adopted_backends: HashMap<(VipKey, IpAddr), u32>,
    /// Backend entries in use whose VIP is gone: cleared at the end of start-up.
    orphans: Vec<u32>,
}

/// Out of ids: the configuration has more VIPs or backends than the maps.
#[derive(Debug, thiserror::Error)]
#[error("no free {0} id (the maps hold at most MAX_VIPS VIPs and MAX_BACKENDS backends)")]
pub struct NoFreeId(&'static str);

impl Ids {
    /// All `vips` VIP ids and `backends` backend ids free, lowest first.
    pub fn new(vips: u32, backends: u32) -> Self {
        Self {
            free_vips: (0..vips).rev().collect(),
            free_backends: (0..backends).rev().collect(),
            adopted_vips: HashMap::new(),
            adopted_backends: HashMap::new(),
            orphans: Vec::new(),
        }
    }

    /// [`Self::new`], minus the ids of the VIPs and backend entries a previous agent left
    /// (`VIPS` and the `BACKENDS` entries in use), which are kept for whoever claims them by the
    /// same key and address. Claiming a VIP also hands over what the datapath holds for it.
    pub fn adopt(
        vips: u32,
        backends: u32,
        adopted_vips: &[(VipKey, Vip)],
        adopted_backends: &[(u32, Backend)],
    ) -> Self {
        let mut ids = Self::new(vips, backends);
        let by_id: HashMap<u32, VipKey> = adopted_vips
            .iter()
            .map(|(key, vip)| (vip.id, *key))
            .collect();
        let mut written: HashMap<VipKey, Written> = adopted_vips
            .iter()
            .map(|(key, vip)| {
                let written = Written {
                    entry: Some(*vip),
                    ring: None,
                    backends: BTreeMap::new(),
                };
                (*key, written)
            })
            .collect();
        for (id, backend) in adopted_backends {
            match by_id.get(&backend.vip) {
                Some(key) => {
                    ids.adopted_backends.insert((*key, backend.address()), *id);
                    if let Some(written) = written.get_mut(key) {
                        written.backends.insert(*id, *backend);
                    }
                }
                None => ids.orphans.push(*id),
            }
        }
        for (key, vip) in adopted_vips {
            let held = written.remove(key).unwrap_or_default();
            ids.adopted_vips.insert(*key, (vip.id, held));
        }
        ids.free_vips.retain(|id| !by_id.contains_key(id));
        let taken: Vec<u32> = adopted_backends.iter().map(|(id, _)| *id).collect();
        ids.free_backends.retain(|id| !taken.contains(id));
        ids
    }

    /// The id of VIP `key` (its adopted one if any) and what the datapath holds for it.
    pub fn vip(&mut self, key: &VipKey) -> Result<(u32, Written), NoFreeId> {
        if let Some(adopted) = self.adopted_vips.remove(key) {
            return Ok(adopted);
        }
        let id = self.free_vips.pop().ok_or(NoFreeId("VIP"))?;
        Ok((id, Written::default()))
    }

    /// The id of backend `address` of VIP `key` (its adopted one if any).
    pub fn backend(&mut self, key: &VipKey, address: IpAddr) -> Result<u32, NoFreeId> {
        if let Some(id) = self.adopted_backends.remove(&(*key, address)) {
            return Ok(id);
        }
        self.free_backends.pop().ok_or(NoFreeId("backend"))
    }

    /// VIP id `id` is free again.
    pub fn release_vip(&mut self, id: u32) {
        self.free_vips.push(id);
    }

    /// Backend id `id` is free again.
    pub fn release_backend(&mut self, id: u32) {
        self.free_backends.push(id);
    }

    /// What start-up must still remove: the adopted VIPs no one claimed, with what the datapath
    /// holds for each (see `plan_removal`), and the backend entries whose VIP is gone. Backends
    /// of claimed VIPs that are no longer configured are in their VIP's [`Written`], so the
    /// planner clears them. [`Self::release_unclaimed`] frees all their ids afterwards.
    pub fn unclaimed(&self) -> (Vec<(VipKey, Written)>, Vec<u32>) {
        let vips = self
            .adopted_vips
            .iter()
            .map(|(key, (_, written))| (*key, written.clone()))
            .collect();
        (vips, self.orphans.clone())
    }

    /// Frees the ids of [`Self::unclaimed`] once their entries are gone, and forgets the rest
    /// of the adoption: adopted backends of claimed VIPs that were not claimed themselves were
    /// cleared by their VIP's plan, which frees their ids (see `Applied::cleared`).
    pub fn release_unclaimed(&mut self) {
        for ((key, _), id) in self.adopted_backends.drain() {
            if self.adopted_vips.contains_key(&key) {
                self.free_backends.push(id);
            }
        }
        for (_, (id, _)) in self.adopted_vips.drain() {
            self.free_vips.push(id);
        }
        self.free_backends.append(&mut self.orphans);
    }
}

#[cfg(test)]
mod tests {
    use lb_common::maps::{BackendState, ForwardMode, Protocol};

    use super::*;

    fn key(last: u8) -> VipKey {
        VipKey::new(format!("10.0.0.{last}").parse().unwrap(), 80, Protocol::Tcp)
    }

    fn backend(vip: u32, last: u8) -> Backend {
        Backend {
            addr: [10, 0, 1, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            family: 4,
            state: BackendState::Up as u8,
            vip,
            ..Backend::default()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn fresh_ids_count_up_and_come_back() {
        let mut ids = Ids::new(2, 3);
        assert_eq!(ids.vip(&key(1)).unwrap().0, 0);
        assert_eq!(ids.vip(&key(2)).unwrap().0, 1);
        assert!(ids.vip(&key(3)).is_err());
        ids.release_vip(0);
        assert_eq!(ids.vip(&key(3)).unwrap().0, 0);
        assert_eq!(ids.backend(&key(1), ip("10.0.1.1")).unwrap(), 0);
    }

    #[test]
    fn adopted_ids_go_to_the_same_key_and_address() {
        let vips = [
            (key(1), Vip::new(5, 7, ForwardMode::Dsr)),
            (key(2), Vip::new(6, 7, ForwardMode::Dsr)),
        ];
        let backends = [
            (9, backend(5, 1)),
            (4, backend(5, 2)),
            (8, backend(6, 1)),
            (3, backend(99, 1)),
        ];
        let mut ids = Ids::adopt(8, 16, &vips, &backends);
        let (id, written) = ids.vip(&key(1)).unwrap();
        assert_eq!(id, 5);
        assert_eq!(written.entry, Some(vips[0].1));
        assert_eq!(written.backends.keys().copied().collect::<Vec<_>>(), [4, 9]);
        assert_eq!(ids.backend(&key(1), ip("10.0.1.1")).unwrap(), 9);
        // A new backend gets a free id, never an adopted one.
        let fresh = ids.backend(&key(1), ip("10.0.1.7")).unwrap();
        assert!(![9, 4, 8, 3].contains(&fresh), "{fresh}");
        // key(2) was not claimed (backend 8 goes with it); backend 3 belongs to no VIP. Backend
        // 4 of the claimed VIP is in its `Written`: the planner clears it.
        let (vips_left, orphans) = ids.unclaimed();
        assert_eq!(vips_left.len(), 1);
        assert_eq!(vips_left[0].0, key(2));
        assert_eq!(
            vips_left[0].1.backends.keys().copied().collect::<Vec<_>>(),
            [8]
        );
        assert_eq!(orphans, [3]);
        ids.release_unclaimed();
        // Backend 4 is its VIP's plan's to free; 8 (unclaimed VIP) and 3 (orphan) are free.
        let mut freed: Vec<u32> = (0..2)
            .map(|i| ids.backend(&key(20), ip(&format!("10.0.2.{i}"))).unwrap())
            .collect();
        freed.sort();
        assert_eq!(freed, [3, 8], "freed ids are reused first");
        let mut next: Vec<u32> = (0..3).map(|i| ids.vip(&key(10 + i)).unwrap().0).collect();
        next.sort();
        assert!(
            next.contains(&6),
            "the unclaimed VIP id is free again: {next:?}"
        );
    }
}
