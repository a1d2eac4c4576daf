//! The weight a backend's ring share is built with: what an operator decided at run time
//! (`lb backend drain|disable|enable`) and slow start do to its configured weight. Pure.
//!
//! Ring weights are the configured weights × [`WEIGHT_SCALE`], so that a backend ramping up can
//! start near 0 next to weight-1 neighbours; Maglev weights are relative, so scaling every
//! backend alike builds the very same ring.

use super::slow_start::Ramp;
use crate::admin::AdminState;

/// Ring weight per unit of configured weight.
pub const WEIGHT_SCALE: u32 = 100;

/// The ring weight of a backend configured with `weight`: 0 when drained or in maintenance;
/// during slow start its share of `weight × WEIGHT_SCALE`, linear in time, at least 1.
pub fn ring_weight(weight: u32, admin: AdminState, ramp: Option<Ramp>) -> u32 {
    let full = weight.saturating_mul(WEIGHT_SCALE);
    match (admin, ramp) {
        (AdminState::Drain | AdminState::Maint, _) => 0,
        (AdminState::Ready, None) => full,
        (AdminState::Ready, Some(ramp)) if ramp.done() || ramp.total.is_zero() => full,
        (AdminState::Ready, Some(ramp)) => {
            let share = ramp.elapsed.as_secs_f64() / ramp.total.as_secs_f64();
            ((f64::from(full) * share).round() as u32).clamp(1.min(full), full)
        }
    }
}

/// A ring weight in configured units (what `lb status` shows as `effective_weight`).
pub fn configured_units(ring_weight: u32) -> f64 {
    f64::from(ring_weight) / f64::from(WEIGHT_SCALE)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ramp(elapsed_ms: u64, total_ms: u64) -> Option<Ramp> {
        Some(Ramp {
            elapsed: Duration::from_millis(elapsed_ms),
            total: Duration::from_millis(total_ms),
        })
    }

    #[test]
    fn admin_states_take_the_weight_away() {
        assert_eq!(ring_weight(3, AdminState::Ready, None), 300);
        assert_eq!(ring_weight(3, AdminState::Drain, None), 0);
        assert_eq!(ring_weight(3, AdminState::Maint, ramp(1, 10)), 0);
        assert_eq!(
            ring_weight(0, AdminState::Ready, None),
            0,
            "configured 0 drains"
        );
    }

    #[test]
    fn slow_start_ramps_linearly_from_near_zero() {
        assert_eq!(ring_weight(1, AdminState::Ready, ramp(0, 30_000)), 1);
        assert_eq!(ring_weight(1, AdminState::Ready, ramp(7_500, 30_000)), 25);
        assert_eq!(ring_weight(2, AdminState::Ready, ramp(15_000, 30_000)), 100);
        assert_eq!(ring_weight(2, AdminState::Ready, ramp(30_000, 30_000)), 200);
        assert_eq!(ring_weight(2, AdminState::Ready, ramp(99_000, 30_000)), 200);
        assert_eq!(ring_weight(0, AdminState::Ready, ramp(1, 30_000)), 0);
        assert_eq!(configured_units(25), 0.25);
    }
}
