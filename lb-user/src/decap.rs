//! `lb decap --interface IF`: runs the `decap` program on a tunnel-mode backend.

use std::net::IpAddr;

use aya::programs::XdpMode;
use lb_common::{
    maps::{DecapKey, Family},
    stats::DecapCounter,
};

use crate::datapath::{Datapath, DatapathError, Options, Program};

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
    #[error("cannot list addresses of {interface}: {source}")]
    Addresses {
        /// Interface name.
        interface: String,
        /// The error.
        #[source]
        source: nix::Error,
    },
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
        let addresses = interface_addresses(interface)?;
        if addresses.is_empty() {
            return Err(DecapError::NoAddress {
                interface: interface.to_owned(),
            });
        }
        // Decap uses no conntrack; keep that map tiny.
        let mut datapath = Datapath::load(&Options {
            conntrack_size: 1,
            pin_dir: None,
        })?;
        for address in &addresses {
            datapath.add_decap_address(&decap_key(*address))?;
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

/// The `DECAP_ADDRS` key of an address.
pub fn decap_key(address: IpAddr) -> DecapKey {
    let mut key = DecapKey::default();
    match address {
        IpAddr::V4(v4) => {
            key.family = Family::V4 as u8;
            key.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            key.family = Family::V6 as u8;
            key.addr = v6.octets();
        }
    }
    key
}

/// Every IPv4 and IPv6 address of `interface` (in the calling thread's network namespace).
pub fn interface_addresses(interface: &str) -> Result<Vec<IpAddr>, DecapError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|source| DecapError::Addresses {
        interface: interface.to_owned(),
        source,
    })?;
    Ok(addrs
        .filter(|ifaddr| ifaddr.interface_name == interface)
        .filter_map(|ifaddr| {
            let address = ifaddr.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect())
}
