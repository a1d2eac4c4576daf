//! The balancer's maps as typed handles, each checked against its type once, when the maps are
//! taken out of the loaded object or opened from their pins (as aya's own
//! `HashMap::try_from` does), so that no accessor names a map by string or re-types it.

use std::{
    collections::HashMap as ByName,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
};

use aya::maps::{
    xdp::DevMapHash, Array, ArrayOfMaps, HashMap, IterableMap as _, Map, MapData, PerCpuArray,
};
use lb_common::{
    conntrack::FlowSet,
    layout::Layout,
    maps::{names, Backend, DecapKey, Settings, Vip, VipKey},
    stats::{BackendStats, VipStats},
    vip_index::VipEntry,
};

use super::error::{map_error, DatapathError, Result};

/// Every map of the balancer, typed.
pub(super) struct BalancerMaps {
    pub vips: HashMap<MapData, VipKey, Vip>,
    pub vip_slots: Array<MapData, u32>,
    pub vip_entries: Array<MapData, VipEntry>,
    pub rings: ArrayOfMaps<MapData>,
    /// A second descriptor of `RINGS`, for batched swaps (aya's handle does not lend its own).
    pub rings_fd: OwnedFd,
    pub backends: Array<MapData, Backend>,
    pub flows: Array<MapData, FlowSet>,
    pub settings: Array<MapData, Settings>,
    pub tx_ports: DevMapHash<MapData>,
    pub stats: PerCpuArray<MapData, u64>,
    pub vip_stats: PerCpuArray<MapData, VipStats>,
    pub backend_stats: PerCpuArray<MapData, BackendStats>,
    pub layout: Array<MapData, Layout>,
    /// The `decap` program's maps: loaded with the object, not pinned (`None` when the maps
    /// were opened from pins).
    pub decap: Option<DecapMaps>,
}

/// The maps of the `decap` program.
pub(super) struct DecapMaps {
    pub addresses: HashMap<MapData, DecapKey, u8>,
    pub stats: PerCpuArray<MapData, u64>,
}

impl BalancerMaps {
    /// Types `maps` (by name: every map of [`names::BALANCER`], and the decap maps if there).
    pub(super) fn new(mut maps: ByName<&'static str, Map>) -> Result<Self> {
        let mut take = |name: &'static str| {
            maps.remove(name)
                .ok_or(DatapathError::MissingMap { map: name })
        };
        let rings = take(names::RINGS)?;
        let rings_fd = if let Map::ArrayOfMaps(data) = &rings {
            data.fd().as_fd().try_clone_to_owned().ok()
        } else {
            None
        }
        .ok_or_else(|| {
            map_error(names::RINGS)(aya::maps::MapError::InvalidMapType { map_type: 0 })
        })?;
        let balancer = BalancerMaps {
            vips: typed(names::VIPS, take(names::VIPS)?)?,
            vip_slots: typed(names::VIP_SLOTS, take(names::VIP_SLOTS)?)?,
            vip_entries: typed(names::VIP_ENTRIES, take(names::VIP_ENTRIES)?)?,
            rings: typed(names::RINGS, rings)?,
            rings_fd,
            backends: typed(names::BACKENDS, take(names::BACKENDS)?)?,
            flows: typed(names::FLOWS, take(names::FLOWS)?)?,
            settings: typed(names::SETTINGS, take(names::SETTINGS)?)?,
            tx_ports: typed(names::TX_PORTS, take(names::TX_PORTS)?)?,
            stats: typed(names::STATS, take(names::STATS)?)?,
            vip_stats: typed(names::VIP_STATS, take(names::VIP_STATS)?)?,
            backend_stats: typed(names::BACKEND_STATS, take(names::BACKEND_STATS)?)?,
            layout: typed(names::LAYOUT, take(names::LAYOUT)?)?,
            decap: None,
        };
        let decap = match (
            maps.remove(names::DECAP_ADDRS),
            maps.remove(names::DECAP_STATS),
        ) {
            (Some(addresses), Some(stats)) => Some(DecapMaps {
                addresses: typed(names::DECAP_ADDRS, addresses)?,
                stats: typed(names::DECAP_STATS, stats)?,
            }),
            _ => None,
        };
        Ok(Self { decap, ..balancer })
    }

    /// The decap maps, or the error naming `map`.
    pub(super) fn decap(&mut self, map: &'static str) -> Result<&mut DecapMaps> {
        self.decap.as_mut().ok_or(DatapathError::MissingMap { map })
    }
}

/// `map` as the typed handle `T`.
fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(name: &'static str, map: Map) -> Result<T> {
    T::try_from(map).map_err(map_error(name))
}

/// The descriptor of `array`'s map (for a mapping of it).
pub(super) fn array_fd<V: aya::Pod>(array: &Array<MapData, V>) -> BorrowedFd<'_> {
    array.map().fd().as_fd()
}
