//! Second chance on the load balancer's side (docs/SECOND_CHANCE.md): what a tunnel VIP's
//! previous ring holds after its ring changes, and until when. A packet of a connection the
//! datapath does not track whose ring slot names a backend there carries that backend as a
//! hop; the backend its slot has now sends it there unless it has the connection. Pure.
//!
//! Each slot of the previous ring holds the backend the slot had before its own last change
//! within the window (Beamer's rule): a slot that moves from b1 to b3 names b1 until the
//! window closes, whatever other slots do meanwhile, so a run of changes (a slow start's steps,
//! a backend removed then added back) never hides the backend a connection lives on.

use std::time::{Duration, SystemTime};

use lb_common::maps::NO_BACKEND;

use super::rings::RingShape;

/// The most ring shapes a window remembers (a slow start of a minute is 120 steps).
pub const MAX_CHAIN: usize = 128;

/// What a VIP keeps of its rings while its second-chance window is open.
#[derive(Clone, Debug, PartialEq)]
pub struct PreviousRing {
    /// The rings since the window opened, oldest first, ending with the one in force: what
    /// the previous ring is computed from ([`replay`]), kept in the records so a restart
    /// computes it again.
    pub chain: Vec<RingShape>,
    /// When the window closes.
    pub until: SystemTime,
}

impl PreviousRing {
    /// After a change from `old` to `new` at `now`: the chain of a window still open, or of a
    /// new one, with `new` at its end, open for `window` more. `None`: second chance is off
    /// (`window` 0), or the ring size changed (slots do not correspond).
    pub fn after_change(
        kept: Option<&PreviousRing>,
        old: &RingShape,
        new: &RingShape,
        window: Duration,
        now: SystemTime,
    ) -> Option<PreviousRing> {
        if window.is_zero() || old.size() != new.size() {
            return None;
        }
        let mut chain = match kept {
            Some(kept) if kept.until > now && kept.chain.last() == Some(old) => kept.chain.clone(),
            _ => vec![old.clone()],
        };
        chain.push(new.clone());
        if chain.len() > MAX_CHAIN {
            // Forget the oldest change but one: its slots' owners live on in the first ring.
            chain.remove(1);
        }
        Some(PreviousRing {
            chain,
            until: now + window,
        })
    }
}

/// The previous ring after one more change, from `old` to `new` (backend ids by slot): a slot
/// that changed names its backend in `old`; one that did not keeps what `prior` named
/// (`NO_BACKEND` without a prior).
pub fn merge(prior: Option<&[u32]>, old: &[u32], new: &[u32]) -> Vec<u32> {
    old.iter()
        .zip(new)
        .enumerate()
        .map(|(slot, (before, now))| {
            if before != now {
                *before
            } else {
                prior
                    .and_then(|prior| prior.get(slot).copied())
                    .unwrap_or(NO_BACKEND)
            }
        })
        .collect()
}

/// The previous ring of a chain of rings (backend ids by slot, oldest first): [`merge`] of each
/// change in turn.
pub fn replay(rings: &[Vec<u32>]) -> Vec<u32> {
    let mut previous: Option<Vec<u32>> = None;
    for pair in rings.windows(2) {
        previous = Some(merge(previous.as_deref(), &pair[0], &pair[1]));
    }
    previous.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    const N: u32 = NO_BACKEND;

    fn shape(members: &[(&str, u32)]) -> RingShape {
        RingShape::new(
            251,
            members
                .iter()
                .map(|(address, weight)| (address.parse::<IpAddr>().unwrap(), *weight)),
        )
    }

    #[test]
    fn a_slot_names_its_backend_before_its_own_last_change() {
        // Slots 0-3: b1 b1 b2 b2; b3 takes slot 1; then b3 takes slot 2 too.
        let r0 = vec![1, 1, 2, 2];
        let r1 = vec![1, 3, 2, 2];
        let r2 = vec![1, 3, 3, 2];
        let after_one = merge(None, &r0, &r1);
        assert_eq!(after_one, vec![N, 1, N, N]);
        let after_two = merge(Some(&after_one), &r1, &r2);
        assert_eq!(after_two, vec![N, 1, 2, N], "slot 1 still names b1");
        assert_eq!(replay(&[r0, r1, r2]), after_two);
    }

    #[test]
    fn a_backend_removed_then_added_back_leaves_the_owner_in_between() {
        // b3 had slot 1, left (b1 took it), came back: connections opened on b1 meanwhile live
        // there; the ring from before both changes would say b3, where the slot is now.
        let with = vec![1, 3, 2];
        let without = vec![1, 1, 2];
        assert_eq!(
            replay(&[with.clone(), without.clone(), with]),
            vec![N, 1, N]
        );
    }

    #[test]
    fn the_window_runs_from_the_last_change_and_a_new_one_starts_afresh() {
        let (a, b, c) = (
            shape(&[("10.0.0.1", 1), ("10.0.0.2", 1)]),
            shape(&[("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)]),
            shape(&[("10.0.0.1", 1), ("10.0.0.3", 1)]),
        );
        let window = Duration::from_secs(240);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let first = PreviousRing::after_change(None, &a, &b, window, t0).expect("on");
        assert_eq!(first.chain, vec![a.clone(), b.clone()]);
        let t1 = t0 + Duration::from_secs(10);
        let second = PreviousRing::after_change(Some(&first), &b, &c, window, t1).expect("on");
        assert_eq!(second.chain, vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!(second.until, t1 + window);
        let late = t1 + window + Duration::from_secs(1);
        let third = PreviousRing::after_change(Some(&second), &c, &a, window, late).expect("on");
        assert_eq!(
            third.chain,
            vec![c.clone(), a.clone()],
            "a closed window starts afresh"
        );
        assert!(PreviousRing::after_change(None, &a, &b, Duration::ZERO, t0).is_none());
        let bigger = RingShape::new(257, a.members().iter().copied());
        assert!(PreviousRing::after_change(None, &a, &bigger, window, t0).is_none());
    }

    #[test]
    fn a_long_run_keeps_the_first_ring_and_the_newest_changes() {
        let window = Duration::from_secs(240);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let shapes: Vec<RingShape> = (1..=MAX_CHAIN as u32 + 5)
            .map(|weight| shape(&[("10.0.0.1", 100), ("10.0.0.2", weight)]))
            .collect();
        let mut kept = None;
        for pair in shapes.windows(2) {
            kept = PreviousRing::after_change(kept.as_ref(), &pair[0], &pair[1], window, now);
        }
        let kept = kept.expect("on");
        assert_eq!(kept.chain.len(), MAX_CHAIN);
        assert_eq!(kept.chain[0], shapes[0]);
        assert_eq!(kept.chain.last(), shapes.last());
    }
}
