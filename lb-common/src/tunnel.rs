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
    let fixed = Ipv4Fixed::new(
        0x45,
        tos,
        inner_len as usize + OUTER_IPV4_LEN,
        dont_fragment,
        protocol,
        source,
        destination,
    );
    Header(fixed.words(ipv4_checksum(fixed.halves())))
}

/// The fixed 20 bytes of an outer IPv4 header but its checksum.
struct Ipv4Fixed {
    version_ihl: u8,
    tos: u8,
    total: [u8; 2],
    frags: [u8; 2],
    protocol: u8,
    source: [u8; 4],
    destination: [u8; 4],
}

impl Ipv4Fixed {
    #[inline(always)]
    fn new(
        version_ihl: u8,
        tos: u8,
        total: usize,
        dont_fragment: bool,
        protocol: u8,
        source: [u8; 4],
        destination: [u8; 4],
    ) -> Self {
        Self {
            version_ihl,
            tos,
            total: (total as u16).to_be_bytes(),
            frags: ipv4_unfragmented(dont_fragment),
            protocol,
            source,
            destination,
        }
    }

    /// Its ten 16-bit halves, the checksum's zero.
    #[inline(always)]
    fn halves(&self) -> [u16; 10] {
        let (s, d) = (self.source, self.destination);
        [
            u16::from_be_bytes([self.version_ihl, self.tos]),
            u16::from_be_bytes(self.total),
            0,
            u16::from_be_bytes(self.frags),
            u16::from_be_bytes([TUNNEL_TTL, self.protocol]),
            0,
            u16::from_be_bytes([s[0], s[1]]),
            u16::from_be_bytes([s[2], s[3]]),
            u16::from_be_bytes([d[0], d[1]]),
            u16::from_be_bytes([d[2], d[3]]),
        ]
    }

    /// Its five words with the checksum `check`.
    #[inline(always)]
    fn words(&self, check: u16) -> [u32; 5] {
        let check = check.to_be_bytes();
        [
            word([self.version_ihl, self.tos, self.total[0], self.total[1]]),
            word([0, 0, self.frags[0], self.frags[1]]),
            word([TUNNEL_TTL, self.protocol, check[0], check[1]]),
            word(self.source),
            word(self.destination),
        ]
    }
}

/// Length of the second-chance hop option in an outer IPv4 header ([`outer_ipv4_with_hop`]).
pub const HOP_OPTION_V4_LEN: usize = 8;
/// Length of the destination options header carrying the hop after an outer IPv6 header
/// ([`outer_ipv6_with_hop`]).
pub const HOP_OPTIONS_V6_LEN: usize = 24;
/// The hop option's type, in IPv4 and in IPv6 destination options: 0x1e, the value RFC 4727
/// sets aside for experiments in both. In IPv4: not copied into fragments, class 0, number 30.
/// In IPv6 its two high bits are 00: a node that does not know it skips it.
pub const HOP_OPTION_TYPE: u8 = 0x1e;
/// IPv6 next header: destination options.
pub const IPPROTO_DSTOPTS: u8 = 60;

/// [`outer_ipv4`] with the second-chance hop option (`docs/SECOND_CHANCE.md`): IHL 7, then
/// the 8 option bytes `0x1e, 8, 0, 0` and `hop`, the address of the backend that had the
/// flow's ring slot before (0.0.0.0: no hop, or one already taken).
#[inline(always)]
pub fn outer_ipv4_with_hop(
    tos: u8,
    inner_len: u32,
    dont_fragment: bool,
    protocol: u8,
    source: [u8; 4],
    destination: [u8; 4],
    hop: [u8; 4],
) -> Header<{ (OUTER_IPV4_LEN + HOP_OPTION_V4_LEN) / 4 }> {
    let fixed = Ipv4Fixed::new(
        0x47,
        tos,
        inner_len as usize + OUTER_IPV4_LEN + HOP_OPTION_V4_LEN,
        dont_fragment,
        protocol,
        source,
        destination,
    );
    let option = [HOP_OPTION_TYPE, HOP_OPTION_V4_LEN as u8, 0, 0];
    let check = ipv4_options_checksum(
        fixed.halves(),
        [
            u16::from_be_bytes([option[0], option[1]]),
            0,
            u16::from_be_bytes([hop[0], hop[1]]),
            u16::from_be_bytes([hop[2], hop[3]]),
        ],
    );
    let [a, b, c, d, e] = fixed.words(check);
    Header([a, b, c, d, e, word(option), word(hop)])
}

/// The checksum of an IPv4 header of 20 bytes (`fixed`, checksum field 0) and 8 option bytes.
#[inline(always)]
fn ipv4_options_checksum(fixed: [u16; 10], options: [u16; 4]) -> u16 {
    // The fixed part's one's complement sum, then the options' (by value: a loop over
    // references becomes 16-bit stack reads the verifier refuses).
    let mut sum = u32::from(!ipv4_checksum(fixed));
    for half in options {
        sum += u32::from(half);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// [`outer_ipv6`] followed by a destination options header carrying the second-chance hop
/// (`docs/SECOND_CHANCE.md`): next header 60, then `protocol, 2` (24 bytes), the option
/// `0x1e, 20`, 4 zero bytes and `hop`, the 16-byte address of the backend that had the flow's
/// ring slot before (`::`: no hop, or one already taken).
#[inline(always)]
pub fn outer_ipv6_with_hop(
    traffic_class: u8,
    flow_label: u32,
    inner_len: u32,
    protocol: u8,
    source: &[u8; 16],
    destination: &[u8; 16],
    hop: &[u8; 16],
) -> Header<{ (OUTER_IPV6_LEN + HOP_OPTIONS_V6_LEN) / 4 }> {
    let outer = outer_ipv6(
        traffic_class,
        flow_label,
        inner_len + HOP_OPTIONS_V6_LEN as u32,
        IPPROTO_DSTOPTS,
        source,
        destination,
    )
    .0;
    let h = address_words(hop);
    Header([
        outer[0],
        outer[1],
        outer[2],
        outer[3],
        outer[4],
        outer[5],
        outer[6],
        outer[7],
        outer[8],
        outer[9],
        word([
            protocol,
            (HOP_OPTIONS_V6_LEN / 8 - 1) as u8,
            HOP_OPTION_TYPE,
            (HOP_OPTIONS_V6_LEN - 4) as u8,
        ]),
        0,
        h[0],
        h[1],
        h[2],
        h[3],
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

    /// A header's 16-bit one's complement sum, folded: 0xffff when its checksum is right.
    fn folded_sum(header: &[u8]) -> u16 {
        let sum: u32 = header
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        ((sum & 0xffff) + (sum >> 16)) as u16
    }

    #[test]
    fn the_hop_option_follows_the_outer_ipv4_header_and_checks_out() {
        let header =
            outer_ipv4_with_hop(0, 60, true, 4, [192, 0, 2, 1], [10, 0, 0, 2], [10, 0, 0, 3])
                .bytes()
                .concat();
        assert_eq!(header.len(), 28);
        assert_eq!(&header[..4], &[0x47, 0, 0, 88]);
        assert_eq!(&header[20..], &[0x1e, 8, 0, 0, 10, 0, 0, 3]);
        assert_eq!(folded_sum(&header), 0xffff);
        let plain = outer_ipv4(0, 60, true, 4, [192, 0, 2, 1], [10, 0, 0, 2])
            .bytes()
            .concat();
        assert_eq!(&header[12..20], &plain[12..20], "same addresses");
    }

    #[test]
    fn the_hop_rides_in_ipv6_destination_options() {
        let source = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let destination = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let hop = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
        let header = outer_ipv6_with_hop(0, 7, 60, 41, &source, &destination, &hop)
            .bytes()
            .concat();
        assert_eq!(header.len(), 64);
        assert_eq!(
            &header[4..8],
            &[0, 84, 60, 64],
            "payload: options and inner; next: 60"
        );
        assert_eq!(&header[40..48], &[41, 2, 0x1e, 20, 0, 0, 0, 0]);
        assert_eq!(&header[48..], &hop);
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
