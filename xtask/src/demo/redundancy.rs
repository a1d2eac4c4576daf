//! Step e, redundancy of lb itself (issue #15): a second instance with the same configuration,
//! a router running bird2 in front of both, one instance's host dies, connections go on.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lb_lab::routing::bird::{bird_files, not_established, Bird, LbHostBird, RouterBird, Session};
use lb_lab::routing::{Peer, LAB_BFD};
use lb_lab::servers::ask_name;

use super::config::{
    announcing_config_text, ANNOUNCE_PROTOCOL, ANNOUNCE_TABLE, LB2_IP, LB_IP, PORT, ROUTER_IP, VIP,
};
use super::lab::Lab;
use super::traffic::{echo, read_line};
use crate::header;

/// The router's AS and the instances' (one AS for all of them).
const ROUTER_ASN: u32 = 65000;
const LB_ASN: u32 = 65001;
/// Long-lived connections held across the failover.
const HELD: usize = 20;

/// Runs step e; failed checks go to `failures`.
pub(super) fn narrate(lab: &Lab, failures: &mut Vec<String>) -> Result<()> {
    let remote = lab.remote()?;
    let remote_ip = remote.client_ip;
    header("e. redundancy: two lb instances behind a router");
    println!("One lb is one machine that can die. Namespace router ({ROUTER_IP}) is the upstream");
    println!("router, with a remote client ({remote_ip}) behind it; lb2 ({LB2_IP}) runs lb with the same");
    println!("configuration as lb. Both get `[announce]`: lb keeps a blackhole route per servable");
    println!("VIP address in table {ANNOUNCE_TABLE} (protocol {ANNOUNCE_PROTOCOL}); bird2 on each instance announces it");
    println!("to the router's bird2 over eBGP with BFD (100 ms x 3). The router merges the two");
    println!("announcements into one multipath route and hashes flows over it by their ports.");
    println!("Maglev rings are deterministic: both instances send a flow to the same backend.");

    // Both instances: the same file but for the state directory.
    let lb2_state = PathBuf::from("/sys/fs/bpf").join(format!("{}-lb2", lab.id));
    let lb2_config = lab.dir.join("lb2.toml");
    let mark = lab.log_len();
    std::fs::write(
        &lab.config,
        announcing_config_text(&lab.state_dir.display().to_string()),
    )?;
    std::fs::write(
        &lb2_config,
        announcing_config_text(&lb2_state.display().to_string()),
    )?;
    let line = lab.wait_log("announced", mark, Duration::from_secs(10))?;
    println!("lb reloaded its configuration and logged:\n    {line}");
    let mut command = lab.host_ns("lb2")?.command(&lab.lb);
    command.arg("run").arg("--config").arg(&lb2_config);
    let lb2_log = lab.spawn("agent-lb2", command)?;
    lab.wait_file("agent-lb2", &lb2_log, "announced", Duration::from_secs(30))?;
    println!(
        "lb2 started, attached and announced; {}:",
        lab.host_ns("lb2")?.name
    );
    print_indented(&lab.host_ns("lb2")?.try_ip(&format!(
        "route show table {ANNOUNCE_TABLE} proto {ANNOUNCE_PROTOCOL}"
    ))?);

    let started = Instant::now();
    let router_socket = start_birds(lab)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let down = not_established(&router_socket, &["lb_4", "lb2_4"])?;
        if down.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the router's BGP sessions did not come up: {}",
                down.join("; ")
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    let router = lab.host_ns("router")?;
    let both = wait_next_hops(lab, &[LB_IP, LB2_IP], Duration::from_secs(10))?;
    let route = router.try_ip(&format!("route show exact {VIP}/32"))?;
    println!(
        "BGP sessions and BFD up {:.1}s after bird started; the router's route to the VIP:",
        started.elapsed().as_secs_f64()
    );
    print_indented(&route);
    if both.is_none() {
        failures.push(format!(
            "e. the router has no 2-way route to {VIP}: {route}"
        ));
        return Ok(());
    }

    println!("200 connections from the remote client; `lb stats` counts the new flows of each:");
    let before = [new_flows(lab, &lab.state_dir)?, new_flows(lab, &lb2_state)?];
    let vip = SocketAddr::new(VIP.parse()?, PORT);
    let failed = remote.client.try_run(|| {
        (0..200)
            .filter(|_| ask_name(vip, Duration::from_secs(2)).is_err())
            .count()
    })?;
    let carried = [
        new_flows(lab, &lab.state_dir)? - before[0],
        new_flows(lab, &lb2_state)? - before[1],
    ];
    println!(
        "    lb carried {}, lb2 carried {}, {failed} failed",
        carried[0], carried[1]
    );
    if failed > 0 || carried.iter().any(|&n| n < 40) {
        failures.push(format!(
            "e. 200 connections: lb {}, lb2 {}, {failed} failed",
            carried[0], carried[1]
        ));
    }

    println!(
        "{HELD} long-lived connections from the remote client, then lb's host dies (its switch"
    );
    println!("port goes down) while a new connection starts every 20 ms:");
    let mut held = remote
        .client
        .try_run(|| -> Result<Vec<(TcpStream, String)>> {
            (0..HELD)
                .map(|_| {
                    let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
                    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let name = read_line(&mut stream)?;
                    Ok((stream, name))
                })
                .collect()
        })??;
    let running = Arc::new(AtomicBool::new(true));
    let opener = spawn_opener(&remote.client, vip, running.clone());
    thread::sleep(Duration::from_millis(300));
    let port = lab.host("lb")?.port.clone();
    let died = Instant::now();
    lab.switch()?.try_ip(&format!("link set {port} down"))?;
    let dropped = wait_next_hops(lab, &[LB2_IP], Duration::from_secs(5))?;
    thread::sleep(Duration::from_millis(500));
    running.store(false, Ordering::Relaxed);
    let attempts = opener
        .join()
        .map_err(|_| anyhow::anyhow!("the opener panicked"))?;
    match dropped {
        Some(after) => println!(
            "    the router dropped lb after {:.0} ms (BFD), its route now: {}",
            after.as_secs_f64() * 1e3,
            router.try_ip(&format!("route show exact {VIP}/32"))?.trim()
        ),
        None => failures.push("e. the router kept sending to lb after its host died".into()),
    }
    let window = died + dropped.unwrap_or_default() + Duration::from_millis(50);
    let late: Vec<&(Instant, bool)> = attempts
        .iter()
        .filter(|(t, ok)| !ok && *t > window)
        .collect();
    let failed = attempts.iter().filter(|(_, ok)| !ok).count();
    println!(
        "    {failed} of {} new connections failed, all started before the router noticed: {}",
        attempts.len(),
        if late.is_empty() { "yes" } else { "NO" }
    );
    if !late.is_empty() {
        failures.push(format!(
            "e. {} new connections failed after the router dropped lb",
            late.len()
        ));
    }
    let mut broken = 0;
    let mut names = Vec::new();
    for (stream, name) in &mut held {
        if echo(stream, "still there").is_err() {
            broken += 1;
        }
        names.push(name.clone());
    }
    names.sort();
    names.dedup();
    println!(
        "    {} of {HELD} long-lived connections still echo (each on its backend: {})",
        HELD - broken,
        names.join(", ")
    );
    if broken > 0 {
        failures.push(format!(
            "e. {broken} long-lived connections broke when lb died"
        ));
    }
    lab.switch()?.try_ip(&format!("link set {port} up"))?;
    println!("lb's port is up again; BGP and BFD come back within seconds.");
    if failures.iter().any(|f| f.starts_with("e. ")) {
        println!("CHECK FAILED (see the end of the output)");
        return Ok(());
    }
    println!("check passed: the router noticed within a second and no long-lived connection broke");
    super::second_chance::narrate(lab, failures, &lb2_state, &lb2_config, |next_hops| {
        wait_next_hops(lab, next_hops, Duration::from_secs(10))
    })
}

/// Starts bird on the router, lb and lb2 (each with its own configuration, control socket,
/// pid file and log in the lab's directory); returns the router's control socket.
fn start_birds(lab: &Lab) -> Result<PathBuf> {
    let ip = |name: &str| -> Result<IpAddr> { Ok(IpAddr::V4(lab.host(name)?.ip)) };
    let instances = [("lb", LB_IP), ("lb2", LB2_IP)];
    let router = RouterBird {
        router_id: ROUTER_IP.parse()?,
        asn: ROUTER_ASN,
        interface: "eth0".into(),
        local4: Some(ip("router")?),
        local6: None,
        instances: instances
            .iter()
            .map(|(name, address)| -> Result<Peer> {
                Ok(Peer {
                    name: (*name).to_owned(),
                    address: address.parse()?,
                    asn: LB_ASN,
                })
            })
            .collect::<Result<_>>()?,
        vip_prefixes: vec![format!("{VIP}/32")],
        bfd: LAB_BFD,
    };
    let mut configs = vec![("router", router.config())];
    for (name, address) in instances {
        let host = LbHostBird {
            router_id: address.parse()?,
            asn: LB_ASN,
            interface: "eth0".into(),
            table: ANNOUNCE_TABLE,
            protocol: ANNOUNCE_PROTOCOL,
            upstream4: Some(Session {
                local: address.parse()?,
                peer: Peer {
                    name: "router".into(),
                    address: ip("router")?,
                    asn: ROUTER_ASN,
                },
            }),
            upstream6: None,
            bfd: LAB_BFD,
        };
        configs.push((name, host.config()));
    }
    let mut router_socket = PathBuf::new();
    for (name, config) in configs {
        let dir = lab.dir.join(format!("bird-{name}"));
        std::fs::create_dir_all(&dir)?;
        let command = Bird::try_prepare(lab.host_ns(name)?, &dir, &config)?;
        lab.spawn(&format!("bird-{name}"), command)?;
        let [conf, socket, ..] = bird_files(&dir);
        if name == "router" {
            router_socket = socket;
        }
        println!("bird2 in {name}: {}", conf.display());
    }
    Ok(router_socket)
}

/// Waits until the router's route to the VIP goes exactly through `next_hops`.
fn wait_next_hops(lab: &Lab, next_hops: &[&str], timeout: Duration) -> Result<Option<Duration>> {
    let router = lab.host_ns("router")?;
    let mut expected: Vec<&str> = next_hops.to_vec();
    expected.sort_unstable();
    let start = Instant::now();
    while start.elapsed() < timeout {
        let route = router.try_ip(&format!("route show exact {VIP}/32"))?;
        let words: Vec<&str> = route.split_whitespace().collect();
        let mut via: Vec<&str> = words
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1])
            .collect();
        via.sort_unstable();
        if via == expected {
            return Ok(Some(start.elapsed()));
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(None)
}

/// New flows of the VIP in `lb stats --json` of the instance at `state_dir`.
fn new_flows(lab: &Lab, state_dir: &Path) -> Result<u64> {
    let out = Command::new(&lab.lb)
        .args(["stats", "--json", "--state-dir"])
        .arg(state_dir)
        .output()
        .context("lb stats")?;
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("lb stats --json: {}", String::from_utf8_lossy(&out.stderr)))?;
    stats["vips"][0]["new_flows"]
        .as_u64()
        .context("no new_flows in lb stats --json")
}

/// A thread in `ns` opening a connection to `vip` every 20 ms (each on its own thread, failed
/// without a greeting within 900 ms: a lost SYN is sent again only after a second) until
/// `running` is cleared; when each started and whether it was answered.
fn spawn_opener(
    ns: &lb_lab::Netns,
    vip: SocketAddr,
    running: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<(Instant, bool)>> {
    ns.spawn(move || {
        let mut attempts = Vec::new();
        while running.load(Ordering::Relaxed) {
            let started = Instant::now();
            attempts.push((
                started,
                thread::spawn(move || ask_name(vip, Duration::from_millis(900)).is_ok()),
            ));
            thread::sleep(Duration::from_millis(20));
        }
        attempts
            .into_iter()
            .map(|(t, a)| (t, a.join().unwrap_or(false)))
            .collect()
    })
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}
