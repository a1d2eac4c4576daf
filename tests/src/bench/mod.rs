//! What the benchmark binaries in `src/bin/` use: the per-packet cost of each datapath path
//! against a trivial XDP program ([`cost`]), the kernel memory of the maps ([`memory`]), lean
//! servers and clients for the namespace lab ([`load`]), and how results are printed
//! ([`report_table`]). `cargo xtask bench` renders their JSON.

pub mod cost;
pub mod load;
pub mod memory;
pub mod report_table;
