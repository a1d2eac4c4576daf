//! Userspace constructors and accessors of the map types (`user` feature): addresses as
//! [`IpAddr`], ports as `u16`, enums by name. Every encoder of a map key or value lives here, so
//! the agent, the CLI and the tests write and read entries the one way the datapath expects.

use core::{fmt, net::IpAddr, str::FromStr};

use crate::{
    maps::{
        Backend, BackendState, DecapKey, Family, ForwardMode, NewFlowRule, Protocol, Vip, VipKey,
    },
    FlowKey,
};

/// An address as the maps store it: 16 bytes, IPv4 in the first four (the rest zero).
pub fn addr_bytes(address: IpAddr) -> ([u8; 16], Family) {
    let mut bytes = [0; 16];
    match address {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, Family::V4)
        }
        IpAddr::V6(v6) => (v6.octets(), Family::V6),
    }
}

/// The address stored as `bytes` with family `family` (4 or 6; anything but 4 reads as IPv6).
pub fn addr_from_bytes(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == Family::V4 as u8 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

impl Family {
    /// The family of `address`.
    pub fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl VipKey {
    /// The key of the VIP `address:port` (`port` 0: all ports) over `protocol`.
    pub fn new(address: IpAddr, port: u16, protocol: Protocol) -> Self {
        let (addr, family) = addr_bytes(address);
        Self {
            addr,
            port: port.to_be_bytes(),
            protocol: protocol as u8,
            family: family as u8,
        }
    }

    /// The key the datapath looks up for `flow`: its destination, port and protocol.
    pub fn of_flow(flow: &FlowKey) -> Self {
        Self {
            addr: flow.dst,
            port: flow.dst_port,
            protocol: flow.protocol,
            family: flow.family,
        }
    }

    /// The same address and protocol with port 0: the all-ports VIP the datapath falls back to.
    pub fn all_ports(&self) -> Self {
        Self {
            port: [0, 0],
            ..*self
        }
    }

    /// The VIP address.
    pub fn address(&self) -> IpAddr {
        addr_from_bytes(&self.addr, self.family)
    }

    /// The VIP port (0: all ports).
    pub fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }

    /// The protocol, if the stored number is TCP or UDP.
    pub fn protocol(&self) -> Option<Protocol> {
        Protocol::from_raw(self.protocol)
    }
}

impl Vip {
    /// The entry of VIP `id` with a ring of `ring_size` slots, forwarding in `forward` mode.
    pub fn new(id: u32, ring_size: u32, forward: ForwardMode) -> Self {
        Self {
            id,
            ring_size,
            forward: forward as u8,
            new_flows: NewFlowRule::Ring as u8,
            _pad: [0; 2],
        }
    }

    /// The entry with new flows picked by `rule`.
    pub fn picking(self, rule: NewFlowRule) -> Self {
        Self {
            new_flows: rule as u8,
            ..self
        }
    }

    /// How new flows are picked, if the stored value is a known rule.
    pub fn new_flow_rule(&self) -> Option<NewFlowRule> {
        match self.new_flows {
            0 => Some(NewFlowRule::Ring),
            1 => Some(NewFlowRule::LeastConn),
            _ => None,
        }
    }

    /// The forwarding mode, if the stored value is a known one.
    pub fn forward_mode(&self) -> Option<ForwardMode> {
        ForwardMode::from_raw(self.forward)
    }
}

impl Backend {
    /// The backend's address.
    pub fn address(&self) -> IpAddr {
        addr_from_bytes(&self.addr, self.family)
    }

    /// The stored state.
    pub fn state(&self) -> BackendState {
        BackendState::from_raw(self.state)
    }
}

impl DecapKey {
    /// The key accepting tunnels addressed to `address`.
    pub fn new(address: IpAddr) -> Self {
        let (addr, family) = addr_bytes(address);
        Self {
            addr,
            family: family as u8,
            _pad: [0; 3],
        }
    }
}

impl FlowKey {
    /// The flow `client` → `vip` over `protocol`; `None` if their families differ.
    pub fn between(
        client: core::net::SocketAddr,
        vip: core::net::SocketAddr,
        protocol: Protocol,
    ) -> Option<Self> {
        match (client.ip(), vip.ip()) {
            (IpAddr::V4(c), IpAddr::V4(v)) => Some(FlowKey::v4(
                c.octets(),
                v.octets(),
                client.port(),
                vip.port(),
                protocol,
            )),
            (IpAddr::V6(c), IpAddr::V6(v)) => Some(FlowKey::v6(
                c.octets(),
                v.octets(),
                client.port(),
                vip.port(),
                protocol,
            )),
            _ => None,
        }
    }
}

/// A name that is not one of an enum's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    /// What was being parsed: `protocol`, `forward mode`, ...
    pub what: &'static str,
    /// The names accepted.
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a {}: expected one of ", self.what)?;
        for (i, name) in self.expected.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownName {}

/// `Display` as the enum's `name()` and `FromStr` from it.
macro_rules! named {
    ($type:ty, $what:literal, [$($name:literal),+]) => {
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $type {
            type Err = UnknownName;

            fn from_str(text: &str) -> Result<Self, UnknownName> {
                Self::ALL.into_iter().find(|v| v.name() == text).ok_or(UnknownName {
                    what: $what,
                    expected: &[$($name),+],
                })
            }
        }
    };
}

named!(Protocol, "protocol", ["tcp", "udp"]);
named!(ForwardMode, "forward mode", ["dsr", "tunnel"]);
named!(
    BackendState,
    "backend state",
    ["unused", "up", "draining", "down"]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_map_bytes() {
        for text in ["10.0.0.1", "fd00::1"] {
            let address: IpAddr = text.parse().expect("ip");
            let (bytes, family) = addr_bytes(address);
            assert_eq!(addr_from_bytes(&bytes, family as u8), address);
            assert_eq!(Family::of(address), family);
        }
    }

    #[test]
    fn keys_round_trip() {
        let key = VipKey::new("fd00::1".parse().unwrap(), 53, Protocol::Udp);
        assert_eq!(key.address(), "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!((key.port(), key.protocol()), (53, Some(Protocol::Udp)));
        assert_eq!(key.all_ports().port(), 0);
        let flow = FlowKey::between(
            "10.0.0.1:4000".parse().unwrap(),
            "10.0.0.100:80".parse().unwrap(),
            Protocol::Tcp,
        )
        .expect("same family");
        assert_eq!(
            VipKey::of_flow(&flow),
            VipKey::new("10.0.0.100".parse().unwrap(), 80, Protocol::Tcp)
        );
        assert_eq!(
            DecapKey::new("10.0.0.1".parse().unwrap()).addr[..4],
            [10, 0, 0, 1]
        );
    }

    #[test]
    fn names_round_trip() {
        for protocol in Protocol::ALL {
            assert_eq!(protocol.to_string().parse(), Ok(protocol));
            assert_eq!(Protocol::from_raw(protocol as u8), Some(protocol));
        }
        for mode in ForwardMode::ALL {
            assert_eq!(mode.to_string().parse(), Ok(mode));
            assert_eq!(ForwardMode::from_raw(mode as u8), Some(mode));
        }
        for state in BackendState::ALL {
            assert_eq!(state.to_string().parse(), Ok(state));
            assert_eq!(BackendState::from_raw(state as u8), state);
        }
        assert_eq!(
            "sctp".parse::<Protocol>().unwrap_err().to_string(),
            "not a protocol: expected one of tcp, udp"
        );
        assert!(BackendState::Draining.is_usable() && !BackendState::Down.is_usable());
    }
}
