//! `lb decap --metrics ADDR`: the backend's side of second chance and of the tunnels, as
//! `lb_decap_packets_total{outcome}`, from the counts `lb decap` reads off its program.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, MetricType},
    registry::Registry,
};

use super::{lock, CONTENT_TYPE};
use crate::datapath::DecapCounts;

/// The counts the endpoint serves, updated by `lb decap`.
pub type SharedDecapCounts = Arc<Mutex<DecapCounts>>;

/// Labels of `lb_decap_packets_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Encodes the shared counts at each scrape.
#[derive(Debug)]
struct DecapCollector {
    counts: SharedDecapCounts,
}

impl Collector for DecapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = *lock(&self.counts);
        let mut family = encoder.encode_descriptor(
            "decap_packets",
            "Packets the decap program handled, by outcome: decapsulated (a tunnel stripped, \
             with no hop or a hop already taken), passed (not a tunnel for this host), \
             malformed (dropped), and for packets with a second-chance hop: hop_local (the \
             connection is here), hop_forwarded (sent on to the hop), hop_not_taken (the hop \
             is this host), hop_unresolved (dropped until the hop's route is resolved).",
            None,
            MetricType::Counter,
        )?;
        for (outcome, value) in [
            ("decapsulated", counts.decapsulated),
            ("passed", counts.passed),
            ("malformed", counts.malformed),
            ("hop_local", counts.hop_local),
            ("hop_forwarded", counts.hop_forwarded),
            ("hop_not_taken", counts.hop_not_taken),
            ("hop_unresolved", counts.hop_unresolved),
        ] {
            ConstCounter::new(value).encode(family.encode_family(&OutcomeLabels { outcome })?)?;
        }
        Ok(())
    }
}

/// Listens on `address` and serves `/metrics` from `counts`; fails if it cannot listen.
pub async fn serve(address: SocketAddr, counts: SharedDecapCounts) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let mut registry = Registry::with_prefix("lb");
    registry.register_collector(Box::new(DecapCollector { counts }));
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(registry));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!("metrics: server on {address} stopped: {error}");
        }
    });
    tracing::info!("metrics: serving http://{address}/metrics");
    Ok(())
}

async fn scrape(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            axum::http::StatusCode::OK,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            body,
        ),
        Err(error) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding the metrics: {error}"),
        ),
    }
}
