//! Load-aware balancing with the real agent: `balance = "response-time"` gives a backend that
//! answers its checks slowly (50 ms late) fewer new flows (its weight scaled down, to a quarter at most), says
//! why in `lb status`, and gives it its share back once it is fast again; `balance =
//! "least-conn"` sends new connections away from a backend that holds many; `active_flows`
//! counts each backend's open connections.

use std::time::Duration;

use lb_tests::netns::{
    connections::{count, failures},
    dsr_lab::*,
    servers::HttpAnswer,
};
use serde_json::Value;

const HEALTH_PORT: u16 = 8081;

#[test]
fn a_slow_backend_gets_fewer_new_flows_and_its_share_back_when_fast() {
    let lab = AgentLab::new("rtime");
    let health = lab.start_health_servers(HEALTH_PORT);
    let config = lab
        .config_text_with_health(
            &[1, 1, 1],
            "",
            &format!("type = \"http\"\nport = {HEALTH_PORT}\n"),
            &lab.files.state_dir,
        )
        .replace(
            "forward = \"dsr\"\n",
            "forward = \"dsr\"\nbalance = \"response-time\"\n",
        );
    lab.files.write_config(&config);
    let _agent = lab.start_agent(false);
    assert!(
        lab.wait_until(Duration::from_secs(5), || (0..3).all(|i| lab.in_ring(i)))
            .is_some(),
        "{}",
        lab.files.log_text()
    );

    // b1's health endpoint answers after 50 ms, the others' at once: its weight falls to a
    // quarter within a period or two (5 s each).
    health[0].set(HttpAnswer::Slow(Duration::from_millis(50), 200));
    let mut b1 = Value::Null;
    let slowed = lab.wait_until(Duration::from_secs(15), || {
        b1 = lab.backend_status(0);
        b1["effective_weight"] == 0.25
    });
    assert!(slowed.is_some(), "b1: {b1}\n{}", lab.files.log_text());
    let reason = b1["weight_reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.starts_with("response time 5"), "{reason}");
    assert!(reason.ends_with("weight x0.25"), "{reason}");
    assert!(
        lab.files.log_text().contains(&format!(
            "backend {} of vip web: response time",
            lab.backend_ip(0)
        )),
        "{}",
        lab.files.log_text()
    );
    assert_eq!(lab.backend_status(1)["effective_weight"], 1.0);
    assert_eq!(lab.explain(40000)["balance"], "response-time");
    // A quarter of one weight against two full ones: 1/9 of the ring.
    let answers = lab.connect(300);
    assert!(failures(&answers).is_empty(), "{:?}", failures(&answers));
    let share = count(&answers, "b1") as f64 / 300.0;
    println!("b1's share of new connections while slow: {share:.3} (1/9 = 0.111)");
    assert!(share < 0.2, "b1 got {share}");

    // Fast again: its weight comes back.
    health[0].set(HttpAnswer::Status(200));
    let restored = lab.wait_until(Duration::from_secs(15), || {
        b1 = lab.backend_status(0);
        b1["effective_weight"] == 1.0
    });
    assert!(restored.is_some(), "b1: {b1}\n{}", lab.files.log_text());
    assert_eq!(b1["weight_reason"], Value::Null);
    let answers = lab.connect(300);
    let share = count(&answers, "b1") as f64 / 300.0;
    println!("b1's share of new connections once fast: {share:.3} (1/3)");
    assert!(share > 0.2, "b1 got {share}");
}

#[test]
fn active_flows_count_each_backends_open_connections() {
    let lab = AgentLab::new("active");
    lab.write_config(&[1, 1, 1], "");
    let _agent = lab.start_agent(false);
    let mut held = lab.hold(30);
    // The greeting came from the backend, and the client's ACK of it made each flow
    // established; one echo more makes sure lb saw a packet after the first.
    lb_tests::netns::connections::assert_echo(&mut held, "hello");
    let active = |i: usize| {
        lab.backend_status(i)["active_flows"]
            .as_u64()
            .expect("active")
    };
    for (i, name) in NAMES.iter().enumerate() {
        let open = held.iter().filter(|h| h.backend == *name).count() as u64;
        let counted = active(i);
        println!("{name}: {open} open, {counted} active");
        assert!(
            counted.abs_diff(open) <= 2,
            "{name}: {counted} active, {open} open"
        );
    }
    // The clients close theirs: each FIN takes its flow off.
    drop(held);
    let closed = lab.wait_until(Duration::from_secs(5), || (0..3).all(|i| active(i) == 0));
    assert!(
        closed.is_some(),
        "{:?}",
        (0..3).map(active).collect::<Vec<_>>()
    );
}

#[test]
fn least_conn_sends_new_connections_away_from_the_backend_that_holds_many() {
    let lab = AgentLab::new("lconn");
    let config = |weights: &[u32; 3], balance: &str| {
        lab.config_text_with_health(weights, "", "slow_start = \"0s\"\n", &lab.files.state_dir)
            .replace(
                "forward = \"dsr\"\n",
                &format!("forward = \"dsr\"\nbalance = \"{balance}\"\n"),
            )
    };
    // Only b1 serves at first (the others are drained): it gets 60 long-lived connections.
    lab.files.write_config(&config(&[1, 0, 0], "least-conn"));
    let _agent = lab.start_agent(false);
    assert!(
        lab.wait_until(Duration::from_secs(5), || lab.in_ring(0))
            .is_some(),
        "{}",
        lab.files.log_text()
    );
    let mut held = lab.hold(60);
    lb_tests::netns::connections::assert_echo(&mut held, "hello");
    assert!(held.iter().all(|h| h.backend == "b1"));

    // b2 and b3 come in. New short connections: a new flow whose two candidates are b1 and
    // another goes to the other; only those whose both candidates are b1 (1/9) go to b1.
    lab.files.write_config(&config(&[1, 1, 1], "least-conn"));
    assert!(
        lab.wait_until(Duration::from_secs(5), || (0..3).all(|i| lab.in_ring(i)))
            .is_some(),
        "{}",
        lab.files.log_text()
    );
    assert_eq!(lab.backend_status(0)["active_flows"], 60);
    // The agent counts loads every 500 ms.
    std::thread::sleep(Duration::from_millis(1200));
    let explained = lab.explain(40000);
    assert_eq!(explained["balance"], "least-conn");
    let candidates = &explained["least_conn"];
    for candidate in [&candidates["ring"], &candidates["second"]] {
        let expected = if candidate["backend"] == lab.backend_ip(0).to_string() {
            60
        } else {
            0
        };
        assert_eq!(candidate["active_flows"], expected, "{explained}");
    }
    let answers = lab.connect(300);
    assert!(failures(&answers).is_empty(), "{:?}", failures(&answers));
    let share = count(&answers, "b1") as f64 / 300.0;
    println!("least-conn: b1, holding 60, got {share:.3} of 300 new connections (1/9 = 0.111)");
    assert!(share <= 0.15, "b1 got {share}");
    assert_eq!(
        lab.backend_status(0)["active_flows"],
        60,
        "short ones closed"
    );

    // The same with maglev: b1 gets its ring share, a third.
    lab.files.write_config(&config(&[1, 1, 1], "maglev"));
    let mut status = Value::Null;
    let reloaded = lab.wait_until(Duration::from_secs(5), || {
        status = lab.status_json();
        status["vips"][0]["balance"] == "maglev"
    });
    assert!(reloaded.is_some(), "{status}\n{}", lab.files.log_text());
    let answers = lab.connect(300);
    assert!(failures(&answers).is_empty(), "{:?}", failures(&answers));
    let share = count(&answers, "b1") as f64 / 300.0;
    println!("maglev: b1, holding 60, got {share:.3} of 300 new connections (1/3)");
    assert!((0.22..0.45).contains(&share), "b1 got {share}");
    lb_tests::netns::connections::assert_echo(&mut held, "still there");
}
