//! The status snapshot the agent publishes for `lb status` and `lb stats` (see
//! `crate::status`): written at once on state changes, reloads and start, else at most once a
//! second (the serve loop decides when).

use super::{target::serving_state, Agent};
use crate::{
    datapath::AttachMode,
    error::Chain,
    status::{self, BackendStatus, Snapshot, VipStatus},
};

impl Agent {
    /// The snapshot of what the agent knows now.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            pid: std::process::id(),
            updated_unix_ms: status::now_unix_ms(),
            config: self.path.clone(),
            interface: self.config.interface.clone(),
            xdp_mode: AttachMode::of(self.attached.mode),
            program_id: self.attached.program_id,
            announce: self.announcer.as_ref().map(|a| a.owner()),
            vips: self
                .vips
                .values()
                .map(|vip| VipStatus {
                    name: vip.config.name.clone(),
                    id: vip.id,
                    address: vip.config.address.to_string(),
                    port: vip.config.port,
                    protocol: vip.config.protocol,
                    forward: vip.config.forward,
                    announce: vip.config.announce,
                    backends: vip
                        .backends
                        .iter()
                        .map(|b| BackendStatus {
                            address: b.address().to_string(),
                            id: b.id,
                            weight: b.config.weight,
                            state: serving_state(&b.facts()),
                            last_check_ok: b.last.as_ref().map(|r| r.ok),
                            last_check_latency_us: b
                                .last
                                .as_ref()
                                .map(|r| r.latency.as_micros() as u64),
                            last_check_error: b.last.as_ref().and_then(|r| r.error.clone()),
                            last_change_unix_ms: b.last_change_unix_ms,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Writes the status snapshot `lb status` reads.
    pub(super) fn publish(&self) {
        if let Err(error) = status::write(&self.config.state_dir, &self.snapshot()) {
            tracing::warn!(
                "cannot write the status snapshot {}: {}",
                status::path_for(&self.config.state_dir).display(),
                Chain(&error)
            );
        }
    }
}
