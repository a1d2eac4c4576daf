//! `lb`: the agent and the operator CLI.

use std::{path::PathBuf, process::ExitCode};

use aya::programs::XdpMode;
use clap::{Parser, Subcommand, ValueEnum};
use lb_user::{
    agent::{self, RunOptions},
    datapath::{Datapath, Options, Program},
    decap::Decap,
    report,
};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(name = "lb", version, about = "Layer-4 XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load and attach the datapath, program VIPs, check backends, follow
    /// configuration changes, until SIGINT/SIGTERM.
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// On SIGTERM/SIGINT leave the datapath attached and pinned (it keeps forwarding; the
        /// next `lb run` adopts it). Without it the datapath is detached and unpinned.
        #[arg(long)]
        keep_datapath: bool,
    },
    /// Counters: global by verdict and reason, per VIP and per backend.
    Stats {
        #[command(flatten)]
        state: StateArgs,
        /// Redraw every INTERVAL (default 1s) with rates instead of totals.
        #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "1s", value_parser = humantime::parse_duration)]
        watch: Option<std::time::Duration>,
        /// With --watch: stop after N redraws.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
    /// The attached datapath, each VIP's backends with health, weight and ring share.
    Status {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Which backend a client's flow goes to now, and why.
    Explain {
        #[command(flatten)]
        state: StateArgs,
        /// The VIP: ADDR:PORT/PROTO, e.g. 10.0.0.100:80/tcp or [fd00::1]:53/udp.
        #[arg(long)]
        vip: String,
        /// The client: ADDR:PORT.
        #[arg(long)]
        client: std::net::SocketAddr,
    },
    /// Validate a configuration file without touching the kernel (exit status 0 or 1).
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Lab helper: attach a pass-everything XDP program to IF until SIGINT/SIGTERM. A veth
    /// delivers frames that XDP sent with XDP_TX/XDP_REDIRECT only if its peer runs an XDP
    /// program; real NICs do not need this.
    #[command(hide = true)]
    XdpPass {
        /// Interface (a veth peer).
        #[arg(long, short)]
        interface: String,
    },
    /// Strip lb's IP-in-IP tunnels on a tunnel-mode backend until SIGINT/SIGTERM.
    Decap {
        /// Interface the tunnels arrive on; tunnels to any of its addresses are stripped.
        #[arg(long, short)]
        interface: String,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        xdp_mode: Mode,
    },
}

/// Where the agent pinned its state, and the output format.
#[derive(clap::Args)]
struct StateArgs {
    /// The agent's state_dir.
    #[arg(long, default_value = lb_user::config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print JSON (schema in the README).
    #[arg(long)]
    json: bool,
}

/// XDP attach mode.
#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Native, else generic with a warning.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode.
    Generic,
}

impl Mode {
    fn xdp_mode(self) -> Option<XdpMode> {
        match self {
            Mode::Auto => None,
            Mode::Native => Some(XdpMode::Driver),
            Mode::Generic => Some(XdpMode::Skb),
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            keep_datapath,
        } => {
            agent::run(RunOptions {
                config,
                keep_datapath,
            })
            .await
        }
        Command::Stats {
            state,
            watch,
            count,
        } => {
            let mut view = report::View::open(&state.state_dir)?;
            match watch {
                Some(interval) => report::watch(&mut view, interval, count, state.json)?,
                None => {
                    let stats = report::stats(&mut view)?;
                    print_report(&stats, state.json, report::format_stats)?;
                }
            }
            Ok(())
        }
        Command::Status { state } => {
            let mut view = report::View::open(&state.state_dir)?;
            let status = report::status(&mut view)?;
            print_report(&status, state.json, report::format_status)
        }
        Command::Explain { state, vip, client } => {
            let (vip, protocol) = report::parse_vip(&vip)?;
            let mut view = report::View::open(&state.state_dir)?;
            let explanation = report::explain(&mut view, vip, protocol, client)?;
            print_report(&explanation, state.json, report::format_explanation)
        }
        Command::Check { config } => {
            let parsed = lb_user::config::load(&config)?;
            let backends: usize = parsed.vips.iter().map(|v| v.backends.len()).sum();
            println!(
                "{}: ok ({} VIPs, {backends} backends)",
                config.display(),
                parsed.vips.len()
            );
            Ok(())
        }
        Command::XdpPass { interface } => {
            let mut datapath = Datapath::load(&Options {
                conntrack_size: 1,
                pin_dir: None,
            })?;
            datapath.attach(Program::Pass, &interface, XdpMode::Driver)?;
            tracing::info!(%interface, "pass program attached");
            wait_for_shutdown().await?;
            Ok(())
        }
        Command::Decap {
            interface,
            xdp_mode,
        } => {
            let mut decap = Decap::attach(&interface, xdp_mode.xdp_mode())?;
            tracing::info!(%interface, mode = ?decap.mode, addresses = ?decap.addresses, "decap attached");
            wait_for_shutdown().await?;
            let counts = decap.counts()?;
            tracing::info!(
                %interface,
                decapsulated = counts.decapsulated,
                passed = counts.passed,
                malformed = counts.malformed,
                "detaching decap: {} tunnel packets stripped, {} other packets passed, {} malformed dropped",
                counts.decapsulated,
                counts.passed,
                counts.malformed
            );
            drop(decap);
            Ok(())
        }
    }
}

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

async fn wait_for_shutdown() -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
