//! Shared harness of lb's integration tests, one folder per kind of test:
//!
//! - [`packet`]: frames built with etherparse run through the real, verifier-loaded XDP
//!   program with `BPF_PROG_TEST_RUN` (no network needed);
//! - [`netns`]: labs of network namespaces (the shared [`lb_lab`] toolkit plus what needs lb:
//!   its `pass` program on the switch ports, the real `lb run` process, the DSR agent lab);
//! - [`container`]: a Debian 12 container with systemd as PID 1, for the package's units;
//! - [`bench`](mod@bench): what the benchmark binaries in `src/bin/` measure with and how they report.
//!
//! Every test here needs root (BPF, namespaces).

pub mod bench;
pub mod container;
pub mod deploy;
pub mod netns;
pub mod packet;
pub mod proc_stat;
