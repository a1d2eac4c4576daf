//! Developer tasks for the `lb` workspace. Run as `cargo xtask <COMMAND>`.

mod bench;
mod cmd;
mod demo;
mod package;
mod setup;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for the lb workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the machine and install what is missing (idempotent).
    ///
    /// Checks root, bpffs at /sys/fs/bpf (mounts it if needed), kernel BTF and XDP
    /// support; installs if missing: rust nightly + rust-src + clippy, bpf-linker 0.10.4, cargo-deb
    /// 3.8.0, and the apt packages providing ip, ethtool, tcpdump, bpftool, ps, bird (bird2),
    /// keepalived and vtysh (frr), without letting their services run, and dpkg-deb,
    /// dpkg-shlibdeps, systemd-analyze, man and script for the package test, debootstrap and
    /// systemd-nspawn (systemd-container) for the systemd test.
    Setup,
    /// Run setup, the gates (`cargo fmt --check`, `cargo clippy --all-targets -D warnings`,
    /// the same for lb-ebpf on the BPF target with nightly, `cargo doc` with warnings denied), `cargo build --all-targets`, the package
    /// of that debug build (as `cargo xtask package` makes it, with the debug `lb` stripped),
    /// then `cargo test` (every unit, packet and netns test, the package's and the systemd
    /// test's); at the end, a table of the time each phase took.
    ///
    /// Arguments after `--` go to the test harness:
    /// `cargo xtask test -- --nocapture` runs `cargo test -- --nocapture`.
    /// If they contain their own `--`, they are passed to `cargo test` verbatim:
    /// `cargo xtask test -- --no-fail-fast -- --nocapture`.
    /// Sets RUST_BACKTRACE=1. Needs root (BPF, network namespaces).
    Test {
        /// Skip the setup phase (for fast iteration on an already set-up machine).
        #[arg(long)]
        skip_setup: bool,
        /// Extra arguments (after `--`), see above.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// Show lb at work in a lab of network namespaces, narrated (about 10 s once built; root).
    ///
    /// Runs setup and `cargo build -p lb-user`, builds a bridge with a client, the load
    /// balancer and three backends (namespaces `lbdemo-<pid>-*`), runs `lb run` with
    /// examples/demo.toml's configuration, sends real TCP connections, stops and restarts a
    /// backend. Everything is removed at the end, on failure and on Ctrl-C.
    Demo {
        /// Leave the lab running at the end and print how to use it.
        #[arg(long)]
        keep: bool,
        /// Remove every demo lab (namespaces, processes, pinned state, temp files), then exit.
        #[arg(long, conflicts_with = "keep")]
        clean: bool,
    },
    /// Build the Debian package target/debian/lb_VERSION-1_ARCH.deb (release build; cargo-deb).
    ///
    /// Contains /usr/bin/lb, the systemd units lb.service and lb-decap@.service, the example
    /// /etc/lb/lb.toml (a conffile), man pages and bash/zsh/fish completions generated from the
    /// built binary, README.md and DEPLOY.md in /usr/share/doc/lb/. Install it on a gateway
    /// with `apt install ./target/debian/lb_*.deb`; see docs/DEPLOY.md.
    Package {
        /// Package the debug build instead, into target/debug/debian/ (what `cargo xtask
        /// test` checks; not for shipping).
        #[arg(long)]
        debug: bool,
    },
    /// Run the benchmarks, print their tables and write docs/BENCHMARKS.md (root; ~8 min).
    ///
    /// Runs setup and a release build, then: per-packet cost of each datapath path against
    /// an `XDP_TX` floor (BPF_PROG_TEST_RUN, live frames), Maglev build time (criterion),
    /// ring swap latency with the real agent, connections per second and throughput through
    /// the VIP versus direct (namespace lab), map memory, and the agent at 10, 100 and 1000
    /// VIPs x 16 backends (start-up, CPU per check, reload, status, memory).
    Bench {
        /// Run only these benchmarks (comma-separated: packet, maglev, swap, lab, agent); the
        /// document is then not rewritten.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Print the tables without rewriting docs/BENCHMARKS.md.
        #[arg(long)]
        no_write: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Test { skip_setup, args } => test(skip_setup, &args),
        Cmd::Demo { clean: true, .. } => demo::clean(),
        Cmd::Demo { keep, .. } => demo::run(keep),
        Cmd::Bench { only, no_write } => bench::run(&only, no_write),
        Cmd::Package { debug } => package::run(if debug {
            package::Build::Debug
        } else {
            package::Build::Release
        })
        .map(drop),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (parent of the xtask crate).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn header(title: &str) {
    println!("\n==> {title}");
}

/// The flags aya-build (0.2) compiles the programs with: the same here, or cargo would
/// rebuild `core` for the BPF target with other flags, over the build's.
fn aya_build_rustflags() -> String {
    [
        &format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f")
}

/// Runs a gate: on failure, says what it means and what to do.
fn gate(command: &mut Command, meaning: &str) -> Result<()> {
    cmd::run(command).map_err(|error| anyhow::anyhow!("{meaning} ({error})"))
}

/// The phases of `cargo xtask test` and how long each took, printed as a table at the end,
/// also when one fails (the table then ends with it).
struct Phases {
    started: Instant,
    done: Vec<(&'static str, Duration, bool)>,
}

impl Phases {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Runs phase `name` (its header is printed by `f`), timing it.
    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let result = f();
        self.done.push((name, started.elapsed(), result.is_ok()));
        result
    }

    fn print(&self) {
        header("time per phase");
        for (name, took, ok) in &self.done {
            let failed = if *ok { "" } else { "  FAILED" };
            println!("  {name:<48} {:>7.1} s{failed}", took.as_secs_f64());
        }
        let total = self.started.elapsed();
        println!(
            "  {:<48} {:>7.1} s ({} min {} s)",
            "total",
            total.as_secs_f64(),
            total.as_secs() / 60,
            total.as_secs() % 60
        );
    }
}

/// The thread making the systemd test's Debian root, and what it took.
type DebianRoot = Option<JoinHandle<(Result<PathBuf, lb_lab::LabError>, Duration)>>;

/// Waits for the Debian root's thread, if it runs, and records its time as a phase.
fn join_debian_root(
    phases: &mut Phases,
    thread: &mut DebianRoot,
) -> Option<Result<PathBuf, lb_lab::LabError>> {
    let (made, took) = thread
        .take()?
        .join()
        .expect("the Debian root's thread panicked");
    phases.done.push((
        "systemd test's Debian root (in the background)",
        took,
        made.is_ok(),
    ));
    Some(made)
}

fn test(skip_setup: bool, extra: &[OsString]) -> Result<()> {
    let mut phases = Phases::new();
    let mut debian_root = None;
    let result = test_phases(&mut phases, &mut debian_root, skip_setup, extra);
    // A phase failed while the root was being made: let debootstrap finish (the next run
    // finds the root), rather than leave it running without this process.
    if debian_root.is_some() {
        println!("waiting for the systemd test's Debian root to be made...");
        join_debian_root(&mut phases, &mut debian_root);
    }
    phases.print();
    result?;
    header("all phases passed");
    Ok(())
}

fn test_phases(
    phases: &mut Phases,
    debian_root: &mut DebianRoot,
    skip_setup: bool,
    extra: &[OsString],
) -> Result<()> {
    let root = workspace_root();

    if skip_setup {
        header("setup (skipped: --skip-setup)");
    } else {
        phases.run("setup", || {
            header("setup");
            setup::run()
        })?;
    }

    let cargo = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.args(args).current_dir(&root).env("RUST_BACKTRACE", "1");
        c
    };

    // The systemd test's Debian root (a minute to bootstrap the first time, mostly download
    // and unpacking) is made while the tree compiles.
    *debian_root = Some(std::thread::spawn(|| {
        let started = Instant::now();
        let root = lb_lab::debian_root::try_cached_root();
        (root, started.elapsed())
    }));

    // Gates first: a tree formatted one way, free of lints, with documentation that builds.
    phases.run("format: cargo fmt --check", || {
        header("format: cargo fmt --all --check");
        gate(
            &mut cargo(&["fmt", "--all", "--check"]),
            "the tree is not formatted: run `cargo fmt --all` and commit",
        )
    })?;

    // The default members, tests included (see package::TEST_BUILD): lb-ebpf is compiled
    // for the BPF target by lb-user/build.rs.
    phases.run("build: cargo build --all-targets", || {
        header("build: cargo build --all-targets");
        cmd::run(&mut cargo(package::TEST_BUILD))
    })?;

    phases.run("lints: cargo clippy", || {
        header("lints: cargo clippy --all-targets -- -D warnings");
        gate(
            &mut cargo(&["clippy", "--all-targets", "--", "-D", "warnings"]),
            "clippy found problems (above): fix them, or `#[expect(lint, reason = \"...\")]` where \
             the lint is wrong",
        )
    })?;

    // lb-ebpf is built for the BPF target only (by lb-user/build.rs, with nightly), so the
    // gate above does not see it: lint it for that target as it is built, in release mode
    // with aya-build's flags and in the target directory where lb-user/build.rs had it built
    // (aya-build's layout under target/ebpf/): `core` for the BPF target, the build scripts
    // and the proc macros are there already, and only lb-ebpf's own crates are checked. In a
    // directory of its own this took 116 s from a fresh clone; 2 s this way.
    phases.run("lints: lb-ebpf on the BPF target", || {
        header("lints: lb-ebpf for bpfel-unknown-none (nightly clippy, -D warnings)");
        let mut ebpf = Command::new("cargo");
        ebpf.args([
            "+nightly",
            "clippy",
            "-p",
            "lb-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--", "-D", "warnings"])
        .current_dir(&root)
        .env(
            "CARGO_TARGET_DIR",
            package::target_dir().join("ebpf/aya-build/target/lb-ebpf"),
        )
        .env("CARGO_ENCODED_RUSTFLAGS", aya_build_rustflags());
        gate(
            &mut ebpf,
            "clippy found problems in lb-ebpf (above): fix them, or `#[expect(lint, reason = \"...\")]`",
        )
    })?;

    phases.run("docs: cargo doc", || {
        header("docs: cargo doc --no-deps (warnings denied)");
        let mut doc = cargo(&["doc", "--no-deps", "--quiet"]);
        doc.env("RUSTDOCFLAGS", "-D warnings");
        gate(
            &mut doc,
            "rustdoc found problems (above): broken links or bad doc syntax",
        )
    })?;

    // The package tests (tests/tests/package.rs, systemd.rs) check and install this very
    // file: the package of the debug build just made (see package.rs).
    let deb = phases.run("package (of the debug build)", || {
        package::run(package::Build::Debug)
    })?;

    let made = join_debian_root(phases, debian_root).expect("started above");
    made.map_err(|error| {
        anyhow::anyhow!(
            "cannot make the systemd test's Debian root: {}",
            error.full_message()
        )
    })?;

    phases.run("test: cargo test", || {
        header("test: cargo test");
        let mut test = cargo(&["test"]);
        test.env(package::DEB_ENV, &deb);
        if !extra.is_empty() && !extra.iter().any(|a| a == "--") {
            test.arg("--");
        }
        test.args(extra);
        cmd::run(&mut test)
    })
}
