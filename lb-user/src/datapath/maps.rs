//! Typed reads and writes of each map. The datapath module is the only userspace writer of the
//! balancer's maps (see `lb_common::maps::names`).

use aya::maps::{Map, MapData, MapError, PerCpuArray, PerCpuValues};
use lb_common::{
    layout::Layout,
    maps::{names, Backend, DecapKey, Settings, Vip, VipKey},
    stats::{BackendStats, Counter, DecapCounter, VipStats},
};

use std::os::fd::AsFd as _;

use super::{
    error::{map_error, DatapathError, Result},
    handles::array_fd,
    ring::{new_ring, read_ring, swap_batch, PreparedRing},
    vip_index::{wait_for_program_runs, VipIndexWriter},
    Datapath,
};

/// How many times a reader retries a ring an agent swapped while it was being opened.
const RING_SWAP_RETRIES: u32 = 3;

impl Datapath {
    /// Sets the global settings.
    pub fn set_settings(&mut self, settings: &Settings) -> Result<()> {
        let map = names::SETTINGS;
        self.maps
            .settings
            .set(0, settings, 0)
            .map_err(map_error(map))
    }

    /// The global settings.
    pub fn settings(&mut self) -> Result<Settings> {
        let map = names::SETTINGS;
        self.maps.settings.get(&0, 0).map_err(map_error(map))
    }

    /// Records the layout of the maps (`LAYOUT`).
    pub fn set_layout(&mut self, layout: &Layout) -> Result<()> {
        let map = names::LAYOUT;
        self.maps.layout.set(0, layout, 0).map_err(map_error(map))
    }

    /// The layout the maps were created with (version 0 if never recorded).
    pub fn layout(&mut self) -> Result<Layout> {
        let map = names::LAYOUT;
        self.maps.layout.get(&0, 0).map_err(map_error(map))
    }

    /// Adds the counters of the old per-CPU `STATS` map pinned at `old` to `STATS`, matching
    /// them by name (`names`: the old layout's names, by index); names this build does not know
    /// are left behind.
    pub fn add_counters(&mut self, old: &std::path::Path, names: &[&str]) -> Result<()> {
        let map = names::STATS;
        let data = MapData::from_pin(old).map_err(map_error(map))?;
        let old_stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_error(map))?;
        let stats = &mut self.maps.stats;
        for (index, name) in names.iter().enumerate() {
            let Some(counter) = Counter::ALL.into_iter().find(|c| c.name() == *name) else {
                continue;
            };
            let before = old_stats.get(&(index as u32), 0).map_err(map_error(map))?;
            let now = stats.get(&(counter as u32), 0).map_err(map_error(map))?;
            let sum: Vec<u64> = before.iter().zip(now.iter()).map(|(a, b)| a + b).collect();
            let values = PerCpuValues::try_from(sum)
                .map_err(|source| DatapathError::Counters { map, source })?;
            stats
                .set(counter as u32, values, 0)
                .map_err(map_error(map))?;
        }
        Ok(())
    }

    /// Adds or replaces a VIP: in `VIPS`, then in the VIP index.
    pub fn set_vip(&mut self, key: &VipKey, vip: &Vip) -> Result<()> {
        let map = names::VIPS;
        let vips = &mut self.maps.vips;
        vips.insert(key, vip, 0).map_err(map_error(map))?;
        self.vip_index()?
            .insert(*key, *vip)
            .map_err(|source| DatapathError::VipIndex { source })
    }

    /// The writer of the VIP index, opened (and the index made that of `VIPS`) on first use.
    pub(super) fn vip_index(&mut self) -> Result<&mut VipIndexWriter> {
        if self.vip_index.is_none() {
            let vips = self.vips()?.into_iter().collect();
            let slots = array_fd(&self.maps.vip_slots);
            let entries = array_fd(&self.maps.vip_entries);
            let writer = VipIndexWriter::open(slots, entries, vips)
                .map_err(|source| DatapathError::VipIndex { source })?;
            self.vip_index = Some(writer);
        }
        self.vip_index.as_mut().ok_or(DatapathError::MissingMap {
            map: names::VIP_SLOTS,
        })
    }

    /// Every VIP in `VIPS`.
    pub fn vips(&mut self) -> Result<Vec<(VipKey, Vip)>> {
        let map = names::VIPS;
        let vips = &self.maps.vips;
        vips.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error(map))
    }

    /// Every backend entry in use (state other than `Unused`), with its id.
    pub fn backends(&mut self) -> Result<Vec<(u32, Backend)>> {
        let map = names::BACKENDS;
        let backends = &self.maps.backends;
        let mut used = Vec::new();
        for (id, backend) in backends.iter().enumerate() {
            let backend = backend.map_err(map_error(map))?;
            if backend.state() != lb_common::maps::BackendState::Unused {
                used.push((id as u32, backend));
            }
        }
        Ok(used)
    }

    /// Removes a VIP: its packets stop matching at once (out of the VIP index first, then out
    /// of `VIPS`, which the index sends colliding keys to).
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.vip_index()?
            .remove(key)
            .map_err(|source| DatapathError::VipIndex { source })?;
        let map = names::VIPS;
        let vips = &mut self.maps.vips;
        vips.remove(key).map_err(map_error(map))
    }

    /// Writes backend `id`.
    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        let map = names::BACKENDS;
        let backends = &mut self.maps.backends;
        backends.set(id, backend, 0).map_err(map_error(map))
    }

    /// Reads backend `id`.
    pub fn backend(&mut self, id: u32) -> Result<Backend> {
        let map = names::BACKENDS;
        let backends = &self.maps.backends;
        backends.get(&id, 0).map_err(map_error(map))
    }

    /// Replaces the ring of VIP `vip` atomically.
    ///
    /// The new ring is a fresh map, filled completely through mmap while no packet can see it,
    /// then swapped into `RINGS[vip]` with a single map update: a packet uses either the whole
    /// old ring or the whole new one. The old ring is freed by the kernel once no program run
    /// holds it.
    pub fn set_ring(&mut self, vip: u32, ring: &[u32]) -> Result<()> {
        let prepared = Self::prepare_ring(vip, ring)?;
        self.swap_ring(vip, &prepared)
    }

    /// The first half of [`Self::set_ring`]: the new ring map, created and filled, not yet
    /// visible to any packet.
    pub fn prepare_ring(vip: u32, ring: &[u32]) -> Result<PreparedRing> {
        new_ring(ring)
            .map(PreparedRing)
            .map_err(|source| DatapathError::Ring { vip, source })
    }

    /// The second half of [`Self::set_ring`]: one update of `RINGS[vip]`. Packets use the new
    /// ring at once; the call returns only after an RCU grace period, when no program run
    /// still holds the old one.
    pub fn swap_ring(&mut self, vip: u32, ring: &PreparedRing) -> Result<()> {
        let map = names::RINGS;
        let rings = &mut self.maps.rings;
        rings.set(vip, &ring.0, 0).map_err(map_error(map))
    }

    /// Swaps in many prepared rings (`(vip, ring)`) with one grace period instead of one each,
    /// and says for each whether it is in.
    ///
    /// Every update of `RINGS` returns only after an RCU grace period (the kernel waits until
    /// no program run holds the old inner map), about 12 ms on a small VM: 12 s for 1000 VIPs
    /// one by one. One `BPF_MAP_UPDATE_BATCH` updates them all and waits once. Rings the
    /// kernel did not take in the batch (a kernel without batches for this map type, an
    /// error) are swapped one by one. Each ring is swapped whole, as in [`Self::swap_ring`];
    /// on return, no program run holds an old ring of those swapped.
    pub fn swap_rings(&mut self, rings: &[(u32, PreparedRing)]) -> Vec<Result<()>> {
        let done = swap_batch(self.maps.rings_fd.as_fd(), rings).unwrap_or_else(|(done, _)| {
            if done > 0 {
                // The kernel may skip its wait when a batch fails part-way.
                wait_for_program_runs();
            }
            done
        });
        let mut results: Vec<Result<()>> = (0..done).map(|_| Ok(())).collect();
        for (vip, ring) in &rings[done..] {
            results.push(self.swap_ring(*vip, ring));
        }
        results
    }

    /// The kernel's id of the ring map VIP `vip` uses now (`None`: no ring).
    pub fn ring_map_id(&mut self, vip: u32) -> Result<Option<u32>> {
        let map = names::RINGS;
        let rings = &self.maps.rings;
        match rings.get(&vip, 0) {
            Ok(inner) => Ok(Some(inner.info().map_err(map_error(map))?.id())),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error(map)(source)),
        }
    }

    /// The ring of VIP `vip` as the kernel currently uses it (`None`: no ring).
    pub fn ring(&mut self, vip: u32) -> Result<Option<Vec<u32>>> {
        let map = names::RINGS;
        let rings = &self.maps.rings;
        // The slot gives the inner map's id, which is then opened: an agent swapping the ring
        // in between frees the old map, and the open fails. The slot then names the new one.
        let mut attempts = 0;
        let inner = loop {
            match rings.get(&vip, 0) {
                Ok(inner) => break inner,
                Err(MapError::KeyNotFound) => return Ok(None),
                Err(_) if attempts < RING_SWAP_RETRIES => attempts += 1,
                Err(source) => return Err(map_error(map)(source)),
            }
        };
        read_ring(&inner)
            .map(Some)
            .map_err(|source| DatapathError::Ring { vip, source })
    }

    /// Lets `XDP_REDIRECT` send to interface `ifindex`.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let map = names::TX_PORTS;
        let ports = &mut self.maps.tx_ports;
        ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|source| DatapathError::DevMap { map, source })
    }

    /// Adds a local address the `decap` program strips tunnels for.
    pub fn add_decap_address(&mut self, key: &DecapKey) -> Result<()> {
        let map = names::DECAP_ADDRS;
        let addrs = &mut self.maps.decap(map)?.addresses;
        addrs.insert(key, 1, 0).map_err(map_error(map))
    }

    /// A global counter, summed over CPUs.
    pub fn counter(&mut self, counter: Counter) -> Result<u64> {
        sum_u64(&self.maps.stats, names::STATS, counter as u32)
    }

    /// A `decap` counter, summed over CPUs.
    pub fn decap_counter(&mut self, counter: DecapCounter) -> Result<u64> {
        let map = names::DECAP_STATS;
        sum_u64(&self.maps.decap(map)?.stats, map, counter as u32)
    }

    /// Counters of VIP `vip`, summed over CPUs.
    pub fn vip_stats(&mut self, vip: u32) -> Result<VipStats> {
        let map = names::VIP_STATS;
        let per_cpu = self.maps.vip_stats.get(&vip, 0).map_err(map_error(map))?;
        Ok(per_cpu.iter().fold(VipStats::default(), |sum, cpu| {
            let VipStats {
                packets,
                bytes,
                new_flows,
                conntrack_hits,
                dropped,
            } = *cpu;
            VipStats {
                packets: sum.packets + packets,
                bytes: sum.bytes + bytes,
                new_flows: sum.new_flows + new_flows,
                conntrack_hits: sum.conntrack_hits + conntrack_hits,
                dropped: sum.dropped + dropped,
            }
        }))
    }

    /// Counters of backend `id`, summed over CPUs.
    pub fn backend_stats(&mut self, id: u32) -> Result<BackendStats> {
        let map = names::BACKEND_STATS;
        let per_cpu = self
            .maps
            .backend_stats
            .get(&id, 0)
            .map_err(map_error(map))?;
        Ok(per_cpu.iter().fold(BackendStats::default(), |sum, cpu| {
            let BackendStats {
                packets,
                bytes,
                new_flows,
            } = *cpu;
            BackendStats {
                packets: sum.packets + packets,
                bytes: sum.bytes + bytes,
                new_flows: sum.new_flows + new_flows,
            }
        }))
    }
}

/// Entry `index` of the per-CPU counters `array` (called `name`), summed over CPUs.
fn sum_u64(array: &PerCpuArray<MapData, u64>, name: &'static str, index: u32) -> Result<u64> {
    let per_cpu = array.get(&index, 0).map_err(map_error(name))?;
    Ok(per_cpu.iter().sum())
}
