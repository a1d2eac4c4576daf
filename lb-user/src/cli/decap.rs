//! `lb decap --interface IF`: runs the `decap` program on a tunnel-mode backend until
//! SIGINT/SIGTERM, resolving the routes of the second-chance hops it is asked for, then
//! reports what it did.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::datapath::{AttachMode, Decap};

/// How often the program's queue of hops without a route is looked at.
const QUEUE_POLL: Duration = Duration::from_millis(20);
/// How long a hop's resolution may wait for its neighbour (the connection's next packet comes
/// after TCP's retransmission timeout, 200 ms at least).
const RESOLVE_WAIT: Duration = Duration::from_millis(500);
/// How old a hop's route gets before it is resolved again (a backend's MAC may change).
const ROUTE_LIFETIME: Duration = Duration::from_secs(30);

/// How often the metrics endpoint's counts are read off the program.
const METRICS_REFRESH: Duration = Duration::from_secs(1);

/// Attaches, serves until a stop signal (and `/metrics` on `metrics`), logs the counts and
/// detaches.
pub async fn run(
    interface: &str,
    mode: AttachMode,
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let mut decap = Decap::attach(interface, mode.xdp_mode())?;
    let counts: crate::metrics::decap::SharedDecapCounts = Default::default();
    if let Some(address) = metrics {
        crate::metrics::decap::serve(address, counts.clone())
            .await
            .map_err(|error| anyhow::anyhow!("metrics: cannot listen on {address}: {error}"))?;
    }
    let mut refresh = tokio::time::interval(METRICS_REFRESH);
    tracing::info!(%interface, mode = ?decap.mode, addresses = ?decap.addresses, "decap attached");
    let shutdown = super::wait_for_shutdown();
    tokio::pin!(shutdown);
    let mut poll = tokio::time::interval(QUEUE_POLL);
    let mut resolved: BTreeMap<IpAddr, Instant> = BTreeMap::new();
    loop {
        tokio::select! {
            result = &mut shutdown => {
                result?;
                break;
            }
            _ = refresh.tick(), if metrics.is_some() => {
                if let Ok(now) = decap.counts() {
                    *counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = now;
                }
            }
            _ = poll.tick() => {
                let mut hops = decap.hops_without_route();
                let now = Instant::now();
                hops.extend(
                    resolved
                        .iter()
                        .filter(|(_, at)| now.duration_since(**at) > ROUTE_LIFETIME)
                        .map(|(hop, _)| *hop),
                );
                for hop in hops {
                    resolve_hop(&mut decap, &mut resolved, hop).await;
                }
            }
        }
    }
    let counts = decap.counts()?;
    tracing::info!(
        %interface,
        decapsulated = counts.decapsulated,
        passed = counts.passed,
        malformed = counts.malformed,
        hop_local = counts.hop_local,
        hop_forwarded = counts.hop_forwarded,
        hop_not_taken = counts.hop_not_taken,
        hop_unresolved = counts.hop_unresolved,
        "detaching decap: {} tunnel packets stripped, {} other packets passed, {} malformed \
         dropped; second chance: {} kept (connection here), {} sent on to their hop, {} kept \
         (hop is this host), {} dropped until their hop was resolved",
        counts.decapsulated + counts.hop_local + counts.hop_not_taken,
        counts.passed,
        counts.malformed,
        counts.hop_local,
        counts.hop_forwarded,
        counts.hop_not_taken,
        counts.hop_unresolved
    );
    Ok(())
}

/// Resolves how to reach `hop` (route and neighbour, asking the kernel for it) and tells the
/// program; a hop that cannot be resolved is forgotten, and asked for again by its next packet.
async fn resolve_hop(decap: &mut Decap, resolved: &mut BTreeMap<IpAddr, Instant>, hop: IpAddr) {
    match crate::nexthop::resolve(hop, false, RESOLVE_WAIT).await {
        Ok(next_hop) => match decap.set_hop_route(hop, &next_hop) {
            Ok(()) => {
                resolved.insert(hop, Instant::now());
            }
            Err(error) => tracing::warn!(%hop, "second chance: hop {hop}: {error}"),
        },
        Err(error) => {
            tracing::warn!(%hop, "second chance: cannot reach hop {hop}: {error}");
            decap.remove_hop_route(hop);
            resolved.remove(&hop);
        }
    }
}
