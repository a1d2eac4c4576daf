//! A one-arm lab of network namespaces: every host has `eth0` on one bridge (in a "switch"
//! namespace), addresses 10.77.0.0/24. Names are unique per test; everything is removed on drop.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use lb_user::datapath::{Datapath, Options, Program};

use crate::netns::Netns;

/// Prefix of the lab's subnet.
pub const SUBNET: &str = "10.77.0";

/// One host of the lab.
pub struct Host {
    /// Its namespace.
    pub ns: Netns,
    /// Address of its `eth0`.
    pub ip: Ipv4Addr,
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
    /// Creates the switch and one host per name; host `i` gets `10.77.0.(10 + i)`.
    ///
    /// Every switch port runs the `pass` XDP program: a veth delivers frames another XDP program
    /// sent with `XDP_TX`/`XDP_REDIRECT` only when the receiving peer has an XDP program. The
    /// hosts' checksum offload is off, or XDP_TX would carry partial checksums to a backend.
    pub fn new(tag: &str, names: &[&str]) -> Self {
        let switch = Netns::new(&format!("{tag}-sw"));
        let mut switch_setup = vec!["link add br0 type bridge".to_owned(), "link set br0 up".to_owned()];
        let mut hosts = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = Netns::new(&format!("{tag}-{name}"));
            let port = format!("p{i}");
            crate::netns::sh(&format!(
                "ip link add eth0 netns {} type veth peer name {port} netns {}",
                ns.name, switch.name
            ));
            switch_setup.push(format!("link set {port} up"));
            let ip: Ipv4Addr = format!("{SUBNET}.{}", 10 + i).parse().expect("ip");
            ns.ip_batch(&[format!("addr add {ip}/24 dev eth0"), "link set eth0 up".to_owned()]);
            ns.exec("ethtool -K eth0 tx off");
            let mac = ns.mac("eth0");
            let ifindex = ns.ifindex("eth0");
            hosts.push(Host { ns, ip, mac, ifindex });
        }
        // Ports join the bridge once it exists (first line of the batch).
        for i in 0..names.len() {
            switch_setup.push(format!("link set p{i} master br0"));
        }
        switch.ip_batch(&switch_setup);
        let ports = names.len();
        let switch_xdp = switch.run(|| {
            let mut datapath = Datapath::load(&Options { conntrack_size: 1, pin_dir: None }).expect("load");
            for i in 0..ports {
                datapath.attach_auto(Program::Pass, &format!("p{i}"), None).expect("attach pass");
            }
            datapath
        });
        Self { hosts, _switch_xdp: switch_xdp, switch }
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }
}

/// A TCP server that answers every connection with its name, then reads until EOF and echoes.
/// Stops when dropped.
pub struct NameServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NameServer {
    /// Listens on `0.0.0.0:port` inside `ns`.
    pub fn start(ns: &Netns, port: u16, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_owned();
        let listener = ns.run(|| TcpListener::bind(("0.0.0.0", port)).expect("bind"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop_flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
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
        Self { stop, thread: Some(thread) }
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

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
