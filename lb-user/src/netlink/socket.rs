//! One rtnetlink request and its answers over a blocking socket. The kernel answers these
//! requests while it handles the send (a route lookup, a table dump, an entry to create): the
//! receive never waits on the network, so callers in async code use it like any other
//! syscall. A receive timeout guards against a kernel that never answers.

use std::{io, time::Duration};

use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{
    packet_core::{
        DecodeError, NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_MULTIPART, NLM_F_REQUEST,
    },
    sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
};

/// How long an answer may take before the request fails (the kernel answers in microseconds).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Sending or receiving failed (a timeout included).
    #[error("the netlink socket failed")]
    Io(#[source] io::Error),
    /// The kernel refused the request (an `NLMSG_ERROR` with an errno).
    #[error("the kernel refused")]
    Refused(#[source] io::Error),
    /// An answer could not be parsed.
    #[error("the kernel's answer cannot be parsed")]
    Decode(#[source] DecodeError),
}

impl ExchangeError {
    /// The errno the kernel refused the request with, if it did.
    pub fn refused_with(&self) -> Option<i32> {
        match self {
            Self::Refused(error) => error.raw_os_error(),
            Self::Io(_) | Self::Decode(_) => None,
        }
    }
}

/// A NETLINK_ROUTE socket for requests, in the calling thread's network namespace.
pub struct RequestSocket {
    socket: Socket,
    sequence: u32,
}

impl RequestSocket {
    /// Opens, binds and connects the socket to the kernel.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0),
        )
        .map_err(io::Error::from)?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Sends `request` with `flags` (`NLM_F_REQUEST` is added) and returns the kernel's
    /// messages: a dump's entries, a lookup's answer, nothing for an acknowledged change.
    pub fn exchange(
        &mut self,
        request: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, ExchangeError> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut message = NetlinkMessage::from(request);
        message.header.flags = NLM_F_REQUEST | flags;
        message.header.sequence_number = self.sequence;
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(ExchangeError::Io)?;
        let mut answers = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(ExchangeError::Io)?;
            if read_answers(&datagram, self.sequence, &mut answers)? == Answer::Complete {
                return Ok(answers);
            }
        }
    }
}

/// Whether the answer to a request is complete.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// More datagrams follow (a dump in progress).
    Partial,
    /// The last message arrived.
    Complete,
}

/// The messages of one datagram (the kernel packs several into one, each 4-byte aligned).
pub fn messages(datagram: &[u8]) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, DecodeError> {
    let mut rest = datagram;
    let mut messages = Vec::new();
    while !rest.is_empty() {
        let length = NetlinkBuffer::new_checked(rest)?.length() as usize;
        messages.push(NetlinkMessage::deserialize(rest)?);
        // The last message may lack its padding.
        rest = rest.get(length.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(messages)
}

/// Adds the messages of `datagram` that answer request `sequence` to `answers`; whether the
/// answer is complete: a dump ends with `NLMSG_DONE`, a change with its acknowledgement, a
/// lookup with its one (not multipart) message.
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "netlink's payload enum is non-exhaustive: no-ops and overruns answer nothing"
)]
pub fn read_answers(
    datagram: &[u8],
    sequence: u32,
    answers: &mut Vec<RouteNetlinkMessage>,
) -> Result<Answer, ExchangeError> {
    let mut answer = Answer::Partial;
    for message in messages(datagram).map_err(ExchangeError::Decode)? {
        if message.header.sequence_number != sequence {
            continue;
        }
        let multipart = message.header.flags & NLM_F_MULTIPART != 0;
        match message.payload {
            NetlinkPayload::Done(_) => answer = Answer::Complete,
            NetlinkPayload::Error(error) => {
                if error.code.is_some() {
                    return Err(ExchangeError::Refused(error.to_io()));
                }
                answer = Answer::Complete;
            }
            NetlinkPayload::InnerMessage(inner) => {
                answers.push(inner);
                if !multipart {
                    answer = Answer::Complete;
                }
            }
            _ => {}
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};
    use rtnetlink::packet_core::{ErrorMessage, NLM_F_MULTIPART};

    use super::*;

    fn bytes(payload: NetlinkPayload<RouteNetlinkMessage>, sequence: u32, flags: u16) -> Vec<u8> {
        let mut message = NetlinkMessage::new(Default::default(), payload);
        message.header.sequence_number = sequence;
        message.header.flags = flags;
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    fn link(name: &str) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.into()));
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link))
    }

    #[test]
    fn a_dump_is_complete_at_done_and_other_requests_answers_are_skipped() {
        let mut first = bytes(link("eth0"), 5, NLM_F_MULTIPART);
        first.extend(bytes(link("stale"), 4, NLM_F_MULTIPART));
        first.extend(bytes(link("eth1"), 5, NLM_F_MULTIPART));
        let mut answers = Vec::new();
        assert_eq!(
            read_answers(&first, 5, &mut answers).expect("read"),
            Answer::Partial
        );
        assert_eq!(answers.len(), 2);
        let done = bytes(NetlinkPayload::Done(Default::default()), 5, NLM_F_MULTIPART);
        assert_eq!(
            read_answers(&done, 5, &mut answers).expect("read"),
            Answer::Complete
        );
        assert_eq!(answers.len(), 2);
    }

    #[test]
    fn a_lookup_is_complete_with_its_answer_and_a_change_with_its_ack() {
        let mut answers = Vec::new();
        assert_eq!(
            read_answers(&bytes(link("eth0"), 1, 0), 1, &mut answers).expect("read"),
            Answer::Complete
        );
        let ack = bytes(NetlinkPayload::Error(ErrorMessage::default()), 2, 0);
        assert_eq!(
            read_answers(&ack, 2, &mut Vec::new()).expect("read"),
            Answer::Complete
        );
    }

    #[test]
    fn a_refusal_carries_the_kernels_errno() {
        let mut refusal = ErrorMessage::default();
        refusal.code = std::num::NonZeroI32::new(-libc::ENOENT);
        let error = read_answers(
            &bytes(NetlinkPayload::Error(refusal), 3, 0),
            3,
            &mut Vec::new(),
        )
        .expect_err("refused");
        assert_eq!(error.refused_with(), Some(libc::ENOENT));
        assert!(matches!(
            read_answers(&[1, 2, 3], 3, &mut Vec::new()),
            Err(ExchangeError::Decode(_))
        ));
    }
}
