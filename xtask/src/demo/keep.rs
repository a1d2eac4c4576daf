//! `--keep`: the lab stays after the demo; how to use it and remove it.

use std::fs;

use anyhow::Result;

use super::config::{PORT, VIP};
use super::lab::Lab;
use super::steps::has_stats;
use crate::header;

/// Marks `lab` as kept (the next demo leaves it alone) and tells the user how to use and
/// remove it.
pub(super) fn keep(lab: &Lab) -> Result<()> {
    fs::write(lab.dir.join("kept"), "")?;
    let client = lab.ns("client");
    let lb_ns = lab.ns("lb");
    header("the lab keeps running (--keep)");
    println!("One connection to the VIP from the client (prints the backend's name):");
    println!(
        "    nsenter --net=/run/netns/{client} python3 -c 'import socket; print(socket.create_connection((\"{VIP}\", {PORT})).recv(64).decode(), end=\"\")'"
    );
    println!("100 connections, counted by backend:");
    println!(
        "    nsenter --net=/run/netns/{client} python3 -c 'import socket, collections; print(collections.Counter(socket.create_connection((\"{VIP}\", {PORT})).recv(64).decode().strip() for _ in range(100)))'"
    );
    println!("Stop b2's server, watch the agent take it out, start it again:");
    println!("    kill $(ip netns pids {})", lab.ns("b2"));
    println!("    tail -f {}", lab.agent_log.display());
    println!(
        "    nsenter --net=/run/netns/{} python3 {} b2 >/dev/null 2>&1 &",
        lab.ns("b2"),
        lab.server_py.display()
    );
    let soon = if has_stats(&lab.lb) {
        ""
    } else {
        " (coming with issue #4)"
    };
    println!(
        "Counters and health{soon} (nsenter, not `ip netns exec`: that one hides /sys/fs/bpf):"
    );
    for what in ["stats --watch", "status"] {
        println!(
            "    nsenter --net=/run/netns/{lb_ns} {} {what} --state-dir {}",
            lab.lb.display(),
            lab.state_dir.display()
        );
    }
    println!(
        "Configuration (the agent reloads it when the file changes): {}",
        lab.config.display()
    );
    println!("Agent log: {}", lab.agent_log.display());
    println!("Step e's router (bird2; the VIP's multipath route) and the remote client behind it:");
    println!(
        "    birdc -s {} show protocols",
        lab.dir.join("bird-router").join("bird.ctl").display()
    );
    println!("    ip -n {} route show {VIP}", lab.ns("router"));
    println!(
        "    nsenter --net=/run/netns/{} python3 -c 'import socket; print(socket.create_connection((\"{VIP}\", {PORT})).recv(64).decode(), end=\"\")'",
        lab.ns("remote")
    );
    println!("Remove the lab:");
    println!("    cargo xtask demo --clean");
    Ok(())
}
