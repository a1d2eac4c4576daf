//! Next-hop resolution for backends: which interface a backend is reached by, that interface's
//! MAC and MTU, and the MAC of the backend (or of its gateway), resolved through the kernel's
//! routing and neighbour tables (ARP / ND) before the backend enters a ring. The datapath then
//! needs no FIB lookup per packet.
//!
//! Next hops in use are re-checked against a [`Snapshot`] of the neighbour and link tables every
//! second (two commands however many backends), so a backend whose MAC changes while it stays
//! healthy (a replaced machine, a migrated VM announcing itself by gratuitous ARP / unsolicited
//! NA) is followed instead of black-holed.
//!
//! The tables are read with iproute2's JSON output (`ip -j`), present on every Linux gateway.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use serde::Deserialize;
use tokio::{process::Command, time::Instant};

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
    /// No route, or `ip` failed.
    #[error("no route to {backend}: {message}")]
    NoRoute {
        /// The backend.
        backend: IpAddr,
        /// What `ip route get` said.
        message: String,
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
    /// Running or parsing `ip` failed.
    #[error("`ip {args}`: {message}")]
    Command {
        /// The arguments.
        args: String,
        /// What went wrong.
        message: String,
    },
}

#[derive(Deserialize)]
struct Route {
    dev: String,
    gateway: Option<IpAddr>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Link {
    ifindex: u32,
    #[serde(default)]
    ifname: String,
    mtu: u32,
    address: Option<String>,
}

#[derive(Deserialize)]
struct Neighbour {
    #[serde(default)]
    dst: Option<IpAddr>,
    #[serde(default)]
    dev: String,
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

impl Neighbour {
    /// The MAC, unless the entry is being resolved or failed to resolve.
    fn usable_mac(&self) -> Option<[u8; 6]> {
        let unusable = self
            .state
            .iter()
            .any(|s| s == "FAILED" || s == "INCOMPLETE");
        if unusable {
            None
        } else {
            self.lladdr.as_deref().and_then(parse_mac)
        }
    }
}

/// The kernel's neighbour and link tables at one instant.
pub struct Snapshot {
    /// Usable neighbour MACs by (address, interface index).
    neighbours: HashMap<(IpAddr, u32), [u8; 6]>,
    /// (MTU, MAC) by interface index.
    links: HashMap<u32, (u32, [u8; 6])>,
}

impl Snapshot {
    /// Reads both tables (`ip -j link show`, `ip -j neigh show`).
    pub async fn take() -> Result<Self, NextHopError> {
        let links: Vec<Link> = ip_json(&["link", "show"]).await?;
        let neighbours: Vec<Neighbour> = ip_json(&["neigh", "show"]).await?;
        Ok(Self::from_tables(&links, &neighbours))
    }

    fn from_tables(links: &[Link], neighbours: &[Neighbour]) -> Self {
        let ifindex: HashMap<&str, u32> = links
            .iter()
            .map(|l| (l.ifname.as_str(), l.ifindex))
            .collect();
        Self {
            neighbours: neighbours
                .iter()
                .filter_map(|n| Some(((n.dst?, *ifindex.get(n.dev.as_str())?), n.usable_mac()?)))
                .collect(),
            links: links
                .iter()
                .map(|l| {
                    (
                        l.ifindex,
                        (
                            l.mtu,
                            l.address.as_deref().and_then(parse_mac).unwrap_or_default(),
                        ),
                    )
                })
                .collect(),
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
    let address = backend.to_string();
    let routes: Vec<Route> =
        ip_json(&["route", "get", &address])
            .await
            .map_err(|e| NextHopError::NoRoute {
                backend,
                message: e.to_string(),
            })?;
    let route = routes.into_iter().next().ok_or(NextHopError::NoRoute {
        backend,
        message: "empty answer".into(),
    })?;
    if route.kind.as_deref() == Some("local") || route.dev == "lo" {
        return Err(NextHopError::Local { backend });
    }
    if let (true, Some(gateway)) = (on_link, route.gateway) {
        return Err(NextHopError::NotOnLink { backend, gateway });
    }
    let links: Vec<Link> = ip_json(&["link", "show", "dev", &route.dev]).await?;
    let link = links
        .into_iter()
        .next()
        .ok_or_else(|| NextHopError::Command {
            args: format!("link show dev {}", route.dev),
            message: "empty answer".into(),
        })?;
    let src_mac = link
        .address
        .as_deref()
        .and_then(parse_mac)
        .unwrap_or_default();
    let neighbor = route.gateway.unwrap_or(backend);
    let deadline = Instant::now() + wait;
    let mut kicked = false;
    loop {
        if let Some(dst_mac) = neighbour_mac(neighbor, &route.dev).await? {
            return Ok(NextHop {
                ifindex: link.ifindex,
                mtu: link.mtu,
                src_mac,
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
        if !kicked {
            kick_resolution(neighbor).await;
            kicked = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The MAC the kernel knows for `neighbor` on `dev`, if it is usable.
async fn neighbour_mac(neighbor: IpAddr, dev: &str) -> Result<Option<[u8; 6]>, NextHopError> {
    let entries: Vec<Neighbour> =
        ip_json(&["neigh", "show", "to", &neighbor.to_string(), "dev", dev]).await?;
    Ok(entries.iter().find_map(Neighbour::usable_mac))
}

/// Makes the kernel resolve `neighbor`: a datagram to the discard port needs its MAC.
async fn kick_resolution(neighbor: IpAddr) {
    let bind: IpAddr = if neighbor.is_ipv4() {
        [0, 0, 0, 0].into()
    } else {
        [0u16; 8].into()
    };
    if let Ok(socket) = tokio::net::UdpSocket::bind((bind, 0)).await {
        let _ = socket
            .send_to(b"lb: resolving next hop", (neighbor, 9))
            .await;
    }
}

async fn ip_json<T: for<'de> Deserialize<'de>>(args: &[&str]) -> Result<Vec<T>, NextHopError> {
    let joined = args.join(" ");
    let output = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .await
        .map_err(|e| NextHopError::Command {
            args: joined.clone(),
            message: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(NextHopError::Command {
            args: joined,
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&output.stdout).map_err(|e| NextHopError::Command {
        args: joined,
        message: e.to_string(),
    })
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

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
        assert_eq!(format_mac(&[2, 0, 10, 255, 0, 1]), "02:00:0a:ff:00:01");
    }

    #[test]
    fn a_snapshot_follows_a_changed_neighbour_and_link() {
        let links: Vec<Link> = serde_json::from_str(
            r#"[{"ifindex":1,"ifname":"lo","mtu":65536,"address":"00:00:00:00:00:00"},
                {"ifindex":7,"ifname":"eth0","mtu":9000,"address":"02:00:00:00:00:07"}]"#,
        )
        .expect("links");
        let neighbours: Vec<Neighbour> = serde_json::from_str(
            r#"[{"dst":"10.0.0.11","dev":"eth0","lladdr":"02:00:00:00:0b:02","state":["STALE"]},
                {"dst":"10.0.0.12","dev":"eth0","lladdr":"02:00:00:00:0c:01","state":["FAILED"]},
                {"dst":"10.0.0.1","dev":"eth0","lladdr":"02:00:00:00:01:02","state":["REACHABLE"]},
                {"dst":"fd00::1","dev":"eth0","state":["INCOMPLETE"]}]"#,
        )
        .expect("neighbours");
        let snapshot = Snapshot::from_tables(&links, &neighbours);
        let hop = |dst: u8, gateway: Option<&str>| NextHop {
            ifindex: 7,
            mtu: 1500,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, dst, 1],
            gateway: gateway.map(|g| g.parse().expect("gateway")),
        };
        let ip = |text: &str| text.parse::<IpAddr>().expect("ip");
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
