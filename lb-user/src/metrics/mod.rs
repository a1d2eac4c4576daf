//! The Prometheus endpoint of `lb run` (`metrics = "ADDR:PORT"` in the configuration): `GET
//! /metrics` in the OpenMetrics text format, encoded by `prometheus-client` and served by axum.
//!
//! Two sources:
//! - **datapath counters** are read from the pinned maps at every scrape (a `Collector` with
//!   its own map handles, [`crate::datapath::Datapath::open_pinned`]): they are exact, per-CPU sums, and survive
//!   agent restarts (`--keep-datapath`, adoption) because the maps do;
//! - **agent metrics** live here and are updated by one-line hooks in `agent.rs`: backend state
//!   gauges, health-check latency, ring swaps and reloads.
//!
//! Every label value is a configured VIP name or backend address, and label sets of VIPs and
//! backends removed by a reload are dropped, so the number of series stays bounded by the
//! configuration.
//!
//! Metric families (all prefixed `lb_`):
//!
//! | family | type | labels |
//! |---|---|---|
//! | `lb_packets_total` | counter | `verdict` = `pass`, `tx`, `redirect`, `drop` |
//! | `lb_passed_packets_total` | counter | `reason` = `not_ip`, `not_vip`, `not_tcp_udp`, `fragment`, `ipv6_extension_header` |
//! | `lb_dropped_packets_total` | counter | `reason` = `parse_error`, `no_backend`, `too_big`, `no_headroom`, `redirect_failed` |
//! | `lb_datapath_events_total` | counter | `event` = `rehashed`, `conntrack_full`, `icmp_error`, `conntrack_evicted_protected` |
//! | `lb_conntrack_flows` | gauge | `class` = `established`, `closing`, `unconfirmed`, `idle` |
//! | `lb_conntrack_capacity_flows` | gauge | none |
//! | `lb_vip_packets_total`, `lb_vip_bytes_total`, `lb_vip_new_flows_total`, `lb_vip_conntrack_hits_total`, `lb_vip_dropped_packets_total` | counter | `vip` |
//! | `lb_backend_packets_total`, `lb_backend_bytes_total`, `lb_backend_new_flows_total` | counter | `vip`, `backend` |
//! | `lb_backend_up` | gauge | `vip`, `backend`: 1 when the backend is in the ring (up), else 0 |
//! | `lb_backend_draining` | gauge | `vip`, `backend`: 1 when draining (weight 0, healthy), else 0 |
//! | `lb_vip_announced` | gauge | `vip`: 1 when servable, `announce = true` and its route is in the announce table, else 0 |
//! | `lb_health_check_duration_seconds` | histogram | `vip`, `backend`: every check, passed or failed |
//! | `lb_ring_rebuilds_total` | counter | `vip`: ring swaps (`RINGS` updates) |
//! | `lb_reloads_total` | counter | `result` = `ok`, `failed` |
//!
//! The flows by class are counted at every scrape by walking `FLOWS` through a shared mapping
//! (its tags and stamps: about 10 ms for the default million flows).

mod collector;
pub mod decap;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use lb_common::maps::BackendState;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use self::collector::DatapathCollector;
use crate::{
    admin::AdminState,
    config::{CheckTarget, Config, LiveConfig},
};
use lb_common::check_path::CheckCounter;

/// Content type of the OpenMetrics text format (what `prometheus-client` encodes).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of `lb_health_check_duration_seconds`: 100 µs (a LAN connect) to 5 s (the longest
/// sensible timeout).
const CHECK_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct VipLabels {
    vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BackendLabels {
    pub vip: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// One backend as the agent last wrote it to `BACKENDS`.
#[derive(Clone, Debug)]
pub(super) struct BackendView {
    pub id: u32,
    pub address: IpAddr,
    pub state: BackendState,
    /// Administration and availability, as last published.
    pub record: BackendRecordView,
}

/// A backend's administrative state, weight and availability counters, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BackendRecordView {
    /// `ready`, `drain` or `maint`.
    pub admin: AdminState,
    /// Where its checks go.
    pub check_target: CheckTarget,
    /// The weight it gets now, in configured units.
    pub effective_weight: f64,
    /// Up → down transitions.
    pub failures: u64,
    /// Seconds observed up.
    pub up_seconds: f64,
    /// Seconds observed with a known health.
    pub observed_seconds: f64,
}

/// One VIP as the agent last synced it: its name and its backends.
#[derive(Clone, Debug)]
pub(super) struct VipView {
    pub name: String,
    pub backends: Vec<BackendView>,
    /// Its address is announced (`[announce]`) and it is servable.
    pub announced: bool,
    /// The fingerprint of its ring (see `crate::fingerprint`).
    pub fingerprint: u64,
}

/// What `steer_check` did with health checks' packets, as last published, by action.
pub(super) type CheckPackets = Arc<Mutex<Vec<(&'static str, u64)>>>;

/// VIPs by id: what the agent programmed, shared with the collector.
pub(super) type Topology = Arc<Mutex<BTreeMap<u32, VipView>>>;

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The agent's metrics and the registry `/metrics` encodes.
pub struct Metrics {
    registry: Registry,
    address: SocketAddr,
    topology: Topology,
    check_packets: CheckPackets,
    second_chance_hops: Arc<std::sync::atomic::AtomicU64>,
    check_duration: Family<BackendLabels, Histogram>,
    ring_rebuilds: Family<VipLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Serves `/metrics` on `config.fixed.metrics`, if set. A failed bind is logged and the agent runs
/// without metrics (`None`).
pub async fn start(config: &Config) -> Option<Arc<Metrics>> {
    let address = config.fixed.metrics?;
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(
                "metrics: cannot listen on {address}: {error}; running without metrics"
            );
            return None;
        }
    };
    let metrics = Arc::new(Metrics::new(address, config.fixed.state_dir.clone()));
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!("metrics: server on {address} stopped: {error}");
        }
    });
    tracing::info!("metrics: serving http://{address}/metrics");
    Some(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.encode() {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body),
        Err(error) => {
            tracing::error!("metrics: encoding failed: {error}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "encoding failed\n".to_owned(),
            )
        }
    }
}

impl Metrics {
    /// A registry with the agent's families and the datapath collector for the maps pinned in
    /// `state_dir`.
    pub fn new(address: SocketAddr, state_dir: PathBuf) -> Self {
        let mut registry = Registry::with_prefix("lb");
        let topology = Topology::default();
        let check_duration = Family::<BackendLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(CHECK_BUCKETS)
        });
        let ring_rebuilds = Family::<VipLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        // Both results exist from the start (at 0), so `increase()` sees the first one.
        for result in ["ok", "failed"] {
            let _ = reloads.get_or_create(&ReloadLabels { result });
        }
        registry.register_with_unit(
            "health_check_duration",
            "Latency of health checks (connect, failure or timeout)",
            Unit::Seconds,
            check_duration.clone(),
        );
        registry.register(
            "ring_rebuilds",
            "Maglev ring swaps of a VIP (backend state, weight or table size changes)",
            ring_rebuilds.clone(),
        );
        registry.register(
            "reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        let check_packets = CheckPackets::default();
        let second_chance_hops = Arc::default();
        registry.register_collector(Box::new(DatapathCollector {
            state_dir,
            datapath: Mutex::new(None),
            topology: topology.clone(),
            check_packets: check_packets.clone(),
            second_chance_hops: Arc::clone(&second_chance_hops),
        }));
        Self {
            registry,
            address,
            topology,
            check_packets,
            second_chance_hops,
            check_duration,
            ring_rebuilds,
            reloads,
        }
    }

    /// The `/metrics` body.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &self.registry)?;
        Ok(body)
    }

    /// Hook (`record`): one health check of `backend` of `vip` took `latency`.
    pub fn health_checked(&self, vip: &str, backend: IpAddr, latency: Duration) {
        let labels = BackendLabels {
            vip: vip.to_owned(),
            backend: backend.to_string(),
        };
        self.check_duration
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    /// Hook (`sync_vip`): the ring of `vip` was swapped.
    pub fn ring_rebuilt(&self, vip: &str) {
        self.ring_rebuilds
            .get_or_create(&VipLabels {
                vip: vip.to_owned(),
            })
            .inc();
    }

    /// Hook (`sync_vip`, at its end): VIP `id` named `name` has these backends (id, address,
    /// `BACKENDS` state as written). Replaces what was known about the VIP; series of backends
    /// it no longer has are dropped.
    pub fn vip_synced(
        &self,
        id: u32,
        name: &str,
        fingerprint: u64,
        backends: impl IntoIterator<Item = (u32, IpAddr, BackendState)>,
    ) {
        let mut topology = lock(&self.topology);
        let known = topology.get(&id).filter(|v| v.name == name);
        let backends: Vec<BackendView> = backends
            .into_iter()
            .map(|(id, address, state)| BackendView {
                id,
                address,
                state,
                record: known
                    .and_then(|v| v.backends.iter().find(|b| b.id == id))
                    .map(|b| b.record)
                    .unwrap_or_default(),
            })
            .collect();
        // Names are unique among running VIPs: another id with this name is a removed VIP.
        let stale: Vec<u32> = topology
            .iter()
            .filter(|(other, v)| **other != id && v.name == name)
            .map(|(id, _)| *id)
            .collect();
        for other in stale {
            if let Some(old) = topology.remove(&other) {
                self.forget_backends(&old.name, old.backends.iter().map(|b| b.address));
            }
        }
        let announced = topology
            .get(&id)
            .is_some_and(|v| v.announced && v.name == name);
        let previous = topology.insert(
            id,
            VipView {
                name: name.to_owned(),
                backends: backends.clone(),
                announced,
                fingerprint,
            },
        );
        if let Some(old) = previous {
            if old.name != name {
                self.forget_vip(&old);
            } else {
                let gone = old
                    .backends
                    .iter()
                    .filter(|o| !backends.iter().any(|b| b.address == o.address));
                self.forget_backends(&old.name, gone.map(|b| b.address));
            }
        }
    }

    /// Hook (`publish`): the administrative state, weight and availability of backends, by
    /// (VIP id, backend id).
    pub fn backends_observed(
        &self,
        backends: impl IntoIterator<Item = (u32, u32, BackendRecordView)>,
    ) {
        let mut topology = lock(&self.topology);
        for (vip, id, record) in backends {
            if let Some(backend) = topology
                .get_mut(&vip)
                .and_then(|v| v.backends.iter_mut().find(|b| b.id == id))
            {
                backend.record = record;
            }
        }
    }

    /// Hook (`publish`): what `steer_check` did with health checks' packets so far.
    pub fn check_packets_counted(&self, counts: &[(CheckCounter, u64)]) {
        *lock(&self.check_packets) = counts
            .iter()
            .map(|(counter, count)| (counter.name(), *count))
            .collect();
    }

    /// Hook (`publish`): packets sent with a second-chance hop so far.
    pub fn second_chance_counted(&self, hops: u64) {
        self.second_chance_hops
            .store(hops, std::sync::atomic::Ordering::Relaxed);
    }

    /// Hook (`update_announcements`): whether VIP `id` is announced now.
    pub fn vip_announced(&self, id: u32, announced: bool) {
        if let Some(vip) = lock(&self.topology).get_mut(&id) {
            vip.announced = announced;
        }
    }

    /// Hook (`reload`): a reload finished (`ok`: valid and applied, or unchanged). Drops the
    /// series of VIPs and backends `config` no longer has.
    pub fn reloaded(&self, ok: bool, config: &LiveConfig) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        let mut topology = lock(&self.topology);
        let mut removed = Vec::new();
        topology.retain(|_, vip| {
            let Some(configured) = config.vips.iter().find(|v| v.name == vip.name) else {
                removed.push(vip.clone());
                return false;
            };
            let gone: Vec<BackendView> = vip
                .backends
                .iter()
                .filter(|b| !configured.backends.iter().any(|c| c.address == b.address))
                .cloned()
                .collect();
            vip.backends
                .retain(|b| configured.backends.iter().any(|c| c.address == b.address));
            removed.push(VipView {
                name: vip.name.clone(),
                backends: gone,
                announced: false,
                fingerprint: 0,
            });
            true
        });
        for vip in removed {
            if config.vips.iter().any(|v| v.name == vip.name) {
                self.forget_backends(&vip.name, vip.backends.iter().map(|b| b.address));
            } else {
                self.forget_vip(&vip);
            }
        }
    }

    fn forget_vip(&self, vip: &VipView) {
        self.ring_rebuilds.remove(&VipLabels {
            vip: vip.name.clone(),
        });
        self.forget_backends(&vip.name, vip.backends.iter().map(|b| b.address));
    }

    fn forget_backends(&self, vip: &str, backends: impl Iterator<Item = IpAddr>) {
        for backend in backends {
            self.check_duration.remove(&BackendLabels {
                vip: vip.to_owned(),
                backend: backend.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(
            "127.0.0.1:9300".parse().expect("addr"),
            PathBuf::from("/nonexistent/lb-metrics-test"),
        )
    }

    fn config(vips: &[(&str, &[&str])]) -> Config {
        let mut text = "interface = \"eth0\"\nmetrics = \"127.0.0.1:9300\"\n".to_owned();
        for (i, (name, backends)) in vips.iter().enumerate() {
            text += &format!(
                "[[vip]]\nname = \"{name}\"\naddress = \"10.0.0.{}\"\nport = 80\n",
                100 + i
            );
            for backend in *backends {
                text += &format!("[[vip.backend]]\naddress = \"{backend}\"\n");
            }
        }
        crate::config::parse(std::path::Path::new("lb.toml"), &text).expect("config")
    }

    #[test]
    fn agent_metrics_are_encoded_and_pruned_with_the_configuration() {
        let m = metrics();
        let b1: IpAddr = "10.0.0.11".parse().unwrap();
        let b2: IpAddr = "10.0.0.12".parse().unwrap();
        m.vip_synced(
            0,
            "web",
            1,
            [(0, b1, BackendState::Up), (1, b2, BackendState::Draining)],
        );
        m.health_checked("web", b1, Duration::from_micros(300));
        m.health_checked("web", b2, Duration::from_millis(2));
        m.ring_rebuilt("web");
        m.reloaded(true, &config(&[("web", &["10.0.0.11", "10.0.0.12"])]).live);
        let body = m.encode().expect("encode");
        assert!(
            body.contains("lb_backend_up{vip=\"web\",backend=\"10.0.0.11\"} 1\n"),
            "{body}"
        );
        assert!(
            body.contains("lb_backend_up{vip=\"web\",backend=\"10.0.0.12\"} 0\n"),
            "{body}"
        );
        assert!(
            body.contains("lb_backend_draining{vip=\"web\",backend=\"10.0.0.12\"} 1\n"),
            "{body}"
        );
        assert!(
            body.contains(
                "lb_health_check_duration_seconds_count{vip=\"web\",backend=\"10.0.0.11\"} 1\n"
            ),
            "{body}"
        );
        assert!(
            body.contains("lb_ring_rebuilds_total{vip=\"web\"} 1\n"),
            "{body}"
        );
        assert!(
            body.contains("lb_reloads_total{result=\"ok\"} 1\n"),
            "{body}"
        );
        assert!(
            body.contains("lb_reloads_total{result=\"failed\"} 0\n"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));

        // b2 leaves the configuration, then the whole VIP does.
        m.reloaded(true, &config(&[("web", &["10.0.0.11"])]).live);
        let body = m.encode().expect("encode");
        assert!(!body.contains("10.0.0.12"), "{body}");
        assert!(body.contains("backend=\"10.0.0.11\""), "{body}");
        m.reloaded(true, &config(&[("api", &["10.0.0.21"])]).live);
        let body = m.encode().expect("encode");
        assert!(!body.contains("vip=\"web\""), "{body}");
    }

    #[test]
    fn a_vip_re_created_under_the_same_name_has_one_series() {
        let m = metrics();
        let b1: IpAddr = "10.0.0.11".parse().unwrap();
        m.vip_synced(0, "web", 1, [(0, b1, BackendState::Up)]);
        m.vip_synced(3, "web", 1, [(7, b1, BackendState::Up)]);
        let body = m.encode().expect("encode");
        assert_eq!(
            body.matches("lb_backend_up{vip=\"web\"").count(),
            1,
            "{body}"
        );
    }
}
