//! Builds the XDP programs (lb-ebpf, nightly + bpf-linker) and leaves the object in OUT_DIR,
//! where `datapath::OBJECT` embeds it. `cargo xtask setup` installs what this needs.
//!
//! aya-build compiles in a target directory under OUT_DIR, and every run of this script has an
//! OUT_DIR of its own: the debug build, clippy's check (its wrapper makes this script a unit
//! of its own), the release build, rustdoc. Each compiled lb-ebpf and `core` for the BPF target
//! from scratch (about 40 s on 2 cores; the programs are always built in release mode, so the
//! objects were the same). They are built in one directory per cargo target directory instead,
//! `<target>/ebpf/`, where the nested cargo finds them up to date after the first run, and the
//! object is copied to this run's OUT_DIR. Nested cargo runs on one directory wait for each
//! other (cargo's lock).

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // lb-ebpf compiles lb-common for the BPF target; aya-build only watches lb-ebpf itself.
    println!("cargo:rerun-if-changed=../lb-common/src");
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: "../lb-ebpf",
        ..Default::default()
    };
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    // Cargo marks the root of its target directory with CACHEDIR.TAG.
    let Some(target) = out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
    else {
        return aya_build::build_ebpf([package], aya_build::Toolchain::default());
    };
    let shared = target.join("ebpf");
    fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    // aya-build takes its output directory from OUT_DIR only.
    env::set_var("OUT_DIR", &shared);
    let built = aya_build::build_ebpf([package], aya_build::Toolchain::default());
    env::set_var("OUT_DIR", &out_dir);
    built?;
    let (from, to) = (shared.join("lb"), out_dir.join("lb"));
    fs::copy(&from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}
