//! Labs of network namespaces with lb in them.
//!
//! The namespaces, the bridge LAN, the name servers and the routing daemons are [`lb_lab`]'s
//! (shared with `cargo xtask demo`, which must build without BPF); what needs lb itself is
//! here: [`topology::Lan`] attaches lb's `pass` program to the switch ports, [`agent`] runs the
//! real `lb` binary in a namespace, [`dsr_lab`] is the ready client + lb + three DSR backends
//! lab of the agent tests, [`redundancy`] the two-instance lab behind a router (issue #15),
//! and [`load`] the client traffic its failover tests measure.

pub mod agent;
pub mod dsr_lab;
pub mod flood;
pub mod load;
pub mod previous;
pub mod redundancy;
pub mod topology;

pub use lb_lab::{servers, sh, Netns};
