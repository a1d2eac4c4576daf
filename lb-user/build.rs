//! Builds the XDP programs (lb-ebpf, nightly + bpf-linker) and leaves the object in OUT_DIR,
//! where `datapath::OBJECT` embeds it. `cargo xtask setup` installs what this needs.

fn main() -> anyhow::Result<()> {
    // lb-ebpf compiles lb-common for the BPF target; aya-build only watches lb-ebpf itself.
    println!("cargo:rerun-if-changed=../lb-common/src");
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: "../lb-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
