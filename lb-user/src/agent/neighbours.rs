//! Next hops of the agent's backends: resolved (ARP/ND through the kernel) when a backend may
//! enter a ring, and followed afterwards against the neighbour and link tables, which a task of
//! their own reads every second so that health events never wait for the `ip` processes.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use lb_common::maps::{ForwardMode, VipKey};
use tokio::sync::mpsc;

use super::Agent;
use crate::{
    config::OnAllDown,
    error::Chain,
    health::Health,
    nexthop::{self, format_mac, NextHop},
};

/// How long to wait for a backend's MAC (ARP/ND) before treating it as down.
const NEXT_HOP_WAIT: Duration = Duration::from_secs(1);
/// How many next hops are resolved at once (each is a few `ip` processes and perhaps an
/// ARP/ND wait).
const RESOLVING_AT_ONCE: usize = 64;
/// How often next hops in use are re-checked against the kernel's neighbour table.
const NEXT_HOP_REFRESH: Duration = Duration::from_secs(1);

/// Reads the neighbour and link tables every [`NEXT_HOP_REFRESH`] and hands each snapshot over;
/// stops when the receiver is dropped.
pub fn spawn_neighbour_reader() -> mpsc::Receiver<nexthop::Snapshot> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(NEXT_HOP_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match nexthop::Snapshot::take().await {
                Ok(snapshot) => {
                    if sender.send(snapshot).await.is_err() {
                        return;
                    }
                }
                Err(error) => tracing::warn!("re-checking next hops failed: {}", Chain(&error)),
            }
        }
    });
    receiver
}

impl Agent {
    /// Resolves the next hop of every backend of the VIPs `keys` that is up (or could serve
    /// fail-open) and has none yet. Each address is resolved once however many VIPs use it,
    /// and an address another backend already has a next hop for is not resolved again (the
    /// table reader keeps them all current); the rest are resolved in parallel, at most
    /// [`RESOLVING_AT_ONCE`] at a time. Unresolvable backends stay out of the ring, with a log
    /// line each.
    pub(super) async fn resolve_next_hops(&mut self, keys: &[VipKey]) {
        // (VIP, backend id, address, on link), for every backend waiting for a next hop.
        let mut wanted: Vec<(VipKey, u32, IpAddr, bool)> = Vec::new();
        for key in keys {
            let Some(vip) = self.vips.get(key) else {
                continue;
            };
            let on_link = vip.config.forward == ForwardMode::Dsr;
            let fail_open = vip.config.on_all_down == OnAllDown::FailOpen;
            wanted.extend(
                vip.backends
                    .iter()
                    .filter(|b| b.next_hop.is_none() && (b.health == Health::Up || fail_open))
                    .map(|b| (*key, b.id, b.address(), on_link)),
            );
        }
        if wanted.is_empty() {
            return;
        }
        let known: HashMap<IpAddr, NextHop> = self
            .vips
            .values()
            .flat_map(|vip| &vip.backends)
            .filter_map(|b| Some((b.address(), b.next_hop?)))
            .collect();
        // A next hop through a gateway does not do for a DSR backend, which must be on link.
        let usable = |hop: &NextHop, on_link: bool| !on_link || hop.gateway.is_none();
        let mut resolved: HashMap<(IpAddr, bool), Result<NextHop, nexthop::NextHopError>> =
            HashMap::new();
        let to_resolve: std::collections::BTreeSet<(IpAddr, bool)> = wanted
            .iter()
            .filter(|(_, _, address, on_link)| {
                !known.get(address).is_some_and(|hop| usable(hop, *on_link))
            })
            .map(|(_, _, address, on_link)| (*address, *on_link))
            .collect();
        let mut pending = to_resolve.into_iter();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < RESOLVING_AT_ONCE {
                let Some((address, on_link)) = pending.next() else {
                    break;
                };
                tasks.spawn(async move {
                    let hop = nexthop::resolve(address, on_link, NEXT_HOP_WAIT).await;
                    ((address, on_link), hop)
                });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            if let Ok((asked, hop)) = done {
                resolved.insert(asked, hop);
            }
        }
        for (key, id, address, on_link) in wanted {
            let Some(vip) = self.vips.get_mut(&key) else {
                continue;
            };
            let name = &vip.config.name;
            let hop = match known.get(&address).filter(|hop| usable(hop, on_link)) {
                Some(hop) => Ok(*hop),
                None => match resolved.get(&(address, on_link)) {
                    Some(Ok(hop)) => Ok(*hop),
                    Some(Err(error)) => Err(Chain(error).to_string()),
                    None => continue,
                },
            };
            match hop {
                Ok(hop) => {
                    if let Some(backend) = vip.backend_mut(id) {
                        backend.next_hop = Some(hop);
                    }
                }
                Err(error) => tracing::warn!(
                    vip = %name,
                    backend = %address,
                    // Every NextHopError names the backend.
                    "a backend of vip {name} treated as down: next hop unresolved: {error}"
                ),
            }
        }
    }

    /// Follows changes of the next hops in use (a backend's new MAC, the interface's MTU), as
    /// `snapshot` shows them, and rewrites the affected `BACKENDS` entries.
    pub(super) fn refresh_next_hops(&mut self, snapshot: &nexthop::Snapshot) {
        let mut changed = Vec::new();
        for (key, vip) in &mut self.vips {
            let mut vip_changed = false;
            for backend in &mut vip.backends {
                let Some(hop) = backend.next_hop else {
                    continue;
                };
                let fresh = snapshot.refresh(backend.config.address, &hop);
                if fresh != hop {
                    let address = backend.config.address;
                    tracing::info!(
                        vip = %vip.config.name,
                        backend = %address,
                        "backend {address} of vip {}: next hop changed: MAC {} -> {}, MTU {} -> {}",
                        vip.config.name,
                        format_mac(&hop.dst_mac),
                        format_mac(&fresh.dst_mac),
                        hop.mtu,
                        fresh.mtu
                    );
                    backend.next_hop = Some(fresh);
                    vip_changed = true;
                }
            }
            if vip_changed {
                changed.push(*key);
            }
        }
        for key in changed {
            self.sync_vip_logged(&key);
        }
    }
}
