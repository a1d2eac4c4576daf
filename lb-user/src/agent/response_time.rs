//! Response-time balancing (`balance = "response-time"`): a backend's share of new flows follows
//! how fast it answers its health checks. Pure.
//!
//! - Each backend keeps a moving average of the latency of its successful checks
//!   ([`ResponseTime::observe`]).
//! - Every [`PERIOD`], a VIP's backends get a factor: the fastest average over theirs, each
//!   plus [`LATENCY_FLOOR`] (so that differences of a millisecond or two, noise on a LAN, count
//!   for little); within a fifth of the fastest, the full weight; bounded to [1/4, 1] so that
//!   no backend is drained by a slow moment; in sixteenths so that noise does not rebuild rings
//!   ([`factors`]). The ring weight is the
//!   weight times the factor.

use std::time::Duration;

/// How often factors may change (and rings be rebuilt for them).
pub const PERIOD: Duration = Duration::from_secs(5);
/// Added to every average before comparing: 1 ms against 2 ms is not twice as slow for a
/// client.
pub const LATENCY_FLOOR: Duration = Duration::from_millis(10);
/// A backend at least this fast relative to the fastest (after [`LATENCY_FLOOR`]) keeps its
/// full weight: a loaded host's checks wander by a millisecond or two, and a ring rebuilt for
/// that would only churn.
const FULL_WEIGHT_RATIO: f64 = 0.8;
/// The share of a new sample in the moving average (of about the last 5 checks).
const SMOOTHING: f64 = 0.3;
/// Factors are multiples of 1/`STEPS`...
pub const STEPS: u32 = 16;
/// ... from `MIN_STEPS` / `STEPS` (a quarter of the weight) to 1.
const MIN_STEPS: u32 = STEPS / 4;

/// A backend's response time and the factor it currently gives its weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResponseTime {
    /// Moving average of successful checks' latencies (`None` before the first).
    pub average: Option<Duration>,
    /// The factor in force, in sixteenths (16: the full weight).
    pub steps: u32,
}

impl Default for ResponseTime {
    fn default() -> Self {
        Self {
            average: None,
            steps: STEPS,
        }
    }
}

impl ResponseTime {
    /// Takes a successful check's latency into the average.
    pub fn observe(&mut self, latency: Duration) {
        self.average = Some(match self.average {
            None => latency,
            Some(average) => average.mul_f64(1.0 - SMOOTHING) + latency.mul_f64(SMOOTHING),
        });
    }

    /// `weight` scaled by the factor in force.
    pub fn scale(&self, weight: u32) -> u32 {
        let scaled = u64::from(weight) * u64::from(self.steps) / u64::from(STEPS);
        u32::try_from(scaled).unwrap_or(weight)
    }

    /// Why the weight is what it is, when it is scaled down (for `lb status` and the log).
    pub fn reason(&self, fastest: Option<Duration>) -> Option<String> {
        if self.steps == STEPS {
            return None;
        }
        Some(format!(
            "response time {} (fastest {}): weight x{}",
            millis(self.average?),
            millis(fastest?),
            f64::from(self.steps) / f64::from(STEPS)
        ))
    }
}

/// `duration` as milliseconds with one decimal.
fn millis(duration: Duration) -> String {
    format!("{:.1}ms", duration.as_secs_f64() * 1000.0)
}

/// The fastest of `averages`.
pub fn fastest(averages: impl IntoIterator<Item = Option<Duration>>) -> Option<Duration> {
    averages.into_iter().flatten().min()
}

/// The factor of each backend (in sixteenths) from its average response time: the fastest
/// average over its own (both plus [`LATENCY_FLOOR`]), rounded to sixteenths, at least a
/// quarter; a backend without an average (never answered) keeps its full weight.
pub fn factors(averages: &[Option<Duration>]) -> Vec<u32> {
    let fastest = fastest(averages.iter().copied());
    averages
        .iter()
        .map(|average| match (fastest, average) {
            (Some(fastest), Some(average)) => {
                let ratio = (fastest + LATENCY_FLOOR).as_secs_f64()
                    / (*average + LATENCY_FLOOR).as_secs_f64();
                if ratio >= FULL_WEIGHT_RATIO {
                    STEPS
                } else {
                    ((ratio * f64::from(STEPS)).round() as u32).clamp(MIN_STEPS, STEPS)
                }
            }
            _ => STEPS,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn the_average_moves_a_third_of_the_way_to_each_sample() {
        let mut rt = ResponseTime::default();
        rt.observe(Duration::from_millis(10));
        assert_eq!(rt.average, ms(10));
        rt.observe(Duration::from_millis(20));
        assert_eq!(rt.average, ms(13));
        // One slow check does not make a slow backend.
        let mut steady = ResponseTime::default();
        for _ in 0..10 {
            steady.observe(Duration::from_millis(1));
        }
        steady.observe(Duration::from_millis(100));
        assert!(steady.average < ms(32), "{:?}", steady.average);
    }

    #[test]
    fn factors_follow_the_fastest_bounded_to_a_quarter_in_sixteenths() {
        assert_eq!(factors(&[ms(2), ms(2), ms(2)]), [16, 16, 16]);
        assert_eq!(
            factors(&[ms(10), ms(30), ms(10)]),
            [16, 8, 16],
            "(10+10)/(30+10)"
        );
        assert_eq!(
            factors(&[ms(2), ms(40), None]),
            [16, 4, 16],
            "bounded; unknown: full"
        );
        assert_eq!(
            factors(&[ms(2), ms(10)]),
            [16, 10],
            "12/20, rounded to sixteenths"
        );
        assert_eq!(
            factors(&[ms(1), ms(3)]),
            [16, 16],
            "within a fifth of the fastest: full"
        );
        let (one, a_little_more) = (Duration::from_micros(1000), Duration::from_micros(1230));
        assert_eq!(
            factors(&[Some(one), Some(a_little_more)]),
            [16, 16],
            "LAN noise changes nothing"
        );
        assert_eq!(factors(&[]), Vec::<u32>::new());
    }

    #[test]
    fn the_weight_is_scaled_and_the_reason_given() {
        let rt = ResponseTime {
            average: ms(40),
            steps: 4,
        };
        assert_eq!(rt.scale(100), 25);
        assert_eq!(
            rt.reason(ms(2)).as_deref(),
            Some("response time 40.0ms (fastest 2.0ms): weight x0.25")
        );
        assert_eq!(ResponseTime::default().scale(100), 100);
        assert_eq!(ResponseTime::default().reason(ms(2)), None);
    }
}
