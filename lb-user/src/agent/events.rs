//! Health events from the checkers: stored on their backend, and turned into a state change
//! when the backend's health changes.

use std::time::{Duration, SystemTime};

use lb_common::maps::VipKey;
use tokio::time::Instant;

use super::{checkers::CheckerKey, state_change::StateChange, Agent};
use crate::{
    health::{Health, HealthEvent},
    status,
};

impl Agent {
    /// Stores a check result; on a health change returns the VIP and the log line to print
    /// once the datapath reflects it. Events of replaced checkers are ignored.
    pub(super) fn record(
        &mut self,
        event: HealthEvent<CheckerKey>,
    ) -> Option<(VipKey, StateChange)> {
        let HealthEvent {
            key,
            result,
            transition,
            health,
            decided,
        } = event;
        let received = SystemTime::now();
        for (vip_key, vip) in &mut self.vips {
            let Some(backend) = vip
                .backends
                .iter_mut()
                .find(|b| b.id == key.backend && b.checker.token == key.token)
            else {
                continue;
            };
            if let Some(m) = &self.metrics {
                m.health_checked(&vip.config.name, backend.config.address, result.latency)
            } // metrics hook
            let now = Instant::now();
            backend.observe(now);
            backend.last = Some(result);
            let was = std::mem::replace(&mut backend.health, health);
            let transition = transition?;
            match health {
                Health::Up => {
                    backend.availability.record(true);
                    if was != Health::Up && backend.ramp_pending {
                        backend.start_ramp(now);
                    }
                }
                Health::Down => {
                    backend.availability.record(false);
                    // Its next recovery ramps up again.
                    backend.ramp_since = None;
                    backend.ramp_pending = true;
                }
                Health::Unknown => {}
            }
            backend.last_change_unix_ms = status::now_unix_ms();
            let change = StateChange {
                vip: vip.config.name.clone(),
                backend: backend.config.address,
                transition,
                decided,
                received,
            };
            return Some((*vip_key, change));
        }
        None
    }

    /// Waits until every backend of `keys` has had its first check (bounded by the largest
    /// timeout plus a margin), applying results as they come.
    pub(super) async fn first_round(&mut self, keys: &[VipKey]) {
        let longest = keys
            .iter()
            .flat_map(|k| {
                self.vips[k]
                    .backends
                    .iter()
                    .map(|b| b.config.health.timeout)
            })
            .max()
            .unwrap_or_default();
        let deadline = Instant::now() + longest + Duration::from_millis(500);
        loop {
            let pending = keys
                .iter()
                .any(|k| self.vips[k].backends.iter().any(|b| b.last.is_none()));
            if !pending {
                break;
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    if let Some((_, change)) = self.record(event) {
                        change.log(None);
                    }
                }
                _ => break,
            }
        }
    }
}
