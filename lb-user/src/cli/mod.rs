//! The `lb` command line: its clap definition (also the source of the man page and shell
//! completions) and one module per operator command. `main.rs` only sets up logging and the
//! runtime and calls [`run`].

mod backend;
mod decap;
mod detach;
mod explain;
mod format;
mod generate;
mod help;
mod stats;
mod status;
mod view;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

pub use self::{
    detach::{detach, DetachError},
    explain::{explain, parse_vip, Explanation, Source},
    format::{escapes_allowed, parse_interval},
    generate::{generate, GenerateError, Generated},
    stats::{
        rates, stats, BackendRates, BackendStatsReport, Rates, Stats, VipRates, VipStatsReport,
    },
    status::{
        announced_routes, fingerprint, readiness, status, AgentStatus, BackendStatusReport, Status,
        VipStatusReport,
    },
    view::{ReportError, View},
};
use crate::{
    agent::{self, RunOptions},
    control::AdminCommand,
    datapath::{AttachMode, Datapath, Options, Program},
};

/// `lb`: the agent and the operator commands.
#[derive(Parser)]
#[command(
    name = "lb",
    version,
    propagate_version = true,
    about = "Layer-4 XDP load balancer",
    long_about = help::ABOUT,
    after_help = help::LB
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `lb`.
#[derive(Subcommand)]
pub enum Command {
    /// Run the agent: load and attach the datapath, program VIPs, check backends, follow
    /// configuration changes, until SIGINT/SIGTERM.
    #[command(after_help = help::RUN)]
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// On SIGTERM/SIGINT leave the datapath attached and pinned (it keeps forwarding; the
        /// next `lb run` adopts it). Without it the datapath is detached and unpinned.
        #[arg(long)]
        keep_datapath: bool,
        /// Recreate the pinned maps instead of adopting them, e.g. when their layout is one
        /// this lb cannot migrate: tracked flows re-hash, counters restart; forwarding goes on.
        #[arg(long)]
        fresh_state: bool,
    },
    /// Counters: global by verdict and reason, per VIP and per backend.
    #[command(after_help = help::STATS)]
    Stats {
        /// The agent's state directory and the output format.
        #[command(flatten)]
        state: StateArgs,
        /// Redraw every INTERVAL (default 1s) with rates instead of totals; a bare number is
        /// seconds (`--watch 1`), or a duration (`500ms`, `2s`).
        #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "1", value_parser = parse_interval)]
        watch: Option<Duration>,
        /// With --watch: stop after N redraws.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
    /// The attached datapath, each VIP's backends with health, weight and ring share.
    #[command(after_help = help::STATUS)]
    Status {
        /// The agent's state directory and the output format.
        #[command(flatten)]
        state: StateArgs,
        /// Exit 0 only while the agent runs, the datapath is attached and a VIP is servable,
        /// else 1 with a one-line reason (for keepalived's track_script, supervisors).
        #[arg(long)]
        check: bool,
    },
    /// Which backend a client's flow goes to now, and why.
    #[command(after_help = help::EXPLAIN)]
    Explain {
        /// The agent's state directory and the output format.
        #[command(flatten)]
        state: StateArgs,
        /// The VIP: ADDR:PORT/PROTO, e.g. 10.0.0.100:80/tcp or `[fd00::1]:53/udp`.
        #[arg(long)]
        vip: String,
        /// The client: ADDR:PORT.
        #[arg(long)]
        client: SocketAddr,
    },
    /// Change a backend's administrative state at run time (kept across reloads and restarts):
    /// `drain` (no new flows), `disable` (maintenance: out of the ring, its flows re-hash),
    /// `enable` (back to its configured weight, with slow start).
    #[command(after_help = help::BACKEND)]
    Backend {
        /// What to do.
        #[arg(value_enum)]
        action: AdminCommand,
        /// The VIP's name.
        #[arg(long)]
        vip: String,
        /// The backend's address.
        #[arg(long)]
        backend: std::net::IpAddr,
        /// The agent's state_dir.
        #[arg(long, default_value = crate::config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Validate a configuration file without touching the kernel (exit status 0 or 1).
    #[command(after_help = help::CHECK)]
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Lab helper: attach a pass-everything XDP program to IF until SIGINT/SIGTERM. A veth
    /// delivers frames that XDP sent with XDP_TX/XDP_REDIRECT only if its peer runs an XDP
    /// program; real NICs do not need this.
    #[command(hide = true, after_help = help::XDP_PASS)]
    XdpPass {
        /// Interface (a veth peer).
        #[arg(long, short)]
        interface: String,
    },
    /// Strip lb's IP-in-IP tunnels on a tunnel-mode backend until SIGINT/SIGTERM.
    #[command(after_help = help::DECAP)]
    Decap {
        /// Interface the tunnels arrive on; tunnels to any of its addresses are stripped.
        #[arg(long, short)]
        interface: String,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        xdp_mode: AttachMode,
        /// Serve the program's counts as Prometheus metrics on ADDR:PORT (`/metrics`).
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Detach the load balancer for good (after stopping the agent): remove its program and maps.
    ///
    /// Withdraws the routes it announced (`[announce]`; then waits `drain`), unpins the link, so
    /// the program leaves the interface, and the maps: connection tracking and counters are lost.
    #[command(after_help = help::DETACH)]
    Detach {
        /// The state_dir to detach [default: /sys/fs/bpf/lb].
        #[arg(long, conflicts_with = "config")]
        state_dir: Option<PathBuf>,
        /// Detach the state_dir named in this configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write man pages or shell completions generated from this binary into DIR (packaging).
    #[command(hide = true, after_help = help::GENERATE)]
    Generate {
        /// What to write.
        #[arg(value_enum)]
        what: Generated,
        /// The directory (created if missing).
        dir: PathBuf,
    },
}

/// Where the agent pinned its state, and the output format.
#[derive(clap::Args)]
pub struct StateArgs {
    /// The agent's state_dir.
    #[arg(long, default_value = crate::config::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Print JSON (schema in the README).
    #[arg(long)]
    pub json: bool,
}

/// Runs one command to its end.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            keep_datapath,
            fresh_state,
        } => {
            agent::run(RunOptions {
                config,
                keep_datapath,
                fresh_state,
            })
            .await
        }
        Command::Stats {
            state,
            watch,
            count,
        } => {
            let mut view = View::open(&state.state_dir)?;
            match watch {
                Some(interval) => stats::watch(&mut view, interval, count, state.json)?,
                None => print_report(&stats(&mut view)?, state.json, stats::format_stats)?,
            }
            Ok(())
        }
        Command::Status { state, check } => {
            let mut view = View::open(&state.state_dir)?;
            let routes = status::announced_routes(&view).await?;
            let report = status(&mut view, routes.as_ref())?;
            if check {
                let ready = status::readiness(&report)
                    .map_err(|reason| anyhow::anyhow!("not ready: {reason}"))?;
                println!("ready: {ready}");
                return Ok(());
            }
            print_report(&report, state.json, status::format_status)
        }
        Command::Explain { state, vip, client } => {
            let (vip, protocol) = parse_vip(&vip)?;
            let mut view = View::open(&state.state_dir)?;
            let explanation = explain(&mut view, vip, protocol, client)?;
            print_report(&explanation, state.json, explain::format_explanation)
        }
        Command::Backend {
            action,
            vip,
            backend,
            state_dir,
        } => backend::run(&state_dir, action, &vip, backend),
        Command::Check { config } => {
            let parsed = crate::config::load(&config)?;
            let backends: usize = parsed.live.vips.iter().map(|v| v.backends.len()).sum();
            println!(
                "{}: ok ({} VIPs, {backends} backends)",
                config.display(),
                parsed.live.vips.len()
            );
            for warning in parsed.live.warnings() {
                println!("warning: {warning}");
            }
            Ok(())
        }
        Command::XdpPass { interface } => {
            let mut datapath = Datapath::load(&Options {
                conntrack_size: 1,
                pin_dir: None,
                fresh_state: false,
            })?;
            datapath.attach(Program::Pass, &interface, aya::programs::XdpMode::Driver)?;
            tracing::info!(%interface, "pass program attached");
            wait_for_shutdown().await?;
            Ok(())
        }
        Command::Decap {
            interface,
            xdp_mode,
            metrics,
        } => decap::run(&interface, xdp_mode, metrics).await,
        Command::Detach { state_dir, config } => {
            let target = detach::Target::new(state_dir, config.as_deref())?;
            println!("{}", detach(&target).await?);
            Ok(())
        }
        Command::Generate { what, dir } => {
            for file in generate(what, &dir)? {
                println!("{}", file.display());
            }
            Ok(())
        }
    }
}

/// Prints `report` as pretty JSON or as the command's human text.
fn print_report<T: serde::Serialize>(
    report: &T,
    json: bool,
    human: fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", human(report));
    }
    Ok(())
}

/// Returns at the first SIGINT or SIGTERM.
async fn wait_for_shutdown() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
