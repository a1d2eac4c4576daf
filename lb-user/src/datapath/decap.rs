//! The `decap` program attached to a tunnel-mode backend's interface (`lb decap`).

use std::net::IpAddr;

use aya::programs::XdpMode;
use lb_common::{maps::DecapKey, stats::DecapCounter};

use super::{Datapath, DatapathError, Options, Program};
use crate::interface::{self, InterfaceError};

/// Errors of `lb decap`.
#[derive(Debug, thiserror::Error)]
pub enum DecapError {
    /// The interface has no IPv4 or IPv6 address to accept tunnels for.
    #[error(
        "interface {interface} has no IP address: add one (tunnels are addressed to it) and retry"
    )]
    NoAddress {
        /// Interface name.
        interface: String,
    },
    /// Listing addresses failed.
    #[error(transparent)]
    Interface(#[from] InterfaceError),
    /// Loading or attaching failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// The `decap` program attached to an interface; detached on drop.
pub struct Decap {
    datapath: Datapath,
    /// Addresses tunnels are accepted for.
    pub addresses: Vec<IpAddr>,
    /// The XDP mode the program runs in.
    pub mode: XdpMode,
}

impl Decap {
    /// Loads `decap`, accepts tunnels for every address of `interface`, and attaches (native
    /// mode, or generic if the driver has no native XDP and `mode` is `None`).
    pub fn attach(interface: &str, mode: Option<XdpMode>) -> Result<Self, DecapError> {
        let addresses = interface::addresses(interface)?;
        if addresses.is_empty() {
            return Err(DecapError::NoAddress {
                interface: interface.to_owned(),
            });
        }
        // Decap uses no conntrack; keep that map tiny.
        let mut datapath = Datapath::load(&Options {
            conntrack_size: 1,
            pin_dir: None,
            fresh_state: false,
        })?;
        for address in &addresses {
            datapath.add_decap_address(&DecapKey::new(*address))?;
        }
        let (_, mode) = datapath.attach_auto(Program::Decap, interface, mode)?;
        Ok(Self {
            datapath,
            addresses,
            mode,
        })
    }

    /// The loaded datapath (for counters).
    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    /// The program's counters so far, summed over CPUs.
    pub fn counts(&mut self) -> Result<DecapCounts, DecapError> {
        Ok(DecapCounts {
            decapsulated: self.datapath.decap_counter(DecapCounter::Decapsulated)?,
            passed: self.datapath.decap_counter(DecapCounter::Passed)?,
            malformed: self.datapath.decap_counter(DecapCounter::Malformed)?,
        })
    }
}

/// What the `decap` program did (see [`DecapCounter`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapCounts {
    /// Tunnel headers stripped.
    pub decapsulated: u64,
    /// Packets that were not tunnels for us, passed untouched.
    pub passed: u64,
    /// Malformed tunnel packets, dropped.
    pub malformed: u64,
}
