//! The entry points. Each reads as the table of contents of its path.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_common::stats::{Counter, DropReason, PassReason};

use crate::{
    balance, decap,
    forward::{self, Egress},
    maps, parse, stats, steer,
    verdict::Unhandled,
};

/// The load balancer.
#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    let (action, verdict) = match balance_packet(&ctx) {
        Ok(Egress::Tx) => (xdp_action::XDP_TX, Counter::Tx),
        Ok(Egress::Redirect) => (xdp_action::XDP_REDIRECT, Counter::Redirect),
        Err(unhandled) => {
            stats::count(unhandled.counter());
            match unhandled {
                Unhandled::Pass(_) => (xdp_action::XDP_PASS, Counter::Pass),
                Unhandled::Drop(_) => (xdp_action::XDP_DROP, Counter::Drop),
            }
        }
    };
    stats::count(verdict);
    action
}

#[inline(always)]
fn balance_packet(ctx: &XdpContext) -> Result<Egress, Unhandled> {
    let settings = maps::settings();
    parse::for_this_host(ctx, &settings.local_mac)?;
    let packet = parse::packet(ctx)?;
    let vip = balance::vip(&packet.flow).ok_or(PassReason::NotVip)?;
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    stats::vip_packet(vip.id, frame_len);
    let Some(choice) = balance::backend(&packet, &vip, &settings.idle_timeouts) else {
        stats::vip_drop(vip.id);
        return Err(DropReason::NoBackend.into());
    };
    match forward::forward(ctx, &packet, &vip, &choice, settings) {
        Ok(egress) => {
            stats::backend_packet(choice.id, frame_len);
            if packet.icmp_error {
                stats::count(Counter::IcmpError);
            }
            Ok(egress)
        }
        Err(reason) => {
            stats::vip_drop(vip.id);
            Err(reason.into())
        }
    }
}

/// Strips tunnels addressed to this host (see `decap.rs`).
#[xdp]
pub fn decap(ctx: XdpContext) -> u32 {
    let (action, counter) = decap::decap(&ctx);
    stats::count_decap(counter);
    action
}

/// Sends health checks along the serving path (see `steer.rs`): on the check interface's
/// egress.
#[classifier]
pub fn steer_check(ctx: TcContext) -> i32 {
    match steer::steer(&ctx) {
        Ok((action, counter)) => {
            stats::count_check(counter);
            action
        }
        Err(counter) => {
            stats::count_check(counter);
            steer::DROPPED
        }
    }
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
