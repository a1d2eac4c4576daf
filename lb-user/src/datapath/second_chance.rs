//! The maps of second chance on the load balancer's side, not pinned: `PREVIOUS_RINGS` (each
//! VIP's ring before its last change, for its window) and `SECOND_CHANCE_STATS`. The agent
//! takes them out of the object and is their only writer; it keeps in its records what it
//! needs to rebuild them after a restart.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{ArrayOfMaps, Map, MapData, PerCpuArray};
use lb_common::{maps::names, stats::SecondChanceCounter};

use super::{
    error::{map_error, Result},
    ring::new_ring,
    Datapath, DatapathError,
};

/// `PREVIOUS_RINGS` and `SECOND_CHANCE_STATS`.
pub struct SecondChanceMaps {
    rings: Map,
    stats: PerCpuArray<MapData, u64>,
    /// The previous rings put in, by VIP id (read back to merge the next change into).
    previous: std::collections::HashMap<u32, MapData>,
}

impl SecondChanceMaps {
    /// Makes `slots` (backend ids, `NO_BACKEND` where no hop may be carried) VIP `vip`'s
    /// previous ring: a new map, filled before it is put in.
    pub fn set(&mut self, vip: u32, slots: &[u32]) -> Result<()> {
        let ring = new_ring(slots).map_err(|source| DatapathError::Ring { vip, source })?;
        let map = names::PREVIOUS_RINGS;
        let mut rings: ArrayOfMaps<&mut MapData, MapData> =
            ArrayOfMaps::try_from(&mut self.rings).map_err(map_error(map))?;
        rings.set(vip, &ring, 0).map_err(map_error(map))?;
        self.previous.insert(vip, ring);
        Ok(())
    }

    /// VIP `vip`'s previous ring as last set (`None`: none).
    pub fn slots(&self, vip: u32) -> Result<Option<Vec<u32>>> {
        self.previous
            .get(&vip)
            .map(|ring| {
                super::ring::read_ring(ring).map_err(|source| DatapathError::Ring { vip, source })
            })
            .transpose()
    }

    /// VIP `vip` has no previous ring any more (none: nothing to do).
    pub fn clear(&mut self, vip: u32) -> Result<()> {
        self.previous.remove(&vip);
        const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
        /// The `bpf_attr` of element commands: map fd, then the key's address.
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let key = vip;
        let Map::ArrayOfMaps(data) = &self.rings else {
            return Ok(());
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let mut attr = ElemAttr {
            map_fd: fd as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` for BPF_MAP_DELETE_ELEM of the size passed; the
        // key it points to outlives the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_ELEM,
                &mut attr as *mut ElemAttr,
                std::mem::size_of::<ElemAttr>(),
            )
        };
        let error = std::io::Error::last_os_error();
        if result == 0 || error.raw_os_error() == Some(libc::ENOENT) {
            Ok(())
        } else {
            Err(DatapathError::Ring { vip, source: error })
        }
    }

    /// Packets sent with a hop so far, summed over CPUs.
    pub fn hops_carried(&self) -> u64 {
        self.stats
            .get(&(SecondChanceCounter::HopsCarried as u32), 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}

impl Datapath {
    /// Takes `PREVIOUS_RINGS` and `SECOND_CHANCE_STATS` out of the object (once).
    pub fn take_second_chance_maps(&mut self) -> Result<SecondChanceMaps> {
        let rings = self.take_object_map(names::PREVIOUS_RINGS)?;
        let stats = self.take_object_map(names::SECOND_CHANCE_STATS)?;
        Ok(SecondChanceMaps {
            previous: std::collections::HashMap::new(),
            rings,
            stats: PerCpuArray::try_from(stats).map_err(map_error(names::SECOND_CHANCE_STATS))?,
        })
    }
}

/// The backend id in slot `slot` of VIP `vip`'s previous ring, as the program `program_id`
/// (the running balancer) holds it: `None` if the VIP has no previous ring (or the program no
/// `PREVIOUS_RINGS`). For `lb explain`, which has no handle on the agent's unpinned maps: it
/// finds the map among the program's.
pub fn previous_owner(program_id: u32, vip: u32, slot: u32) -> Result<Option<u32>> {
    let map = names::PREVIOUS_RINGS;
    let program = aya::programs::loaded_programs()
        .filter_map(|info| info.ok())
        .find(|info| info.id() == program_id);
    let Some(program) = program else {
        return Ok(None);
    };
    let ids = program
        .map_ids()
        .map_err(|source| DatapathError::Program {
            program: "lb",
            action: "list maps of",
            source,
        })?
        .unwrap_or_default();
    for id in ids {
        let Ok(data) = MapData::from_id(id) else {
            continue;
        };
        let named = data
            .info()
            .ok()
            .is_some_and(|info| info.name_as_str() == Some(map));
        if !named {
            continue;
        }
        let rings: ArrayOfMaps<MapData, MapData> =
            ArrayOfMaps::try_from(Map::ArrayOfMaps(data)).map_err(map_error(map))?;
        return match rings.get(&vip, 0) {
            Ok(inner) => {
                let ring = super::ring::read_ring(&inner)
                    .map_err(|source| DatapathError::Ring { vip, source })?;
                Ok(ring.get(slot as usize).copied())
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error(map)(source)),
        };
    }
    Ok(None)
}
