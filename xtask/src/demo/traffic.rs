//! One traffic phase: connections from the client to the VIP, counted by the backend that
//! answered, printed as a table and checked against the weights.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Result;
use lb_lab::{servers::ask_name, Netns};

use super::config::{BACKENDS, PORT, VIP};

/// Each connection's connect and read timeout (a lost SYN is sent again after 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A traffic phase stops after this many failed connections (so a broken lab fails fast).
const MAX_FAILURES: usize = 5;

/// Connections of one traffic phase.
pub(super) struct Tally {
    /// Connections answered by each backend (in [`BACKENDS`] order).
    counts: [usize; 3],
    /// Connections that failed.
    pub(super) failed: usize,
    /// Connections not attempted because too many failed.
    skipped: usize,
    /// First errors, for the report.
    errors: Vec<String>,
    /// Answers that name no backend.
    unknown: usize,
    elapsed: Duration,
    /// The slowest answered connection: (duration, 1-based index).
    slowest: (Duration, usize),
}

impl Tally {
    /// Opens `n` connections to the VIP from `client`, one after the other.
    pub(super) fn collect(client: &Netns, n: usize) -> Result<Self> {
        let vip = SocketAddr::new(VIP.parse().expect("VIP"), PORT);
        let start = Instant::now();
        let mut tally = client.try_run(|| {
            let mut tally = Self {
                counts: [0; 3],
                failed: 0,
                skipped: 0,
                errors: Vec::new(),
                unknown: 0,
                elapsed: Duration::ZERO,
                slowest: (Duration::ZERO, 0),
            };
            for done in 0..n {
                if tally.failed >= MAX_FAILURES {
                    tally.skipped = n - done;
                    tally
                        .errors
                        .push(format!("gave up after {MAX_FAILURES} failures"));
                    break;
                }
                let t = Instant::now();
                let answer = backend_name(vip);
                if answer.is_ok() && t.elapsed() > tally.slowest.0 {
                    tally.slowest = (t.elapsed(), done + 1);
                }
                match answer {
                    Ok(name) => match BACKENDS.iter().position(|b| b.0 == name) {
                        Some(i) => tally.counts[i] += 1,
                        None => {
                            tally.unknown += 1;
                            tally.errors.push(format!("unexpected answer {name:?}"));
                        }
                    },
                    Err(error) => {
                        tally.failed += 1;
                        if tally.errors.len() < 3 {
                            tally.errors.push(format!(
                                "connection {} of {n} (at {:.2}s): {error}",
                                done + 1,
                                start.elapsed().as_secs_f64()
                            ));
                        }
                    }
                }
            }
            tally
        })?;
        tally.elapsed = start.elapsed();
        Ok(tally)
    }

    /// The share of answered connections backend `i` (in [`BACKENDS`] order) answered.
    pub(super) fn share(&self, i: usize) -> f64 {
        let answered: usize = self.counts.iter().sum();
        if answered == 0 {
            0.0
        } else {
            self.counts[i] as f64 / answered as f64
        }
    }

    /// Connections that failed or were not answered by a backend.
    pub(super) fn unanswered(&self) -> usize {
        self.failed + self.skipped + self.unknown
    }

    fn total(&self) -> usize {
        self.counts.iter().sum::<usize>() + self.failed + self.unknown + self.skipped
    }

    fn expected(up: [bool; 3]) -> [f64; 3] {
        let sum: u32 = BACKENDS
            .iter()
            .zip(up)
            .filter(|(_, u)| *u)
            .map(|(b, _)| b.2)
            .sum();
        let mut shares = [0.0; 3];
        for (i, (b, u)) in BACKENDS.iter().zip(up).enumerate() {
            if u && sum > 0 {
                shares[i] = f64::from(b.2) / f64::from(sum);
            }
        }
        shares
    }

    /// The table: per backend its weight, expected and actual share; then the totals.
    pub(super) fn print(&self, up: [bool; 3]) {
        let expected = Self::expected(up);
        let answered: usize = self.counts.iter().sum();
        println!();
        println!("    backend  address     weight  expected  connections  actual");
        for (i, (name, address, weight)) in BACKENDS.iter().enumerate() {
            let exp = if up[i] {
                format!("{:.1}%", expected[i] * 100.0)
            } else {
                "down".to_owned()
            };
            let actual = if answered > 0 {
                self.counts[i] as f64 * 100.0 / answered as f64
            } else {
                0.0
            };
            println!(
                "    {name:<8} {address:<11} {weight:>6}  {exp:>8}  {:>11}  {actual:>5.1}%",
                self.counts[i]
            );
        }
        println!(
            "    {} connections in {:.2}s, {} answered, {} failed{}",
            self.total(),
            self.elapsed.as_secs_f64(),
            answered,
            self.failed,
            if self.skipped > 0 {
                format!(", {} not attempted", self.skipped)
            } else {
                String::new()
            }
        );
        if self.slowest.0 > Duration::from_millis(500) {
            println!(
                "    the slowest connection (number {}) took {:.2}s",
                self.slowest.1,
                self.slowest.0.as_secs_f64()
            );
        }
        for error in &self.errors {
            println!("    error: {error}");
        }
        println!();
    }

    /// Every connection answered, down backends got none, up ones about their share.
    pub(super) fn check(&self, step: &str, up: [bool; 3], failures: &mut Vec<String>) {
        if self.failed + self.skipped + self.unknown > 0 {
            failures.push(format!(
                "{step}. {} of {} connections failed or were not answered by a backend",
                self.failed + self.skipped + self.unknown,
                self.total()
            ));
        }
        let answered: usize = self.counts.iter().sum();
        let expected = Self::expected(up);
        for (i, (name, ..)) in BACKENDS.iter().enumerate() {
            let actual = if answered > 0 {
                self.counts[i] as f64 / answered as f64
            } else {
                0.0
            };
            if !up[i] && self.counts[i] > 0 {
                failures.push(format!(
                    "{step}. {name} is down but got {} connections",
                    self.counts[i]
                ));
            } else if up[i] && (self.counts[i] == 0 || (actual - expected[i]).abs() > 0.12) {
                failures.push(format!(
                    "{step}. {name} got {:.1}% of the connections, expected about {:.1}%",
                    actual * 100.0,
                    expected[i] * 100.0
                ));
            }
        }
        if failures.iter().any(|f| f.starts_with(&format!("{step}. "))) {
            println!("CHECK FAILED (see the end of the output)");
        } else {
            println!("check passed: every connection answered, shares as expected");
        }
    }
}

/// Connects to the VIP and reads the answering backend's name.
fn backend_name(vip: SocketAddr) -> std::io::Result<String> {
    let name = ask_name(vip, CONNECT_TIMEOUT)?;
    if name.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    }
    Ok(name)
}

/// Reads up to a newline.
pub(super) fn read_line(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Sends a line and reads it back.
pub(super) fn echo(stream: &mut TcpStream, text: &str) -> std::io::Result<()> {
    stream.write_all(format!("{text}\n").as_bytes())?;
    let mut buf = vec![0u8; text.len() + 1];
    stream.read_exact(&mut buf)?;
    if buf[..text.len()] == *text.as_bytes() {
        Ok(())
    } else {
        Err(std::io::Error::other("echo mismatch"))
    }
}
