//! One probe for every backend checked the same way: when many VIPs share their backends (one
//! pool behind many services), a check of address, port, kind, timeout and interval runs once
//! per interval, and each backend that uses it (its *subscriber*) judges the result with its
//! own [`HealthTracker`] (its `rise` and `fall`), so per-VIP state stays per VIP. At 1000 VIPs
//! × 16 backends that is 16 checks a second instead of 16,384.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    sync::{mpsc, Notify},
    task::JoinHandle,
    time::Instant,
};

use super::{
    check,
    checker::{jittered, spread},
    CheckResult, Dial, HalfOpen, HealthEvent, HealthTracker,
};
use crate::{
    check_paths::{CheckPaths, VipRoute},
    config::{CheckKind, HealthSettings},
};

/// What makes two checks the same check: everything but `rise`, `fall` and `slow_start`,
/// which each backend applies to the shared results itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    /// Address and health port.
    pub addr: SocketAddr,
    /// TCP or HTTP (path, host, expect).
    pub kind: CheckKind,
    /// Time a check may take.
    pub timeout: Duration,
    /// Time between checks.
    pub interval: Duration,
    /// For a check along the serving path (`addr` is then the VIP's): which backend.
    pub route: Option<VipRoute>,
}

impl ProbeSpec {
    /// The check of backend `address` at its own address, as `settings` say.
    pub fn of(address: IpAddr, settings: &HealthSettings) -> Self {
        Self {
            addr: SocketAddr::new(address, settings.port),
            kind: settings.check.clone(),
            timeout: settings.timeout,
            interval: settings.interval,
            route: None,
        }
    }

    /// The check of `route`'s backend through VIP address `vip`, as `settings` say.
    pub fn via_vip(vip: IpAddr, route: VipRoute, settings: &HealthSettings) -> Self {
        Self {
            addr: SocketAddr::new(vip, settings.port),
            route: Some(route),
            ..Self::of(route.backend, settings)
        }
    }
}

/// A backend following a probe's results.
struct Subscriber<K> {
    key: K,
    tracker: HealthTracker,
}

/// The subscribers of a probe, shared with its task.
struct Shared<K> {
    subscribers: Mutex<Vec<Subscriber<K>>>,
    /// Wakes the task for a check at once (a subscriber joined and awaits its first result).
    now: Notify,
}

impl<K> Shared<K> {
    fn subscribers(&self) -> MutexGuard<'_, Vec<Subscriber<K>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running probe; its task stops when it is dropped.
pub struct Probe<K> {
    shared: Arc<Shared<K>>,
    task: JoinHandle<()>,
}

impl<K> Drop for Probe<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K: Clone + PartialEq + Send + 'static> Probe<K> {
    /// Starts probing `spec`: the first check at once, then every interval minus a random
    /// jitter of up to 10% (jitter only shortens, so detection stays within fall × interval +
    /// timeout; the interval counts from the start of a check), and at once whenever a
    /// subscriber joins a sleeping probe. After every check each subscriber's tracker judges the result and one
    /// [`HealthEvent`] per subscriber goes to `events`. Must be called within a tokio runtime.
    pub fn start(spec: ProbeSpec, events: mpsc::Sender<HealthEvent<K>>) -> Self {
        Self::start_on(
            &tokio::runtime::Handle::current(),
            (spec, None, None),
            events,
            Instant::now(),
        )
    }

    /// [`Self::start`] on the runtime of `runtime` (the agent runs its probes on a thread of
    /// their own), its first check at `first` (the agent paces the first checks of probes
    /// started together). A check along the serving path takes its path from `paths`; a TCP
    /// check of a backend's own address is half-open when `half_open` is given.
    pub fn start_on(
        runtime: &tokio::runtime::Handle,
        (spec, paths, half_open): (ProbeSpec, Option<Arc<CheckPaths>>, Option<HalfOpen>),
        events: mpsc::Sender<HealthEvent<K>>,
        first: Instant,
    ) -> Self {
        let shared = Arc::new(Shared {
            subscribers: Mutex::new(Vec::new()),
            now: Notify::new(),
        });
        let checker = Checker {
            spec,
            paths,
            half_open,
        };
        let task = runtime.spawn(run(checker, shared.clone(), events, first));
        Self { shared, task }
    }

    /// Adds a backend, judged with `rise` and `fall`: by the check under way if there is
    /// one, else by one at once (a sleeping probe is woken; no permit is stored, so a probe
    /// whose first check is yet to run does not check twice).
    pub fn subscribe(&self, key: K, rise: u32, fall: u32) {
        self.shared.subscribers().push(Subscriber {
            key,
            tracker: HealthTracker::new(rise, fall),
        });
        self.shared.now.notify_waiters();
    }

    /// Whether its task still runs (it ends when the receiver of its events is dropped).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Removes the backend `key`; whether none is left.
    pub fn unsubscribe(&self, key: &K) -> bool {
        let mut subscribers = self.shared.subscribers();
        subscribers.retain(|s| s.key != *key);
        subscribers.is_empty()
    }

    /// How many backends follow it.
    pub fn subscribers(&self) -> usize {
        self.shared.subscribers().len()
    }
}

/// What a probe's task checks, and how.
struct Checker {
    spec: ProbeSpec,
    paths: Option<Arc<CheckPaths>>,
    /// Sends TCP checks of the backend's own address as SYNs (`None`: they connect).
    half_open: Option<HalfOpen>,
}

impl Checker {
    /// One check. Along the serving path, the path is prepared first (resolved again after a
    /// failure), and a failure is told apart: after a failure the backend's own address is
    /// checked at the same time (on a first check, after it), and the error says whether it
    /// answers.
    async fn check(&self, first: bool, last_failed: bool) -> CheckResult {
        let ProbeSpec {
            addr,
            kind,
            timeout,
            route,
            ..
        } = &self.spec;
        let Some(route) = route else {
            return match (kind, &self.half_open) {
                (CheckKind::Tcp, Some(half_open)) => half_open.check(*addr, *timeout).await,
                _ => check(Dial::direct(*addr), kind, *timeout).await,
            };
        };
        let Some(paths) = &self.paths else {
            return CheckResult::failure(Duration::ZERO, "no check interface".to_owned());
        };
        let steering = match paths.prepare(route, addr.ip(), last_failed).await {
            Ok(steering) => steering,
            Err(error) => return CheckResult::failure(Duration::ZERO, error),
        };
        let dial = Dial {
            addr: *addr,
            mark: Some(steering.mark),
            source: steering.source,
        };
        let own = Dial::direct(SocketAddr::new(route.backend, addr.port()));
        let (mut result, mut own_answers) = if last_failed {
            let (result, own) =
                tokio::join!(check(dial, kind, *timeout), check(own, kind, *timeout));
            (result, Some(own.ok))
        } else {
            (check(dial, kind, *timeout).await, None)
        };
        if !result.ok && first && own_answers.is_none() {
            own_answers = Some(check(own, kind, *timeout).await.ok);
        }
        result.own_address_answers = own_answers.filter(|_| !result.ok);
        if let Some(error) = &mut result.error {
            error.push_str(" via the vip");
            match own_answers {
                Some(true) => error.push_str("; the backend's own address answers"),
                Some(false) => error.push_str("; the backend's own address fails too"),
                None => {}
            }
        }
        result
    }
}

async fn run<K: Clone + Send + 'static>(
    checker: Checker,
    shared: Arc<Shared<K>>,
    events: mpsc::Sender<HealthEvent<K>>,
    first_check: Instant,
) {
    let interval = checker.spec.interval;
    // The branches in order (`biased`): picking one at random cost a random number per
    // select, 2% of the agent's time at 16,384 checks a second.
    tokio::select! {
        biased;
        _ = tokio::time::sleep_until(first_check) => {}
        _ = events.closed() => return,
    }
    let mut first = true;
    let mut last_failed = false;
    loop {
        let start = Instant::now();
        let result = tokio::select! {
            biased;
            result = checker.check(first, last_failed) => result,
            _ = events.closed() => return,
        };
        last_failed = !result.ok;
        let judged = Instant::now();
        let decided = std::time::SystemTime::now();
        let judgements: Vec<HealthEvent<K>> = shared
            .subscribers()
            .iter_mut()
            .map(|subscriber| {
                let transition = subscriber.tracker.record(&result, judged);
                HealthEvent {
                    key: subscriber.key.clone(),
                    result: result.clone(),
                    transition,
                    health: subscriber.tracker.health(),
                    decided,
                }
            })
            .collect();
        for event in judgements {
            if events.send(event).await.is_err() {
                return;
            }
        }
        // After the first check (at once, so that a new backend is judged fast), the second
        // comes at a random point of the interval: probes started together (every probe, when
        // the agent starts) then spread over it instead of checking in one burst a second,
        // which at 16,384 backends overflowed queues and made checks time out.
        let next = if std::mem::take(&mut first) {
            start + spread(interval)
        } else {
            start + jittered(interval)
        };
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(next) => {}
            _ = shared.now.notified() => {}
            _ = events.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::test_servers::serve_and_close;
    use tokio::net::TcpListener;

    fn spec(addr: SocketAddr) -> ProbeSpec {
        ProbeSpec {
            addr,
            kind: CheckKind::Tcp,
            timeout: Duration::from_millis(500),
            interval: Duration::from_secs(1),
            route: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_subscriber_judges_each_result_with_its_own_fall() {
        use crate::health::Health;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve_and_close(listener);
        let (tx, mut rx) = mpsc::channel(16);
        let probe = Probe::start(spec(addr), tx);
        probe.subscribe("fast", 1, 1);
        probe.subscribe("slow", 1, 3);
        assert_eq!(probe.subscribers(), 2);
        // One check, judged by both: the first check decides.
        let (a, b) = (rx.recv().await.unwrap(), rx.recv().await.unwrap());
        assert_eq!((a.key, b.key), ("fast", "slow"));
        assert!(a.result.ok && b.result.ok);
        assert_eq!((a.health, b.health), (Health::Up, Health::Up));
        // The listener goes: one failure takes fall 1 down, not fall 3.
        server.abort();
        let _ = server.await;
        loop {
            let (a, b) = (rx.recv().await.unwrap(), rx.recv().await.unwrap());
            assert_eq!((a.key, b.key), ("fast", "slow"));
            if !a.result.ok {
                assert_eq!((a.health, b.health), (Health::Down, Health::Up));
                break;
            }
        }
        assert!(!probe.unsubscribe(&"fast"));
        assert!(probe.unsubscribe(&"slow"), "none left");
    }

    /// With raw sockets, a `tcp` check of a backend's own address is half-open (the listener's
    /// application never sees a connection) and a `tcp-connect` check connects.
    #[tokio::test]
    async fn a_tcp_check_is_half_open_and_a_tcp_connect_check_connects() {
        let runtime = tokio::runtime::Handle::current();
        let half_open = HalfOpen::open(&runtime).expect("raw sockets (run as root)");
        for (kind, connects) in [(CheckKind::Tcp, false), (CheckKind::TcpConnect, true)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, mut rx) = mpsc::channel(16);
            let spec = ProbeSpec {
                kind: kind.clone(),
                ..spec(addr)
            };
            let probe = Probe::start_on(
                &runtime,
                (spec, None, Some(half_open.clone())),
                tx,
                Instant::now(),
            );
            probe.subscribe("b1", 1, 1);
            let event = rx.recv().await.unwrap();
            assert!(event.result.ok, "{kind:?}: {:?}", event.result);
            let accepted =
                tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
            assert_eq!(accepted.is_ok(), connects, "{kind:?}: {accepted:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_subscriber_gets_a_check_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = serve_and_close(listener);
        let (tx, mut rx) = mpsc::channel(16);
        let probe = Probe::start(spec(addr), tx);
        probe.subscribe("first", 1, 1);
        rx.recv().await.unwrap();
        let joined = Instant::now();
        probe.subscribe("second", 1, 1);
        let mut seen_second = false;
        while !seen_second {
            seen_second = rx.recv().await.unwrap().key == "second";
        }
        assert!(
            joined.elapsed() < Duration::from_millis(100),
            "not a whole interval later: {:?}",
            joined.elapsed()
        );
    }
}
