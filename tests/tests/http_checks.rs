//! HTTP health checks end to end: the real `lb run` in the DSR lab (client, lb, three
//! backends), each backend serving its name on the VIP port and an HTTP health endpoint on
//! another port whose answer the test changes. A service that still accepts connections but
//! answers 503, answers too slowly or answers garbage leaves the ring within
//! `fall × interval` (+ the timeout for the slow one, + `BOUND_MS`) and returns `rise` checks
//! after it answers 200 again; the reason is in the agent's log and in `lb status`.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::netns::{
    agent::lb_binary,
    connections::{count, failures},
    dsr_lab::*,
    servers::{ask_name, HttpAnswer},
};
use serde_json::Value;

/// The backends' health endpoint (the service itself is on `PORT`).
const HEALTH_PORT: u16 = 8081;

/// What a misbehaving endpoint is made to answer, and the reason the agent must give.
struct Sickness {
    what: &'static str,
    answer: HttpAnswer,
    reason: &'static str,
    /// The longest a check of this answer takes.
    check_ms: u64,
}

#[test]
fn http_checks_follow_the_service_not_the_port() {
    let lab = AgentLab::new("http");
    let health = lab.start_health_servers(HEALTH_PORT);
    lab.write_config_with_health(
        &[1, 1, 1],
        &format!("type = \"http\"\npath = \"/healthz\"\nport = {HEALTH_PORT}\n"),
    );
    let _agent = lab.start_agent(false);
    let all_in = lab.wait_until(Duration::from_secs(5), || (0..3).all(|i| lab.in_ring(i)));
    assert!(
        all_in.is_some(),
        "every backend passes its first HTTP check:\n{}",
        lab.files.log_text()
    );
    assert_eq!(
        lab.files
            .log_text()
            .matches("first check: HTTP 200 in")
            .count(),
        3,
        "{}",
        lab.files.log_text()
    );

    let b1 = lab.backend_ip(0);
    let sicknesses = [
        Sickness {
            what: "503",
            answer: HttpAnswer::Status(503),
            reason: "HTTP 503 (expected 2xx)",
            check_ms: 0,
        },
        Sickness {
            what: "slow answer",
            answer: HttpAnswer::Slow(Duration::from_millis(4 * TIMEOUT_MS), 200),
            reason: "timed out after 100ms",
            check_ms: TIMEOUT_MS,
        },
        Sickness {
            what: "garbage",
            answer: HttpAnswer::Garbage(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n".to_vec()),
            reason: r#"not an HTTP response: "SSH-2.0-OpenSSH_...""#,
            check_ms: 0,
        },
    ];
    for (round, sickness) in sicknesses.iter().enumerate() {
        let Sickness {
            what,
            answer,
            reason,
            check_ms,
        } = sickness;
        // Checks go through the VIP; after a failure the backend's own address is checked too.
        let reason = &format!("{reason} via the vip; the backend's own address fails too");
        // Sick: out of the ring within fall × interval (+ a check's time).
        let sick = Instant::now();
        health[0].set(answer.clone());
        let limit = Duration::from_millis(FALL * INTERVAL_MS + check_ms + BOUND_MS);
        let detected = lab
            .wait_until(Duration::from_secs(5), || !lab.in_ring(0))
            .map(|_| sick.elapsed());
        println!("{what}: detected after {detected:?} (limit {limit:?})");
        let detected = detected
            .unwrap_or_else(|| panic!("{what}: b1 stayed in the ring:\n{}", lab.files.log_text()));
        assert!(
            detected <= limit,
            "{what}: b1 left the ring after {detected:?}, limit {limit:?}"
        );
        let line = format!("backend {b1} of vip web: Up -> Down ({FALL} failed checks: {reason})");
        assert!(
            lab.files.wait_log(&line, 1, Duration::from_secs(1)),
            "{what}: no line {line:?} in the log:\n{}",
            lab.files.log_text()
        );

        // The service still accepts connections on its own port: a TCP check would pass.
        let direct = SocketAddr::new(b1, PORT);
        let name = lab
            .lan
            .host(0)
            .ns
            .run(|| ask_name(direct, Duration::from_secs(2)));
        assert_eq!(
            name.ok().as_deref(),
            Some("b1"),
            "{what}: b1's service itself answers"
        );
        let answers = lab.connect(30);
        assert!(
            failures(&answers).is_empty(),
            "{what}: {:?}",
            failures(&answers)
        );
        assert_eq!(count(&answers, "b1"), 0, "{what}: no new connection to b1");

        // `lb status` says why (its snapshot may be a second old).
        let mut seen = Value::Null;
        let reported = lab.wait_until(Duration::from_secs(3), || {
            seen = lab.backend_status(0);
            seen["last_check_error"] == *reason
        });
        assert!(reported.is_some(), "{what}: lb status --json shows {seen}");
        assert_eq!(seen["state"], "down", "{what}: {seen}");
        assert_eq!(seen["last_check_ok"], false, "{what}: {seen}");
        let text = lb(&lab, &[]);
        assert!(
            text.contains(&format!("failed: {reason}")),
            "{what}: lb status shows the reason:\n{text}"
        );

        // Healthy again: back after `rise` checks.
        let healed = Instant::now();
        health[0].set(HttpAnswer::Status(200));
        let limit = Duration::from_millis(RISE * INTERVAL_MS + BOUND_MS);
        let back = lab
            .wait_until(Duration::from_secs(5), || lab.in_ring(0))
            .map(|_| healed.elapsed());
        println!("{what}: back after {back:?} (limit {limit:?})");
        let back =
            back.unwrap_or_else(|| panic!("{what}: b1 never returned:\n{}", lab.files.log_text()));
        assert!(
            back <= limit,
            "{what}: b1 returned after {back:?}, limit {limit:?}"
        );
        let line = format!("backend {b1} of vip web: Down -> Up ({RISE} successful checks)");
        assert!(
            lab.files.wait_log(&line, round + 1, Duration::from_secs(1)),
            "{what}: no line {line:?} in the log:\n{}",
            lab.files.log_text()
        );
        let answers = lab.connect(30);
        assert!(
            failures(&answers).is_empty(),
            "{what}: {:?}",
            failures(&answers)
        );
        assert!(
            count(&answers, "b1") > 0,
            "{what}: b1 serves again: {answers:?}"
        );
    }
    // The healthy backends never changed.
    for i in 1..3 {
        let ip = lab.backend_ip(i);
        assert!(
            !lab.files
                .log_text()
                .contains(&format!("backend {ip} of vip web: Up -> Down")),
            "{}",
            lab.files.log_text()
        );
    }
}

/// `lb status --state-dir <lab's> ARGS`, which must succeed.
fn lb(lab: &AgentLab, args: &[&str]) -> String {
    let output = Command::new(lb_binary())
        .arg("status")
        .arg("--state-dir")
        .arg(&lab.files.state_dir)
        .args(args)
        .output()
        .expect("run lb status");
    assert!(
        output.status.success(),
        "lb status {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
