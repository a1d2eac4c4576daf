//! `cargo xtask demo [--keep | --clean]`: lb end to end in network namespaces, narrated.
//!
//! The lab: a "switch" namespace with a bridge `br0`, and one namespace per host (client, lb,
//! three backends, and for step e a router with a remote client behind it and a second lb),
//! each with `eth0` plugged into the bridge (built with `lb_lab`, as the
//! tests' labs are). The real `lb run` forwards TCP connections from the client to the
//! backends (DSR); the demo stops and restarts a backend and shows what the agent does.
//! Everything is named `lbdemo-<pid>...` and removed at the end, on errors and on Ctrl-C
//! (`--keep` leaves the lab running; `--clean` removes every demo lab).
//!
//! - [`config`]: the hosts, the VIP, the backends and the agent's configuration;
//! - [`steps`]: the narrated steps; [`traffic`]: one phase of connections, counted and checked;
//! - [`redundancy`]: step e, two lb instances behind a router running bird2, one dies;
//! - [`lab`]: the lab's network, processes ([`processes`]) and logs; [`keep`]: `--keep`;
//! - [`mod@clean`]: removing labs by name (`--clean`, leftovers); [`signals`]: Ctrl-C.

mod balance;
mod clean;
mod config;
mod health;
mod keep;
mod lab;
mod processes;
mod redundancy;
mod second_chance;
mod signals;
mod steps;
mod traffic;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

pub use clean::clean;
use lab::{Guard, Lab};

use crate::{cmd, header, setup, workspace_root};

/// The demo's time budget, printed and checked at the end.
const BUDGET: Duration = Duration::from_secs(120);

/// The lab, for the signal handler.
static LAB: OnceLock<Arc<Lab>> = OnceLock::new();

/// `cargo xtask demo [--keep]`.
pub fn run(keep: bool) -> Result<()> {
    let start = Instant::now();
    signals::on_interrupt(|| {
        if let Some(lab) = LAB.get() {
            lab.cleanup();
            eprintln!("lab removed");
        }
    })?;

    header("setup");
    setup::run()?;
    header("build: cargo build -p lb-user");
    let root = workspace_root();
    let build_start = Instant::now();
    cmd::run(
        Command::new("cargo")
            .args(["build", "-p", "lb-user"])
            .current_dir(&root),
    )?;
    let lb = target_dir(&root).join("debug").join("lb");
    if !lb.is_file() {
        bail!("{} not found after `cargo build -p lb-user`", lb.display());
    }
    let build_time = build_start.elapsed();

    clean::remove_leftovers();

    let lab = Arc::new(Lab::new(lb)?);
    let _ = LAB.set(lab.clone());
    let mut guard = Guard {
        lab: lab.clone(),
        armed: true,
    };
    let failures = steps::narrate(&lab)?;

    if keep && failures.is_empty() {
        guard.armed = false;
        keep::keep(&lab)?;
    } else {
        if keep {
            println!("\n(--keep: the lab is removed anyway because a check failed)");
        }
        header(
            "cleaning up: stopping the agent (it detaches), servers, xdp-pass; deleting namespaces",
        );
        lab.cleanup();
        println!("lab removed");
    }
    let total = start.elapsed();
    // The budget leaves out compiling (minutes on a first run, a second afterwards).
    let demo_time = total.saturating_sub(build_time);
    header(&format!(
        "total time {:.1}s: cargo build {:.1}s, the demo itself {:.1}s",
        total.as_secs_f64(),
        build_time.as_secs_f64(),
        demo_time.as_secs_f64()
    ));
    if !failures.is_empty() {
        bail!(
            "the demo failed {} check(s):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    if demo_time > BUDGET {
        bail!(
            "the demo took {:.1}s, more than its {}s budget",
            demo_time.as_secs_f64(),
            BUDGET.as_secs()
        );
    }
    println!("demo passed");
    Ok(())
}

/// Where cargo puts what it builds.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}
