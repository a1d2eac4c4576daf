//! The 5-tuple of a flow and the one hash the datapath uses to pick a ring slot.
//!
//! The XDP program and userspace (`lb explain`, tests) call the same [`flow_hash`], so the slot
//! a packet lands on can be predicted exactly from the configuration and the 5-tuple.

use crate::maps::{Family, Protocol};

/// A flow as seen by the load balancer: client → VIP. Also the key of the `CONNTRACK` map.
///
/// IPv4 addresses occupy the first four bytes of `src`/`dst`; the remaining twelve are zero.
///
/// Aligned to 8 bytes, which adds no padding (the size, 40, is a multiple of 8): the XDP
/// program then builds, copies and hashes keys a word at a time instead of byte by byte.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address, network byte order.
    pub src: [u8; 16],
    /// VIP address, network byte order.
    pub dst: [u8; 16],
    /// Client port, network byte order.
    pub src_port: [u8; 2],
    /// VIP port, network byte order.
    pub dst_port: [u8; 2],
    /// [`Protocol`] as its IP protocol number.
    pub protocol: u8,
    /// [`Family`] as `4` or `6`.
    pub family: u8,
    /// Always zero (keeps the key free of uninitialised padding).
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// An IPv4 flow.
    pub const fn v4(
        src: [u8; 4],
        dst: [u8; 4],
        src_port: u16,
        dst_port: u16,
        protocol: Protocol,
    ) -> Self {
        let mut key = Self::zeroed(Family::V4, protocol, src_port, dst_port);
        let mut i = 0;
        while i < 4 {
            key.src[i] = src[i];
            key.dst[i] = dst[i];
            i += 1;
        }
        key
    }

    /// An IPv6 flow.
    pub const fn v6(
        src: [u8; 16],
        dst: [u8; 16],
        src_port: u16,
        dst_port: u16,
        protocol: Protocol,
    ) -> Self {
        let mut key = Self::zeroed(Family::V6, protocol, src_port, dst_port);
        key.src = src;
        key.dst = dst;
        key
    }

    /// The key as ten little-endian 32-bit words: source address (4), destination address
    /// (4), the two ports, then protocol and family. The datapath works on these, a word at a
    /// time.
    #[inline(always)]
    pub const fn words(&self) -> [u32; 10] {
        let (s, d) = (&self.src, &self.dst);
        [
            u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
            u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
            u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
            u32::from_le_bytes([s[12], s[13], s[14], s[15]]),
            u32::from_le_bytes([d[0], d[1], d[2], d[3]]),
            u32::from_le_bytes([d[4], d[5], d[6], d[7]]),
            u32::from_le_bytes([d[8], d[9], d[10], d[11]]),
            u32::from_le_bytes([d[12], d[13], d[14], d[15]]),
            u32::from_le_bytes([
                self.src_port[0],
                self.src_port[1],
                self.dst_port[0],
                self.dst_port[1],
            ]),
            u32::from_le_bytes([self.protocol, self.family, self._pad[0], self._pad[1]]),
        ]
    }

    const fn zeroed(family: Family, protocol: Protocol, src_port: u16, dst_port: u16) -> Self {
        Self {
            src: [0; 16],
            dst: [0; 16],
            src_port: src_port.to_be_bytes(),
            dst_port: dst_port.to_be_bytes(),
            protocol: protocol as u8,
            family: family as u8,
            _pad: [0; 2],
        }
    }
}

/// Seed of [`flow_hash`]. Fixed so that every lb instance (e.g. several behind ECMP) hashes a flow
/// to the same slot.
pub const FLOW_HASH_SEED: u32 = 0x6c62_5f31; // "lb_1"

/// Hash of a flow's 5-tuple: murmur3 (32-bit) over the address words that the family uses, the
/// two ports and the protocol. The ring slot is `flow_hash(key) % ring_size`.
///
/// Cheap enough for the per-packet path (4 rounds for IPv4, 10 for IPv6, no loops the verifier
/// has to walk), and it mixes every input bit into every output bit.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let ports = u32::from_be_bytes([
        key.src_port[0],
        key.src_port[1],
        key.dst_port[0],
        key.dst_port[1],
    ]);
    let proto = (key.protocol as u32) | ((key.family as u32) << 8);
    let mut h = FLOW_HASH_SEED;
    h = round(h, word(&key.src, 0));
    h = round(h, word(&key.dst, 0));
    let mut len = 16;
    if key.family == Family::V6 as u8 {
        h = round(h, word(&key.src, 4));
        h = round(h, word(&key.src, 8));
        h = round(h, word(&key.src, 12));
        h = round(h, word(&key.dst, 4));
        h = round(h, word(&key.dst, 8));
        h = round(h, word(&key.dst, 12));
        len = 40;
    }
    h = round(h, ports);
    h = round(h, proto);
    finish(h ^ len)
}

#[inline(always)]
fn word(bytes: &[u8; 16], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[inline(always)]
fn round(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_changes_the_hash() {
        let base = FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 100], 40000, 80, Protocol::Tcp);
        let h = flow_hash(&base);
        let variants = [
            FlowKey::v4([10, 0, 0, 2], [10, 0, 0, 100], 40000, 80, Protocol::Tcp),
            FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 101], 40000, 80, Protocol::Tcp),
            FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 100], 40001, 80, Protocol::Tcp),
            FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 100], 40000, 81, Protocol::Tcp),
            FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 100], 40000, 80, Protocol::Udp),
        ];
        for v in variants {
            assert_ne!(flow_hash(&v), h, "{v:?}");
        }
        let mut v6 = FlowKey::v6([1; 16], [2; 16], 1, 2, Protocol::Tcp);
        let h6 = flow_hash(&v6);
        v6.src[15] ^= 1;
        assert_ne!(flow_hash(&v6), h6);
    }

    #[test]
    fn spreads_source_ports_evenly() {
        const SLOTS: usize = 7;
        let mut count = [0u32; SLOTS];
        for port in 1024..(1024 + 7000) {
            let key = FlowKey::v4([192, 0, 2, 7], [10, 0, 0, 100], port, 443, Protocol::Tcp);
            count[flow_hash(&key) as usize % SLOTS] += 1;
        }
        for c in count {
            assert!((900..1100).contains(&c), "uneven spread {count:?}");
        }
    }

    #[test]
    fn is_stable_across_releases() {
        // Changing the hash moves every flow that has no conntrack entry: do it on purpose only.
        let key = FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 100], 40000, 80, Protocol::Tcp);
        let pinned = flow_hash(&key);
        assert_eq!(pinned, STABLE_V4, "flow hash changed: {pinned:#x}");
    }

    const STABLE_V4: u32 = 0x8bb9_714a;
}
