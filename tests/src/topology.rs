//! A one-arm lab of network namespaces: every host has `eth0` on one bridge (in a "switch"
//! namespace), addresses 10.77.0.0/24 and fd77::/64. Names are unique per test; everything is
//! removed on drop.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use lb_user::datapath::{Datapath, Options, Program};

use crate::netns::Netns;

/// Prefix of the lab's IPv4 subnet (a /24).
pub const SUBNET: &str = "10.77.0";
/// Prefix of the lab's IPv6 subnet (a /64).
pub const SUBNET6: &str = "fd77:";

/// One host of the lab.
pub struct Host {
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
}

/// Hosts on one bridge.
pub struct Lan {
    /// The hosts, in the order given.
    pub hosts: Vec<Host>,
    /// Keeps the `pass` programs on the switch ports attached.
    _switch_xdp: Datapath,
    /// The switch namespace (dropped last).
    pub switch: Netns,
}

impl Lan {
    /// Creates the switch and one host per name; host `i` gets `10.77.0.(10 + i)` and
    /// `fd77::(10 + i)` (decimal digits read as hex: host 0 is `fd77::10`).
    ///
    /// Every switch port runs the `pass` XDP program: a veth delivers frames another XDP program
    /// sent with `XDP_TX`/`XDP_REDIRECT` only when the receiving peer has an XDP program. The
    /// hosts' checksum offload is off, or XDP_TX would carry partial checksums to a backend.
    pub fn new(tag: &str, names: &[&str]) -> Self {
        let switch = Netns::new(&format!("{tag}-sw"));
        let mut switch_setup = vec![
            "link add br0 type bridge".to_owned(),
            "link set br0 up".to_owned(),
        ];
        let mut hosts = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = Netns::new(&format!("{tag}-{name}"));
            // No duplicate address detection on the interface created next: while its
            // link-local address is tentative (a second or two), a DSR backend cannot send the
            // neighbour solicitation for a client it answers from a VIP on `lo`, and the first
            // IPv6 answers are lost. Long-running hosts are past that.
            ns.run(|| std::fs::write("/proc/sys/net/ipv6/conf/default/accept_dad", "0"))
                .expect("accept_dad");
            let port = format!("p{i}");
            crate::netns::sh(&format!(
                "ip link add eth0 netns {} type veth peer name {port} netns {}",
                ns.name, switch.name
            ));
            switch_setup.push(format!("link set {port} up"));
            let ip: Ipv4Addr = format!("{SUBNET}.{}", 10 + i).parse().expect("ip");
            let ip6: Ipv6Addr = format!("{SUBNET6}:{}", 10 + i).parse().expect("ip6");
            // nodad: the address is usable at once, not after duplicate address detection.
            ns.ip_batch(&[
                format!("addr add {ip}/24 dev eth0"),
                format!("addr add {ip6}/64 dev eth0 nodad"),
                "link set eth0 up".to_owned(),
            ]);
            ns.exec("ethtool -K eth0 tx off");
            let mac = ns.mac("eth0");
            let ifindex = ns.ifindex("eth0");
            hosts.push(Host {
                ns,
                ip,
                ip6,
                mac,
                ifindex,
            });
        }
        // Ports join the bridge once it exists (first line of the batch).
        for i in 0..names.len() {
            switch_setup.push(format!("link set p{i} master br0"));
        }
        switch.ip_batch(&switch_setup);
        let ports = names.len();
        let switch_xdp = switch.run(|| {
            let mut datapath = Datapath::load(&Options {
                conntrack_size: 1,
                pin_dir: None,
            })
            .expect("load");
            for i in 0..ports {
                datapath
                    .attach_auto(Program::Pass, &format!("p{i}"), None)
                    .expect("attach pass");
            }
            datapath
        });
        Self {
            hosts,
            _switch_xdp: switch_xdp,
            switch,
        }
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Sets the MTU of host `i`'s `eth0` and of every switch port (so the bridge carries frames
    /// of that size). Tunnel-mode labs use it to give the LB-to-backend path room for the outer
    /// header while the client keeps a 1500-byte MTU.
    pub fn set_mtu(&self, hosts: &[usize], mtu: u32) {
        let ports: Vec<String> = (0..self.hosts.len())
            .map(|i| format!("link set p{i} mtu {mtu}"))
            .collect();
        self.switch.ip_batch(&ports);
        for &i in hosts {
            self.hosts[i].ns.ip(&format!("link set eth0 mtu {mtu}"));
        }
    }
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

/// A TCP server that answers every connection with its name, then reads until EOF and echoes.
/// Stops when dropped.
pub struct NameServer {
    _thread: ServerThread,
}

impl NameServer {
    /// Listens on `[::]:port` (IPv4 and IPv6) inside `ns`.
    pub fn start(ns: &Netns, port: u16, name: &str) -> Self {
        let name = name.to_owned();
        let listener = ns.run(|| TcpListener::bind(("::", port)).expect("bind"));
        listener.set_nonblocking(true).expect("nonblocking");
        let thread = ServerThread::spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let name = name.clone();
                        std::thread::spawn(move || serve(stream, &name));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        Self { _thread: thread }
    }
}

fn serve(mut stream: TcpStream, name: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.write_all(format!("{name}\n").as_bytes());
    let mut buf = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// A server thread that loops until its flag is set; set and joined on drop.
struct ServerThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Runs `serve(stop)` on a new thread.
    fn spawn(serve: impl FnOnce(&AtomicBool) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        Self {
            stop,
            thread: Some(std::thread::spawn(move || serve(&flag))),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP server that answers every datagram with its name, a colon and the datagram.
/// Stops when dropped.
pub struct UdpNameServer {
    _thread: ServerThread,
}

impl UdpNameServer {
    /// Listens on `address` inside `ns`. Bind the VIP itself, not a wildcard: the answer must
    /// come from the address the client sent to (a wildcard socket would answer from `eth0`'s).
    pub fn start(ns: &Netns, address: SocketAddr, name: &str) -> Self {
        let socket = ns.run(|| UdpSocket::bind(address).expect("bind udp"));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let name = name.to_owned();
        let thread = ServerThread::spawn(move |stop| {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                    let answer = [name.as_bytes(), b":", &buf[..n]].concat();
                    let _ = socket.send_to(&answer, peer);
                }
            }
        });
        Self { _thread: thread }
    }
}

/// Sends `payload` on `socket` (connected to a [`UdpNameServer`]) and returns the name in the
/// answer, checking the payload came back.
pub fn ask_name_udp(socket: &UdpSocket, payload: &str) -> std::io::Result<String> {
    socket.send(payload.as_bytes())?;
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf)?;
    let answer = String::from_utf8_lossy(&buf[..n]);
    match answer.split_once(':') {
        Some((name, echoed)) if echoed == payload => Ok(name.to_owned()),
        _ => Err(std::io::Error::other(format!(
            "unexpected answer {answer:?} to {payload:?}"
        ))),
    }
}

/// Connects to `addr` (from the calling thread's namespace) and returns the server's name.
pub fn ask_name(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
        name.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&name).into_owned())
}
