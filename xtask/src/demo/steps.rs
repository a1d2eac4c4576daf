//! The narrated demo: the lab is built, the servers and the agent started, then steps a to d
//! run real connections, fail and restore a backend, catch a sick one with an HTTP check and
//! drain one at run time (`health`), and show what the agent and the CLI say.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::config::{config_text, BACKENDS, HOSTS, LB_IP, PORT, SUBNETS, VIP};
use super::lab::Lab;
use super::traffic::Tally;
use crate::header;

/// Time between the agent's log line of a state change and the next traffic (the agent logs
/// first, then swaps the ring).
const SETTLE: Duration = Duration::from_millis(250);

/// Runs every step; returns the failed checks (errors that make going on pointless are `Err`).
pub(super) fn narrate(lab: &Lab) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    let ns = |name: &str| lab.ns(name);

    header(&format!(
        "building the lab: network namespaces {}-*",
        lab.id
    ));
    println!(
        "Network namespaces stand in for machines. A bridge br0 (namespace {}) is the",
        ns("sw")
    );
    println!("switch; every other host has one cable (a veth pair) to it, called eth0:");
    println!();
    for (name, n) in HOSTS {
        let address = SUBNETS.host(n).ip.to_string();
        let role = match name {
            "client" => format!("routes the VIP {VIP} via lb ({LB_IP})"),
            "lb" => "runs `lb run` (XDP on eth0)".to_owned(),
            "router" => "the router of step e (a remote client behind it)".to_owned(),
            "lb2" => "a second lb instance (step e)".to_owned(),
            _ => format!("TCP server on port {PORT}, VIP {VIP} on lo"),
        };
        println!("    {name:<7} {address:<11} {:<18} {role}", ns(name));
    }
    println!();
    println!("VIP {VIP}:{PORT} is the service address clients use; no host owns it on eth0.");
    let t = Instant::now();
    lab.build_network()?;
    println!(
        "network ready, every link up ({:.1}s)",
        t.elapsed().as_secs_f64()
    );

    header("starting the backend servers (each answers with its own name, then echoes)");
    for (name, ..) in BACKENDS {
        lab.start_server(name)?;
    }
    lab.wait_servers(&["b1", "b2", "b3"], Duration::from_secs(10))?;
    for (name, address, _) in BACKENDS {
        println!(
            "{name}: listening on {address}:{PORT} (and on the VIP {VIP}:{PORT}, its lo address)"
        );
    }

    header("starting the agent: lb run --config (in namespace lb)");
    fs::write(
        &lab.config,
        config_text(&lab.state_dir.display().to_string()),
    )?;
    println!(
        "configuration {} (the same as examples/demo.toml):",
        lab.config.display()
    );
    println!(
        "    VIP \"web\" {VIP}:{PORT} tcp dsr, backends b1 weight 1, b2 weight 1, b3 weight 2"
    );
    println!("    health: every 500ms, timeout 200ms, down after 3 failures, up after 2 successes");
    let t = Instant::now();
    lab.start_agent()?;
    let line = lab.wait_log("datapath attached", 0, Duration::from_secs(30))?;
    println!(
        "the agent checked every backend once, programmed VIP and ring, and attached its XDP program ({:.1}s):",
        t.elapsed().as_secs_f64()
    );
    println!("    {line}");

    let all_up = [true, true, true];
    header("a. 300 connections from the client to the VIP");
    println!("Every connection is new and gets a fresh source port from the client's kernel. Its");
    println!("first packet (SYN) reaches lb's XDP program before the kernel sees it; the program");
    println!("hashes the 5-tuple onto the VIP's Maglev ring (b3 has twice the slots of b1 or b2),");
    println!("remembers the choice in connection tracking, rewrites the destination MAC to the");
    println!(
        "backend's and sends the frame back out of eth0 (XDP_TX). The backend, owning the VIP"
    );
    println!("on lo, accepts it and answers the client directly (direct server return).");
    let tally = traffic(lab, 300)?;
    tally.print(all_up);
    tally.check("a", all_up, &mut failures);

    header("b. b2 fails: its server is stopped");
    println!("Nothing tells lb; it notices because its health checks of b2 fail (they go to the");
    println!("VIP, steered to b2 as clients' packets are, and b2's own address is tried too).");
    println!("After 3 failed checks in a row (checks are 500 ms apart, so 1 to 1.5 s) b2 leaves");
    println!(
        "the ring: the agent builds a new ring without it and swaps it in with one map update."
    );
    let log_mark = lab.log_len();
    let t = Instant::now();
    lab.stop_process("server-b2")?;
    match lab.wait_log(
        "backend 10.99.0.12 of vip web: Up -> Down",
        log_mark,
        Duration::from_secs(10),
    ) {
        Ok(line) => {
            println!(
                "b2 detected down after {:.2}s; the agent logged:",
                t.elapsed().as_secs_f64()
            );
            println!("    {line}");
            settle();
        }
        Err(error) => {
            failures.push(format!("b. b2 was never detected down: {error:#}"));
            return Ok(failures);
        }
    }
    let b2_down = [true, false, true];
    println!("200 connections: b2 must get none and none may fail (b1 and b3 share its part 1:2).");
    let tally = traffic(lab, 200)?;
    tally.print(b2_down);
    println!("failed connections: {}", tally.failed);
    tally.check("b", b2_down, &mut failures);

    header("c. b2 comes back: its server is restarted");
    println!("The next 2 successful checks (about 1 s) bring b2 back into the ring.");
    let log_mark = lab.log_len();
    let t = Instant::now();
    lab.start_server("b2")?;
    match lab.wait_log(
        "backend 10.99.0.12 of vip web: Down -> Up",
        log_mark,
        Duration::from_secs(10),
    ) {
        Ok(line) => {
            println!(
                "b2 detected up after {:.2}s; the agent logged:",
                t.elapsed().as_secs_f64()
            );
            println!("    {line}");
            settle();
        }
        Err(error) => {
            failures.push(format!("c. b2 was never detected up again: {error:#}"));
            return Ok(failures);
        }
    }
    println!("300 connections: the shares are back to 1:1:2.");
    let tally = traffic(lab, 300)?;
    tally.print(all_up);
    tally.check("c", all_up, &mut failures);

    super::health::narrate(lab, &mut failures)?;
    super::balance::narrate(lab, &mut failures)?;

    header("d. what the agent logged");
    for line in lab.log_text().lines() {
        println!("    {line}");
    }

    header(&format!("d. lb check --config {}", lab.config.display()));
    let out = Command::new(&lab.lb)
        .arg("check")
        .arg("--config")
        .arg(&lab.config)
        .output()?;
    print_indented(&out.stdout);
    print_indented(&out.stderr);
    if !out.status.success() {
        failures.push(format!("d. lb check failed ({})", out.status));
    }

    if has_stats(&lab.lb) {
        for what in ["stats", "status"] {
            header(&format!(
                "d. lb {what} --state-dir {} (in namespace lb)",
                lab.state_dir.display()
            ));
            let out = lab.lb_output(&[what])?;
            print_indented(&out.stdout);
            print_indented(&out.stderr);
            if !out.status.success() {
                failures.push(format!("d. lb {what} failed ({})", out.status));
            }
        }
    } else {
        header("d. lb stats / lb status");
        println!(
            "Per-VIP and per-backend counters (`lb stats`) and the agent's view (`lb status`)"
        );
        println!("come with issue #4; this demo shows them once `lb stats` exists.");
    }

    super::redundancy::narrate(lab, &mut failures)?;
    Ok(failures)
}

/// Whether this `lb` has the operator commands (`lb stats`, `lb status`: issue #4).
pub(super) fn has_stats(lb: &Path) -> bool {
    Command::new(lb)
        .args(["stats", "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `n` connections from the client to the VIP, one after the other.
fn traffic(lab: &Lab, n: usize) -> Result<Tally> {
    Tally::collect(lab.host_ns("client")?, n)
}

/// The agent logs a state change, then rebuilds and swaps the ring: give it a moment.
fn settle() {
    thread::sleep(SETTLE);
}

fn print_indented(bytes: &[u8]) {
    for line in String::from_utf8_lossy(bytes).lines() {
        println!("    {line}");
    }
}
