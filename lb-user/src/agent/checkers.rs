//! The agent's health checkers: backends checked the same way (address, port, kind, timeout,
//! interval) share one probe (`crate::health::Probe`), each judging its results with its own
//! rise and fall; their events all arrive on one queue, tagged so that events of a checker
//! that was replaced are ignored.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use lb_common::{
    check_path::CheckCounter,
    maps::{ForwardMode, VipKey},
};
use tokio::sync::mpsc;

use crate::{
    check_paths::{CheckPaths, VipRoute},
    config::{BackendConfig, CheckTarget},
    health::{HalfOpen, HealthEvent, Probe, ProbeSpec},
};

/// How many check results may wait for the agent: a second's worth at the documented maximum
/// (16,384 backends checked every second). The agent takes all that wait as one burst and
/// rebuilds each VIP once for it, so the longer a burst takes to apply, the more the next one
/// holds: a small queue split a start-up into many bursts, each rebuilding the same VIPs.
pub(super) const QUEUE: usize = 16384;

/// Identity of a checker run: the VIP and backend it checks (so its events go straight to
/// them, not through a search of every VIP) and a token that changes whenever the checker is
/// restarted, so events of a stopped checker are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckerKey {
    /// The VIP.
    pub vip: VipKey,
    /// Backend id.
    pub backend: u32,
    /// Which run of its checker.
    pub token: u64,
}

/// A backend's subscription to its probe; it leaves the probe when dropped, and the probe
/// stops with its last subscriber.
pub struct Checker {
    /// Its events carry this token.
    pub token: u64,
    key: CheckerKey,
    probe: Arc<Probe<CheckerKey>>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("token", &self.token)
            .field("sharing", &self.probe.subscribers())
            .finish()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.probe.unsubscribe(&self.key);
    }
}

/// Starts checkers that all report to one queue.
#[derive(Debug)]
pub struct Checkers {
    events: mpsc::Sender<HealthEvent<CheckerKey>>,
    next_token: u64,
    /// The running probes, by what they check (and stopped ones, until the next prune).
    probes: HashMap<ProbeSpec, Weak<Probe<CheckerKey>>>,
    /// The size of `probes` at which stopped probes are pruned from it next.
    prune_at: usize,
    /// Where they run.
    thread: ProbeThread,
    /// When the next new probe may check first.
    next_first_check: tokio::time::Instant,
    /// The paths of checks to the VIP (`None`: the check interface could not be set up; such
    /// checks fail saying so).
    paths: Option<Arc<CheckPaths>>,
    /// TCP checks of backends' own addresses as SYNs from raw sockets (`None`: without
    /// `CAP_NET_RAW` they connect).
    half_open: Option<HalfOpen>,
}

/// The pace of first checks of probes started together: 20,000 a second. At start-up every
/// probe is new; 16,000 of them connecting in the same instant lost SYNs in the 256-frame
/// rings of the lab's veths (and would in a busy NIC's transmit queue), and each lost SYN
/// costs a check its timeout. Paced, they take 0.8 s; a few dozen, a millisecond.
const FIRST_CHECK_PACE: std::time::Duration = std::time::Duration::from_micros(50);

/// Below this many probes (running or stopped), stopped ones are not pruned.
const MIN_PRUNE: usize = 64;

/// Batches of results that may wait for the agent.
const BATCHES: usize = 64;

/// Hands the probes' results to the agent in batches, on the probes' thread: a routine result
/// waits [`ROUTINE_RESULTS_GATHERED`] for others, a health change goes at once. Waking the
/// event loop for each of 16,384 results a second cost more than handling them; batches keep
/// the probes' order, so a backend's results are never taken out of turn.
async fn gather(
    mut results: mpsc::Receiver<HealthEvent<CheckerKey>>,
    batches: mpsc::Sender<Results>,
) {
    while let Some(first) = results.recv().await {
        let mut urgent = first.transition.is_some();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + ROUTINE_RESULTS_GATHERED;
        while !urgent && batch.len() < QUEUE {
            match tokio::time::timeout_at(deadline, results.recv()).await {
                Ok(Some(event)) => {
                    urgent = event.transition.is_some();
                    batch.push(event);
                }
                Ok(None) | Err(_) => break,
            }
        }
        while batch.len() < QUEUE {
            match results.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        if batches.send(batch).await.is_err() {
            return;
        }
    }
}

/// A thread of their own for the probes, with its own runtime: checks keep their times while
/// the event loop builds rings or waits for a ring swap's grace period. On the event loop's
/// thread, every probe due during such a pause checked at once when it ended, and bursts of
/// thousands of connections lost SYNs in small rings (a veth's, a busy NIC's).
#[derive(Debug)]
struct ProbeThread {
    runtime: tokio::runtime::Handle,
    /// Dropped to stop the runtime (and its probes).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProbeThread {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building the probes' runtime");
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("lb-probes".to_owned())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })
            .expect("spawning the probes' thread");
        Self {
            runtime: handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ProbeThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Check results the agent takes at once: in the order the probes judged them.
pub type Results = Vec<HealthEvent<CheckerKey>>;

/// How long a routine result (no health change) waits for others before they go to the agent
/// together; a change goes at once, with what waits before it.
const ROUTINE_RESULTS_GATHERED: std::time::Duration = std::time::Duration::from_millis(10);

impl Checkers {
    /// The spawner and the queue its checkers' results reach the agent on, in batches.
    pub fn new(paths: Option<Arc<CheckPaths>>) -> (Self, mpsc::Receiver<Results>) {
        let (events, results) = mpsc::channel(QUEUE);
        let (batches, receiver) = mpsc::channel(BATCHES);
        let thread = ProbeThread::start();
        thread.runtime.spawn(gather(results, batches));
        let half_open = HalfOpen::open(&thread.runtime)
            .inspect_err(|error| {
                tracing::warn!(
                    %error,
                    "TCP checks connect, a socket each: raw sockets for half-open checks are unavailable"
                )
            })
            .ok();
        (
            Self {
                events,
                next_token: 0,
                probes: HashMap::new(),
                prune_at: MIN_PRUNE,
                thread,
                next_first_check: tokio::time::Instant::now(),
                paths,
                half_open,
            },
            receiver,
        )
    }

    /// Starts checking backend `id` of VIP `vip` (which forwards as `forward`) as `config`
    /// says: on the probe of that check if one runs, else on a new one. Either way a check runs
    /// at once.
    pub fn start(
        &mut self,
        (vip, forward): (&VipKey, ForwardMode),
        id: u32,
        config: &BackendConfig,
    ) -> Checker {
        self.next_token += 1;
        let key = CheckerKey {
            vip: *vip,
            backend: id,
            token: self.next_token,
        };
        let spec = match config.health.target {
            CheckTarget::Backend => ProbeSpec::of(config.address, &config.health),
            CheckTarget::Vip => {
                let route = VipRoute {
                    slot: id,
                    backend: config.address,
                    forward,
                };
                ProbeSpec::via_vip(vip.address(), route, &config.health)
            }
        };
        let probe = match self.probes.get(&spec).and_then(Weak::upgrade) {
            Some(probe) => probe,
            None => {
                self.prune();
                let first = self.next_first_check.max(tokio::time::Instant::now());
                self.next_first_check = first + FIRST_CHECK_PACE;
                let probe = Arc::new(Probe::start_on(
                    &self.thread.runtime,
                    (spec.clone(), self.paths.clone(), self.half_open.clone()),
                    self.events.clone(),
                    first,
                ));
                self.probes.insert(spec, Arc::downgrade(&probe));
                probe
            }
        };
        probe.subscribe(key, config.health.rise, config.health.fall);
        Checker {
            token: key.token,
            key,
            probe,
        }
    }

    /// Forgets stopped probes once `probes` has doubled since the last prune: each start
    /// costs O(1) amortised. (Pruning at every start made starting n probes O(n²): 0.8 s of
    /// CPU for 16,000.)
    fn prune(&mut self) {
        if self.probes.len() >= self.prune_at {
            self.probes.retain(|_, probe| probe.strong_count() > 0);
            self.prune_at = (2 * self.probes.len()).max(MIN_PRUNE);
        }
    }

    /// Whether TCP checks of backends' own addresses are half-open (else they connect).
    pub fn half_open_checks(&self) -> bool {
        self.half_open.is_some()
    }

    /// When the last first check paced so far is due.
    pub fn last_first_check(&self) -> tokio::time::Instant {
        self.next_first_check
    }

    /// Gives checks through the VIP their paths (once set up, on a reload that first needs
    /// them).
    pub fn set_paths(&mut self, paths: Arc<CheckPaths>) {
        self.paths = Some(paths);
    }

    /// What `steer_check` did with the checks' packets (nothing without a check interface).
    pub fn check_packets(&self) -> Vec<(CheckCounter, u64)> {
        self.paths
            .as_ref()
            .map(|paths| paths.counts())
            .unwrap_or_default()
    }

    /// Probes running.
    pub fn probes(&self) -> usize {
        self.probes
            .values()
            .filter(|probe| probe.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::maps::Protocol;

    fn backend(address: &str, interval_ms: u64) -> BackendConfig {
        let text = format!(
            "interface = \"eth0\"\n[health]\ninterval = \"{interval_ms}ms\"\ntimeout = \"50ms\"\nport = 9\ntarget = \"backend\"\n\
             [[vip]]\nname = \"v\"\naddress = \"10.0.0.1\"\nport = 80\n[[vip.backend]]\naddress = \"{address}\"\n"
        );
        let config = crate::config::parse(std::path::Path::new("t.toml"), &text).expect("config");
        config.live.vips[0].backends[0].clone()
    }

    #[tokio::test]
    async fn backends_checked_alike_share_one_probe_until_the_last_leaves() {
        let (mut checkers, _events) = Checkers::new(None);
        let vips: Vec<VipKey> = (1..=3)
            .map(|i| VipKey::new(format!("10.0.0.{i}").parse().unwrap(), 80, Protocol::Tcp))
            .collect();
        let same = backend("127.0.0.1", 1000);
        let a = checkers.start((&vips[0], ForwardMode::Dsr), 1, &same);
        let b = checkers.start((&vips[1], ForwardMode::Dsr), 2, &same);
        assert_eq!(checkers.probes(), 1, "one probe for two VIPs' backend");
        let other_interval =
            checkers.start((&vips[2], ForwardMode::Dsr), 3, &backend("127.0.0.1", 500));
        let other_address =
            checkers.start((&vips[2], ForwardMode::Dsr), 4, &backend("127.0.0.2", 1000));
        assert_eq!(checkers.probes(), 3);
        assert_ne!(a.token, b.token);
        drop(a);
        assert_eq!(checkers.probes(), 3, "b still follows it");
        drop(b);
        assert_eq!(checkers.probes(), 2, "gone with its last subscriber");
        drop((other_interval, other_address));
        assert_eq!(checkers.probes(), 0);
    }

    #[tokio::test]
    async fn stopped_probes_are_forgotten_without_a_scan_per_start() {
        let (mut checkers, _events) = Checkers::new(None);
        let vip = VipKey::new("10.0.0.1".parse().unwrap(), 80, Protocol::Tcp);
        let kept = checkers.start((&vip, ForwardMode::Dsr), 0, &backend("127.0.0.1", 1000));
        for port in 0..1000u16 {
            let address = format!("127.0.{}.{}", 1 + port / 250, 1 + port % 250);
            drop(checkers.start((&vip, ForwardMode::Dsr), 1, &backend(&address, 1000)));
            assert!(
                checkers.probes.len() <= MIN_PRUNE,
                "{} remembered after {port} stopped",
                checkers.probes.len()
            );
        }
        assert_eq!(checkers.probes(), 1);
        let again = checkers.start((&vip, ForwardMode::Dsr), 2, &backend("127.0.0.1", 1000));
        assert!(
            Arc::ptr_eq(&kept.probe, &again.probe),
            "the running probe is kept"
        );
    }

    fn result(backend: u32, change: bool) -> HealthEvent<CheckerKey> {
        use crate::health::{CheckResult, Health, Transition};
        HealthEvent {
            key: CheckerKey {
                vip: VipKey::new("10.0.0.1".parse().unwrap(), 80, Protocol::Tcp),
                backend,
                token: 1,
            },
            result: CheckResult::success(std::time::Duration::from_millis(1)),
            transition: change.then(|| Transition {
                from: Health::Down,
                to: Health::Up,
                reason: "test".to_owned(),
            }),
            health: Health::Up,
            decided: std::time::SystemTime::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn routine_results_wait_for_others_and_a_change_takes_them_along_at_once() {
        let (probes, results) = mpsc::channel(QUEUE);
        let (batches, mut agent) = mpsc::channel(BATCHES);
        tokio::spawn(gather(results, batches));
        let start = tokio::time::Instant::now();
        probes.send(result(1, false)).await.unwrap();
        let batch = agent.recv().await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(
            start.elapsed(),
            ROUTINE_RESULTS_GATHERED,
            "a routine result waited"
        );

        let start = tokio::time::Instant::now();
        probes.send(result(2, false)).await.unwrap();
        probes.send(result(3, false)).await.unwrap();
        probes.send(result(4, true)).await.unwrap();
        let batch = agent.recv().await.unwrap();
        let order: Vec<u32> = batch.iter().map(|event| event.key.backend).collect();
        assert_eq!(order, [2, 3, 4], "in the probes' order");
        assert!(
            start.elapsed() < ROUTINE_RESULTS_GATHERED,
            "a change goes at once"
        );
    }

    #[tokio::test]
    async fn new_probes_first_checks_are_paced_and_shared_ones_add_none() {
        let (mut checkers, _events) = Checkers::new(None);
        let vip = VipKey::new("10.0.0.1".parse().unwrap(), 80, Protocol::Tcp);
        let before = checkers.last_first_check();
        let held: Vec<Checker> = (1..=10)
            .map(|i| {
                checkers.start(
                    (&vip, ForwardMode::Dsr),
                    i,
                    &backend(&format!("127.0.0.{i}"), 60_000),
                )
            })
            .collect();
        let paced = checkers.last_first_check();
        assert!(
            paced >= before + FIRST_CHECK_PACE * 10,
            "ten new probes take ten paces"
        );
        let shared = checkers.start((&vip, ForwardMode::Dsr), 11, &backend("127.0.0.1", 60_000));
        assert_eq!(
            checkers.last_first_check(),
            paced,
            "a backend joining a probe adds no check"
        );
        drop((held, shared));
    }
}
