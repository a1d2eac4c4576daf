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
    /// Resolves the next hop of every backend of a VIP that is up (or could serve fail-open)
    /// and has none yet, in parallel. Unresolvable backends stay out of the ring, with a log
    /// line.
    pub(super) async fn resolve_next_hops(&mut self, key: &VipKey) {
        let Some(vip) = self.vips.get(key) else {
            return;
        };
        let on_link = vip.config.forward == ForwardMode::Dsr;
        let fail_open = vip.config.on_all_down == OnAllDown::FailOpen;
        let wanted: Vec<(u32, IpAddr)> = vip
            .backends
            .iter()
            .filter(|b| b.next_hop.is_none() && (b.health == Health::Up || fail_open))
            .map(|b| (b.id, b.address()))
            .collect();
        if wanted.is_empty() {
            return;
        }
        // A backend address other VIPs use has its next hop already (the table reader keeps
        // them all current): resolving each address once spares thousands of `ip` processes
        // when many VIPs share their backends.
        let known: HashMap<IpAddr, NextHop> = self
            .vips
            .values()
            .flat_map(|vip| &vip.backends)
            .filter_map(|b| Some((b.address(), b.next_hop?)))
            .filter(|(_, hop)| !on_link || hop.gateway.is_none())
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (id, address) in wanted {
            if let Some(hop) = known.get(&address) {
                let hop = *hop;
                tasks.spawn(async move { (id, address, Ok(hop)) });
                continue;
            }
            tasks.spawn(async move {
                let hop = nexthop::resolve(address, on_link, NEXT_HOP_WAIT).await;
                (id, address, hop)
            });
        }
        while let Some(Ok((id, address, result))) = tasks.join_next().await {
            let Some(vip) = self.vips.get_mut(key) else {
                return;
            };
            let name = vip.config.name.clone();
            let Some(backend) = vip.backend_mut(id) else {
                continue;
            };
            match result {
                Ok(hop) => backend.next_hop = Some(hop),
                Err(error) => tracing::warn!(
                    vip = %name,
                    backend = %address,
                    // Every NextHopError names the backend.
                    "a backend of vip {name} treated as down: next hop unresolved: {}",
                    Chain(&error)
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
