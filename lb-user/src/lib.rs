//! lb: a layer-4 XDP load balancer. This library holds the agent, the CLI and the datapath
//! loader; `main.rs` is the `lb` binary.
#![deny(missing_docs)]

pub mod agent;
pub mod config;
pub mod datapath;
pub mod decap;
pub mod health;
pub mod metrics;
pub mod nexthop;
pub mod report;
pub mod status;
pub mod watch;
