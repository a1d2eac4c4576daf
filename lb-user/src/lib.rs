//! lb: a layer-4 XDP load balancer. This library holds the agent, the CLI and the datapath
//! loader; `main.rs` is the `lb` binary. docs/ARCHITECTURE.md draws the map.
#![deny(missing_docs)]

pub mod admin;
pub mod agent;
pub mod availability;
pub mod check_paths;
pub mod cli;
pub mod config;
pub mod control;
pub mod counters;
pub mod datapath;
pub mod error;
pub mod fingerprint;
pub mod health;
pub mod interface;
pub mod metrics;
pub mod netlink;
pub mod nexthop;
pub mod records;
pub mod routes;
pub mod status;
pub mod watch;
