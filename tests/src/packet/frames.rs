//! Test frames, built and checked with etherparse.

use std::net::IpAddr;

use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, Ipv4Options, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Header,
    Ipv6RawExtHeader, Ipv6RoutingExtensions, PacketBuilder, SingleVlanHeader, SlicedPacket,
    TransportSlice, VlanId,
};
use lb_common::{maps::Protocol, FlowKey};

/// MAC of the client (frame source).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
/// MAC of the load balancer (frame destination; source of forwarded frames).
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x1b];

/// The kind of transport packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// TCP SYN (a new connection).
    TcpSyn,
    /// TCP ACK (an established connection).
    TcpAck,
    /// TCP FIN and ACK (the client closes).
    TcpFin,
    /// TCP RST (the client aborts).
    TcpRst,
    /// UDP datagram.
    Udp,
}

/// An IPv6 extension header to insert.
#[derive(Clone, Copy, Debug)]
pub enum Ipv6Ext {
    /// Hop-by-hop options (next header 0).
    HopByHop,
    /// Routing header (43).
    Routing,
    /// Fragment header (44).
    Fragment,
    /// Destination options (60).
    DestinationOptions,
}

/// A client → VIP frame, described by its fields.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Client address.
    pub src: IpAddr,
    /// Destination (VIP) address.
    pub dst: IpAddr,
    /// Client port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// TCP SYN, TCP ACK or UDP.
    pub kind: Kind,
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// IPv4 options (a multiple of 4 bytes, up to 40).
    pub ipv4_options: Vec<u8>,
    /// IPv4 DF bit.
    pub dont_fragment: bool,
    /// IPv4 MF bit.
    pub more_fragments: bool,
    /// IPv4 fragment offset (units of 8 bytes).
    pub fragment_offset: u16,
    /// IPv6 extension header.
    pub ipv6_ext: Option<Ipv6Ext>,
    /// DSCP (6 bits).
    pub dscp: u8,
    /// Transport payload.
    pub payload: Vec<u8>,
    /// Destination MAC (the load balancer's, unless a row says otherwise).
    pub dst_mac: [u8; 6],
}

impl Frame {
    /// A frame from `src:src_port` to `dst:dst_port`.
    pub fn new(kind: Kind, src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Self {
        Self {
            src,
            dst,
            src_port,
            dst_port,
            kind,
            vlan: None,
            ipv4_options: Vec::new(),
            dont_fragment: true,
            more_fragments: false,
            fragment_offset: 0,
            ipv6_ext: None,
            dscp: 0,
            payload: Vec::new(),
            dst_mac: LB_MAC,
        }
    }

    /// TCP SYN.
    pub fn syn(src: &str, src_port: u16, dst: &str, dst_port: u16) -> Self {
        Self::new(Kind::TcpSyn, ip(src), src_port, ip(dst), dst_port)
    }

    /// TCP ACK with a payload.
    pub fn ack(src: &str, src_port: u16, dst: &str, dst_port: u16) -> Self {
        let mut frame = Self::new(Kind::TcpAck, ip(src), src_port, ip(dst), dst_port);
        frame.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        frame
    }

    /// UDP datagram with a payload.
    pub fn udp(src: &str, src_port: u16, dst: &str, dst_port: u16) -> Self {
        let mut frame = Self::new(Kind::Udp, ip(src), src_port, ip(dst), dst_port);
        frame.payload = b"query".to_vec();
        frame
    }

    /// With a payload of `len` bytes.
    pub fn with_payload(mut self, len: usize) -> Self {
        self.payload = (0..len).map(|i| i as u8).collect();
        self
    }

    /// Tagged with VLAN `id`.
    pub fn with_vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    /// Addressed to `mac` instead of the load balancer.
    pub fn to_mac(mut self, mac: [u8; 6]) -> Self {
        self.dst_mac = mac;
        self
    }

    /// The flow's conntrack key / hash input.
    pub fn flow_key(&self) -> FlowKey {
        let protocol = if self.kind == Kind::Udp {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => FlowKey::v4(
                s.octets(),
                d.octets(),
                self.src_port,
                self.dst_port,
                protocol,
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => FlowKey::v6(
                s.octets(),
                d.octets(),
                self.src_port,
                self.dst_port,
                protocol,
            ),
            _ => panic!("mixed address families in {self:?}"),
        }
    }

    /// The frame's bytes, checksums computed by etherparse.
    pub fn build(&self) -> Vec<u8> {
        let ip_headers = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut header = Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets())
                    .expect("ipv4 header");
                header.options =
                    Ipv4Options::try_from(&self.ipv4_options[..]).expect("ipv4 options");
                header.dont_fragment = self.dont_fragment;
                header.more_fragments = self.more_fragments;
                header.fragment_offset = self.fragment_offset.try_into().expect("fragment offset");
                header.dscp = self.dscp.try_into().expect("dscp");
                IpHeaders::Ipv4(header, Default::default())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let header = Ipv6Header {
                    traffic_class: self.dscp << 2,
                    flow_label: 0x12345.try_into().expect("flow label"),
                    payload_length: 0,
                    next_header: IpNumber::TCP,
                    hop_limit: 64,
                    source: s.octets(),
                    destination: d.octets(),
                };
                IpHeaders::Ipv6(header, self.ipv6_extensions())
            }
            _ => panic!("mixed address families in {self:?}"),
        };
        let ip = PacketBuilder::ethernet2(CLIENT_MAC, self.dst_mac).ip(ip_headers);
        let mut bytes = Vec::new();
        match self.kind {
            Kind::TcpSyn => ip
                .tcp(self.src_port, self.dst_port, 1000, 64240)
                .syn()
                .write(&mut bytes, &self.payload),
            Kind::TcpAck => ip
                .tcp(self.src_port, self.dst_port, 1001, 64240)
                .ack(5000)
                .write(&mut bytes, &self.payload),
            Kind::TcpFin => ip
                .tcp(self.src_port, self.dst_port, 1001, 64240)
                .fin()
                .ack(5000)
                .write(&mut bytes, &self.payload),
            Kind::TcpRst => ip
                .tcp(self.src_port, self.dst_port, 1001, 0)
                .rst()
                .write(&mut bytes, &self.payload),
            Kind::Udp => ip
                .udp(self.src_port, self.dst_port)
                .write(&mut bytes, &self.payload),
        }
        .expect("write frame");
        match self.vlan {
            Some(id) => tag_vlan(&bytes, id),
            None => bytes,
        }
    }

    fn ipv6_extensions(&self) -> Ipv6Extensions {
        let padding =
            Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[1, 4, 0, 0, 0, 0]).expect("ext header");
        let mut exts = Ipv6Extensions::default();
        match self.ipv6_ext {
            None => {}
            Some(Ipv6Ext::HopByHop) => exts.hop_by_hop_options = Some(padding),
            Some(Ipv6Ext::DestinationOptions) => exts.destination_options = Some(padding),
            Some(Ipv6Ext::Routing) => {
                let routing =
                    Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[0, 0, 0, 0, 0, 0]).expect("routing");
                exts.routing = Some(Ipv6RoutingExtensions {
                    routing,
                    final_destination_options: None,
                });
            }
            Some(Ipv6Ext::Fragment) => {
                exts.fragment = Some(Ipv6FragmentHeader::new(
                    IpNumber::TCP,
                    0.try_into().expect("offset"),
                    false,
                    7,
                ));
            }
        }
        exts
    }
}

/// Parses an address literal.
pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Router that reports ICMP errors in the fixtures.
pub const ROUTER_V4: [u8; 4] = [192, 0, 2, 254];
/// Same, IPv6.
pub const ROUTER_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe,
];

/// The ICMP error a router on the way to the client sends about the answer (VIP to client) of
/// `client_frame`'s flow: IPv4 "fragmentation needed" (MTU 1400) or ICMPv6 "packet too big"
/// (MTU 1280), addressed to `to` (default: the VIP, the answer's source) and quoting the first
/// `quoted` bytes of the answer's IP packet (routers quote at least the IP header and 8 bytes).
pub fn icmp_error_about_answer(client_frame: &[u8], quoted: usize, to: Option<IpAddr>) -> Vec<u8> {
    let packet = SlicedPacket::from_ethernet(client_frame)
        .unwrap_or_else(|e| panic!("unparseable frame: {e}"));
    let (client, vip) = match &packet.net {
        Some(etherparse::NetSlice::Ipv4(v4)) => (
            IpAddr::V4(v4.header().source_addr()),
            IpAddr::V4(v4.header().destination_addr()),
        ),
        Some(etherparse::NetSlice::Ipv6(v6)) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
        ),
        other => panic!("not IP: {other:?}"),
    };
    let (kind, client_port, vip_port) = match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => (Kind::TcpAck, tcp.source_port(), tcp.destination_port()),
        Some(TransportSlice::Udp(udp)) => (Kind::Udp, udp.source_port(), udp.destination_port()),
        other => panic!("not TCP/UDP: {other:?}"),
    };
    let answer = Frame::new(kind, vip, vip_port, client, client_port)
        .with_payload(1400)
        .build();
    let quote = &answer[14..14 + quoted];
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let mut out = Vec::new();
    match to.unwrap_or(vip) {
        IpAddr::V4(to) => builder
            .ipv4(ROUTER_V4, to.octets(), 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1400,
                },
            ))
            .write(&mut out, quote),
        IpAddr::V6(to) => builder
            .ipv6(ROUTER_V6, to.octets(), 64)
            .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut out, quote),
    }
    .expect("write icmp error");
    out
}

/// Inserts an 802.1Q tag after the MAC addresses.
pub fn tag_vlan(frame: &[u8], id: u16) -> Vec<u8> {
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    let tag = SingleVlanHeader {
        pcp: Default::default(),
        drop_eligible_indicator: false,
        vlan_id: VlanId::try_new(id).expect("vlan id"),
        ether_type: ether_type.into(),
    };
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&0x8100u16.to_be_bytes());
    out.extend_from_slice(&tag.to_bytes());
    out.extend_from_slice(&frame[14..]);
    out
}

/// Length of the Ethernet header (with VLAN tag) of a frame.
pub fn l2_len(frame: &[u8]) -> usize {
    if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    }
}

/// Length of the IP packet of a frame according to its header (excludes Ethernet padding).
pub fn ip_len(frame: &[u8]) -> usize {
    let l3 = &frame[l2_len(frame)..];
    match l3[0] >> 4 {
        4 => u16::from_be_bytes([l3[2], l3[3]]) as usize,
        6 => 40 + u16::from_be_bytes([l3[4], l3[5]]) as usize,
        v => panic!("not IP (version {v})"),
    }
}

/// The frame a DSR forward produces: MACs rewritten, everything else unchanged.
pub fn dsr(input: &[u8], backend_mac: [u8; 6]) -> Vec<u8> {
    let mut out = input.to_vec();
    out[..6].copy_from_slice(&backend_mac);
    out[6..12].copy_from_slice(&LB_MAC);
    out
}

/// The frame a tunnel forward produces: MACs rewritten, an outer IPv4 or IPv6 header (the
/// backend's family) inserted after the Ethernet header, inner packet and padding unchanged.
pub fn tunnel(
    input: &[u8],
    backend_mac: [u8; 6],
    source: IpAddr,
    backend: IpAddr,
    flow: &FlowKey,
) -> Vec<u8> {
    let l2 = l2_len(input);
    let inner_len = ip_len(input);
    let inner = &input[l2..];
    let inner_is_v4 = inner[0] >> 4 == 4;
    let protocol = if inner_is_v4 {
        IpNumber::IPV4
    } else {
        IpNumber::IPV6
    };
    let (tos, dont_fragment) = if inner_is_v4 {
        (inner[1], inner[6] & 0x40 != 0)
    } else {
        ((inner[0] << 4) | (inner[1] >> 4), true)
    };
    let mut out = dsr(&input[..l2], backend_mac);
    let outer = match (source, backend) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out[l2 - 2..l2].copy_from_slice(&0x0800u16.to_be_bytes());
            let mut header =
                Ipv4Header::new((inner_len) as u16, 64, protocol, s.octets(), d.octets())
                    .expect("outer v4");
            header.dont_fragment = dont_fragment;
            header.dscp = (tos >> 2).try_into().expect("dscp");
            header.ecn = (tos & 3).try_into().expect("ecn");
            header.header_checksum = header.calc_header_checksum();
            header.to_bytes().to_vec()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out[l2 - 2..l2].copy_from_slice(&0x86ddu16.to_be_bytes());
            let header = Ipv6Header {
                traffic_class: tos,
                flow_label: lb_common::conntrack::conntrack_hash(flow)
                    .flow_label()
                    .try_into()
                    .expect("label"),
                payload_length: inner_len as u16,
                next_header: protocol,
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            };
            header.to_bytes().to_vec()
        }
        _ => panic!("tunnel source and backend differ in family"),
    };
    out.extend_from_slice(&outer);
    out.extend_from_slice(inner);
    out
}

/// `plain` (a tunnel frame as `frames::tunnel` builds it, Ethernet header `l2` bytes) with the
/// hop `hop`: the IPv4 option or the IPv6 destination options header, lengths and checksum
/// set again.
pub fn with_hop(plain: &[u8], l2: usize, hop: IpAddr) -> Vec<u8> {
    let (outer, rest) = plain[l2..].split_at(if hop.is_ipv4() { 20 } else { 40 });
    let mut outer = outer.to_vec();
    let option: Vec<u8> = match hop {
        IpAddr::V4(hop) => {
            outer[0] = 0x47;
            let total = u16::from_be_bytes([outer[2], outer[3]]) + 8;
            outer[2..4].copy_from_slice(&total.to_be_bytes());
            [0x1e, 8, 0, 0].into_iter().chain(hop.octets()).collect()
        }
        IpAddr::V6(hop) => {
            let next = outer[6];
            outer[6] = 60;
            let payload = u16::from_be_bytes([outer[4], outer[5]]) + 24;
            outer[4..6].copy_from_slice(&payload.to_be_bytes());
            [next, 2, 0x1e, 20, 0, 0, 0, 0]
                .into_iter()
                .chain(hop.octets())
                .collect()
        }
    };
    let mut header = [outer, option].concat();
    if hop.is_ipv4() {
        header[10..12].copy_from_slice(&[0, 0]);
        let parsed = etherparse::Ipv4HeaderSlice::from_slice(&header).expect("outer v4");
        let check = parsed.to_header().calc_header_checksum();
        header[10..12].copy_from_slice(&check.to_be_bytes());
    }
    [&plain[..l2], &header[..], rest].concat()
}

/// Checks every IPv4 header checksum and the innermost TCP/UDP checksum of a frame, walking
/// through one level of IP-in-IP. Panics with a description on a mismatch.
pub fn verify_checksums(frame: &[u8]) {
    let packet =
        SlicedPacket::from_ethernet(frame).unwrap_or_else(|e| panic!("unparseable frame: {e}"));
    let Some(net) = &packet.net else {
        panic!("no IP header")
    };
    let payload = match net {
        etherparse::NetSlice::Ipv4(v4) => {
            let header = v4.header().to_header();
            assert_eq!(
                header.header_checksum,
                header.calc_header_checksum(),
                "outer IPv4 header checksum"
            );
            v4.payload()
        }
        etherparse::NetSlice::Ipv6(v6) => v6.payload(),
    };
    if payload.ip_number == IpNumber::IPV4 || payload.ip_number == IpNumber::IPV6 {
        let inner = SlicedPacket::from_ip(payload.payload)
            .unwrap_or_else(|e| panic!("unparseable inner packet: {e}"));
        verify_transport(&inner);
    } else {
        verify_transport(&packet);
    }
}

fn verify_transport(packet: &SlicedPacket<'_>) {
    let Some(net) = &packet.net else {
        panic!("no IP header")
    };
    match (net, &packet.transport) {
        (etherparse::NetSlice::Ipv4(v4), Some(TransportSlice::Tcp(tcp))) => {
            let header = v4.header().to_header();
            assert_eq!(
                header.header_checksum,
                header.calc_header_checksum(),
                "inner IPv4 header checksum"
            );
            let expected = tcp
                .to_header()
                .calc_checksum_ipv4(&header, tcp.payload())
                .expect("tcp checksum");
            assert_eq!(tcp.checksum(), expected, "TCP checksum (IPv4)");
        }
        (etherparse::NetSlice::Ipv6(v6), Some(TransportSlice::Tcp(tcp))) => {
            let header = v6.header().to_header();
            let expected = tcp
                .to_header()
                .calc_checksum_ipv6(&header, tcp.payload())
                .expect("tcp checksum");
            assert_eq!(tcp.checksum(), expected, "TCP checksum (IPv6)");
        }
        (etherparse::NetSlice::Ipv4(v4), Some(TransportSlice::Udp(udp))) => {
            let header = v4.header().to_header();
            let expected = udp
                .to_header()
                .calc_checksum_ipv4(&header, udp.payload())
                .expect("udp checksum");
            assert_eq!(udp.checksum(), expected, "UDP checksum (IPv4)");
        }
        (etherparse::NetSlice::Ipv6(v6), Some(TransportSlice::Udp(udp))) => {
            let header = v6.header().to_header();
            let expected = udp
                .to_header()
                .calc_checksum_ipv6(&header, udp.payload())
                .expect("udp checksum");
            assert_eq!(udp.checksum(), expected, "UDP checksum (IPv6)");
        }
        (etherparse::NetSlice::Ipv4(_), Some(TransportSlice::Icmpv4(icmp))) => {
            assert_eq!(
                icmp.checksum(),
                icmp.icmp_type().calc_checksum(icmp.payload()),
                "ICMP checksum"
            );
        }
        (etherparse::NetSlice::Ipv6(v6), Some(TransportSlice::Icmpv6(icmp))) => {
            let header = v6.header();
            let expected = icmp
                .icmp_type()
                .calc_checksum(header.source(), header.destination(), icmp.payload())
                .expect("icmpv6 checksum");
            assert_eq!(icmp.checksum(), expected, "ICMPv6 checksum");
        }
        other => panic!("unexpected transport {other:?}"),
    }
}
