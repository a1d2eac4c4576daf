//! The `decap` program for backends: strips an IPIP / IP6IP6 / 4in6 / 6in4 header addressed to
//! one of this host's addresses (`DECAP_ADDRS`) and passes the inner packet up the stack, so
//! tunnel-mode backends need no tunnel device (this kernel has no ipip module).

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    ip::{ipv4_is_fragment, version},
    maps::{DecapKey, Family},
    stats::DecapCounter,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    maps::DECAP_ADDRS,
    net::{
        ethernet, move_ethernet_header, ptr_at, StackKey, ETH_LEN, ETH_P_IP, ETH_P_IPV6,
        IPPROTO_IPIP, IPPROTO_IPV6, IPV4_LEN, IPV4_VERSION_IHL_NO_OPTIONS, IPV6_LEN, VLAN_ETH_LEN,
    },
};

/// Why a packet is not stripped.
#[derive(Clone, Copy)]
enum Kept {
    /// Not a tunnel packet for this host (or too short to be one): passed untouched.
    NotOurs,
    /// Addressed to us as a tunnel, but what it carries is not an IP packet: dropped.
    Malformed,
}

/// What to do with a packet: the verdict and the counter to bump.
pub fn decap(ctx: &XdpContext) -> (u32, DecapCounter) {
    match try_decap(ctx) {
        Ok(()) => (xdp_action::XDP_PASS, DecapCounter::Decapsulated),
        Err(Kept::NotOurs) => (xdp_action::XDP_PASS, DecapCounter::Passed),
        Err(Kept::Malformed) => (xdp_action::XDP_DROP, DecapCounter::Malformed),
    }
}

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<(), Kept> {
    let (l2_len, ether_type) = ethernet(ctx).map_err(|_| Kept::NotOurs)?;
    match (l2_len, ether_type) {
        (ETH_LEN, ETH_P_IP) => outer_ipv4::<ETH_LEN>(ctx),
        (ETH_LEN, ETH_P_IPV6) => outer_ipv6::<ETH_LEN>(ctx),
        (VLAN_ETH_LEN, ETH_P_IP) => outer_ipv4::<VLAN_ETH_LEN>(ctx),
        (VLAN_ETH_LEN, ETH_P_IPV6) => outer_ipv6::<VLAN_ETH_LEN>(ctx),
        _ => Err(Kept::NotOurs),
    }
}

#[inline(always)]
fn outer_ipv4<const L2: usize>(ctx: &XdpContext) -> Result<(), Kept> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, L2).map_err(|_| Kept::NotOurs)?;
    // SAFETY: ptr_at checked the 20-byte header is inside the packet.
    let ip = unsafe { &*ip };
    // Our tunnels never carry IP options or fragments; anything else is not ours to strip.
    let is_fragment = ipv4_is_fragment(ip.frags);
    if ip.vihl != IPV4_VERSION_IHL_NO_OPTIONS || is_fragment || !is_local(&ip.dst_addr, Family::V4)
    {
        return Err(Kept::NotOurs);
    }
    strip::<L2, IPV4_LEN>(ctx, ip.proto)
}

#[inline(always)]
fn outer_ipv6<const L2: usize>(ctx: &XdpContext) -> Result<(), Kept> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, L2).map_err(|_| Kept::NotOurs)?;
    // SAFETY: ptr_at checked the 40-byte header is inside the packet.
    let ip = unsafe { &*ip };
    if !is_local(&ip.dst_addr, Family::V6) {
        return Err(Kept::NotOurs);
    }
    strip::<L2, IPV6_LEN>(ctx, ip.next_hdr)
}

#[inline(always)]
fn is_local(addr: &[u8], family: Family) -> bool {
    let word = |at: usize| u32::from_le_bytes([addr[at], addr[at + 1], addr[at + 2], addr[at + 3]]);
    let mut words = [word(0), 0, 0, 0, u32::from(family as u8)];
    if family == Family::V6 {
        (words[1], words[2], words[3]) = (word(4), word(8), word(12));
    }
    // DecapKey's bytes: the address (16), the family, zeros.
    let key = StackKey::new(words);
    DECAP_ADDRS.get_ptr(key.as_key::<DecapKey>()).is_some()
}

/// Removes the `OUTER`-byte header after the `L2`-byte Ethernet header if it carries IPv4 or
/// IPv6, and sets the ethertype to the inner family.
#[inline(always)]
fn strip<const L2: usize, const OUTER: usize>(
    ctx: &XdpContext,
    inner_protocol: u8,
) -> Result<(), Kept> {
    let (ether_type, inner_version) = match inner_protocol {
        IPPROTO_IPIP => (ETH_P_IP, 4),
        IPPROTO_IPV6 => (ETH_P_IPV6, 6),
        _ => return Err(Kept::NotOurs),
    };
    let inner: *const u8 = ptr_at(ctx, L2 + OUTER).map_err(|_| Kept::Malformed)?;
    // SAFETY: ptr_at checked the inner header's first byte is inside the packet.
    if version(unsafe { *inner }) != inner_version {
        return Err(Kept::Malformed);
    }
    move_ethernet_header::<L2, 0, OUTER>(ctx, ether_type).map_err(|_| Kept::Malformed)?;
    // SAFETY: shrinking by OUTER bytes stays inside the packet (checked above); pointers are
    // not used afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, OUTER as i32) } != 0 {
        return Err(Kept::Malformed);
    }
    Ok(())
}
