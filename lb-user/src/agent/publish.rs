//! The status snapshot the agent publishes for `lb status` and `lb stats` (see
//! `crate::status`): written at once on state changes, reloads and start, else at most once a
//! second (the serve loop decides when).

use tokio::time::Instant;

use super::{admin::configured_units, target::serving_state, Agent};
use crate::{
    datapath::AttachMode,
    error::Chain,
    records::{self, BackendRecord, Records},
    status::{self, BackendStatus, Snapshot, VipStatus},
};

impl Agent {
    /// The snapshot of what the agent knows at `now`.
    fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            pid: std::process::id(),
            updated_unix_ms: status::now_unix_ms(),
            config: self.path.clone(),
            interface: self.config.interface.clone(),
            xdp_mode: AttachMode::of(self.attached.mode),
            program_id: self.attached.program_id,
            announce: self.announcer.as_ref().map(|a| a.owner()),
            stopping: self.stopping,
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
                            state: serving_state(&b.facts(now)),
                            admin: b.admin,
                            admin_by: b.admin_by.clone(),
                            effective_weight: configured_units(b.facts(now).weight),
                            failures: b.availability.failures,
                            mttr_seconds: b.availability.mttr().map(|d| d.as_secs_f64()),
                            mttf_seconds: b.availability.mttf().map(|d| d.as_secs_f64()),
                            availability: b.availability.availability(),
                            up_seconds: b.availability.up_ms as f64 / 1000.0,
                            observed_seconds: b.availability.observed_ms as f64 / 1000.0,
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

    /// Counts availability up to now, then writes the status snapshot `lb status` reads and
    /// the records kept across restarts.
    pub(super) fn publish(&mut self) {
        let now = Instant::now();
        for vip in self.vips.values_mut() {
            for backend in &mut vip.backends {
                backend.observe(now);
            }
        }
        if let Err(error) = status::write(&self.config.state_dir, &self.snapshot(now)) {
            tracing::warn!(
                "cannot write the status snapshot {}: {}",
                status::path_for(&self.config.state_dir).display(),
                Chain(&error)
            );
        }
        self.records = Records {
            created_unix_ms: self.records.created_unix_ms,
            backends: self
                .vips
                .values()
                .flat_map(|vip| {
                    vip.backends.iter().map(|b| {
                        let record = BackendRecord {
                            admin: b.admin,
                            admin_by: b.admin_by.clone(),
                            availability: b.availability.clone(),
                        };
                        (records::key(&vip.config.name, b.address()), record)
                    })
                })
                .collect(),
        };
        if let Err(error) = records::save(&self.config.state_dir, &self.records) {
            tracing::warn!(
                "cannot save {}: {}",
                records::path_for(&self.config.state_dir).display(),
                Chain(&error)
            );
        }
        if let Some(m) = &self.metrics {
            m.backends_observed(self.vips.values().flat_map(|vip| {
                vip.backends.iter().map(|b| {
                    (
                        vip.id,
                        b.id,
                        crate::metrics::BackendRecordView {
                            admin: b.admin,
                            effective_weight: configured_units(b.facts(now).weight),
                            failures: b.availability.failures,
                            up_seconds: b.availability.up_ms as f64 / 1000.0,
                            observed_seconds: b.availability.observed_ms as f64 / 1000.0,
                        },
                    )
                })
            }));
        } // metrics hook
    }
}
