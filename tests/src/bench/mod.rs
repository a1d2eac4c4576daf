//! Benchmarks of the datapath: the per-packet cost of each path against a trivial XDP program
//! ([`cost`]) and the kernel memory of the maps ([`memory`]), reported as [`crate::report_table::Section`]s.
//! The `bench-packet` binary runs them; `cargo xtask bench` renders its JSON.

pub mod cost;
pub mod memory;
