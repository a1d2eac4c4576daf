//! The kernel's announcements of link and neighbour changes: a netlink socket in the
//! `RTNLGRP_LINK` and `RTNLGRP_NEIGH` multicast groups (the latter carries IPv4 and IPv6
//! neighbours alike). The kernel does not wait for a slow reader: when the socket's buffer is
//! full it drops announcements and the next receive fails with `ENOBUFS`, which
//! [`Event::Lost`] reports so that the reader reads the tables again.

use std::io;

use rtnetlink::{
    packet_core::NetlinkPayload,
    sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket},
};

use super::{facts, socket, Change, ExchangeError, NetlinkError, Request};

/// `RTNLGRP_LINK` (linux/rtnetlink.h).
const RTNLGRP_LINK: u32 = 1;
/// `RTNLGRP_NEIGH`.
const RTNLGRP_NEIGH: u32 = 3;
/// The socket's receive buffer: room for a burst of a few thousand announcements (a link
/// flapping under thousands of neighbours) before any is lost.
const RECEIVE_BUFFER: usize = 4 << 20;

/// What the kernel announced since the last [`Subscription::next`].
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Changes, in the kernel's order (every announcement already queued, at once).
    Changes(Vec<Change>),
    /// Announcements were lost (the socket's buffer overflowed, or one could not be parsed):
    /// only a new read of the tables tells what they are now.
    Lost,
}

/// A subscription to link and neighbour changes, in the network namespace of the thread that
/// opens it.
pub struct Subscription {
    socket: TokioSocket,
}

impl Subscription {
    /// Joins the link and neighbour groups; within a tokio runtime. Announcements are queued
    /// from here on: a table read after this misses none.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        let groups = 1 << (RTNLGRP_LINK - 1) | 1 << (RTNLGRP_NEIGH - 1);
        let inner = socket.socket_mut();
        inner
            .bind(&SocketAddr::new(0, groups))
            .and_then(|()| inner.set_rx_buf_sz(RECEIVE_BUFFER))
            .map_err(NetlinkError::Socket)?;
        Ok(Self { socket })
    }

    /// Waits for the next announcement, then takes every one already queued with it.
    pub async fn next(&mut self) -> Result<Event, NetlinkError> {
        let mut changes = Vec::new();
        let mut lost = false;
        let first = self.socket.recv_from_full().await;
        let mut received = Some(first);
        while let Some(result) = received.take() {
            match result {
                Ok((datagram, _)) => lost |= !read_changes(&datagram, &mut changes),
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => lost = true,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    return Err(NetlinkError::Request {
                        request: Request::Changes,
                        source: ExchangeError::Io(error),
                    })
                }
            }
            // The socket is non-blocking: this returns what is queued, or WouldBlock.
            received = Some(self.socket.socket_ref().recv_from_full());
        }
        Ok(if lost {
            Event::Lost
        } else {
            Event::Changes(changes)
        })
    }
}

/// Adds the link and neighbour changes `datagram` announces to `changes`; `false` if it
/// cannot be parsed (or reports an overrun).
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "netlink's payload enum is non-exhaustive: only announcements and overruns matter"
)]
fn read_changes(datagram: &[u8], changes: &mut Vec<Change>) -> bool {
    let Ok(messages) = socket::messages(datagram) else {
        return false;
    };
    for message in messages {
        match message.payload {
            NetlinkPayload::InnerMessage(inner) => changes.extend(facts::change(&inner)),
            NetlinkPayload::Overrun(_) => return false,
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::{
        link::{LinkAttribute, LinkMessage},
        RouteNetlinkMessage,
    };
    use rtnetlink::packet_core::NetlinkMessage;

    use super::*;

    #[test]
    fn a_datagram_of_announcements_gives_its_changes_in_order() {
        let mut datagram = Vec::new();
        for (index, name) in [(3, "eth0"), (4, "eth1")] {
            let mut link = LinkMessage::default();
            link.header.index = index;
            link.attributes.push(LinkAttribute::IfName(name.into()));
            let mut message = NetlinkMessage::from(RouteNetlinkMessage::NewLink(link));
            message.finalize();
            let mut bytes = vec![0; message.buffer_len()];
            message.serialize(&mut bytes);
            datagram.extend(bytes);
        }
        let mut changes = Vec::new();
        assert!(read_changes(&datagram, &mut changes));
        let indices: Vec<u32> = changes
            .iter()
            .filter_map(|change| match change {
                Change::Link(link) => Some(link.index),
                Change::LinkRemoved { .. }
                | Change::Neighbour(_)
                | Change::NeighbourRemoved { .. } => None,
            })
            .collect();
        assert_eq!(indices, [3, 4]);
        assert!(!read_changes(&datagram[..10], &mut changes), "truncated");
    }
}
