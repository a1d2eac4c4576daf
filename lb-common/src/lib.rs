//! Types shared by the lb XDP programs (kernel side) and the `lb` agent and CLI (userspace).
//!
//! Everything that crosses the kernel/userspace boundary is defined here once: map keys and
//! values (`#[repr(C)]`, explicit padding, addresses and ports as big-endian byte arrays), the
//! counter indices, and the flow hash, so userspace can predict exactly what the kernel does.
//! The pure header arithmetic of the datapath ([`ip`]: checksum, lengths, fragments, flow
//! label) lives here too, so it runs under host unit tests.
//!
//! Without features this crate is `no_std` and has no dependencies; the `user` feature adds
//! `aya::Pod` impls, typed
//! constructors and accessors of the map types ([`encoding`]) and the Maglev table builder.
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![deny(missing_docs)]

pub mod check_path;
pub mod conntrack;
#[cfg(feature = "user")]
pub mod encoding;
pub mod flow;
pub mod ip;
pub mod layout;
pub mod least_conn;
pub mod lookup;
#[cfg(feature = "user")]
pub mod maglev;
pub mod maps;
pub mod stats;
pub mod tunnel;
pub mod vip_index;
mod word_hash;

pub use flow::{flow_hash, FlowKey};
