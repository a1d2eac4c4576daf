//! `lb run` end to end in network namespaces: a client, the load balancer and three DSR
//! backends on one bridge. The agent is the real binary; the test watches the pinned maps and
//! real TCP connections.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_tests::netns::{
    agent::{AgentProcess, Signal},
    connections::{assert_echo, assert_none_failed, count, failed, failures, Opener},
    dsr_lab::*,
    servers::NameServer,
    wait_every,
};
use lb_user::datapath::Datapath;

#[test]
fn a_failed_backend_leaves_the_ring_and_returns_after_recovery() {
    let mut lab = AgentLab::new("failover");
    let agent = lab.start_agent(false);
    let answers = lab.connect(30);
    assert!(
        failures(&answers).is_empty(),
        "{:?}\n{}",
        failures(&answers),
        lab.files.log_text()
    );
    assert!(
        NAMES.iter().all(|n| count(&answers, n) > 0),
        "all backends serve: {answers:?}"
    );

    // Stop b1's listener: connections to it are refused, health checks fail.
    let stopped = Instant::now();
    lab.servers[0] = None;
    let detect = Duration::from_millis(FALL * INTERVAL_MS + BOUND_MS);
    let detected = lab
        .wait_until(Duration::from_secs(5), || !lab.in_ring(0))
        .map(|_| stopped.elapsed());
    println!("detection time: {detected:?} (limit {detect:?})");
    let detected =
        detected.unwrap_or_else(|| panic!("b1 never left the ring:\n{}", lab.files.log_text()));
    assert!(
        detected <= detect,
        "b1 left the ring after {detected:?}, limit {detect:?}"
    );
    // The agent logs a state change once the datapath reflects it: just after the ring
    // changed, on a busy machine not yet.
    assert!(
        lab.wait_until(Duration::from_secs(2), || lab
            .files
            .log_text()
            .contains("failed checks"))
            .is_some(),
        "state change logged with its reason:\n{}",
        lab.files.log_text()
    );

    let answers = lab.connect(30);
    assert!(
        failures(&answers).is_empty(),
        "connections after failover: {:?}",
        failures(&answers)
    );
    assert_eq!(
        count(&answers, "b1"),
        0,
        "no new connection reaches the failed backend"
    );

    // Start it again: back after `rise` successful checks.
    let restarted = Instant::now();
    lab.servers[0] = Some(NameServer::start(&lab.lan.host(2).ns, PORT, "b1"));
    let back = lab
        .wait_until(Duration::from_secs(5), || lab.in_ring(0))
        .map(|_| restarted.elapsed());
    println!("recovery time: {back:?}");
    let back = back.unwrap_or_else(|| panic!("b1 never returned:\n{}", lab.files.log_text()));
    assert!(
        back <= Duration::from_millis(RISE * INTERVAL_MS + BOUND_MS),
        "b1 returned after {back:?}"
    );
    let answers = lab.connect(40);
    assert!(failures(&answers).is_empty());
    assert!(count(&answers, "b1") > 0, "b1 serves again: {answers:?}");

    // SIGTERM without --keep-datapath detaches and removes the pins.
    let status = agent.stop(Signal::SIGTERM);
    assert!(
        status.success(),
        "agent exit: {status}\n{}",
        lab.files.log_text()
    );
    assert!(
        !lab.files.state_dir.exists(),
        "state directory removed on a plain stop"
    );
}

#[test]
fn drain_and_reload_keep_established_connections() {
    let lab = AgentLab::new("drain");
    let agent = lab.start_agent(false);
    let mut held = lab.hold(30);
    assert!(
        held.iter().any(|held| held.backend == "b1"),
        "some held connection on b1"
    );
    let ring_before = lab.ring();

    // Weight 0 for b1, by editing the file (no signal): existing flows stay, no new ones.
    lab.write_config(&[0, 1, 1], "");
    assert!(
        lab.files.wait_log("reloaded", 1, Duration::from_secs(5)),
        "no reload:\n{}",
        lab.files.log_text()
    );
    assert_echo(&mut held, "still there");
    let answers = lab.connect(30);
    assert!(failures(&answers).is_empty(), "{:?}", failures(&answers));
    assert_eq!(
        count(&answers, "b1"),
        0,
        "a draining backend gets no new connections"
    );
    assert_ne!(lab.ring(), ring_before, "ring rebuilt");

    // An invalid file is rejected; forwarding goes on unchanged.
    let ring_drained = lab.ring();
    lab.files
        .write_config("interface = \"eth0\"\ntable_size = 65536\n");
    assert!(
        lab.files.wait_log("rejected", 1, Duration::from_secs(5)),
        "invalid file not reported:\n{}",
        lab.files.log_text()
    );
    assert!(
        lab.files.log_text().contains("table_size"),
        "the error names the key"
    );
    assert_eq!(lab.ring(), ring_drained, "an invalid file changes nothing");
    let answers = lab.connect(20);
    assert!(failures(&answers).is_empty(), "{:?}", failures(&answers));

    // A valid change: b1 back with weight 2; held connections unaffected.
    lab.write_config(&[2, 1, 1], "");
    assert!(
        lab.files.wait_log("reloaded", 2, Duration::from_secs(5)),
        "no second reload:\n{}",
        lab.files.log_text()
    );
    assert_echo(&mut held, "after reweight");
    let answers = lab.connect(40);
    assert!(failures(&answers).is_empty());
    assert!(
        count(&answers, "b1") > 0,
        "reweighted b1 gets connections: {answers:?}"
    );

    // SIGHUP re-reads the file too.
    agent.signal(Signal::SIGHUP);
    assert!(
        lab.files
            .wait_log("reload (SIGHUP)", 1, Duration::from_secs(5)),
        "SIGHUP ignored:\n{}",
        lab.files.log_text()
    );

    // A setting only a restart applies is warned about once, however often the file is read;
    // the rest of the file still reloads.
    lab.write_config(&[1, 1, 1], "conntrack_size = 8192\n");
    assert!(
        lab.files.wait_log("reloaded", 3, Duration::from_secs(5)),
        "the weights did not reload:\n{}",
        lab.files.log_text()
    );
    agent.signal(Signal::SIGHUP);
    assert!(
        lab.files
            .wait_log("reload (SIGHUP)", 2, Duration::from_secs(5)),
        "SIGHUP ignored:\n{}",
        lab.files.log_text()
    );
    let log = lab.files.log_text();
    assert_eq!(
        log.matches("conntrack_size (").count(),
        1,
        "warned once:\n{log}"
    );
    assert!(log.contains("takes effect only after a restart"), "{log}");
}

#[test]
fn agent_killed_with_keep_datapath_loses_no_connection_and_is_adopted() {
    let lab = AgentLab::new("restart");
    let agent = lab.start_agent(true);
    let mut held = lab.hold(5);
    let ring_before = lab.ring();
    let held_flows: Vec<(lb_common::FlowKey, String)> = held
        .iter()
        .map(|held| {
            let IpAddr::V4(src) = held.local.ip() else {
                unreachable!()
            };
            let flow = lb_common::FlowKey::v4(
                src.octets(),
                [10, 78, 0, 100],
                held.local.port(),
                PORT,
                lb_common::maps::Protocol::Tcp,
            );
            (flow, held.backend.clone())
        })
        .collect();

    // A client opens connections continuously while the agent is killed and restarted.
    let opener = Opener::start(
        &lab.lan.host(0).ns,
        lab.vip(),
        Duration::from_millis(5),
        Duration::from_secs(2),
    );
    let crossed = |what: &str| {
        assert!(
            opener.wait_attempts(30, Duration::from_secs(10)),
            "no new connections {what}"
        );
    };
    crossed("before the kill");
    agent.stop(Signal::SIGKILL);
    crossed("while no agent runs");
    let _agent = lab.start_agent(true);
    assert!(
        lab.files
            .log_text()
            .contains("adopted the running datapath"),
        "{}",
        lab.files.log_text()
    );
    crossed("after the restart");
    let attempts = opener.stop();
    let failed = failed(&attempts);
    println!(
        "{} connections during kill -9 and restart, {} failed",
        attempts.len(),
        failed.len()
    );
    assert!(
        attempts.len() > 20,
        "the client kept connecting ({})",
        attempts.len()
    );
    assert_none_failed(&attempts);

    // Adopted: same ring, conntrack intact, held connections still work.
    assert_eq!(
        lab.ring(),
        ring_before,
        "the restarted agent keeps the ring"
    );
    let mut datapath = Datapath::open_pinned(&lab.files.state_dir).expect("open");
    for (flow, name) in &held_flows {
        assert!(
            datapath.conntrack(flow).expect("conntrack").is_some(),
            "tracked flow to {name} survived"
        );
    }
    assert_echo(&mut held, "after restart");
}

#[test]
fn a_backend_whose_mac_changes_while_healthy_is_followed() {
    let lab = AgentLab::new("newmac");
    let _agent = lab.start_agent(false);
    let answers = lab.connect(30);
    assert!(failures(&answers).is_empty(), "{:?}", failures(&answers));
    // The kernel overrides a neighbour entry with an unsolicited ARP only once it is 1 s old
    // (locktime): let the agent's resolution age first.
    std::thread::sleep(Duration::from_millis(1200));

    // b1's NIC is replaced and announced by gratuitous ARP (arp_notify), as a migrating VM or a
    // swapped machine is: the load balancer's neighbour table learns the new MAC, health checks
    // go on passing. Frames to the old MAC would be dropped by b1 now.
    let new_mac = [0x02, 0x00, 0x00, 0x00, 0x0b, 0x01];
    let b1 = &lab.lan.host(2).ns;
    b1.exec("sysctl -qw net.ipv4.conf.eth0.arp_notify=1");
    b1.ip(&format!(
        "link set eth0 address {}",
        lb_user::nexthop::format_mac(&new_mac)
    ));
    let id = lab.backend_id(0);
    let followed = lab.wait_until(Duration::from_secs(5), || {
        let mut datapath = Datapath::open_pinned(&lab.files.state_dir).expect("open pinned maps");
        datapath.backend(id).expect("backend").dst_mac == new_mac
    });
    println!("new MAC in BACKENDS after {followed:?}");
    assert!(
        followed.is_some(),
        "b1's new MAC never reached BACKENDS:\n{}",
        lab.files.log_text()
    );
    assert!(
        lab.files.log_text().contains("next hop changed"),
        "the change is logged"
    );
    assert!(lab.in_ring(0), "b1 stayed in the ring");

    let answers = lab.connect(60);
    assert!(
        failures(&answers).is_empty(),
        "connections after the MAC change: {:?}",
        failures(&answers)
    );
    assert!(count(&answers, "b1") > 0, "b1 still serves: {answers:?}");
}

#[test]
fn an_adopting_agent_reports_the_mode_the_program_runs_in() {
    let lab = AgentLab::new("adoptmode");
    lab.write_config(&[1, 1, 1], "xdp_mode = \"generic\"");
    let first = lab.start_agent(true);
    first.stop(Signal::SIGKILL);
    // The restarted agent is configured for "auto" (native first), but adopts the generic link.
    lab.write_config(&[1, 1, 1], "");
    let _second = lab.start_agent(true);
    let log = lab.files.log_text();
    let adopted = log
        .lines()
        .find(|l| l.contains("adopted the running datapath"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        adopted.contains("Skb"),
        "adopted link reported in the mode it runs in: {adopted}"
    );
    let output = std::process::Command::new(lb_tests::netns::agent::lb_binary())
        .args(["status", "--json", "--state-dir"])
        .arg(&lab.files.state_dir)
        .output()
        .expect("lb status");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(status["xdp_mode"], "generic", "{status}");
    let answers = lab.connect(10);
    assert!(failures(&answers).is_empty(), "{:?}", failures(&answers));
}

/// Start-up programs each VIP as soon as its own backends have had their first check: a VIP
/// whose only backend does not answer (its first check waits out a 4 s timeout) does not hold
/// back another VIP, whose backends are up in the datapath while that check still runs.
#[test]
fn a_vip_is_programmed_while_another_vips_first_check_runs() {
    let lab = AgentLab::new("firstround");
    let mut text =
        lab.config_text_with_health(&[1, 1, 1], "", "target = \"backend\"", &lab.files.state_dir);
    // 10.77.0.250 is on the lab's link but nobody's: its check's SYN waits for ARP in vain.
    text += "\n[[vip]]\nname = \"slow\"\naddress = \"10.78.0.101\"\nport = 8080\n\
             health = { interval = \"10s\", timeout = \"4s\" }\n\
             \n  [[vip.backend]]\n  address = \"10.77.0.250\"\n";
    lab.files.write_config(&text);
    // (ARP gives up after 6 s, not 3: the check's timeout ends it.)
    lab.lan
        .host(1)
        .ns
        .sysctl("net.ipv4.neigh.eth0.retrans_time_ms", "2000");
    let started = Instant::now();
    let _agent = AgentProcess::start(&lab.lan.host(1).ns, &lab.files, false);
    let waited = wait_every(Duration::from_secs(3), Duration::from_millis(20), || {
        lab.files.backends_up() == 3
    });
    let programmed = started.elapsed();
    assert!(
        waited.is_some(),
        "web's backends not up within 3 s:\n{}",
        lab.files.log_text()
    );
    assert!(
        !lab.files.log_text().contains("datapath attached"),
        "the slow VIP's first check ended before web was programmed ({programmed:?}): the test \
         proves nothing"
    );
    assert!(
        lab.files
            .wait_log("datapath attached", 1, Duration::from_secs(10)),
        "the agent never attached:\n{}",
        lab.files.log_text()
    );
    let log = lab.files.log_text();
    assert!(
        log.contains("backend 10.77.0.250 of vip slow: Unknown -> Down"),
        "{log}"
    );
}

/// Connections the kernel of backend `i`'s host has completed as a server (`PassiveOpens` of
/// its namespace's /proc/net/snmp).
fn passive_opens(lab: &AgentLab, i: usize) -> u64 {
    let snmp = lab.lan.host(2 + i).ns.exec("cat /proc/net/snmp");
    let mut tcp = snmp.lines().filter(|line| line.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().expect("Tcp names"),
        tcp.next().expect("Tcp values"),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "PassiveOpens")
        .and_then(|(_, value)| value.parse().ok())
        .expect("PassiveOpens")
}

/// TCP checks of the backends' own addresses are half-open over a real link: the SYNs reach
/// the backends (they come up), a closed port refuses and takes its backend down, and the
/// backends' hosts complete no connection for them, while a client's through the VIP counts.
#[test]
fn checks_of_backends_own_addresses_are_half_open() {
    let mut lab = AgentLab::new("halfopen");
    let text =
        lab.config_text_with_health(&[1, 1, 1], "", "target = \"backend\"", &lab.files.state_dir);
    lab.files.write_config(&text);
    let _agent = lab.start_agent(false);
    assert!(
        wait_every(Duration::from_secs(10), Duration::from_millis(20), || {
            lab.files.backends_up() == 3
        })
        .is_some(),
        "the backends never came up:\n{}",
        lab.files.log_text()
    );
    let before: Vec<u64> = (0..3).map(|i| passive_opens(&lab, i)).collect();
    // b2's listener goes: its next checks are refused, `fall` of them take it down, and the
    // others are checked as often meanwhile.
    lab.servers[1] = None;
    assert!(
        lab.wait_until(Duration::from_secs(5), || !lab.in_ring(1))
            .is_some(),
        "b2 never left the ring:\n{}",
        lab.files.log_text()
    );
    // Logged just after the ring swap.
    assert!(
        lab.files.wait_log(
            "failed checks: connection refused",
            1,
            Duration::from_secs(5)
        ),
        "{}",
        lab.files.log_text()
    );
    let after: Vec<u64> = (0..3).map(|i| passive_opens(&lab, i)).collect();
    assert_eq!(before, after, "the checks opened connections");
    // The counter counts: connections through the VIP to b1 and b3.
    let answers = lab.connect(10);
    assert!(failures(&answers).is_empty(), "{:?}", failures(&answers));
    let served: u64 = [0, 2]
        .iter()
        .map(|&i| passive_opens(&lab, i) - after[i])
        .sum();
    assert!(served >= 10, "{served} connections counted for 10 clients");
    assert_eq!(lab.status_json()["agent"]["tcp_checks"], "half-open");
}

/// Without `CAP_NET_RAW` the same checks connect: the agent says so at start-up and in its
/// status, the backends come up, and their hosts complete a connection for every check.
#[test]
fn without_raw_sockets_tcp_checks_connect() {
    let lab = AgentLab::new("connectchk");
    let text =
        lab.config_text_with_health(&[1, 1, 1], "", "target = \"backend\"", &lab.files.state_dir);
    lab.files.write_config(&text);
    let before: Vec<u64> = (0..3).map(|i| passive_opens(&lab, i)).collect();
    let _agent = AgentProcess::start_without_raw_sockets(&lab.lan.host(1).ns, &lab.files);
    assert!(
        lab.files
            .wait_log("datapath attached", 1, Duration::from_secs(15)),
        "the agent never attached:\n{}",
        lab.files.log_text()
    );
    assert!(
        wait_every(Duration::from_secs(10), Duration::from_millis(20), || {
            lab.files.backends_up() == 3
        })
        .is_some(),
        "the backends never came up:\n{}",
        lab.files.log_text()
    );
    let log = lab.files.log_text();
    assert!(
        log.contains(
            "TCP checks connect, a socket each: raw sockets for half-open checks are unavailable"
        ),
        "{log}"
    );
    assert_eq!(lab.status_json()["agent"]["tcp_checks"], "connect");
    for (i, before) in before.iter().enumerate() {
        assert!(
            passive_opens(&lab, i) > *before,
            "b{}'s host completed no connection for its checks",
            i + 1
        );
    }
}
