//! `lb`: the agent and the operator CLI.

use std::{path::PathBuf, process::ExitCode};

use aya::programs::XdpMode;
use clap::{Parser, Subcommand, ValueEnum};
use lb_user::{
    agent::{self, RunOptions},
    datapath::{Datapath, Options, Program},
    decap::Decap,
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
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
        Command::Run { config, keep_datapath } => agent::run(RunOptions { config, keep_datapath }).await,
        Command::Check { config } => {
            let parsed = lb_user::config::load(&config)?;
            let backends: usize = parsed.vips.iter().map(|v| v.backends.len()).sum();
            println!("{}: ok ({} VIPs, {backends} backends)", config.display(), parsed.vips.len());
            Ok(())
        }
        Command::XdpPass { interface } => {
            let mut datapath = Datapath::load(&Options { conntrack_size: 1, pin_dir: None })?;
            datapath.attach(Program::Pass, &interface, XdpMode::Driver)?;
            tracing::info!(%interface, "pass program attached");
            wait_for_shutdown().await?;
            Ok(())
        }
        Command::Decap { interface, xdp_mode } => {
            let decap = Decap::attach(&interface, xdp_mode.xdp_mode())?;
            tracing::info!(%interface, mode = ?decap.mode, addresses = ?decap.addresses, "decap attached");
            wait_for_shutdown().await?;
            tracing::info!(%interface, "detaching decap");
            drop(decap);
            Ok(())
        }
    }
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
