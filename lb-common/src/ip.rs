//! IPv4 and IPv6 header arithmetic: the parts of parsing and building IP headers that need no
//! packet, so the datapath calls them and the host unit-tests them.
//!
//! Header fields are taken and returned as they sit in the packet (bytes in network order),
//! so the XDP program passes them straight from its bounds-checked header reads.

/// First byte of an IPv4 header without options: version 4, IHL 5 (20 bytes). Our tunnel
/// headers are built with it and `decap` strips only headers that have it.
pub const IPV4_VERSION_IHL_NO_OPTIONS: u8 = 0x45;
/// "Don't fragment", in the first byte of the IPv4 flags/fragment-offset field.
pub const IPV4_DONT_FRAGMENT: u8 = 0x40;
/// "More fragments", in the first byte of the IPv4 flags/fragment-offset field.
pub const IPV4_MORE_FRAGMENTS: u8 = 0x20;
/// The fragment offset's five high bits, in the first byte of the flags/fragment-offset field.
pub const IPV4_OFFSET_HIGH_BITS: u8 = 0x1f;
/// The flow label's bits in the first 32-bit word of an IPv6 header.
pub const IPV6_FLOW_LABEL: u32 = 0x000f_ffff;

/// The IP version in the first byte of an IPv4 or IPv6 header.
#[inline(always)]
pub const fn version(first_byte: u8) -> u8 {
    first_byte >> 4
}

/// The length in bytes of an IPv4 header (options included) from its version/IHL byte: IHL
/// words of 4 bytes, 0..=60 (a valid header has at least 20).
#[inline(always)]
pub const fn ipv4_header_len(version_ihl: u8) -> usize {
    ((version_ihl & 0x0f) as usize) * 4
}

/// Whether the IPv4 flags/fragment-offset field `flags_offset` is a fragment's: "more fragments"
/// set (the first fragment) or a non-zero offset (any later one). Unfragmented packets, with or
/// without "don't fragment", are not.
#[inline(always)]
pub const fn ipv4_is_fragment(flags_offset: [u8; 2]) -> bool {
    flags_offset[0] & (IPV4_MORE_FRAGMENTS | IPV4_OFFSET_HIGH_BITS) != 0 || flags_offset[1] != 0
}

/// Whether the IPv4 flags/fragment-offset field `flags_offset` has "don't fragment" set.
#[inline(always)]
pub const fn ipv4_dont_fragment(flags_offset: [u8; 2]) -> bool {
    flags_offset[0] & IPV4_DONT_FRAGMENT != 0
}

/// The flags/fragment-offset field of an unfragmented IPv4 packet, with "don't fragment" as
/// given.
#[inline(always)]
pub const fn ipv4_unfragmented(dont_fragment: bool) -> [u8; 2] {
    if dont_fragment {
        [IPV4_DONT_FRAGMENT, 0]
    } else {
        [0, 0]
    }
}

/// The IPv4 header checksum (RFC 791) of a 20-byte header given as its ten 16-bit words in
/// host order (`u16::from_be_bytes` of each byte pair): the one's complement of the one's
/// complement sum of the words (RFC 1071).
///
/// With the checksum word zero this is the value to store; over a header that carries its
/// correct checksum it is zero.
#[inline(always)]
pub fn ipv4_checksum(words: [u16; 10]) -> u16 {
    let mut sum: u32 = 0;
    for word in words {
        sum += word as u32;
    }
    // Ten words sum to less than 2^20: two folds bring any carry back into 16 bits.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The traffic class of an IPv6 header from its first four bytes (version, traffic class, flow
/// label).
#[inline(always)]
pub const fn ipv6_traffic_class(version_class_label: [u8; 4]) -> u8 {
    (version_class_label[0] << 4) | (version_class_label[1] >> 4)
}

/// The flow label of a tunnel packet carrying a flow whose hash is `flow_hash`: its low 20
/// bits, so routers between us and the backend can spread tunnels over ECMP paths per flow
/// (RFC 6438).
#[inline(always)]
pub const fn ipv6_flow_label(flow_hash: u32) -> u32 {
    flow_hash & IPV6_FLOW_LABEL
}

/// The first four bytes of an IPv6 header: version 6, `traffic_class`, and the low 20 bits of
/// `flow_label`.
#[inline(always)]
pub const fn ipv6_version_class_label(traffic_class: u8, flow_label: u32) -> [u8; 4] {
    ((6u32 << 28) | ((traffic_class as u32) << 20) | (flow_label & IPV6_FLOW_LABEL)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IpFragOffset, IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Header, Ipv6FlowLabel};
    use proptest::prelude::*;

    /// The ten 16-bit words of a 20-byte header.
    fn words(header: &[u8]) -> [u16; 10] {
        core::array::from_fn(|i| u16::from_be_bytes([header[2 * i], header[2 * i + 1]]))
    }

    #[test]
    fn checksum_of_the_rfc_1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2, whose complement is 220d.
        let mut example = [0; 10];
        example[..4].copy_from_slice(&[0x0001, 0xf203, 0xf4f5, 0xf6f7]);
        assert_eq!(ipv4_checksum(example), !0xddf2);
        assert_eq!(ipv4_checksum(example), 0x220d);
    }

    #[test]
    fn checksum_of_a_known_header() {
        // 192.168.0.1 → 192.168.0.199, UDP, total length 0x73, DF: checksum 0xb861.
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(words(&header)), 0xb861);
        header[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(
            ipv4_checksum(words(&header)),
            0,
            "a correct header sums to zero"
        );
    }

    #[test]
    fn checksum_folds_carries() {
        // 10 × 0xffff: every word is "negative zero"; the sum folds to 0xffff, checksum 0.
        assert_eq!(ipv4_checksum([0xffff; 10]), 0);
        assert_eq!(ipv4_checksum([0; 10]), 0xffff);
        // 0xffff + 0x0001 = 0x1_0000 → folds to 0x0001, checksum 0xfffe.
        let mut carry = [0; 10];
        carry[0] = 0xffff;
        carry[1] = 0x0001;
        assert_eq!(ipv4_checksum(carry), 0xfffe);
    }

    #[test]
    fn header_length_and_version() {
        assert_eq!(ipv4_header_len(IPV4_VERSION_IHL_NO_OPTIONS), 20);
        assert_eq!(ipv4_header_len(0x4f), 60);
        assert_eq!(ipv4_header_len(0x44), 16);
        assert_eq!(version(IPV4_VERSION_IHL_NO_OPTIONS), 4);
        assert_eq!(version(0x60), 6);
    }

    #[test]
    fn fragments() {
        assert!(!ipv4_is_fragment([0, 0]));
        assert!(!ipv4_is_fragment([IPV4_DONT_FRAGMENT, 0]));
        assert!(ipv4_is_fragment([IPV4_MORE_FRAGMENTS, 0]), "first fragment");
        assert!(ipv4_is_fragment([0, 1]), "offset 8");
        assert!(ipv4_is_fragment([0x10, 0]), "offset's high bit");
        // The reserved flag (0x80) is not a fragment.
        assert!(!ipv4_is_fragment([0x80, 0]));
        assert!(ipv4_dont_fragment(ipv4_unfragmented(true)));
        assert!(!ipv4_dont_fragment(ipv4_unfragmented(false)));
        assert!(!ipv4_is_fragment(ipv4_unfragmented(true)));
    }

    #[test]
    fn ipv6_first_word() {
        assert_eq!(ipv6_version_class_label(0, 0), [0x60, 0, 0, 0]);
        assert_eq!(
            ipv6_version_class_label(0xb8, 0x1_2345),
            [0x6b, 0x81, 0x23, 0x45]
        );
        assert_eq!(ipv6_traffic_class([0x6b, 0x81, 0x23, 0x45]), 0xb8);
        assert_eq!(ipv6_flow_label(0xdead_beef), 0xd_beef);
        // A label wider than 20 bits cannot reach the version or traffic class.
        assert_eq!(
            ipv6_version_class_label(0, u32::MAX),
            [0x60, 0x0f, 0xff, 0xff]
        );
    }

    proptest! {
        #[test]
        fn checksum_matches_etherparse(
            payload_len in 0u16..=(u16::MAX - 20),
            dscp in 0u8..64,
            ecn in 0u8..4,
            identification: u16,
            dont_fragment: bool,
            more_fragments: bool,
            fragment_offset in 0u16..0x2000,
            ttl: u8,
            protocol: u8,
            source: [u8; 4],
            destination: [u8; 4],
        ) {
            let mut header =
                Ipv4Header::new(payload_len, ttl, IpNumber(protocol), source, destination)
                    .expect("header");
            header.dscp = Ipv4Dscp::try_new(dscp).expect("dscp");
            header.ecn = Ipv4Ecn::try_new(ecn).expect("ecn");
            header.identification = identification;
            header.dont_fragment = dont_fragment;
            header.more_fragments = more_fragments;
            header.fragment_offset = IpFragOffset::try_new(fragment_offset).expect("offset");
            let bytes = header.to_bytes();
            prop_assert_eq!(ipv4_checksum(words(&bytes)), header.calc_header_checksum());
            header.header_checksum = header.calc_header_checksum();
            prop_assert_eq!(ipv4_checksum(words(&header.to_bytes())), 0);

            let flags_offset = [bytes[6], bytes[7]];
            prop_assert_eq!(ipv4_is_fragment(flags_offset), header.is_fragmenting_payload());
            prop_assert_eq!(ipv4_dont_fragment(flags_offset), dont_fragment);
            prop_assert_eq!(ipv4_header_len(bytes[0]), header.header_len());
            prop_assert_eq!(version(bytes[0]), 4);
        }

        #[test]
        fn ipv6_first_word_matches_etherparse(traffic_class: u8, flow_hash: u32) {
            let label = ipv6_flow_label(flow_hash);
            let header = etherparse::Ipv6Header {
                traffic_class,
                flow_label: Ipv6FlowLabel::try_new(label).expect("20 bits"),
                ..Default::default()
            };
            let bytes = header.to_bytes();
            let first = ipv6_version_class_label(traffic_class, label);
            prop_assert_eq!(&bytes[..4], &first[..]);
            prop_assert_eq!(ipv6_traffic_class(first), traffic_class);
            prop_assert_eq!(version(first[0]), 6);
        }
    }
}
