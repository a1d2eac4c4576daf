//! `LOADS`, what least-conn VIPs' backends are weighed by (`lb_common::least_conn`): taken out
//! of the object by the agent, which writes its counts of active flows and the weights through
//! a shared mapping. Not pinned: an agent that loads the program counts afresh.

use std::{os::fd::AsFd as _, sync::atomic::Ordering};

use aya::maps::{Map, MapData};
use lb_common::{
    least_conn::BackendLoad,
    maps::{names, MAX_BACKENDS},
};

use super::{
    error::{map_error, Result},
    mapping::Mapping,
    Datapath, DatapathError,
};

/// `LOADS`, mapped.
pub struct Loads {
    /// The map (its fd keeps it alive while mapped).
    _map: MapData,
    mapping: Mapping,
}

/// Byte offsets in a value.
const ACTIVE: usize = std::mem::offset_of!(BackendLoad, active);
const WEIGHT: usize = std::mem::offset_of!(BackendLoad, weight);
const STRIDE: usize = std::mem::size_of::<BackendLoad>();

impl Loads {
    /// Writes backend `id`'s load: its count, then its weight (each one store; a program
    /// between the two sees the new count with the old weight, as good a guess).
    pub fn set(&self, id: u32, load: BackendLoad) {
        let base = Self::base(id);
        self.mapping
            .store64(base + ACTIVE, load.active, Ordering::Relaxed);
        self.mapping
            .store(base + WEIGHT, load.weight, Ordering::Relaxed);
    }

    /// Backend `id`'s load as the program sees it now.
    pub fn get(&self, id: u32) -> BackendLoad {
        let base = Self::base(id);
        BackendLoad {
            active: self.mapping.load64(base + ACTIVE, Ordering::Relaxed),
            weight: self.mapping.load(base + WEIGHT, Ordering::Relaxed),
            _pad: 0,
        }
    }

    fn base(id: u32) -> usize {
        assert!(id < MAX_BACKENDS, "backend id {id} out of LOADS");
        id as usize * STRIDE
    }
}

impl Datapath {
    /// Takes `LOADS` out of the object (once) and maps it.
    pub fn take_loads(&mut self) -> Result<Loads> {
        let map = names::LOADS;
        let Map::Array(data) = self.take_object_map(map)? else {
            return Err(map_error(map)(aya::maps::MapError::InvalidMapType {
                map_type: 0,
            }));
        };
        let mapping = Mapping::read_write(data.fd().as_fd(), MAX_BACKENDS as usize * STRIDE)
            .map_err(|source| DatapathError::Mapping { map, source })?;
        Ok(Loads {
            _map: data,
            mapping,
        })
    }
}
