//! Servers and clients for the lab benchmarks, lean enough not to be what they measure: a fixed
//! pool of threads per server (no thread per connection), blocking I/O, no allocation per
//! connection.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// How often idle server threads look at their stop flag.
const POLL: Duration = Duration::from_millis(10);

/// What a server does with one accepted connection.
#[derive(Clone, Debug)]
pub enum Serve {
    /// Close it at once (a health-check target).
    Close,
    /// Send this line, then read until EOF (like [`crate::netns::servers::NameServer`]).
    Line(String),
    /// Read until EOF, then send the byte count (8 bytes, big-endian): a bulk upload sink.
    Sink,
}

/// A TCP server with a fixed pool of threads sharing one listener; stops when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` inside `ns` with `threads` threads each accepting and serving one
    /// connection at a time.
    pub fn start(
        ns: &Netns,
        addr: SocketAddr,
        threads: usize,
        serve: Serve,
    ) -> std::io::Result<Self> {
        let listener = ns.run(|| {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            // As deep as the namespace allows (`net.core.somaxconn` caps it).
            socket.listen(65535)?;
            // Non-blocking: threads that lose the race for a connection poll again.
            socket.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(TcpListener::from(socket))
        })?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (listener, stop, serve) = (listener.clone(), stop.clone(), serve.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if !readable(&listener, POLL) {
                            continue;
                        }
                        match accept_nonblocking(&listener) {
                            Ok(Some(stream)) => serve_one(stream, &serve),
                            Ok(None) => {}
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        Ok(Self { stop, threads })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Whether `listener` has a connection to accept within `timeout` (poll(2)).
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid, initialised pollfd and its count.
    let ready = unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as i32) };
    ready > 0
}

/// Accepts without blocking (another thread may have taken the connection first).
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "three kinds mean no connection now; every other is an error"
)]
fn accept_nonblocking(listener: &TcpListener) -> std::io::Result<Option<TcpStream>> {
    // SAFETY: accept4 on a valid (non-blocking) listening socket; null address pointers are
    // allowed. The new socket is blocking.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        return match error.kind() {
            ErrorKind::WouldBlock | ErrorKind::Interrupted | ErrorKind::ConnectionAborted => {
                Ok(None)
            }
            _ => Err(error),
        };
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok(Some(unsafe {
        <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    }))
}

fn serve_one(mut stream: TcpStream, serve: &Serve) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    match serve {
        Serve::Close => {}
        Serve::Line(line) => {
            if stream.write_all(line.as_bytes()).is_ok() {
                let mut buf = [0u8; 512];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            }
        }
        Serve::Sink => {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                total += n as u64;
            }
            let _ = stream.write_all(&total.to_be_bytes());
        }
    }
}

/// Connections made by [`connect_for`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectCount {
    /// Connected, got the server's line and closed.
    pub ok: u64,
    /// Refused, timed out or cut short.
    pub failed: u64,
}

/// `threads` threads in `ns` connect to `addr`, read the server's line and close, one
/// connection after the other, for `duration`.
pub fn connect_for(
    ns: &Netns,
    addr: SocketAddr,
    threads: usize,
    duration: Duration,
) -> ConnectCount {
    let deadline = Instant::now() + duration;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            ns.spawn(move || {
                let mut count = ConnectCount::default();
                let mut buf = [0u8; 64];
                while Instant::now() < deadline {
                    let answered = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                        .is_ok_and(|mut stream| {
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                            matches!(stream.read(&mut buf), Ok(n) if n > 0)
                        });
                    if answered {
                        count.ok += 1;
                    } else {
                        count.failed += 1;
                    }
                }
                count
            })
        })
        .collect();
    handles
        .into_iter()
        .fold(ConnectCount::default(), |sum, handle| {
            let count = handle.join().expect("client thread");
            ConnectCount {
                ok: sum.ok + count.ok,
                failed: sum.failed + count.failed,
            }
        })
}

/// One bulk upload from `ns` to a [`Serve::Sink`] at `addr`: writes for `duration`, then waits
/// until the sink has read everything. Returns the bytes the sink received and the time from
/// connect to its answer.
pub fn upload_for(
    ns: &Netns,
    addr: SocketAddr,
    duration: Duration,
) -> std::io::Result<(u64, Duration)> {
    ns.run(|| {
        let chunk = vec![0x5au8; 1 << 20];
        let start = Instant::now();
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        while start.elapsed() < duration {
            stream.write_all(&chunk)?;
        }
        stream.shutdown(Shutdown::Write)?;
        let mut total = [0u8; 8];
        stream.read_exact(&mut total)?;
        Ok((u64::from_be_bytes(total), start.elapsed()))
    })
}

/// Busy and total jiffies of all CPUs (from `/proc/stat`), to report how loaded the machine
/// was during a measurement.
#[derive(Clone, Copy, Debug)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    /// Now.
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let total: u64 = fields.iter().take(8).sum();
        Self {
            busy: total - idle,
            total,
        }
    }

    /// Share of CPU time that was busy since `earlier` (0..1, all CPUs together).
    #[must_use]
    pub fn busy_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            0.0
        } else {
            self.busy.saturating_sub(earlier.busy) as f64 / total as f64
        }
    }
}

/// CPU time (user + system) this process has used, including the kernel's packet processing
/// done in its threads' context: in a namespace lab nearly all of it (a veth transmit runs the
/// receiving side's softirq on the sender's CPU, in the sender's context).
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}
