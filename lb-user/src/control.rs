//! The control protocol: what `lb backend drain|disable|enable` asks the agent over its
//! control socket (one JSON request line) and what the agent answers (one JSON reply line).
//! The socket itself is the agent's (`agent/control_socket.rs`).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What an operator asks of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AdminCommand {
    /// Weight 0 at run time: no new flows, existing ones stay.
    Drain,
    /// Maintenance: out of the ring; its tracked flows re-hash.
    Disable,
    /// Back to the configured weight (with slow start).
    Enable,
}

/// One request on the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// What to do.
    pub command: AdminCommand,
    /// The VIP's name.
    pub vip: String,
    /// The backend's address.
    pub backend: IpAddr,
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether it was done.
    pub ok: bool,
    /// What changed, or why nothing did.
    pub message: String,
}
