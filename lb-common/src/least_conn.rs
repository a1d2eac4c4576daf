//! Least connections by the power of two choices (`balance = "least-conn"`): a new flow has two
//! candidates, the backend of its Maglev ring slot and that of a second slot taken from an
//! independent hash, and goes to the one with fewer active flows for its weight. The XDP program
//! and `lb explain` both call these rules.

use crate::conntrack::{ConntrackHash, FlowClass};

/// Value of `LOADS`, by backend id: what a least-conn VIP's backend is weighed by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendLoad {
    /// Its active flows: the agent's last count of `FLOWS` ([`crate::conntrack::is_active`]),
    /// plus what the datapath saw since ([`active_change`]): one for each of its flows that
    /// became established, minus one for each a client closed or a new flow evicted. Read as
    /// an `i64`: an update lost to a race may take it below zero, which weighs as zero. 64
    /// bits, so the program and the agent read and write it as one aligned word.
    pub active: u64,
    /// Its ring weight. 0: not known yet, so the ring's choice stands.
    pub weight: u32,
    /// Always zero.
    pub _pad: u32,
}

/// How a tracked flow's packet changes its backend's active flows, the flow's class going from
/// `was` to `now`: +1 (as `1`) when it becomes established, −1 (as `u64::MAX`, to add
/// wrapping) when its client closes it after that, 0 otherwise. Only established flows count,
/// as in the agent's count, so a flood of SYNs that never complete (spoofed sources, which
/// could otherwise steer new flows away from a backend of the attacker's choosing) counts
/// nothing, and evicting an unconfirmed or idle flow has nothing to take off.
#[inline(always)]
pub const fn active_change(was: FlowClass, now: FlowClass) -> Option<u64> {
    match (was.is_established(), now.is_established()) {
        (false, true) => Some(1),
        (true, false) => Some(u64::MAX),
        _ => None,
    }
}

/// The second candidate's ring slot for the flow of `hash` (its conntrack hash, independent of
/// the ring's): `None` for an empty ring.
#[inline(always)]
pub fn second_slot(hash: ConntrackHash, ring_size: u32) -> Option<u32> {
    if ring_size == 0 {
        None
    } else {
        // The check's low bit is always set: skip it.
        Some((hash.check >> 1) % ring_size)
    }
}

/// Whether a new flow goes to the second candidate rather than to its ring slot's backend:
/// only if the second has fewer active flows for its weight (`active₂ / weight₂ <
/// active₁ / weight₁`). A tie, or a weight not known yet, leaves the ring's choice.
#[inline(always)]
pub fn prefers_second(ring: BackendLoad, second: BackendLoad) -> bool {
    if ring.weight == 0 || second.weight == 0 {
        return false;
    }
    // Counts below 2^32 and weights below 2^32: the products fit.
    let active = |load: BackendLoad| (load.active as i64).clamp(0, u32::MAX.into()) as u64;
    active(second) * u64::from(ring.weight) < active(ring) * u64::from(second.weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(active: u64, weight: u32) -> BackendLoad {
        BackendLoad {
            active,
            weight,
            _pad: 0,
        }
    }

    #[test]
    fn the_less_loaded_for_its_weight_wins_and_ties_stay_on_the_ring() {
        assert!(prefers_second(load(10, 100), load(9, 100)));
        assert!(!prefers_second(load(10, 100), load(10, 100)), "a tie");
        assert!(!prefers_second(load(9, 100), load(10, 100)));
        // Weight 300 against 100: 20 active weigh less than 10.
        assert!(prefers_second(load(10, 100), load(20, 300)));
        assert!(!prefers_second(load(10, 300), load(20, 100)));
        assert!(!prefers_second(load(0, 100), load(0, 100)));
    }

    #[test]
    fn unknown_weights_keep_the_ring_choice() {
        assert!(!prefers_second(load(50, 0), load(0, 100)));
        assert!(!prefers_second(load(50, 100), load(0, 0)));
    }

    #[test]
    fn a_count_below_zero_weighs_as_zero() {
        let minus_one = (-1i64) as u64;
        assert!(prefers_second(load(1, 100), load(minus_one, 100)));
        assert!(!prefers_second(load(0, 100), load(minus_one, 100)), "0 = 0");
        assert!(!prefers_second(load(minus_one, 100), load(0, 100)));
    }

    #[test]
    fn a_flow_counts_from_its_establishment_to_its_close() {
        use FlowClass::*;
        let add = |was, now| active_change(was, now).map(|d| d as i64);
        assert_eq!(add(Unconfirmed, TcpEstablished), Some(1));
        assert_eq!(add(Unconfirmed, UdpEstablished), Some(1));
        assert_eq!(add(TcpEstablished, TcpClosing), Some(-1));
        // A SYN answered by a reset was never counted.
        assert_eq!(add(Unconfirmed, TcpClosing), None);
        for class in FlowClass::ALL {
            assert_eq!(add(class, class), None, "{class:?} stays");
        }
    }

    #[test]
    fn the_second_slot_spreads_over_the_ring() {
        assert_eq!(second_slot(ConntrackHash { set: 0, check: 1 }, 0), None);
        let size = 251;
        let mut hit = [false; 251];
        for check in 0..10_000u32 {
            let hash = ConntrackHash {
                set: 0,
                check: check.wrapping_mul(0x9e37_79b9) | 1,
            };
            hit[second_slot(hash, size).unwrap() as usize] = true;
        }
        assert!(
            hit.iter().all(|hit| *hit),
            "every slot is some flow's second"
        );
    }
}
