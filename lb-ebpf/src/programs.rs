//! The entry points. Each reads as the table of contents of its path.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::stats::Counter;

use crate::{balance, decap, forward, parse, stats};

/// The load balancer.
#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    let action = balance_packet(&ctx);
    stats::count(match action {
        xdp_action::XDP_PASS => Counter::Pass,
        xdp_action::XDP_TX => Counter::Tx,
        xdp_action::XDP_REDIRECT => Counter::Redirect,
        _ => Counter::Drop,
    });
    action
}

#[inline(always)]
fn balance_packet(ctx: &XdpContext) -> u32 {
    let packet = match parse::packet(ctx) {
        Ok(packet) => packet,
        Err(reason) => return unhandled(reason),
    };
    let Some(vip) = balance::vip(&packet.flow) else {
        return unhandled(Counter::NotVip);
    };
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    stats::vip_packet(vip.id, frame_len);
    let Some(choice) = balance::backend(&packet, &vip) else {
        stats::vip_drop(vip.id);
        return unhandled(Counter::NoBackend);
    };
    match forward::forward(ctx, &packet, &vip, &choice) {
        Ok(action) => {
            stats::backend_packet(choice.id, frame_len);
            if packet.icmp_error {
                stats::count(Counter::IcmpError);
            }
            action
        }
        Err(reason) => {
            stats::vip_drop(vip.id);
            unhandled(reason)
        }
    }
}

/// Counts why a packet is not forwarded and returns its verdict: malformed packets and VIP
/// packets that cannot be forwarded are dropped, everything else goes to the host untouched.
#[inline(always)]
fn unhandled(reason: Counter) -> u32 {
    stats::count(reason);
    match reason {
        Counter::ParseError
        | Counter::NoBackend
        | Counter::TooBig
        | Counter::NoHeadroom
        | Counter::RedirectFailed => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Strips tunnels addressed to this host (see `decap.rs`).
#[xdp]
pub fn decap(ctx: XdpContext) -> u32 {
    let (action, counter) = decap::decap(&ctx);
    stats::count_decap(counter);
    action
}

/// Passes every packet: attached to veth peers in labs so XDP_TX'd frames are delivered.
#[xdp]
pub fn pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Sends every packet back: the floor a forwarding XDP program is measured against.
#[xdp]
pub fn tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
