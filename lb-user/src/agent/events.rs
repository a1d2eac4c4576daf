//! Health events from the checkers: stored on their backend, and turned into a state change
//! when the backend's health changes.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use lb_common::maps::VipKey;
use tokio::time::Instant;

use super::{
    checkers::{CheckerKey, Results},
    state_change::StateChange,
    Agent,
};
use crate::health::HealthEvent;

/// How many VIPs ready during the first round are programmed together at most while results
/// keep coming: each programming resolves next hops and swaps rings once for all of them.
const PROGRAMMED_AT_ONCE: usize = 16;

/// The most check results handled as one burst: one queue's worth.
const BURST: usize = super::checkers::QUEUE;

impl Agent {
    /// Handles `first` and every check result already queued behind it (a burst: at start-up
    /// and when a host carrying many backends fails, thousands arrive at once): each is
    /// stored, then every VIP whose backends changed health is resolved and rebuilt once, its
    /// changes logged once its ring reflects them, and the announcements and the snapshot
    /// updated once. Whether anything changed (else the snapshot is left for the next tick).
    pub(super) async fn on_health_events(&mut self, first: Results) -> bool {
        let mut changes: Vec<(VipKey, StateChange)> = Vec::new();
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(batch) = next {
            handled += batch.len();
            for event in batch {
                changes.extend(self.record(event));
            }
            next = if handled < BURST {
                self.events.try_recv().ok()
            } else {
                None
            };
        }
        if changes.is_empty() {
            return false;
        }
        let vips: Vec<VipKey> = changes
            .iter()
            .map(|(vip, _)| *vip)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.resolve_next_hops(&vips).await;
        let updated: BTreeMap<VipKey, Option<SystemTime>> = vips
            .iter()
            .copied()
            .zip(self.sync_vips_logged(&vips))
            .collect();
        // Logged once the ring reflects it: from this line on, new flows obey it.
        for (vip, change) in &changes {
            change.log(updated.get(vip).copied().flatten());
        }
        self.update_announcements().await;
        self.publish();
        true
    }

    /// Stores a check result (see [`super::state::AgentState::on_health`]) and tells the
    /// metrics; on a health change returns the VIP and the log line to print once the datapath
    /// reflects it.
    pub(super) fn record(
        &mut self,
        event: HealthEvent<CheckerKey>,
    ) -> Option<(VipKey, StateChange)> {
        let checked = self
            .vips
            .on_health(event, Instant::now(), SystemTime::now())?;
        if let Some(m) = &self.metrics {
            m.health_checked(
                &self.vips[&checked.vip].config.name,
                checked.backend,
                checked.latency,
            )
        } // metrics hook
        Some((checked.vip, checked.change?))
    }

    /// Waits until every backend of `keys` has had its first check (bounded by the last first
    /// check paced, plus the largest timeout and a margin), applying results as they come, and
    /// programs each VIP ([`Agent::program`]) as soon as its own backends have all been checked
    /// once: building thousands of rings overlaps the paced first checks instead of following
    /// them. The results of the VIPs programmed; those left (their checks did not all answer
    /// in time) and those that changed after are for the caller to program.
    pub(super) async fn first_round(
        &mut self,
        keys: &[VipKey],
    ) -> (Vec<(VipKey, anyhow::Result<()>)>, BTreeSet<VipKey>) {
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
        let deadline = Instant::now().max(self.checkers.last_first_check())
            + longest
            + Duration::from_millis(500);
        // Counted down per VIP as first results arrive (a scan of every backend per event made
        // the first round quadratic: minutes at 16,384 backends).
        let mut pending: BTreeMap<VipKey, usize> = keys
            .iter()
            .map(|k| {
                let unchecked = self.vips[k]
                    .backends
                    .iter()
                    .filter(|b| b.last.is_none())
                    .count();
                (*k, unchecked)
            })
            .collect();
        let ours: BTreeSet<&VipKey> = keys.iter().collect();
        let mut ready: Vec<VipKey> = Vec::new();
        let mut programmed = Vec::new();
        let mut changed_since = BTreeSet::new();
        ready.extend(pending.iter().filter(|(_, n)| **n == 0).map(|(k, _)| *k));
        pending.retain(|_, n| *n > 0);
        while !pending.is_empty() {
            // What is ready is programmed once nothing more is queued, or as soon as it makes
            // a full group while results keep coming.
            let batch = match self.events.try_recv() {
                Ok(batch) if ready.len() < PROGRAMMED_AT_ONCE => batch,
                queued => {
                    programmed.extend(self.program(&std::mem::take(&mut ready)).await);
                    match queued {
                        Ok(batch) => batch,
                        Err(_) => {
                            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                                Ok(Some(batch)) => batch,
                                _ => break,
                            }
                        }
                    }
                }
            };
            for event in batch {
                let vip = event.key.vip;
                let first = pending.contains_key(&vip) && self.awaits_first_check(&event.key);
                if let Some((_, change)) = self.record(event) {
                    change.log(None);
                    if !pending.contains_key(&vip) && ours.contains(&vip) {
                        changed_since.insert(vip);
                    }
                }
                if let (true, Some(n)) = (first, pending.get_mut(&vip)) {
                    *n -= 1;
                    if *n == 0 {
                        pending.remove(&vip);
                        ready.push(vip);
                    }
                }
            }
        }
        programmed.extend(self.program(&ready).await);
        changed_since.extend(pending.into_keys());
        (programmed, changed_since)
    }

    /// Whether the backend a checker checks has no result yet.
    fn awaits_first_check(&self, key: &CheckerKey) -> bool {
        self.vips.get(&key.vip).is_some_and(|vip| {
            vip.backends
                .iter()
                .any(|b| b.id == key.backend && b.checker.token == key.token && b.last.is_none())
        })
    }
}
