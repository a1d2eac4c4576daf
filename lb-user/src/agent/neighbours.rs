//! Next hops of the agent's backends: resolved (ARP/ND through the kernel) when a backend may
//! enter a ring, and followed afterwards against the neighbour and link tables, which a task of
//! their own keeps from the kernel's announcements (a netlink subscription), so that a new MAC
//! is seen within milliseconds and health events never wait for a table read.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use lb_common::maps::{ForwardMode, VipKey};
use tokio::sync::watch;

use super::Agent;
use crate::{
    config::OnAllDown,
    error::Chain,
    health::Health,
    netlink::{Event, Subscription},
    nexthop::{self, format_mac, NextHop, Snapshot},
};

/// How long to wait for a backend's MAC (ARP/ND) before treating it as down.
const NEXT_HOP_WAIT: Duration = Duration::from_secs(1);
/// How many next hops are resolved at once (each a few netlink requests, and perhaps an
/// ARP/ND wait).
const RESOLVING_AT_ONCE: usize = 64;
/// How often the tables are read whole although announcements keep them current: a safety net
/// (announcements lost without the kernel saying so have never been seen), at the cost of two
/// dumps a minute.
const FULL_READ_INTERVAL: Duration = Duration::from_secs(60);
/// How long to wait before subscribing again after the subscription or a read failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Keeps a snapshot of the neighbour and link tables from the kernel's announcements and
/// hands over each new one that changes a next hop's facts; stops when the receiver is
/// dropped. The tables are read whole at start, after lost announcements (the kernel's
/// `ENOBUFS`), and every [`FULL_READ_INTERVAL`].
pub fn spawn_neighbour_reader() -> watch::Receiver<Arc<Snapshot>> {
    let (sender, receiver) = watch::channel(Arc::new(Snapshot::default()));
    tokio::spawn(async move {
        while !sender.is_closed() {
            if let Err(error) = follow_tables(&sender).await {
                tracing::warn!("following the neighbour table failed: {}", Chain(&error));
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    });
    receiver
}

/// Subscribes, reads the tables, then applies announcements until the subscription fails or
/// the receiver is gone.
async fn follow_tables(
    sender: &watch::Sender<Arc<Snapshot>>,
) -> Result<(), crate::netlink::NetlinkError> {
    // Subscribed first: a change during the read is announced after it.
    let mut subscription = Subscription::open()?;
    let mut snapshot = Snapshot::take()?;
    publish(sender, &snapshot);
    let mut full_read = tokio::time::interval(FULL_READ_INTERVAL);
    full_read.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    full_read.tick().await;
    loop {
        let read_whole = tokio::select! {
            event = subscription.next() => match event? {
                Event::Changes(changes) => {
                    let mut changed = false;
                    for change in &changes {
                        changed |= snapshot.apply(change);
                    }
                    if changed {
                        publish(sender, &snapshot);
                    }
                    false
                }
                Event::Lost => {
                    tracing::warn!(
                        "neighbour and link announcements were lost (the socket's buffer \
                         overflowed, or one could not be parsed): reading the tables again"
                    );
                    true
                }
            },
            _ = full_read.tick() => true,
            () = sender.closed() => return Ok(()),
        };
        if read_whole {
            // Handed over even if unchanged: next hops resolved since the last change are
            // checked against it too.
            snapshot = Snapshot::take()?;
            publish(sender, &snapshot);
        }
    }
}

fn publish(sender: &watch::Sender<Arc<Snapshot>>, snapshot: &Snapshot) {
    sender.send_replace(Arc::new(snapshot.clone()));
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
                    .filter(|b| {
                        b.next_hop.is_none()
                            && (b.health == Health::Up || fail_open || b.answers_at_own_address())
                    })
                    .map(|b| (*key, b.id, b.address(), on_link)),
            );
        }
        if wanted.is_empty() {
            return;
        }
        // A backend address other VIPs use has its next hop already (the table reader keeps
        // them all current): resolving each address once spares thousands of netlink lookups
        // when many VIPs share their backends.
        let addresses: std::collections::HashSet<IpAddr> =
            wanted.iter().map(|(_, _, address, _)| *address).collect();
        let known: HashMap<IpAddr, NextHop> = self
            .vips
            .values()
            .flat_map(|vip| &vip.backends)
            .filter(|b| addresses.contains(&b.address()))
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
    pub(super) fn refresh_next_hops(&mut self, snapshot: &Snapshot) {
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
