//! lb's XDP programs.
//!
//! - `lb`: the load balancer. Parse → find the VIP → find the backend → forward.
//! - `decap`: for tunnel-mode backends; strips our IP-in-IP headers.
//! - `steer_check`: a tc program on the agent's check interface; sends health checks to their
//!   backends the way `lb` sends clients' packets.
//! - `pass` and `tx`: trivial programs for labs (a veth peer must run an XDP program for frames
//!   sent with XDP_TX to be delivered) and for the benchmark floor.
//!
//! Built for `bpfel-unknown-none` by aya-build (lb-user/build.rs). For any other target this is
//! an empty binary, so the workspace still builds on the host.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod balance;
#[cfg(target_arch = "bpf")]
mod decap;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod steer;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
