//! Next-hop resolution for backends: which interface a backend is reached by, that interface's
//! MAC and MTU, and the MAC of the backend (or of its gateway), resolved through the kernel's
//! routing and neighbour tables (ARP / ND) before the backend enters a ring. The datapath then
//! needs no FIB lookup per packet.
//!
//! Next hops in use are kept current from a [`Snapshot`] of the neighbour and link tables,
//! which the agent's reader updates from the kernel's announcements, so a backend whose MAC
//! changes while it stays healthy (a replaced machine, a migrated VM announcing itself by
//! gratuitous ARP / unsolicited NA) is followed instead of black-holed.
//!
//! The tables are read over rtnetlink ([`crate::netlink`]).

use std::{collections::HashMap, net::IpAddr, time::Duration};

use tokio::time::Instant;

use crate::netlink::{Change, Link, LinkId, Neighbour, Netlink, NetlinkError};

/// How long to wait before looking at a neighbour being resolved again: doubling from
/// [`FIRST_LOOK_AGAIN`] (an answering neighbour on a LAN takes about a millisecond) up to
/// [`LOOK_AGAIN`] (a silent one costs 50 lookups a second).
const FIRST_LOOK_AGAIN: Duration = Duration::from_millis(1);
/// See [`FIRST_LOOK_AGAIN`].
const LOOK_AGAIN: Duration = Duration::from_millis(20);

/// Where to send a backend's packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    /// Its MTU.
    pub mtu: u32,
    /// Its MAC (the forwarded frame's source).
    pub src_mac: [u8; 6],
    /// The backend's MAC, or its gateway's (the forwarded frame's destination).
    pub dst_mac: [u8; 6],
    /// The gateway, if the backend is not on-link.
    pub gateway: Option<IpAddr>,
}

/// Why a backend has no usable next hop.
#[derive(Debug, thiserror::Error)]
pub enum NextHopError {
    /// The kernel has no route to the backend (or the lookup failed).
    #[error("no route to {backend}")]
    NoRoute {
        /// The backend.
        backend: IpAddr,
        /// The lookup's error.
        #[source]
        source: NetlinkError,
    },
    /// The backend is an address of this host.
    #[error("{backend} is an address of this host")]
    Local {
        /// The backend.
        backend: IpAddr,
    },
    /// DSR needs the backend on a directly attached network.
    #[error("{backend} is reached via gateway {gateway}: dsr needs backends on a directly attached network (use forward = \"tunnel\")")]
    NotOnLink {
        /// The backend.
        backend: IpAddr,
        /// The route's gateway.
        gateway: IpAddr,
    },
    /// ARP / ND did not answer in time.
    #[error("{neighbor} (next hop of {backend}) did not answer ARP/ND within {waited:?}")]
    Unresolved {
        /// The backend.
        backend: IpAddr,
        /// The address resolved (backend or gateway).
        neighbor: IpAddr,
        /// How long we waited.
        waited: Duration,
    },
    /// Reading the egress interface or the neighbour table failed.
    #[error("cannot read the next hop of {backend}")]
    Netlink {
        /// The backend.
        backend: IpAddr,
        /// The request's error.
        #[source]
        source: NetlinkError,
    },
}

/// What next hops use of the kernel's neighbour and link tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Usable neighbour MACs by (address, interface index).
    neighbours: HashMap<(IpAddr, u32), [u8; 6]>,
    /// (MTU, MAC) by interface index.
    links: HashMap<u32, (u32, [u8; 6])>,
}

impl Snapshot {
    /// Reads both tables (two dumps, however many backends).
    pub fn take() -> Result<Self, NetlinkError> {
        let mut netlink = Netlink::open()?;
        let links = netlink.links()?;
        let neighbours = netlink.neighbours()?;
        Ok(Self::from_tables(&links, &neighbours))
    }

    /// The snapshot of these tables.
    pub fn from_tables(links: &[Link], neighbours: &[Neighbour]) -> Self {
        let mut snapshot = Self::default();
        for link in links {
            snapshot.apply(&Change::Link(link.clone()));
        }
        for neighbour in neighbours {
            snapshot.apply(&Change::Neighbour(*neighbour));
        }
        snapshot
    }

    /// Follows one announced change; whether anything a next hop uses changed (a neighbour
    /// entry moving between its many states with the same MAC changes nothing).
    pub fn apply(&mut self, change: &Change) -> bool {
        match change {
            Change::Link(link) => {
                let facts = (link.mtu, link.mac.unwrap_or_default());
                self.links.insert(link.index, facts) != Some(facts)
            }
            Change::LinkRemoved { index } => {
                let before = self.neighbours.len();
                self.neighbours.retain(|(_, ifindex), _| ifindex != index);
                self.links.remove(index).is_some() || self.neighbours.len() != before
            }
            Change::Neighbour(neighbour) => {
                let key = (neighbour.address, neighbour.ifindex);
                match neighbour.usable_mac() {
                    Some(mac) => self.neighbours.insert(key, mac) != Some(mac),
                    None => self.neighbours.remove(&key).is_some(),
                }
            }
            Change::NeighbourRemoved { address, ifindex } => {
                self.neighbours.remove(&(*address, *ifindex)).is_some()
            }
        }
    }

    /// `hop` (of `backend`) as the tables now describe it: the neighbour's MAC and the egress
    /// interface's MTU and MAC. A neighbour or interface missing from the tables leaves its part
    /// unchanged: health checks decide about backends that stopped answering.
    pub fn refresh(&self, backend: IpAddr, hop: &NextHop) -> NextHop {
        let mut fresh = *hop;
        if let Some(mac) = self
            .neighbours
            .get(&(hop.gateway.unwrap_or(backend), hop.ifindex))
        {
            fresh.dst_mac = *mac;
        }
        if let Some((mtu, mac)) = self.links.get(&hop.ifindex) {
            fresh.mtu = *mtu;
            fresh.src_mac = *mac;
        }
        fresh
    }
}

/// Resolves the next hop of `backend`, asking the kernel to resolve its MAC (ARP/ND) if it
/// does not know it, and waiting up to `wait` for the answer. `on_link`: the backend must be
/// directly attached (DSR).
pub async fn resolve(
    backend: IpAddr,
    on_link: bool,
    wait: Duration,
) -> Result<NextHop, NextHopError> {
    let netlink_error = |source| NextHopError::Netlink { backend, source };
    let mut netlink = Netlink::open().map_err(netlink_error)?;
    let route = netlink
        .route_to(backend)
        .map_err(|source| NextHopError::NoRoute { backend, source })?;
    let link = netlink
        .link(LinkId::Index(route.ifindex))
        .map_err(netlink_error)?;
    if route.local || link.loopback {
        return Err(NextHopError::Local { backend });
    }
    if let (true, Some(gateway)) = (on_link, route.gateway) {
        return Err(NextHopError::NotOnLink { backend, gateway });
    }
    let neighbor = route.gateway.unwrap_or(backend);
    let deadline = Instant::now() + wait;
    let mut asked = false;
    let mut pause = FIRST_LOOK_AGAIN;
    loop {
        let known = netlink
            .neighbour(neighbor, link.index)
            .map_err(netlink_error)?;
        if let Some(dst_mac) = known.and_then(|entry| entry.usable_mac()) {
            return Ok(NextHop {
                ifindex: link.index,
                mtu: link.mtu,
                src_mac: link.mac.unwrap_or_default(),
                dst_mac,
                gateway: route.gateway,
            });
        }
        if Instant::now() >= deadline {
            return Err(NextHopError::Unresolved {
                backend,
                neighbor,
                waited: wait,
            });
        }
        if !asked {
            netlink
                .request_resolution(neighbor, link.index)
                .map_err(netlink_error)?;
            asked = true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LOOK_AGAIN);
    }
}

/// Formats `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::NeighbourState;

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
        assert_eq!(format_mac(&[2, 0, 10, 255, 0, 1]), "02:00:0a:ff:00:01");
    }

    fn link(index: u32, mtu: u32, mac: [u8; 6]) -> Link {
        Link {
            index,
            name: format!("eth{index}"),
            mtu,
            mac: Some(mac),
            loopback: false,
            xdp: None,
        }
    }

    fn neighbour(address: &str, mac: Option<[u8; 6]>, state: NeighbourState) -> Neighbour {
        Neighbour {
            address: address.parse().expect("ip"),
            ifindex: 7,
            mac,
            state,
        }
    }

    fn hop(dst: u8, gateway: Option<&str>) -> NextHop {
        NextHop {
            ifindex: 7,
            mtu: 1500,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, dst, 1],
            gateway: gateway.map(|g| g.parse().expect("gateway")),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn a_snapshot_follows_a_changed_neighbour_and_link() {
        let links = [link(1, 65536, [0; 6]), link(7, 9000, [2, 0, 0, 0, 0, 7])];
        let neighbours = [
            neighbour(
                "10.0.0.11",
                Some([2, 0, 0, 0, 0xb, 2]),
                NeighbourState::Stale,
            ),
            neighbour(
                "10.0.0.12",
                Some([2, 0, 0, 0, 0xc, 2]),
                NeighbourState::Failed,
            ),
            neighbour(
                "10.0.0.1",
                Some([2, 0, 0, 0, 1, 2]),
                NeighbourState::Reachable,
            ),
            neighbour("fd00::1", None, NeighbourState::Incomplete),
        ];
        let snapshot = Snapshot::from_tables(&links, &neighbours);
        // On-link backend: its own entry; the interface's MTU and MAC.
        let fresh = snapshot.refresh(ip("10.0.0.11"), &hop(0xb, None));
        assert_eq!(
            (fresh.dst_mac, fresh.mtu, fresh.src_mac),
            ([2, 0, 0, 0, 0xb, 2], 9000, [2, 0, 0, 0, 0, 7])
        );
        // Behind a gateway: the gateway's entry.
        assert_eq!(
            snapshot
                .refresh(ip("10.9.0.5"), &hop(1, Some("10.0.0.1")))
                .dst_mac,
            [2, 0, 0, 0, 1, 2]
        );
        // A failed or missing entry leaves the MAC alone (health checks decide).
        assert_eq!(
            snapshot.refresh(ip("10.0.0.12"), &hop(0xc, None)).dst_mac,
            [2, 0, 0, 0, 0xc, 1]
        );
        assert_eq!(
            snapshot.refresh(ip("10.0.0.13"), &hop(0xd, None)).dst_mac,
            [2, 0, 0, 0, 0xd, 1]
        );
    }

    #[test]
    fn only_changes_a_next_hop_uses_count() {
        let mut snapshot = Snapshot::from_tables(
            &[link(7, 1500, [2, 0, 0, 0, 0, 7])],
            &[neighbour(
                "10.0.0.11",
                Some([2, 0, 0, 0, 0xb, 1]),
                NeighbourState::Reachable,
            )],
        );
        // The entry ages with the same MAC: nothing to do.
        let stale = neighbour(
            "10.0.0.11",
            Some([2, 0, 0, 0, 0xb, 1]),
            NeighbourState::Stale,
        );
        assert!(!snapshot.apply(&Change::Neighbour(stale)));
        // A new MAC (gratuitous ARP): followed.
        let moved = neighbour(
            "10.0.0.11",
            Some([2, 0, 0, 0, 0xb, 2]),
            NeighbourState::Stale,
        );
        assert!(snapshot.apply(&Change::Neighbour(moved)));
        assert_eq!(
            snapshot.refresh(ip("10.0.0.11"), &hop(0xb, None)).dst_mac,
            [2, 0, 0, 0, 0xb, 2]
        );
        // Being probed again, then failed: the last MAC stays (health checks decide).
        let probing = neighbour(
            "10.0.0.11",
            Some([2, 0, 0, 0, 0xb, 2]),
            NeighbourState::Probe,
        );
        assert!(!snapshot.apply(&Change::Neighbour(probing)));
        let failed = neighbour("10.0.0.11", None, NeighbourState::Failed);
        assert!(snapshot.apply(&Change::Neighbour(failed)));
        assert_eq!(
            snapshot.refresh(ip("10.0.0.11"), &hop(0xb, None)).dst_mac,
            [2, 0, 0, 0, 0xb, 1]
        );
        // The interface's MTU changes; its state alone does not.
        assert!(!snapshot.apply(&Change::Link(link(7, 1500, [2, 0, 0, 0, 0, 7]))));
        assert!(snapshot.apply(&Change::Link(link(7, 9000, [2, 0, 0, 0, 0, 7]))));
        assert_eq!(snapshot.refresh(ip("10.0.0.11"), &hop(0xb, None)).mtu, 9000);
        // A removed interface takes its neighbours with it.
        let again = neighbour(
            "10.0.0.11",
            Some([2, 0, 0, 0, 0xb, 3]),
            NeighbourState::Reachable,
        );
        assert!(snapshot.apply(&Change::Neighbour(again)));
        assert!(snapshot.apply(&Change::LinkRemoved { index: 7 }));
        assert_eq!(snapshot, Snapshot::default());
        assert!(!snapshot.apply(&Change::NeighbourRemoved {
            address: ip("10.0.0.11"),
            ifindex: 7
        }));
    }

    #[tokio::test]
    async fn loopback_addresses_are_local() {
        let error = resolve(
            "127.0.0.1".parse().expect("ip"),
            true,
            Duration::from_millis(10),
        )
        .await;
        assert!(
            matches!(error, Err(NextHopError::Local { .. })),
            "{error:?}"
        );
    }
}
