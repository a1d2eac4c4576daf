//! Parsing: Ethernet (one optional 802.1Q tag), IPv4 (with options), IPv6 (fixed header), TCP,
//! UDP, and ICMP/ICMPv6 errors quoting a TCP or UDP packet. Every read is preceded by an
//! explicit bounds check against `data_end`.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    maps::{Family, Protocol},
    stats::Counter,
    FlowKey,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const VLAN_TAG_LEN: usize = 4;
/// Ethernet header length without and with one VLAN tag.
pub const ETH_LEN: usize = 14;
pub const VLAN_ETH_LEN: usize = 18;
/// Fixed IPv4 / IPv6 header lengths (tunnel headers carry no options).
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
/// IP protocol numbers of IPv4-in-IP and IPv6-in-IP.
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// ICMP types that quote the packet they are about: destination unreachable (fragmentation
/// needed included), time exceeded, parameter problem.
const ICMP_ERRORS: [u8; 3] = [3, 11, 12];
/// ICMPv6 types that quote the packet they are about: destination unreachable, packet too big,
/// time exceeded, parameter problem.
const ICMPV6_ERRORS: [u8; 4] = [1, 2, 3, 4];
/// ICMP/ICMPv6 header before the quoted packet: type, code, checksum, 4 bytes (MTU, pointer...).
const ICMP_HEADER_LEN: usize = 8;
/// IPv6 next-header values of extension headers (RFC 8200 §4, RFC 6564 list, plus ESP/AH).
const IPV6_EXTENSION_HEADERS: [u8; 9] = [0, 43, 44, 50, 51, 60, 135, 139, 140];
const IPV4_DONT_FRAGMENT: u8 = 0x40;
const IPV4_MORE_FRAGMENTS: u8 = 0x20;
const IPV4_OFFSET_HIGH_BITS: u8 = 0x1f;

/// Why a packet is not load balanced. All of these are counted; `ParseError` is dropped, the
/// rest are passed to the host untouched.
pub type Unhandled = Counter;

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
    /// An ICMP error about a flow to a VIP; `flow` is that flow (client to VIP), read from the
    /// quoted packet. It follows the flow to its backend but creates no state.
    pub icmp_error: bool,
}

/// A pointer to a `T` at `offset` bytes into the packet, if the whole `T` is inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Unhandled> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Counter::ParseError);
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
) -> Result<(), Unhandled> {
    let from: *const [u8; L2] = ptr_at(ctx, FROM)?;
    let to: *mut [u8; L2] = ptr_at(ctx, TO)?;
    // SAFETY: ptr_at checked both ranges are inside the packet; callers move by a whole tunnel
    // header (20 or 40 bytes) >= L2 (14 or 18), so the ranges do not overlap.
    unsafe {
        *to = *from;
        let ether_type = ether_type.to_be_bytes();
        (*to)[L2 - 2] = ether_type[0];
        (*to)[L2 - 1] = ether_type[1];
    }
    Ok(())
}

/// Ethernet header length (14, or 18 with one VLAN tag) and the ethertype that follows it.
#[inline(always)]
pub fn ethernet(ctx: &XdpContext) -> Result<(usize, u16), Unhandled> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the 14-byte Ethernet header is inside the packet.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type != ETH_P_8021Q {
        return Ok((size_of::<EthHdr>(), ether_type));
    }
    // The tag is TCI (2 bytes) then the encapsulated ethertype (2 bytes).
    let tag: *const [u8; VLAN_TAG_LEN] = ptr_at(ctx, size_of::<EthHdr>())?;
    // SAFETY: ptr_at checked that the 4-byte tag is inside the packet.
    let tag = unsafe { *tag };
    Ok((size_of::<EthHdr>() + VLAN_TAG_LEN, u16::from_be_bytes([tag[2], tag[3]])))
}

/// Parses a frame up to the transport ports.
#[inline(always)]
pub fn packet(ctx: &XdpContext) -> Result<Packet, Unhandled> {
    let (l2_len, ether_type) = ethernet(ctx)?;
    match ether_type {
        ETH_P_IP => ipv4(ctx, l2_len),
        ETH_P_IPV6 => ipv6(ctx, l2_len),
        _ => Err(Counter::NotIp),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l2_len: usize) -> Result<Packet, Unhandled> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l2_len)?;
    // SAFETY: ptr_at checked that the fixed 20-byte IPv4 header is inside the packet.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(Counter::ParseError);
    }
    let header_len = ((ip.vihl & 0x0f) as usize) * 4;
    let ip_len = u16::from_be_bytes(ip.tot_len) as usize;
    let frame_ip_len = ctx.data_end() - ctx.data() - l2_len;
    if header_len < size_of::<Ipv4Hdr>() || ip_len < header_len || ip_len > frame_ip_len {
        return Err(Counter::ParseError);
    }
    if ip.frags[0] & (IPV4_MORE_FRAGMENTS | IPV4_OFFSET_HIGH_BITS) != 0 || ip.frags[1] != 0 {
        return Err(Counter::Fragment);
    }
    let mut flow = FlowKey { family: Family::V4 as u8, ..FlowKey::default() };
    flow.src[..4].copy_from_slice(&ip.src_addr);
    flow.dst[..4].copy_from_slice(&ip.dst_addr);
    let mut packet = Packet {
        flow,
        l2_len,
        ip_len: ip_len as u32,
        tos: ip.tos,
        dont_fragment: ip.frags[0] & IPV4_DONT_FRAGMENT != 0,
        syn: false,
        icmp_error: false,
    };
    transport(ctx, &mut packet, ip.proto, l2_len + header_len)?;
    Ok(packet)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l2_len: usize) -> Result<Packet, Unhandled> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l2_len)?;
    // SAFETY: ptr_at checked that the 40-byte IPv6 header is inside the packet.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Counter::ParseError);
    }
    let ip_len = size_of::<Ipv6Hdr>() + u16::from_be_bytes(ip.payload_len) as usize;
    if ip_len > ctx.data_end() - ctx.data() - l2_len {
        return Err(Counter::ParseError);
    }
    if IPV6_EXTENSION_HEADERS.contains(&ip.next_hdr) {
        return Err(Counter::Ipv6ExtensionHeader);
    }
    let mut packet = Packet {
        flow: FlowKey { src: ip.src_addr, dst: ip.dst_addr, family: Family::V6 as u8, ..FlowKey::default() },
        l2_len,
        ip_len: ip_len as u32,
        tos: (ip.vcf[0] << 4) | (ip.vcf[1] >> 4),
        dont_fragment: true,
        syn: false,
        icmp_error: false,
    };
    transport(ctx, &mut packet, ip.next_hdr, l2_len + size_of::<Ipv6Hdr>())?;
    Ok(packet)
}

#[inline(always)]
fn transport(ctx: &XdpContext, packet: &mut Packet, protocol: u8, offset: usize) -> Result<(), Unhandled> {
    match protocol {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, offset)?;
            // SAFETY: ptr_at checked that the 20-byte TCP header is inside the packet.
            let tcp = unsafe { &*tcp };
            packet.flow.src_port = tcp.source;
            packet.flow.dst_port = tcp.dest;
            packet.flow.protocol = Protocol::Tcp as u8;
            packet.syn = tcp.syn() != 0 && tcp.ack() == 0;
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, offset)?;
            // SAFETY: ptr_at checked that the 8-byte UDP header is inside the packet.
            let udp = unsafe { &*udp };
            packet.flow.src_port = udp.src;
            packet.flow.dst_port = udp.dst;
            packet.flow.protocol = Protocol::Udp as u8;
        }
        IPPROTO_ICMP if packet.flow.family == Family::V4 as u8 => icmp_error(ctx, packet, offset, &ICMP_ERRORS)?,
        IPPROTO_ICMPV6 if packet.flow.family == Family::V6 as u8 => icmp_error(ctx, packet, offset, &ICMPV6_ERRORS)?,
        _ => return Err(Counter::NotTcpUdp),
    }
    Ok(())
}

/// An ICMP error quoting a TCP or UDP packet sent from the address the error is addressed to:
/// the quoted packet left a VIP for a client (a DSR backend's answer a router could not pass
/// on), so the flow it belongs to is the quoted one reversed. Other ICMP messages (echo, ...)
/// are not ours: `NotTcpUdp`.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, packet: &mut Packet, offset: usize, errors: &[u8]) -> Result<(), Unhandled> {
    let header: *const [u8; ICMP_HEADER_LEN] = ptr_at(ctx, offset)?;
    // SAFETY: ptr_at checked that the 8-byte ICMP header is inside the packet.
    let kind = unsafe { (*header)[0] };
    if !errors.contains(&kind) {
        return Err(Counter::NotTcpUdp);
    }
    let quoted = offset + ICMP_HEADER_LEN;
    let mut flow = FlowKey { family: packet.flow.family, ..FlowKey::default() };
    let (protocol, ports_offset) = if packet.flow.family == Family::V4 as u8 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, quoted)?;
        // SAFETY: ptr_at checked that the quoted 20-byte IPv4 header is inside the packet.
        let ip = unsafe { &*ip };
        let header_len = ((ip.vihl & 0x0f) as usize) * 4;
        if ip.vihl >> 4 != 4 || header_len < size_of::<Ipv4Hdr>() {
            return Err(Counter::ParseError);
        }
        if ip.src_addr != packet.flow.dst[..4] {
            return Err(Counter::NotTcpUdp);
        }
        // Reversed: the client is the quoted destination, the VIP the quoted source.
        flow.src[..4].copy_from_slice(&ip.dst_addr);
        flow.dst[..4].copy_from_slice(&ip.src_addr);
        (ip.proto, quoted + header_len)
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, quoted)?;
        // SAFETY: ptr_at checked that the quoted 40-byte IPv6 header is inside the packet.
        let ip = unsafe { &*ip };
        if ip.vcf[0] >> 4 != 6 {
            return Err(Counter::ParseError);
        }
        if ip.src_addr != packet.flow.dst {
            return Err(Counter::NotTcpUdp);
        }
        flow.src = ip.dst_addr;
        flow.dst = ip.src_addr;
        (ip.next_hdr, quoted + size_of::<Ipv6Hdr>())
    };
    flow.protocol = match protocol {
        IPPROTO_TCP => Protocol::Tcp as u8,
        IPPROTO_UDP => Protocol::Udp as u8,
        _ => return Err(Counter::NotTcpUdp),
    };
    // An ICMP error quotes at least 8 bytes of the transport header: both ports.
    let ports: *const [[u8; 2]; 2] = ptr_at(ctx, ports_offset)?;
    // SAFETY: ptr_at checked that the 4 port bytes are inside the packet.
    let [quoted_src_port, quoted_dst_port] = unsafe { *ports };
    flow.src_port = quoted_dst_port;
    flow.dst_port = quoted_src_port;
    packet.flow = flow;
    packet.icmp_error = true;
    Ok(())
}
