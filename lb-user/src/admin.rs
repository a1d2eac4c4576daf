//! What an operator decides about a backend at run time (`lb backend drain|disable|enable`):
//! shared by the agent, which applies it, and the commands and records that show or keep it.

use serde::{Deserialize, Serialize};

/// A backend's administrative state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Serving as configured.
    #[default]
    Ready,
    /// Weight 0: no new flows; tracked flows stay (`lb backend drain`).
    Drain,
    /// Maintenance: out of the ring; its tracked flows re-hash (`lb backend disable`).
    Maint,
}

impl AdminState {
    /// Lower-case name as in the CLI, logs and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}
