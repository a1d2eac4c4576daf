//! The one way lb reads the kernel's network tables: rtnetlink (the `rtnetlink` family of
//! crates), in the calling thread's network namespace. No `ip` subprocess, no getifaddrs, and
//! no datagram sent to provoke ARP.
//!
//! - [`Netlink`]: requests, each answered at once by the kernel: the route to an address (`ip
//!   route get`), a link by index or name (MTU, MAC, attached XDP program), an interface's
//!   addresses, the neighbour table and one neighbour, and [`Netlink::request_resolution`],
//!   which makes the kernel resolve a neighbour (ARP / ND) as if a packet needed it.
//! - [`Subscription`]: the kernel's announcements of link and neighbour changes, so that the
//!   agent follows a backend's new MAC without polling.
//! - `facts`: the pure conversions from messages to [`Route`], [`Link`], [`Neighbour`] and
//!   [`Change`].

mod facts;
mod socket;
mod subscription;

use std::{fmt, io, net::IpAddr};

use netlink_packet_route::{
    address::AddressMessage,
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage},
    AddressFamily, RouteNetlinkMessage,
};
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP};

pub use facts::{Change, Link, Neighbour, Route, XdpAttachment, XdpProgram};
pub use netlink_packet_route::neighbour::NeighbourState;
pub use socket::ExchangeError;
pub use subscription::{Event, Subscription};

use socket::RequestSocket;

/// A request to the kernel, as errors name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The route to an address.
    RouteTo(IpAddr),
    /// One link.
    Link(LinkId),
    /// Every link.
    Links,
    /// Every address of every interface.
    Addresses,
    /// Every neighbour.
    Neighbours,
    /// One neighbour.
    Neighbour {
        /// Its address.
        address: IpAddr,
        /// Its interface.
        ifindex: u32,
    },
    /// The resolution of a neighbour (ARP / ND).
    Resolution {
        /// Its address.
        address: IpAddr,
        /// Its interface.
        ifindex: u32,
    },
    /// The announcements of a [`Subscription`].
    Changes,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RouteTo(address) => write!(f, "looking up the route to {address}"),
            Self::Link(link) => write!(f, "reading link {link}"),
            Self::Links => write!(f, "reading the link table"),
            Self::Addresses => write!(f, "reading the interfaces' addresses"),
            Self::Neighbours => write!(f, "reading the neighbour table"),
            Self::Neighbour { address, ifindex } => {
                write!(f, "looking up neighbour {address} on interface {ifindex}")
            }
            Self::Resolution { address, ifindex } => {
                write!(f, "asking to resolve {address} on interface {ifindex}")
            }
            Self::Changes => write!(f, "receiving link and neighbour changes"),
        }
    }
}

/// A link, by index or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkId {
    /// Its index.
    Index(u32),
    /// Its name.
    Name(String),
}

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Index(index) => write!(f, "{index}"),
            Self::Name(name) => write!(f, "{name}"),
        }
    }
}

/// A netlink request that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened.
    #[error("cannot open a netlink socket")]
    Socket(#[source] io::Error),
    /// The request failed (the cause says whether the kernel refused it).
    #[error("netlink: {request}")]
    Request {
        /// What was asked.
        request: Request,
        /// Why it failed.
        #[source]
        source: ExchangeError,
    },
    /// The kernel acknowledged a lookup without answering it.
    #[error("netlink: {request}: the kernel sent no answer")]
    NoAnswer {
        /// What was asked.
        request: Request,
    },
}

impl NetlinkError {
    /// The errno the kernel refused the request with, if it did (`ENODEV`: no such link).
    pub fn refused_with(&self) -> Option<i32> {
        match self {
            Self::Request { source, .. } => source.refused_with(),
            Self::Socket(_) | Self::NoAnswer { .. } => None,
        }
    }
}

/// A netlink socket for requests (blocking: the kernel answers while handling them).
pub struct Netlink {
    socket: RequestSocket,
}

impl Netlink {
    /// Opens the socket, in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        Ok(Self {
            socket: RequestSocket::open().map_err(NetlinkError::Socket)?,
        })
    }

    /// The route the kernel would take to `address` (`ip route get`).
    #[expect(
        clippy::wildcard_enum_match_arm,
        reason = "rtnetlink's message enum is large and open: a route lookup answers one kind"
    )]
    pub fn route_to(&mut self, address: IpAddr) -> Result<Route, NetlinkError> {
        let request = Request::RouteTo(address);
        let answers = self.exchange(
            &request,
            RouteNetlinkMessage::GetRoute(route_query(address)),
            0,
        )?;
        answers
            .iter()
            .find_map(|answer| match answer {
                RouteNetlinkMessage::NewRoute(route) => facts::route(route),
                _ => None,
            })
            .ok_or(NetlinkError::NoAnswer { request })
    }

    /// One link, by index or name.
    pub fn link(&mut self, link: LinkId) -> Result<Link, NetlinkError> {
        let mut query = LinkMessage::default();
        match &link {
            LinkId::Index(index) => query.header.index = *index,
            LinkId::Name(name) => query.attributes.push(LinkAttribute::IfName(name.clone())),
        }
        let request = Request::Link(link);
        let answers = self.exchange(&request, RouteNetlinkMessage::GetLink(query), 0)?;
        answers
            .iter()
            .find_map(new_link)
            .ok_or(NetlinkError::NoAnswer { request })
    }

    /// Every link.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let query = RouteNetlinkMessage::GetLink(LinkMessage::default());
        let answers = self.exchange(&Request::Links, query, NLM_F_DUMP)?;
        Ok(answers.iter().filter_map(new_link).collect())
    }

    /// The IPv4 and IPv6 addresses of interface `ifindex`, in the kernel's order (IPv4 first).
    #[expect(
        clippy::wildcard_enum_match_arm,
        reason = "rtnetlink's message enum is large and open: an address dump answers one kind"
    )]
    pub fn addresses(&mut self, ifindex: u32) -> Result<Vec<IpAddr>, NetlinkError> {
        let query = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let answers = self.exchange(&Request::Addresses, query, NLM_F_DUMP)?;
        Ok(answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewAddress(address) => facts::address(address),
                _ => None,
            })
            .filter(|(index, _)| *index == ifindex)
            .map(|(_, address)| address)
            .collect())
    }

    /// The neighbour table (IPv4 and IPv6, every interface, every state).
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetlinkError> {
        let query = RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default());
        let answers = self.exchange(&Request::Neighbours, query, NLM_F_DUMP)?;
        Ok(answers.iter().filter_map(new_neighbour).collect())
    }

    /// The neighbour entry of `address` on interface `ifindex`, if there is one (whatever its
    /// state: [`Neighbour::usable_mac`] says whether a packet would use it).
    pub fn neighbour(
        &mut self,
        address: IpAddr,
        ifindex: u32,
    ) -> Result<Option<Neighbour>, NetlinkError> {
        let request = Request::Neighbour { address, ifindex };
        let query = RouteNetlinkMessage::GetNeighbour(neighbour_query(address, ifindex));
        match self.exchange(&request, query, 0) {
            Ok(answers) => Ok(answers.iter().find_map(new_neighbour)),
            Err(error) if error.refused_with() == Some(libc::ENOENT) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Asks the kernel to resolve `address` on interface `ifindex` (ARP for IPv4, ND for IPv6)
    /// as if a packet were waiting for it: an RTM_NEWNEIGH with `NTF_USE` (`ip neigh replace
    /// ADDRESS dev DEV use`) creates the entry if needed and starts its probes; its MAC then
    /// appears in the neighbour table (and on the [`Subscription`]).
    ///
    /// Only for an entry without a usable MAC: since Linux 5.16, `NTF_USE` also clears the
    /// `PERMANENT` state of an existing entry, and an operator's static entry must stay.
    /// For IPv6, the kernel solicits from the interface's link-local address, and sends
    /// nothing while that address is tentative (duplicate address detection, a second or two
    /// after the link comes up); its next probe, a second later, goes out.
    pub fn request_resolution(
        &mut self,
        address: IpAddr,
        ifindex: u32,
    ) -> Result<(), NetlinkError> {
        let request = Request::Resolution { address, ifindex };
        let message = RouteNetlinkMessage::NewNeighbour(resolution_request(address, ifindex));
        self.exchange(&request, message, NLM_F_ACK | NLM_F_CREATE)
            .map(drop)
    }

    fn exchange(
        &mut self,
        request: &Request,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.socket
            .exchange(message, flags)
            .map_err(|source| NetlinkError::Request {
                request: request.clone(),
                source,
            })
    }
}

fn new_link(answer: &RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(link) = answer else {
        return None;
    };
    facts::link(link)
}

fn new_neighbour(answer: &RouteNetlinkMessage) -> Option<Neighbour> {
    let RouteNetlinkMessage::NewNeighbour(entry) = answer else {
        return None;
    };
    facts::neighbour(entry)
}

fn family(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// RTM_GETROUTE for `address` (a host route lookup).
fn route_query(address: IpAddr) -> RouteMessage {
    let mut query = RouteMessage::default();
    query.header.address_family = family(address);
    query.header.destination_prefix_length = if address.is_ipv4() { 32 } else { 128 };
    query
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(address)));
    query
}

fn neighbour_address(address: IpAddr) -> NeighbourAttribute {
    NeighbourAttribute::Destination(match address {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    })
}

/// RTM_GETNEIGH for one entry (state, type and flags zero: the kernel rejects anything else).
fn neighbour_query(address: IpAddr, ifindex: u32) -> NeighbourMessage {
    let mut query = NeighbourMessage::default();
    query.header.family = family(address);
    query.header.ifindex = ifindex;
    query.attributes.push(neighbour_address(address));
    query
}

/// RTM_NEWNEIGH with `NTF_USE` and no state (sent with `NLM_F_CREATE`, without
/// `NLM_F_EXCL`: an existing entry is probed again, a missing one created).
fn resolution_request(address: IpAddr, ifindex: u32) -> NeighbourMessage {
    let mut message = neighbour_query(address, ifindex);
    message.header.flags = NeighbourFlags::Use;
    message.header.state = NeighbourState::None;
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolution_request_uses_the_entry_without_setting_a_state() {
        let message = resolution_request("10.0.0.11".parse().expect("ip"), 7);
        assert_eq!(message.header.flags, NeighbourFlags::Use);
        assert_eq!(message.header.state, NeighbourState::None);
        assert_eq!(message.header.family, AddressFamily::Inet);
        assert_eq!(message.header.ifindex, 7);
        assert_eq!(
            message.attributes,
            [neighbour_address("10.0.0.11".parse().expect("ip"))]
        );
        assert!(
            message
                .attributes
                .iter()
                .all(|attribute| !matches!(attribute, NeighbourAttribute::LinkLayerAddress(_))),
            "no MAC: the kernel finds it"
        );
    }

    #[test]
    fn a_route_query_asks_for_the_host_route() {
        let query = route_query("fd00::5".parse().expect("ip"));
        assert_eq!(query.header.address_family, AddressFamily::Inet6);
        assert_eq!(query.header.destination_prefix_length, 128);
    }

    #[test]
    fn errors_name_the_request() {
        let error = NetlinkError::Request {
            request: Request::Neighbour {
                address: "10.0.0.11".parse().expect("ip"),
                ifindex: 7,
            },
            source: ExchangeError::Refused(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        assert_eq!(
            crate::error::Chain(&error).to_string(),
            format!(
                "netlink: looking up neighbour 10.0.0.11 on interface 7: the kernel refused: {}",
                io::Error::from_raw_os_error(libc::EINVAL)
            )
        );
        assert_eq!(error.refused_with(), Some(libc::EINVAL));
    }
}
