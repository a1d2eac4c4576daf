//! Sending a packet to its backend: layer-2 DSR (MAC rewrite) or IP-in-IP encapsulation, then
//! `XDP_TX` (egress = ingress interface) or `XDP_REDIRECT` through `TX_PORTS`.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    maps::{Backend, Family, ForwardMode, Settings, Vip},
    stats::DropReason,
    tunnel::{
        outer_ipv4, outer_ipv4_with_hop, outer_ipv6, outer_ipv6_with_hop, Header,
        HOP_OPTIONS_V6_LEN, HOP_OPTION_V4_LEN,
    },
};
use network_types::eth::EthHdr;

use crate::{
    balance::Choice,
    maps::TX_PORTS,
    net::{
        move_ethernet_header, ptr_at, ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6,
        IPV4_LEN, IPV6_LEN, VLAN_ETH_LEN,
    },
    parse::Packet,
};

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

/// An outer IPv4 header with the second-chance hop option.
const IPV4_HOP_LEN: usize = IPV4_LEN + HOP_OPTION_V4_LEN;
/// An outer IPv6 header with the destination options header carrying the hop.
const IPV6_HOP_LEN: usize = IPV6_LEN + HOP_OPTIONS_V6_LEN;

/// Prepends an outer IPv4 or IPv6 header (the backend's family), with the second-chance hop
/// if the choice has one, between the Ethernet header (`L2` bytes) and the untouched inner IP
/// packet.
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
        let v4 = |addr: &[u8; 16]| [addr[0], addr[1], addr[2], addr[3]];
        let (tos, len, df) = (packet.tos, packet.ip_len, packet.dont_fragment);
        let source = settings.tunnel_source_v4;
        match choice.hop {
            None => {
                push_outer::<L2, IPV4_LEN, { IPV4_LEN / 4 }>(ctx, packet, backend, ETH_P_IP, || {
                    outer_ipv4(tos, len, df, inner_protocol, source, v4(&backend.addr))
                })
            }
            Some(hop) => push_outer::<L2, IPV4_HOP_LEN, { IPV4_HOP_LEN / 4 }>(
                ctx,
                packet,
                backend,
                ETH_P_IP,
                || {
                    outer_ipv4_with_hop(
                        tos,
                        len,
                        df,
                        inner_protocol,
                        source,
                        v4(&backend.addr),
                        v4(&hop.addr),
                    )
                },
            ),
        }
    } else {
        // The flow label carries a hash of the flow (ECMP per flow, RFC 6438).
        let (class, label, len) = (packet.tos, choice.flow_label, packet.ip_len);
        let source = &settings.tunnel_source_v6;
        match choice.hop {
            None => push_outer::<L2, IPV6_LEN, { IPV6_LEN / 4 }>(
                ctx,
                packet,
                backend,
                ETH_P_IPV6,
                || outer_ipv6(class, label, len, inner_protocol, source, &backend.addr),
            ),
            Some(hop) => push_outer::<L2, IPV6_HOP_LEN, { IPV6_HOP_LEN / 4 }>(
                ctx,
                packet,
                backend,
                ETH_P_IPV6,
                || {
                    outer_ipv6_with_hop(
                        class,
                        label,
                        len,
                        inner_protocol,
                        source,
                        &backend.addr,
                        &hop.addr,
                    )
                },
            ),
        }
    }
}

/// Puts the header `header` builds (`LEN` bytes, `WORDS` words) between the Ethernet header
/// and the inner packet, after checking the result fits the backend's MTU. (Built once the
/// room is made: built before, it lives on the stack across the helper call.)
#[inline(always)]
fn push_outer<const L2: usize, const LEN: usize, const WORDS: usize>(
    ctx: &XdpContext,
    packet: &Packet,
    backend: &Backend,
    ether_type: u16,
    header: impl FnOnce() -> Header<WORDS>,
) -> Result<(), DropReason> {
    check_mtu(packet, backend, LEN)?;
    make_room::<L2, LEN>(ctx, ether_type)?;
    write_outer::<L2, WORDS>(ctx, header())
}

/// Writes `header` (`WORDS` words) after the `L2`-byte Ethernet header.
#[inline(always)]
fn write_outer<const L2: usize, const WORDS: usize>(
    ctx: &XdpContext,
    header: Header<WORDS>,
) -> Result<(), DropReason> {
    let outer: *mut [u32; WORDS] = ptr_at(ctx, L2)?;
    // SAFETY: ptr_at checked the outer header's bytes are inside the packet; packet memory may
    // be written unaligned.
    unsafe { outer.write_unaligned(header.0) };
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
