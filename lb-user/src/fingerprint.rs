//! The fingerprint of a ring: a hash of the backend address in every slot, so two instances
//! with the same configuration and health show the same number (`lb status`,
//! `lb_vip_ring_fingerprint`) whatever ids their backends got.

use std::collections::BTreeMap;

use lb_common::maps::NO_BACKEND;

/// FNV-1a (64-bit) over the backend address of every slot (`-` for none), shifted to 48 bits
/// (exact in an `f64`, so Prometheus can compare it). About a millisecond at 65,537 slots: the
/// multiplications of FNV follow one another, byte after byte.
pub fn ring_fingerprint(ring: &[u32], addresses: &BTreeMap<u32, String>) -> u64 {
    // Looked up by binary search in a sorted vector: a map lookup per slot cost as much as
    // the hashing.
    let names: Vec<(u32, &[u8])> = addresses
        .iter()
        .map(|(id, address)| (*id, address.as_bytes()))
        .collect();
    let name_of = |slot: u32| -> &[u8] {
        if slot == NO_BACKEND {
            return b"-";
        }
        match names.binary_search_by_key(&slot, |(id, _)| *id) {
            Ok(index) => names[index].1,
            Err(_) => b"?",
        }
    };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for slot in ring {
        for byte in name_of(*slot).iter().chain(b"\n") {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash >> 16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, slot by slot, as the first version computed it.
    fn by_definition(ring: &[u32], addresses: &BTreeMap<u32, String>) -> u64 {
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

    #[test]
    fn the_fingerprint_is_its_definition() {
        let addresses: BTreeMap<u32, String> =
            [(3, "10.0.0.3"), (9, "2001:db8::9"), (12, "10.0.0.12")]
                .into_iter()
                .map(|(id, a)| (id, a.to_owned()))
                .collect();
        let ring: Vec<u32> = (0..4099u32)
            .map(|i| match i.wrapping_mul(2_654_435_761) % 5 {
                0 => 3,
                1 => 9,
                2 => 12,
                3 => NO_BACKEND,
                _ => 77, // an id without an address
            })
            .collect();
        assert_eq!(
            ring_fingerprint(&ring, &addresses),
            by_definition(&ring, &addresses)
        );
        assert_eq!(
            ring_fingerprint(&[], &addresses),
            by_definition(&[], &addresses)
        );
    }
}
