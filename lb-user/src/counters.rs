//! One reading of the datapath's counters (per-CPU sums), shared by `lb stats` and `/metrics`
//! so both report the same numbers the same way.

use lb_common::{
    conntrack::Occupancy,
    stats::{BackendStats, Counter, VipStats},
};

use crate::datapath::{Datapath, DatapathError, FlowClock};

/// Every global counter, the counters of chosen VIPs and backends and the flow table's
/// occupancy, read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CounterReading {
    /// Every [`Counter`], in index order.
    pub global: Vec<(Counter, u64)>,
    /// The VIPs asked for, by id, in the order asked.
    pub vips: Vec<(u32, VipStats)>,
    /// The backends asked for, by id, in the order asked.
    pub backends: Vec<(u32, BackendStats)>,
    /// The flow table's occupancy by class.
    pub flows: Occupancy,
    /// Active connections by backend id.
    pub active_flows: std::collections::HashMap<u32, u64>,
}

impl CounterReading {
    /// Reads every global counter and those of `vips` and `backends` (ids).
    pub fn read(
        datapath: &mut Datapath,
        vips: impl IntoIterator<Item = u32>,
        backends: impl IntoIterator<Item = u32>,
    ) -> Result<Self, DatapathError> {
        let mut reading = Self::default();
        for counter in Counter::ALL {
            reading.global.push((counter, datapath.counter(counter)?));
        }
        for id in vips {
            reading.vips.push((id, datapath.vip_stats(id)?));
        }
        for id in backends {
            reading.backends.push((id, datapath.backend_stats(id)?));
        }
        let census = datapath.flow_census(FlowClock::read_or_assume().now())?;
        reading.flows = census.occupancy;
        reading.active_flows = census.active;
        Ok(reading)
    }

    /// The value of a global counter.
    pub fn global(&self, counter: Counter) -> u64 {
        self.global
            .iter()
            .find(|(c, _)| *c == counter)
            .map_or(0, |(_, value)| *value)
    }

    /// The counters of VIP `id` (zero if not read).
    pub fn vip(&self, id: u32) -> VipStats {
        self.vips
            .iter()
            .find(|(v, _)| *v == id)
            .map_or_else(VipStats::default, |(_, stats)| *stats)
    }

    /// The active connections of backend `id` ([`lb_common::conntrack::is_active`]).
    pub fn active_flows(&self, id: u32) -> u64 {
        self.active_flows.get(&id).copied().unwrap_or(0)
    }

    /// The counters of backend `id` (zero if not read).
    pub fn backend(&self, id: u32) -> BackendStats {
        self.backends
            .iter()
            .find(|(b, _)| *b == id)
            .map_or_else(BackendStats::default, |(_, stats)| *stats)
    }
}
