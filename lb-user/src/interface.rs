//! Facts about this host's network interfaces (in the calling thread's network namespace), read
//! over rtnetlink ([`crate::netlink`]): an interface's index, its addresses, its MAC, and the
//! XDP program attached to it.

use std::net::IpAddr;

use aya::programs::XdpMode;

use crate::netlink::{Link, LinkId, Netlink, NetlinkError, XdpAttachment};

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
        source: NetlinkError,
    },
    /// Reading the interface or its addresses failed.
    #[error("cannot read interface {interface} from the kernel")]
    Netlink {
        /// Interface name.
        interface: String,
        /// The error.
        #[source]
        source: NetlinkError,
    },
}

/// `interface` as the kernel describes it, and the socket that read it.
fn lookup(interface: &str) -> Result<(Link, Netlink), InterfaceError> {
    let failed = |source: NetlinkError| {
        if source.refused_with() == Some(libc::ENODEV) {
            InterfaceError::NotFound {
                interface: interface.to_owned(),
                source,
            }
        } else {
            InterfaceError::Netlink {
                interface: interface.to_owned(),
                source,
            }
        }
    };
    let mut netlink = Netlink::open().map_err(failed)?;
    let link = netlink
        .link(LinkId::Name(interface.to_owned()))
        .map_err(failed)?;
    Ok((link, netlink))
}

/// The index of `interface`.
pub fn index(interface: &str) -> Result<u32, InterfaceError> {
    Ok(lookup(interface)?.0.index)
}

/// Every IPv4 and IPv6 address of `interface` (IPv4 first, each family in the kernel's order).
pub fn addresses(interface: &str) -> Result<Vec<IpAddr>, InterfaceError> {
    let (link, mut netlink) = lookup(interface)?;
    netlink
        .addresses(link.index)
        .map_err(|source| InterfaceError::Netlink {
            interface: interface.to_owned(),
            source,
        })
}

/// The MAC address of `interface` (`None` for an interface without one, like a tunnel).
pub fn mac(interface: &str) -> Result<Option<[u8; 6]>, InterfaceError> {
    Ok(lookup(interface)?.0.mac)
}

/// The mode of the XDP program attached to `interface`, as the kernel reports it; `None` if
/// none is, or several are, or the interface cannot be read.
pub fn attached_xdp_mode(interface: &str) -> Option<XdpMode> {
    match lookup(interface).ok()?.0.xdp?.attachment {
        XdpAttachment::Driver => Some(XdpMode::Driver),
        XdpAttachment::Generic => Some(XdpMode::Skb),
        XdpAttachment::Hardware => Some(XdpMode::Hardware),
        XdpAttachment::Multiple => None,
    }
}

/// The kernel id of the XDP program attached to `interface`, if any.
pub fn attached_xdp_program(interface: &str) -> Option<u32> {
    lookup(interface).ok()?.0.xdp?.id
}
