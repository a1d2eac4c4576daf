//! Network-namespace labs shared by `cargo xtask demo` and lb's integration tests.
//!
//! A lab is a set of network namespaces standing in for machines: [`Netns`] creates one (and
//! removes it on drop), runs `ip`, shell commands and Rust code inside it; [`Lan`] plugs hosts
//! into one bridge in a switch namespace, with addresses, in a few lines; [`servers`] are the
//! small TCP and UDP servers that answer with their name, so a client can tell which backend a
//! connection reached; [`routing`] has what labs of several lb instances add: a router with a
//! client behind it, bird2, FRR and keepalived as processes ([`Daemon`], their files in a
//! [`Scratch`] directory) and their configurations.
//!
//! [`debian_root`] is the Debian 12 root the systemd test boots as a container, bootstrapped
//! once and cached.
//!
//! Nothing here loads BPF. What a lab needs of lb itself (its `pass` program on the switch
//! ports, the agent) is the caller's job: the tests attach programs through
//! `lb_user::datapath`, the demo runs the `lb` binary. So xtask builds without the eBPF
//! toolchain.
//!
//! Commands and namespace operations come in two forms: panicking for tests (`sh`, `ip`,
//! `run`...) and `try_` returning [`LabError`] for the demo, which reports errors and cleans
//! up. Building a [`Lan`] returns [`LabError`].
//!
//! Everything needs root (namespaces, `ip`, `ethtool`, `nsenter`).

#![deny(missing_docs)]

mod command;
mod daemon;
pub mod debian_root;
mod error;
mod lan;
mod netns;
pub mod routing;
pub mod servers;

pub use command::{sh, try_sh};
pub use daemon::{Daemon, Scratch};
pub use error::LabError;
pub use lan::{Addresses, Host, Lan, Naming, Subnets, LAB_SUBNETS};
pub use netns::Netns;
