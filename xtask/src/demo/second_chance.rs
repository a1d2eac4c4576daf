//! Step e2, second chance: both instances switch the VIP to tunnel mode (the backends run
//! `lb decap`), hold long-lived connections over b1 and b2, add b3 (its ring slots come from
//! b1's and b2's; each instance keeps the ring from before), then lb2's host dies. lb never
//! tracked lb2's connections and its ring sends those whose slot moved to b3, with the slot's
//! previous backend as a hop; b3's decap sends them on. None breaks.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::config::{announcing_config_text, BACKENDS, LB_IP, PORT, VIP};
use super::lab::Lab;
use super::traffic::{echo, read_line};
use crate::header;

/// Long-lived connections held across the change and the failover.
const HELD: usize = 40;

/// Runs step e2 (after step e, whose two instances and routers it uses); failed checks go to
/// `failures`.
pub(super) fn narrate(
    lab: &Lab,
    failures: &mut Vec<String>,
    lb2_state: &Path,
    lb2_config: &Path,
    wait_next_hops: impl Fn(&[&str]) -> Result<Option<Duration>>,
) -> Result<()> {
    header("e2. second chance: a backend is added, then an instance dies");
    println!("Had a backend been added before lb died, lb2 would have sent the connections lb");
    println!("carried by its new ring, and those whose slot moved would have broken: lb2 never");
    println!("tracked them. In tunnel mode lb keeps the ring from before each change for 240 s");
    println!("(second_chance), and a packet it does not track whose slot moved carries that");
    println!("ring's backend as a hop; the backend's `lb decap` sends it on unless it has the");
    println!("connection (docs/SECOND_CHANCE.md).");
    for (name, ..) in BACKENDS {
        let mut command = lab.host_ns(name)?.command(&lab.lb);
        command.args(["decap", "--interface", "eth0"]);
        let log = lab.spawn(&format!("decap-{name}"), command)?;
        lab.wait_file(
            &format!("decap-{name}"),
            &log,
            "decap attached",
            Duration::from_secs(10),
        )?;
    }
    println!("lb decap runs on b1, b2 and b3; both instances switch the VIP to tunnel, b1 and b2.");
    let write = |backends: usize| -> Result<()> {
        std::fs::write(&lab.config, tunnel_config(&lab.state_dir, backends))?;
        std::fs::write(lb2_config, tunnel_config(lb2_state, backends))?;
        Ok(())
    };
    let mark = lab.log_len();
    write(2)?;
    lab.wait_log("reloaded", mark, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    if wait_next_hops(&[LB_IP, super::config::LB2_IP])?.is_none() {
        failures.push("e2. the router does not send to both instances".into());
        return Ok(());
    }

    let remote = lab.remote()?;
    let vip = SocketAddr::new(VIP.parse()?, PORT);
    let mut held = remote.client.try_run(|| -> Result<Vec<TcpStream>> {
        (0..HELD)
            .map(|_| {
                let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                read_line(&mut stream)?;
                Ok(stream)
            })
            .collect()
    })??;
    println!("{HELD} long-lived connections from the remote client, over both instances.");
    let mark = lab.log_len();
    write(3)?;
    lab.wait_log(
        "backend 10.99.0.13 of vip web: Unknown -> Up",
        mark,
        Duration::from_secs(10),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    println!("b3 added on both: the rings give it half the slots (weight 2).");
    let port = lab.host("lb2")?.port.clone();
    lab.switch()?.try_ip(&format!("link set {port} down"))?;
    if wait_next_hops(&[LB_IP])?.is_none() {
        failures.push("e2. the router kept sending to lb2 after its host died".into());
    }
    println!("lb2's host died; the router sends everything to lb.");
    let broken = held
        .iter_mut()
        .map(|stream| echo(stream, "still there"))
        .filter(Result::is_err)
        .count();
    // The agent writes its counts into the snapshot within a second.
    std::thread::sleep(Duration::from_millis(1200));
    let hops = hops_carried(lab)?;
    println!("    {broken} of {HELD} broken, {hops} packets took the second chance");
    if broken > 0 {
        failures.push(format!("e2. {broken} long-lived connections broke"));
        println!("CHECK FAILED (see the end of the output)");
    } else if hops == 0 {
        failures.push("e2. no packet took the second chance: nothing was tested".into());
        println!("CHECK FAILED (see the end of the output)");
    } else {
        println!("check passed: every connection lb2 carried goes on through lb");
    }
    lab.switch()?.try_ip(&format!("link set {port} up"))?;
    Ok(())
}

/// Both instances' configuration in tunnel mode with the first `backends` backends.
fn tunnel_config(state_dir: &Path, backends: usize) -> String {
    let mut text = announcing_config_text(&state_dir.display().to_string())
        .replace("forward = \"dsr\"", "forward = \"tunnel\"");
    for (_, address, weight) in &BACKENDS[backends..] {
        text = text.replace(
            &format!("\n  [[vip.backend]]\n  address = \"{address}\"\n  weight = {weight}\n"),
            "",
        );
    }
    text
}

/// Packets lb sent with a second-chance hop (`lb status --json`).
fn hops_carried(lab: &Lab) -> Result<u64> {
    let out = lab.lb_output(&["status", "--json"])?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(status["agent"]["second_chance_hops"].as_u64().unwrap_or(0))
}
