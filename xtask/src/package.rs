//! `cargo xtask package`: the Debian package of lb, built with cargo-deb.
//!
//! A release build of `lb`, then the man pages and shell completions written by the built
//! binary itself (`lb generate man|completions DIR`, a hidden command) into
//! `target/release/package/`, then `cargo deb --no-build`, which takes everything else from
//! `[package.metadata.deb]` in lb-user/Cargo.toml (units, example configuration and
//! maintainer scripts from packaging/). xtask cannot depend on lb-user (its build compiles the
//! eBPF programs), and generating from the shipped binary keeps the pages true to it.
//!
//! `cargo xtask test` packages its debug build instead ([`Build::Debug`]): the same files,
//! units and scripts, the binary of the same source (stripped), without compiling the whole
//! tree a second time in release mode (about 4 of its minutes on 2 cores). The tests check
//! what the package holds and how it installs, runs and goes, not how fast it forwards.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{cmd, header, workspace_root};

/// Environment variable through which `cargo xtask test` tells the package test which `.deb`
/// to check.
pub const DEB_ENV: &str = "LB_DEB";

/// The target directory (`CARGO_TARGET_DIR`, else `target/` in the workspace).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// How `cargo xtask test` builds: every target of the default members, tests included, so
/// that the dependencies are compiled once, with the features the tests unify (a plain
/// `cargo build` leaves out the dev-dependencies' features, and `cargo test` compiled tokio
/// and everything above it again); `cargo test` then only runs.
pub const TEST_BUILD: &[&str] = &["build", "--all-targets"];

/// Which build of `lb` the package holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// `cargo build --release`: the package to ship.
    Release,
    /// The debug build (`cargo build`), stripped and compressed fast: for the tests.
    Debug,
}

impl Build {
    /// Cargo's arguments for this build, its directory under the target directory, and the
    /// arguments cargo-deb needs to take the binary from there (the assets in Cargo.toml
    /// name `target/release/`, which cargo-deb maps to the profile's directory).
    fn cargo_args(
        self,
    ) -> (
        &'static [&'static str],
        &'static str,
        &'static [&'static str],
    ) {
        match self {
            Self::Release => (&["build", "--release", "-p", "lb-user"], "release", &[]),
            // As `cargo xtask test` builds: other arguments unify other features and build
            // lb again (`-p lb-user` alone took 35 s). cargo-deb warns that it is meant for
            // release profiles: this package is not one to ship.
            Self::Debug => (
                TEST_BUILD,
                "debug",
                &["--profile", "dev", "--strip", "--fast"],
            ),
        }
    }
}

/// Builds the package of `build` (the release one in `target/debian/`, the debug one in
/// `target/debug/debian/`); returns the path of the `.deb`.
pub fn run(build: Build) -> Result<PathBuf> {
    let root = workspace_root();
    let (cargo_args, dir, deb_args) = build.cargo_args();
    let mut cargo = Command::new("cargo");
    cargo.args(cargo_args).current_dir(&root);
    header(&format!("package: {}", cmd::display(&cargo)));
    cmd::run(&mut cargo)?;
    let built = target_dir().join(dir);
    let lb = built.join("lb");
    let generated = built.join("package");
    if generated.exists() {
        fs::remove_dir_all(&generated)
            .with_context(|| format!("cannot remove the old {}", generated.display()))?;
    }

    header("package: man pages and completions from the built lb");
    let man = generated.join("man");
    cmd::run(Command::new(&lb).arg("generate").arg("man").arg(&man))?;
    gzip_pages(&man)?;
    cmd::run(
        Command::new(&lb)
            .arg("generate")
            .arg("completions")
            .arg(generated.join("completions")),
    )?;

    header("package: cargo deb");
    let mut args: Vec<String> = deb_args.iter().map(|a| (*a).to_owned()).collect();
    if build == Build::Debug {
        // Not beside the release package in target/debian/, which it would replace.
        args.push("--output".to_owned());
        args.push(format!("{}/", built.join("debian").display()));
    }
    let deb = cargo_deb(&root, &args)?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// `gzip -9n` every page (Debian policy: compressed, no timestamp in the archive).
fn gzip_pages(dir: &Path) -> Result<()> {
    let pages: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    if pages.is_empty() {
        bail!("lb generate man wrote no page into {}", dir.display());
    }
    cmd::run(Command::new("gzip").arg("-9nf").args(&pages))
}

/// Runs `cargo deb --no-build ARGS` and returns the path it printed.
fn cargo_deb(root: &Path, args: &[String]) -> Result<PathBuf> {
    let mut command = Command::new("cargo");
    command
        .args(["deb", "-p", "lb-user", "--no-build"])
        .args(args)
        .current_dir(root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    println!("$ {}", cmd::display(&command));
    let output = command
        .output()
        .context("cannot start `cargo deb` (run `cargo xtask setup`, which installs cargo-deb)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        bail!(
            "`cargo deb` failed ({}): see its output above",
            output.status
        );
    }
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb succeeded but printed no .deb path")?;
    if !deb.is_file() {
        bail!(
            "cargo deb printed {} but there is no such file",
            deb.display()
        );
    }
    Ok(deb)
}
