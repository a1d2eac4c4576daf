//! The router's other side: a client namespace behind it, forwarding, and the multipath hash
//! that spreads a VIP's flows over the lb instances by their ports.

use std::net::Ipv4Addr;

use crate::{error::LabError, lan::Naming, netns::Netns};

/// The settings that make a router hash flows over a multipath route by their addresses and
/// ports (policy 3: the fields listed in `fib_multipath_hash_fields`; 0x37 is source and
/// destination address, protocol, source and destination port), with a fixed seed so the
/// choice does not change when the router restarts (`fib_multipath_hash_seed`, Linux 6.11).
///
/// Policy 0, the default, ignores ports: every connection of a client would go to one
/// instance. Policy 1 hashes ports too, but is re-rolled per socket by the kernel's random
/// seed on some paths (veth), which a lab cannot predict.
pub fn l4_multipath_sysctls(seed: u32) -> Vec<(&'static str, String)> {
    vec![
        ("net.ipv4.ip_forward", "1".into()),
        ("net.ipv6.conf.all.forwarding", "1".into()),
        ("net.ipv4.fib_multipath_hash_policy", "3".into()),
        ("net.ipv4.fib_multipath_hash_fields", "0x0037".into()),
        ("net.ipv6.fib_multipath_hash_policy", "3".into()),
        ("net.ipv6.fib_multipath_hash_fields", "0x0037".into()),
        ("net.ipv4.fib_multipath_hash_seed", seed.to_string()),
    ]
}

/// A client behind the router: its namespace, with `eth0` cabled to the router's `up0`
/// (`<prefix>.2/24` and `<prefix>.1/24`), its default route through the router. Creating it
/// also sets the router's forwarding and multipath hash ([`l4_multipath_sysctls`]).
pub struct Upstream {
    /// The client's namespace (removed on drop).
    pub client: Netns,
    /// The client's address.
    pub client_ip: Ipv4Addr,
    /// The router's address on the client's side.
    pub gateway: Ipv4Addr,
}

impl Upstream {
    /// The client namespace (role `name` of `naming`), the cable, the addresses, the
    /// default route, TX checksum offload off on both ends (the lb's XDP program sees the
    /// client's packets as the router forwarded them), and the router's sysctls with `seed`.
    pub fn try_new(
        naming: &Naming,
        name: &str,
        router: &Netns,
        prefix: [u8; 3],
        seed: u32,
    ) -> Result<Self, LabError> {
        let [a, b, c] = prefix;
        let client_ip = Ipv4Addr::new(a, b, c, 2);
        let gateway = Ipv4Addr::new(a, b, c, 1);
        let client = naming.create(name)?;
        client.try_add_veth("eth0", router, "up0")?;
        client.try_ip_batch(&[
            format!("addr add {client_ip}/24 dev eth0"),
            "link set eth0 up".to_owned(),
            format!("route add default via {gateway}"),
        ])?;
        router.try_ip_batch(&[
            format!("addr add {gateway}/24 dev up0"),
            "link set up0 up".to_owned(),
        ])?;
        client.try_exec("ethtool -K eth0 tx off")?;
        router.try_exec("ethtool -K up0 tx off")?;
        for (key, value) in l4_multipath_sysctls(seed) {
            router.try_sysctl(key, &value)?;
        }
        Ok(Self {
            client,
            client_ip,
            gateway,
        })
    }
}
