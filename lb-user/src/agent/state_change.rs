//! The one log line per backend health change, written once the datapath reflects it.

use std::{
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::health::Transition;

/// A backend's health change, logged once the datapath reflects it.
#[derive(Debug)]
pub struct StateChange {
    /// The VIP's name.
    pub vip: String,
    /// The backend.
    pub backend: IpAddr,
    /// From, to and why.
    pub transition: Transition,
    /// When the health check that caused it was judged.
    pub decided: SystemTime,
    /// When the agent took the event from the checkers' queue.
    pub received: SystemTime,
}

impl StateChange {
    /// Logs the change. `datapath_updated`: when the writes of its ring and backend entries
    /// returned (`None` at start-up, before any VIP is programmed, or when the update failed);
    /// a ring swap returns only after an RCU grace period, so packets used the new ring a few
    /// milliseconds earlier. The timestamps are wall-clock microseconds, so another process on
    /// the host can compare them with what it sees the kernel do (`bench-swap` does).
    pub fn log(&self, datapath_updated: Option<SystemTime>) {
        let Self {
            vip,
            backend,
            transition,
            decided,
            received,
        } = self;
        let micros_between = |from: &SystemTime, to: &SystemTime| {
            to.duration_since(*from).map_or(0, |d| d.as_micros() as u64)
        };
        tracing::info!(
            %vip,
            %backend,
            from = ?transition.from,
            to = ?transition.to,
            decided_unix_us = unix_micros(*decided),
            queued_us = micros_between(decided, received),
            ring_swapped_unix_us = datapath_updated.map(unix_micros),
            swap_us = datapath_updated.map(|updated| micros_between(decided, &updated)),
            "backend {backend} of vip {vip}: {:?} -> {:?} ({})",
            transition.from,
            transition.to,
            transition.reason
        );
    }
}

/// Microseconds since the Unix epoch.
fn unix_micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
