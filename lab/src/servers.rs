//! Small servers that answer with their name, so a client can tell which host a connection or
//! a datagram reached, and the clients that read the name; and an HTTP server whose answer
//! (a status, a slow status, garbage) can be changed while it runs, for health checks.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::Netns;

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

/// What an [`HttpServer`] answers to every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpAnswer {
    /// `HTTP/1.1 {code} ...` with an empty body.
    Status(u16),
    /// The same status after a delay.
    Slow(Duration, u16),
    /// These bytes, which are not HTTP.
    Garbage(Vec<u8>),
}

impl HttpAnswer {
    fn bytes(&self) -> Vec<u8> {
        let status = |code: u16| {
            let reason = match code {
                200 => "OK",
                204 => "No Content",
                404 => "Not Found",
                500 => "Internal Server Error",
                503 => "Service Unavailable",
                _ => "Status",
            };
            format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .into_bytes()
        };
        match self {
            HttpAnswer::Status(code) | HttpAnswer::Slow(_, code) => status(*code),
            HttpAnswer::Garbage(bytes) => bytes.clone(),
        }
    }
}

/// An HTTP/1.1 server answering every request (whatever its path) with the current
/// [`HttpAnswer`], then closing the connection. Stops when dropped.
pub struct HttpServer {
    answer: Arc<Mutex<HttpAnswer>>,
    _thread: ServerThread,
}

impl HttpServer {
    /// Listens on `[::]:port` (IPv4 and IPv6) inside `ns`.
    pub fn start(ns: &Netns, port: u16, answer: HttpAnswer) -> Self {
        let answer = Arc::new(Mutex::new(answer));
        let shared = answer.clone();
        let listener = ns.run(|| TcpListener::bind(("::", port)).expect("bind http"));
        listener.set_nonblocking(true).expect("nonblocking");
        let thread = ServerThread::spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let answer = shared.lock().expect("answer").clone();
                        std::thread::spawn(move || answer_http(stream, &answer));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        Self {
            answer,
            _thread: thread,
        }
    }

    /// Answers the next requests with `answer`.
    pub fn set(&self, answer: HttpAnswer) {
        *self.answer.lock().expect("answer") = answer;
    }
}

/// Reads a request head (until its blank line), then sends `answer` and closes.
fn answer_http(mut stream: TcpStream, answer: &HttpAnswer) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if let HttpAnswer::Slow(delay, _) = answer {
        std::thread::sleep(*delay);
    }
    let _ = stream.write_all(&answer.bytes());
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
