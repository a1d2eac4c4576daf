//! Header constants and bounds-checked packet access, shared by every packet path (`parse`,
//! `forward`, `decap`).
//!
//! The pure header arithmetic (checksum, IPv4 lengths and fragment bits, IPv6 traffic class
//! and flow label) is in [`lb_common::ip`], unit-tested on the host, with the IPv4 flag bits
//! it uses; the one of its constants the programs use directly is re-exported here.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
pub use lb_common::ip::IPV4_VERSION_IHL_NO_OPTIONS;
use network_types::eth::EthHdr;

/// Ethertype of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// Ethertype of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// An 802.1Q tag: TCI (2 bytes) then the encapsulated ethertype (2 bytes).
pub const VLAN_TAG_LEN: usize = 4;
/// Ethernet header length without a VLAN tag.
pub const ETH_LEN: usize = size_of::<EthHdr>();
/// Ethernet header length with one VLAN tag.
pub const VLAN_ETH_LEN: usize = ETH_LEN + VLAN_TAG_LEN;
/// Fixed IPv4 header length (tunnel headers carry no options).
pub const IPV4_LEN: usize = 20;
/// Fixed IPv6 header length.
pub const IPV6_LEN: usize = 40;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of IPv4 in IP (IPIP, 4in6).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6 in IP (IP6IP6, 6in4).
pub const IPPROTO_IPV6: u8 = 41;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 next-header values of extension headers (RFC 8200 §4, RFC 6564 list, plus ESP/AH).
pub const IPV6_EXTENSION_HEADERS: [u8; 9] = [0, 43, 44, 50, 51, 60, 135, 139, 140];

/// ICMP types that quote the packet they are about: destination unreachable (fragmentation
/// needed included), time exceeded, parameter problem.
pub const ICMP_ERRORS: [u8; 3] = [3, 11, 12];
/// ICMPv6 types that quote the packet they are about: destination unreachable, packet too big,
/// time exceeded, parameter problem.
pub const ICMPV6_ERRORS: [u8; 4] = [1, 2, 3, 4];
/// ICMP/ICMPv6 header before the quoted packet: type, code, checksum, 4 bytes (MTU, pointer...).
pub const ICMP_HEADER_LEN: usize = 8;

/// A map key of up to 24 bytes on the stack, written as three aligned 8-byte words.
///
/// The programs are compiled to access memory unaligned (see `build.rs`), so LLVM may merge
/// stores to a key built field by field into 8-byte stores at any 4-byte boundary, which the
/// verifier rejects on the stack; these three stores are aligned whatever LLVM does.
#[repr(C, align(8))]
pub struct StackKey([u64; 3]);

impl StackKey {
    /// The key whose bytes are those of `words`, each in little-endian order (the order of
    /// `VipKey::words`), then zeros.
    #[inline(always)]
    pub fn new(words: [u32; 5]) -> Self {
        let pair = |low: u32, high: u32| {
            let (l, h) = (low.to_le_bytes(), high.to_le_bytes());
            u64::from_ne_bytes([l[0], l[1], l[2], l[3], h[0], h[1], h[2], h[3]])
        };
        Self([
            pair(words[0], words[1]),
            pair(words[2], words[3]),
            pair(words[4], 0),
        ])
    }

    /// The key as a `T`: a `repr(C)` type of byte arrays of at most 24 bytes (any bytes are a
    /// valid value).
    #[inline(always)]
    pub fn as_key<T: KeyBytes>(&self) -> &T {
        const { assert!(size_of::<T>() <= size_of::<Self>() && align_of::<T>() <= 8) };
        // SAFETY: `T` fits in the 24 bytes and their 8-byte alignment (checked above) and, by
        // `KeyBytes`, any bytes are a valid `T`.
        unsafe { &*(self as *const Self).cast::<T>() }
    }
}

/// Map keys made only of byte arrays and integers, without padding: any bytes are a value.
///
/// # Safety
///
/// Implement only for such types.
pub unsafe trait KeyBytes {}

// SAFETY: VipKey is repr(C): [u8; 16], [u8; 2], u8, u8, no padding.
unsafe impl KeyBytes for lb_common::maps::VipKey {}
// SAFETY: DecapKey is repr(C): [u8; 16], u8, [u8; 3], no padding.
unsafe impl KeyBytes for lb_common::maps::DecapKey {}

/// A header that would end past `data_end`: the packet is too short for it.
#[derive(Clone, Copy, Debug)]
pub struct OutOfBounds;

/// A pointer to a `T` at `offset` bytes into the packet, if the whole `T` is inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, OutOfBounds> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(OutOfBounds);
    }
    Ok((start + offset) as *mut T)
}

/// Copies the `L2`-byte Ethernet header at offset `FROM` to offset `TO` with `ether_type` as
/// its (innermost) ethertype: how a tunnel header is inserted (FROM > TO, after growing the
/// packet at the front) or removed (TO > FROM, before shrinking it).
#[inline(always)]
pub fn move_ethernet_header<const L2: usize, const FROM: usize, const TO: usize>(
    ctx: &XdpContext,
    ether_type: u16,
) -> Result<(), OutOfBounds> {
    let from: *const [u8; L2] = ptr_at(ctx, FROM)?;
    let to: *mut [u8; L2] = ptr_at(ctx, TO)?;
    // SAFETY: ptr_at checked both ranges are inside the packet; callers move by a whole tunnel
    // header (20 or 40 bytes) >= L2 (14 or 18), so the ranges do not overlap. (Told so, LLVM
    // inlines the copy; `*to = *from` becomes a call to a byte-by-byte memmove loop.)
    unsafe {
        core::ptr::copy_nonoverlapping(from, to, 1);
        let ether_type = ether_type.to_be_bytes();
        (*to)[L2 - 2] = ether_type[0];
        (*to)[L2 - 1] = ether_type[1];
    }
    Ok(())
}

/// Ethernet header length (14, or 18 with one VLAN tag) and the ethertype that follows it.
#[inline(always)]
pub fn ethernet(ctx: &XdpContext) -> Result<(usize, u16), OutOfBounds> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the 14-byte Ethernet header is inside the packet.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type != ETH_P_8021Q {
        return Ok((ETH_LEN, ether_type));
    }
    let tag: *const [u8; VLAN_TAG_LEN] = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: ptr_at checked that the 4-byte tag is inside the packet.
    let tag = unsafe { *tag };
    Ok((VLAN_ETH_LEN, u16::from_be_bytes([tag[2], tag[3]])))
}

/// The flow key whose bytes are `words` in memory order: source address (4 words), destination
/// address (4), the ports, then protocol, family and zero padding.
#[inline(always)]
pub fn flow_key_of_words(words: [u32; 10]) -> lb_common::FlowKey {
    // SAFETY: FlowKey is repr(C), 40 bytes of byte arrays with no padding, whose fields in
    // order are src, dst, src_port, dst_port, protocol, family, _pad: any 40 bytes are a valid
    // key.
    unsafe { core::mem::transmute::<[u32; 10], lb_common::FlowKey>(words) }
}
