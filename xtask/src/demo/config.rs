//! What the demo runs: the hosts and their addresses, the VIP, the backends and the `lb`
//! configuration (`examples/demo.toml` is the same text).

use lb_lab::Subnets;

/// Prefix of everything the demo creates: namespaces, temp and state directories.
pub(super) const PREFIX: &str = "lbdemo";
/// The service address clients use; no host has it on `eth0`.
pub(super) const VIP: &str = "10.99.1.100";
/// The VIP's port, where every backend listens.
pub(super) const PORT: u16 = 8080;
/// The load balancer's address.
pub(super) const LB_IP: &str = "10.99.0.2";
/// The bridge's subnets: 10.99.0.0/24 (and fd99::/64, unused by the demo).
pub(super) const SUBNETS: Subnets = Subnets {
    ipv4: [10, 99, 0],
    ipv6: [0xfd99, 0, 0, 0],
};
/// The hosts plugged into the bridge, in port order (switch port `pN` is host N's peer): name
/// and host number in [`SUBNETS`] (client 10.99.0.10, lb 10.99.0.2, b1 10.99.0.11...). The
/// router and lb2 wait for the redundancy chapter.
pub(super) const HOSTS: [(&str, u8); 7] = [
    ("client", 10),
    ("lb", 2),
    ("b1", 11),
    ("b2", 12),
    ("b3", 13),
    ("router", 1),
    ("lb2", 3),
];
/// The redundancy chapter's router, on the bridge.
pub(super) const ROUTER_IP: &str = "10.99.0.1";
/// The second lb instance.
pub(super) const LB2_IP: &str = "10.99.0.3";
/// The /24 of the remote client behind the router (`.2`; the router is `.1`).
pub(super) const REMOTE: [u8; 3] = [10, 99, 2];
/// lb's `[announce]` in the redundancy chapter: the table and protocol bird learns from.
pub(super) const ANNOUNCE_TABLE: u32 = 250;
/// The routes' protocol number.
pub(super) const ANNOUNCE_PROTOCOL: u32 = 250;
/// The backends: (name, address, weight), as in the configuration.
pub(super) const BACKENDS: [(&str, &str, u32); 3] = [
    ("b1", "10.99.0.11", 1),
    ("b2", "10.99.0.12", 1),
    ("b3", "10.99.0.13", 2),
];

/// The demo's configuration with the given `state_dir` (`examples/demo.toml` is this text with
/// `state_dir = "/sys/fs/bpf/lbdemo"`; a unit test keeps them equal).
pub(super) fn config_text(state_dir: &str) -> String {
    let mut text = format!(
        r#"# The lab of `cargo xtask demo`: lb in a network namespace, its eth0 on a bridge with a
# client and three backends (10.99.0.0/24). The demo runs this file with
# state_dir = "/sys/fs/bpf/lbdemo-<pid>".
interface = "eth0"
state_dir = "{state_dir}"
conntrack_size = 65536

# A backend is checked every 500 ms: an HTTP GET of /healthz on port 8081 must answer 2xx
# within 200 ms. 3 failures in a row take it out of the ring, 2 successes bring it back.
[health]
type = "http"
path = "/healthz"
port = 8081
interval = "500ms"
timeout = "200ms"
rise = 2
fall = 3

# Connections to 10.99.1.100:8080 are spread over the backends by weight: b3 gets twice the
# share of b1 or b2. DSR: lb only rewrites MAC addresses; each backend has the VIP on its
# loopback and answers the client directly.
[[vip]]
name = "web"
address = "{VIP}"
port = {PORT}
protocol = "tcp"
forward = "dsr"
"#
    );
    for (_, address, weight) in BACKENDS {
        text += &format!("\n  [[vip.backend]]\n  address = \"{address}\"\n  weight = {weight}\n");
    }
    text
}

/// The redundancy chapter's configuration of both instances: the demo's with `[announce]`.
pub(super) fn announcing_config_text(state_dir: &str) -> String {
    config_text(state_dir).replacen(
        "[health]",
        &format!(
            "# Keep a blackhole route per servable VIP address in table {ANNOUNCE_TABLE}; bird announces it.\n\
             [announce]\ntable = {ANNOUNCE_TABLE}\nprotocol = {ANNOUNCE_PROTOCOL}\ndrain = \"1s\"\n\n[health]"
        ),
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace_root;

    /// `state_dir` of `examples/demo.toml`; the demo uses `/sys/fs/bpf/lbdemo-<pid>`.
    const EXAMPLE_STATE_DIR: &str = "/sys/fs/bpf/lbdemo";

    #[test]
    fn example_config_is_the_demo_config() {
        let example = workspace_root().join("examples/demo.toml");
        let text = std::fs::read_to_string(&example).expect("examples/demo.toml");
        assert_eq!(
            text,
            config_text(EXAMPLE_STATE_DIR),
            "regenerate {} from demo::config_text",
            example.display()
        );
    }

    /// The configuration's addresses are those the lab gives the hosts.
    #[test]
    fn hosts_and_configuration_agree() {
        let address = |host: &str| {
            let (_, n) = HOSTS.iter().find(|(name, _)| *name == host).expect(host);
            SUBNETS.host(*n).ip.to_string()
        };
        assert_eq!(address("lb"), LB_IP);
        assert_eq!(address("lb2"), LB2_IP);
        assert_eq!(address("router"), ROUTER_IP);
        for (name, backend, _) in BACKENDS {
            assert_eq!(address(name), backend, "{name}");
        }
    }
}
