//! The kernel routing table lb announces VIPs through: one `blackhole ADDR/32` (`/128`) route per
//! servable VIP address, in a table and with a protocol number of the operator's choosing, for a
//! routing daemon (bird2, FRR) to export. Routes are written and read over netlink (rtnetlink);
//! `ip route show table T` shows them.

use std::net::IpAddr;

use futures_util::TryStreamExt as _;
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    AddressFamily,
};
use rtnetlink::{Handle, RouteMessageBuilder};

/// Which routes are ours: the table and the protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RouteOwner {
    /// Kernel routing table (1..=252).
    pub table: u32,
    /// Protocol number of our routes (`proto` in `ip route`).
    pub protocol: u8,
}

/// A host route found in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRoute {
    /// The destination (a /32 or /128; other prefixes are not listed).
    pub address: IpAddr,
    /// Its protocol number.
    pub protocol: u8,
}

/// A netlink request that failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("{action} {target} in table {table}")]
    Request {
        /// What was asked: `adding`, `deleting`, `listing`.
        action: &'static str,
        /// The route (or `routes`).
        target: String,
        /// The table.
        table: u32,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
}

/// A netlink connection to the kernel's routing tables (in the calling thread's namespace).
#[derive(Clone, Debug)]
pub struct Routes {
    handle: Handle,
}

impl Routes {
    /// Opens the connection; must be called within a tokio runtime (it spawns the socket's task).
    pub fn connect() -> Result<Self, RouteError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Every host route of `table` (any protocol), IPv4 and IPv6.
    pub async fn list(&self, table: u32) -> Result<Vec<TableRoute>, RouteError> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessageBuilder::<IpAddr>::new().build();
            query.header.address_family = family;
            let mut dump = self.handle.route().get(query).execute();
            while let Some(message) =
                dump.try_next()
                    .await
                    .map_err(|source| RouteError::Request {
                        action: "listing",
                        target: "routes".into(),
                        table,
                        source,
                    })?
            {
                if let Some(route) = host_route(&message, table) {
                    routes.push(route);
                }
            }
        }
        Ok(routes)
    }

    /// Adds (or replaces) `blackhole ADDRESS table T proto P`.
    pub async fn add(&self, owner: RouteOwner, address: IpAddr) -> Result<(), RouteError> {
        self.handle
            .route()
            .add(blackhole(owner, address))
            .replace()
            .execute()
            .await
            .map_err(|source| RouteError::Request {
                action: "adding",
                target: format!("blackhole {}", host_prefix(address)),
                table: owner.table,
                source,
            })
    }

    /// Deletes our route to `address` (one with another protocol number stays).
    pub async fn remove(&self, owner: RouteOwner, address: IpAddr) -> Result<(), RouteError> {
        self.handle
            .route()
            .del(blackhole(owner, address))
            .execute()
            .await
            .map_err(|source| RouteError::Request {
                action: "deleting",
                target: format!("blackhole {}", host_prefix(address)),
                table: owner.table,
                source,
            })
    }
}

/// `ADDRESS/32` or `ADDRESS/128`.
pub fn host_prefix(address: IpAddr) -> String {
    match address {
        IpAddr::V4(_) => format!("{address}/32"),
        IpAddr::V6(_) => format!("{address}/128"),
    }
}

/// The message of our route to `address`.
fn blackhole(owner: RouteOwner, address: IpAddr) -> RouteMessage {
    let length = if address.is_ipv4() { 32 } else { 128 };
    RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(address, length)
        .expect("an address and its own family's host prefix length")
        .table_id(owner.table)
        .protocol(RouteProtocol::from(owner.protocol))
        .kind(RouteType::BlackHole)
        .build()
}

/// The host route `message` describes, if it is one of `table`.
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "netlink's attribute and family enums are large and open: we read two of each"
)]
fn host_route(message: &RouteMessage, table: u32) -> Option<TableRoute> {
    let in_table = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table));
    let host_length = match message.header.address_family {
        AddressFamily::Inet => 32,
        AddressFamily::Inet6 => 128,
        _ => return None,
    };
    if in_table != table || message.header.destination_prefix_length != host_length {
        return None;
    }
    let address = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        })?;
    Some(TableRoute {
        address,
        protocol: u8::from(message.header.protocol),
    })
}
