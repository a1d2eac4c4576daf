//! Health checks along the serving path: a check of a backend goes to the VIP's address, and
//! `steer_check` (lb-ebpf) sends it to that backend the way the datapath sends clients' packets
//! (`lb_common::check_path`). The backend answers from the VIP, as it answers clients, so a
//! backend that does not serve the VIP (no VIP on its loopback, no tunnel decapsulation) fails
//! its check.
//!
//! [`CheckPaths`] owns `CHECK_PATHS`: before a check, [`CheckPaths::prepare`] makes the
//! check's slot (its backend id) lead to the backend (its next hop resolved like the datapath's,
//! its MAC followed in the neighbour table) and says the socket's mark and source address.
//! [`interface`] sets up the interface and routing the marked sockets take.

pub mod interface;
mod offload;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aya::maps::{Array, MapData, PerCpuArray};
use lb_common::{
    check_path::{check_mark, CheckCounter, CheckPath},
    encoding::addr_bytes,
    maps::ForwardMode,
};
use tokio::{sync::watch, time::Instant};

use crate::{
    datapath::{check_counts, CheckMaps},
    error::Chain,
    netlink::Netlink,
    nexthop::{self, NextHop, Snapshot},
};

/// How long to wait for a backend's MAC (ARP/ND) before the check fails.
const NEXT_HOP_WAIT: Duration = Duration::from_secs(1);
/// How long a resolved route is trusted while checks pass (MACs are followed all along).
const ROUTE_LIFETIME: Duration = Duration::from_secs(60);

/// The check of one backend of one VIP along the serving path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VipRoute {
    /// The slot of its path: the backend's id.
    pub slot: u32,
    /// The backend.
    pub backend: IpAddr,
    /// How the VIP forwards to it.
    pub forward: ForwardMode,
}

/// What a check socket needs to take the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steering {
    /// Its mark (`SO_MARK`).
    pub mark: u32,
    /// The address to bind it to (the egress interface's, of the VIP's family), if there is one.
    pub source: Option<IpAddr>,
}

/// A path as last written.
struct Known {
    route: VipRoute,
    hop: NextHop,
    source: Option<IpAddr>,
    resolved: Instant,
}

struct Inner {
    paths: Array<MapData, CheckPath>,
    known: HashMap<u32, Known>,
}

/// The owner of `CHECK_PATHS` (and reader of `CHECK_STATS`), shared by the probes.
pub struct CheckPaths {
    inner: Mutex<Inner>,
    stats: PerCpuArray<MapData, u64>,
    neighbours: watch::Receiver<Arc<Snapshot>>,
}

impl std::fmt::Debug for CheckPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckPaths")
            .field("known", &self.inner().known.len())
            .finish()
    }
}

impl CheckPaths {
    /// The paths in `maps`, their MACs followed in `neighbours`.
    pub fn new(maps: CheckMaps, neighbours: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                paths: maps.paths,
                known: HashMap::new(),
            }),
            stats: maps.stats,
            neighbours,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `route`'s slot lead to its backend and returns how a check socket takes it.
    /// `vip` is the VIP's address (the source is of its family). The next hop is resolved
    /// again when `resolve` is set (the last check failed), when the route is old or when the
    /// slot led elsewhere; in between it follows the neighbour table. Fails with why the
    /// backend cannot be reached (`no route to 10.0.0.2`...).
    pub async fn prepare(
        &self,
        route: &VipRoute,
        vip: IpAddr,
        resolve: bool,
    ) -> Result<Steering, String> {
        let steering = |source| Steering {
            mark: check_mark(route.slot),
            source,
        };
        let cached = {
            let inner = self.inner();
            inner.known.get(&route.slot).and_then(|known| {
                let fresh =
                    known.route == *route && !resolve && known.resolved.elapsed() < ROUTE_LIFETIME;
                fresh.then_some((known.hop, known.source))
            })
        };
        if let Some((hop, source)) = cached {
            let now = self.neighbours.borrow().refresh(route.backend, &hop);
            if now != hop {
                self.write(route, now, source, None)?;
            }
            return Ok(steering(source));
        }
        let on_link = route.forward == ForwardMode::Dsr;
        let hop = nexthop::resolve(route.backend, on_link, NEXT_HOP_WAIT)
            .await
            .map_err(|error| Chain(&error).to_string())?;
        let source = source_address(hop.ifindex, vip);
        self.write(route, hop, source, Some(Instant::now()))?;
        Ok(steering(source))
    }

    /// Writes the slot's path (if it changed) and remembers it.
    fn write(
        &self,
        route: &VipRoute,
        hop: NextHop,
        source: Option<IpAddr>,
        resolved: Option<Instant>,
    ) -> Result<(), String> {
        let (addr, family) = addr_bytes(route.backend);
        let path = CheckPath {
            addr,
            family: family as u8,
            forward: route.forward as u8,
            _pad: [0; 2],
            ifindex: hop.ifindex,
            mtu: hop.mtu,
            macs: CheckPath::macs(hop.dst_mac, hop.src_mac),
        };
        let mut inner = self.inner();
        let unchanged = inner.known.get(&route.slot).is_some_and(|known| {
            known.route == *route && known.hop == hop && known.source == source
        });
        if !unchanged {
            inner
                .paths
                .set(route.slot, path, 0)
                .map_err(|error| format!("cannot write the check path: {error}"))?;
        }
        let resolved = resolved
            .or_else(|| inner.known.get(&route.slot).map(|known| known.resolved))
            .unwrap_or_else(Instant::now);
        inner.known.insert(
            route.slot,
            Known {
                route: *route,
                hop,
                source,
                resolved,
            },
        );
        Ok(())
    }

    /// What `steer_check` counted, summed over CPUs.
    pub fn counts(&self) -> Vec<(CheckCounter, u64)> {
        check_counts(&self.stats).unwrap_or_default()
    }
}

/// Sets up VIP-path checks: the check interface, `steer_check` on its egress, the paths.
pub async fn set_up(
    datapath: &mut crate::datapath::Datapath,
    neighbours: watch::Receiver<Arc<Snapshot>>,
) -> anyhow::Result<(Arc<CheckPaths>, interface::CheckInterface)> {
    use anyhow::Context as _;
    let interface = interface::CheckInterface::create()
        .await
        .context("setting up the check interface")?;
    let attached = datapath
        .attach_check_steering(interface::CHECK_INTERFACE)
        .and_then(|()| datapath.take_check_maps());
    match attached {
        Ok(maps) => Ok((Arc::new(CheckPaths::new(maps, neighbours)), interface)),
        Err(error) => {
            interface.remove().await;
            Err(error).context("attaching the check steering program")
        }
    }
}

/// An address of interface `ifindex` of `vip`'s family (not link-local), for the backend to
/// answer to; `None`: the kernel chooses.
fn source_address(ifindex: u32, vip: IpAddr) -> Option<IpAddr> {
    let addresses = Netlink::open().ok()?.addresses(ifindex).ok()?;
    addresses.into_iter().find(|address| match (address, vip) {
        (IpAddr::V4(_), IpAddr::V4(_)) => true,
        (IpAddr::V6(a), IpAddr::V6(_)) => !a.is_unicast_link_local() && !a.is_loopback(),
        _ => false,
    })
}
