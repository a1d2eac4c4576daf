//! Client traffic for failover tests: long-lived connections that keep echoing ([`Pingers`])
//! and a steady stream of new connections ([`Opener`]), every attempt recorded with when it
//! started and how it ended, so a test can say which failed and whether only inside a window.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// How long a held connection may take to echo a ping. Generous: a packet lost while the
/// router has not noticed a dead instance yet is retransmitted after the RTO (200 ms, then
/// doubling), and only a connection that is reset or stays silent this long is broken.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to a VIP that stays open, with the backend that greeted it.
pub struct Held {
    /// The connection.
    pub stream: TcpStream,
    /// The name the backend answered with.
    pub backend: String,
    /// The client's end (for `lb explain`).
    pub local: SocketAddr,
}

/// Opens `n` connections from `client` to `vip` and reads each greeting; panics if one fails.
pub fn hold(client: &Netns, vip: SocketAddr, n: usize) -> Vec<Held> {
    client.run(|| {
        (0..n)
            .map(|i| {
                let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("long-lived connection {i} to {vip}: {e}"));
                stream
                    .set_read_timeout(Some(ECHO_TIMEOUT))
                    .expect("read timeout");
                let backend = read_line(&mut stream)
                    .unwrap_or_else(|e| panic!("greeting of long-lived connection {i}: {e}"));
                let local = stream.local_addr().expect("local address");
                Held {
                    stream,
                    backend,
                    local,
                }
            })
            .collect()
    })
}

/// Sends a line on `held` and checks it comes back.
pub fn echo(held: &mut Held, text: &str) -> Result<(), String> {
    held.stream
        .write_all(format!("{text}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; text.len() + 1];
    held.stream
        .read_exact(&mut buf)
        .map_err(|e| format!("read: {e}"))?;
    if buf[..text.len()] == *text.as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "echo mismatch: {:?}",
            String::from_utf8_lossy(&buf)
        ))
    }
}

/// Reads up to a newline.
fn read_line(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before a greeting",
                ))
            }
            _ if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            _ => line.push(byte[0]),
        }
    }
}

/// What became of one long-lived connection.
pub struct Pinged {
    /// The connection, for more checks.
    pub held: Held,
    /// Pings echoed.
    pub pings: usize,
    /// Why it broke, if it did.
    pub broken: Option<String>,
}

/// One thread per held connection, each echoing a ping every `period` until stopped.
pub struct Pingers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Pinged>>,
}

impl Pingers {
    /// Starts pinging every connection.
    pub fn start(held: Vec<Held>, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = held
            .into_iter()
            .map(|mut held| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut pings = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if let Err(error) = echo(&mut held, &format!("ping {pings}")) {
                            let broken = Some(format!("after {pings} pings: {error}"));
                            return Pinged {
                                held,
                                pings,
                                broken,
                            };
                        }
                        pings += 1;
                        std::thread::sleep(period);
                    }
                    Pinged {
                        held,
                        pings,
                        broken: None,
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops them (each finishes its ping in flight) and returns every connection's fate.
    pub fn stop(mut self) -> Vec<Pinged> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|thread| thread.join().expect("pinger"))
            .collect()
    }
}

impl Drop for Pingers {
    /// A test that failed before [`Pingers::stop`] leaves no thread pinging.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One new connection attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// When it started.
    pub started: Instant,
    /// The client's port (bound before connecting, so known for failures too).
    pub port: u16,
    /// How long it took to get its greeting, or to fail.
    pub took: Duration,
    /// The backend that greeted it, or what went wrong.
    pub result: Result<String, String>,
}

/// Opens a connection every `every`, each on its own thread (a stalled attempt does not hold
/// back the next), each failed if it has no greeting within `deadline`.
pub struct Opener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Attempt>>>,
}

impl Opener {
    /// Starts opening connections from `client` to `vip`.
    ///
    /// A `deadline` under a second makes an attempt whose SYN was lost fail instead of
    /// succeeding late on the SYN's retransmission (after 1 s), so failures show when packets
    /// were lost.
    pub fn start(client: &Netns, vip: SocketAddr, every: Duration, deadline: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // Threads spawned by a thread inside the namespace are inside it too.
        let thread = client.spawn(move || {
            let mut attempts = Vec::new();
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                attempts.push(std::thread::spawn(move || attempt(vip, deadline)));
                next += every;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            attempts
                .into_iter()
                .map(|a| a.join().expect("attempt"))
                .collect()
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops opening and returns every attempt, in order.
    pub fn stop(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("opener")
    }
}

impl Drop for Opener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One attempt: bind, connect, read the greeting, all within `deadline`.
fn attempt(vip: SocketAddr, deadline: Duration) -> Attempt {
    let started = Instant::now();
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(vip),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    let any: SocketAddr = if vip.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    socket.bind(&any.into()).expect("bind");
    let port = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or(0, |a| a.port());
    let result = (|| {
        socket
            .connect_timeout(&vip.into(), deadline)
            .map_err(|e| format!("connect: {e}"))?;
        let mut stream: TcpStream = socket.into();
        let left = deadline.saturating_sub(started.elapsed());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        read_line(&mut stream).map_err(|e| format!("greeting: {e}"))
    })();
    Attempt {
        started,
        port,
        took: started.elapsed(),
        result,
    }
}

/// The failed attempts.
pub fn failed(attempts: &[Attempt]) -> Vec<&Attempt> {
    attempts.iter().filter(|a| a.result.is_err()).collect()
}
