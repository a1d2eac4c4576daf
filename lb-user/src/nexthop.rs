//! Next-hop resolution for backends: which interface a backend is reached by, that interface's
//! MAC and MTU, and the MAC of the backend (or of its gateway), resolved through the kernel's
//! routing and neighbour tables (ARP / ND) before the backend enters a ring. The datapath then
//! needs no FIB lookup per packet.
//!
//! The tables are read with iproute2's JSON output (`ip -j`), present on every Linux gateway.

use std::{net::IpAddr, time::Duration};

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
    mtu: u32,
    address: Option<String>,
}

#[derive(Deserialize)]
struct Neighbour {
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

/// Resolves the next hop of `backend`, asking the kernel to resolve its MAC (ARP/ND) if it
/// does not know it, and waiting up to `wait` for the answer. `on_link`: the backend must be
/// directly attached (DSR).
pub async fn resolve(backend: IpAddr, on_link: bool, wait: Duration) -> Result<NextHop, NextHopError> {
    let address = backend.to_string();
    let routes: Vec<Route> = ip_json(&["route", "get", &address])
        .await
        .map_err(|e| NextHopError::NoRoute { backend, message: e.to_string() })?;
    let route = routes.into_iter().next().ok_or(NextHopError::NoRoute { backend, message: "empty answer".into() })?;
    if route.kind.as_deref() == Some("local") || route.dev == "lo" {
        return Err(NextHopError::Local { backend });
    }
    if let (true, Some(gateway)) = (on_link, route.gateway) {
        return Err(NextHopError::NotOnLink { backend, gateway });
    }
    let links: Vec<Link> = ip_json(&["link", "show", "dev", &route.dev]).await?;
    let link = links.into_iter().next().ok_or_else(|| NextHopError::Command {
        args: format!("link show dev {}", route.dev),
        message: "empty answer".into(),
    })?;
    let src_mac = link.address.as_deref().and_then(parse_mac).unwrap_or_default();
    let neighbor = route.gateway.unwrap_or(backend);
    let deadline = Instant::now() + wait;
    let mut kicked = false;
    loop {
        if let Some(dst_mac) = neighbour_mac(neighbor, &route.dev).await? {
            return Ok(NextHop { ifindex: link.ifindex, mtu: link.mtu, src_mac, dst_mac, gateway: route.gateway });
        }
        if Instant::now() >= deadline {
            return Err(NextHopError::Unresolved { backend, neighbor, waited: wait });
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
    let entries: Vec<Neighbour> = ip_json(&["neigh", "show", "to", &neighbor.to_string(), "dev", dev]).await?;
    Ok(entries.into_iter().find_map(|entry| {
        let unusable = entry.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE");
        if unusable { None } else { entry.lladdr.as_deref().and_then(parse_mac) }
    }))
}

/// Makes the kernel resolve `neighbor`: a datagram to the discard port needs its MAC.
async fn kick_resolution(neighbor: IpAddr) {
    let bind: IpAddr = if neighbor.is_ipv4() { [0, 0, 0, 0].into() } else { [0u16; 8].into() };
    if let Ok(socket) = tokio::net::UdpSocket::bind((bind, 0)).await {
        let _ = socket.send_to(b"lb: resolving next hop", (neighbor, 9)).await;
    }
}

async fn ip_json<T: for<'de> Deserialize<'de>>(args: &[&str]) -> Result<Vec<T>, NextHopError> {
    let joined = args.join(" ");
    let output = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .await
        .map_err(|e| NextHopError::Command { args: joined.clone(), message: e.to_string() })?;
    if !output.status.success() {
        return Err(NextHopError::Command {
            args: joined,
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&output.stdout).map_err(|e| NextHopError::Command { args: joined, message: e.to_string() })
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
    }

    #[tokio::test]
    async fn loopback_addresses_are_local() {
        let error = resolve("127.0.0.1".parse().expect("ip"), true, Duration::from_millis(10)).await;
        assert!(matches!(error, Err(NextHopError::Local { .. })), "{error:?}");
    }
}
