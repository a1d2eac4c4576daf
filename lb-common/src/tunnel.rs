//! The outer headers of lb's tunnels (IP-in-IP, IPv4 or IPv6 outside), built one way for the
//! `lb` program's clients' packets and the `steer_check` program's health checks, so a check
//! travels exactly as the traffic it vouches for.

use crate::ip::{ipv4_checksum, ipv4_unfragmented, ipv6_version_class_label};

/// The outer header's TTL / hop limit.
pub const TUNNEL_TTL: u8 = 64;
/// Length of an outer IPv4 header (no options).
pub const OUTER_IPV4_LEN: usize = 20;
/// Length of an outer IPv6 header.
pub const OUTER_IPV6_LEN: usize = 40;

/// A header as 32-bit words holding its bytes in order (network order in memory). BPF programs
/// build headers on the stack, and the verifier refuses the unaligned stores LLVM makes into a
/// byte array; words are stored whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<const WORDS: usize>(pub [u32; WORDS]);

impl<const WORDS: usize> Header<WORDS> {
    /// The header's bytes.
    pub fn bytes(&self) -> [[u8; 4]; WORDS] {
        self.0.map(u32::to_ne_bytes)
    }
}

/// Four bytes as a word that holds them in this order in memory.
#[inline(always)]
const fn word(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes)
}

/// The outer IPv4 header of an inner packet of `inner_len` bytes and IP protocol `protocol`
/// (4 or 41), with the inner packet's TOS and don't-fragment bit.
#[inline(always)]
pub fn outer_ipv4(
    tos: u8,
    inner_len: u32,
    dont_fragment: bool,
    protocol: u8,
    source: [u8; 4],
    destination: [u8; 4],
) -> Header<{ OUTER_IPV4_LEN / 4 }> {
    let total = ((inner_len as usize + OUTER_IPV4_LEN) as u16).to_be_bytes();
    let frags = ipv4_unfragmented(dont_fragment);
    let check = ipv4_checksum([
        u16::from_be_bytes([0x45, tos]),
        u16::from_be_bytes(total),
        0,
        u16::from_be_bytes(frags),
        u16::from_be_bytes([TUNNEL_TTL, protocol]),
        0,
        u16::from_be_bytes([source[0], source[1]]),
        u16::from_be_bytes([source[2], source[3]]),
        u16::from_be_bytes([destination[0], destination[1]]),
        u16::from_be_bytes([destination[2], destination[3]]),
    ])
    .to_be_bytes();
    Header([
        word([0x45, tos, total[0], total[1]]),
        word([0, 0, frags[0], frags[1]]),
        word([TUNNEL_TTL, protocol, check[0], check[1]]),
        word(source),
        word(destination),
    ])
}

/// The four words of a 16-byte address.
#[inline(always)]
fn address_words(address: &[u8; 16]) -> [u32; 4] {
    [
        word([address[0], address[1], address[2], address[3]]),
        word([address[4], address[5], address[6], address[7]]),
        word([address[8], address[9], address[10], address[11]]),
        word([address[12], address[13], address[14], address[15]]),
    ]
}

/// The outer IPv6 header of an inner packet of `inner_len` bytes and next header `protocol`
/// (4 or 41), with the inner packet's traffic class and a flow label from the flow's hash
/// (ECMP per flow, RFC 6438).
#[inline(always)]
pub fn outer_ipv6(
    traffic_class: u8,
    flow_label: u32,
    inner_len: u32,
    protocol: u8,
    source: &[u8; 16],
    destination: &[u8; 16],
) -> Header<{ OUTER_IPV6_LEN / 4 }> {
    let length = (inner_len as u16).to_be_bytes();
    let s = address_words(source);
    let d = address_words(destination);
    Header([
        word(ipv6_version_class_label(traffic_class, flow_label)),
        word([length[0], length[1], protocol, TUNNEL_TTL]),
        s[0],
        s[1],
        s[2],
        s[3],
        d[0],
        d[1],
        d[2],
        d[3],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outer_ipv4_header_checks_out() {
        let header = outer_ipv4(0x10, 60, true, 4, [192, 0, 2, 1], [10, 0, 0, 2])
            .bytes()
            .concat();
        assert_eq!(
            &header[..12],
            &[0x45, 0x10, 0, 80, 0, 0, 0x40, 0, 64, 4, header[10], header[11]]
        );
        assert_eq!(&header[12..], &[192, 0, 2, 1, 10, 0, 0, 2]);
        // A header with its checksum sums to 0xffff.
        let sum: u32 = header
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!(folded as u16, 0xffff);
    }

    #[test]
    fn the_outer_ipv6_header_carries_class_label_and_length() {
        let source = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let destination = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let header = outer_ipv6(0xb8, 0x12345, 60, 41, &source, &destination)
            .bytes()
            .concat();
        assert_eq!(&header[..8], &[0x6b, 0x81, 0x23, 0x45, 0, 60, 41, 64]);
        assert_eq!(&header[8..24], &source);
        assert_eq!(&header[24..], &destination);
    }
}
