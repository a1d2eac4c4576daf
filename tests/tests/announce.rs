//! `[announce]` with one real agent: the route of a servable VIP's address in the table lb owns,
//! withdrawn when the VIP cannot serve (all backends down, `announce = false`, graceful stop),
//! announced again when it can; routes of other protocols left alone; `--keep-datapath` and
//! `kill -9` leave the route, and the next agent reconciles without a flap. `lb status` reports
//! `announced`, and `lb status --check` answers for supervisors. (The bird2 / ECMP lab is in
//! `redundancy.rs`.)

use std::time::{Duration, Instant};

use lb_tests::netns::{agent::Signal, connections::failures, dsr_lab::*, servers::NameServer};

const TABLE: u32 = 250;
const PROTOCOL: u32 = 250;
const ANNOUNCE: &str = "[announce]\ntable = 250\nprotocol = 250\ndrain = \"1500ms\"\n";

/// Our routes (protocol 250) in the table, as `ip` prints them, in the lb's namespace.
fn our_routes(lab: &AgentLab) -> Vec<String> {
    routes(lab, &format!("proto {PROTOCOL}"))
}

/// Every route of the table whose line contains `filter`.
fn routes(lab: &AgentLab, filter: &str) -> Vec<String> {
    lab.lan
        .host(1)
        .ns
        .table_routes(TABLE, filter)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn announced(lab: &AgentLab) -> bool {
    our_routes(lab)
        .iter()
        .any(|r| r.starts_with(&format!("blackhole {VIP}")))
}

/// `lb status --check`: its exit code and the line it printed.
fn check(lab: &AgentLab) -> (i32, String) {
    let output = lab.lb(&["status", "--check"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text.trim().to_owned())
}

fn wait_announced(lab: &AgentLab, wanted: bool, within: Duration) -> Option<Duration> {
    lab.wait_until(within, || announced(lab) == wanted)
}

#[test]
fn a_servable_vip_is_announced_and_withdrawn_with_its_backends() {
    let mut lab = AgentLab::new("announce");
    lab.write_config(&[1, 1, 1], ANNOUNCE);
    let ns = &lab.lan.host(1).ns;
    // A stale route of ours for an address no VIP has, and another daemon's route.
    ns.ip(&format!(
        "route add blackhole 10.78.0.201/32 table {TABLE} proto {PROTOCOL}"
    ));
    ns.ip(&format!(
        "route add blackhole 10.78.0.202/32 table {TABLE} proto 12"
    ));
    let agent = lab.start_agent(false);

    assert!(
        wait_announced(&lab, true, Duration::from_secs(2)).is_some(),
        "{:?}\n{}",
        our_routes(&lab),
        lab.files.log_text()
    );
    assert_eq!(
        our_routes(&lab).len(),
        1,
        "stale route of ours removed: {:?}",
        our_routes(&lab)
    );
    assert_eq!(routes(&lab, "proto 12").len(), 1, "a foreign route stays");
    assert!(lab.files.log_text().contains("has another protocol number"));
    let status = lab.status_json();
    assert_eq!(status["vips"][0]["announced"], true, "{status}");
    assert_eq!(status["announce"]["table"], TABLE, "{status}");
    let (code, line) = check(&lab);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("ready: "), "{line}");

    // Every backend fails: the ring empties and the address is withdrawn with it.
    let stopped = Instant::now();
    for server in &mut lab.servers {
        *server = None;
    }
    let limit = Duration::from_millis(FALL * INTERVAL_MS + BOUND_MS);
    let withdrawn = wait_announced(&lab, false, Duration::from_secs(5)).map(|_| stopped.elapsed());
    println!("withdrawn {withdrawn:?} after the last backend stopped (limit {limit:?})");
    assert!(
        withdrawn.is_some_and(|t| t <= limit),
        "{}",
        lab.files.log_text()
    );
    assert!(lab
        .files
        .log_text()
        .contains("withdrawn: vip web has no backend to send to"));
    let (code, line) = check(&lab);
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("no VIP is servable"), "{line}");
    assert_eq!(lab.status_json()["vips"][0]["announced"], false);

    // Backends back: announced again.
    for (i, name) in NAMES.iter().enumerate() {
        lab.servers[i] = Some(NameServer::start(&lab.lan.host(2 + i).ns, PORT, name));
    }
    assert!(
        wait_announced(&lab, true, Duration::from_secs(5)).is_some(),
        "{}",
        lab.files.log_text()
    );

    // `announce = false` by reload: withdrawn; back to true: announced.
    let quiet = lab
        .config_text(&[1, 1, 1], ANNOUNCE, &lab.files.state_dir)
        .replace(
            "forward = \"dsr\"\n",
            "forward = \"dsr\"\nannounce = false\n",
        );
    lab.files.write_config(&quiet);
    assert!(wait_announced(&lab, false, Duration::from_secs(5)).is_some());
    assert!(lab
        .files
        .log_text()
        .contains("vip web has announce = false"));
    lab.write_config(&[1, 1, 1], ANNOUNCE);
    assert!(wait_announced(&lab, true, Duration::from_secs(5)).is_some());

    // Graceful stop: withdrawn at once, forwarding goes on for the drain, then detached.
    agent.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    assert!(wait_announced(&lab, false, Duration::from_secs(1)).is_some());
    println!("withdrawn {:?} after SIGTERM", signalled.elapsed());
    let (code, line) = check(&lab);
    assert_eq!(code, 1, "not ready while draining: {line}");
    assert!(line.contains("is stopping"), "{line}");
    let answers = lab.connect(10);
    assert!(
        failures(&answers).is_empty(),
        "forwarding during the drain: {answers:?}"
    );
    assert!(
        lab.files.state_dir.join("link").exists(),
        "still attached during the drain"
    );
    assert!(
        lab.wait_until(Duration::from_secs(5), || !lab
            .files
            .state_dir
            .join("link")
            .exists())
            .is_some(),
        "detached after the drain"
    );
    let drained = signalled.elapsed();
    assert!(
        drained >= Duration::from_millis(1500),
        "drained for {drained:?}"
    );
    assert!(lab.files.log_text().contains("graceful stop"));
    // How long each route change took to reach the kernel (the netlink round trip).
    let took: Vec<u64> = lab
        .files
        .log_text()
        .lines()
        .filter_map(|line| line.split("netlink_us=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    println!(
        "netlink round trips of {} route changes (µs): {took:?}",
        took.len()
    );
    assert!(took.len() >= 6, "every change logged its netlink time");
    assert_eq!(
        routes(&lab, "proto 12").len(),
        1,
        "the foreign route is still there"
    );
}

#[test]
fn a_kept_datapath_keeps_its_route_and_the_next_agent_reconciles_without_a_flap() {
    let lab = AgentLab::new("announce-keep");
    lab.write_config(&[1, 1, 1], ANNOUNCE);
    let agent = lab.start_agent(true);
    assert!(wait_announced(&lab, true, Duration::from_secs(2)).is_some());
    agent.stop(Signal::SIGKILL);
    assert!(announced(&lab), "kill -9 leaves the route");
    let answers = lab.connect(20);
    assert!(
        failures(&answers).is_empty(),
        "the pinned program forwards: {answers:?}"
    );

    // A second agent: the route stays in place throughout; a stale one of ours goes.
    lab.lan.host(1).ns.ip(&format!(
        "route add blackhole 10.78.0.201/32 table {TABLE} proto {PROTOCOL}"
    ));
    let before = lab.files.log_text().matches("withdrawn").count();
    let agent = lab.start_agent(false);
    assert!(announced(&lab));
    assert!(
        lab.wait_until(Duration::from_secs(2), || our_routes(&lab).len() == 1)
            .is_some(),
        "{:?}",
        our_routes(&lab)
    );
    let log = lab.files.log_text();
    let withdrawals: Vec<&str> = log.lines().filter(|l| l.contains("withdrawn")).collect();
    assert_eq!(withdrawals.len() - before, 1, "{withdrawals:?}");
    assert!(
        withdrawals
            .last()
            .is_some_and(|l| l.contains("10.78.0.201")),
        "{withdrawals:?}"
    );
    let stops = lab.files.log_text().matches("graceful stop:").count();
    agent.signal(Signal::SIGTERM);
    assert!(lab
        .files
        .wait_log("graceful stop:", stops + 1, Duration::from_secs(2)));
    agent.signal(Signal::SIGTERM);
    let mut agent = agent;
    assert!(
        lab.wait_until(Duration::from_secs(1), || !agent.is_running())
            .is_some(),
        "a second SIGTERM ends the drain at once"
    );
    assert!(!announced(&lab));
}
