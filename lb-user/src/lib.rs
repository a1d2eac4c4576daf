//! lb: a layer-4 XDP load balancer. This library holds the agent, the CLI and the datapath
//! loader; `main.rs` is the `lb` binary.
#![deny(missing_docs)]

pub mod datapath;
pub mod decap;
