//! Configuration changes: a reload (SIGHUP or the file changed) is applied as a diff against the
//! running configuration; VIPs are added, removed or changed one by one, each through the
//! planner, so a reload never drops the VIPs it does not touch.

use anyhow::Context as _;
use lb_common::maps::VipKey;

use tokio::time::Instant;

use super::{
    apply,
    checkers::Checkers,
    ids::Ids,
    plan::plan_removal,
    response_time::ResponseTime,
    runtime::{BackendRuntime, VipRuntime},
    slow_start::SlowStart,
    state::ConfigDiff,
    Agent,
};
use crate::{
    config::{self, BackendConfig, Config, LiveConfig, VipConfig},
    error::Chain,
    health::Health,
    records::{self, BackendRecord, Records},
    status,
};

impl Agent {
    /// Re-reads the configuration; an invalid file is logged and changes nothing. Settings
    /// only a restart applies are compared with what the file said before, so a change of
    /// them is warned about once; the rest is applied as a diff.
    pub async fn reload(&mut self, why: &str) {
        let config = match config::load(&self.path) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(
                    "reload ({why}) rejected, still running the previous configuration: {error}"
                );
                if let Some(m) = &self.metrics {
                    m.reloaded(false, &self.live)
                } // metrics hook
                return;
            }
        };
        let Config { fixed, live } = config;
        let pending = self.file_fixed.changes(&fixed);
        if !pending.is_empty() {
            tracing::warn!(
                "reload ({why}): {} changed: takes effect only after a restart of lb run{}",
                pending.join(", "),
                if fixed == self.fixed {
                    " (back to what runs)"
                } else {
                    ""
                }
            );
            self.file_fixed = fixed;
        }
        if live == self.live {
            tracing::info!("reload ({why}): configuration unchanged");
            if let Some(m) = &self.metrics {
                m.reloaded(true, &self.live)
            } // metrics hook
            return;
        }
        if self.check_interface.is_none() {
            let set_up = super::set_up_vip_checks(
                &mut self.datapath,
                &live,
                self.neighbour_snapshots.clone(),
            )
            .await;
            match set_up {
                Ok((paths, interface)) => {
                    if let Some(paths) = paths {
                        self.checkers.set_paths(paths);
                    }
                    self.check_interface = interface;
                }
                Err(error) => {
                    tracing::error!(
                        "reload ({why}) rejected, still running the previous configuration: {}",
                        Chain(&*error)
                    );
                    if let Some(m) = &self.metrics {
                        m.reloaded(false, &self.live)
                    } // metrics hook
                    return;
                }
            }
        }
        for warning in live.warnings() {
            tracing::warn!("reload ({why}): {warning}");
        }
        let applied = self.apply_config(live).await;
        if let Some(m) = &self.metrics {
            m.reloaded(applied.is_ok(), &self.live)
        } // metrics hook
        match applied {
            Ok(summary) => tracing::info!("reloaded ({why}): {summary}"),
            Err(error) => tracing::error!("reload ({why}) failed part-way: {error:#}"),
        }
        // What reading and comparing the file took is free again.
        super::return_free_memory();
        // Results already queued, such as the first checks of backends this reload added (a
        // millisecond on a LAN), reach the rings now, not after the snapshot is written (only
        // those: a steady stream of results must not hold the reload's snapshot back).
        for _ in 0..self.events.len() {
            let Ok(results) = self.events.try_recv() else {
                break;
            };
            self.on_health_events(results).await;
        }
        self.reconcile_announcements().await;
        self.publish();
    }

    /// Applies a new, valid configuration as a diff against the running one.
    async fn apply_config(&mut self, new: LiveConfig) -> anyhow::Result<String> {
        let diff = self.vips.on_config(&self.live, &new);
        let settings_changed =
            new.tunnel_source != self.live.tunnel_source || new.conntrack != self.live.conntrack;
        let vips = std::mem::take(&mut self.live.vips);
        self.live = LiveConfig {
            vips,
            ..new.clone()
        };
        if settings_changed {
            self.write_settings()?;
        }
        let ConfigDiff {
            removed,
            added,
            changed,
        } = diff;
        for key in &removed {
            self.remove_vip(key)?;
        }
        for config in &changed {
            self.change_vip(&config.key(), config.clone())?;
        }
        let changed = changed.len();
        let added_count = added.len();
        self.add_vips(added).await?;
        self.live.vips = new.vips;
        Ok(format!(
            "{added_count} VIPs added, {} removed, {changed} changed",
            removed.len()
        ))
    }

    /// Adds VIPs: starts their checks, waits for every backend's first result, resolves next
    /// hops, then programs each through the planner (backends, ring, then the `VIPS` entry).
    pub(super) async fn add_vips(&mut self, vips: Vec<VipConfig>) -> anyhow::Result<()> {
        // Backends of VIPs added at start-up serve at once; added later, they slow-start.
        let slow_start = self.started;
        let mut keys = Vec::new();
        for config in vips {
            let key = config.key();
            let (id, written) = self.ids.vip(&key)?;
            let mut backends = Vec::new();
            for backend in &config.backends {
                backends.push(start_backend(
                    &mut self.ids,
                    &mut self.checkers,
                    &self.records,
                    (&key, &config),
                    backend.clone(),
                    slow_start,
                )?);
            }
            self.vips.insert(
                key,
                VipRuntime {
                    id,
                    key,
                    config,
                    backends,
                    written,
                    ring: None,
                    held: 0,
                    current: None,
                    previous: None,
                },
            );
            keys.push(key);
        }
        let (mut results, left) = self.first_round(&keys).await;
        let left: Vec<VipKey> = left.into_iter().collect();
        results.extend(self.program(&left).await);
        // Every VIP is programmed; the first failure is returned.
        results.into_iter().try_for_each(|(_, result)| result)?;
        if !self.started {
            self.restore_previous_rings(&keys);
        }
        Ok(())
    }

    /// Gives the VIPs `keys` the previous rings the records of the last agent kept, whose
    /// windows are still open: connections from before a ring change and a restart (even with
    /// `--fresh-state`) keep their second chance. Each is computed again from the chain of
    /// rings its window saw.
    fn restore_previous_rings(&mut self, keys: &[VipKey]) {
        let now = std::time::SystemTime::now();
        for key in keys {
            let Some(vip) = self.vips.get_mut(key) else {
                continue;
            };
            let Some(record) = self.records.previous_rings.get(&vip.config.name) else {
                continue;
            };
            let until =
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(record.until_unix_ms);
            let tunnel = vip.config.forward == lb_common::maps::ForwardMode::Tunnel;
            if until <= now || !tunnel || vip.config.second_chance.is_zero() {
                continue;
            }
            let chain: Vec<super::rings::RingShape> = record
                .chain
                .iter()
                .map(|ring| super::rings::RingShape::new(ring.size, ring.members.iter().copied()))
                .collect();
            let ids = super::backend_ids(vip);
            let rings: Result<Vec<Vec<u32>>, _> = chain
                .iter()
                .map(|shape| self.rings.ring(shape.clone()).map(|ring| ring.ids(&ids)))
                .collect();
            let rings = match rings {
                Ok(rings) if rings.len() >= 2 => rings,
                Ok(_) => continue,
                Err(error) => {
                    tracing::error!(
                        "vip {}: cannot rebuild its previous ring: {error}",
                        vip.config.name
                    );
                    continue;
                }
            };
            tracing::info!(
                vip = %vip.config.name,
                "vip {}: previous ring restored: second chance for {:.0} s more",
                vip.config.name,
                until.duration_since(now).unwrap_or_default().as_secs_f64()
            );
            let slots = super::second_chance::replay(&rings);
            let previous = super::second_chance::PreviousRing { chain, until };
            super::update_previous_ring(&mut self.second_chance, vip, Some(previous), Some(slots));
        }
    }

    /// Removes a VIP: out of `VIPS`, then its backend entries cleared and its ids freed.
    fn remove_vip(&mut self, key: &VipKey) -> anyhow::Result<()> {
        let Some(mut vip) = self.vips.remove(key) else {
            return Ok(());
        };
        let writes = plan_removal(*key, &vip.written);
        let applied = apply::apply(&mut self.datapath, &mut vip.written, writes)
            .with_context(|| format!("removing vip {}", vip.config.name))?;
        for id in applied.cleared {
            self.ids.release_backend(id);
        }
        if vip.previous.is_some() {
            // Its id may go to another VIP.
            if let Err(error) = self.second_chance.clear(vip.id) {
                tracing::error!("removing vip {}'s previous ring: {error}", vip.config.name);
            }
        }
        for backend in &vip.backends {
            forget_admin(&vip.config.name, backend);
        }
        self.ids.release_vip(vip.id);
        tracing::info!(vip = %vip.config.name, "vip {} removed", vip.config.name);
        Ok(())
    }

    /// Applies a changed VIP: backends added, removed, reweighted or with new health settings,
    /// VIP attributes, the table size. New backends join the ring after their first successful
    /// check; the planner orders the writes (a shrinking ring, removed backends...).
    fn change_vip(&mut self, key: &VipKey, config: VipConfig) -> anyhow::Result<()> {
        let Some(vip) = self.vips.get_mut(key) else {
            return Ok(());
        };
        let mut kept = Vec::new();
        for mut backend in std::mem::take(&mut vip.backends) {
            let Some(new) = config
                .backends
                .iter()
                .find(|b| b.address == backend.config.address)
            else {
                // Dropped: its checker stops; the planner clears its entry after the ring.
                forget_admin(&vip.config.name, &backend);
                continue;
            };
            if new.health != backend.config.health || config.forward != vip.config.forward {
                backend.checker = self.checkers.start((key, config.forward), backend.id, new);
            }
            backend.config = new.clone();
            kept.push(backend);
        }
        for new in &config.backends {
            if !kept.iter().any(|b| b.config.address == new.address) {
                kept.push(start_backend(
                    &mut self.ids,
                    &mut self.checkers,
                    &self.records,
                    (key, &config),
                    new.clone(),
                    true,
                )?);
            }
        }
        vip.backends = kept;
        vip.config = config;
        self.sync_vip(key)
    }
}

/// Logs that a backend leaving the configuration takes its administrative state with it (a
/// reload never drops one silently).
fn forget_admin(vip: &str, backend: &BackendRuntime) {
    if backend.admin != crate::admin::AdminState::Ready {
        tracing::info!(
            vip,
            backend = %backend.address(),
            "admin: backend {} of vip {vip} left the configuration: its {} state is forgotten",
            backend.address(),
            backend.admin.name()
        );
    }
}

/// A new backend of VIP `key` named `name`: its id, its checker started, what the records
/// kept of it (administrative state, availability); `slow_start`: its first coming up ramps.
pub(super) fn start_backend(
    ids: &mut Ids,
    checkers: &mut Checkers,
    records: &Records,
    (key, vip): (&VipKey, &VipConfig),
    config: BackendConfig,
    slow_start: bool,
) -> anyhow::Result<BackendRuntime> {
    let name = vip.name.as_str();
    let id = ids.backend(key, config.address)?;
    let checker = checkers.start((key, vip.forward), id, &config);
    let BackendRecord {
        admin,
        admin_by,
        mut availability,
    } = records
        .backends
        .get(&records::key(name, config.address))
        .cloned()
        .unwrap_or_default();
    availability.resume();
    Ok(BackendRuntime {
        id,
        config,
        health: Health::Unknown,
        last: None,
        last_change_unix_ms: status::now_unix_ms(),
        next_hop: None,
        checker,
        admin,
        admin_by,
        slow_start: SlowStart::new(slow_start),
        availability,
        observed_at: Instant::now(),
        response: ResponseTime::default(),
    })
}
