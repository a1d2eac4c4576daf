//! Parsing: Ethernet (one optional 802.1Q tag), IPv4 (with options), IPv6 (fixed header), TCP,
//! UDP, and ICMP/ICMPv6 errors quoting a TCP or UDP packet. Every read is preceded by an
//! explicit bounds check against `data_end`.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    ip::{ipv4_dont_fragment, ipv4_header_len, ipv4_is_fragment, ipv6_traffic_class, version},
    maps::{Family, Protocol},
    stats::{DropReason, PassReason},
    FlowKey,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    net::{
        ethernet, flow_key_of_words, ptr_at, ETH_P_IP, ETH_P_IPV6, ICMPV6_ERRORS, ICMP_ERRORS,
        ICMP_HEADER_LEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPV6_EXTENSION_HEADERS,
    },
    verdict::Unhandled,
};

/// What the rest of the program needs to know about a TCP/UDP packet.
pub struct Packet {
    /// The 5-tuple.
    pub flow: FlowKey,
    /// Length of the Ethernet header including the VLAN tag: 14 or 18.
    pub l2_len: usize,
    /// Length of the IP packet according to its header (excludes Ethernet padding).
    pub ip_len: u32,
    /// IPv4 TOS or IPv6 traffic class, copied into tunnel headers.
    pub tos: u8,
    /// IPv4 DF bit (always set for IPv6, which routers never fragment).
    pub dont_fragment: bool,
    /// TCP SYN without ACK: the first packet of a connection.
    pub syn: bool,
    /// TCP FIN or RST: the client is closing the connection.
    pub closes: bool,
    /// An ICMP error about a flow to a VIP; `flow` is that flow (client to VIP), read from the
    /// quoted packet. It follows the flow to its backend but creates no state.
    pub icmp_error: bool,
}

/// Whether the frame is this host's to balance: addressed to `local` (the interface's MAC), to a
/// broadcast or multicast address, or `local` is unset (zero). A NIC in promiscuous mode, or a
/// bridge flooding frames for a dead host's port, delivers other hosts' frames to XDP too: two
/// instances must never both forward one packet.
#[inline(always)]
pub fn for_this_host(ctx: &XdpContext, local: &[u8; 6]) -> Result<(), Unhandled> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the 14-byte Ethernet header is inside the packet.
    let destination = unsafe { (*eth).dst_addr };
    let group = destination[0] & 1 != 0;
    if group || destination == *local || *local == [0; 6] {
        Ok(())
    } else {
        Err(PassReason::OtherMac.into())
    }
}

/// Parses a frame up to the transport ports.
#[inline(always)]
pub fn packet(ctx: &XdpContext) -> Result<Packet, Unhandled> {
    let (l2_len, ether_type) = ethernet(ctx)?;
    match ether_type {
        ETH_P_IP => ipv4(ctx, l2_len),
        ETH_P_IPV6 => ipv6(ctx, l2_len),
        _ => Err(PassReason::NotIp.into()),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l2_len: usize) -> Result<Packet, Unhandled> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l2_len)?;
    // SAFETY: ptr_at checked that the fixed 20-byte IPv4 header is inside the packet.
    let ip = unsafe { &*ip };
    if version(ip.vihl) != 4 {
        return Err(DropReason::ParseError.into());
    }
    let header_len = ipv4_header_len(ip.vihl);
    let ip_len = u16::from_be_bytes(ip.tot_len) as usize;
    let frame_ip_len = ctx.data_end() - ctx.data() - l2_len;
    if header_len < size_of::<Ipv4Hdr>() || ip_len < header_len || ip_len > frame_ip_len {
        return Err(DropReason::ParseError.into());
    }
    if ipv4_is_fragment(ip.frags) {
        return Err(PassReason::Fragment.into());
    }
    let offset = l2_len + header_len;
    let src = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
    let dst = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
    let (flow, flags, icmp_error) = match ip.proto {
        IPPROTO_ICMP => (icmp_error_v4(ctx, offset, dst)?, TcpFlags::NONE, true),
        protocol => {
            let transport = transport(ctx, protocol, offset)?;
            (
                flow_key(src, dst, &transport, Family::V4),
                transport.flags,
                false,
            )
        }
    };
    Ok(Packet {
        flow,
        l2_len,
        ip_len: ip_len as u32,
        tos: ip.tos,
        dont_fragment: ipv4_dont_fragment(ip.frags),
        syn: flags.syn,
        closes: flags.closes,
        icmp_error,
    })
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l2_len: usize) -> Result<Packet, Unhandled> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l2_len)?;
    // SAFETY: ptr_at checked that the 40-byte IPv6 header is inside the packet.
    let ip = unsafe { &*ip };
    if version(ip.vcf[0]) != 6 {
        return Err(DropReason::ParseError.into());
    }
    let ip_len = size_of::<Ipv6Hdr>() + u16::from_be_bytes(ip.payload_len) as usize;
    if ip_len > ctx.data_end() - ctx.data() - l2_len {
        return Err(DropReason::ParseError.into());
    }
    if IPV6_EXTENSION_HEADERS.contains(&ip.next_hdr) {
        return Err(PassReason::Ipv6ExtensionHeader.into());
    }
    let offset = l2_len + size_of::<Ipv6Hdr>();
    let dst = words(&ip.dst_addr);
    let (flow, flags, icmp_error) = match ip.next_hdr {
        IPPROTO_ICMPV6 => (icmp_error_v6(ctx, offset, dst)?, TcpFlags::NONE, true),
        protocol => {
            let transport = transport(ctx, protocol, offset)?;
            (
                flow_key(words(&ip.src_addr), dst, &transport, Family::V6),
                transport.flags,
                false,
            )
        }
    };
    Ok(Packet {
        flow,
        l2_len,
        ip_len: ip_len as u32,
        tos: ipv6_traffic_class(ip.vcf),
        dont_fragment: true,
        syn: flags.syn,
        closes: flags.closes,
        icmp_error,
    })
}

/// What the transport header says.
struct Transport {
    /// Source then destination port, in packet (network) byte order.
    ports: u32,
    /// TCP or UDP.
    protocol: Protocol,
    /// The TCP flags lb acts on (none for UDP).
    flags: TcpFlags,
}

/// The TCP flags lb acts on.
#[derive(Clone, Copy)]
struct TcpFlags {
    /// SYN without ACK.
    syn: bool,
    /// FIN or RST.
    closes: bool,
}

impl TcpFlags {
    /// No flags: UDP, and the quoted packets of ICMP errors.
    const NONE: Self = Self {
        syn: false,
        closes: false,
    };
}

#[inline(always)]
fn transport(ctx: &XdpContext, protocol: u8, offset: usize) -> Result<Transport, Unhandled> {
    match Protocol::from_raw(protocol) {
        Some(Protocol::Tcp) => {
            let tcp: *const TcpHdr = ptr_at(ctx, offset)?;
            // SAFETY: ptr_at checked that the 20-byte TCP header is inside the packet.
            let tcp = unsafe { &*tcp };
            Ok(Transport {
                ports: ports(tcp.source, tcp.dest),
                protocol: Protocol::Tcp,
                flags: TcpFlags {
                    syn: tcp.syn() != 0 && tcp.ack() == 0,
                    closes: tcp.fin() != 0 || tcp.rst() != 0,
                },
            })
        }
        Some(Protocol::Udp) => {
            let udp: *const UdpHdr = ptr_at(ctx, offset)?;
            // SAFETY: ptr_at checked that the 8-byte UDP header is inside the packet.
            let udp = unsafe { &*udp };
            Ok(Transport {
                ports: ports(udp.src, udp.dst),
                protocol: Protocol::Udp,
                flags: TcpFlags::NONE,
            })
        }
        None => Err(PassReason::NotTcpUdp.into()),
    }
}

#[inline(always)]
fn ports(src: [u8; 2], dst: [u8; 2]) -> u32 {
    u32::from_ne_bytes([src[0], src[1], dst[0], dst[1]])
}

/// An IPv6 address as four 32-bit words in memory order.
#[inline(always)]
pub fn words(addr: &[u8; 16]) -> [u32; 4] {
    let word = |at: usize| u32::from_ne_bytes([addr[at], addr[at + 1], addr[at + 2], addr[at + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// The flow key, assembled from 32-bit words.
///
/// Built field by field from byte arrays, LLVM splits the 40-byte key into 40 one-byte values
/// and spills most of them to the stack, one instruction per byte: a few hundred instructions
/// per packet. Words keep it to ten values.
#[inline(always)]
fn flow_key(src: [u32; 4], dst: [u32; 4], transport: &Transport, family: Family) -> FlowKey {
    let tail = u32::from_ne_bytes([transport.protocol as u8, family as u8, 0, 0]);
    let words: [u32; 10] = [
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
        transport.ports,
        tail,
    ];
    flow_key_of_words(words)
}

/// An ICMP error about a TCP or UDP packet sent from `to`, the address the error is addressed
/// to: the quoted packet left a VIP for a client (a DSR backend's answer a router could not pass
/// on), so the flow it belongs to is the quoted one reversed. Other ICMP messages (echo, ...)
/// and quotes from other sources are not ours: `NotTcpUdp`.
#[inline(always)]
fn icmp_error_v4(ctx: &XdpContext, offset: usize, to: [u32; 4]) -> Result<FlowKey, Unhandled> {
    let quoted = icmp_quote(ctx, offset, &ICMP_ERRORS)?;
    let ip: *const Ipv4Hdr = ptr_at(ctx, quoted)?;
    // SAFETY: ptr_at checked that the quoted 20-byte IPv4 header is inside the packet.
    let ip = unsafe { &*ip };
    let header_len = ipv4_header_len(ip.vihl);
    if version(ip.vihl) != 4 || header_len < size_of::<Ipv4Hdr>() {
        return Err(DropReason::ParseError.into());
    }
    let vip = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
    if vip != to {
        return Err(PassReason::NotTcpUdp.into());
    }
    let transport = quoted_transport(ctx, ip.proto, quoted + header_len)?;
    Ok(flow_key(
        [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0],
        vip,
        &transport,
        Family::V4,
    ))
}

/// [`icmp_error_v4`] for ICMPv6.
#[inline(always)]
fn icmp_error_v6(ctx: &XdpContext, offset: usize, to: [u32; 4]) -> Result<FlowKey, Unhandled> {
    let quoted = icmp_quote(ctx, offset, &ICMPV6_ERRORS)?;
    let ip: *const Ipv6Hdr = ptr_at(ctx, quoted)?;
    // SAFETY: ptr_at checked that the quoted 40-byte IPv6 header is inside the packet.
    let ip = unsafe { &*ip };
    if version(ip.vcf[0]) != 6 {
        return Err(DropReason::ParseError.into());
    }
    let vip = words(&ip.src_addr);
    if vip != to {
        return Err(PassReason::NotTcpUdp.into());
    }
    let transport = quoted_transport(ctx, ip.next_hdr, quoted + size_of::<Ipv6Hdr>())?;
    Ok(flow_key(words(&ip.dst_addr), vip, &transport, Family::V6))
}

/// The offset of the packet an ICMP message at `offset` quotes, if its type is one of `errors`.
#[inline(always)]
fn icmp_quote(ctx: &XdpContext, offset: usize, errors: &[u8]) -> Result<usize, Unhandled> {
    let header: *const [u8; ICMP_HEADER_LEN] = ptr_at(ctx, offset)?;
    // SAFETY: ptr_at checked that the 8-byte ICMP header is inside the packet.
    let kind = unsafe { (*header)[0] };
    if errors.contains(&kind) {
        Ok(offset + ICMP_HEADER_LEN)
    } else {
        Err(PassReason::NotTcpUdp.into())
    }
}

/// The ports of a quoted TCP or UDP header, reversed (the quoted packet went from the VIP to
/// the client). An ICMP error quotes at least 8 bytes of it, so only the ports are read.
#[inline(always)]
fn quoted_transport(ctx: &XdpContext, protocol: u8, offset: usize) -> Result<Transport, Unhandled> {
    let protocol = Protocol::from_raw(protocol).ok_or(PassReason::NotTcpUdp)?;
    let quoted_ports: *const [[u8; 2]; 2] = ptr_at(ctx, offset)?;
    // SAFETY: ptr_at checked that the 4 port bytes are inside the packet.
    let [vip_port, client_port] = unsafe { *quoted_ports };
    Ok(Transport {
        ports: ports(client_port, vip_port),
        protocol,
        flags: TcpFlags::NONE,
    })
}
