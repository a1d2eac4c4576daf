//! Upgrading under traffic (issue #12): a previous release's datapath (layouts 0, 1 and 2, set up
//! from their own objects, see `lb_tests::netns::previous`) carries long-lived connections and a
//! stream of new ones while today's agent starts on its state, with one backend more than the
//! old datapath knew (so the ring moves a third of the flows): the maps whose layout did not
//! change (VIPs, rings, backends) are kept, the others are created and filled (the old
//! `CONNTRACK`'s flows converted into `FLOWS`), the program is replaced inside the pinned link,
//! and nothing breaks: the long-lived connections the new ring would send elsewhere stay on
//! their backend. Pinned state of a layout this lb does
//! not know is refused with a clear error while the old datapath keeps forwarding, and
//! `--fresh-state` replaces it without stopping traffic.

use std::{process::Command, time::Duration};

use lb_common::{
    layout::{Layout, LAYOUT_VERSION},
    stats::Counter,
};
use lb_tests::netns::{
    agent::{lb_binary, AgentProcess, Signal},
    connections::{assert_echo, failed, failures, Attempt, Opener},
    dsr_lab::*,
    previous::{self, OldBackend, Release},
};
use lb_user::datapath::Datapath;

/// The agent lab's `conntrack_size` (the pinned CONNTRACK's size).
const CONNTRACK_SIZE: u32 = 65536;

/// Backends the old datapath knows: the lab's first two of three.
const OLD_BACKENDS: usize = 2;

/// Sets up `release`'s datapath on the lab's load balancer, over its first two backends.
fn start_old(lab: &AgentLab, release: Release) {
    let backends: Vec<OldBackend> = (0..OLD_BACKENDS)
        .map(|i| OldBackend {
            id: i as u32,
            address: lab.backend_ip(i),
            mac: lab.lan.host(2 + i).mac,
        })
        .collect();
    previous::start(
        release,
        &lab.lan.host(1).ns,
        &lab.files.state_dir,
        "eth0",
        CONNTRACK_SIZE,
        (VIP.parse().expect("vip"), PORT),
        &backends,
    );
}

/// New connections from the lab's client every 10 ms while the datapath is replaced, each
/// failed without a greeting within 900 ms (under the SYN retransmission time: a lost SYN is a
/// failure, not a late success).
fn open(lab: &AgentLab) -> Opener {
    Opener::start(
        &lab.lan.host(0).ns,
        lab.vip(),
        Duration::from_millis(10),
        Duration::from_millis(900),
    )
}

/// Waits until `n` more new connections of `opener` have finished: the traffic that crossed
/// what just happened.
fn traffic_crosses(opener: &Opener, n: usize, what: &str) {
    assert!(
        opener.wait_attempts(n, Duration::from_secs(10)),
        "no new connections {what}"
    );
}

/// Stops `opener`: the connections answered, and the failed attempts.
fn stop(opener: Opener) -> (usize, Vec<Attempt>) {
    let attempts = opener.stop();
    let ok = attempts.len() - failed(&attempts).len();
    let failed = failed(&attempts).into_iter().cloned().collect();
    (ok, failed)
}

#[test]
fn an_upgrade_from_layout_0_under_traffic_breaks_nothing() {
    upgrade_under_traffic(Release::V0);
}

#[test]
fn an_upgrade_from_layout_1_under_traffic_breaks_nothing() {
    upgrade_under_traffic(Release::V1);
}

#[test]
fn an_upgrade_from_layout_2_under_traffic_breaks_nothing() {
    upgrade_under_traffic(Release::V2);
}

fn upgrade_under_traffic(release: Release) {
    let from = release.layout_version();
    let lab = AgentLab::new(&format!("upgrade{from}"));
    start_old(&lab, release);
    let mut held = lab.hold(24);
    let old_names = &NAMES[..OLD_BACKENDS];
    assert!(
        held.iter()
            .all(|held| old_names.contains(&held.backend.as_str())),
        "the old datapath knows two backends"
    );
    let answers = lab.connect(30);
    assert!(
        failures(&answers).is_empty(),
        "the old datapath forwards: {answers:?}"
    );
    let tx_before = {
        let output = lab.lb(&["stats", "--json"]);
        // Today's CLI does not read another layout's maps: it says so plainly.
        assert!(!output.status.success());
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains(&format!("has layout version {from}, from an older lb")),
            "{said}"
        );
        let stats = aya::maps::PerCpuArray::<_, u64>::try_from(aya::maps::Map::PerCpuArray(
            aya::maps::MapData::from_pin(lab.files.state_dir.join("STATS")).expect("old STATS"),
        ))
        .expect("per-CPU array");
        let tx: u64 = stats
            .get(&(Counter::Tx as u32), 0)
            .expect("tx")
            .iter()
            .sum();
        tx
    };
    assert!(tx_before > 0);

    let opener = open(&lab);
    traffic_crosses(&opener, 20, "before the upgrade");
    let agent = lab.start_agent(true);
    traffic_crosses(&opener, 30, "after the upgrade");
    let (ok, failed) = stop(opener);
    println!(
        "during the upgrade: {ok} connections ok, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}\n{}", lab.files.log_text());
    assert!(ok > 20);
    let log = lab.files.log_text();
    assert!(
        log.contains(&format!(
            "migrating the pinned state from layout {from} to {LAYOUT_VERSION}"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "pinned state migrated from layout {from} to {LAYOUT_VERSION}"
        )),
        "{log}"
    );

    assert_echo(&mut held, "after the upgrade");
    // Conntrack was carried over: every connection opened through the old datapath is
    // tracked to its backend, also those the new ring sends to the third backend.
    let mut moved_by_the_ring = 0;
    for held in &held {
        let explained = lab.explain(held.local.port());
        assert_eq!(explained["reason"], "tracked", "{explained}");
        // Carried over established: a flood after the upgrade cannot evict them.
        assert_eq!(
            explained["tracking"]["class"], "tcp_established",
            "{explained}"
        );
        assert_eq!(explained["tracking"]["protected"], true, "{explained}");
        let backend = lab.backend_ip(NAMES.iter().position(|n| *n == held.backend).expect("name"));
        assert_eq!(
            explained["backend"],
            backend.to_string().as_str(),
            "{explained}"
        );
        if explained["ring_backend"] != explained["backend"] {
            moved_by_the_ring += 1;
        }
    }
    println!(
        "{moved_by_the_ring} of {} long-lived connections kept their backend against the new ring",
        held.len()
    );
    assert!(
        moved_by_the_ring > 0,
        "the new ring must move some flows, or this test proves nothing"
    );
    assert!(
        !lab.files.state_dir.join("CONNTRACK").exists(),
        "the old map's pin is removed"
    );

    // Every command works on the migrated state; counters were carried over.
    for args in [
        &["stats", "--json"][..],
        &["status", "--json"],
        &["status", "--check"],
    ] {
        let output = lab.lb(args);
        assert!(
            output.status.success(),
            "lb {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stats: serde_json::Value =
        serde_json::from_slice(&lab.lb(&["stats", "--json"]).stdout).expect("stats");
    let tx = stats["global"]["tx"].as_u64().expect("tx");
    assert!(
        tx >= tx_before,
        "tx {tx} < {tx_before} counted before the upgrade"
    );
    assert!(stats["global"].get("other_mac").is_some());
    let mut datapath = Datapath::open_pinned(&lab.files.state_dir).expect("open");
    assert_eq!(datapath.layout().expect("layout"), Layout::CURRENT);
    assert!(!lab.files.state_dir.join("upgrading").exists());
    drop(datapath);

    // The next start is a plain adoption.
    agent.stop(Signal::SIGKILL);
    let _agent = lab.start_agent(true);
    let log = lab.files.log_text();
    assert_eq!(log.matches("pinned state migrated").count(), 1, "{log}");
    assert!(log.contains("adopted the running datapath"), "{log}");
    let answers = lab.connect(20);
    assert!(failures(&answers).is_empty(), "{answers:?}");
}

/// `lb run --fresh-state` on the lab's configuration, in the load balancer's namespace, logging
/// where the lab's agents log.
fn start_fresh(lab: &AgentLab) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&lab.files.log)
        .expect("log");
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", lab.lan.host(1).ns.name))
        .arg(lb_binary())
        .args(["run", "--fresh-state", "--config"])
        .arg(&lab.files.config)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    command.spawn().expect("lb run --fresh-state")
}

#[test]
fn fresh_state_on_an_older_layout_recreates_every_map_without_stopping_traffic() {
    let lab = AgentLab::new("upgrade-fresh");
    start_old(&lab, Release::V1);
    let answers = lab.connect(10);
    assert!(failures(&answers).is_empty(), "{answers:?}");
    let opener = open(&lab);
    let mut fresh = start_fresh(&lab);
    assert!(
        lab.files
            .wait_log("datapath attached", 1, Duration::from_secs(15)),
        "{}",
        lab.files.log_text()
    );
    traffic_crosses(&opener, 30, "after --fresh-state");
    let (ok, failed) = stop(opener);
    println!(
        "--fresh-state on layout 1: {ok} ok, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    let log = lab.files.log_text();
    assert!(
        log.contains("FLOWS (new)") && !log.contains("tracked flows of"),
        "every map recreated, no flow carried: {log}"
    );
    assert!(!lab.files.state_dir.join("CONNTRACK").exists());
    let mut datapath = Datapath::open_pinned(&lab.files.state_dir).expect("open");
    assert_eq!(datapath.layout().expect("layout"), Layout::CURRENT);
    let _ = fresh.kill();
    let _ = fresh.wait();
}

#[test]
fn a_layout_this_lb_does_not_know_is_refused_and_keeps_forwarding() {
    let lab = AgentLab::new("upgrade-refused");
    let agent = lab.start_agent(true);
    let mut held = lab.hold(10);
    agent.stop(Signal::SIGKILL);
    // A newer lb's state: its LAYOUT says so.
    {
        let mut datapath = Datapath::open_pinned(&lab.files.state_dir).expect("open");
        datapath
            .set_layout(&Layout {
                version: 99,
                ..Layout::CURRENT
            })
            .expect("layout");
    }
    let attached = lab.attached_count();
    let mut refused = AgentProcess::start(&lab.lan.host(1).ns, &lab.files, true);
    assert!(
        lab.wait_until(Duration::from_secs(10), || !refused.is_running())
            .is_some(),
        "the agent must refuse"
    );
    let log = lab.files.log_text();
    assert!(
        log.contains(&format!(
            "has layout version 99, newer than this lb's {LAYOUT_VERSION}"
        )) && log.contains("--fresh-state"),
        "{log}"
    );
    assert_eq!(lab.attached_count(), attached, "nothing was attached");
    let answers = lab.connect(20);
    assert!(
        failures(&answers).is_empty(),
        "the running datapath forwards: {answers:?}"
    );
    let output = lab.lb(&["status"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("newer than this lb's"));

    // `--fresh-state` replaces the maps without stopping traffic: the rings are the same, so
    // even the connections it no longer tracks land on their backend again.
    let opener = open(&lab);
    let mut fresh = start_fresh(&lab);
    assert!(
        lab.files
            .wait_log("datapath attached", attached + 1, Duration::from_secs(15)),
        "{}",
        lab.files.log_text()
    );
    traffic_crosses(&opener, 30, "after --fresh-state");
    let (ok, failed) = stop(opener);
    println!("during --fresh-state: {ok} ok, {} failed", failed.len());
    assert!(failed.is_empty(), "{failed:?}");
    assert_echo(&mut held, "fresh");
    let mut datapath = Datapath::open_pinned(&lab.files.state_dir).expect("open");
    assert_eq!(datapath.layout().expect("layout"), Layout::CURRENT);
    assert!(datapath
        .counter(Counter::Tx)
        .is_ok_and(|tx| tx > 0 && tx < 1_000_000));
    let _ = fresh.kill();
    let _ = fresh.wait();
}
