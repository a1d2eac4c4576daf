//! Load-aware balancing with the real agent: `balance = "response-time"` gives a backend that
//! answers its checks slowly (50 ms late) fewer new flows (its weight scaled down, to a quarter at most), says
//! why in `lb status`, and gives it its share back once it is fast again.

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
