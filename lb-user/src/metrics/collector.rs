//! The datapath half of `/metrics`: at every scrape, the pinned maps' counters (one
//! [`CounterReading`], as `lb stats` reads them) and the backend state gauges of the VIPs the
//! agent programmed.

use std::{collections::BTreeMap, path::PathBuf, sync::Mutex};

use lb_common::{
    conntrack::Occupancy,
    maps::BackendState,
    stats::{BackendStats, CounterClass, VipStats},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use super::{lock, BackendLabels, BackendRecordView, BackendView, CheckPackets, Topology, VipView};
use crate::{
    admin::AdminState, config::CheckTarget, counters::CounterReading, datapath::Datapath,
    error::Chain,
};

/// Labels of `lb_backend_check_target`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    vip: String,
    backend: String,
    target: &'static str,
}

/// Labels of `lb_check_packets`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

/// Labels of `lb_backend_admin_state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminLabels {
    vip: String,
    backend: String,
    state: &'static str,
}

/// Reads the pinned maps at each scrape and emits them as constant counters, plus the backend
/// state gauges from the agent's topology.
pub(super) struct DatapathCollector {
    /// Where the maps are pinned.
    pub state_dir: PathBuf,
    /// Opened on the first scrape, reopened after an error.
    pub datapath: Mutex<Option<Datapath>>,
    /// The VIPs and backends the agent programmed.
    pub topology: Topology,
    /// Health checks' packets, as the agent last published them.
    pub check_packets: CheckPackets,
    /// Packets sent with a second-chance hop (from the agent's unpinned map, at publish).
    pub second_chance_hops: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatapathCollector")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl DatapathCollector {
    /// The counters of the maps and of `topology`'s VIPs and backends; `None` (logged) if the
    /// maps cannot be read.
    fn read(&self, topology: &BTreeMap<u32, VipView>) -> Option<CounterReading> {
        let mut guard = lock(&self.datapath);
        if guard.is_none() {
            match Datapath::open_pinned(&self.state_dir) {
                Ok(datapath) => *guard = Some(datapath),
                Err(error) => {
                    tracing::warn!(
                        "metrics: cannot open the pinned maps in {}: {}",
                        self.state_dir.display(),
                        Chain(&error)
                    );
                    return None;
                }
            }
        }
        let datapath = guard.as_mut()?;
        let backends = topology
            .values()
            .flat_map(|vip| vip.backends.iter().map(|b| b.id));
        match CounterReading::read(datapath, topology.keys().copied(), backends) {
            Ok(reading) => Some(reading),
            Err(error) => {
                tracing::warn!(
                    "metrics: reading the datapath counters failed: {}",
                    Chain(&error)
                );
                *guard = None;
                None
            }
        }
    }
}

/// Writes one counter family with one sample per label set.
fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one gauge family with one sample per label set.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The family of each counter class: name, help, label name.
fn class_family(class: CounterClass) -> (&'static str, &'static str, &'static str) {
    match class {
        CounterClass::Verdict => ("packets", "Packets by XDP verdict.", "verdict"),
        CounterClass::Passed => (
            "passed_packets",
            "Packets passed to the host stack, by reason.",
            "reason",
        ),
        CounterClass::Dropped => ("dropped_packets", "Packets dropped, by reason.", "reason"),
        CounterClass::Event => (
            "datapath_events",
            "Datapath events: rehashed (flow moved off a down backend), conntrack_full (a new flow \
             not tracked: its set held only protected flows), icmp_error (ICMP error forwarded to \
             a flow's backend), conntrack_evicted_protected (a protected flow evicted: stays 0).",
            "event",
        ),
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let topology = lock(&self.topology).clone();

        // Agent state of every configured backend, as written to `BACKENDS`.
        let backend_labels = |vip: &VipView, b: &BackendView| BackendLabels {
            vip: vip.name.clone(),
            backend: b.address.to_string(),
        };
        let states = || {
            topology
                .values()
                .flat_map(|vip| vip.backends.iter().map(move |b| (vip, b)))
        };
        gauges(
            &mut encoder,
            "backend_up",
            "1 when the backend is up (in the ring), else 0 (down, unknown or draining).",
            states().map(|(vip, b)| {
                (
                    backend_labels(vip, b),
                    i64::from(b.state == BackendState::Up),
                )
            }),
        )?;
        gauges(
            &mut encoder,
            "backend_draining",
            "1 when the backend is draining (weight 0: no new flows, tracked flows stay), else 0.",
            states().map(|(vip, b)| {
                (
                    backend_labels(vip, b),
                    i64::from(b.state == BackendState::Draining),
                )
            }),
        )?;

        let records = || states().map(|(vip, b)| (backend_labels(vip, b), b.record));
        let mut family = encoder.encode_descriptor(
            "backend_failures",
            "Up to down transitions of the backend, since its records were created.",
            None,
            MetricType::Counter,
        )?;
        for (labels, record) in records() {
            ConstCounter::new(record.failures).encode(family.encode_family(&labels)?)?;
        }
        type SecondsField = fn(&BackendRecordView) -> f64;
        let seconds: [(&str, &str, SecondsField); 2] = [
            (
                "backend_up_seconds",
                "Seconds the backend was observed up (availability = up / observed).",
                |r| r.up_seconds,
            ),
            (
                "backend_observed_seconds",
                "Seconds the backend's health was known (observed by a running agent).",
                |r| r.observed_seconds,
            ),
        ];
        for (name, help, field) in seconds {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, record) in records() {
                ConstCounter::new(field(&record)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "backend_admin_state",
            "1 for the backend's administrative state (ready, drain, maint), 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, record) in records() {
            for state in [AdminState::Ready, AdminState::Drain, AdminState::Maint] {
                let labels = AdminLabels {
                    vip: labels.vip.clone(),
                    backend: labels.backend.clone(),
                    state: state.name(),
                };
                ConstGauge::new(i64::from(record.admin == state))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "backend_check_target",
            "1 for where the backend's health checks go (vip: to the VIP, along the serving path; \
             backend: to its own address), 0 for the other.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, record) in records() {
            for target in [CheckTarget::Vip, CheckTarget::Backend] {
                let labels = TargetLabels {
                    vip: labels.vip.clone(),
                    backend: labels.backend.clone(),
                    target: target.name(),
                };
                ConstGauge::new(i64::from(record.check_target == target))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let check_packets = lock(&self.check_packets).clone();
        counters(
            &mut encoder,
            "check_packets",
            "Health checks' packets sent along the serving path by what was done (steered: MACs \
             rewritten, DSR; encapsulated: tunnel; the others: dropped). Never counted as clients'.",
            check_packets
                .into_iter()
                .map(|(action, count)| (ActionLabels { action }, count)),
        )?;
        let family = encoder.encode_descriptor(
            "second_chance_hops",
            "Packets of connections this instance does not track, sent to their ring slot's \
             backend with the slot's previous backend as a second-chance hop (tunnel VIPs).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(
            self.second_chance_hops
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .encode(family)?;
        let mut family = encoder.encode_descriptor(
            "backend_effective_weight",
            "The weight the backend gets now, in configured units: lower during slow start, 0 \
             when drained or in maintenance.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, record) in records() {
            ConstGauge::new(record.effective_weight).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "vip_ring_fingerprint",
            "The VIP's ring fingerprint (48 bits, as in lb status): equal on instances with \
             identical rings.",
            None,
            MetricType::Gauge,
        )?;
        for vip in topology.values() {
            ConstGauge::new(vip.fingerprint as f64)
                .encode(family.encode_family(&[("vip", vip.name.as_str())])?)?;
        }
        gauges(
            &mut encoder,
            "vip_announced",
            "1 when the VIP is servable, has announce = true and its address's route is in the \
             announce table, else 0.",
            topology
                .values()
                .map(|vip| ([("vip", vip.name.as_str())], i64::from(vip.announced))),
        )?;

        let Some(reading) = self.read(&topology) else {
            return Ok(());
        };
        for class in [
            CounterClass::Verdict,
            CounterClass::Passed,
            CounterClass::Dropped,
            CounterClass::Event,
        ] {
            let (name, help, label) = class_family(class);
            let samples = reading
                .global
                .iter()
                .filter(|(counter, _)| counter.class() == class)
                .map(|(counter, value)| ([(label, counter.name())], *value));
            counters(&mut encoder, name, help, samples)?;
        }
        let Occupancy {
            capacity,
            established,
            closing,
            unconfirmed,
            idle,
        } = reading.flows;
        gauges(
            &mut encoder,
            "conntrack_flows",
            "Flows in the connection-tracking table by class: established and closing (protected \
             from eviction while active), unconfirmed (seen once) and idle (past their timeout).",
            [
                ("established", established),
                ("closing", closing),
                ("unconfirmed", unconfirmed),
                ("idle", idle),
            ]
            .map(|(class, flows)| ([("class", class)], flows as i64)),
        )?;
        gauges(
            &mut encoder,
            "conntrack_capacity_flows",
            "Flows the connection-tracking table can hold (conntrack_size, in sets of 4).",
            [(Vec::<(&str, &str)>::new(), capacity as i64)],
        )?;

        type VipField = fn(&VipStats) -> u64;
        let vip_families: [(&str, &str, VipField); 5] = [
            ("vip_packets", "Packets matched to the VIP.", |s| s.packets),
            (
                "vip_bytes",
                "Bytes matched to the VIP (frame length as received).",
                |s| s.bytes,
            ),
            (
                "vip_new_flows",
                "Flows of the VIP that got a backend from the ring.",
                |s| s.new_flows,
            ),
            (
                "vip_conntrack_hits",
                "Packets of the VIP whose flow was tracked.",
                |s| s.conntrack_hits,
            ),
            (
                "vip_dropped_packets",
                "Packets of the VIP dropped (no backend, too big, ...).",
                |s| s.dropped,
            ),
        ];
        for (name, help, field) in vip_families {
            let samples = topology
                .iter()
                .map(|(id, vip)| ([("vip", vip.name.as_str())], field(&reading.vip(*id))));
            counters(&mut encoder, name, help, samples)?;
        }

        type BackendField = fn(&BackendStats) -> u64;
        let backend_families: [(&str, &str, BackendField); 3] = [
            (
                "backend_packets",
                "Packets forwarded to the backend.",
                |s| s.packets,
            ),
            (
                "backend_bytes",
                "Bytes forwarded to the backend (before encapsulation).",
                |s| s.bytes,
            ),
            (
                "backend_new_flows",
                "Flows newly assigned to the backend.",
                |s| s.new_flows,
            ),
        ];
        for (name, help, field) in backend_families {
            let samples =
                states().map(|(vip, b)| (backend_labels(vip, b), field(&reading.backend(b.id))));
            counters(&mut encoder, name, help, samples)?;
        }
        gauges(
            &mut encoder,
            "backend_active_flows",
            "Active connections of the backend now: established, not closing, active within \
             their timeout.",
            states().map(|(vip, b)| {
                (
                    backend_labels(vip, b),
                    i64::try_from(reading.active_flows(b.id)).unwrap_or(i64::MAX),
                )
            }),
        )?;
        Ok(())
    }
}
