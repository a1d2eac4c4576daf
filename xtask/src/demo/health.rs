//! The demo's health chapter (issue #14): an HTTP check catches a backend that still accepts
//! connections but answers 503, and an operator drains a backend at run time with
//! `lb backend drain`, which keeps its established connections and sends it no new ones.

use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::config::{PORT, VIP};
use super::lab::Lab;
use super::traffic::{echo, read_line, Tally};
use crate::header;

/// Runs the chapter's steps; failed checks go to `failures`.
pub(super) fn narrate(lab: &Lab, failures: &mut Vec<String>) -> Result<()> {
    header("c2. b1 falls sick: it still accepts connections, but /healthz answers 503");
    println!("A TCP check would keep sending b1 traffic: its port 8080 still accepts. The HTTP");
    println!("check (GET /healthz on port 8081, expecting 2xx) sees the 503 and takes it out.");
    let mark = lab.log_len();
    let t = Instant::now();
    std::fs::write(lab.sick_file("b1"), "")?;
    match lab.wait_log(
        "backend 10.99.0.11 of vip web: Up -> Down",
        mark,
        Duration::from_secs(10),
    ) {
        Ok(line) => {
            println!(
                "b1 detected sick after {:.2}s; the agent logged:",
                t.elapsed().as_secs_f64()
            );
            println!("    {line}");
        }
        Err(error) => {
            failures.push(format!("c2. b1 was never detected sick: {error:#}"));
            return Ok(());
        }
    }
    std::thread::sleep(Duration::from_millis(250));
    let sick = [false, true, true];
    println!("200 connections: b1 gets none, though its server still accepts them.");
    let tally = Tally::collect(lab.host_ns("client")?, 200)?;
    tally.print(sick);
    tally.check("c2", sick, failures);
    let mark = lab.log_len();
    std::fs::remove_file(lab.sick_file("b1"))?;
    if let Err(error) = lab.wait_log(
        "backend 10.99.0.11 of vip web: Down -> Up",
        mark,
        Duration::from_secs(10),
    ) {
        failures.push(format!("c2. b1 never came back: {error:#}"));
        return Ok(());
    }
    println!("/healthz answers 200 again: 2 good checks later b1 is back in the ring.");
    std::thread::sleep(Duration::from_millis(250));

    lost_vip(lab, failures)?;

    header("c3. drain b3 at run time: lb backend drain --vip web --backend 10.99.0.13");
    println!("Maintenance without editing the file: a drained backend keeps the connections it");
    println!("has (connection tracking) and gets no new ones; `lb backend enable` undoes it. The");
    println!("state survives reloads and restarts until then.");
    let mut held = hold_connection_to(lab, "b3")?;
    println!("a long-lived connection to b3 is open");
    let said = backend_command(lab, "drain", "10.99.0.13")?;
    println!("    {said}");
    let drained = [true, true, false];
    println!("200 new connections: b3 gets none.");
    let tally = Tally::collect(lab.host_ns("client")?, 200)?;
    tally.print(drained);
    tally.check("c3", drained, failures);
    match echo(&mut held, "still there?") {
        Ok(()) => println!("the long-lived connection to b3 still echoes"),
        Err(error) => failures.push(format!("c3. the connection to b3 broke: {error}")),
    }
    let said = backend_command(lab, "enable", "10.99.0.13")?;
    println!("    {said}");
    std::thread::sleep(Duration::from_millis(250));
    Ok(())
}

/// c2b: a backend loses the VIP from its loopback. Its own address still answers, so a check of
/// it would pass; lb's checks go to the VIP the way clients' packets do, and fail.
fn lost_vip(lab: &Lab, failures: &mut Vec<String>) -> Result<()> {
    header("c2b. b2 loses the VIP from its loopback (a rebuilt backend): its own address answers");
    println!("Clients' packets for the VIP reach b2 and are dropped. lb's checks go to the VIP,");
    println!("steered to each backend as clients' packets are, so b2 fails them; the log says");
    println!("its own address still answers: not a dead service, a VIP not served.");
    let b2 = lab.host_ns("b2")?;
    let mark = lab.log_len();
    let t = Instant::now();
    b2.try_ip(&format!("addr del {VIP}/32 dev lo"))?;
    match lab.wait_log(
        "backend 10.99.0.12 of vip web: Up -> Down",
        mark,
        Duration::from_secs(10),
    ) {
        Ok(line) => {
            println!(
                "b2 taken out after {:.2}s; the agent logged:",
                t.elapsed().as_secs_f64()
            );
            println!("    {line}");
            if !line.contains("the backend's own address answers") {
                failures.push(format!("c2b. the log does not say why: {line}"));
            }
        }
        Err(error) => {
            failures.push(format!("c2b. b2 was never taken out: {error:#}"));
            return Ok(());
        }
    }
    std::thread::sleep(Duration::from_millis(250));
    let lost = [true, false, true];
    println!("200 connections: b2 gets none, and none fails.");
    let tally = Tally::collect(lab.host_ns("client")?, 200)?;
    tally.print(lost);
    tally.check("c2b", lost, failures);
    let mark = lab.log_len();
    b2.try_ip(&format!("addr add {VIP}/32 dev lo"))?;
    if let Err(error) = lab.wait_log(
        "backend 10.99.0.12 of vip web: Down -> Up",
        mark,
        Duration::from_secs(10),
    ) {
        failures.push(format!("c2b. b2 never came back: {error:#}"));
        return Ok(());
    }
    println!("the VIP back on b2's loopback: 2 good checks later b2 is back in the ring.");
    std::thread::sleep(Duration::from_millis(250));
    Ok(())
}

/// `lb backend ACTION --vip web --backend ADDRESS`; its answer.
fn backend_command(lab: &Lab, action: &str, address: &str) -> Result<String> {
    let output = lab
        .host_ns("lb")?
        .command(&lab.lb)
        .args([
            "backend",
            action,
            "--vip",
            "web",
            "--backend",
            address,
            "--state-dir",
        ])
        .arg(&lab.state_dir)
        .stdin(Stdio::null())
        .output()?;
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned()
        + String::from_utf8_lossy(&output.stderr).trim();
    anyhow::ensure!(output.status.success(), "lb backend {action}: {said}");
    Ok(said)
}

/// A connection from the client that landed on `name` (new connections until one does).
pub(super) fn hold_connection_to(lab: &Lab, name: &str) -> Result<TcpStream> {
    let vip = SocketAddr::new(VIP.parse().expect("VIP"), PORT);
    lab.host_ns("client")?
        .try_run(|| -> Result<TcpStream> {
            for _ in 0..50 {
                let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                if read_line(&mut stream)? == name {
                    return Ok(stream);
                }
            }
            anyhow::bail!("50 connections and none reached {name}")
        })
        .context("holding a connection")?
}
