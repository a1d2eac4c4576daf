//! TCP health checks of backends, with rise/fall hysteresis.
//!
//! A check ([`check_tcp`]) opens a TCP connection to the backend's address and closes it
//! right away: it passes if the connection is established within the timeout. Its
//! outcome is a [`CheckResult`] with the time the connection took and, on failure, a short
//! human-readable error: `"connection refused"`, `"timed out after 500ms"`,
//! `"no route to host"`, `"network unreachable"`, else the OS error's text.
//!
//! [`HealthTracker`] turns the stream of results of one backend into its [`Health`]:
//!
//! - It starts [`Health::Unknown`]. The **first** result decides directly: a success makes
//!   the backend [`Health::Up`], a failure [`Health::Down`]. Start-up thus does not wait
//!   `rise × interval` before sending traffic, and traffic never goes to a backend that has
//!   not passed a check.
//! - After that, an `Up` backend goes `Down` after `fall` consecutive failed checks, and a
//!   `Down` backend comes back `Up` after `rise` consecutive successful checks. A success
//!   resets the streak of failures and a failure the streak of successes.
//! - [`HealthTracker::record`] returns a [`Transition`] only when the health changes. Its
//!   reason reads e.g. `"first check: connected in 1.2ms"`,
//!   `"first check: connection refused"`, `"3 failed checks: connection refused"` or
//!   `"2 successful checks"`.
//!
//! [`spawn_checker`] runs the checks of one backend in a task: the first immediately, then
//! one every `interval` (counted from the start of the previous check) shortened by a random
//! jitter of up to 10%, so that checks of many backends spread out. Jitter only shortens
//! the interval: a backend that stops accepting connections is reported `Down` within
//! `fall × interval + timeout`. After every check the task sends a [`HealthEvent`] with
//! the result, the transition if any and the resulting health; it stops when the receiver
//! is dropped or its handle is aborted. This module does not log: the agent logs the
//! transitions it receives.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
    /// Why the check failed, e.g. `"connection refused"` or `"timed out after 500ms"`;
    /// `None` if it passed.
    pub error: Option<String>,
}

impl CheckResult {
    /// A passed check that took `latency`.
    pub fn success(latency: Duration) -> Self {
        CheckResult {
            ok: true,
            latency,
            error: None,
        }
    }

    /// A failed check that took `latency`, with its error.
    pub fn failure(latency: Duration, error: impl Into<String>) -> Self {
        CheckResult {
            ok: false,
            latency,
            error: Some(error.into()),
        }
    }

    /// Short description: `"connected in 1.2ms"` or the error.
    fn describe(&self) -> String {
        if self.ok {
            format!("connected in {}", fmt_latency(self.latency))
        } else {
            self.error.clone().unwrap_or_else(|| "check failed".into())
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
    last: Option<CheckResult>,
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
            last: None,
            last_change: None,
        }
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// The most recent result recorded.
    pub fn last(&self) -> Option<&CheckResult> {
        self.last.as_ref()
    }

    /// When the health last changed (`None` while `Unknown`).
    pub fn last_change(&self) -> Option<Instant> {
        self.last_change
    }

    /// Records the result of a check made at `now`; returns the transition if the health
    /// changed.
    pub fn record(&mut self, result: CheckResult, now: Instant) -> Option<Transition> {
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
        self.last = Some(result);
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

/// Connects to addr with a timeout; never panics. The connection is closed right away.
pub async fn check_tcp(addr: SocketAddr, timeout: Duration) -> CheckResult {
    let start = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let latency = start.elapsed();
            drop(stream);
            CheckResult::success(latency)
        }
        Ok(Err(e)) => CheckResult::failure(start.elapsed(), describe_io_error(&e)),
        Err(_) => CheckResult::failure(
            start.elapsed(),
            format!("timed out after {}", fmt_timeout(timeout)),
        ),
    }
}

/// Short, human text of a connect error.
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "four kinds get our words, every other kind its own text"
)]
fn describe_io_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => return "connection refused".into(),
        io::ErrorKind::HostUnreachable => return "no route to host".into(),
        io::ErrorKind::NetworkUnreachable => return "network unreachable".into(),
        io::ErrorKind::TimedOut => return "timed out".into(),
        _ => {}
    }
    // "Connection reset by peer (os error 104)" → "connection reset by peer".
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => &text[..],
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "connect failed".into(),
    }
}

/// `1.2ms`, `350µs`, `1.50s`.
fn fmt_latency(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// A configured duration as written: `500ms`, `2s`, `1500ms`, `250µs`.
fn fmt_timeout(d: Duration) -> String {
    if d.is_zero() {
        "0ms".into()
    } else if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_nanos().is_multiple_of(1_000) {
        format!("{}µs", d.as_micros())
    } else {
        format!("{d:?}")
    }
}

/// What a checker reports to the agent after every check.
#[derive(Clone, Debug)]
pub struct HealthEvent<K> {
    /// Which backend (as given to [`spawn_checker`]).
    pub key: K,
    /// The check's outcome.
    pub result: CheckResult,
    /// The change of health this check caused, if any.
    pub transition: Option<Transition>,
    /// Health after this check.
    pub health: Health,
    /// Wall-clock time the check finished and its result was judged: where a state change's
    /// latency starts (the agent logs it, benchmarks compare it with what the kernel does).
    pub decided: std::time::SystemTime,
}

/// Runs checks of `addr` forever: the first immediately, then every `interval` minus a
/// random jitter of up to 10% (jitter only shortens, so detection stays within
/// fall × interval + timeout), sending one event per check on `events`. Stops when the
/// receiver is dropped or the returned handle is aborted.
///
/// The interval counts from the start of a check; if a check takes longer than the
/// interval, the next one starts right after it. Must be called within a tokio runtime.
pub fn spawn_checker<K: Clone + Send + 'static>(
    key: K,
    addr: SocketAddr,
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
    events: mpsc::Sender<HealthEvent<K>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tracker = HealthTracker::new(rise, fall);
        loop {
            let start = Instant::now();
            let result = tokio::select! {
                result = check_tcp(addr, timeout) => result,
                _ = events.closed() => return,
            };
            let transition = tracker.record(result.clone(), Instant::now());
            let event = HealthEvent {
                key: key.clone(),
                result,
                transition,
                health: tracker.health(),
                decided: std::time::SystemTime::now(),
            };
            if events.send(event).await.is_err() {
                return;
            }
            let next = start + jittered(interval);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = events.closed() => return,
            }
        }
    })
}

/// `interval` minus a random 0–10%.
fn jittered(interval: Duration) -> Duration {
    let fraction: f64 = rand::thread_rng().gen_range(0.0..0.1);
    interval.saturating_sub(interval.mul_f64(fraction))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpSocket};

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
        assert!(up.last().is_none());
        assert!(up.last_change().is_none());
        let t = up.record(ok(), now).unwrap();
        assert_eq!((t.from, t.to), (Health::Unknown, Health::Up));
        assert_eq!(t.reason, "first check: connected in 1.2ms");
        assert_eq!(up.health(), Health::Up);
        assert_eq!(up.last(), Some(&ok()));
        assert_eq!(up.last_change(), Some(now));

        let mut down = HealthTracker::new(3, 3);
        let t = down.record(refused(), now).unwrap();
        assert_eq!((t.from, t.to), (Health::Unknown, Health::Down));
        assert_eq!(t.reason, "first check: connection refused");
        assert_eq!(down.health(), Health::Down);
    }

    #[test]
    fn fall_needs_consecutive_failures() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(2, 3);
        h.record(ok(), t0);
        assert_eq!(h.record(refused(), t0), None);
        assert_eq!(h.record(refused(), t0), None);
        // A success resets the streak of failures.
        assert_eq!(h.record(ok(), t0), None);
        assert_eq!(h.record(refused(), t0), None);
        assert_eq!(h.record(refused(), t0), None);
        assert_eq!(h.health(), Health::Up);
        let later = t0 + Duration::from_secs(5);
        let timeout = CheckResult::failure(Duration::from_millis(500), "timed out after 500ms");
        let t = h.record(timeout.clone(), later).unwrap();
        assert_eq!((t.from, t.to), (Health::Up, Health::Down));
        assert_eq!(t.reason, "3 failed checks: timed out after 500ms");
        assert_eq!(h.health(), Health::Down);
        assert_eq!(h.last(), Some(&timeout));
        assert_eq!(h.last_change(), Some(later));
        // Staying down: no transition.
        assert_eq!(h.record(refused(), t0), None);
        assert_eq!(h.last_change(), Some(later));
    }

    #[test]
    fn rise_needs_consecutive_successes() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(2, 3);
        h.record(refused(), t0);
        assert_eq!(h.record(ok(), t0), None);
        // A failure resets the streak of successes.
        assert_eq!(h.record(refused(), t0), None);
        assert_eq!(h.record(ok(), t0), None);
        assert_eq!(h.health(), Health::Down);
        let t = h.record(ok(), t0).unwrap();
        assert_eq!((t.from, t.to), (Health::Down, Health::Up));
        assert_eq!(t.reason, "2 successful checks");
        // Staying up: no transition.
        assert_eq!(h.record(ok(), t0), None);
        assert_eq!(h.health(), Health::Up);
    }

    #[test]
    fn rise_and_fall_of_one() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(0, 1);
        h.record(ok(), t0);
        let t = h.record(refused(), t0).unwrap();
        assert_eq!(t.reason, "1 failed check: connection refused");
        let t = h.record(ok(), t0).unwrap();
        assert_eq!(t.reason, "1 successful check");
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_latency(Duration::from_micros(350)), "350µs");
        assert_eq!(fmt_latency(Duration::from_micros(1234)), "1.2ms");
        assert_eq!(fmt_latency(Duration::from_millis(1500)), "1.50s");
        assert_eq!(fmt_timeout(Duration::from_millis(500)), "500ms");
        assert_eq!(fmt_timeout(Duration::from_secs(2)), "2s");
        assert_eq!(fmt_timeout(Duration::from_millis(1500)), "1500ms");
        let reset = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(describe_io_error(&reset), "connection reset by peer");
        let unreach = io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(describe_io_error(&unreach), "no route to host");
    }

    #[test]
    fn jitter_only_shortens() {
        let interval = Duration::from_secs(1);
        for _ in 0..1000 {
            let d = jittered(interval);
            assert!(d <= interval && d > interval.mul_f64(0.9), "{d:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    /// Accepts and closes connections until aborted.
    fn serve(listener: TcpListener) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    drop(stream);
                }
            }
        })
    }

    async fn free_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn check_tcp_outcomes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve(listener);
        let r = check_tcp(addr, Duration::from_millis(500)).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.error, None);
        server.abort();
        let _ = server.await;

        let r = check_tcp(free_port().await, Duration::from_millis(500)).await;
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some("connection refused"));

        // A zero timeout expires before the connection can complete.
        let r = check_tcp(addr, Duration::ZERO).await;
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some("timed out after 0ms"));
    }

    const INTERVAL: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_millis(500);
    const RISE: u32 = 2;
    const FALL: u32 = 3;

    #[tokio::test(start_paused = true)]
    async fn checker_follows_backend() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve(listener);
        let (tx, mut rx) = mpsc::channel(16);
        let start = Instant::now();
        let checker = spawn_checker("b1", addr, INTERVAL, TIMEOUT, RISE, FALL, tx);

        // The first check runs immediately and decides.
        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.key, "b1");
        assert!(ev.result.ok, "{:?}", ev.result);
        assert_eq!(ev.health, Health::Up);
        let t = ev.transition.unwrap();
        assert_eq!((t.from, t.to), (Health::Unknown, Health::Up));
        assert!(
            t.reason.starts_with("first check: connected in"),
            "{}",
            t.reason
        );
        assert!(start.elapsed() < Duration::from_millis(10));

        // Checks keep coming, spaced by the interval minus at most 10% jitter.
        let mut prev = Instant::now();
        for _ in 0..3 {
            let ev = rx.recv().await.unwrap();
            assert!(ev.result.ok && ev.transition.is_none() && ev.health == Health::Up);
            let gap = prev.elapsed();
            assert!(gap <= INTERVAL && gap >= INTERVAL.mul_f64(0.9), "{gap:?}");
            prev = Instant::now();
        }

        // The backend goes away: Down after exactly `fall` failed checks.
        server.abort();
        let _ = server.await;
        let dropped = Instant::now();
        let mut failed = 0;
        let down = loop {
            let ev = rx.recv().await.unwrap();
            assert!(!ev.result.ok);
            assert_eq!(ev.result.error.as_deref(), Some("connection refused"));
            failed += 1;
            if let Some(t) = ev.transition {
                assert_eq!(ev.health, Health::Down);
                break t;
            }
            assert_eq!(ev.health, Health::Up);
        };
        assert_eq!(failed, FALL);
        assert_eq!((down.from, down.to), (Health::Up, Health::Down));
        assert_eq!(down.reason, "3 failed checks: connection refused");
        let detection = dropped.elapsed();
        assert!(detection <= INTERVAL * FALL + TIMEOUT, "{detection:?}");

        // Back again on the same port: Up after exactly `rise` successful checks.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let server = serve(socket.listen(128).unwrap());
        let back = Instant::now();
        let mut passed = 0;
        let up = loop {
            let ev = rx.recv().await.unwrap();
            assert!(ev.result.ok, "{:?}", ev.result);
            passed += 1;
            if let Some(t) = ev.transition {
                assert_eq!(ev.health, Health::Up);
                break t;
            }
            assert_eq!(ev.health, Health::Down);
        };
        assert_eq!(passed, RISE);
        assert_eq!((up.from, up.to), (Health::Down, Health::Up));
        assert_eq!(up.reason, "2 successful checks");
        let recovery = back.elapsed();
        assert!(recovery <= INTERVAL * RISE + TIMEOUT, "{recovery:?}");

        checker.abort();
        server.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn checker_refused_from_start_and_stops_with_receiver() {
        let addr = free_port().await;
        let (tx, mut rx) = mpsc::channel(16);
        let checker = spawn_checker(7u32, addr, INTERVAL, TIMEOUT, RISE, FALL, tx);

        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.key, 7);
        assert!(!ev.result.ok);
        assert_eq!(ev.health, Health::Down);
        let t = ev.transition.unwrap();
        assert_eq!((t.from, t.to), (Health::Unknown, Health::Down));
        assert_eq!(t.reason, "first check: connection refused");

        let ev = rx.recv().await.unwrap();
        assert_eq!((ev.health, ev.transition), (Health::Down, None));

        // Dropping the receiver stops the checker.
        drop(rx);
        tokio::time::timeout(INTERVAL * 2, checker)
            .await
            .expect("checker still running")
            .unwrap();
    }
}
