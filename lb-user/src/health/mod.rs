//! Health checks of backends, TCP or HTTP, with rise/fall hysteresis.
//!
//! A check opens a TCP connection to the backend's health port within the timeout:
//!
//! - a **TCP** check ([`check_tcp`]) passes once the connection is established and closes it
//!   right away; of a backend's own address it is half-open where raw sockets can be opened
//!   ([`HalfOpen`]: a SYN, passed by the SYN-ACK), unless its type is `tcp-connect`;
//! - an **HTTP** check ([`check_http`]) sends `GET path HTTP/1.1` and passes if the status
//!   line arrives in time with an accepted code ([`crate::config::HttpCheck::accepts`]).
//!
//! Its outcome is a [`CheckResult`] with the time the check took, what passed
//! (`connected`, `HTTP 200`) or, on failure, a short human-readable error:
//! `"connection refused"`, `"timed out after 500ms"`, `"no route to host"`,
//! `"HTTP 503 (expected 2xx)"`, `"not an HTTP response: \"SSH-2.0-OpenSSH_...\""`,
//! `"connection closed before the status line"`...
//!
//! [`HealthTracker`] (pure) turns the stream of results of one backend into its [`Health`]:
//!
//! - It starts [`Health::Unknown`]. The **first** result decides directly: a success makes
//!   the backend [`Health::Up`], a failure [`Health::Down`]. Start-up thus does not wait
//!   `rise × interval` before sending traffic, and traffic never goes to a backend that has
//!   not passed a check.
//! - After that, an `Up` backend goes `Down` after `fall` consecutive failed checks, and a
//!   `Down` backend comes back `Up` after `rise` consecutive successful checks. A success
//!   resets the streak of failures and a failure the streak of successes.
//! - [`HealthTracker::record`] returns a [`Transition`] only when the health changes. Its
//!   reason reads e.g. `"first check: connected in 1.2ms"`, `"first check: HTTP 200 in
//!   1.2ms"`, `"first check: connection refused"`, `"3 failed checks: HTTP 503 (expected
//!   2xx)"` or `"2 successful checks"`.
//!
//! [`Probe`] runs the checks of one check spec (address, port, kind, timeout, interval) in a
//! task, for every backend checked that way: the first immediately, then one every `interval`
//! (counted from the start of the previous check) shortened by a random jitter of up to 10%,
//! so that checks of many backends spread out. Jitter only shortens the interval: a backend
//! that starts failing is reported `Down` within `fall × interval + timeout`. After every
//! check each subscribed backend's own tracker judges the result and the task sends a
//! [`HealthEvent`] per backend with the result, the transition if any and the resulting
//! health; it stops when the receiver is dropped or the probe is dropped. This module does not
//! log: the agent logs the transitions it receives.

mod checker;
mod dial;
mod half_open;
mod http;
mod probe;
mod tcp;
mod text;
mod tracker;

#[cfg(test)]
mod test_servers;

pub use checker::{check, HealthEvent};
pub use dial::Dial;
pub use half_open::HalfOpen;
pub use http::check_http;
pub use probe::{Probe, ProbeSpec};
pub use tcp::check_tcp;
pub use tracker::{CheckResult, Health, HealthTracker, Transition};
