//! Client connections through a VIP, the one set every namespace test uses:
//!
//! - [`ask`]: `n` connections one after the other, each answered with its backend's name
//!   ([`count`], [`failures`] read the answers);
//! - [`greet`], [`bulk`]: one connection, its greeting read; 64 KiB each way on one;
//! - [`hold`]: long-lived connections ([`Held`]) that a test echoes on ([`Held::echo`]) after an
//!   event ([`assert_echo`]), or that [`Pingers`] keep echoing during one, each reporting
//!   whether it broke;
//! - [`Opener`]: a steady stream of new connections at a rate, every [`Attempt`] recorded with
//!   when it started, its client port and how it ended, so a test can say which failed and
//!   whether only inside a window; it also tells how many answered so far, for a test to wait
//!   for traffic instead of sleeping.
//!
//! The servers are [`NameServer`](crate::netns::servers::NameServer)s: a greeting line with
//! their name, then an echo of whatever is sent.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::{servers::ask_name, wait_until, Netns};

/// How long a held connection may take to echo a line. Generous: a packet lost while the
/// router has not noticed a dead instance yet is retransmitted after the RTO (200 ms, then
/// doubling), and only a connection that is reset or stays silent this long is broken.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

/// `n` connections from `client` to `vip`, one after the other, each failed without its
/// greeting within `timeout`: the name each was answered with, or what went wrong.
pub fn ask(
    client: &Netns,
    vip: SocketAddr,
    n: usize,
    timeout: Duration,
) -> Vec<Result<String, String>> {
    client.run(|| {
        (0..n)
            .map(|_| ask_name(vip, timeout).map_err(|e| e.to_string()))
            .collect()
    })
}

/// How many of `answers` came from `name`.
pub fn count(answers: &[Result<String, String>], name: &str) -> usize {
    answers.iter().filter(|a| a.as_deref() == Ok(name)).count()
}

/// The errors among `answers`.
pub fn failures(answers: &[Result<String, String>]) -> Vec<&String> {
    answers.iter().filter_map(|a| a.as_ref().err()).collect()
}

/// A connection to a VIP that stays open, with the backend that greeted it.
pub struct Held {
    /// The connection.
    pub stream: TcpStream,
    /// The name the backend answered with.
    pub backend: String,
    /// The client's end (for `lb explain`).
    pub local: SocketAddr,
}

impl Held {
    /// Sends a line and checks it comes back.
    pub fn echo(&mut self, text: &str) -> Result<(), String> {
        self.stream
            .write_all(format!("{text}\n").as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = vec![0u8; text.len() + 1];
        self.stream
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
}

/// Echoes `text` on every one of `held`; panics naming the first that does not echo it.
pub fn assert_echo(held: &mut [Held], text: &str) {
    for held in held {
        if let Err(error) = held.echo(text) {
            panic!(
                "long-lived connection {} to {} broken at {text:?}: {error}",
                held.local, held.backend
            );
        }
    }
}

/// Opens `n` connections from `client` to `vip` and reads each greeting; panics if one fails.
pub fn hold(client: &Netns, vip: SocketAddr, n: usize) -> Vec<Held> {
    client.run(|| {
        (0..n)
            .map(|i| {
                greet(vip).unwrap_or_else(|e| panic!("long-lived connection {i} to {vip}: {e}"))
            })
            .collect()
    })
}

/// One connection to `vip` from the calling thread's namespace, its greeting read.
pub fn greet(vip: SocketAddr) -> std::io::Result<Held> {
    let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(ECHO_TIMEOUT))?;
    let backend = read_line(&mut stream)?;
    let local = stream.local_addr()?;
    Ok(Held {
        stream,
        backend,
        local,
    })
}

/// 64 KiB each way in 8 KiB rounds on one new connection to `vip` (from the calling thread's
/// namespace), every byte checked: full-size segments, which a path without the MTU headroom
/// a tunnel needs does not carry. Returns the backend's name; panics if anything fails.
pub fn bulk(vip: SocketAddr) -> String {
    let mut held = greet(vip).unwrap_or_else(|e| panic!("{vip}: bulk connection: {e}"));
    let chunk: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    for round in 0..8 {
        held.stream.write_all(&chunk).expect("write");
        let mut back = vec![0u8; chunk.len()];
        held.stream
            .read_exact(&mut back)
            .unwrap_or_else(|e| panic!("{vip}: bulk round {round} with {}: {e}", held.backend));
        assert_eq!(back, chunk, "{vip}: data from {} corrupted", held.backend);
    }
    held.backend
}

/// Reads up to a newline (a greeting); a connection closed before one is an error.
pub fn read_line(stream: &mut TcpStream) -> std::io::Result<String> {
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

/// The pings echoed by a pinger whose connection broke: it pings no more, and no wait for
/// more rounds waits for it.
const BROKE: usize = usize::MAX;

/// One thread per held connection, each echoing a ping every `period` until stopped.
pub struct Pingers {
    stop: Arc<AtomicBool>,
    /// Pings echoed so far by each ([`BROKE`] once broken).
    pings: Arc<Vec<AtomicUsize>>,
    threads: Vec<JoinHandle<Pinged>>,
}

impl Pingers {
    /// Starts pinging every connection.
    pub fn start(held: Vec<Held>, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let pings: Arc<Vec<AtomicUsize>> =
            Arc::new(held.iter().map(|_| AtomicUsize::new(0)).collect());
        let threads = held
            .into_iter()
            .enumerate()
            .map(|(i, mut held)| {
                let (stop, echoed) = (stop.clone(), pings.clone());
                std::thread::spawn(move || {
                    let mut pings = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if let Err(error) = held.echo(&format!("ping {pings}")) {
                            echoed[i].store(BROKE, Ordering::Relaxed);
                            let broken = Some(format!("after {pings} pings: {error}"));
                            return Pinged {
                                held,
                                pings,
                                broken,
                            };
                        }
                        pings += 1;
                        echoed[i].store(pings, Ordering::Relaxed);
                        // The pace of the pings, not a wait for anything.
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
        Self {
            stop,
            pings,
            threads,
        }
    }

    /// Waits until every connection that has not broken has echoed `rounds` more pings (or
    /// broke meanwhile); false if not within `timeout`.
    pub fn wait_rounds(&self, rounds: usize, timeout: Duration) -> bool {
        let from: Vec<usize> = self
            .pings
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .collect();
        wait_until(timeout, || {
            self.pings.iter().zip(&from).all(|(p, &from)| {
                let now = p.load(Ordering::Relaxed);
                now == BROKE || now >= from.saturating_add(rounds)
            })
        })
        .is_some()
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

/// Panics listing every broken long-lived connection of `pinged`.
pub fn assert_none_broken(pinged: &[Pinged]) {
    let broken: Vec<String> = pinged
        .iter()
        .filter_map(|p| {
            p.broken
                .as_ref()
                .map(|why| format!("{} ({}): {why}", p.held.local, p.held.backend))
        })
        .collect();
    assert!(
        broken.is_empty(),
        "{} of {} long-lived connections broke: {broken:#?}",
        broken.len(),
        pinged.len()
    );
}

/// One new connection attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// When it started.
    pub started: Instant,
    /// The client's port (bound before connecting, so known for failures too; used by no other
    /// attempt).
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
    /// The attempts finished so far, in the order they finished.
    finished: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<JoinHandle<()>>,
}

impl Opener {
    /// Starts opening connections from `client` to `vip`.
    ///
    /// A `deadline` under a second makes an attempt whose SYN was lost fail instead of
    /// succeeding late on the SYN's retransmission (after 1 s), so failures show when packets
    /// were lost.
    pub fn start(client: &Netns, vip: SocketAddr, every: Duration, deadline: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(Mutex::new(Vec::new()));
        let (flag, results) = (stop.clone(), finished.clone());
        // Threads spawned by a thread inside the namespace are inside it too.
        let thread = client.spawn(move || {
            let mut attempts = Vec::new();
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                let results = results.clone();
                attempts.push(std::thread::spawn(move || {
                    let attempt = attempt(vip, deadline);
                    results.lock().expect("attempts").push(attempt);
                }));
                next += every;
                // The rate of new connections, not a wait for anything.
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            for attempt in attempts {
                attempt.join().expect("attempt");
            }
        });
        Self {
            stop,
            finished,
            thread: Some(thread),
        }
    }

    /// Attempts answered by a backend so far.
    pub fn answered(&self) -> usize {
        let finished = self.finished.lock().expect("attempts");
        finished.iter().filter(|a| a.result.is_ok()).count()
    }

    /// Waits until `n` attempts started from now on have finished, answered or failed: the
    /// traffic that crossed what happened just before (a warm-up: traffic flows before an
    /// event; after one: traffic crossed the new state). False if not within `timeout`.
    pub fn wait_attempts(&self, n: usize, timeout: Duration) -> bool {
        let since = Instant::now();
        wait_until(timeout, || {
            let finished = self.finished.lock().expect("attempts");
            finished.iter().filter(|a| a.started >= since).count() >= n
        })
        .is_some()
    }

    /// Stops opening and returns every attempt, in the order they started.
    pub fn stop(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("opener");
        let mut attempts = std::mem::take(&mut *self.finished.lock().expect("attempts"));
        attempts.sort_by_key(|a| a.started);
        attempts
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
    let port = bind_unused(&socket, vip);
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

/// The client ports of [`Opener`]s' attempts: below the kernel's ephemeral range (32768 up),
/// so no held connection has one, and each used once in the process (until it wraps), so that
/// `lb explain` of a failed attempt's port speaks of that attempt alone, and no attempt meets
/// an earlier one's TIME_WAIT.
const ATTEMPT_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// Binds `socket` to the next port of [`ATTEMPT_PORTS`] that is free; returns it.
fn bind_unused(socket: &socket2::Socket, vip: SocketAddr) -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let ports = ATTEMPT_PORTS.len();
    for _ in 0..ports {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % ports;
        let port = ATTEMPT_PORTS.start + offset as u16;
        let any: SocketAddr = if vip.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, port).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, port).into()
        };
        if socket.bind(&any.into()).is_ok() {
            return port;
        }
    }
    panic!("no free client port in {ATTEMPT_PORTS:?}");
}

/// Panics listing the first failed attempts of `attempts`, if any failed.
pub fn assert_none_failed(attempts: &[Attempt]) {
    let failed = failed(attempts);
    assert!(
        failed.is_empty(),
        "{} of {} new connections failed: {:?}",
        failed.len(),
        attempts.len(),
        &failed[..failed.len().min(5)]
    );
}

/// The failed attempts.
pub fn failed(attempts: &[Attempt]) -> Vec<&Attempt> {
    attempts.iter().filter(|a| a.result.is_err()).collect()
}
