//! Run-time administration of backends (`lb backend drain|disable|enable`) and the slow starts
//! it and recoveries begin: requests from the control socket are applied to a backend's
//! administrative state, which outlives reloads and restarts (`crate::records`).

use tokio::time::Instant;

use super::{control_socket::Peer, state::AdminOutcome, Agent};
use crate::control::{ControlReply, ControlRequest};

impl Agent {
    /// Applies `request` from `peer` (see [`super::state::AgentState::on_admin`]), logs what
    /// changed and who asked, rebuilds the VIP and answers once `lb status` shows it.
    pub(super) async fn administer(
        &mut self,
        request: &ControlRequest,
        peer: Peer,
    ) -> ControlReply {
        let asked_by = format!(
            "{peer} at {}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        let (key, message) = match self.vips.on_admin(request, asked_by, Instant::now()) {
            Err(why) => return refused(why),
            Ok(AdminOutcome::Unchanged { message }) => return ControlReply { ok: true, message },
            Ok(AdminOutcome::Changed { vip, message }) => (vip, message),
        };
        tracing::info!(
            vip = %request.vip,
            backend = %request.backend,
            asked_by = %peer,
            "admin: {message} (asked by {peer})"
        );
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

    /// Rebuilds the rings of VIPs with backends in slow start, with their grown weights, and
    /// ends the ramps that are over (see [`super::state::AgentState::on_tick`]).
    pub(super) async fn step_ramps(&mut self) {
        let ramping = self.vips.on_tick(Instant::now());
        self.sync_vips_logged(&ramping);
        self.publish();
    }

    /// Weighs the backends of response-time VIPs by their response times (see
    /// `response_time`); rebuilds the VIPs whose factors changed and logs each change.
    pub(super) fn weigh_response_times(&mut self) {
        let changes = self.vips.on_response_times();
        if changes.is_empty() {
            return;
        }
        let keys: Vec<_> = changes.iter().map(|(key, _)| *key).collect();
        self.sync_vips_logged(&keys);
        for (_, line) in &changes {
            tracing::info!("{line}");
        }
        self.publish();
    }
}

fn refused(message: String) -> ControlReply {
    ControlReply { ok: false, message }
}
