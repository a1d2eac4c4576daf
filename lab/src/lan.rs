//! A LAN of namespaces: every host has `eth0` plugged into one bridge `br0` in a switch
//! namespace, with an IPv4 address in a /24 and an IPv6 address in a /64.
//!
//! [`Lan::empty`] makes the switch, [`Lan::plug`] adds a host (its namespace, the cable, its
//! addresses); what a lab needs beyond that the caller adds afterwards: routes and addresses
//! on `lo` through each host's [`Netns`], more namespaces named like the LAN's with
//! [`Naming::create`] and cables between them with [`Netns::try_add_veth`], programs on the
//! ports ([`Lan::ports`]).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use crate::{
    error::LabError,
    netns::{unique_name, Netns},
};

/// An IPv4 /24 and an IPv6 /64 for the hosts of a LAN.
#[derive(Clone, Copy, Debug)]
pub struct Subnets {
    /// The first three bytes of the IPv4 /24.
    pub ipv4: [u8; 3],
    /// The first four groups of the IPv6 /64.
    pub ipv6: [u16; 4],
}

/// The tests' subnets: 10.77.0.0/24 and fd77::/64.
pub const LAB_SUBNETS: Subnets = Subnets {
    ipv4: [10, 77, 0],
    ipv6: [0xfd77, 0, 0, 0],
};

impl Subnets {
    /// Host `n`: `<ipv4>.n` and `<ipv6>::n` with `n`'s decimal digits read as hex, so the two
    /// look alike (host 10 of [`LAB_SUBNETS`] is 10.77.0.10 and fd77::10).
    pub fn host(&self, n: u8) -> Addresses {
        let [a, b, c] = self.ipv4;
        let [g0, g1, g2, g3] = self.ipv6;
        let low = u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex digits");
        Addresses {
            ip: Ipv4Addr::new(a, b, c, n),
            ip6: Ipv6Addr::new(g0, g1, g2, g3, 0, 0, 0, low),
        }
    }
}

/// The addresses of a host's `eth0` (a /24 and a /64).
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    /// IPv4.
    pub ip: Ipv4Addr,
    /// IPv6.
    pub ip6: Ipv6Addr,
}

/// How a LAN names its namespaces; `role` is a host's name or `sw` for the switch.
#[derive(Clone, Debug)]
pub enum Naming {
    /// `lbt-<tag>-<role>-<pid>-<n>` ([`Netns::new`]): unique, for tests running in parallel.
    Unique(String),
    /// `<prefix>-<role>`: predictable, so another process can find and remove them (the
    /// demo's `lbdemo-<pid>-*`).
    Prefixed(String),
}

impl Naming {
    /// Creates the namespace of `role` (a host of the LAN, or another namespace of the same
    /// lab, such as a router beside it).
    pub fn create(&self, role: &str) -> Result<Netns, LabError> {
        match self {
            Self::Unique(tag) => Netns::create(unique_name(&format!("{tag}-{role}"))),
            Self::Prefixed(prefix) => Netns::create(format!("{prefix}-{role}")),
        }
    }
}

/// One host of a LAN.
pub struct Host {
    /// Its name in the LAN (`client`, `lb`, `b1`...).
    pub name: String,
    /// Its namespace.
    pub ns: Netns,
    /// IPv4 address of its `eth0`.
    pub ip: Ipv4Addr,
    /// IPv6 address of its `eth0`.
    pub ip6: Ipv6Addr,
    /// MAC of its `eth0`.
    pub mac: [u8; 6],
    /// Interface index of its `eth0` (in its namespace).
    pub ifindex: u32,
    /// The other end of its cable: `p<i>` in the switch namespace, for host `i`.
    pub port: String,
}

impl Host {
    /// Its `eth0` address of `family`'s kind (`v6`: IPv6).
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.ip6)
        } else {
            IpAddr::V4(self.ip)
        }
    }
}

/// Hosts on one bridge; every namespace is removed on drop.
pub struct Lan {
    /// The hosts, in the order plugged.
    pub hosts: Vec<Host>,
    /// The switch namespace, holding `br0` and the ports (dropped last).
    pub switch: Netns,
    /// How the namespaces are named.
    naming: Naming,
}

impl Lan {
    /// The switch alone: its namespace with the bridge `br0`, up.
    pub fn empty(naming: Naming) -> Result<Self, LabError> {
        let switch = naming.create("sw")?;
        switch.try_ip_batch(&[
            "link add br0 type bridge".to_owned(),
            "link set br0 up".to_owned(),
        ])?;
        Ok(Self {
            hosts: Vec::new(),
            switch,
            naming,
        })
    }

    /// A switch and one host per name, host `i` at [`LAB_SUBNETS`]`.host(10 + i)`
    /// (10.77.0.10, fd77::10 for host 0).
    pub fn with_hosts(naming: Naming, names: &[&str]) -> Result<Self, LabError> {
        let mut lan = Self::empty(naming)?;
        for (i, name) in names.iter().enumerate() {
            let n = u8::try_from(10 + i).expect("at most 245 hosts");
            lan.plug(name, LAB_SUBNETS.host(n))?;
        }
        Ok(lan)
    }

    /// Adds host `name`: its namespace, a veth pair from its `eth0` to the next switch port
    /// `p<i>` on `br0`, its addresses, `eth0` up, TX checksum offload off.
    ///
    /// The offload is off because a frame another XDP program sends back out with `XDP_TX`
    /// would otherwise carry a partial checksum to its receiver. (A veth delivers such frames
    /// only when the receiving peer runs an XDP program too: that is the caller's, see the
    /// crate documentation.)
    pub fn plug(&mut self, name: &str, addresses: Addresses) -> Result<&Host, LabError> {
        let Addresses { ip, ip6 } = addresses;
        let ns = self.naming.create(name)?;
        // No duplicate address detection on the interface created next: while its link-local
        // address is tentative (a second or two), a DSR backend cannot send the neighbour
        // solicitation for a client it answers from a VIP on `lo`, and the first IPv6 answers
        // are lost. Long-running hosts are past that.
        ns.try_sysctl("net/ipv6/conf/default/accept_dad", "0")?;
        let port = format!("p{}", self.hosts.len());
        ns.try_add_veth("eth0", &self.switch, &port)?;
        // nodad: the address is usable at once, not after duplicate address detection.
        ns.try_ip_batch(&[
            format!("addr add {ip}/24 dev eth0"),
            format!("addr add {ip6}/64 dev eth0 nodad"),
            "link set eth0 up".to_owned(),
        ])?;
        ns.try_exec("ethtool -K eth0 tx off")?;
        let mac = ns.try_mac("eth0")?;
        let ifindex = ns.try_ifindex("eth0")?;
        self.switch.try_ip_batch(&[
            format!("link set {port} up"),
            format!("link set {port} master br0"),
        ])?;
        self.hosts.push(Host {
            name: name.to_owned(),
            ns,
            ip,
            ip6,
            mac,
            ifindex,
            port,
        });
        Ok(self.hosts.last().expect("just pushed"))
    }

    /// How its namespaces are named (for more namespaces of the same lab).
    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    /// Host `i` (in the order plugged).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The host called `name`.
    pub fn host_named(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|host| host.name == name)
    }

    /// The switch ports, `p0`, `p1`... (in the switch namespace), one per host.
    pub fn ports(&self) -> Vec<String> {
        self.hosts.iter().map(|host| host.port.clone()).collect()
    }

    /// Sets the MTU of `hosts`' `eth0` and of every switch port (so the bridge carries frames
    /// of that size). Tunnel-mode labs use it to give the LB-to-backend path room for the outer
    /// header while the client keeps a 1500-byte MTU.
    pub fn set_mtu(&self, hosts: &[usize], mtu: u32) {
        let ports: Vec<String> = self
            .hosts
            .iter()
            .map(|host| format!("link set {} mtu {mtu}", host.port))
            .collect();
        self.switch.ip_batch(&ports);
        for &i in hosts {
            self.hosts[i].ns.ip(&format!("link set eth0 mtu {mtu}"));
        }
    }

    /// Waits until every link set up in every namespace (`lo` aside) is operationally up. The kernel
    /// activates a device's queueing discipline (until then it drops what is sent) when it
    /// sees the carrier, in a work item that runs up to a second later on a busy machine; the
    /// operational state changes with it.
    pub fn wait_links_up(&self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut down = Vec::new();
            for ns in self.hosts.iter().map(|host| &host.ns).chain([&self.switch]) {
                down.extend(links_not_up(ns)?);
            }
            if down.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::LinksDown { timeout, down });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `<namespace>/<link> <state>` of each link of `ns` that is set up but not operationally up,
/// `lo` aside.
fn links_not_up(ns: &Netns) -> Result<Vec<String>, LabError> {
    let out = ns.try_ip("-br link show up")?;
    // `eth0@if2  UP  ...`; lo is UNKNOWN, br0 follows its ports.
    Ok(out
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (name, state) = (fields.next()?, fields.next()?);
            let name = name.split('@').next().unwrap_or(name);
            (name != "lo" && state != "UP").then(|| format!("{}/{name} {state}", ns.name))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_look_alike() {
        let host = LAB_SUBNETS.host(10);
        assert_eq!(host.ip, Ipv4Addr::new(10, 77, 0, 10));
        assert_eq!(host.ip6, "fd77::10".parse::<Ipv6Addr>().unwrap());
        let demo = Subnets {
            ipv4: [10, 99, 0],
            ipv6: [0xfd99, 0, 0, 0],
        };
        assert_eq!(demo.host(2).ip6, "fd99::2".parse::<Ipv6Addr>().unwrap());
    }
}
