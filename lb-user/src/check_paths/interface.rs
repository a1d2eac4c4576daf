//! The check interface: where the kernel routes the agent's check sockets, so that `steer_check`
//! can send their packets to one backend each.
//!
//! - A veth pair, `lb-check` and its peer. `lb-check` takes no ARP or ND (`NOARP`): a route
//!   through it needs no neighbour, whatever the destination. Its transmit checksum offload is
//!   off, so check packets leave with complete checksums (a partial one does not survive the
//!   XDP programs on a veth backend's side).
//! - A routing table, [`CHECK_TABLE`], with one default route per family through `lb-check`.
//! - A rule per family: packets marked as checks' (`lb_common::check_path`) look that table up.
//!   Nothing else on the host is routed through it: the host's own traffic to a VIP is unmoved.
//!
//! Set up when the agent starts with VIP-path checks, torn down when it stops; one left by an
//! agent that died is replaced.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt as _;
use lb_common::check_path::{CHECK_MARK_MASK, CHECK_MARK_TAG};
use netlink_packet_route::{
    route::RouteScope,
    rule::{RuleAction, RuleAttribute, RuleMessage},
};
use rtnetlink::{Handle, IpVersion, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The check interface's name.
pub const CHECK_INTERFACE: &str = "lb-check";
/// Its veth peer's name (nothing is sent to it).
const CHECK_PEER: &str = "lb-check-peer";
/// The routing table of checks ("LB").
pub const CHECK_TABLE: u32 = 0x4c42;
/// The priority of the rules sending checks to [`CHECK_TABLE`]: before `main` (32766).
pub const CHECK_RULE_PRIORITY: u32 = 100;

/// A step of setting the interface up that failed.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("{0}")]
    Request(&'static str, #[source] rtnetlink::Error),
    /// The checksum offload could not be turned off.
    #[error("turning off transmit checksum offload on {CHECK_INTERFACE}")]
    Offload(#[source] std::io::Error),
}

type Result<T> = std::result::Result<T, InterfaceError>;

/// A netlink connection for the interface's setup and teardown.
pub struct CheckInterface {
    handle: Handle,
    /// Its index once created.
    pub ifindex: u32,
}

impl CheckInterface {
    /// Creates the interface, its routes and rules (replacing any left by an earlier agent).
    /// Must be called within a tokio runtime.
    pub async fn create() -> Result<Self> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(InterfaceError::Socket)?;
        tokio::spawn(connection);
        let mut interface = Self { handle, ifindex: 0 };
        interface.remove_all().await;
        interface
            .handle
            .link()
            .add(
                LinkVeth::new(CHECK_INTERFACE, CHECK_PEER)
                    .arp(false)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| InterfaceError::Request("creating the check interface", e))?;
        for name in [CHECK_PEER, CHECK_INTERFACE] {
            interface
                .handle
                .link()
                .set(LinkUnspec::new_with_name(name).up().build())
                .execute()
                .await
                .map_err(|e| InterfaceError::Request("bringing the check interface up", e))?;
        }
        interface.ifindex = interface.index_of(CHECK_INTERFACE).await?;
        super::offload::transmit_checksum_off(CHECK_INTERFACE).map_err(InterfaceError::Offload)?;
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(interface.ifindex)
            .table_id(CHECK_TABLE)
            .scope(RouteScope::Link)
            .build();
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .output_interface(interface.ifindex)
            .table_id(CHECK_TABLE)
            .build();
        for route in [v4, v6] {
            interface
                .handle
                .route()
                .add(route)
                .execute()
                .await
                .map_err(|e| InterfaceError::Request("adding the check table's route", e))?;
        }
        for version in [IpVersion::V4, IpVersion::V6] {
            let mut request = interface
                .handle
                .rule()
                .add()
                .fw_mark(CHECK_MARK_TAG)
                .table_id(CHECK_TABLE)
                .priority(CHECK_RULE_PRIORITY)
                .action(RuleAction::ToTable);
            request
                .message_mut()
                .attributes
                .push(RuleAttribute::FwMask(CHECK_MARK_MASK));
            let added = match version {
                IpVersion::V4 => request.v4().execute().await,
                IpVersion::V6 => request.v6().execute().await,
            };
            added.map_err(|e| InterfaceError::Request("adding the check rule", e))?;
        }
        Ok(interface)
    }

    /// Removes the interface (its routes go with it) and the rules.
    pub async fn remove(mut self) {
        self.remove_all().await;
    }

    async fn remove_all(&mut self) {
        if let Ok(index) = self.index_of(CHECK_INTERFACE).await {
            let _ = self.handle.link().del(index).execute().await;
        }
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
                .unwrap_or_default();
            for rule in rules.into_iter().filter(is_ours) {
                let _ = self.handle.rule().del(rule).execute().await;
            }
        }
    }

    async fn index_of(&self, name: &str) -> Result<u32> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(InterfaceError::Request(
                "finding the check interface",
                rtnetlink::Error::RequestFailed,
            )),
            Err(e) => Err(InterfaceError::Request("finding the check interface", e)),
        }
    }
}

/// Whether `rule` sends checks to the check table.
fn is_ours(rule: &RuleMessage) -> bool {
    let mark = rule
        .attributes
        .contains(&RuleAttribute::FwMark(CHECK_MARK_TAG));
    let table = rule.attributes.contains(&RuleAttribute::Table(CHECK_TABLE));
    mark && table
}
