//! Sending a packet to its backend: layer-2 DSR (MAC rewrite) or IP-in-IP encapsulation, then
//! `XDP_TX` (egress = ingress interface) or `XDP_REDIRECT` through `TX_PORTS`.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    ip::{ipv4_checksum, ipv4_unfragmented, ipv6_version_class_label},
    maps::{Backend, Family, ForwardMode, Settings, Vip},
    stats::DropReason,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    balance::Choice,
    maps::TX_PORTS,
    net::{
        move_ethernet_header, ptr_at, ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6,
        IPV4_LEN, IPV4_VERSION_IHL_NO_OPTIONS, IPV6_LEN, VLAN_ETH_LEN,
    },
    parse::Packet,
};

const TUNNEL_TTL: u8 = 64;

/// How a forwarded packet leaves.
#[derive(Clone, Copy)]
pub enum Egress {
    /// `XDP_TX`: out of the interface it came in on.
    Tx,
    /// `XDP_REDIRECT`: out of another interface, through `TX_PORTS`.
    Redirect,
}

/// Forwards a load-balanced packet to `choice`. Every failure is a drop: the packet is a VIP's.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    packet: &Packet,
    vip: &Vip,
    choice: &Choice,
    settings: &Settings,
) -> Result<Egress, DropReason> {
    let backend = choice.backend;
    match ForwardMode::from_raw(vip.forward) {
        Some(ForwardMode::Tunnel) => match packet.l2_len {
            VLAN_ETH_LEN => encapsulate::<VLAN_ETH_LEN>(ctx, packet, choice, settings)?,
            _ => encapsulate::<ETH_LEN>(ctx, packet, choice, settings)?,
        },
        // Only the MAC addresses change (an unknown mode, which the agent never writes, too).
        Some(ForwardMode::Dsr) | None => {}
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the Ethernet header is inside the (possibly grown) packet; the
    // MACs come from a BACKENDS value, which cannot overlap the packet. (Told so, LLVM copies
    // the bytes inline; `=` would call a byte-by-byte memmove.)
    unsafe {
        core::ptr::copy_nonoverlapping(&backend.dst_mac, &raw mut (*eth).dst_addr, 1);
        core::ptr::copy_nonoverlapping(&backend.src_mac, &raw mut (*eth).src_addr, 1);
    }
    egress(ctx, backend)
}

#[inline(always)]
fn egress(ctx: &XdpContext, backend: &Backend) -> Result<Egress, DropReason> {
    if backend.ifindex as usize == ctx.ingress_ifindex() {
        return Ok(Egress::Tx);
    }
    // Ok means the helper returned XDP_REDIRECT (a missing port returns the flags, 0).
    match TX_PORTS.redirect(backend.ifindex, 0) {
        Ok(_) => Ok(Egress::Redirect),
        Err(_) => Err(DropReason::RedirectFailed),
    }
}

/// Prepends an outer IPv4 or IPv6 header (the backend's family) between the Ethernet header
/// (`L2` bytes) and the untouched inner IP packet.
#[inline(always)]
fn encapsulate<const L2: usize>(
    ctx: &XdpContext,
    packet: &Packet,
    choice: &Choice,
    settings: &Settings,
) -> Result<(), DropReason> {
    let backend = choice.backend;
    let inner_protocol = if packet.flow.family == Family::V4 as u8 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    if backend.family == Family::V4 as u8 {
        check_mtu(packet, backend, IPV4_LEN)?;
        make_room::<L2, IPV4_LEN>(ctx, ETH_P_IP)?;
        let header = ipv4_header(packet, backend, settings, inner_protocol);
        let outer: *mut Ipv4Hdr = ptr_at(ctx, L2)?;
        // SAFETY: ptr_at checked the outer header's 20 bytes are inside the packet.
        unsafe { *outer = header };
    } else {
        check_mtu(packet, backend, IPV6_LEN)?;
        make_room::<L2, IPV6_LEN>(ctx, ETH_P_IPV6)?;
        let header = ipv6_header(packet, choice, settings, inner_protocol);
        let outer: *mut Ipv6Hdr = ptr_at(ctx, L2)?;
        // SAFETY: ptr_at checked the outer header's 40 bytes are inside the packet.
        unsafe { *outer = header };
    }
    Ok(())
}

#[inline(always)]
fn check_mtu(packet: &Packet, backend: &Backend, outer_len: usize) -> Result<(), DropReason> {
    if packet.ip_len + outer_len as u32 > backend.mtu {
        return Err(DropReason::TooBig);
    }
    Ok(())
}

/// Grows the packet by `OUTER` bytes at the front and moves the `L2`-byte Ethernet header there,
/// with `ether_type` as its (innermost) ethertype. Leaves `OUTER` bytes after it to fill.
#[inline(always)]
fn make_room<const L2: usize, const OUTER: usize>(
    ctx: &XdpContext,
    ether_type: u16,
) -> Result<(), DropReason> {
    // SAFETY: the helper only moves ctx->data within the frame's headroom, and fails (non-zero)
    // if there is not enough; all packet pointers are re-derived and re-checked afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER as i32)) } != 0 {
        return Err(DropReason::NoHeadroom);
    }
    move_ethernet_header::<L2, OUTER, 0>(ctx, ether_type)?;
    Ok(())
}

#[inline(always)]
fn ipv4_header(
    packet: &Packet,
    backend: &Backend,
    settings: &Settings,
    inner_protocol: u8,
) -> Ipv4Hdr {
    let mut header = Ipv4Hdr {
        vihl: IPV4_VERSION_IHL_NO_OPTIONS,
        tos: packet.tos,
        tot_len: ((packet.ip_len as usize + IPV4_LEN) as u16).to_be_bytes(),
        id: [0, 0],
        frags: ipv4_unfragmented(packet.dont_fragment),
        ttl: TUNNEL_TTL,
        proto: inner_protocol,
        check: [0, 0],
        src_addr: settings.tunnel_source_v4,
        dst_addr: [
            backend.addr[0],
            backend.addr[1],
            backend.addr[2],
            backend.addr[3],
        ],
    };
    // The header's ten words, the checksum word still zero.
    header.check = ipv4_checksum([
        u16::from_be_bytes([header.vihl, header.tos]),
        u16::from_be_bytes(header.tot_len),
        u16::from_be_bytes(header.id),
        u16::from_be_bytes(header.frags),
        u16::from_be_bytes([header.ttl, header.proto]),
        u16::from_be_bytes(header.check),
        u16::from_be_bytes([header.src_addr[0], header.src_addr[1]]),
        u16::from_be_bytes([header.src_addr[2], header.src_addr[3]]),
        u16::from_be_bytes([header.dst_addr[0], header.dst_addr[1]]),
        u16::from_be_bytes([header.dst_addr[2], header.dst_addr[3]]),
    ])
    .to_be_bytes();
    header
}

#[inline(always)]
fn ipv6_header(
    packet: &Packet,
    choice: &Choice,
    settings: &Settings,
    inner_protocol: u8,
) -> Ipv6Hdr {
    let backend = choice.backend;
    // The flow label carries a hash of the flow (ECMP per flow, RFC 6438).
    let flow_label = choice.flow_label;
    Ipv6Hdr {
        vcf: ipv6_version_class_label(packet.tos, flow_label),
        payload_len: (packet.ip_len as u16).to_be_bytes(),
        next_hdr: inner_protocol,
        hop_limit: TUNNEL_TTL,
        src_addr: settings.tunnel_source_v6,
        dst_addr: backend.addr,
    }
}
