//! The operator commands against a running agent after real traffic: `lb stats` (totals, JSON,
//! `--watch` rates), `lb status`, `lb explain` (agrees with where 200 real connections landed),
//! and the error for a missing datapath.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    process::{Command, Output},
};

use lb_tests::netns::{agent::lb_binary, connections::greet, dsr_lab::*};
use serde_json::Value;

fn lb(args: &[&str]) -> Output {
    Command::new(lb_binary())
        .args(args)
        .output()
        .expect("run lb")
}

fn lb_json(args: &[&str]) -> Value {
    let output = lb(args);
    assert!(
        output.status.success(),
        "lb {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("lb {args:?} printed no JSON ({e})"))
}

fn lb_text(args: &[&str]) -> String {
    let output = lb(args);
    assert!(
        output.status.success(),
        "lb {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Opens a connection, reads the backend's name, closes; returns (client port, name).
fn connect_once(vip: SocketAddr) -> (u16, String) {
    let held = greet(vip).unwrap_or_else(|e| panic!("connection to {vip}: {e}"));
    (held.local.port(), held.backend)
}

#[test]
fn stats_status_and_explain_describe_real_traffic() {
    let lab = AgentLab::new("cli");
    let _agent = lab.start_agent(false);
    let state_dir = lab.files.state_dir.to_string_lossy().into_owned();
    let vip = SocketAddr::new(VIP.parse().expect("vip"), PORT);
    let client_ip = lab.lan.host(0).ip;
    let names: HashMap<String, &str> = (0..3)
        .map(|i| (lab.backend_ip(i).to_string(), NAMES[i]))
        .collect();

    let connections: Vec<(u16, String)> = lab
        .lan
        .host(0)
        .ns
        .run(|| (0..200).map(|_| connect_once(vip)).collect());

    // explain agrees with every real connection (through the library, with the CLI's code)...
    let mut view = lb_user::cli::View::open(&lab.files.state_dir).expect("view");
    for (port, name) in &connections {
        let client = SocketAddr::new(IpAddr::V4(client_ip), *port);
        let e = lb_user::cli::explain(&mut view, vip, lb_common::maps::Protocol::Tcp, client)
            .expect("explain");
        let predicted = e.backend.as_deref().map(|a| names[a]);
        assert_eq!(predicted, Some(name.as_str()), "client port {port}: {e:?}");
        assert_eq!(
            e.ring_backend, e.backend,
            "unchanged ring: tracked and ring agree"
        );
    }
    // ...and through the binary, human and JSON.
    for (port, name) in connections.iter().take(5) {
        let client = format!("{client_ip}:{port}");
        let json = lb_json(&[
            "explain",
            "--state-dir",
            &state_dir,
            "--vip",
            &format!("{VIP}:{PORT}/tcp"),
            "--client",
            &client,
            "--json",
        ]);
        assert_eq!(names[json["backend"].as_str().expect("backend")], name);
        assert_eq!(json["reason"], "tracked", "{json}");
        let text = lb_text(&[
            "explain",
            "--state-dir",
            &state_dir,
            "--vip",
            &format!("{VIP}:{PORT}/tcp"),
            "--client",
            &client,
        ]);
        assert!(
            text.contains("tracked flow") && text.contains(json["backend"].as_str().expect("b")),
            "{text}"
        );
    }

    // stats: numbers as numbers, bounded by the packets sent.
    let stats = lb_json(&["stats", "--state-dir", &state_dir, "--json"]);
    let web = &stats["vips"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["address"], VIP);
    assert_eq!(web["port"], PORT);
    assert_eq!(web["protocol"], "tcp");
    let packets = web["packets"].as_u64().expect("packets");
    let new_flows = web["new_flows"].as_u64().expect("new_flows");
    assert!(
        (200..=210).contains(&new_flows),
        "one new flow per connection (plus SYN retransmits): {new_flows}"
    );
    assert!(
        packets >= 4 * 200,
        "SYN, ACKs, FIN per connection: {packets}"
    );
    assert_eq!(
        web["conntrack_hits"].as_u64().expect("hits") + new_flows,
        packets,
        "every packet is a hit or a ring lookup"
    );
    let backends = web["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 3);
    let backend_packets: u64 = backends
        .iter()
        .map(|b| b["packets"].as_u64().expect("packets"))
        .sum();
    assert_eq!(
        backend_packets, packets,
        "every VIP packet went to a backend"
    );
    for b in backends {
        assert_eq!(b["state"], "up");
        assert_eq!(b["weight"], 1);
        let landed = connections
            .iter()
            .filter(|(_, n)| n == names[b["address"].as_str().expect("a")])
            .count() as u64;
        assert_eq!(
            b["new_flows"].as_u64().expect("new_flows"),
            landed,
            "backend {} flows",
            b["address"]
        );
        assert!(b["bytes"].as_u64().expect("bytes") > 0);
    }
    assert_eq!(
        stats["global"]["tx"].as_u64().expect("tx"),
        packets,
        "all VIP packets sent with XDP_TX"
    );
    assert!(stats["global"]["parse_error"].is_u64());
    let text = lb_text(&["stats", "--state-dir", &state_dir]);
    assert!(
        text.contains("vip web") && text.contains("verdicts:"),
        "{text}"
    );

    // --watch prints rates, briefly, while traffic flows.
    let traffic = lab.lan.host(0).ns.spawn(move || {
        for _ in 0..150 {
            connect_once(vip);
        }
    });
    let watch = lb_text(&[
        "stats",
        "--state-dir",
        &state_dir,
        "--watch",
        "300ms",
        "--count",
        "2",
    ]);
    traffic.join().expect("traffic");
    assert_eq!(watch.matches("vip web:").count(), 2, "{watch}");
    assert!(
        watch.contains("pps") && watch.contains("bit/s") && watch.contains("new flows/s"),
        "{watch}"
    );
    let rates = lb_text(&[
        "stats",
        "--state-dir",
        &state_dir,
        "--watch",
        "100ms",
        "--count",
        "1",
        "--json",
    ]);
    let rates: Value = serde_json::from_str(rates.trim()).expect("rates JSON");
    assert!(
        rates["vips"][0]["pps"].is_number()
            && rates["interval_seconds"].as_f64().expect("interval") > 0.0
    );

    // status: health, weight, ring share, last check, fingerprint.
    let status = lb_json(&["status", "--state-dir", &state_dir, "--json"]);
    assert_eq!(status["interface"], "eth0");
    assert!(status["program_id"].as_u64().expect("program id") > 0);
    assert_eq!(status["agent"]["running"], true);
    let web = &status["vips"][0];
    assert_eq!(web["ring_size"], 65537);
    assert_eq!(
        web["ring_fingerprint"].as_str().expect("fingerprint").len(),
        12
    );
    let shares: f64 = web["backends"]
        .as_array()
        .expect("b")
        .iter()
        .map(|b| b["share"].as_f64().expect("share"))
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "shares add up: {shares}");
    for b in web["backends"].as_array().expect("backends") {
        assert_eq!(b["state"], "up");
        assert!(
            (0.32..0.35).contains(&b["share"].as_f64().expect("share")),
            "{b}"
        );
        assert_eq!(b["last_check_ok"], true);
        assert!(b["last_check_latency_us"].is_u64() && b["since_change_seconds"].is_number());
    }
    let text = lb_text(&["status", "--state-dir", &state_dir]);
    assert!(
        text.contains("fingerprint") && text.contains("ok in") && text.contains("native XDP"),
        "{text}"
    );

    // lb status takes the ring's fingerprint and slots from the agent's snapshot while the
    // kernel uses the ring map it names; read from the kernel and hashed, they are the same.
    let mut view = lb_user::cli::View::open(&lab.files.state_dir).expect("view");
    let described = lb_user::cli::status(&mut view, None).expect("status");
    let snapshot = view.snapshot.as_mut().expect("the agent's snapshot");
    assert!(
        snapshot.vips[0]
            .ring
            .is_some_and(|ring| ring.fingerprint.is_some()),
        "the agent describes the ring it swapped in: {:?}",
        snapshot.vips[0].ring
    );
    snapshot.vips[0].ring = None;
    let read = lb_user::cli::status(&mut view, None).expect("status");
    let (described, read) = (&described.vips[0], &read.vips[0]);
    assert_eq!(described.ring_fingerprint, read.ring_fingerprint);
    assert_eq!(described.ring_size, read.ring_size);
    assert_eq!(described.servable, read.servable);
    let slots = |vip: &lb_user::cli::VipStatusReport| -> Vec<(String, u32)> {
        vip.backends
            .iter()
            .map(|b| (b.address.clone(), b.slots))
            .collect()
    };
    assert_eq!(slots(described), slots(read));
    assert_eq!(
        slots(read).iter().map(|(_, n)| n).sum::<u32>(),
        65537,
        "every slot counted"
    );
}

#[test]
fn commands_without_a_datapath_say_how_to_start_one() {
    for command in ["stats", "status"] {
        let output = lb(&[command, "--state-dir", "/sys/fs/bpf/lb-no-such-state"]);
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("no lb datapath at /sys/fs/bpf/lb-no-such-state")
                && stderr.contains("lb run --config"),
            "{stderr}"
        );
    }
}
