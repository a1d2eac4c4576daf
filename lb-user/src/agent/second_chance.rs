//! Second chance on the load balancer's side (docs/SECOND_CHANCE.md): which ring a tunnel VIP
//! keeps as its previous one after its ring changes, and until when. A packet of a connection
//! the datapath does not track, whose ring slot had another backend in that ring, carries that
//! backend as a hop; the backend its slot has now sends it there unless it has the connection.
//! Pure.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::rings::SharedRing;

/// The ring a VIP had before a change, kept until `until`.
#[derive(Clone, Debug)]
pub struct PreviousRing {
    /// The ring.
    pub shared: Arc<SharedRing>,
    /// When the window closes.
    pub until: SystemTime,
}

/// The previous ring a VIP keeps once its ring changed, at `now`, from `old` to one of `size`
/// slots: while the window of an earlier change is open, the ring it keeps (the one before the
/// first of a run of changes, such as the steps of a slow start, where the connections of
/// before live), for `window` more; else `old`. `None`: second chance is off (`window` 0), or
/// no ring of that size came before (a first ring, a `table_size` change).
pub fn after_change(
    kept: Option<&PreviousRing>,
    old: Option<&Arc<SharedRing>>,
    size: u32,
    window: Duration,
    now: SystemTime,
) -> Option<PreviousRing> {
    if window.is_zero() {
        return None;
    }
    let shared = match kept {
        Some(kept) if kept.until > now => &kept.shared,
        _ => old?,
    };
    (shared.size() == size).then(|| PreviousRing {
        shared: Arc::clone(shared),
        until: now + window,
    })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::agent::rings::{RingCache, RingShape};

    fn ring(cache: &mut RingCache, size: u32, members: &[(&str, u32)]) -> Arc<SharedRing> {
        let members = members
            .iter()
            .map(|(address, weight)| (address.parse::<IpAddr>().unwrap(), *weight));
        cache.ring(RingShape::new(size, members)).expect("ring")
    }

    #[test]
    fn a_run_of_changes_keeps_the_ring_before_the_first() {
        let mut cache = RingCache::default();
        let two = ring(&mut cache, 251, &[("10.0.0.1", 1), ("10.0.0.2", 1)]);
        let ramp = ring(
            &mut cache,
            251,
            &[("10.0.0.1", 100), ("10.0.0.2", 100), ("10.0.0.3", 10)],
        );
        let window = Duration::from_secs(240);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);

        let first = after_change(None, Some(&two), 251, window, t0).expect("kept");
        assert!(Arc::ptr_eq(&first.shared, &two));
        assert_eq!(first.until, t0 + window);

        // A slow start's next step, 1 s later: still the ring before the backend came.
        let t1 = t0 + Duration::from_secs(1);
        let second = after_change(Some(&first), Some(&ramp), 251, window, t1).expect("kept");
        assert!(Arc::ptr_eq(&second.shared, &two));
        assert_eq!(
            second.until,
            t1 + window,
            "the window runs from the last change"
        );

        // After the window closed, a change keeps the ring just before it.
        let late = t1 + window + Duration::from_secs(1);
        let third = after_change(Some(&second), Some(&ramp), 251, window, late).expect("kept");
        assert!(Arc::ptr_eq(&third.shared, &ramp));
    }

    #[test]
    fn no_window_no_predecessor_or_another_size_keeps_nothing() {
        let mut cache = RingCache::default();
        let two = ring(&mut cache, 251, &[("10.0.0.1", 1), ("10.0.0.2", 1)]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let window = Duration::from_secs(240);
        assert!(after_change(None, Some(&two), 251, Duration::ZERO, now).is_none());
        assert!(after_change(None, None, 251, window, now).is_none());
        assert!(after_change(None, Some(&two), 257, window, now).is_none());
    }
}
