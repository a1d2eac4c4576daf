//! Slow start: a backend that comes up after being added at run time, after a failure, or
//! after an operator returned it to service, takes its weight over `slow_start` instead of at
//! once, so a cold cache or JIT is not handed its full share in one step. Pure.
//!
//! Backends the agent starts with serve at once: they served before the restart.

use std::time::Duration;

use tokio::time::Instant;

/// Where a backend is in its slow start: `elapsed` of `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ramp {
    /// Time since it came up.
    pub elapsed: Duration,
    /// The slow start time.
    pub total: Duration,
}

impl Ramp {
    /// Whether the ramp is over.
    pub fn done(&self) -> bool {
        self.elapsed >= self.total
    }
}

/// A backend's slow start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowStart {
    /// Full weight when up; its next coming up does not ramp.
    Full,
    /// Its next coming up ramps.
    Pending,
    /// Ramping since `since`.
    Ramping {
        /// When it came up.
        since: Instant,
    },
}

impl SlowStart {
    /// A new backend's: `added_at_run_time` ramps on its first coming up (one the agent starts
    /// with does not).
    pub fn new(added_at_run_time: bool) -> Self {
        if added_at_run_time {
            Self::Pending
        } else {
            Self::Full
        }
    }

    /// It came up at `now` (from down or unknown): a pending slow start of `total` begins.
    #[must_use]
    pub fn came_up(self, now: Instant, total: Duration) -> Self {
        match self {
            Self::Pending => Self::ramp_from(now, total),
            Self::Full | Self::Ramping { .. } => self,
        }
    }

    /// It went down: its next coming up ramps again.
    #[must_use]
    pub fn went_down(self) -> Self {
        Self::Pending
    }

    /// An operator returned it to service at `now`: it ramps at once if `healthy`, else when
    /// it comes up.
    #[must_use]
    pub fn returned_to_service(self, healthy: bool, now: Instant, total: Duration) -> Self {
        if healthy {
            Self::ramp_from(now, total)
        } else {
            Self::Pending
        }
    }

    /// An operator took it out of service (drain, maintenance): a ramp under way ends; one
    /// pending stays pending.
    #[must_use]
    pub fn taken_out_of_service(self) -> Self {
        match self {
            Self::Ramping { .. } => Self::Full,
            Self::Full | Self::Pending => self,
        }
    }

    /// Ends a ramp of `total` that is over at `now`.
    #[must_use]
    pub fn settled(self, now: Instant, total: Duration) -> Self {
        match self.ramp(now, total) {
            Some(ramp) if ramp.done() => Self::Full,
            _ => self,
        }
    }

    /// Where its ramp of `total` is at `now`, if it is ramping.
    pub fn ramp(self, now: Instant, total: Duration) -> Option<Ramp> {
        match self {
            Self::Ramping { since } => Some(Ramp {
                elapsed: now.saturating_duration_since(since),
                total,
            }),
            Self::Full | Self::Pending => None,
        }
    }

    /// Whether it is ramping.
    pub fn is_ramping(self) -> bool {
        matches!(self, Self::Ramping { .. })
    }

    /// A ramp of `total` from `now`; none when no slow start is configured.
    fn ramp_from(now: Instant, total: Duration) -> Self {
        if total.is_zero() {
            Self::Full
        } else {
            Self::Ramping { since: now }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOTAL: Duration = Duration::from_secs(30);

    #[test]
    fn backends_started_with_serve_at_once_and_added_ones_ramp_on_coming_up() {
        let now = Instant::now();
        assert_eq!(SlowStart::new(false).came_up(now, TOTAL), SlowStart::Full);
        let added = SlowStart::new(true).came_up(now, TOTAL);
        assert_eq!(added, SlowStart::Ramping { since: now });
        assert_eq!(
            added.came_up(now + TOTAL, TOTAL),
            added,
            "a second result does not restart it"
        );
        assert_eq!(
            SlowStart::new(true).came_up(now, Duration::ZERO),
            SlowStart::Full,
            "none configured"
        );
    }

    #[test]
    fn a_failure_makes_the_next_recovery_ramp() {
        let now = Instant::now();
        let after_failure = SlowStart::Full.went_down();
        assert_eq!(after_failure, SlowStart::Pending);
        let recovered = after_failure.came_up(now, TOTAL);
        assert!(recovered.is_ramping());
        assert_eq!(
            SlowStart::Ramping { since: now }.went_down(),
            SlowStart::Pending,
            "failing while ramping"
        );
    }

    #[test]
    fn a_ramp_reports_its_progress_and_settles_when_over() {
        let start = Instant::now();
        let ramping = SlowStart::Ramping { since: start };
        let half = start + TOTAL / 2;
        assert_eq!(
            ramping.ramp(half, TOTAL),
            Some(Ramp {
                elapsed: TOTAL / 2,
                total: TOTAL
            })
        );
        assert_eq!(ramping.settled(half, TOTAL), ramping);
        assert_eq!(ramping.settled(start + TOTAL, TOTAL), SlowStart::Full);
        assert_eq!(SlowStart::Pending.ramp(half, TOTAL), None);
        assert_eq!(SlowStart::Pending.settled(half, TOTAL), SlowStart::Pending);
    }

    #[test]
    fn operators_end_ramps_and_start_them() {
        let now = Instant::now();
        let ramping = SlowStart::Ramping { since: now };
        assert_eq!(ramping.taken_out_of_service(), SlowStart::Full);
        assert_eq!(
            SlowStart::Pending.taken_out_of_service(),
            SlowStart::Pending,
            "still ramps when it recovers"
        );
        assert_eq!(
            SlowStart::Full.returned_to_service(true, now, TOTAL),
            SlowStart::Ramping { since: now }
        );
        assert_eq!(
            SlowStart::Full.returned_to_service(false, now, TOTAL),
            SlowStart::Pending
        );
    }
}
