//! Routing for labs with several lb instances: the router upstream of them ([`Upstream`]: a
//! client behind it, forwarding, the kernel's L4 multipath hash) and the daemons operators run
//! next to lb: [`bird`] (bird2), [`frr`] (FRR: zebra, bgpd, bfdd) and [`keepalived`] (VRRP),
//! each as configuration text (what `docs/REDUNDANCY.md` shows) and as a process in a
//! namespace with its own files.
//!
//! lb itself speaks no routing protocol: it keeps one blackhole route per servable VIP address
//! in a kernel table of its own (`[announce]`), and the daemon on the same host announces what
//! it finds there.

pub mod bird;
pub mod examples;
pub mod frr;
pub mod keepalived;
mod upstream;

use std::{net::IpAddr, time::Duration};

pub use upstream::{l4_multipath_sysctls, Upstream};

/// BFD timers: a peer is declared dead after `multiplier` missed packets sent every
/// `interval`, so detection takes at most `interval × multiplier` (plus scheduling).
#[derive(Clone, Copy, Debug)]
pub struct Bfd {
    /// Transmit and receive interval, both ways.
    pub interval: Duration,
    /// Packets missed before the session is down.
    pub multiplier: u32,
}

/// The labs' BFD: 100 ms × 3, a dead host is noticed within 300 ms.
pub const LAB_BFD: Bfd = Bfd {
    interval: Duration::from_millis(100),
    multiplier: 3,
};

impl Bfd {
    /// How long a dead peer goes unnoticed at most.
    pub fn detection_time(&self) -> Duration {
        self.interval * self.multiplier
    }

    /// bird's `protocol bfd` for `interface`.
    fn bird_protocol(&self, interface: &str) -> String {
        let ms = self.interval.as_millis();
        let multiplier = self.multiplier;
        format!(
            r#"# BFD: a peer missing {multiplier} packets {ms} ms apart is down (and its BGP session with it).
protocol bfd {{
  interface "{interface}" {{
    min rx interval {ms} ms;
    min tx interval {ms} ms;
    idle tx interval 300 ms;
    multiplier {multiplier};
  }};
}}
"#
        )
    }
}

/// A BGP neighbour.
#[derive(Clone, Debug)]
pub struct Peer {
    /// A name for it (bird protocol names are derived from it: letters, digits, `_`).
    pub name: String,
    /// Its address on the shared link.
    pub address: IpAddr,
    /// Its autonomous system.
    pub asn: u32,
}
