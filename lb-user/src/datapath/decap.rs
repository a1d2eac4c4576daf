//! The `decap` program attached to a tunnel-mode backend's interface (`lb decap`).

use std::net::IpAddr;

use aya::programs::XdpMode;
use lb_common::{
    maps::{names, DecapKey},
    stats::DecapCounter,
};

use super::{error::map_error, Datapath, DatapathError, Options, Program};
use crate::{
    interface::{self, InterfaceError},
    nexthop::NextHop,
};

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
    /// `HOP_NEIGHBOURS`: second-chance hops the program has no route to.
    hop_neighbours: aya::maps::Queue<aya::maps::MapData, [u32; 4]>,
    /// `HOP_ROUTES`: how the program reaches each hop.
    hop_routes: aya::maps::HashMap<aya::maps::MapData, DecapKey, lb_common::maps::HopRoute>,
    /// Addresses tunnels are accepted for.
    pub addresses: Vec<IpAddr>,
    /// The XDP mode the program runs in.
    pub mode: XdpMode,
}

impl Datapath {
    /// Takes `HOP_NEIGHBOURS` out of the object (once).
    pub fn take_hop_neighbours(
        &mut self,
    ) -> Result<aya::maps::Queue<aya::maps::MapData, [u32; 4]>, DatapathError> {
        let map = names::HOP_NEIGHBOURS;
        aya::maps::Queue::try_from(self.take_object_map(map)?).map_err(map_error(map))
    }

    /// Takes `HOP_ROUTES` out of the object (once).
    pub fn take_hop_routes(
        &mut self,
    ) -> Result<
        aya::maps::HashMap<aya::maps::MapData, DecapKey, lb_common::maps::HopRoute>,
        DatapathError,
    > {
        let map = names::HOP_ROUTES;
        aya::maps::HashMap::try_from(self.take_object_map(map)?).map_err(map_error(map))
    }
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
        let hop_neighbours = datapath.take_hop_neighbours()?;
        let hop_routes = datapath.take_hop_routes()?;
        let (_, mode) = datapath.attach_auto(Program::Decap, interface, mode)?;
        Ok(Self {
            datapath,
            hop_neighbours,
            hop_routes,
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
        let mut count = |counter| self.datapath.decap_counter(counter);
        Ok(DecapCounts {
            decapsulated: count(DecapCounter::Decapsulated)?,
            passed: count(DecapCounter::Passed)?,
            malformed: count(DecapCounter::Malformed)?,
            hop_local: count(DecapCounter::HopLocal)?,
            hop_forwarded: count(DecapCounter::HopForwarded)?,
            hop_not_taken: count(DecapCounter::HopNotTaken)?,
            hop_unresolved: count(DecapCounter::HopUnresolved)?,
        })
    }

    /// Tells the program how to reach second-chance hop `hop`.
    pub fn set_hop_route(&mut self, hop: IpAddr, next_hop: &NextHop) -> Result<(), DecapError> {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&next_hop.dst_mac);
        macs[6..].copy_from_slice(&next_hop.src_mac);
        let route = lb_common::maps::HopRoute {
            ifindex: next_hop.ifindex,
            macs,
        };
        self.hop_routes
            .insert(DecapKey::new(hop), route, 0)
            .map_err(map_error(names::HOP_ROUTES))?;
        Ok(())
    }

    /// Forgets how to reach `hop` (it could not be resolved again).
    pub fn remove_hop_route(&mut self, hop: IpAddr) {
        let _ = self.hop_routes.remove(&DecapKey::new(hop));
    }

    /// The second-chance hops the program could not reach for want of a route since the last
    /// call (each once).
    pub fn hops_without_route(&mut self) -> Vec<IpAddr> {
        let mut hops = std::collections::BTreeSet::new();
        while let Ok(words) = self.hop_neighbours.pop(0) {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let hop = if words[1..] == [0; 3] {
                IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
            } else {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&bytes);
                IpAddr::from(octets)
            };
            hops.insert(hop);
        }
        hops.into_iter().collect()
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
    /// Packets with a second-chance hop whose connection this host has: kept.
    pub hop_local: u64,
    /// Packets with a second-chance hop sent on to it.
    pub hop_forwarded: u64,
    /// Packets with a hop that is this host: kept.
    pub hop_not_taken: u64,
    /// Packets with a hop not resolved yet: dropped, the hop resolved.
    pub hop_unresolved: u64,
}
