//! The demo's balancing chapter: `balance = "least-conn"` sends new connections away from a
//! backend that holds many long-lived ones, where Maglev alone would give it its weight's
//! share; `lb status` counts each backend's active flows and `lb explain` names a new flow's
//! two candidates.

use std::time::Duration;

use anyhow::Result;

use super::config::{config_text, PORT, VIP};
use super::health::hold_connection_to;
use super::lab::Lab;
use super::traffic::Tally;
use crate::header;

/// Long-lived connections the chapter holds on b3.
const HELD: usize = 30;

/// Runs the chapter's steps; failed checks go to `failures`.
pub(super) fn narrate(lab: &Lab, failures: &mut Vec<String>) -> Result<()> {
    header("c4. least connections: b3 holds 30 long-lived connections");
    println!("Maglev spreads new connections by weight whatever each backend already holds:");
    println!("b3 (weight 2) gets half of them even while it carries every long-lived one.");
    println!("`balance = \"least-conn\"` gives each new flow two candidates, its ring slot's");
    println!("backend and a second slot's, and takes the one with fewer active flows for its");
    println!("weight: b3 then gets only the flows whose both candidates are b3 (about 1/4).");
    let mut held = Vec::new();
    for _ in 0..HELD {
        held.push(hold_connection_to(lab, "b3")?);
    }
    println!("{HELD} connections to b3 are open.");
    let state_dir = lab.state_dir.display().to_string();
    let least_conn = config_text(&state_dir).replacen(
        "forward = \"dsr\"\n",
        "forward = \"dsr\"\nbalance = \"least-conn\"\n",
        1,
    );
    let mark = lab.log_len();
    std::fs::write(&lab.config, &least_conn)?;
    if let Err(error) = lab.wait_log("reloaded", mark, Duration::from_secs(10)) {
        failures.push(format!(
            "c4. the reload to least-conn never came: {error:#}"
        ));
        return Ok(());
    }
    println!("the configuration now says balance = \"least-conn\"; the agent reloaded.");
    // The agent counts active flows into the datapath every 500 ms.
    std::thread::sleep(Duration::from_millis(1200));
    println!();
    println!("lb status (ACTIVE: flows established and open now):");
    print_indented(&lb(lab, &["status"])?);
    let vip = format!("{VIP}:{PORT}/tcp");
    let explain = |port: u16, json: bool| {
        let client = format!("10.99.0.10:{port}");
        let mut args = vec!["explain", "--vip", &vip, "--client", &client];
        if json {
            args.push("--json");
        }
        lb(lab, &args)
    };
    // A client port whose ring slot gives b3 and whose second slot another: the choice shows.
    let mut port = 40000;
    for candidate in 40000..40100 {
        let text = explain(candidate, true)?;
        let json: serde_json::Value = serde_json::from_str(&text)?;
        let backends = ["ring", "second"].map(|c| json["least_conn"][c]["backend"].clone());
        let b3: serde_json::Value = "10.99.0.13".into();
        if backends[0] == b3 && backends[1] != b3 {
            port = candidate;
            break;
        }
    }
    println!("lb explain --vip {vip} --client 10.99.0.10:{port} (a new flow's two candidates):");
    print_indented(&explain(port, false)?);
    println!("300 new connections (the expected column is Maglev's share by weight):");
    let tally = Tally::collect(lab.host_ns("client")?, 300)?;
    tally.print([true, true, true]);
    let b3 = tally.share(2);
    if tally.unanswered() > 0 {
        failures.push(format!(
            "c4. {} of 300 connections failed",
            tally.unanswered()
        ));
    }
    if b3 > 0.35 {
        failures.push(format!(
            "c4. b3 got {:.1}% of new connections with least-conn (about 25% expected)",
            b3 * 100.0
        ));
        println!("CHECK FAILED (see the end of the output)");
    } else {
        println!(
            "check passed: b3, holding {HELD}, got {:.1}% of new connections (50% by weight)",
            b3 * 100.0
        );
    }

    let mark = lab.log_len();
    std::fs::write(&lab.config, config_text(&state_dir))?;
    if let Err(error) = lab.wait_log("reloaded", mark, Duration::from_secs(10)) {
        failures.push(format!(
            "c4. the reload back to maglev never came: {error:#}"
        ));
        return Ok(());
    }
    let broken = held
        .iter_mut()
        .map(|stream| super::traffic::echo(stream, "still there?"))
        .filter(Result::is_err)
        .count();
    if broken > 0 {
        failures.push(format!(
            "c4. {broken} of the {HELD} connections to b3 broke"
        ));
    } else {
        println!("back to maglev; the {HELD} connections to b3 still echo, and are closed now.");
    }
    Ok(())
}

/// `lb ARGS --state-dir ...` in the lb namespace: its output, which must be a success.
fn lb(lab: &Lab, args: &[&str]) -> Result<String> {
    let output = lab.lb_output(args)?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.success(), "lb {}: {text}", args.join(" "));
    Ok(text)
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}
