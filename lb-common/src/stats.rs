//! Counters kept by the datapath in per-CPU maps. Userspace sums them over CPUs.

/// Index into the global `STATS` map: one counter per verdict and one per reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Verdict `XDP_PASS`: the host stack gets the packet untouched.
    Pass = 0,
    /// Verdict `XDP_TX`: forwarded back out of the ingress interface.
    Tx,
    /// Verdict `XDP_REDIRECT`: forwarded out of another interface.
    Redirect,
    /// Verdict `XDP_DROP`.
    Drop,
    /// Passed: not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp,
    /// Passed: IP, but no VIP matches destination, port and protocol.
    NotVip,
    /// Passed: IP, but neither TCP nor UDP (ICMP, ...).
    NotTcpUdp,
    /// Passed: an IPv4 fragment (ports unknown, so it cannot be hashed consistently).
    Fragment,
    /// Passed: an IPv6 packet with extension headers.
    Ipv6ExtensionHeader,
    /// Dropped: truncated or malformed header.
    ParseError,
    /// Dropped: the VIP has no usable backend (all down, with `on_all_down = "drop"`).
    NoBackend,
    /// Dropped: the encapsulated packet would exceed the egress MTU.
    TooBig,
    /// Dropped: `bpf_xdp_adjust_head` failed (no headroom for the tunnel header).
    NoHeadroom,
    /// Dropped: the egress interface is not in `TX_PORTS`.
    RedirectFailed,
    /// Flows whose tracked backend was down, moved to another backend.
    Rehashed,
    /// New flows not tracked: every way of their set held a protected flow (established or
    /// closing, and active). They still take the ring, so they work unless it changes before
    /// their next packet. Steadily rising: `conntrack_size` is too small for the connections
    /// being served (see the flows by class).
    ConntrackFull,
    /// ICMP errors about a VIP's flow (destination unreachable, fragmentation needed / packet
    /// too big, time exceeded, parameter problem) forwarded to the flow's backend, so a DSR
    /// backend learns the path MTU towards its client.
    IcmpError,
    /// Passed: the frame is addressed to another host's MAC (a bridge flooding frames for a dead
    /// host's port, a NIC in promiscuous mode): only frames for this interface are balanced, so
    /// two instances never both forward one packet.
    OtherMac,
    /// Protected flows (established or closing, and active) evicted for a new flow: the
    /// eviction rule forbids it, so this stays 0 but for a flow that became protected on
    /// another CPU while a new flow was taking its way.
    ConntrackEvictedProtected,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 19] = [
        Counter::Pass,
        Counter::Tx,
        Counter::Redirect,
        Counter::Drop,
        Counter::NotIp,
        Counter::NotVip,
        Counter::NotTcpUdp,
        Counter::Fragment,
        Counter::Ipv6ExtensionHeader,
        Counter::ParseError,
        Counter::NoBackend,
        Counter::TooBig,
        Counter::NoHeadroom,
        Counter::RedirectFailed,
        Counter::Rehashed,
        Counter::ConntrackFull,
        Counter::IcmpError,
        Counter::OtherMac,
        Counter::ConntrackEvictedProtected,
    ];
    /// Number of counters (size of `STATS`).
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable snake_case name, used by the CLI, JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Pass => "pass",
            Counter::Tx => "tx",
            Counter::Redirect => "redirect",
            Counter::Drop => "drop",
            Counter::NotIp => "not_ip",
            Counter::NotVip => "not_vip",
            Counter::NotTcpUdp => "not_tcp_udp",
            Counter::Fragment => "fragment",
            Counter::Ipv6ExtensionHeader => "ipv6_extension_header",
            Counter::ParseError => "parse_error",
            Counter::NoBackend => "no_backend",
            Counter::TooBig => "too_big",
            Counter::NoHeadroom => "no_headroom",
            Counter::RedirectFailed => "redirect_failed",
            Counter::Rehashed => "rehashed",
            Counter::ConntrackFull => "conntrack_full",
            Counter::IcmpError => "icmp_error",
            Counter::OtherMac => "other_mac",
            Counter::ConntrackEvictedProtected => "conntrack_evicted_protected",
        }
    }
}

/// What a global counter counts, for reports and metrics: the four verdicts, and for every other
/// counter whether it is a reason to pass, a reason to drop, or an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CounterClass {
    /// An XDP verdict (`pass`, `tx`, `redirect`, `drop`): every packet counts in exactly one.
    Verdict,
    /// A reason a packet was passed to the host untouched.
    Passed,
    /// A reason a packet was dropped.
    Dropped,
    /// Something that happened to a forwarded packet (re-hash, failed insert, ICMP error).
    Event,
}

impl Counter {
    /// The class of this counter.
    pub const fn class(self) -> CounterClass {
        match self {
            Counter::Pass | Counter::Tx | Counter::Redirect | Counter::Drop => {
                CounterClass::Verdict
            }
            Counter::NotIp
            | Counter::NotVip
            | Counter::NotTcpUdp
            | Counter::Fragment
            | Counter::Ipv6ExtensionHeader
            | Counter::OtherMac => CounterClass::Passed,
            Counter::ParseError
            | Counter::NoBackend
            | Counter::TooBig
            | Counter::NoHeadroom
            | Counter::RedirectFailed => CounterClass::Dropped,
            Counter::Rehashed
            | Counter::ConntrackFull
            | Counter::IcmpError
            | Counter::ConntrackEvictedProtected => CounterClass::Event,
        }
    }
}

/// Why the `lb` program passes a packet to the host untouched. Each reason has its own
/// [`Counter`], of class [`CounterClass::Passed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PassReason {
    /// Not IPv4 or IPv6.
    NotIp,
    /// No VIP matches destination, port and protocol.
    NotVip,
    /// Neither TCP nor UDP, nor an ICMP error about a VIP's flow.
    NotTcpUdp,
    /// An IPv4 fragment.
    Fragment,
    /// An IPv6 packet with extension headers.
    Ipv6ExtensionHeader,
    /// A frame addressed to another host's MAC.
    OtherMac,
}

impl PassReason {
    /// Every reason.
    pub const ALL: [PassReason; 6] = [
        PassReason::NotIp,
        PassReason::NotVip,
        PassReason::NotTcpUdp,
        PassReason::Fragment,
        PassReason::Ipv6ExtensionHeader,
        PassReason::OtherMac,
    ];

    /// The counter this reason bumps.
    #[inline(always)]
    pub const fn counter(self) -> Counter {
        match self {
            PassReason::NotIp => Counter::NotIp,
            PassReason::NotVip => Counter::NotVip,
            PassReason::NotTcpUdp => Counter::NotTcpUdp,
            PassReason::Fragment => Counter::Fragment,
            PassReason::Ipv6ExtensionHeader => Counter::Ipv6ExtensionHeader,
            PassReason::OtherMac => Counter::OtherMac,
        }
    }
}

/// Why the `lb` program drops a packet. Each reason has its own [`Counter`], of class
/// [`CounterClass::Dropped`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Truncated or malformed header.
    ParseError,
    /// The VIP has no usable backend.
    NoBackend,
    /// The encapsulated packet would exceed the egress MTU.
    TooBig,
    /// No headroom for the tunnel header.
    NoHeadroom,
    /// The egress interface is not in `TX_PORTS`.
    RedirectFailed,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [DropReason; 5] = [
        DropReason::ParseError,
        DropReason::NoBackend,
        DropReason::TooBig,
        DropReason::NoHeadroom,
        DropReason::RedirectFailed,
    ];

    /// The counter this reason bumps.
    #[inline(always)]
    pub const fn counter(self) -> Counter {
        match self {
            DropReason::ParseError => Counter::ParseError,
            DropReason::NoBackend => Counter::NoBackend,
            DropReason::TooBig => Counter::TooBig,
            DropReason::NoHeadroom => Counter::NoHeadroom,
            DropReason::RedirectFailed => Counter::RedirectFailed,
        }
    }
}

/// Index into `DECAP_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecapCounter {
    /// Tunnel header stripped, inner packet passed up.
    Decapsulated = 0,
    /// Not a tunnel packet for us: passed untouched.
    Passed,
    /// Malformed tunnel packet: dropped.
    Malformed,
    /// Carried a second-chance hop, and this host has the connection (an established, request
    /// or time-wait socket), or the packet is a SYN, or an ACK a local listener's SYN cookie
    /// vouches for: stripped and passed up.
    HopLocal,
    /// Carried a second-chance hop, and this host has no such connection: sent on to the hop
    /// (the backend that had the flow's ring slot before), the hop cleared.
    HopForwarded,
    /// Carried a second-chance hop that is this host: stripped and passed up.
    HopNotTaken,
    /// Carried a second-chance hop this host has no route to yet: dropped (TCP sends it
    /// again), and the hop queued for `lb decap` to resolve.
    HopUnresolved,
}

impl DecapCounter {
    /// Number of counters (size of `DECAP_STATS`).
    pub const COUNT: u32 = 7;
}

/// The `lb` program's second-chance counters (`SECOND_CHANCE_STATS`, not pinned).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondChanceCounter {
    /// Packets of untracked connections sent to their ring slot's backend with the previous
    /// owner of the slot as a hop.
    HopsCarried = 0,
}

impl SecondChanceCounter {
    /// Number of counters (size of `SECOND_CHANCE_STATS`).
    pub const COUNT: u32 = 1;
}

/// Value of `VIP_STATS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    /// Packets matched to the VIP.
    pub packets: u64,
    /// Bytes of those packets (frame length as received).
    pub bytes: u64,
    /// Flows without a conntrack entry: a backend was picked from the ring.
    pub new_flows: u64,
    /// Packets whose flow was found in conntrack.
    pub conntrack_hits: u64,
    /// Packets dropped for this VIP (no backend, too big, ...).
    pub dropped: u64,
}

/// Value of `BACKEND_STATS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Packets forwarded to the backend.
    pub packets: u64,
    /// Bytes of those packets (before encapsulation).
    pub bytes: u64,
    /// Flows newly assigned to the backend.
    pub new_flows: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_listed_in_index_order() {
        for (index, counter) in Counter::ALL.into_iter().enumerate() {
            assert_eq!(counter as usize, index, "{counter:?}");
        }
    }

    #[test]
    fn every_reason_bumps_a_counter_of_its_class() {
        for reason in PassReason::ALL {
            assert_eq!(reason.counter().class(), CounterClass::Passed, "{reason:?}");
        }
        for reason in DropReason::ALL {
            assert_eq!(
                reason.counter().class(),
                CounterClass::Dropped,
                "{reason:?}"
            );
        }
    }

    #[test]
    fn every_pass_and_drop_counter_has_exactly_one_reason() {
        for counter in Counter::ALL {
            let passes = PassReason::ALL
                .iter()
                .filter(|reason| reason.counter() == counter)
                .count();
            let drops = DropReason::ALL
                .iter()
                .filter(|reason| reason.counter() == counter)
                .count();
            let expected = match counter.class() {
                CounterClass::Passed => (1, 0),
                CounterClass::Dropped => (0, 1),
                CounterClass::Verdict | CounterClass::Event => (0, 0),
            };
            assert_eq!((passes, drops), expected, "{counter:?}");
        }
    }
}
