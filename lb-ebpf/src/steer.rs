//! Steering health checks along the serving path (`lb_common::check_path`): a check's packet,
//! routed into the check interface by its socket's mark, leaves for its backend exactly as the
//! `lb` program sends a client's packet of the same flow: the Ethernet frame to the backend's
//! MAC (DSR), or first encapsulated with the same outer header (tunnel).

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6,
    },
    helpers::bpf_redirect,
    programs::TcContext,
};
use lb_common::{
    check_path::{check_slot, CheckCounter, CheckPath},
    conntrack::conntrack_hash,
    ip::{ipv4_dont_fragment, ipv4_header_len, ipv6_traffic_class},
    maps::{Family, ForwardMode, Protocol},
    tunnel::{outer_ipv4, outer_ipv6, Header, OUTER_IPV4_LEN, OUTER_IPV6_LEN},
    FlowKey,
};

use crate::{
    maps::{settings, CHECK_PATHS},
    net::{flow_key_of_words, ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6},
};

/// `TC_ACT_REDIRECT`, what `bpf_redirect` returns on success.
const REDIRECTED: i32 = 7;
/// `TC_ACT_SHOT`: the packet is dropped. (The bindings' type differs between targets.)
pub const DROPPED: i32 = 2;

/// The inner packet's facts the outer header copies.
struct Inner {
    family: Family,
    /// IP packet length (header included).
    len: u32,
    tos: u8,
    dont_fragment: bool,
    flow: FlowKey,
}

/// Sends a check's packet to its backend: returns `TC_ACT_REDIRECT` and what was done, or the
/// reason to drop it.
#[inline(always)]
pub fn steer(ctx: &TcContext) -> Result<(i32, CheckCounter), CheckCounter> {
    // SAFETY: `skb` is the context the kernel passed this program; `mark` is a readable field.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let slot = check_slot(mark).ok_or(CheckCounter::NotCheck)?;
    let path = CHECK_PATHS.get(slot).ok_or(CheckCounter::NoPath)?;
    if path.ifindex == 0 {
        return Err(CheckCounter::NoPath);
    }
    let counter = match ForwardMode::from_raw(path.forward) {
        Some(ForwardMode::Tunnel) => {
            encapsulate(ctx, path)?;
            CheckCounter::Encapsulated
        }
        Some(ForwardMode::Dsr) | None => CheckCounter::Steered,
    };
    ctx.store(0, &path.macs, 0)
        .map_err(|_| CheckCounter::Failed)?;
    // SAFETY: a helper call with plain integers; it only records where the packet goes.
    let action = unsafe { bpf_redirect(path.ifindex, 0) } as i32;
    if action != REDIRECTED {
        return Err(CheckCounter::Failed);
    }
    Ok((action, counter))
}

/// Reads the inner IP header and ports, a 32-bit word at a time: the verifier refuses the
/// unaligned stack accesses LLVM makes of byte arrays (the flow key is assembled from words, as
/// `parse` does).
#[inline(always)]
fn inner(ctx: &TcContext) -> Result<Inner, CheckCounter> {
    let ether_type = u16::from_be(ctx.load::<u16>(12).map_err(malformed)?);
    let (family, len, tos, dont_fragment, protocol, src, dst, l4) = match ether_type {
        ETH_P_IP => {
            let [w0, w1, w2] = load::<3>(ctx, ETH_LEN)?;
            let [src, dst] = load::<2>(ctx, ETH_LEN + 12)?;
            let (w0, w1, w2) = (w0.to_ne_bytes(), w1.to_ne_bytes(), w2.to_ne_bytes());
            (
                Family::V4,
                u32::from(u16::from_be_bytes([w0[2], w0[3]])),
                w0[1],
                ipv4_dont_fragment([w1[2], w1[3]]),
                w2[1],
                [src, 0, 0, 0],
                [dst, 0, 0, 0],
                ETH_LEN + ipv4_header_len(w0[0]),
            )
        }
        ETH_P_IPV6 => {
            let [w0, w1] = load::<2>(ctx, ETH_LEN)?;
            let src = load::<4>(ctx, ETH_LEN + 8)?;
            let dst = load::<4>(ctx, ETH_LEN + 24)?;
            let (w0, w1) = (w0.to_ne_bytes(), w1.to_ne_bytes());
            (
                Family::V6,
                u32::from(u16::from_be_bytes([w1[0], w1[1]])) + 40,
                ipv6_traffic_class(w0),
                true,
                w1[2],
                src,
                dst,
                ETH_LEN + 40,
            )
        }
        _ => return Err(CheckCounter::Malformed),
    };
    let [ports] = load::<1>(ctx, l4)?;
    let tail = u32::from_ne_bytes([protocol_of(protocol) as u8, family as u8, 0, 0]);
    let flow = flow_key_of_words([
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], ports, tail,
    ]);
    Ok(Inner {
        family,
        len,
        tos,
        dont_fragment,
        flow,
    })
}

fn malformed(_: i64) -> CheckCounter {
    CheckCounter::Malformed
}

/// `N` 32-bit words at `offset`, read from the packet (unaligned reads are allowed there; the
/// same words copied to the stack by `bpf_skb_load_bytes` are read back unaligned by LLVM, which
/// the verifier refuses).
#[inline(always)]
fn load<const N: usize>(ctx: &TcContext, offset: usize) -> Result<[u32; N], CheckCounter> {
    let start = ctx.data() + offset;
    if start + 4 * N > ctx.data_end() {
        return Err(CheckCounter::Malformed);
    }
    let words = start as *const u32;
    // SAFETY: the check above put all N words inside the packet's linear data.
    Ok(core::array::from_fn(|i| unsafe {
        words.add(i).read_unaligned()
    }))
}

/// Checks are TCP (HTTP runs over TCP); anything else is hashed as UDP would be.
#[inline(always)]
fn protocol_of(number: u8) -> Protocol {
    if number == Protocol::Tcp as u8 {
        Protocol::Tcp
    } else {
        Protocol::Udp
    }
}

/// Puts the datapath's outer header (the backend's family) between the Ethernet header and the
/// inner packet.
#[inline(always)]
fn encapsulate(ctx: &TcContext, path: &CheckPath) -> Result<(), CheckCounter> {
    let inner = inner(ctx)?;
    let settings = settings();
    let inner_protocol = match inner.family {
        Family::V4 => IPPROTO_IPIP,
        Family::V6 => IPPROTO_IPV6,
    };
    if path.family == Family::V4 as u8 {
        if inner.len + OUTER_IPV4_LEN as u32 > path.mtu {
            return Err(CheckCounter::TooBig);
        }
        let header = outer_ipv4(
            inner.tos,
            inner.len,
            inner.dont_fragment,
            inner_protocol,
            settings.tunnel_source_v4,
            [path.addr[0], path.addr[1], path.addr[2], path.addr[3]],
        );
        grow(ctx, OUTER_IPV4_LEN, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4)?;
        write_after_ethernet(ctx, &header)?;
        ctx.store(12, &ETH_P_IP.to_be_bytes(), 0)
            .map_err(|_| CheckCounter::Failed)?;
    } else {
        if inner.len + OUTER_IPV6_LEN as u32 > path.mtu {
            return Err(CheckCounter::TooBig);
        }
        let header = outer_ipv6(
            inner.tos,
            conntrack_hash(&inner.flow).flow_label(),
            inner.len,
            inner_protocol,
            &settings.tunnel_source_v6,
            &path.addr,
        );
        grow(ctx, OUTER_IPV6_LEN, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6)?;
        write_after_ethernet(ctx, &header)?;
        ctx.store(12, &ETH_P_IPV6.to_be_bytes(), 0)
            .map_err(|_| CheckCounter::Failed)?;
    }
    Ok(())
}

/// Writes `header` right after the Ethernet header, a word at a time, into the packet (which,
/// unlike the stack, may be written unaligned).
#[inline(always)]
fn write_after_ethernet<const WORDS: usize>(
    ctx: &TcContext,
    header: &Header<WORDS>,
) -> Result<(), CheckCounter> {
    let start = ctx.data() + ETH_LEN;
    if start + 4 * WORDS > ctx.data_end() {
        return Err(CheckCounter::Failed);
    }
    let words = start as *mut u32;
    for (i, word) in header.0.iter().enumerate() {
        // SAFETY: the check above put all WORDS words inside the packet's linear data.
        unsafe { words.add(i).write_unaligned(*word) };
    }
    Ok(())
}

/// Makes `len` bytes of room after the Ethernet header.
#[inline(always)]
fn grow(ctx: &TcContext, len: usize, encap: u32) -> Result<(), CheckCounter> {
    ctx.adjust_room(len as i32, BPF_ADJ_ROOM_MAC, u64::from(encap))
        .map_err(|_| CheckCounter::Failed)
}
