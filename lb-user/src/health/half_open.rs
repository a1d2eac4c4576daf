//! TCP checks without a socket per check (*half-open*, as F5's TCP half-open monitor and
//! nmap's SYN scan): the check sends a SYN from a raw socket; a SYN-ACK means the backend's
//! kernel accepts connections on the port (what a connecting check learns too), a RST that it
//! refuses them. Our kernel answers the SYN-ACK with a RST, as it does for any segment to a
//! port without a connection, so the backend drops the half-open connection at once: its
//! application never sees it, and neither side keeps a socket.
//!
//! A connecting check costs a socket, a connect, an epoll registration and a close with its
//! RST: about 10 µs of the agent's kernel time each, half its CPU at 16,384 checks a second.
//! A half-open check is one `sendto` and a share of a read: about 3 µs.
//!
//! The replies come to [`SOURCE_PORTS`] ports that bound (never listening) sockets hold, so
//! that no connection of this host gets one of them; a socket filter passes the raw sockets
//! only SYN-ACKs and RSTs to those ports. A reply is matched to its check by the backend's
//! address and port, our port, and its acknowledgement number (the check's random sequence
//! number plus one). The SYN is sent again halfway through the timeout (at most 1 s after
//! the first, a connect's initial RTO), then at doubling intervals: a lost SYN or SYN-ACK
//! does not fail a check that has time left.

use std::{
    collections::HashMap,
    io,
    mem::{size_of, MaybeUninit},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use etherparse::{IpNumber, Ipv4HeaderSlice, TcpHeader, TcpHeaderSlice};
use socket2::{Domain, Protocol, SockAddr, SockFilter, Socket, Type};
use tokio::{io::unix::AsyncFd, sync::oneshot, time::Instant};

use super::{
    text::{describe_io_error, timed_out},
    CheckResult,
};

/// Ports replies come to; checks take them in turn, so that checks of one backend one after
/// the other use different ports (a backend that still holds a half-open connection on one
/// 4-tuple would answer a new SYN on it with its old sequence numbers).
pub const SOURCE_PORTS: usize = 8;

/// The longest first wait for a reply before the SYN is sent again (a connect's initial
/// RTO).
const FIRST_RESEND: Duration = Duration::from_secs(1);

/// How long a check waits for a reply before it sends its SYN again: half its timeout, at
/// most [`FIRST_RESEND`], so that one lost packet (a full queue, a busy ring) does not fail a
/// check that has time for another try.
fn first_resend(timeout: Duration) -> Duration {
    (timeout / 2).min(FIRST_RESEND)
}

/// TCP flags (for the socket filter, which reads them as bits).
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// The window a SYN offers.
const WINDOW: u16 = 64240;

/// What a backend answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// SYN-ACK: it accepts connections on the port.
    Accepts,
    /// RST: it refuses them.
    Refuses,
}

/// What identifies the reply to one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Awaited {
    backend: SocketAddr,
    port: u16,
    ack: u32,
}

/// A reply read off a raw socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Who sent it.
    pub from: SocketAddr,
    /// The port it was sent to.
    pub to_port: u16,
    /// Its acknowledgement number.
    pub ack: u32,
    /// What it says.
    pub answer: Answer,
}

/// The TCP header of a SYN from `from_port` to `to` with sequence number `seq`; its checksum
/// is computed over `source` and `to`'s address when `source` is given (IPv4), else left to
/// the kernel (IPv6: `IPV6_CHECKSUM`).
pub fn syn_segment(
    source: Option<Ipv4Addr>,
    from_port: u16,
    to: SocketAddr,
    seq: u32,
) -> [u8; TcpHeader::MIN_LEN] {
    let mut header = TcpHeader::new(from_port, to.port(), seq, WINDOW);
    header.syn = true;
    if let (Some(source), IpAddr::V4(destination)) = (source, to.ip()) {
        // No payload: the length always fits.
        header.checksum = header
            .calc_checksum_ipv4_raw(source.octets(), destination.octets(), &[])
            .unwrap_or_default();
    }
    // No options: the minimal 20 bytes, on the stack (one header a check, no allocation).
    let mut segment = [0; TcpHeader::MIN_LEN];
    segment.copy_from_slice(&header.to_bytes());
    segment
}

/// The reply in `segment` (from the TCP header on) from `from`, if it is a SYN-ACK or a RST
/// with an acknowledgement.
pub fn parse_reply(from: IpAddr, segment: &[u8]) -> Option<Reply> {
    let header = TcpHeaderSlice::from_slice(segment).ok()?;
    let answer = match (header.syn(), header.ack(), header.rst(), header.fin()) {
        (true, true, false, false) => Answer::Accepts,
        (_, true, true, _) => Answer::Refuses,
        _ => return None,
    };
    Some(Reply {
        from: SocketAddr::new(from, header.source_port()),
        to_port: header.destination_port(),
        ack: header.acknowledgment_number(),
        answer,
    })
}

/// The reply in `packet` as an IPv4 raw socket reads it (from the IP header on).
pub fn parse_reply_v4(packet: &[u8]) -> Option<Reply> {
    let header = Ipv4HeaderSlice::from_slice(packet).ok()?;
    if header.protocol() != IpNumber::TCP {
        return None;
    }
    let segment = packet.get(header.slice().len()..)?;
    parse_reply(IpAddr::V4(header.source_addr()), segment)
}

/// Checks that go out as SYNs from raw sockets; see the module's documentation.
#[derive(Clone)]
pub struct HalfOpen {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HalfOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HalfOpen")
            .field("ports", &self.inner.ports)
            .finish_non_exhaustive()
    }
}

struct Inner {
    v4: AsyncFd<Socket>,
    v6: Option<AsyncFd<Socket>>,
    /// Hold [`Self::ports`] (bound, never listening).
    _holders: Vec<Socket>,
    ports: Vec<u16>,
    /// The next port to take, counted up.
    turn: AtomicUsize,
    /// Checks waiting for their reply.
    awaited: Mutex<HashMap<Awaited, oneshot::Sender<Answer>>>,
    /// The source address the kernel gives packets to each IPv4 destination (for the
    /// checksum), found once and again after a check times out.
    sources: Mutex<HashMap<Ipv4Addr, Ipv4Addr>>,
}

impl HalfOpen {
    /// Opens the raw sockets (IPv6 only where the host has IPv6) and holds the ports, on
    /// `runtime`, which then reads the replies. Fails without `CAP_NET_RAW`.
    pub fn open(runtime: &tokio::runtime::Handle) -> io::Result<Self> {
        let _entered = runtime.enter();
        let mut holders = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..SOURCE_PORTS {
            let (holder, port) = hold_port()?;
            holders.push(holder);
            ports.push(port);
        }
        let v4 = raw_socket(Domain::IPV4)?;
        v4.attach_filter(&filter_program(&ports, true))?;
        let v4 = registered(v4)?;
        let v6 = match raw_socket(Domain::IPV6) {
            Ok(socket) => {
                kernel_checksums(&socket)?;
                socket.attach_filter(&filter_program(&ports, false))?;
                Some(registered(socket)?)
            }
            Err(error) if error.raw_os_error() == Some(libc::EAFNOSUPPORT) => None,
            Err(error) => return Err(error),
        };
        let inner = Arc::new(Inner {
            v4,
            v6,
            _holders: holders,
            ports,
            turn: AtomicUsize::new(0),
            awaited: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
        });
        runtime.spawn(read_replies(inner.clone(), false));
        if inner.v6.is_some() {
            runtime.spawn(read_replies(inner.clone(), true));
        }
        Ok(Self { inner })
    }

    /// One check of `backend` within `timeout`: passes on a SYN-ACK (`connected`), fails on
    /// a RST (`connection refused`), on an error sending (`network unreachable`...) or when
    /// nothing came in time.
    pub async fn check(&self, backend: SocketAddr, timeout: Duration) -> CheckResult {
        let start = Instant::now();
        let inner = &self.inner;
        let turn = inner.turn.fetch_add(1, Ordering::Relaxed);
        let port = inner.ports[turn % inner.ports.len()];
        let (answered, answer) = oneshot::channel();
        // A sequence number no other check of this backend on this port awaits.
        let (seq, awaited) = {
            let mut waiting = inner.awaited();
            loop {
                let seq: u32 = rand::random();
                let awaited = Awaited {
                    backend,
                    port,
                    ack: seq.wrapping_add(1),
                };
                if let std::collections::hash_map::Entry::Vacant(entry) = waiting.entry(awaited) {
                    entry.insert(answered);
                    break (seq, awaited);
                }
            }
        };
        let mut answer = std::pin::pin!(answer);
        let deadline = start + timeout;
        let mut wait = first_resend(timeout);
        let result = loop {
            if let Err(error) = inner.send_syn(backend, port, seq) {
                break CheckResult::failure(start.elapsed(), describe_io_error(&error));
            }
            let resend = (Instant::now() + wait).min(deadline);
            match tokio::time::timeout_at(resend, &mut answer).await {
                Ok(Ok(Answer::Accepts)) => break CheckResult::success(start.elapsed()),
                Ok(Ok(Answer::Refuses)) => {
                    break CheckResult::failure(start.elapsed(), "connection refused".to_owned())
                }
                // Nothing yet: the SYN again, unless the time is up.
                Err(_) if resend < deadline => wait *= 2,
                // The time is up. (The channel cannot close unanswered: its only sender is in
                // the entry this check added.)
                Ok(Err(_)) | Err(_) => {
                    if let IpAddr::V4(address) = backend.ip() {
                        inner.sources().remove(&address);
                    }
                    break CheckResult::failure(start.elapsed(), timed_out(timeout));
                }
            }
        };
        inner.awaited().remove(&awaited);
        result
    }
}

impl Inner {
    fn awaited(&self) -> MutexGuard<'_, HashMap<Awaited, oneshot::Sender<Answer>>> {
        self.awaited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sources(&self) -> MutexGuard<'_, HashMap<Ipv4Addr, Ipv4Addr>> {
        self.sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The source address of packets to `destination`, as the kernel routes them.
    fn source_v4(&self, destination: Ipv4Addr) -> io::Result<Ipv4Addr> {
        if let Some(source) = self.sources().get(&destination) {
            return Ok(*source);
        }
        let probe = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        probe.connect(SocketAddrV4::new(destination, 9))?;
        let IpAddr::V4(source) = probe.local_addr()?.ip() else {
            return Err(io::Error::other("an IPv4 route gave an IPv6 source"));
        };
        self.sources().insert(destination, source);
        Ok(source)
    }

    fn send_syn(&self, backend: SocketAddr, port: u16, seq: u32) -> io::Result<()> {
        match backend {
            SocketAddr::V4(to) => {
                let source = self.source_v4(*to.ip())?;
                let segment = syn_segment(Some(source), port, backend, seq);
                send_to(&self.v4, &segment, backend)
            }
            SocketAddr::V6(_) => {
                let Some(v6) = &self.v6 else {
                    return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
                };
                send_to(v6, &syn_segment(None, port, backend, seq), backend)
            }
        }
    }

    /// Hands `reply` to the check awaiting it, if any.
    fn deliver(&self, reply: Reply) {
        let awaited = Awaited {
            backend: reply.from,
            port: reply.to_port,
            ack: reply.ack,
        };
        if let Some(answered) = self.awaited().remove(&awaited) {
            let _ = answered.send(reply.answer);
        }
    }
}

/// Reads replies off the IPv4 (or IPv6) raw socket, for as long as the runtime runs (the
/// probes' runtime stops with the agent's checkers).
async fn read_replies(inner: Arc<Inner>, v6: bool) {
    let socket = if v6 {
        inner.v6.as_ref()
    } else {
        Some(&inner.v4)
    };
    let Some(socket) = socket else {
        return;
    };
    let mut buffer = [MaybeUninit::<u8>::uninit(); 128];
    loop {
        let Ok(mut ready) = socket.readable().await else {
            return;
        };
        loop {
            match ready.try_io(|socket| socket.get_ref().recv_from(&mut buffer)) {
                Ok(Ok((len, from))) => {
                    // SAFETY: recv_from initialised the first `len` bytes of `buffer`.
                    let packet =
                        unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u8>(), len) };
                    let reply = match from.as_socket() {
                        Some(from) if v6 => parse_reply(from.ip(), packet),
                        _ => parse_reply_v4(packet),
                    };
                    if let Some(reply) = reply {
                        inner.deliver(reply);
                    }
                }
                // An error queued on the socket (an ICMP error): read on.
                Ok(Err(_)) => {}
                Err(_would_block) => break,
            }
        }
    }
}

/// `socket` registered with the current runtime, for reading.
fn registered(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: a `Socket` owns a valid open descriptor; the `AsyncFd` owns the socket, and so
    // keeps the descriptor open and unchanged, until it is dropped.
    unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// A raw TCP socket of `domain`, non-blocking.
fn raw_socket(domain: Domain) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::RAW, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Lets the kernel fill in the TCP checksum of what an IPv6 raw socket sends (`IPV6_CHECKSUM`
/// at the checksum's offset in the TCP header; IPv4 raw sockets have no such option).
fn kernel_checksums(socket: &Socket) -> io::Result<()> {
    const CHECKSUM_OFFSET: libc::c_int = 16;
    // SAFETY: the value is a c_int that outlives the call, and its size is passed.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_CHECKSUM,
            (&CHECKSUM_OFFSET as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A TCP socket bound to a port the kernel picks (for both families where IPv6 exists), never
/// listening: the port is then never given to a connection. The socket and its port.
fn hold_port() -> io::Result<(Socket, u16)> {
    let socket = match Socket::new(Domain::IPV6, Type::STREAM, None) {
        Ok(socket) => {
            socket.set_only_v6(false)?;
            socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())?;
            socket
        }
        Err(error) if error.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
            socket
        }
        Err(error) => return Err(error),
    };
    let port = socket
        .local_addr()?
        .as_socket()
        .map_or(0, |address| address.port());
    Ok((socket, port))
}

/// Sends `segment` to `to`'s address (its port is in the segment: raw sockets read the
/// protocol, not a port, from the address).
fn send_to(socket: &AsyncFd<Socket>, segment: &[u8], to: SocketAddr) -> io::Result<()> {
    let to = SockAddr::from(SocketAddr::new(to.ip(), 0));
    socket.get_ref().send_to(segment, &to).map(drop)
}

/// The classic BPF program passing only SYN-ACKs and RSTs to `ports`: from the IP header on
/// for IPv4 raw sockets, from the TCP header on for IPv6 ones.
fn filter_program(ports: &[u16], from_ip_header: bool) -> Vec<SockFilter> {
    const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const LD_B_IND: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_IND) as u16;
    const LD_H_IND: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_IND) as u16;
    const LDX_MSH: u16 = (libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let mut program = Vec::new();
    let (load_h, load_b) = if from_ip_header {
        // X = the IPv4 header's length.
        program.push(SockFilter::new(LDX_MSH, 0, 0, 0));
        (LD_H_IND, LD_B_IND)
    } else {
        (LD_H_ABS, LD_B_ABS)
    };
    // The destination port: one of ours, else drop.
    program.push(SockFilter::new(load_h, 0, 0, 2));
    let count = ports.len() as u8;
    for (i, port) in ports.iter().enumerate() {
        // On a match, jump past the other comparisons and the drop after them.
        let past = count - i as u8;
        program.push(SockFilter::new(JEQ, past, 0, u32::from(*port)));
    }
    program.push(SockFilter::new(RET, 0, 0, 0));
    // The flags: an ACK, with SYN or RST.
    program.push(SockFilter::new(load_b, 0, 0, 13));
    program.push(SockFilter::new(JSET, 0, 2, u32::from(ACK)));
    program.push(SockFilter::new(JSET, 0, 1, u32::from(SYN | RST)));
    program.push(SockFilter::new(RET, 0, 0, u32::from(u16::MAX)));
    program.push(SockFilter::new(RET, 0, 0, 0));
    program
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const TIMEOUT: Duration = Duration::from_millis(500);

    #[test]
    fn a_syn_carries_its_ports_sequence_and_the_checksum_of_its_addresses() {
        let source = Ipv4Addr::new(10, 0, 0, 1);
        let to = SocketAddr::from(([10, 0, 0, 2], 8080));
        let segment = syn_segment(Some(source), 40000, to, 0xdead_beef);
        assert_eq!(&segment[0..2], &40000u16.to_be_bytes());
        assert_eq!(&segment[2..4], &8080u16.to_be_bytes());
        assert_eq!(&segment[4..8], &0xdead_beefu32.to_be_bytes());
        assert_eq!(segment[12] >> 4, 5, "20-byte header");
        assert_eq!(segment[13], SYN);
        assert_ne!(&segment[16..18], &[0, 0]);
        // The checksum is the segment's over the pseudo-header of `source` and `to`.
        let (parsed, _) = TcpHeader::from_slice(&segment).expect("a TCP header");
        let expected = parsed
            .calc_checksum_ipv4_raw(source.octets(), to_v4(&to).ip().octets(), &[])
            .expect("checksum");
        assert_eq!(parsed.checksum, expected);
        // Another source gives another checksum.
        let other = syn_segment(Some(Ipv4Addr::new(10, 0, 0, 3)), 40000, to, 0xdead_beef);
        assert_ne!(segment[16..18], other[16..18]);
        // IPv6: the kernel fills it in.
        let v6 = syn_segment(None, 40000, SocketAddr::from((Ipv6Addr::LOCALHOST, 80)), 1);
        assert_eq!(&v6[16..18], &[0, 0]);
    }

    fn to_v4(address: &SocketAddr) -> SocketAddrV4 {
        match address {
            SocketAddr::V4(v4) => *v4,
            SocketAddr::V6(_) => unreachable!("an IPv4 address"),
        }
    }

    /// A reply's TCP header: from port 8080 to 40000, acknowledging 1000.
    fn reply(flags: u8) -> [u8; 20] {
        let mut segment = [0u8; 20];
        segment[0..2].copy_from_slice(&8080u16.to_be_bytes());
        segment[2..4].copy_from_slice(&40000u16.to_be_bytes());
        segment[8..12].copy_from_slice(&1000u32.to_be_bytes());
        segment[12] = 5 << 4;
        segment[13] = flags;
        segment
    }

    #[test]
    fn syn_acks_accept_rsts_with_an_ack_refuse_and_nothing_else_answers() {
        let from = IpAddr::from([10, 0, 0, 2]);
        let expect = |answer| Reply {
            from: SocketAddr::new(from, 8080),
            to_port: 40000,
            ack: 1000,
            answer,
        };
        assert_eq!(
            parse_reply(from, &reply(SYN | ACK)),
            Some(expect(Answer::Accepts))
        );
        assert_eq!(
            parse_reply(from, &reply(RST | ACK)),
            Some(expect(Answer::Refuses))
        );
        // A bare SYN (our own, seen on loopback), a bare RST, data, a short segment.
        assert_eq!(parse_reply(from, &reply(SYN)), None);
        assert_eq!(parse_reply(from, &reply(RST)), None);
        assert_eq!(parse_reply(from, &reply(ACK)), None);
        assert_eq!(parse_reply(from, &reply(SYN | ACK)[..19]), None);
        // From the IPv4 header on, with options (24 bytes).
        let mut packet = vec![
            0x46, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        packet.extend([0u8; 4]);
        packet.extend(reply(SYN | ACK));
        assert_eq!(parse_reply_v4(&packet), Some(expect(Answer::Accepts)));
        packet[9] = 17;
        assert_eq!(parse_reply_v4(&packet), None, "not TCP");
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Real raw sockets on loopback (the tests run as root): a listener passes, and its
    /// application never sees a connection; a closed port refuses; both families.
    #[test]
    fn checks_on_loopback_pass_on_a_listener_without_a_connection_and_fail_on_a_closed_port() {
        let runtime = runtime();
        let checks = HalfOpen::open(runtime.handle()).expect("raw sockets (run as root)");
        for any in [
            IpAddr::from(Ipv4Addr::LOCALHOST),
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ] {
            let listener = TcpListener::bind(SocketAddr::new(any, 0)).expect("listen");
            listener.set_nonblocking(true).expect("non-blocking");
            let open = listener.local_addr().expect("address");
            for _ in 0..3 {
                let result = runtime.block_on(checks.check(open, TIMEOUT));
                assert!(result.ok, "{open}: {result:?}");
                assert_eq!(result.passed.as_deref(), Some("connected"));
            }
            let accepted = listener.accept();
            assert!(
                matches!(&accepted, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "{open}: the application saw a connection: {accepted:?}"
            );
            drop(listener);
            let result = runtime.block_on(checks.check(open, TIMEOUT));
            assert!(!result.ok, "{open}: {result:?}");
            assert_eq!(
                result.error.as_deref(),
                Some("connection refused"),
                "{open}"
            );
        }
        assert!(checks.inner.awaited().is_empty(), "nothing left waiting");
    }

    /// A loopback listener with room for one connection, and that connection, which fills its
    /// accept queue: until it is accepted, the kernel drops SYNs to the listener unanswered.
    async fn full_listener() -> (tokio::net::TcpListener, tokio::net::TcpStream) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let listener = socket.listen(0).expect("listen");
        let open = listener.local_addr().expect("address");
        let full = tokio::net::TcpStream::connect(open).await.expect("connect");
        (listener, full)
    }

    /// A listener whose accept queue is full drops SYNs without a word: the check times out
    /// (a connecting check would too), and the source found for it is looked up again next
    /// time.
    #[test]
    fn a_backend_that_does_not_answer_times_out() {
        let runtime = runtime();
        let checks = HalfOpen::open(runtime.handle()).expect("raw sockets (run as root)");
        let (result, _full) = runtime.block_on(async {
            let (listener, full) = full_listener().await;
            let open = listener.local_addr().expect("address");
            let timeout = Duration::from_millis(100);
            (checks.check(open, timeout).await, (full, listener))
        });
        assert!(!result.ok, "{result:?}");
        assert_eq!(result.error.as_deref(), Some("timed out after 100ms"));
        assert!(checks.inner.sources().is_empty());
        assert!(checks.inner.awaited().is_empty());
    }

    /// The first SYN meets a full accept queue and is dropped; room is made 100 ms later, and
    /// the SYN sent again halfway through the timeout is answered: the check passes.
    #[test]
    fn a_lost_syn_is_sent_again_within_the_timeout() {
        assert_eq!(
            first_resend(Duration::from_millis(500)),
            Duration::from_millis(250)
        );
        assert_eq!(first_resend(Duration::from_secs(5)), FIRST_RESEND);
        let runtime = runtime();
        let checks = HalfOpen::open(runtime.handle()).expect("raw sockets (run as root)");
        let result = runtime.block_on(async {
            let (listener, full) = full_listener().await;
            let open = listener.local_addr().expect("address");
            let make_room = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                listener.accept().await.expect("accept")
            };
            let (result, _accepted) =
                tokio::join!(checks.check(open, Duration::from_millis(500)), make_room);
            drop(full);
            result
        });
        assert!(result.ok, "{result:?}");
        assert!(result.latency >= Duration::from_millis(250), "{result:?}");
    }

    #[test]
    fn the_ports_replies_come_to_are_held_from_connections() {
        let runtime = runtime();
        let checks = HalfOpen::open(runtime.handle()).expect("raw sockets (run as root)");
        let ports = checks.inner.ports.clone();
        assert_eq!(ports.len(), SOURCE_PORTS);
        for port in &ports {
            let taken = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, *port));
            assert!(taken.is_err(), "port {port} is free: {taken:?}");
        }
    }
}
