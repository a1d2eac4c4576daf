//! `FLOWS`, the connection-tracking table, as userspace sees it: a flow's entry (for
//! `lb explain` and tests), the table's occupancy by class and each backend's active
//! connections (for `lb stats`, `lb status` and `/metrics`, read through a shared mapping
//! instead of a syscall per set), and the flows an upgrade
//! carries over from an older layout's table.

use std::{path::Path, sync::atomic::Ordering};

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{
    conntrack::{
        conntrack_hash, is_active, set_index, stamp, tag_check, FlowClass, FlowSet, IdleTimeouts,
        Occupancy, Tracking, WAYS,
    },
    maps::{names, Conntrack, Settings},
    FlowKey,
};

use super::{
    error::{map_error, DatapathError, Result},
    handles::array_fd,
    mapping::Mapping,
    upgrade::FlowsCarried,
    Datapath,
};

/// The flow table at one reading: its occupancy by class, and the active connections of each
/// backend id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowCensus {
    /// Flows by class.
    pub occupancy: Occupancy,
    /// Active connections by backend id (ids without any are absent).
    pub active: std::collections::HashMap<u32, u64>,
}

/// A flow as `FLOWS` tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedFlow {
    /// The backend id it is tracked to.
    pub backend: u32,
    /// Its stamp: the tick it was last seen and its class
    /// ([`lb_common::conntrack::stamp`]).
    pub stamp: u32,
}

impl TrackedFlow {
    /// What lb knows of it.
    pub fn class(&self) -> FlowClass {
        FlowClass::of_stamp(self.stamp)
    }
}

/// The table an older layout tracked flows in, which an upgrade carries into `FLOWS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldFlows {
    /// Layouts 0 and 1: `CONNTRACK`, an LRU hash map of [`FlowKey`] → [`Conntrack`]. It keeps
    /// no time or class: its flows are carried over established, seen at the upgrade.
    Conntrack,
    /// Layout 2: `FLOWS` of the same sets, whose stamps were only the tick a flow was last
    /// seen. Its flows are carried over established, with that tick.
    Flows,
}

impl OldFlows {
    /// The old map's pin name.
    pub const fn pin_name(self) -> &'static str {
        match self {
            OldFlows::Conntrack => names::CONNTRACK,
            OldFlows::Flows => names::FLOWS,
        }
    }
}

impl Datapath {
    /// The backend id a flow is tracked to, if it is tracked.
    pub fn conntrack(&mut self, flow: &FlowKey) -> Result<Option<u32>> {
        Ok(self.tracked_flow(flow)?.map(|tracked| tracked.backend))
    }

    /// A flow's entry, if it is tracked: found in its set of `FLOWS` as the datapath finds it
    /// (`lb_common::conntrack`).
    pub fn tracked_flow(&mut self, flow: &FlowKey) -> Result<Option<TrackedFlow>> {
        let Some((_, set)) = self.flow_set_of(flow)? else {
            return Ok(None);
        };
        Ok(set.way_of(flow).map(|way| TrackedFlow {
            backend: lb_common::conntrack::tag_backend(set.tags[way]),
            stamp: set.stamps[way],
        }))
    }

    /// Rewrites the stamp of a tracked flow (tests age flows with it); whether it was tracked.
    pub fn set_flow_stamp(&mut self, flow: &FlowKey, stamp: u32) -> Result<bool> {
        let Some((index, mut set)) = self.flow_set_of(flow)? else {
            return Ok(false);
        };
        let Some(way) = set.way_of(flow) else {
            return Ok(false);
        };
        set.stamps[way] = stamp;
        let map = names::FLOWS;
        self.maps.flows.set(index, set, 0).map_err(map_error(map))?;
        Ok(true)
    }

    /// The index and content of the set of `FLOWS` that `flow` belongs to.
    fn flow_set_of(&mut self, flow: &FlowKey) -> Result<Option<(u32, FlowSet)>> {
        let map = names::FLOWS;
        let sets = self.flow_sets()?;
        let Some(index) = set_index(conntrack_hash(flow), sets) else {
            return Ok(None);
        };
        let set = self.maps.flows.get(&index, 0).map_err(map_error(map))?;
        Ok(Some((index, set)))
    }

    /// Sets of `FLOWS`.
    pub(super) fn flow_sets(&mut self) -> Result<u32> {
        Ok(self.maps.flows.len())
    }

    /// How long idle flows stay protected, as `SETTINGS` holds it (in ticks).
    pub fn idle_timeouts(&mut self) -> Result<IdleTimeouts> {
        let settings: Settings = self.settings()?;
        Ok(settings.idle_timeouts)
    }

    /// How many flows of each class `FLOWS` holds at tick `now`, by the timeouts in force, and
    /// how many active connections each backend id has ([`is_active`]). Read through a shared
    /// mapping of the table, one set after another (not one instant: the program keeps
    /// writing).
    pub fn flow_census(&mut self, now: u32) -> Result<FlowCensus> {
        let timeouts = self.idle_timeouts()?;
        let sets = self.flow_sets()? as usize;
        let map = names::FLOWS;
        let stride = std::mem::size_of::<FlowSet>();
        let mapping = Mapping::read_only(array_fd(&self.maps.flows), sets * stride)
            .map_err(|source| DatapathError::Mapping { map, source })?;
        let stamps = std::mem::offset_of!(FlowSet, stamps);
        let mut census = FlowCensus::default();
        for set in 0..sets {
            let base = set * stride;
            census.occupancy.capacity += WAYS as u64;
            for way in 0..WAYS {
                // The way's tag (little-endian: its check, then its backend), then its stamp.
                let check = mapping.load(base + way * 8, Ordering::Relaxed);
                if tag_check(u64::from(check)) == 0 {
                    continue;
                }
                let stamp = mapping.load(base + stamps + way * 4, Ordering::Relaxed);
                census.occupancy.count(stamp, now, &timeouts);
                if is_active(stamp, now, &timeouts) {
                    let backend = mapping.load(base + way * 8 + 4, Ordering::Relaxed);
                    *census.active.entry(backend).or_default() += 1;
                }
            }
        }
        Ok(census)
    }

    /// Tracks in `FLOWS` the flows of an older layout's table (`old`, pinned at `path`) that
    /// `FLOWS` does not track yet, each in an empty way of its set: a flow already tracked
    /// keeps its entry (the program wrote it, it is newer), and no tracked flow is evicted for
    /// an old one. They are carried over established (the old tables kept no class): a
    /// connection that was open stays protected; `now` stamps those of `CONNTRACK`, which kept
    /// no time (`None`: the clock could not be read, they count as seen long ago).
    ///
    /// Each set is read and written whole, so a program tracking another flow of the same set
    /// at that instant may lose that write: that flow then takes the ring again, as an evicted
    /// one does (with unchanged rings and backends, to the same backend).
    pub(super) fn track_flows_of(
        &mut self,
        old: OldFlows,
        path: &Path,
        now: Option<u32>,
    ) -> Result<FlowsCarried> {
        let flows = match old {
            OldFlows::Conntrack => conntrack_flows(path, now.unwrap_or(0))?,
            OldFlows::Flows => set_flows(path)?,
        };
        let sets = self.flow_sets()?;
        let mut by_set: std::collections::BTreeMap<u32, Vec<(FlowKey, u32, u32)>> =
            std::collections::BTreeMap::new();
        for (key, backend, stamp) in flows {
            if let Some(index) = set_index(conntrack_hash(&key), sets) {
                by_set.entry(index).or_default().push((key, backend, stamp));
            }
        }
        let map = names::FLOWS;
        let table = &mut self.maps.flows;
        let mut carried = FlowsCarried::default();
        for (index, flows) in by_set {
            let mut set = table.get(&index, 0).map_err(map_error(map))?;
            let before = set;
            for (key, backend, stamp) in flows {
                match set.track_if_room(&key, backend, stamp) {
                    Tracking::Already => carried.already += 1,
                    Tracking::Added => carried.tracked += 1,
                    Tracking::NoRoom => carried.no_room += 1,
                }
            }
            if set != before {
                table.set(index, set, 0).map_err(map_error(map))?;
            }
        }
        Ok(carried)
    }
}

/// The flows of layouts 0 and 1's `CONNTRACK` pinned at `path`, as (key, backend, stamp):
/// established, seen at `now`.
fn conntrack_flows(path: &Path, now: u32) -> Result<Vec<(FlowKey, u32, u32)>> {
    let map = names::CONNTRACK;
    let data = MapData::from_pin(path).map_err(map_error(map))?;
    let conntrack: HashMap<_, FlowKey, Conntrack> =
        HashMap::try_from(Map::LruHashMap(data)).map_err(map_error(map))?;
    // An entry the old program evicts during the walk may make it start over: the same flow
    // may come twice, and is then found tracked.
    conntrack
        .iter()
        .map(|entry| {
            let (key, value) = entry.map_err(map_error(map))?;
            let class = FlowClass::established(key.protocol);
            Ok((key, value.backend, stamp(now, class)))
        })
        .collect()
}

/// The flows of layout 2's `FLOWS` pinned at `path`, as (key, backend, stamp): established,
/// seen when its stamp (then only a tick) says.
fn set_flows(path: &Path) -> Result<Vec<(FlowKey, u32, u32)>> {
    let map = names::FLOWS;
    let data = MapData::from_pin(path).map_err(map_error(map))?;
    let sets = data.info().map_err(map_error(map))?.max_entries();
    let table: Array<_, FlowSet> = Array::try_from(Map::Array(data)).map_err(map_error(map))?;
    let mut flows = Vec::new();
    for index in 0..sets {
        let set = table.get(&index, 0).map_err(map_error(map))?;
        for way in 0..WAYS {
            if tag_check(set.tags[way]) == 0 {
                continue;
            }
            let key = set.keys[way];
            let seen = set.stamps[way];
            let class = FlowClass::established(key.protocol);
            flows.push((
                key,
                lb_common::conntrack::tag_backend(set.tags[way]),
                stamp(seen, class),
            ));
        }
    }
    Ok(flows)
}
