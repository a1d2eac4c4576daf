//! Facts about this host's network interfaces (in the calling thread's network namespace): an
//! interface's index, its addresses, and the XDP mode of the program attached to it.

use std::net::IpAddr;

use aya::programs::XdpMode;

/// An interface that cannot be looked up.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    /// No interface of that name.
    #[error("interface {interface} not found")]
    NotFound {
        /// Interface name.
        interface: String,
        /// The lookup's error.
        #[source]
        source: nix::Error,
    },
    /// Listing addresses failed.
    #[error("cannot list the addresses of {interface}")]
    Addresses {
        /// Interface name.
        interface: String,
        /// The error.
        #[source]
        source: nix::Error,
    },
}

/// The index of `interface`.
pub fn index(interface: &str) -> Result<u32, InterfaceError> {
    nix::net::if_::if_nametoindex(interface).map_err(|source| InterfaceError::NotFound {
        interface: interface.to_owned(),
        source,
    })
}

/// Every address of `interface` the kernel lists (IP and link-layer).
fn listed(interface: &str) -> Result<Vec<nix::sys::socket::SockaddrStorage>, InterfaceError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|source| InterfaceError::Addresses {
        interface: interface.to_owned(),
        source,
    })?;
    Ok(addrs
        .filter(|ifaddr| ifaddr.interface_name == interface)
        .filter_map(|ifaddr| ifaddr.address)
        .collect())
}

/// Every IPv4 and IPv6 address of `interface`.
pub fn addresses(interface: &str) -> Result<Vec<IpAddr>, InterfaceError> {
    Ok(listed(interface)?
        .into_iter()
        .filter_map(|address| {
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect())
}

/// The MAC address of `interface` (`None` for an interface without one, like `lo`).
pub fn mac(interface: &str) -> Result<Option<[u8; 6]>, InterfaceError> {
    Ok(listed(interface)?
        .into_iter()
        .find_map(|address| address.as_link_addr()?.addr()))
}

/// The mode of the XDP program attached to `interface`, as the kernel reports it
/// (`ip -j link show`: 1 native, 2 generic, 3 offloaded); `None` if unknown.
pub fn attached_xdp_mode(interface: &str) -> Option<XdpMode> {
    let output = std::process::Command::new("ip")
        .args(["-j", "link", "show", "dev", interface])
        .output()
        .ok()?;
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    match links.get(0)?.get("xdp")?.get("mode")?.as_u64()? {
        1 => Some(XdpMode::Driver),
        2 => Some(XdpMode::Skb),
        3 => Some(XdpMode::Hardware),
        _ => None,
    }
}
