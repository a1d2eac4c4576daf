//! The tests' one-arm LAN: [`lb_lab::Lan`] (every host's `eth0` on one bridge, 10.77.0.0/24 and
//! fd77::/64, names unique per test, removed on drop) with lb's `pass` program on every switch
//! port.

use std::ops::Deref;

use lb_lab::Naming;
use lb_user::datapath::Datapath;

/// Hosts on one bridge whose switch ports run lb's `pass` XDP program; derefs to the
/// [`lb_lab::Lan`] (hosts, switch, MTU).
pub struct Lan {
    /// Keeps the `pass` programs on the switch ports attached (dropped first, while the ports
    /// still exist).
    _switch_xdp: Datapath,
    /// The namespaces.
    lan: lb_lab::Lan,
}

impl Lan {
    /// Creates the switch and one host per name; host `i` gets `10.77.0.(10 + i)` and
    /// `fd77::(10 + i)` (decimal digits read as hex: host 0 is `fd77::10`).
    ///
    /// Every switch port runs the `pass` XDP program: a veth delivers frames another XDP program
    /// sent with `XDP_TX`/`XDP_REDIRECT` only when the receiving peer has an XDP program. The
    /// hosts' checksum offload is off, or XDP_TX would carry partial checksums to a backend.
    pub fn new(tag: &str, names: &[&str]) -> Self {
        let lan = lb_lab::Lan::with_hosts(Naming::Unique(tag.to_owned()), names)
            .unwrap_or_else(|error| panic!("building the lab {tag}: {}", error.full_message()));
        let ports = lan.ports();
        let switch_xdp = lan.switch.run(|| crate::netns::pass_on(&ports));
        Self {
            _switch_xdp: switch_xdp,
            lan,
        }
    }

    /// Moves the switch ports' receive work (NAPI) to kernel threads of its own, as a real
    /// NIC's receive runs in its interrupts and softirqs: on a veth, the receiver's work
    /// otherwise runs in the sender's system calls, and a process sending to the backends
    /// is charged their TCP work (a benchmark of the agent then measures the lab). The ports
    /// run XDP, so they have NAPI. The threads' CPU is [`Self::napi_cpu`].
    pub fn thread_switch_napi(&self) {
        let writes: Vec<String> = self
            .ports()
            .iter()
            .map(|port| format!("echo 1 > /sys/class/net/{port}/threaded"))
            .collect();
        // `ip netns exec` mounts the namespace's own /sys.
        lb_lab::sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.switch.name,
            writes.join("; ")
        ));
    }

    /// CPU time the switch ports' NAPI threads have used ([`Self::thread_switch_napi`]).
    pub fn napi_cpu(&self) -> std::time::Duration {
        let ports = self.ports();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| crate::proc_stat::read(&entry.path().join("stat")))
            .filter(|thread| {
                // Named `napi/<device>-<id>`.
                thread
                    .name
                    .strip_prefix("napi/")
                    .and_then(|rest| rest.rsplit_once('-'))
                    .is_some_and(|(device, _)| ports.iter().any(|port| port == device))
            })
            .map(|thread| thread.user + thread.system)
            .sum()
    }

    /// Frames the lab's veths have dropped on transmit, in every namespace: a veth whose peer
    /// runs an XDP program (the switch ports, a load balancer's interface) has a ring of 256
    /// frames, and a burst larger than that, or a receiver starved of CPU, loses frames before
    /// any program sees them. Checks lose SYNs and SYN-ACKs to it, floods lose frames.
    pub fn transmit_drops(&self) -> u64 {
        let namespaces =
            std::iter::once(&self.switch).chain(self.hosts.iter().map(|host| &host.ns));
        namespaces
            .filter_map(|ns| ns.try_ip("-s -j link show").ok())
            .filter_map(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
            .flat_map(|links| links.as_array().cloned().unwrap_or_default())
            .filter_map(|link| link["stats64"]["tx"]["dropped"].as_u64())
            .sum()
    }
}

impl Deref for Lan {
    type Target = lb_lab::Lan;

    fn deref(&self) -> &lb_lab::Lan {
        &self.lan
    }
}
