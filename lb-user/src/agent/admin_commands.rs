//! Run-time administration of backends (`lb backend drain|disable|enable`) and the slow starts
//! it and recoveries begin: requests from the control socket are applied to a backend's
//! administrative state, which outlives reloads and restarts (`crate::records`).

use tokio::time::Instant;

use super::{control_socket::Peer, Agent};
use crate::{
    admin::AdminState,
    control::{AdminCommand, ControlReply, ControlRequest},
};

impl Agent {
    /// Applies `request` from `peer`, logs what changed and who asked, and answers.
    pub(super) async fn administer(
        &mut self,
        request: &ControlRequest,
        peer: Peer,
    ) -> ControlReply {
        let ControlRequest {
            command,
            vip: name,
            backend: address,
        } = request;
        let Some((key, vip)) = self.vips.iter_mut().find(|(_, v)| v.config.name == *name) else {
            let names: Vec<&str> = self.live.vips.iter().map(|v| v.name.as_str()).collect();
            return refused(format!(
                "no vip named {name:?} (vips: {})",
                names.join(", ")
            ));
        };
        let key = *key;
        let Some(backend) = vip.backends.iter_mut().find(|b| b.address() == *address) else {
            let addresses: Vec<String> = vip
                .backends
                .iter()
                .map(|b| b.address().to_string())
                .collect();
            return refused(format!(
                "vip {name} has no backend {address} (backends: {})",
                addresses.join(", ")
            ));
        };
        let to = match command {
            AdminCommand::Drain => AdminState::Drain,
            AdminCommand::Disable => AdminState::Maint,
            AdminCommand::Enable => AdminState::Ready,
        };
        let from = backend.admin;
        if from == to {
            return ControlReply {
                ok: true,
                message: format!("backend {address} of vip {name} is already {}", to.name()),
            };
        }
        backend.admin = to;
        backend.admin_by = Some(format!(
            "{peer} at {}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        ));
        backend.slow_start = if to == AdminState::Ready {
            // Back to its weight, ramping if healthy now, else on its recovery.
            backend.slow_start.returned_to_service(
                backend.health == crate::health::Health::Up,
                Instant::now(),
                backend.config.health.slow_start,
            )
        } else {
            backend.slow_start.taken_out_of_service()
        };
        let message = format!(
            "backend {address} of vip {name}: {} -> {}",
            from.name(),
            to.name()
        );
        tracing::info!(vip = %name, backend = %address, asked_by = %peer, "admin: {message} (asked by {peer})");
        let synced = self.sync_vip_logged(&key);
        self.update_announcements().await;
        self.publish();
        // `lb status` run after the reply shows the new state.
        self.publisher.wait();
        match synced {
            Some(_) => ControlReply { ok: true, message },
            None => refused(format!(
                "{message}, but updating the datapath failed (see the agent's log)"
            )),
        }
    }

    /// Whether a backend is in its slow start.
    pub(super) fn ramping(&self) -> bool {
        self.vips
            .values()
            .any(|vip| vip.backends.iter().any(|b| b.slow_start.is_ramping()))
    }

    /// Rebuilds the rings of VIPs with backends in slow start, with their grown weights, and
    /// ends the ramps that are over.
    pub(super) async fn step_ramps(&mut self) {
        let now = Instant::now();
        let ramping: Vec<_> = self
            .vips
            .iter()
            .filter(|(_, vip)| vip.backends.iter().any(|b| b.slow_start.is_ramping()))
            .map(|(key, _)| *key)
            .collect();
        self.sync_vips_logged(&ramping);
        for key in ramping {
            if let Some(vip) = self.vips.get_mut(&key) {
                for backend in &mut vip.backends {
                    backend.slow_start = backend
                        .slow_start
                        .settled(now, backend.config.health.slow_start);
                }
            }
        }
        self.publish();
    }
}

fn refused(message: String) -> ControlReply {
    ControlReply { ok: false, message }
}
