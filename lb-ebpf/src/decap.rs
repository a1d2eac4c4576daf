//! The `decap` program for backends: strips an IPIP / IP6IP6 / 4in6 / 6in4 header addressed to
//! one of this host's addresses (`DECAP_ADDRS`) and passes the inner packet up the stack, so
//! tunnel-mode backends need no tunnel device (this kernel has no ipip module).
//!
//! A tunnel packet may carry a second-chance hop (`lb_common::tunnel`, docs/SECOND_CHANCE.md):
//! the backend that had the flow's ring slot before the VIP's last ring change. Then this host
//! keeps the packet if it has the connection (an established, request or time-wait socket), if
//! it is a SYN, or an ACK that a local listener's SYN cookie vouches for; otherwise it sends the
//! packet on to the hop, with the hop cleared (one extra hop at most, never a loop).

use aya_ebpf::{
    bindings::{bpf_sock_tuple, xdp_action, BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN},
    helpers::{
        bpf_redirect, bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie,
        bpf_xdp_adjust_head,
    },
    programs::XdpContext,
};
use lb_common::{
    ip::{ipv4_is_fragment, version},
    maps::{DecapKey, Family, HopRoute},
    stats::DecapCounter,
    tunnel::{HOP_OPTIONS_V6_LEN, HOP_OPTION_TYPE, HOP_OPTION_V4_LEN, IPPROTO_DSTOPTS},
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    maps::{DECAP_ADDRS, HOP_NEIGHBOURS, HOP_ROUTES},
    net::{
        ethernet, move_ethernet_header, ptr_at, StackKey, ETH_LEN, ETH_P_IP, ETH_P_IPV6,
        IPPROTO_IPIP, IPPROTO_IPV6, IPV4_LEN, IPV4_VERSION_IHL_NO_OPTIONS, IPV6_LEN, VLAN_ETH_LEN,
    },
};

/// An outer IPv4 header with the hop option.
const IPV4_HOP_LEN: usize = IPV4_LEN + HOP_OPTION_V4_LEN;
/// An outer IPv6 header with the hop's destination options.
const IPV6_HOP_LEN: usize = IPV6_LEN + HOP_OPTIONS_V6_LEN;
/// The first byte of an IPv4 header with 8 bytes of options.
const IPV4_VERSION_IHL_HOP: u8 = 0x47;
/// IP protocol number of TCP.
const IPPROTO_TCP: u8 = 6;
/// Length of a TCP header without options.
const TCP_LEN: usize = 20;

/// Why a packet is not stripped.
#[derive(Clone, Copy)]
enum Kept {
    /// Not a tunnel packet for this host (or too short to be one): passed untouched.
    NotOurs,
    /// Addressed to us as a tunnel, but what it carries is not an IP packet: dropped.
    Malformed,
}

/// What became of a tunnel packet for this host.
#[derive(Clone, Copy)]
enum Done {
    /// Stripped, passed up: no hop, or a hop already taken.
    Stripped,
    /// Carried a hop; this host has the connection: stripped, passed up.
    HopLocal,
    /// Carried a hop that is this host: stripped, passed up.
    HopNotTaken,
    /// Sent on to the hop, with this verdict (`XDP_TX` or `XDP_REDIRECT`).
    HopForwarded(u32),
    /// No route to the hop yet: dropped (TCP sends it again), and the hop queued for
    /// `lb decap` to resolve.
    HopUnresolved,
}

/// What to do with a packet: the verdict and the counter to bump.
pub fn decap(ctx: &XdpContext) -> (u32, DecapCounter) {
    match try_decap(ctx) {
        Ok(Done::Stripped) => (xdp_action::XDP_PASS, DecapCounter::Decapsulated),
        Ok(Done::HopLocal) => (xdp_action::XDP_PASS, DecapCounter::HopLocal),
        Ok(Done::HopNotTaken) => (xdp_action::XDP_PASS, DecapCounter::HopNotTaken),
        Ok(Done::HopForwarded(action)) => (action, DecapCounter::HopForwarded),
        Ok(Done::HopUnresolved) => (xdp_action::XDP_DROP, DecapCounter::HopUnresolved),
        Err(Kept::NotOurs) => (xdp_action::XDP_PASS, DecapCounter::Passed),
        Err(Kept::Malformed) => (xdp_action::XDP_DROP, DecapCounter::Malformed),
    }
}

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<Done, Kept> {
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
fn outer_ipv4<const L2: usize>(ctx: &XdpContext) -> Result<Done, Kept> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, L2).map_err(|_| Kept::NotOurs)?;
    // SAFETY: ptr_at checked the 20-byte header is inside the packet.
    let ip = unsafe { &*ip };
    // Our tunnels never carry fragments, nor IP options but the hop's.
    if ipv4_is_fragment(ip.frags) || !is_local(&ip.dst_addr, Family::V4) {
        return Err(Kept::NotOurs);
    }
    let protocol = ip.proto;
    match ip.vihl {
        IPV4_VERSION_IHL_NO_OPTIONS => {
            strip::<L2, IPV4_LEN>(ctx, protocol).map(|()| Done::Stripped)
        }
        IPV4_VERSION_IHL_HOP => {
            let option: *const [u32; 2] = ptr_at(ctx, L2 + IPV4_LEN).map_err(|_| Kept::NotOurs)?;
            // SAFETY: ptr_at checked the 8 option bytes are inside the packet.
            let [kind, hop] = unsafe { option.read_unaligned() };
            if kind != u32::from_ne_bytes([HOP_OPTION_TYPE, HOP_OPTION_V4_LEN as u8, 0, 0]) {
                return Err(Kept::NotOurs);
            }
            second_chance::<L2, IPV4_HOP_LEN>(ctx, protocol, [hop, 0, 0, 0], Family::V4)
        }
        _ => Err(Kept::NotOurs),
    }
}

#[inline(always)]
fn outer_ipv6<const L2: usize>(ctx: &XdpContext) -> Result<Done, Kept> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, L2).map_err(|_| Kept::NotOurs)?;
    // SAFETY: ptr_at checked the 40-byte header is inside the packet.
    let ip = unsafe { &*ip };
    if !is_local(&ip.dst_addr, Family::V6) {
        return Err(Kept::NotOurs);
    }
    if ip.next_hdr != IPPROTO_DSTOPTS {
        return strip::<L2, IPV6_LEN>(ctx, ip.next_hdr).map(|()| Done::Stripped);
    }
    let options: *const [u32; HOP_OPTIONS_V6_LEN / 4] =
        ptr_at(ctx, L2 + IPV6_LEN).map_err(|_| Kept::NotOurs)?;
    // SAFETY: ptr_at checked the 24 option bytes are inside the packet.
    let options = unsafe { options.read_unaligned() };
    let [next, length, kind, option_length] = options[0].to_ne_bytes();
    let ours = length as usize == HOP_OPTIONS_V6_LEN / 8 - 1
        && kind == HOP_OPTION_TYPE
        && option_length as usize == HOP_OPTIONS_V6_LEN - 4;
    if !ours {
        return Err(Kept::NotOurs);
    }
    let hop = [options[2], options[3], options[4], options[5]];
    second_chance::<L2, IPV6_HOP_LEN>(ctx, next, hop, Family::V6)
}

/// A packet with an `OUTER`-byte outer header carrying `hop` (IPv4: its first word): kept
/// here if this host has its connection, else sent on to the hop.
#[inline(always)]
fn second_chance<const L2: usize, const OUTER: usize>(
    ctx: &XdpContext,
    inner_protocol: u8,
    hop: [u32; 4],
    family: Family,
) -> Result<Done, Kept> {
    if hop == [0; 4] {
        return strip::<L2, OUTER>(ctx, inner_protocol).map(|()| Done::Stripped);
    }
    let hop_bytes = words_bytes(hop);
    if is_local(&hop_bytes, family) {
        return strip::<L2, OUTER>(ctx, inner_protocol).map(|()| Done::HopNotTaken);
    }
    if has_connection::<L2, OUTER>(ctx, inner_protocol) {
        return strip::<L2, OUTER>(ctx, inner_protocol).map(|()| Done::HopLocal);
    }
    match family {
        Family::V4 => forward_v4::<L2>(ctx, hop[0]),
        Family::V6 => forward_v6::<L2>(ctx, hop),
    }
    .map_err(|()| Kept::Malformed)
}

/// The 16 bytes of four words.
#[inline(always)]
fn words_bytes(words: [u32; 4]) -> [u8; 16] {
    let [a, b, c, d] = words.map(u32::to_ne_bytes);
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// Whether this host has the inner packet's connection: it is not TCP (only TCP connections
/// are looked up), a SYN, a packet of a socket that is not listening (established, request,
/// time-wait...), or an ACK a listener's SYN cookie vouches for.
#[inline(always)]
fn has_connection<const L2: usize, const OUTER: usize>(
    ctx: &XdpContext,
    inner_protocol: u8,
) -> bool {
    match inner_protocol {
        IPPROTO_IPIP => inner_v4(ctx, L2 + OUTER).unwrap_or(true),
        IPPROTO_IPV6 => inner_v6(ctx, L2 + OUTER).unwrap_or(true),
        _ => true,
    }
}

/// A TCP socket lookup's key, IPv4 (`struct bpf_sock_tuple`'s `ipv4`): words, network order.
/// Keys built on the stack are 8-byte aligned: LLVM stores them a double word at a time, and
/// the verifier refuses misaligned stack accesses.
#[repr(C, align(8))]
struct Tuple4 {
    addresses: [u32; 2],
    ports: u32,
}

/// The size the kernel expects of an IPv4 key (what it tells the families apart by; the
/// struct is padded to 16 bytes).
const TUPLE4_LEN: u32 = 12;

/// A TCP socket lookup's key, IPv6.
#[repr(C, align(8))]
struct Tuple6 {
    addresses: [u32; 8],
    ports: u32,
}

/// The size the kernel expects of an IPv6 key (the struct is padded to 40 bytes).
const TUPLE6_LEN: u32 = 36;

/// [`has_connection`] for an inner IPv4 packet at `offset` (without options: with them, or not
/// TCP, `Some(true)`); `None`: truncated.
#[inline(always)]
fn inner_v4(ctx: &XdpContext, offset: usize) -> Option<bool> {
    let ip: *mut [u32; IPV4_LEN / 4] = ptr_at(ctx, offset).ok()?;
    let tcp: *mut [u32; TCP_LEN / 4] = ptr_at(ctx, offset + IPV4_LEN).ok()?;
    // SAFETY: ptr_at checked both headers are inside the packet.
    let (header, segment) = unsafe { (ip.read_unaligned(), tcp.read_unaligned()) };
    let [version_ihl, ..] = header[0].to_ne_bytes();
    let [_, protocol, ..] = header[2].to_ne_bytes();
    if version_ihl != IPV4_VERSION_IHL_NO_OPTIONS || protocol != IPPROTO_TCP {
        return Some(true);
    }
    let mut tuple = Tuple4 {
        addresses: [header[3], header[4]],
        ports: segment[0],
    };
    Some(socket_here(
        ctx,
        (&raw mut tuple).cast(),
        TUPLE4_LEN,
        ip.cast(),
        IPV4_LEN as u32,
        tcp.cast(),
        segment[3].to_ne_bytes()[1],
    ))
}

/// [`has_connection`] for an inner IPv6 packet at `offset` (TCP right after the header, else
/// `Some(true)`); `None`: truncated.
#[inline(always)]
fn inner_v6(ctx: &XdpContext, offset: usize) -> Option<bool> {
    let ip: *mut [u32; IPV6_LEN / 4] = ptr_at(ctx, offset).ok()?;
    let tcp: *mut [u32; TCP_LEN / 4] = ptr_at(ctx, offset + IPV6_LEN).ok()?;
    // SAFETY: ptr_at checked both headers are inside the packet.
    let (header, segment) = unsafe { (ip.read_unaligned(), tcp.read_unaligned()) };
    if header[1].to_ne_bytes()[2] != IPPROTO_TCP {
        return Some(true);
    }
    let mut tuple = Tuple6 {
        addresses: [
            header[2], header[3], header[4], header[5], header[6], header[7], header[8], header[9],
        ],
        ports: segment[0],
    };
    Some(socket_here(
        ctx,
        (&raw mut tuple).cast(),
        TUPLE6_LEN,
        ip.cast(),
        IPV6_LEN as u32,
        tcp.cast(),
        segment[3].to_ne_bytes()[1],
    ))
}

/// TCP flag bits.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Whether this network namespace has the connection of the TCP segment `tcp` (flags `flags`)
/// of packet `ip`, whose socket key is `tuple`.
#[inline(always)]
fn socket_here(
    ctx: &XdpContext,
    tuple: *mut bpf_sock_tuple,
    tuple_size: u32,
    ip: *mut core::ffi::c_void,
    ip_len: u32,
    tcp: *mut aya_ebpf::bindings::tcphdr,
    flags: u8,
) -> bool {
    let syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // SAFETY: `tuple` points to a key on our stack of `tuple_size` bytes; the helper returns a
    // socket reference or null, released below on every path.
    let socket = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            tuple,
            tuple_size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if socket.is_null() {
        return syn;
    }
    // SAFETY: a socket the helper returned, valid until released; `state` may be read from any.
    let listening = unsafe { (*socket).state } == BPF_TCP_LISTEN;
    let here = if !listening || syn {
        true
    } else if flags & TCP_ACK != 0 {
        // SAFETY: the socket is a listener; `ip` and `tcp` point to `ip_len` and 20 bytes of
        // the packet (checked by ptr_at).
        unsafe { bpf_tcp_check_syncookie(socket.cast(), ip, ip_len, tcp, TCP_LEN as u32) == 0 }
    } else {
        false
    };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(socket.cast()) };
    here
}

/// Sends the packet on to IPv4 hop `hop`: outer destination the hop, outer source this host
/// (the old destination), the hop cleared, the checksum computed again, the Ethernet header
/// the hop's route's.
#[inline(always)]
fn forward_v4<const L2: usize>(ctx: &XdpContext, hop: u32) -> Result<Done, ()> {
    let Some(route) = hop_route([hop, 0, 0, 0], Family::V4) else {
        return Ok(ask_route(hop, [0; 3]));
    };
    let outer: *mut [u32; IPV4_HOP_LEN / 4] = ptr_at(ctx, L2).map_err(|_| ())?;
    // SAFETY: ptr_at checked the 28 bytes are inside the packet; packet memory may be read and
    // written unaligned.
    let mut words = unsafe { outer.read_unaligned() };
    words[3] = words[4];
    words[4] = hop;
    words[6] = 0;
    let [ttl, protocol, _, _] = words[2].to_ne_bytes();
    words[2] = u32::from_ne_bytes([ttl, protocol, 0, 0]);
    let check = ipv4_header_checksum(&words).to_be_bytes();
    words[2] = u32::from_ne_bytes([ttl, protocol, check[0], check[1]]);
    // SAFETY: as above.
    unsafe { outer.write_unaligned(words) };
    send(ctx, route)
}

/// [`forward_v4`] for an IPv6 hop.
#[inline(always)]
fn forward_v6<const L2: usize>(ctx: &XdpContext, hop: [u32; 4]) -> Result<Done, ()> {
    let Some(route) = hop_route(hop, Family::V6) else {
        return Ok(ask_route(hop[0], [hop[1], hop[2], hop[3]]));
    };
    let outer: *mut [u32; IPV6_HOP_LEN / 4] = ptr_at(ctx, L2).map_err(|_| ())?;
    // SAFETY: ptr_at checked the 64 bytes are inside the packet.
    let mut words = unsafe { outer.read_unaligned() };
    for i in 0..4 {
        words[2 + i] = words[6 + i];
        words[6 + i] = hop[i];
        words[12 + i] = 0;
    }
    // SAFETY: as above.
    unsafe { outer.write_unaligned(words) };
    send(ctx, route)
}

/// How this host reaches hop `hop` (`HOP_ROUTES`), if `lb decap` resolved it.
#[inline(always)]
fn hop_route(hop: [u32; 4], family: Family) -> Option<&'static HopRoute> {
    let key = StackKey::new([hop[0], hop[1], hop[2], hop[3], u32::from(family as u8)]);
    // SAFETY: the kernel returned a pointer to a value of HOP_ROUTES, valid for this program
    // run (an update replaces values whole; a reader sees the old or the new).
    HOP_ROUTES
        .get_ptr(key.as_key::<DecapKey>())
        .map(|route| unsafe { &*route })
}

/// Queues `hop` (its words) for `lb decap` to resolve: a packet of the connection sent again
/// finds its route.
#[inline(always)]
fn ask_route(first: u32, rest: [u32; 3]) -> Done {
    let _ = HOP_NEIGHBOURS.push(hop_words([first, rest[0], rest[1], rest[2]]), 0);
    Done::HopUnresolved
}

/// An address's four words as the queue's two double words (the same bytes in memory): a
/// value built on the stack must be stored 8 bytes at a time, aligned.
#[inline(always)]
fn hop_words(words: [u32; 4]) -> [u64; 2] {
    let double = |low: u32, high: u32| u64::from(low) | (u64::from(high) << 32);
    [double(words[0], words[1]), double(words[2], words[3])]
}

/// Writes the route's MACs into the Ethernet header and transmits: back out of this interface,
/// or redirected to the route's.
#[inline(always)]
fn send(ctx: &XdpContext, route: &HopRoute) -> Result<Done, ()> {
    let eth: *mut [u8; 12] = ptr_at(ctx, 0).map_err(|_| ())?;
    // SAFETY: ptr_at checked the 12 MAC bytes are inside the packet; the MACs are a map
    // value's, apart from it.
    unsafe { core::ptr::copy_nonoverlapping(&route.macs, eth, 1) };
    if route.ifindex as usize == ctx.ingress_ifindex() {
        return Ok(Done::HopForwarded(xdp_action::XDP_TX));
    }
    // SAFETY: a helper taking an interface index and flags.
    let action = unsafe { bpf_redirect(route.ifindex, 0) } as u32;
    Ok(Done::HopForwarded(action))
}

/// The checksum of an IPv4 header of 7 words (checksum field zero).
#[inline(always)]
fn ipv4_header_checksum(words: &[u32; IPV4_HOP_LEN / 4]) -> u16 {
    let mut sum: u32 = 0;
    for word in words {
        let [a, b, c, d] = word.to_ne_bytes();
        sum += u32::from(u16::from_be_bytes([a, b])) + u32::from(u16::from_be_bytes([c, d]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
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
