//! Counter updates. All counters live in per-CPU maps, so plain (non-atomic) increments are
//! exact: a program run never migrates between CPUs.

use lb_common::{
    check_path::CheckCounter,
    stats::{Counter, DecapCounter, SecondChanceCounter},
};

use crate::maps::{BACKEND_STATS, CHECK_STATS, DECAP_STATS, SECOND_CHANCE_STATS, STATS, VIP_STATS};

/// Adds one to a global counter.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of STATS returned by the kernel; only this CPU writes it now.
        unsafe { *value += 1 };
    }
}

/// Adds one to a `decap` counter.
#[inline(always)]
pub fn count_decap(counter: DecapCounter) {
    if let Some(value) = DECAP_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: as in `count`.
        unsafe { *value += 1 };
    }
}

/// Adds one to a second-chance counter.
#[inline(always)]
pub fn count_second_chance(counter: SecondChanceCounter) {
    if let Some(value) = SECOND_CHANCE_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: as in `count`.
        unsafe { *value += 1 };
    }
}

/// Adds one to a `steer_check` counter.
#[inline(always)]
pub fn count_check(counter: CheckCounter) {
    if let Some(value) = CHECK_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: as in `count`.
        unsafe { *value += 1 };
    }
}

/// A packet matched VIP `vip`.
#[inline(always)]
pub fn vip_packet(vip: u32, bytes: u64) {
    if let Some(stats) = VIP_STATS.get_ptr_mut(vip) {
        // SAFETY: as in `count`.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
        }
    }
}

/// A packet of VIP `vip` was dropped.
#[inline(always)]
pub fn vip_drop(vip: u32) {
    if let Some(stats) = VIP_STATS.get_ptr_mut(vip) {
        // SAFETY: as in `count`.
        unsafe { (*stats).dropped += 1 };
    }
}

/// A packet of VIP `vip` found its flow in conntrack.
#[inline(always)]
pub fn vip_conntrack_hit(vip: u32) {
    if let Some(stats) = VIP_STATS.get_ptr_mut(vip) {
        // SAFETY: as in `count`.
        unsafe { (*stats).conntrack_hits += 1 };
    }
}

/// A flow of VIP `vip` was assigned to `backend` from the ring.
#[inline(always)]
pub fn new_flow(vip: u32, backend: u32) {
    if let Some(stats) = VIP_STATS.get_ptr_mut(vip) {
        // SAFETY: as in `count`.
        unsafe { (*stats).new_flows += 1 };
    }
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: as in `count`.
        unsafe { (*stats).new_flows += 1 };
    }
}

/// A packet was forwarded to `backend`.
#[inline(always)]
pub fn backend_packet(backend: u32, bytes: u64) {
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: as in `count`.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
        }
    }
}
