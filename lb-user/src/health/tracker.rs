//! The rise/fall state machine of one backend (pure, no I/O): check results in, health and
//! its transitions out.

use std::{fmt, time::Duration};

use tokio::time::Instant;

use super::text::fmt_latency;

/// Health as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not checked yet: receives no traffic.
    Unknown,
    /// Passing checks: receives traffic.
    Up,
    /// Failing checks: receives no new traffic.
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    /// Whether the check passed.
    pub ok: bool,
    /// How long the check took (until connected, failed or timed out).
    pub latency: Duration,
    /// Why the check failed, e.g. `"connection refused"`, `"HTTP 503 (expected 2xx)"` or
    /// `"timed out after 500ms"`; `None` if it passed.
    pub error: Option<String>,
    /// What passed, e.g. `"connected"` or `"HTTP 200"`; `None` if it failed.
    pub passed: Option<String>,
    /// A failed check through the VIP: whether the backend's own address answered the same
    /// check (`None`: not asked).
    pub own_address_answers: Option<bool>,
}

impl CheckResult {
    /// A TCP check that connected in `latency`.
    pub fn success(latency: Duration) -> Self {
        Self::passed(latency, "connected")
    }

    /// A passed check that took `latency`; `what` passed, e.g. `"HTTP 200"`.
    pub fn passed(latency: Duration, what: impl Into<String>) -> Self {
        CheckResult {
            ok: true,
            latency,
            error: None,
            passed: Some(what.into()),
            own_address_answers: None,
        }
    }

    /// A failed check that took `latency`, with its error.
    pub fn failure(latency: Duration, error: impl Into<String>) -> Self {
        CheckResult {
            ok: false,
            latency,
            error: Some(error.into()),
            passed: None,
            own_address_answers: None,
        }
    }

    /// Short description: `"connected in 1.2ms"`, `"HTTP 200 in 1.2ms"` or the error.
    pub fn describe(&self) -> String {
        let Self {
            ok,
            latency,
            error,
            passed,
            ..
        } = self;
        if *ok {
            let what = passed.as_deref().unwrap_or("passed");
            format!("{what} in {}", fmt_latency(*latency))
        } else {
            error.clone().unwrap_or_else(|| "check failed".into())
        }
    }
}

/// A change of a backend's health.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Health before.
    pub from: Health,
    /// Health after.
    pub to: Health,
    /// Why, e.g. `"3 failed checks: connection refused"`.
    pub reason: String,
}

/// rise/fall state machine of one backend (pure, no I/O).
#[derive(Clone, Debug)]
pub struct HealthTracker {
    rise: u32,
    fall: u32,
    health: Health,
    successes: u32,
    failures: u32,
    last_change: Option<Instant>,
}

impl HealthTracker {
    /// A tracker in state [`Health::Unknown`]: `Down` → `Up` takes `rise` consecutive
    /// successes, `Up` → `Down` takes `fall` consecutive failures (0 counts as 1).
    pub fn new(rise: u32, fall: u32) -> Self {
        HealthTracker {
            rise: rise.max(1),
            fall: fall.max(1),
            health: Health::Unknown,
            successes: 0,
            failures: 0,
            last_change: None,
        }
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// When the health last changed (`None` while `Unknown`).
    pub fn last_change(&self) -> Option<Instant> {
        self.last_change
    }

    /// Records the result of a check made at `now`; returns the transition if the health
    /// changed.
    pub fn record(&mut self, result: &CheckResult, now: Instant) -> Option<Transition> {
        if result.ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let change = match self.health {
            Health::Unknown => {
                let to = if result.ok { Health::Up } else { Health::Down };
                Some((to, format!("first check: {}", result.describe())))
            }
            Health::Up if !result.ok && self.failures >= self.fall => Some((
                Health::Down,
                format!(
                    "{} failed check{}: {}",
                    self.failures,
                    plural(self.failures),
                    result.describe()
                ),
            )),
            Health::Down if result.ok && self.successes >= self.rise => Some((
                Health::Up,
                format!(
                    "{} successful check{}",
                    self.successes,
                    plural(self.successes)
                ),
            )),
            Health::Up | Health::Down => None,
        };
        let (to, reason) = change?;
        let from = std::mem::replace(&mut self.health, to);
        self.last_change = Some(now);
        Some(Transition { from, to, reason })
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> CheckResult {
        CheckResult::success(Duration::from_micros(1200))
    }

    fn refused() -> CheckResult {
        CheckResult::failure(Duration::from_micros(100), "connection refused")
    }

    #[test]
    fn first_result_decides() {
        let now = Instant::now();
        let mut up = HealthTracker::new(3, 3);
        assert_eq!(up.health(), Health::Unknown);
        assert!(up.last_change().is_none());
        let t = up.record(&ok(), now).unwrap();
        assert_eq!((t.from, t.to), (Health::Unknown, Health::Up));
        assert_eq!(t.reason, "first check: connected in 1.2ms");
        assert_eq!(up.health(), Health::Up);
        assert_eq!(up.last_change(), Some(now));

        let mut down = HealthTracker::new(3, 3);
        let t = down.record(&refused(), now).unwrap();
        assert_eq!((t.from, t.to), (Health::Unknown, Health::Down));
        assert_eq!(t.reason, "first check: connection refused");
        assert_eq!(down.health(), Health::Down);
    }

    #[test]
    fn fall_needs_consecutive_failures() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(2, 3);
        h.record(&ok(), t0);
        assert_eq!(h.record(&refused(), t0), None);
        assert_eq!(h.record(&refused(), t0), None);
        // A success resets the streak of failures.
        assert_eq!(h.record(&ok(), t0), None);
        assert_eq!(h.record(&refused(), t0), None);
        assert_eq!(h.record(&refused(), t0), None);
        assert_eq!(h.health(), Health::Up);
        let later = t0 + Duration::from_secs(5);
        let timeout = CheckResult::failure(Duration::from_millis(500), "timed out after 500ms");
        let t = h.record(&timeout, later).unwrap();
        assert_eq!((t.from, t.to), (Health::Up, Health::Down));
        assert_eq!(t.reason, "3 failed checks: timed out after 500ms");
        assert_eq!(h.health(), Health::Down);
        assert_eq!(h.last_change(), Some(later));
        // Staying down: no transition.
        assert_eq!(h.record(&refused(), t0), None);
        assert_eq!(h.last_change(), Some(later));
    }

    #[test]
    fn rise_needs_consecutive_successes() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(2, 3);
        h.record(&refused(), t0);
        assert_eq!(h.record(&ok(), t0), None);
        // A failure resets the streak of successes.
        assert_eq!(h.record(&refused(), t0), None);
        assert_eq!(h.record(&ok(), t0), None);
        assert_eq!(h.health(), Health::Down);
        let t = h.record(&ok(), t0).unwrap();
        assert_eq!((t.from, t.to), (Health::Down, Health::Up));
        assert_eq!(t.reason, "2 successful checks");
        // Staying up: no transition.
        assert_eq!(h.record(&ok(), t0), None);
        assert_eq!(h.health(), Health::Up);
    }

    #[test]
    fn rise_and_fall_of_one() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(0, 1);
        h.record(&ok(), t0);
        let t = h.record(&refused(), t0).unwrap();
        assert_eq!(t.reason, "1 failed check: connection refused");
        let t = h.record(&ok(), t0).unwrap();
        assert_eq!(t.reason, "1 successful check");
    }

    #[test]
    fn http_results_say_what_passed_or_failed() {
        let now = Instant::now();
        let mut h = HealthTracker::new(2, 1);
        let ok = CheckResult::passed(Duration::from_micros(1200), "HTTP 200");
        assert_eq!(ok.describe(), "HTTP 200 in 1.2ms");
        let t = h.record(&ok, now).unwrap();
        assert_eq!(t.reason, "first check: HTTP 200 in 1.2ms");
        let sick = CheckResult::failure(Duration::from_millis(2), "HTTP 503 (expected 2xx)");
        let t = h.record(&sick, now).unwrap();
        assert_eq!(t.reason, "1 failed check: HTTP 503 (expected 2xx)");
    }
}
