//! Redundancy of the load balancer itself (issue #15): two lb instances behind a router, in
//! the namespace lab of `lb_tests::netns::redundancy`, with real bird2, FRR and keepalived.
//!
//! 1. both instances announce, the router spreads connections over both;
//! 2. an instance's host dies under load: the router drops it within 1 s (BFD), no long-lived
//!    connection breaks (the survivor sends each to the same backend), new connections fail
//!    only while the router has not noticed;
//! 3. a graceful stop withdraws before it detaches: nothing fails;
//! 4. a VIP whose backends are all down is withdrawn by both instances, and announced again;
//! 5. `kill -9` of an agent with `--keep-datapath`: the route stays, nothing fails, the next
//!    agent reconciles its table;
//! 6. keepalived active–passive: the floating address moves when the active host dies.
//!
//! Also printed (not gated): the share of long-lived connections broken when an instance
//! leaves after a backend was added since they started.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use lb_tests::netns::{
    agent::Signal,
    connections::{self, failed, hold, Attempt, Opener, Pinged, Pingers},
    redundancy::*,
    wait_every,
};

/// The tests run one at a time: each times failovers on a 2-core machine.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LAB: Mutex<()> = Mutex::new(());
    LAB.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Long-lived connections per failover test.
const LONG_LIVED: usize = 40;
/// A new connection every 10 ms.
const EVERY: Duration = Duration::from_millis(10);
/// A new connection fails without a greeting within this: under the SYN retransmission time
/// (1 s), so a lost SYN is a failure, not a late success.
const DEADLINE: Duration = Duration::from_millis(900);
/// Long-lived connections ping this often.
const PING: Duration = Duration::from_millis(50);

#[test]
fn both_instances_announce_and_share_the_connections() {
    let _serial = one_at_a_time();
    let mut lab = RedundancyLab::new("red-share", Options::new(Routing::BIRD));
    lab.start();
    for (_, address, _) in VIPS {
        let route = lab.router_route(address);
        println!("router: {}", route.trim());
        assert_eq!(lab.next_hops(address).len(), 2, "2-way multipath: {route}");
    }
    let before: Vec<u64> = (0..2).map(|i| lab.new_flows(i, 0)).collect();
    let answers = lab.connect(0, 1000);
    let failures = connections::failures(&answers);
    assert!(
        failures.is_empty(),
        "{} of 1000 failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let carried: Vec<u64> = (0..2).map(|i| lab.new_flows(i, 0) - before[i]).collect();
    let mut by_backend = BTreeMap::new();
    for name in answers.iter().flatten() {
        *by_backend.entry(name.clone()).or_insert(0) += 1;
    }
    println!(
        "1000 connections: lb1 carried {}, lb2 {}; backends {by_backend:?}",
        carried[0], carried[1]
    );
    assert_eq!(
        carried.iter().sum::<u64>(),
        1000,
        "every connection crossed exactly one instance"
    );
    for (i, n) in carried.iter().enumerate() {
        assert!(
            *n >= 300,
            "{} carried {n} of 1000 connections (< 30%)",
            INSTANCES[i]
        );
    }
}

/// What one failover under load did to its traffic.
struct Outcome {
    pinged: Vec<Pinged>,
    attempts: Vec<Attempt>,
    /// Instance carrying each long-lived connection before the event (by conntrack).
    carriers: Vec<usize>,
}

/// Holds [`LONG_LIVED`] connections to VIP 0 (with BGP, at least 10 on each instance), runs
/// them and the opener around `event` (which returns when the event is over), for `after`
/// more.
fn under_load(
    lab: &mut RedundancyLab,
    event: impl FnOnce(&mut RedundancyLab),
    after: Duration,
) -> Outcome {
    let min_per_instance = if lab.options.routing == Routing::Vrrp {
        0
    } else {
        10
    };
    let held = hold(&lab.upstream.client, RedundancyLab::vip(0), LONG_LIVED);
    let carriers: Vec<usize> = held
        .iter()
        .map(|h| {
            let on: Vec<usize> = (0..2)
                .filter(|&i| lab.explain(i, 0, h.local).tracked_backend.is_some())
                .collect();
            assert_eq!(
                on.len(),
                1,
                "connection {} tracked by instances {on:?}",
                h.local
            );
            on[0]
        })
        .collect();
    for (i, name) in INSTANCES.iter().enumerate() {
        let n = carriers.iter().filter(|&&c| c == i).count();
        println!("{name} carries {n} of the {LONG_LIVED} long-lived connections");
        assert!(
            n >= min_per_instance,
            "{name} carries only {n} long-lived connections"
        );
    }
    let pingers = Pingers::start(held, PING);
    let opener = Opener::start(&lab.upstream.client, RedundancyLab::vip(0), EVERY, DEADLINE);
    assert!(
        opener.wait_attempts(20, Duration::from_secs(5)),
        "no new connections before the event"
    );
    event(lab);
    // The measurement window after the event: new connections are watched this long after
    // it is over (a failure there is one the event's end did not stop).
    std::thread::sleep(after);
    let attempts = opener.stop();
    let pinged = pingers.stop();
    Outcome {
        pinged,
        attempts,
        carriers,
    }
}

/// Panics unless instance `survivor` tracks every long-lived connection to the backend that
/// greeted it (it took over those of the other instance on the same backend).
fn assert_tracked_by(lab: &RedundancyLab, outcome: &Outcome, survivor: usize) {
    for (p, carrier) in outcome.pinged.iter().zip(&outcome.carriers) {
        let e = lab.explain(survivor, 0, p.held.local);
        let backend = e
            .tracked_backend
            .as_deref()
            .and_then(|a| lab.backend_name(a));
        assert_eq!(
            backend.as_deref(),
            Some(p.held.backend.as_str()),
            "connection {} (carried by {}, greeted by {}) is tracked by {} to {:?}",
            p.held.local,
            INSTANCES[*carrier],
            p.held.backend,
            INSTANCES[survivor],
            e.tracked_backend
        );
    }
}

#[test]
fn host_death_drops_the_instance_within_a_second_and_breaks_no_connection() {
    let _serial = one_at_a_time();
    let mut lab = RedundancyLab::new("red-death", Options::new(Routing::BIRD));
    lab.start();
    let mut died = None;
    let mut detected = None;
    let outcome = under_load(
        &mut lab,
        |lab| {
            let t = Instant::now();
            lab.kill_host(0);
            died = Some(t);
            detected = lab.wait_next_hops(VIPS[0].1, &[1], Duration::from_secs(5));
        },
        Duration::from_millis(1500),
    );
    let died = died.expect("event ran");
    let detected = detected.unwrap_or_else(|| {
        panic!(
            "the router kept lb1: {}\n{}",
            lab.router_route(VIPS[0].1),
            lab.logs()
        )
    });
    let failures = failed(&outcome.attempts);
    println!(
        "router dropped lb1 {:.0} ms after its host died; {} long-lived connections pinged; {} of {} new connections failed",
        detected.as_secs_f64() * 1e3,
        outcome.pinged.len(),
        failures.len(),
        outcome.attempts.len()
    );
    assert!(
        detected <= Duration::from_secs(1),
        "detection took {detected:?}"
    );
    connections::assert_none_broken(&outcome.pinged);
    // Those lb1 carried continue through lb2, to the backend that greeted them.
    assert_tracked_by(&lab, &outcome, 1);
    // New connections failed only while the router still sent some to the dead host.
    let window_end = died + detected + Duration::from_millis(50);
    for a in &failures {
        let offset = a.started.duration_since(died.min(a.started)).as_secs_f64() * 1e3;
        assert!(
            a.started + Duration::from_millis(100) >= died && a.started <= window_end,
            "a connection started {}{offset:.0} ms from the death failed: {:?}",
            if a.started < died { "-" } else { "+" },
            a.result
        );
    }
}

#[test]
fn graceful_stop_withdraws_before_it_detaches_and_fails_nothing() {
    let _serial = one_at_a_time();
    let mut lab = RedundancyLab::new("red-stop", Options::new(Routing::BIRD));
    lab.start();
    let mut timeline = None;
    let outcome = under_load(
        &mut lab,
        |lab| {
            let t = Instant::now();
            lab.instances[1]
                .agent
                .as_ref()
                .expect("agent")
                .signal(Signal::SIGTERM);
            let withdrawn = lab
                .wait_next_hops(VIPS[0].1, &[0], Duration::from_secs(5))
                .map(|_| t.elapsed());
            let agent = lab.instances[1].agent.as_mut().expect("agent");
            let exited =
                wait_until(Duration::from_secs(10), || !agent.is_running()).map(|_| t.elapsed());
            timeline = Some((withdrawn, exited));
        },
        Duration::from_millis(500),
    );
    let (withdrawn, exited) = timeline.expect("event ran");
    let withdrawn = withdrawn.unwrap_or_else(|| {
        panic!(
            "the router kept lb2: {}\n{}",
            lab.router_route(VIPS[0].1),
            lab.logs()
        )
    });
    let exited = exited.unwrap_or_else(|| panic!("lb2's agent did not exit\n{}", lab.logs()));
    let failures = failed(&outcome.attempts);
    println!(
        "SIGTERM to lb2: the router dropped it after {:.0} ms, the agent detached and exited after {:.0} ms; \
         {} of {} new connections failed",
        withdrawn.as_secs_f64() * 1e3,
        exited.as_secs_f64() * 1e3,
        failures.len(),
        outcome.attempts.len()
    );
    let log = lab.instances[1].files.log_text();
    assert!(
        log.contains("datapath detached"),
        "lb2 did not detach:\n{log}"
    );
    assert!(
        withdrawn < exited,
        "lb2 detached before the router dropped it"
    );
    let withdraw_line = log
        .find("withdrawn")
        .unwrap_or_else(|| panic!("no withdrawn line:\n{log}"));
    assert!(
        withdraw_line < log.find("datapath detached").expect("detached"),
        "{log}"
    );
    assert!(
        exited >= DRAIN,
        "lb2 detached {exited:?} after SIGTERM, before its drain ({DRAIN:?})"
    );
    connections::assert_none_broken(&outcome.pinged);
    connections::assert_none_failed(&outcome.attempts);
    assert_tracked_by(&lab, &outcome, 0);
    assert!(
        lab.next_hops(VIPS[1].1) == [0].into(),
        "api still via lb2: {}",
        lab.router_route(VIPS[1].1)
    );
}

#[test]
fn a_vip_without_backends_is_withdrawn_by_both_instances_and_announced_again() {
    let _serial = one_at_a_time();
    let mut lab = RedundancyLab::new("red-down", Options::new(Routing::BIRD));
    lab.start();
    let (web, api) = (VIPS[0].1, VIPS[1].1);
    for j in 0..3 {
        lab.stop_server(j, 0);
    }
    let last_stopped = Instant::now();
    let mut withdrawn = [None, None];
    wait_until(Duration::from_secs(5), || {
        for (i, at) in withdrawn.iter_mut().enumerate() {
            if at.is_none() && !lab.announced(i, web) {
                *at = Some(last_stopped.elapsed());
            }
        }
        withdrawn.iter().all(Option::is_some)
    });
    let routed_away = lab
        .wait_next_hops(web, &[], Duration::from_secs(2))
        .map(|_| last_stopped.elapsed());
    let limit = Duration::from_millis(FALL * INTERVAL_MS + 100);
    println!(
        "all backends of web stopped: withdrawn by lb1 after {:?}, by lb2 after {:?} (limit {limit:?}); \
         the router removed the route after {routed_away:?}",
        withdrawn[0], withdrawn[1]
    );
    for (i, at) in withdrawn.iter().enumerate() {
        let at =
            at.unwrap_or_else(|| panic!("{} kept announcing web\n{}", INSTANCES[i], lab.logs()));
        assert!(at <= limit, "{} withdrew web after {at:?}", INSTANCES[i]);
        assert!(lab.announced(i, api), "{} withdrew api too", INSTANCES[i]);
    }
    assert!(
        routed_away.is_some(),
        "the router still routes web: {}",
        lab.router_route(web)
    );
    assert_eq!(
        lab.next_hops(api).len(),
        2,
        "api: {}",
        lab.router_route(api)
    );
    let answers = lab.connect(1, 50);
    assert!(
        answers.iter().all(Result::is_ok),
        "api failed while web was down: {answers:?}"
    );

    for j in 0..3 {
        lab.start_server(j, 0);
    }
    let back = lab.wait_next_hops(web, &[0, 1], Duration::from_secs(5));
    println!(
        "backends back: both instances announce web again, the router has its 2-way route after {back:?}"
    );
    let back = back.unwrap_or_else(|| {
        panic!(
            "web not announced again: {}\n{}",
            lab.router_route(web),
            lab.logs()
        )
    });
    assert!(
        back <= Duration::from_millis(RISE * INTERVAL_MS + 1000),
        "announced again after {back:?}"
    );
    assert!((0..2).all(|i| lab.announced(i, web)));
    let answers = lab.connect(0, 100);
    assert!(
        answers.iter().all(Result::is_ok),
        "web after recovery: {answers:?}"
    );
}

#[test]
fn kill_9_with_keep_datapath_keeps_the_route_and_the_next_agent_reconciles() {
    let _serial = one_at_a_time();
    let mut options = Options::new(Routing::BIRD);
    options.keep_datapath = true;
    let mut lab = RedundancyLab::new("red-kill", options);
    lab.start();
    // What the next agent must reconcile: a route of lb's protocol for an address it does not
    // serve (left by an earlier configuration), and another daemon's route, left alone.
    const STALE: &str = "10.78.0.199";
    const FOREIGN: &str = "10.78.0.198";
    lab.host(1).ns.ip_batch(&[
        format!("route add blackhole {STALE}/32 table {TABLE} proto {PROTOCOL}"),
        format!("route add blackhole {FOREIGN}/32 table {TABLE} proto static"),
    ]);
    assert!(
        lab.wait_next_hops(STALE, &[1], Duration::from_secs(5))
            .is_some(),
        "bird does not announce what lb's protocol puts in the table: {}",
        lab.router_route(STALE)
    );
    let mut kept = true;
    let outcome = under_load(
        &mut lab,
        |lab| {
            let status = lab.stop_agent(1, Signal::SIGKILL);
            assert!(!status.success(), "kill -9: {status}");
            // The pinned program forwards, the route stays, the router keeps both.
            // Watched for a second without an agent: the route staying is what is tested.
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(1) {
                kept &= lab.announced(1, VIPS[0].1) && lab.next_hops(VIPS[0].1).len() == 2;
                std::thread::sleep(Duration::from_millis(20));
            }
            lab.start_agent(1, true);
            kept &= lab.next_hops(VIPS[0].1).len() == 2;
        },
        Duration::from_millis(1000),
    );
    let failures = failed(&outcome.attempts);
    println!(
        "kill -9 of lb2 and a new agent: the route stayed: {kept}; {} of {} new connections failed",
        failures.len(),
        outcome.attempts.len()
    );
    assert!(
        kept,
        "lb2's route or the router's path through it went away\n{}",
        lab.logs()
    );
    connections::assert_none_broken(&outcome.pinged);
    connections::assert_none_failed(&outcome.attempts);
    let gone = lab.wait_until(Duration::from_secs(2), || !lab.announced(1, STALE));
    assert!(
        gone.is_some(),
        "the new agent left its protocol's route to {STALE}"
    );
    assert!(
        lab.wait_next_hops(STALE, &[], Duration::from_secs(2))
            .is_some(),
        "the router still routes {STALE}: {}",
        lab.router_route(STALE)
    );
    let foreign = lab
        .host(1)
        .ns
        .ip(&format!("route show table {TABLE} exact {FOREIGN}/32"));
    assert!(
        foreign.contains("proto static"),
        "another daemon's route was touched: {foreign:?}"
    );
    let log = lab.instances[1].files.log_text();
    assert!(
        log.contains(FOREIGN),
        "no warning about the foreign route {FOREIGN}:\n{log}"
    );
    assert!(
        lab.next_hops(FOREIGN).is_empty(),
        "bird announced a route of another protocol: {}",
        lab.router_route(FOREIGN)
    );
}

#[test]
fn keepalived_moves_the_floating_address_within_3_s_of_the_active_host_dying() {
    let _serial = one_at_a_time();
    let mut lab = RedundancyLab::new("red-vrrp", Options::new(Routing::Vrrp));
    lab.start();
    assert!(!lab.holds_floating(1), "lb2 holds the floating address too");
    let mut moved = None;
    let outcome = under_load(
        &mut lab,
        |lab| {
            lab.kill_host(0);
            moved = lab.wait_until(Duration::from_secs(10), || lab.holds_floating(1));
        },
        Duration::from_millis(1500),
    );
    let failures = failed(&outcome.attempts);
    println!(
        "lb1's host died: lb2 took the floating address after {moved:?}; {} of {} new connections failed (not gated)",
        failures.len(),
        outcome.attempts.len()
    );
    let moved =
        moved.unwrap_or_else(|| panic!("lb2 never took the floating address\n{}", lab.logs()));
    assert!(
        moved <= Duration::from_secs(3),
        "the floating address moved after {moved:?}"
    );
    assert!(
        outcome.carriers.iter().all(|&c| c == 0),
        "lb2 carried connections before the failover"
    );
    connections::assert_none_broken(&outcome.pinged);
    assert_tracked_by(&lab, &outcome, 1);
}

#[test]
fn keepalived_track_script_moves_the_address_when_the_agent_stops() {
    let _serial = one_at_a_time();
    let mut lab = RedundancyLab::new("red-track", Options::new(Routing::Vrrp));
    lab.start();
    let mut moved = None;
    let outcome = under_load(
        &mut lab,
        |lab| {
            let t = Instant::now();
            lab.instances[0]
                .agent
                .as_ref()
                .expect("agent")
                .signal(Signal::SIGTERM);
            moved = lab
                .wait_until(Duration::from_secs(10), || lab.holds_floating(1))
                .map(|_| t.elapsed());
        },
        Duration::from_millis(1500),
    );
    println!(
        "SIGTERM to lb1's agent: lb2 took the floating address after {moved:?}; {} of {} new connections failed",
        failed(&outcome.attempts).len(),
        outcome.attempts.len()
    );
    let moved =
        moved.unwrap_or_else(|| panic!("lb2 never took the floating address\n{}", lab.logs()));
    assert!(
        moved <= DRAIN + Duration::from_secs(3),
        "moved after {moved:?}"
    );
    assert!(!lab.holds_floating(0), "lb1 kept the address as well");
    connections::assert_none_broken(&outcome.pinged);
}

/// The maintenance order docs/REDUNDANCY.md recommends for the active instance: keepalived
/// first (it hands the address over at once), then lb (still forwarding while the address
/// moves): nothing fails.
#[test]
fn keepalived_stopped_before_lb_hands_over_without_failures() {
    let _serial = one_at_a_time();
    let mut lab = RedundancyLab::new("red-handover", Options::new(Routing::Vrrp));
    lab.start();
    let mut moved = None;
    let outcome = under_load(
        &mut lab,
        |lab| {
            let t = Instant::now();
            // SIGTERM: keepalived advertises priority 0 and releases the address.
            let keepalived = lab.instances[0].keepalived.take().expect("keepalived");
            keepalived.daemon.signal(Signal::SIGTERM);
            moved = lab
                .wait_until(Duration::from_secs(10), || lab.holds_floating(1))
                .map(|_| t.elapsed());
            drop(keepalived);
            // lb1 is stopped once the router sends the new connections to lb2.
            let carried = lab.new_flows(1, 0);
            assert!(
                wait_every(Duration::from_secs(5), Duration::from_millis(20), || {
                    lab.new_flows(1, 0) >= carried + 5
                })
                .is_some(),
                "lb2 carries no new connection after taking the address\n{}",
                lab.logs()
            );
            let status = lab.stop_agent(0, Signal::SIGTERM);
            println!(
                "lb1's agent exited ({status}) {:.1}s after keepalived was told to stop",
                t.elapsed().as_secs_f64()
            );
        },
        Duration::from_millis(500),
    );
    let failures = failed(&outcome.attempts);
    println!(
        "keepalived stopped on lb1: lb2 took the address after {moved:?}; then lb1's agent stopped; \
         {} of {} new connections failed",
        failures.len(),
        outcome.attempts.len()
    );
    let moved = moved.unwrap_or_else(|| panic!("lb2 never took the address\n{}", lab.logs()));
    assert!(moved <= Duration::from_secs(1), "handover took {moved:?}");
    connections::assert_none_broken(&outcome.pinged);
    connections::assert_none_failed(&outcome.attempts);
}

/// `routing` with FRR somewhere: both instances announce with equal attributes (the router
/// multipaths over them), share connections, and lb2's death is noticed within a second.
fn mixed_daemons(tag: &str, routing: Routing) {
    let mut lab = RedundancyLab::new(tag, Options::new(routing));
    lab.start();
    let route = lab.router_route(VIPS[0].1);
    println!("{routing:?}: the router's route: {}", route.trim());
    let before: Vec<u64> = (0..2).map(|i| lab.new_flows(i, 0)).collect();
    let answers = lab.connect(0, 300);
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let carried: Vec<u64> = (0..2).map(|i| lab.new_flows(i, 0) - before[i]).collect();
    println!(
        "300 connections: lb1 carried {}, lb2 {}",
        carried[0], carried[1]
    );
    assert!(carried.iter().all(|&n| n >= 90), "{carried:?}");
    lab.kill_host(1);
    let detected = lab.wait_next_hops(VIPS[0].1, &[0], Duration::from_secs(5));
    println!("lb2's host died: the router dropped it after {detected:?}");
    let detected = detected.unwrap_or_else(|| {
        panic!(
            "the router kept lb2: {}\n{}",
            lab.router_route(VIPS[0].1),
            lab.logs()
        )
    });
    assert!(detected <= Duration::from_secs(1), "{detected:?}");
}

#[test]
fn bird_and_frr_instances_share_a_vip_behind_a_bird_router() {
    let _serial = one_at_a_time();
    mixed_daemons(
        "red-frr",
        Routing::Bgp {
            router: Speaker::Bird,
            lb2: Speaker::Frr,
        },
    );
}

#[test]
fn bird_and_frr_instances_share_a_vip_behind_an_frr_router() {
    let _serial = one_at_a_time();
    mixed_daemons(
        "red-frrr",
        Routing::Bgp {
            router: Speaker::Frr,
            lb2: Speaker::Frr,
        },
    );
}

/// What [`leave_after_a_backend_was_added`] saw, per held connection.
struct Left {
    lab: RedundancyLab,
    /// Tracked by lb1 before it left.
    on_lb1: Vec<bool>,
    /// Carried by lb1, its slot on lb2's new ring naming another backend: what breaks
    /// without second chance.
    predicted: Vec<bool>,
    /// Broke after lb1 left.
    broken: Vec<bool>,
}

/// Holds 200 connections through both instances, adds b4 on both (their rings give it part
/// of the slots; tracked flows stay), then kills lb1's host.
fn leave_after_a_backend_was_added(tag: &str, tunnel: bool) -> Left {
    const HELD: usize = 200;
    let mut options = Options::new(Routing::BIRD);
    options.backends = 4;
    options.tunnel = tunnel;
    let mut lab = RedundancyLab::new(tag, options);
    lab.start();
    let mut held = hold(&lab.upstream.client, RedundancyLab::vip(0), HELD);
    let on_lb1: Vec<bool> = held
        .iter()
        .map(|h| lab.explain(0, 0, h.local).tracked_backend.is_some())
        .collect();
    let before = lab.fingerprints(0);
    lab.write_configs(4);
    let b4 = lab.backend(3).ip.to_string();
    let in_rings = lab.wait_until(Duration::from_secs(10), || {
        (0..2).all(|i| {
            let fingerprints = lab.fingerprints(i);
            fingerprints != before
                && lab.status_json(i)["vips"][0]["backends"]
                    .as_array()
                    .is_some_and(|b| {
                        b.iter()
                            .any(|b| b["address"] == b4.as_str() && b["state"] == "up")
                    })
        })
    });
    assert!(
        in_rings.is_some(),
        "b4 did not join both rings\n{}",
        lab.logs()
    );
    assert_eq!(
        lab.fingerprints(0),
        lab.fingerprints(1),
        "the instances' rings differ"
    );
    let shares: Vec<String> = lab.status_json(1)["vips"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            format!(
                "{} {:.3}",
                b["address"].as_str().unwrap_or("?"),
                b["share"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    println!("ring shares after adding b4: {}", shares.join(", "));
    let predicted: Vec<bool> = held
        .iter()
        .zip(&on_lb1)
        .map(|(h, &on)| {
            let ring = lab.explain(1, 0, h.local).ring_backend;
            on && ring.as_deref().and_then(|a| lab.backend_name(a)).as_deref()
                != Some(h.backend.as_str())
        })
        .collect();
    lab.kill_host(0);
    assert!(lab
        .wait_next_hops(VIPS[0].1, &[1], Duration::from_secs(5))
        .is_some());
    let broken: Vec<bool> = held.iter_mut().map(|h| h.echo("after").is_err()).collect();
    Left {
        lab,
        on_lb1,
        predicted,
        broken,
    }
}

fn count(flags: &[bool]) -> usize {
    flags.iter().filter(|&&b| b).count()
}

#[test]
fn report_connections_broken_when_an_instance_leaves_after_a_backend_was_added() {
    let _serial = one_at_a_time();
    let left = leave_after_a_backend_was_added("red-added", false);
    let held = left.broken.len();
    let lb1_count = count(&left.on_lb1);
    println!(
        "dsr: after a backend was added, lb1 left: {} of {held} long-lived connections broke ({:.1}%; {:.1}% of lb1's {lb1_count}); \
         predicted from lb2's ring: {}",
        count(&left.broken),
        100.0 * count(&left.broken) as f64 / held as f64,
        100.0 * count(&left.broken) as f64 / lb1_count as f64,
        count(&left.predicted)
    );
    assert_eq!(
        left.broken, left.predicted,
        "the connections that broke are not those whose ring slot changed"
    );
}

/// The same in tunnel mode with second chance: lb2 never tracked lb1's connections, and its
/// ring sends those whose slot moved to b4, with their previous owner as a hop; b4's decap
/// sends them on. None breaks.
#[test]
fn with_second_chance_no_connection_breaks_when_an_instance_leaves_after_a_backend_was_added() {
    let _serial = one_at_a_time();
    let mut left = leave_after_a_backend_was_added("red-chance", true);
    let held = left.broken.len();
    let hops = left.lab.status_json(1)["agent"]["second_chance_hops"]
        .as_u64()
        .unwrap_or(0);
    let forwarded = left.lab.stop_decaps();
    println!(
        "tunnel with second chance: after a backend was added, lb1 left: {} of {held} \
         long-lived connections broke; {} would have without second chance; lb2 sent {hops} \
         packets with a hop, the backends sent {forwarded:?} on to theirs",
        count(&left.broken),
        count(&left.predicted),
    );
    assert!(
        count(&left.predicted) > 0,
        "no connection of lb1's had its slot moved: nothing tested"
    );
    assert_eq!(count(&left.broken), 0, "{}", left.lab.logs());
    assert!(forwarded.iter().sum::<u64>() > 0, "{forwarded:?}");
}

/// A bridge floods frames for a MAC it no longer knows to every port: when an instance's host
/// dies, the other instance sees the frames the router still sends to the dead one. It must
/// pass them (they are not addressed to it), or two instances would forward one packet.
#[test]
fn frames_flooded_for_a_dead_instance_are_not_balanced_by_the_other() {
    let _serial = one_at_a_time();
    let mut options = Options::new(Routing::BIRD);
    options.flood = true;
    let mut lab = RedundancyLab::new("red-flood", options);
    lab.start();
    // api goes to lb1 alone: a static route the router prefers to bird's (metric 32), which
    // stays when lb1's BGP session goes down, so the router keeps sending to lb1's MAC.
    let api = VIPS[1].1;
    lab.router().ns.ip(&format!(
        "route add {api}/32 via {} metric 10",
        lab.host(0).ip
    ));
    let answers = lab.connect(1, 20);
    assert!(
        answers.iter().all(Result::is_ok),
        "api via lb1: {answers:?}"
    );
    let before = lab.new_flows(1, 1);
    lab.kill_host(0);
    let client = &lab.upstream.client;
    let vip = RedundancyLab::vip(1);
    let attempts = connections::ask(client, vip, 10, Duration::from_millis(300));
    let taken = lab.new_flows(1, 1) - before;
    let answered = attempts.iter().filter(|a| a.is_ok()).count();
    println!(
        "lb1's host dead, the router still sending api to its MAC: lb2 balanced {taken} flows, {answered} of 10 connections answered"
    );
    assert_eq!(taken, 0, "lb2 balanced frames addressed to lb1");
    assert_eq!(
        answered, 0,
        "connections through a dead instance were answered"
    );
}

/// Every configuration docs/REDUNDANCY.md shows (lb-lab's unit test keeps the document equal
/// to them) is accepted by the daemon that reads it: `bird -p`, `vtysh --dryrun`,
/// `keepalived --config-test`, and each sysctl exists and takes its value (in a namespace).
#[test]
fn documented_configurations_parse() {
    use lb_lab::routing::examples::{documented, Kind};
    let scratch = lb_lab::Scratch::try_new("red-docs").expect("scratch");
    let ns = lb_tests::netns::Netns::new("red-docs");
    for (i, example) in documented().into_iter().enumerate() {
        let file = scratch.dir.join(format!("{i}.conf"));
        // keepalived checks that the track script exists: the built lb stands in.
        let text = example.text.replace(
            "/usr/local/bin/lb",
            &lb_tests::netns::agent::lb_binary().display().to_string(),
        );
        std::fs::write(&file, &text).expect("write");
        let file = file.display();
        let result = match example.kind {
            Kind::Bird => lb_lab::try_sh(&format!("bird -p -c {file}")),
            Kind::Frr => lb_lab::try_sh(&format!("vtysh --dryrun --inputfile {file}")),
            Kind::Keepalived => lb_lab::try_sh(&format!("keepalived --config-test -f {file}")),
            Kind::Sysctl => {
                for line in text.lines().filter(|l| !l.starts_with('#')) {
                    let (key, value) = line.split_once(" = ").expect("key = value");
                    ns.sysctl(key, value);
                }
                Ok(String::new())
            }
        };
        if let Err(error) = result {
            panic!("{}: {}\n{text}", example.title, error.full_message());
        }
        println!("{}: accepted", example.title);
    }
}
