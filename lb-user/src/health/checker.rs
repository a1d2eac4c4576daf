//! One check of the configured kind, and what a backend's judgement of it tells the agent
//! ([`HealthEvent`]); `super::probe` runs the checks.

use std::time::Duration;

use rand::Rng;

use super::{check_http, check_tcp, CheckResult, Dial, Health, Transition};
use crate::config::CheckKind;

/// What a checker reports to the agent after every check.
#[derive(Clone, Debug)]
pub struct HealthEvent<K> {
    /// Which backend (as given to [`super::Probe::subscribe`]).
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

/// One check as `kind` says, connecting as `dial` says, within `timeout`.
pub async fn check(dial: impl Into<Dial>, kind: &CheckKind, timeout: Duration) -> CheckResult {
    match kind {
        CheckKind::Tcp | CheckKind::TcpConnect => check_tcp(dial, timeout).await,
        CheckKind::Http(http) => check_http(dial, http, timeout).await,
    }
}

/// A random point of `interval`.
pub(super) fn spread(interval: Duration) -> Duration {
    interval.mul_f64(rand::thread_rng().gen_range(0.0..1.0))
}

/// `interval` shortened by up to 10%, at random.
pub(super) fn jittered(interval: Duration) -> Duration {
    let fraction: f64 = rand::thread_rng().gen_range(0.0..0.1);
    interval.saturating_sub(interval.mul_f64(fraction))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CheckTarget, HealthSettings};
    use crate::health::{Probe, ProbeSpec};
    use crate::{
        config::HttpCheck,
        health::test_servers::{free_port, serve_and_close, status, HttpServer},
    };
    use std::net::SocketAddr;
    use tokio::net::{TcpListener, TcpSocket};
    use tokio::{sync::mpsc, time::Instant};

    #[test]
    fn jitter_only_shortens() {
        let interval = Duration::from_secs(1);
        for _ in 0..1000 {
            let d = jittered(interval);
            assert!(d <= interval && d > interval.mul_f64(0.9), "{d:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    fn settings(port: u16, check: CheckKind) -> HealthSettings {
        HealthSettings {
            interval: INTERVAL,
            timeout: TIMEOUT,
            rise: RISE,
            fall: FALL,
            port,
            check,
            slow_start: Duration::ZERO,
            target: CheckTarget::Backend,
        }
    }

    /// A probe of `settings` on `address` with one subscriber, `key` (what one backend's
    /// checker is).
    fn spawn_checker<K: Clone + PartialEq + Send + 'static>(
        key: K,
        address: std::net::IpAddr,
        settings: &HealthSettings,
        events: mpsc::Sender<HealthEvent<K>>,
    ) -> Probe<K> {
        let probe = Probe::start(ProbeSpec::of(address, settings), events);
        probe.subscribe(key, settings.rise, settings.fall);
        probe
    }

    /// A probe of a TCP check of `addr`, with one subscriber.
    fn spawn_tcp<K: Clone + PartialEq + Send + 'static>(
        key: K,
        addr: SocketAddr,
        events: mpsc::Sender<HealthEvent<K>>,
    ) -> Probe<K> {
        spawn_checker(
            key,
            addr.ip(),
            &settings(addr.port(), CheckKind::Tcp),
            events,
        )
    }

    const INTERVAL: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_millis(500);
    const RISE: u32 = 2;
    const FALL: u32 = 3;

    #[tokio::test(start_paused = true)]
    async fn checker_follows_backend() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve_and_close(listener);
        let (tx, mut rx) = mpsc::channel(16);
        let start = Instant::now();
        let checker = spawn_tcp("b1", addr, tx);

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

        // The second check comes at a random point of the interval (probes started together
        // spread over it); then checks keep coming, spaced by the interval minus at most 10%
        // jitter.
        let mut prev = Instant::now();
        for check in 0..4 {
            let ev = rx.recv().await.unwrap();
            assert!(ev.result.ok && ev.transition.is_none() && ev.health == Health::Up);
            let gap = prev.elapsed();
            let shortest = if check == 0 {
                Duration::ZERO
            } else {
                INTERVAL.mul_f64(0.9)
            };
            assert!(gap <= INTERVAL && gap >= shortest, "{gap:?}");
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
        let server = serve_and_close(socket.listen(128).unwrap());
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

        drop(checker);
        server.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn checker_refused_from_start_and_stops_with_receiver() {
        let addr = free_port().await;
        let (tx, mut rx) = mpsc::channel(16);
        let checker = spawn_tcp(7u32, addr, tx);

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
        tokio::time::sleep(INTERVAL * 2).await;
        assert!(!checker.is_running(), "checker still running");
    }

    /// The HTTP kind through the whole task, on real time: a sick service (503) is down from
    /// the first check with its status as the reason, comes back after `rise` checks once
    /// it answers 200, and goes down after `fall` checks when it answers 503 again.
    #[tokio::test]
    async fn checker_runs_http_checks() {
        let server = HttpServer::start("127.0.0.1:0", status(503)).await;
        let http = CheckKind::Http(HttpCheck {
            path: "/healthz".into(),
            host: None,
            expect: Vec::new(),
        });
        // A local answer takes well under a millisecond: 100 ms leaves room for a busy machine.
        let settings = HealthSettings {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
            ..settings(server.addr.port(), http)
        };
        let (tx, mut rx) = mpsc::channel(16);
        let checker = spawn_checker("web", server.addr.ip(), &settings, tx);

        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.result.error.as_deref(), Some("HTTP 503 (expected 2xx)"));
        let t = ev.transition.unwrap();
        assert_eq!((t.from, t.to), (Health::Unknown, Health::Down));
        assert_eq!(t.reason, "first check: HTTP 503 (expected 2xx)");

        // Each loop ends at the transition; a check that started before the switch may still
        // report the old answer.
        server.set(status(200));
        let up = loop {
            let ev = rx.recv().await.unwrap();
            if let Some(t) = ev.transition {
                assert_eq!(ev.result.passed.as_deref(), Some("HTTP 200"));
                break t;
            }
        };
        assert_eq!((up.from, up.to), (Health::Down, Health::Up));
        assert_eq!(up.reason, format!("{RISE} successful checks"));

        server.set(status(503));
        let down = loop {
            let ev = rx.recv().await.unwrap();
            if let Some(t) = ev.transition {
                break t;
            }
        };
        assert_eq!((down.from, down.to), (Health::Up, Health::Down));
        assert_eq!(down.reason, "3 failed checks: HTTP 503 (expected 2xx)");
        drop(checker);
    }
}
