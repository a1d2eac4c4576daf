//! Shared harness of lb's integration tests: frames built with etherparse, a packet lab that
//! runs the real XDP program through `BPF_PROG_TEST_RUN`, and network-namespace labs.
//!
//! Every test here needs root (BPF, namespaces). The benchmark binaries in `src/bin/` use the
//! same harness (`load`, `probe`, `report_table`).

pub mod agent;
pub mod bench;
pub mod dsr_lab;
pub mod frames;
pub mod lab;
pub mod load;
pub mod netns;
pub mod probe;
pub mod report_table;
pub mod topology;
