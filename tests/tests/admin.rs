//! Health and traffic management with the real agent in the namespace lab: runtime drain,
//! disable and enable over the control socket (kept across a reload and a restart, root only),
//! slow start after a recovery, and availability figures (failures, MTTR) from a backend that
//! is down for a known time.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::netns::{
    agent::{lb_binary, Signal},
    connections::{assert_echo, count, failures},
    dsr_lab::*,
    servers::NameServer,
    wait_every,
};
use serde_json::Value;

/// `lb backend ACTION --vip web --backend <backend i>`, which must succeed.
fn admin(lab: &AgentLab, action: &str, i: usize) -> String {
    let backend = lab.backend_ip(i).to_string();
    let output = lab.lb(&["backend", action, "--vip", "web", "--backend", &backend]);
    assert!(
        output.status.success(),
        "lb backend {action}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Waits until the agent's snapshot has caught up with an admin change (≤ 1 s behind).
fn wait_admin(lab: &AgentLab, i: usize, state: &str) {
    assert!(
        lab.wait_until(Duration::from_secs(3), || lab.backend_status(i)["admin"]
            == state)
            .is_some(),
        "backend {i} never showed admin {state}: {}",
        lab.backend_status(i)
    );
}

#[test]
fn drain_disable_and_enable_at_run_time_survive_reload_and_restart() {
    let lab = AgentLab::new("admin");
    let agent = lab.start_agent(true);
    let mut held = lab.hold(30);
    let on = |name: &str| held.iter().filter(|held| held.backend == name).count();
    assert!(
        on("b1") > 0 && on("b2") > 0,
        "{:?}",
        held.iter().map(|h| &h.backend).collect::<Vec<_>>()
    );

    // drain b1: its connections stay, new ones go elsewhere.
    let said = admin(&lab, "drain", 0);
    assert!(said.contains("ready -> drain"), "{said}");
    let log = lab.files.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("admin: backend") && l.contains("uid 0 pid")),
        "the change names who asked:\n{log}"
    );
    let answers = lab.connect(60);
    assert!(failures(&answers).is_empty(), "{answers:?}");
    assert_eq!(
        count(&answers, "b1"),
        0,
        "a drained backend gets no new flows"
    );
    assert_echo(&mut held, "drained");
    wait_admin(&lab, 0, "drain");
    assert_eq!(lab.backend_status(0)["effective_weight"], 0.0);
    assert_eq!(lab.backend_status(0)["state"], "draining");

    // disable b2: out of the ring, its tracked flows re-hash.
    admin(&lab, "disable", 1);
    let answers = lab.connect(60);
    assert_eq!(
        count(&answers, "b2"),
        0,
        "a backend in maintenance gets nothing"
    );
    assert_eq!(count(&answers, "b3"), 60, "only b3 is left: {answers:?}");
    wait_admin(&lab, 1, "maint");
    let port = held
        .iter()
        .find(|held| held.backend == "b2")
        .map(|held| held.local.port())
        .expect("a held b2 connection");
    let explained = lab.explain(port);
    assert_eq!(explained["reason"], "rehash", "{explained}");
    assert_ne!(explained["backend"], lab.backend_ip(1).to_string().as_str());

    // A reload that changes an unrelated key keeps both states.
    lab.write_config(&[1, 1, 2], "");
    assert!(
        lab.files.wait_log("reloaded", 1, Duration::from_secs(5)),
        "{}",
        lab.files.log_text()
    );
    let answers = lab.connect(40);
    assert_eq!(
        count(&answers, "b3"),
        40,
        "still drained and disabled after the reload"
    );

    // So does a restart (records kept beside the pinned maps).
    agent.stop(Signal::SIGTERM);
    let agent = lab.start_agent(true);
    wait_admin(&lab, 0, "drain");
    wait_admin(&lab, 1, "maint");
    let answers = lab.connect(40);
    assert_eq!(
        count(&answers, "b3"),
        40,
        "still drained and disabled after a restart"
    );

    // enable brings them back.
    admin(&lab, "enable", 0);
    let said = admin(&lab, "enable", 1);
    assert!(said.contains("maint -> ready"), "{said}");
    let answers = lab.connect(90);
    assert!(
        count(&answers, "b1") > 0 && count(&answers, "b2") > 0,
        "{answers:?}"
    );

    // Asking twice is no change; a wrong name is a clear error.
    assert!(admin(&lab, "enable", 0).contains("already ready"));
    let wrong = lab.lb(&[
        "backend",
        "drain",
        "--vip",
        "nope",
        "--backend",
        "10.77.0.12",
    ]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("no vip named \"nope\""));

    // Non-root: the socket's mode keeps it out, and so would the agent's credential check.
    let socket = lb_user::status::socket_for(&lab.files.state_dir);
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(lb_binary())
            .args(args)
            .arg("--state-dir")
            .arg(&lab.files.state_dir)
            .output()
            .expect("setpriv")
    };
    let backend = lab.backend_ip(0).to_string();
    let drain = [
        "backend",
        "drain",
        "--vip",
        "web",
        "--backend",
        backend.as_str(),
    ];
    let refused = as_nobody(&drain);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("root only"),
        "{refused:?}"
    );
    Command::new("chmod")
        .arg("666")
        .arg(&socket)
        .status()
        .expect("chmod");
    let refused = as_nobody(&drain);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("refused: the control socket is root only (you are uid 65534"),
        "{said}"
    );
    assert_eq!(lab.backend_status(0)["admin"], "ready", "nothing changed");
    drop(agent);
}

#[test]
fn a_recovered_backend_ramps_up_over_slow_start() {
    let mut lab = AgentLab::new("slowstart");
    let slow_start = Duration::from_secs(6);
    let config = lab
        .config_text(&[1, 1, 1], "", &lab.files.state_dir)
        .replace("fall = 3\n", "fall = 3\nslow_start = \"6s\"\n");
    lab.files.write_config(&config);
    let _agent = lab.start_agent(false);
    let answers = lab.connect(60);
    assert!(
        count(&answers, "b1") > 10,
        "no slow start at start-up: {answers:?}"
    );

    lab.servers[0] = None;
    assert!(lab
        .wait_until(Duration::from_secs(5), || !lab.in_ring(0))
        .is_some());
    let mut held = lab.hold(20);
    lab.servers[0] = Some(NameServer::start(&lab.lan.host(2).ns, PORT, "b1"));
    assert!(
        lab.wait_until(Duration::from_secs(5), || lab.in_ring(0))
            .is_some(),
        "{}",
        lab.files.log_text()
    );
    let up = Instant::now();
    let share = |n: usize| count(&lab.connect(n), "b1") as f64 / n as f64;
    let sample = |at: Duration| {
        // Time passing is what is measured: the ramp's points at fixed times after the recovery.
        std::thread::sleep(at.saturating_sub(up.elapsed()));
        let status = lab.backend_status(0);
        let weight = status["effective_weight"].as_f64().expect("weight");
        let ring_share = status["share"].as_f64().expect("share");
        (share(300), weight, ring_share)
    };
    let (early, early_weight, early_ring) = sample(slow_start / 5);
    let (late, late_weight, late_ring) = sample(slow_start * 7 / 10);
    let (full, full_weight, full_ring) = sample(slow_start + Duration::from_secs(1));
    println!(
        "b1 after recovering: at 1.2 s weight {early_weight}, ring share {early_ring:.3}, share \
         of new connections {early:.3}; at 4.2 s {late_weight}, {late_ring:.3}, {late:.3}; after \
         the ramp {full_weight}, {full_ring:.3}, {full:.3}"
    );
    assert!(early_weight < late_weight && late_weight < 1.0 && full_weight == 1.0);
    // The ring follows the weight exactly (b2 and b3 have weight 1)...
    for (weight, ring) in [
        (early_weight, early_ring),
        (late_weight, late_ring),
        (1.0, full_ring),
    ] {
        let expected = weight / (weight + 2.0);
        assert!(
            (ring - expected).abs() < 0.03,
            "ring share {ring}, expected {expected}"
        );
    }
    // ...and the connections follow the ring (300 sequential client ports: a few % of noise).
    assert!(early < 0.2, "early {early}");
    assert!(late > early + 0.05, "late {late} vs early {early}");
    assert!((0.22..0.46).contains(&full), "full {full}");
    assert_echo(&mut held, "ramping");
}

#[test]
fn availability_and_mttr_follow_a_known_outage() {
    let mut lab = AgentLab::new("mttr");
    let _agent = lab.start_agent(false);
    // Time passing is what is measured: b2 is up for a second (its MTTF), then down for the
    // outage (its MTTR).
    std::thread::sleep(Duration::from_secs(1));
    let outage = Duration::from_millis(2500);
    lab.servers[1] = None;
    std::thread::sleep(outage);
    lab.servers[1] = Some(NameServer::start(&lab.lan.host(3).ns, PORT, "b2"));
    assert!(lab
        .wait_until(Duration::from_secs(5), || lab.in_ring(1))
        .is_some());
    // The snapshot is at most 1 s behind: wait until it shows the recovery. It and the records
    // are written together: read both from the same writing (the records unchanged across the
    // snapshot's read).
    assert!(
        wait_every(Duration::from_secs(3), Duration::from_millis(50), || {
            !lab.backend_status(1)["mttr_seconds"].is_null()
        })
        .is_some(),
        "the snapshot does not show b2's recovery:\n{}",
        lab.files.log_text()
    );
    let (b2, observed) = (0..10)
        .find_map(|_| {
            let before = b2_observed(&lab);
            let b2 = lab.backend_status(1);
            (b2_observed(&lab) == before).then_some((b2, before))
        })
        .expect("a snapshot and records of one writing");
    println!("b2 after a {outage:?} outage: {b2}");
    assert_eq!(b2["failures"], 1, "{b2}");
    // Down from the 3rd failed check to the 2nd good one: the outage, give or take a check
    // interval each way and the scheduling bound.
    let mttr = b2["mttr_seconds"].as_f64().expect("mttr");
    let slack = (INTERVAL_MS * 2 + BOUND_MS) as f64 / 1000.0;
    assert!((mttr - outage.as_secs_f64()).abs() <= slack, "mttr {mttr}");
    let mttf = b2["mttf_seconds"].as_f64().expect("mttf");
    assert!(mttf >= 1.0, "mttf {mttf}");
    let availability = b2["availability"].as_f64().expect("availability");
    let expected = 1.0 - mttr / observed;
    assert!(
        (availability - expected).abs() < 0.02,
        "availability {availability} vs {expected}"
    );
    assert_eq!(lab.backend_status(0)["failures"], 0);
    assert!(lab.backend_status(0)["mttr_seconds"].is_null());
    assert!(lab.backend_status(0)["availability"]
        .as_f64()
        .is_some_and(|a| a > 0.999));
}

/// Seconds b2 was observed, from the agent's records.
fn b2_observed(lab: &AgentLab) -> f64 {
    let records: Value = serde_json::from_slice(
        &std::fs::read(lb_user::records::path_for(&lab.files.state_dir)).expect("records"),
    )
    .expect("records json");
    let key = format!("web/{}", lab.backend_ip(1));
    records["backends"][key.as_str()]["availability"]["observed_ms"]
        .as_f64()
        .expect("observed")
        / 1000.0
}
