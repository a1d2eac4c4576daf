//! The fingerprint of a ring: a hash of the backend address in every slot, so two instances
//! with the same configuration and health show the same number (`lb status`,
//! `lb_vip_ring_fingerprint`) whatever ids their backends got.

use std::collections::BTreeMap;

use lb_common::maps::NO_BACKEND;

/// FNV-1a (64-bit) over the backend address of every slot (`-` for none), shifted to 48 bits
/// (exact in an `f64`, so Prometheus can compare it).
pub fn ring_fingerprint(ring: &[u32], addresses: &BTreeMap<u32, String>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for slot in ring {
        let name = if *slot == NO_BACKEND {
            "-"
        } else {
            addresses.get(slot).map_or("?", String::as_str)
        };
        for byte in name.bytes().chain([b'\n']) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash >> 16
}
