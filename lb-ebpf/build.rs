//! Code generation options of the BPF build, passed to bpf-linker (which generates the code).
//!
//! `allows-misaligned-mem-access` (LLVM 22): a 4-byte address or a 40-byte header in a packet
//! is read and written with a few word accesses instead of one access per byte. The verifier
//! accepts misaligned packet and map-value access on architectures with efficient unaligned
//! access (x86-64, arm64) but never on the stack, so keys built on the stack are written in
//! aligned 8-byte words (`net::StackKey`).
//!
//! `--disable-expand-memcpy-in-order`: bpf-linker otherwise has LLVM expand every copy into
//! loads and stores of the operands' alignment, so a copy of byte arrays (headers, addresses)
//! moved one byte at a time even where misaligned access is allowed.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
        println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
    }
}
