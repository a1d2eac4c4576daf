//! What lb reads from the kernel's routing, link, address and neighbour tables, as plain values
//! converted from rtnetlink messages (pure: no socket here, unit-tested with built messages).

use std::net::IpAddr;

use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage, LinkXdp, XdpAttached},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
    AddressFamily, RouteNetlinkMessage,
};

/// The kernel's route to an address (`ip route get ADDRESS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Output interface.
    pub ifindex: u32,
    /// The gateway, if the address is not on-link.
    pub gateway: Option<IpAddr>,
    /// The address is one of this host's (a `local` route).
    pub local: bool,
}

/// How an XDP program is attached to a link (`IFLA_XDP_ATTACHED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachment {
    /// In the driver (native).
    Driver,
    /// Generic (skb) mode.
    Generic,
    /// Offloaded to the NIC.
    Hardware,
    /// Several programs in several modes.
    Multiple,
}

/// The XDP program on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpProgram {
    /// How it is attached.
    pub attachment: XdpAttachment,
    /// Its kernel id (for one attachment; with several, the native one's, else the generic
    /// one's).
    pub id: Option<u32>,
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its MAC (`None` without a 6-byte link-layer address: tunnels, `lo`'s zeros are kept).
    pub mac: Option<[u8; 6]>,
    /// The loopback interface.
    pub loopback: bool,
    /// The XDP program attached to it, if any.
    pub xdp: Option<XdpProgram>,
}

/// An entry of the neighbour table (ARP for IPv4, ND for IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// The neighbour's IP address.
    pub address: IpAddr,
    /// The interface it is reached on.
    pub ifindex: u32,
    /// Its MAC, if the entry has one.
    pub mac: Option<[u8; 6]>,
    /// The entry's state (NUD_*).
    pub state: NeighbourState,
}

impl Neighbour {
    /// The MAC, unless the entry is being resolved or failed to resolve (what a packet sent now
    /// would use).
    pub fn usable_mac(&self) -> Option<[u8; 6]> {
        let unusable = matches!(
            self.state,
            NeighbourState::Incomplete | NeighbourState::Failed
        );
        if unusable {
            None
        } else {
            self.mac
        }
    }
}

/// A change of the link or neighbour tables, as the kernel announces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A link appeared or changed (MTU, MAC, XDP, state...).
    Link(Link),
    /// A link was removed.
    LinkRemoved {
        /// Its index.
        index: u32,
    },
    /// A neighbour entry appeared or changed.
    Neighbour(Neighbour),
    /// A neighbour entry was removed.
    NeighbourRemoved {
        /// The neighbour's address.
        address: IpAddr,
        /// Its interface.
        ifindex: u32,
    },
}

/// The change `message` announces, if it is about links or IP neighbours.
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "rtnetlink's message enum is large and open: we follow two tables"
)]
pub fn change(message: &RouteNetlinkMessage) -> Option<Change> {
    match message {
        RouteNetlinkMessage::NewLink(link) => Some(Change::Link(self::link(link)?)),
        RouteNetlinkMessage::DelLink(link) => Some(Change::LinkRemoved {
            index: link.header.index,
        }),
        RouteNetlinkMessage::NewNeighbour(entry) => Some(Change::Neighbour(neighbour(entry)?)),
        RouteNetlinkMessage::DelNeighbour(entry) => {
            let Neighbour {
                address, ifindex, ..
            } = neighbour(entry)?;
            Some(Change::NeighbourRemoved { address, ifindex })
        }
        _ => None,
    }
}

/// The route `message` (the answer to RTM_GETROUTE) describes.
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "netlink's attribute and address enums are large and open: we read three"
)]
pub fn route(message: &RouteMessage) -> Option<Route> {
    let mut ifindex = None;
    let mut gateway = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Oif(index) => ifindex = Some(*index),
            RouteAttribute::Gateway(RouteAddress::Inet(v4)) => gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => gateway = Some(IpAddr::V6(*v6)),
            // An IPv4 route through an IPv6 gateway (RFC 5549).
            RouteAttribute::Via(RouteVia::Inet6(v6)) => gateway = Some(IpAddr::V6(*v6)),
            RouteAttribute::Via(RouteVia::Inet(v4)) => gateway = Some(IpAddr::V4(*v4)),
            _ => {}
        }
    }
    Some(Route {
        ifindex: ifindex?,
        gateway,
        local: message.header.kind == RouteType::Local,
    })
}

/// The link `message` describes (`None` without a name: not a link the kernel announces).
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "netlink's link attribute enum is large and open: we read four"
)]
pub fn link(message: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut mtu = 0;
    let mut mac = None;
    let mut xdp = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(text) => name = Some(text.clone()),
            LinkAttribute::Mtu(value) => mtu = *value,
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Xdp(attributes) => xdp = xdp_program(attributes),
            _ => {}
        }
    }
    Some(Link {
        index: message.header.index,
        name: name?,
        mtu,
        mac,
        loopback: message.header.flags.contains(LinkFlags::Loopback),
        xdp,
    })
}

/// The program `IFLA_XDP`'s nested attributes describe (`None`: no program).
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "netlink's XDP attribute enums are open: we read the mode and the ids"
)]
fn xdp_program(attributes: &[LinkXdp]) -> Option<XdpProgram> {
    let mut attachment = None;
    let (mut id, mut driver_id, mut generic_id) = (None, None, None);
    for attribute in attributes {
        match attribute {
            LinkXdp::Attached(attached) => {
                attachment = match attached {
                    XdpAttached::Driver => Some(XdpAttachment::Driver),
                    XdpAttached::SocketBuffer => Some(XdpAttachment::Generic),
                    XdpAttached::Hardware => Some(XdpAttachment::Hardware),
                    XdpAttached::Multiple => Some(XdpAttachment::Multiple),
                    _ => None,
                }
            }
            LinkXdp::ProgId(value) => id = Some(*value),
            LinkXdp::DrvProgId(value) => driver_id = Some(*value),
            LinkXdp::SkbProgId(value) => generic_id = Some(*value),
            _ => {}
        }
    }
    Some(XdpProgram {
        attachment: attachment?,
        id: id.or(driver_id).or(generic_id),
    })
}

/// The IP neighbour `message` describes (`None` for other families: the bridge's forwarding
/// database shares the neighbour messages).
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "netlink's neighbour attribute enum is large and open: we read two"
)]
pub fn neighbour(message: &NeighbourMessage) -> Option<Neighbour> {
    if !matches!(
        message.header.family,
        AddressFamily::Inet | AddressFamily::Inet6
    ) {
        return None;
    }
    let mut address = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                address = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                address = Some(IpAddr::V6(*v6))
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(bytes.as_slice()).ok()
            }
            _ => {}
        }
    }
    Some(Neighbour {
        address: address?,
        ifindex: message.header.ifindex,
        mac,
        state: message.header.state,
    })
}

/// The interface index and the address `message` (an RTM_NEWADDR) describes: the local
/// address (`IFA_LOCAL`, which differs from `IFA_ADDRESS` on point-to-point links), else the
/// address, as getifaddrs(3) reports it.
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "netlink's address attribute enum is large and open: we read two"
)]
pub fn address(message: &AddressMessage) -> Option<(u32, IpAddr)> {
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    Some((message.header.index, local.or(address)?))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use netlink_packet_route::{neighbour::NeighbourMessage, route::RouteMessage};

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn a_route_gives_its_interface_gateway_and_whether_it_is_local() {
        let mut message = RouteMessage::default();
        message.header.kind = RouteType::Unicast;
        message.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(10, 9, 0, 5))),
            RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(10, 0, 0, 1))),
            RouteAttribute::Oif(7),
        ];
        assert_eq!(
            route(&message),
            Some(Route {
                ifindex: 7,
                gateway: Some(ip("10.0.0.1")),
                local: false
            })
        );
        message.attributes = vec![RouteAttribute::Oif(1)];
        message.header.kind = RouteType::Local;
        assert_eq!(
            route(&message),
            Some(Route {
                ifindex: 1,
                gateway: None,
                local: true
            })
        );
        message.attributes = vec![
            RouteAttribute::Oif(3),
            RouteAttribute::Via(RouteVia::Inet6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1))),
        ];
        assert_eq!(
            route(&message).map(|r| r.gateway),
            Some(Some(ip("fe80::1")))
        );
        message.attributes.clear();
        assert_eq!(route(&message), None, "no output interface: no route");
    }

    fn link_message(attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header.index = 7;
        message.attributes = attributes;
        message
    }

    #[test]
    fn a_link_gives_its_name_mtu_mac_and_xdp_program() {
        let message = link_message(vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Mtu(9000),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 7]),
            LinkAttribute::Xdp(vec![
                LinkXdp::Attached(XdpAttached::SocketBuffer),
                LinkXdp::ProgId(42),
            ]),
        ]);
        assert_eq!(
            link(&message),
            Some(Link {
                index: 7,
                name: "eth0".into(),
                mtu: 9000,
                mac: Some([2, 0, 0, 0, 0, 7]),
                loopback: false,
                xdp: Some(XdpProgram {
                    attachment: XdpAttachment::Generic,
                    id: Some(42)
                }),
            })
        );
        // Several programs: the native one's id; none attached: no program.
        let several = link_message(vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Xdp(vec![
                LinkXdp::Attached(XdpAttached::Multiple),
                LinkXdp::SkbProgId(5),
                LinkXdp::DrvProgId(6),
            ]),
        ]);
        assert_eq!(
            link(&several).and_then(|l| l.xdp),
            Some(XdpProgram {
                attachment: XdpAttachment::Multiple,
                id: Some(6)
            })
        );
        let none = link_message(vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Xdp(vec![LinkXdp::Attached(XdpAttached::None)]),
        ]);
        assert_eq!(link(&none).and_then(|l| l.xdp), None);
        // A tunnel's 4-byte address is no MAC; loopback is flagged.
        let mut tunnel = link_message(vec![
            LinkAttribute::IfName("lo".into()),
            LinkAttribute::Address(vec![10, 0, 0, 1]),
        ]);
        tunnel.header.flags = LinkFlags::Loopback | LinkFlags::Up;
        let tunnel = link(&tunnel).expect("link");
        assert_eq!((tunnel.mac, tunnel.loopback), (None, true));
        assert_eq!(link(&link_message(vec![])), None, "a link has a name");
    }

    fn neighbour_message(
        family: AddressFamily,
        state: NeighbourState,
        attributes: Vec<NeighbourAttribute>,
    ) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.family = family;
        message.header.ifindex = 7;
        message.header.state = state;
        message.attributes = attributes;
        message
    }

    #[test]
    fn a_neighbour_mac_is_usable_unless_incomplete_or_failed() {
        let entry = |state| {
            neighbour(&neighbour_message(
                AddressFamily::Inet,
                state,
                vec![
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(
                        10, 0, 0, 11,
                    ))),
                    NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0xb, 2]),
                ],
            ))
            .expect("neighbour")
        };
        let mac = Some([2, 0, 0, 0, 0xb, 2]);
        for state in [
            NeighbourState::Reachable,
            NeighbourState::Stale,
            NeighbourState::Delay,
            NeighbourState::Probe,
            NeighbourState::Permanent,
            NeighbourState::Noarp,
        ] {
            assert_eq!(entry(state).usable_mac(), mac, "{state:?}");
        }
        for state in [NeighbourState::Incomplete, NeighbourState::Failed] {
            assert_eq!(entry(state).usable_mac(), None, "{state:?}");
        }
        assert_eq!(entry(NeighbourState::Stale).address, ip("10.0.0.11"));
        assert_eq!(entry(NeighbourState::Stale).ifindex, 7);
        // Being resolved: no MAC yet.
        let v6 = neighbour(&neighbour_message(
            AddressFamily::Inet6,
            NeighbourState::Incomplete,
            vec![NeighbourAttribute::Destination(NeighbourAddress::Inet6(
                ip_v6("fd00::1"),
            ))],
        ))
        .expect("neighbour");
        assert_eq!((v6.address, v6.mac), (ip("fd00::1"), None));
        // The bridge's forwarding database is not an IP neighbour table.
        let fdb = neighbour_message(
            AddressFamily::Bridge,
            NeighbourState::Reachable,
            vec![NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1])],
        );
        assert_eq!(neighbour(&fdb), None);
    }

    fn ip_v6(text: &str) -> Ipv6Addr {
        text.parse().expect("ipv6")
    }

    #[test]
    fn messages_become_changes_of_links_and_neighbours() {
        let link = link_message(vec![LinkAttribute::IfName("eth0".into())]);
        assert!(matches!(
            change(&RouteNetlinkMessage::NewLink(link.clone())),
            Some(Change::Link(Link { index: 7, .. }))
        ));
        assert_eq!(
            change(&RouteNetlinkMessage::DelLink(link)),
            Some(Change::LinkRemoved { index: 7 })
        );
        let entry = neighbour_message(
            AddressFamily::Inet6,
            NeighbourState::Failed,
            vec![NeighbourAttribute::Destination(NeighbourAddress::Inet6(
                ip_v6("fd00::1"),
            ))],
        );
        assert!(matches!(
            change(&RouteNetlinkMessage::NewNeighbour(entry.clone())),
            Some(Change::Neighbour(Neighbour {
                state: NeighbourState::Failed,
                ..
            }))
        ));
        assert_eq!(
            change(&RouteNetlinkMessage::DelNeighbour(entry)),
            Some(Change::NeighbourRemoved {
                address: ip("fd00::1"),
                ifindex: 7
            })
        );
        assert_eq!(
            change(&RouteNetlinkMessage::NewRoute(RouteMessage::default())),
            None
        );
    }

    #[test]
    fn an_address_is_the_local_one_if_given() {
        let mut message = AddressMessage::default();
        message.header.index = 3;
        message.attributes = vec![
            AddressAttribute::Address(ip("10.0.0.2")),
            AddressAttribute::Local(ip("10.0.0.1")),
        ];
        assert_eq!(address(&message), Some((3, ip("10.0.0.1"))));
        message.attributes = vec![AddressAttribute::Address(ip("fd00::1"))];
        assert_eq!(address(&message), Some((3, ip("fd00::1"))));
    }
}
