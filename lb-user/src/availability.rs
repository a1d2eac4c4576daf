//! Availability of a backend, measured from its own health history: how long it was observed,
//! how long it was up, how often it failed, and the mean times to repair (down → up) and to
//! failure (up → down). Availability is `up / observed` (= MTTF / (MTTF + MTTR) in the long
//! run). Pure bookkeeping on a caller-given clock, saved across agent restarts: time while no
//! agent ran is not observed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The health history of one backend, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    /// Time observed with a known health (up or down).
    pub observed_ms: u64,
    /// Of that, time up.
    pub up_ms: u64,
    /// Up → down transitions.
    pub failures: u64,
    /// Down → up transitions.
    pub recoveries: u64,
    /// Total length of the up periods that ended in a failure.
    pub failed_up_ms: u64,
    /// Total length of the down periods that ended in a recovery.
    pub recovered_down_ms: u64,
    /// The health of the period in progress (`None`: not known yet).
    pub up: Option<bool>,
    /// How long the period in progress has lasted so far (observed time only).
    pub period_ms: u64,
}

impl Availability {
    /// Counts `elapsed` (since the last call) into the period in progress.
    pub fn advance(&mut self, elapsed: Duration) {
        let Some(up) = self.up else {
            return;
        };
        let ms = elapsed.as_millis() as u64;
        self.observed_ms += ms;
        self.period_ms += ms;
        if up {
            self.up_ms += ms;
        }
    }

    /// The backend's health is now `up` (after [`Self::advance`] up to this moment).
    pub fn record(&mut self, up: bool) {
        match self.up {
            Some(true) if !up => {
                self.failures += 1;
                self.failed_up_ms += self.period_ms;
            }
            Some(false) if up => {
                self.recoveries += 1;
                self.recovered_down_ms += self.period_ms;
            }
            Some(_) => return,
            None => {}
        }
        self.up = Some(up);
        self.period_ms = 0;
    }

    /// A new agent takes over: the period in progress goes on from now, with the health the
    /// first check decides (the time in between was not observed).
    pub fn resume(&mut self) {
        self.up = None;
    }

    /// Mean time from down to up; `None` before the first recovery.
    pub fn mttr(&self) -> Option<Duration> {
        mean(self.recovered_down_ms, self.recoveries)
    }

    /// Mean time up before a failure; `None` before the first failure.
    pub fn mttf(&self) -> Option<Duration> {
        mean(self.failed_up_ms, self.failures)
    }

    /// Time up / time observed; `None` before anything was observed.
    pub fn availability(&self) -> Option<f64> {
        (self.observed_ms > 0).then(|| self.up_ms as f64 / self.observed_ms as f64)
    }
}

fn mean(total_ms: u64, count: u64) -> Option<Duration> {
    (count > 0).then(|| Duration::from_millis(total_ms / count))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn nothing_is_known_before_the_first_check() {
        let mut a = Availability::default();
        a.advance(10 * S);
        assert_eq!(
            (a.observed_ms, a.mttr(), a.mttf(), a.availability()),
            (0, None, None, None)
        );
    }

    #[test]
    fn failures_and_repairs_give_mttf_mttr_and_availability() {
        let mut a = Availability::default();
        a.record(true);
        a.advance(90 * S); // up 90 s
        a.record(false);
        a.advance(10 * S); // down 10 s
        a.record(true);
        assert_eq!(a.failures, 1);
        assert_eq!(a.mttf(), Some(90 * S));
        assert_eq!(a.mttr(), Some(10 * S));
        assert_eq!(a.availability(), Some(0.9));
        a.advance(50 * S); // up 50 s
        a.record(false);
        a.advance(30 * S); // down 30 s
        a.record(true);
        assert_eq!(a.failures, 2);
        assert_eq!(a.mttf(), Some(70 * S), "(90 + 50) / 2");
        assert_eq!(a.mttr(), Some(20 * S), "(10 + 30) / 2");
        assert_eq!(a.availability(), Some(140.0 / 180.0));
        a.record(true);
        assert_eq!(a.recoveries, 2, "a repeated state is no transition");
    }

    #[test]
    fn time_without_an_agent_is_not_observed() {
        let mut a = Availability::default();
        a.record(true);
        a.advance(20 * S);
        let saved: Availability =
            serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let mut b = saved;
        b.resume();
        b.advance(1000 * S); // the agent was down: nothing counted
        b.record(false);
        assert_eq!(b.observed_ms, 20_000);
        assert_eq!(
            b.failures, 0,
            "the first check after a restart decides afresh"
        );
        b.advance(5 * S);
        b.record(true);
        assert_eq!(b.mttr(), Some(5 * S));
        assert_eq!(b.availability(), Some(20.0 / 25.0));
    }
}
