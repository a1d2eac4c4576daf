//! Sending a packet to its backend: layer-2 DSR (MAC rewrite) or IP-in-IP encapsulation, then
//! `XDP_TX` (egress = ingress interface) or `XDP_REDIRECT` through `TX_PORTS`.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    flow_hash,
    maps::{Backend, Family, ForwardMode, Settings, Vip},
    stats::Counter,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    balance::Choice,
    maps::{SETTINGS, TX_PORTS},
    parse::{
        move_ethernet_header, ptr_at, Packet, Unhandled, ETH_LEN, ETH_P_IP, ETH_P_IPV6,
        IPPROTO_IPIP, IPPROTO_IPV6, IPV4_LEN, IPV6_LEN, VLAN_ETH_LEN,
    },
};

const TUNNEL_TTL: u8 = 64;
const IPV4_DONT_FRAGMENT: u8 = 0x40;

/// Forwards a load-balanced packet to `choice` and returns the XDP verdict.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    packet: &Packet,
    vip: &Vip,
    choice: &Choice,
) -> Result<u32, Unhandled> {
    let backend = &choice.backend;
    if vip.forward == ForwardMode::Tunnel as u8 {
        match packet.l2_len {
            VLAN_ETH_LEN => encapsulate::<VLAN_ETH_LEN>(ctx, packet, backend)?,
            _ => encapsulate::<ETH_LEN>(ctx, packet, backend)?,
        }
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the Ethernet header is inside the (possibly grown) packet.
    unsafe {
        (*eth).dst_addr = backend.dst_mac;
        (*eth).src_addr = backend.src_mac;
    }
    egress(ctx, backend)
}

#[inline(always)]
fn egress(ctx: &XdpContext, backend: &Backend) -> Result<u32, Unhandled> {
    if backend.ifindex as usize == ctx.ingress_ifindex() {
        return Ok(xdp_action::XDP_TX);
    }
    TX_PORTS
        .redirect(backend.ifindex, 0)
        .map_err(|_| Counter::RedirectFailed)
}

/// Prepends an outer IPv4 or IPv6 header (the backend's family) between the Ethernet header
/// (`L2` bytes) and the untouched inner IP packet.
#[inline(always)]
fn encapsulate<const L2: usize>(
    ctx: &XdpContext,
    packet: &Packet,
    backend: &Backend,
) -> Result<(), Unhandled> {
    let unset = Settings::default();
    let settings = SETTINGS.get(0).unwrap_or(&unset);
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
        let header = ipv6_header(packet, backend, settings, inner_protocol);
        let outer: *mut Ipv6Hdr = ptr_at(ctx, L2)?;
        // SAFETY: ptr_at checked the outer header's 40 bytes are inside the packet.
        unsafe { *outer = header };
    }
    Ok(())
}

#[inline(always)]
fn check_mtu(packet: &Packet, backend: &Backend, outer_len: usize) -> Result<(), Unhandled> {
    if packet.ip_len + outer_len as u32 > backend.mtu {
        return Err(Counter::TooBig);
    }
    Ok(())
}

/// Grows the packet by `OUTER` bytes at the front and moves the `L2`-byte Ethernet header there,
/// with `ether_type` as its (innermost) ethertype. Leaves `OUTER` bytes after it to fill.
#[inline(always)]
fn make_room<const L2: usize, const OUTER: usize>(
    ctx: &XdpContext,
    ether_type: u16,
) -> Result<(), Unhandled> {
    // SAFETY: the helper only moves ctx->data within the frame's headroom, and fails (non-zero)
    // if there is not enough; all packet pointers are re-derived and re-checked afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER as i32)) } != 0 {
        return Err(Counter::NoHeadroom);
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
        vihl: 0x45,
        tos: packet.tos,
        tot_len: ((packet.ip_len as usize + IPV4_LEN) as u16).to_be_bytes(),
        id: [0, 0],
        frags: [
            if packet.dont_fragment {
                IPV4_DONT_FRAGMENT
            } else {
                0
            },
            0,
        ],
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
    header.check = ipv4_checksum(&header).to_be_bytes();
    header
}

/// The IPv4 header checksum (RFC 791): one's complement of the one's complement sum of the
/// header's 16-bit words, with the checksum field zero.
#[inline(always)]
fn ipv4_checksum(header: &Ipv4Hdr) -> u16 {
    let words = [
        u16::from_be_bytes([header.vihl, header.tos]),
        u16::from_be_bytes(header.tot_len),
        u16::from_be_bytes(header.id),
        u16::from_be_bytes(header.frags),
        u16::from_be_bytes([header.ttl, header.proto]),
        u16::from_be_bytes([header.src_addr[0], header.src_addr[1]]),
        u16::from_be_bytes([header.src_addr[2], header.src_addr[3]]),
        u16::from_be_bytes([header.dst_addr[0], header.dst_addr[1]]),
        u16::from_be_bytes([header.dst_addr[2], header.dst_addr[3]]),
    ];
    let mut sum: u32 = 0;
    for word in words {
        sum += word as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn ipv6_header(
    packet: &Packet,
    backend: &Backend,
    settings: &Settings,
    inner_protocol: u8,
) -> Ipv6Hdr {
    // The flow label carries the flow's hash so routers between us and the backend can spread
    // tunnels over ECMP paths per flow (RFC 6438).
    let flow_label = flow_hash(&packet.flow) & 0x000f_ffff;
    let version_class_label = (6u32 << 28) | ((packet.tos as u32) << 20) | flow_label;
    Ipv6Hdr {
        vcf: version_class_label.to_be_bytes(),
        payload_len: (packet.ip_len as u16).to_be_bytes(),
        next_hdr: inner_protocol,
        hop_limit: TUNNEL_TTL,
        src_addr: settings.tunnel_source_v6,
        dst_addr: backend.addr,
    }
}
