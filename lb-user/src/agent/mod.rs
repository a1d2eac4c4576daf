//! `lb run`: turns the configuration into map contents, watches backend health, rewrites a
//! VIP's ring when one of its backends fails, recovers, drains or is reconfigured, reloads the
//! configuration on SIGHUP or when the file changes, and hands the datapath over to the next
//! agent without dropping a packet.
//!
//! The agent is a thin shell around pure parts:
//! - [`target`] computes what the datapath should hold for a VIP from what the agent knows of
//!   its backends (health, next hop, weight);
//! - [`mod@plan`] turns the difference between that and what the datapath holds into an ordered
//!   list of map writes (the ordering rules that keep every packet correct are documented and
//!   unit-tested there), which `apply` carries out;
//! - `ids` allocates VIP and backend ids and adopts those of a previous agent.
//!
//! The shell owns the I/O: health checkers (`checkers`), next-hop resolution
//! (`next_hops`), the status snapshot (`publish`), reloads (`reload`), the routes that announce
//! servable VIPs ([`announce`]) and the event loop.

mod admin_commands;
pub mod announce;
mod apply;
mod checkers;
mod control_socket;
mod events;
mod ids;
mod neighbours;
pub mod plan;
mod publish;
mod reload;
mod response_time;
pub mod rings;
mod runtime;
mod second_chance;
pub mod slow_start;
pub mod state;
mod state_change;
mod stop;
pub mod target;
pub mod weights;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use aya::programs::XdpMode;
use lb_common::maps::{Settings, VipKey, MAX_BACKENDS, MAX_VIPS};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    time::Instant,
};

use self::{
    announce::Announcer,
    checkers::Checkers,
    ids::Ids,
    plan::{plan, plan_removal},
};
use crate::{
    config::{self, Config, FixedConfig, LiveConfig},
    datapath::{Datapath, FlowClock, Options, Origin, Upgraded},
    interface,
    metrics::{self, Metrics},
    records::{self, Records},
    status,
};

/// How stale the status snapshot's last-check fields may get: it is rewritten at once on a
/// state change, reload or start, and otherwise at most this often.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the rings of backends in slow start are rebuilt with their grown weight.
const RAMP_STEP: Duration = Duration::from_millis(500);
/// How often least-conn VIPs' backends' active flows are counted into `LOADS` (a walk of the
/// flow table, about 10 ms per million flows). In between, the datapath counts new flows and
/// closes itself; the count corrects what it cannot see (idle flows, evictions).
const LOAD_COUNT_PERIOD: Duration = Duration::from_millis(500);

/// Options of `lb run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The configuration file.
    pub config: PathBuf,
    /// Leave the datapath attached and pinned on SIGTERM/SIGINT.
    pub keep_datapath: bool,
    /// Recreate the pinned maps instead of adopting them (tracked flows re-hash).
    pub fresh_state: bool,
}

/// Where and how the balancer is attached.
#[derive(Clone, Copy, Debug)]
struct Attached {
    /// The interface it runs on: backends reached through it get `XDP_TX`.
    ifindex: u32,
    /// The mode the kernel runs it in.
    mode: XdpMode,
    /// Kernel id of the program.
    program_id: Option<u32>,
}

/// The running agent.
pub struct Agent {
    /// The configuration file.
    path: PathBuf,
    /// The configuration that only a restart changes, as the agent started with it.
    fixed: FixedConfig,
    /// That part as the file last said (a change is warned about once).
    file_fixed: FixedConfig,
    /// The configuration a reload applies, as last applied.
    live: LiveConfig,
    /// The loaded (or adopted) datapath.
    datapath: Datapath,
    /// The clock of its flow table, to write the `[conntrack]` timeouts in its ticks.
    flow_clock: FlowClock,
    /// Every VIP and backend, and what the agent knows of them.
    vips: state::AgentState,
    /// VIP and backend ids.
    ids: Ids,
    /// Starts health checkers.
    checkers: Checkers,
    /// Rings by shape, built once for the VIPs that share one.
    rings: rings::RingCache,
    /// Their results.
    events: mpsc::Receiver<checkers::Results>,
    /// Where the balancer runs.
    attached: Attached,
    /// The `/metrics` endpoint's state (`metrics` in the configuration), updated by hooks.
    metrics: Option<Arc<Metrics>>,
    /// The routes announcing servable VIPs (`[announce]` in the configuration).
    announcer: Option<Announcer>,
    /// A graceful stop is under way: every address is withdrawn, forwarding goes on.
    stopping: bool,
    /// The neighbour and link tables, as the kernel announces them.
    neighbour_snapshots: tokio::sync::watch::Receiver<Arc<crate::nexthop::Snapshot>>,
    /// Where checks through the VIP are routed (removed on stop).
    check_interface: Option<crate::check_paths::interface::CheckInterface>,
    /// What least-conn VIPs' backends are weighed by.
    loads: crate::datapath::Loads,
    /// Each tunnel VIP's previous ring, and the hops counted.
    second_chance: crate::datapath::SecondChanceMaps,
    /// The hops counted when the snapshot was last written.
    hops_published: u64,
    /// The last count of loads failed (logged once until one succeeds).
    loads_failed: bool,
    /// Leave the datapath attached (and the routes in place) on stop.
    keep_datapath: bool,
    /// Administrative states and availability history kept across restarts, as loaded at
    /// start (emptied by the first publication).
    records: Records,
    /// Writes the status snapshot and the records.
    publisher: publish::Publisher,
    /// Start-up is over: backends added from now on slow-start.
    started: bool,
    /// Requests from `lb backend ...`.
    control: mpsc::Receiver<control_socket::Pending>,
    /// The control socket (its file goes with it).
    _control_socket: Option<control_socket::ControlSocket>,
}

/// Sleeps until `deadline`; forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Makes the allocator give blocks of 128 KiB and more back to the kernel when they are freed.
/// A ring of 65,537 slots is 256 KiB, and the agent builds and drops thousands of them;
/// glibc raises its mmap threshold past such sizes after the first frees, and the heap then
/// kept every peak (hundreds of MB at 1000 VIPs with distinct backends).
fn release_large_blocks_at_once() {
    // SAFETY: mallopt takes two integers and changes only the allocator's thresholds; called
    // before the agent allocates its state.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    release_large_blocks_at_once();
    let config = config::load(&options.config)?;
    let mut agent = Agent::start(
        options.config.clone(),
        config,
        options.keep_datapath,
        options.fresh_state,
    )
    .await?;
    let result = agent.serve().await;
    agent.shutdown().await;
    result
}

impl Agent {
    /// Loads (or adopts) the datapath, checks every backend once, programs VIPs, backends and
    /// rings, attaches, and announces the servable VIPs. A previous agent's pinned state is
    /// adopted, migrated from an older layout, or (`fresh_state`) replaced. `keep_datapath`:
    /// leave the datapath and the routes in place on stop.
    pub async fn start(
        path: PathBuf,
        config: Config,
        keep_datapath: bool,
        fresh_state: bool,
    ) -> anyhow::Result<Self> {
        for warning in config.live.warnings() {
            tracing::warn!("{warning}");
        }
        let mut datapath = load_datapath(&config, fresh_state)?;
        let ifindex = interface::index(&config.fixed.interface)
            .context("set `interface` in the configuration")?;
        let adopting = *datapath.origin() != Origin::New;
        if let Origin::Upgrading(migration) = datapath.origin() {
            tracing::info!(
                from = migration.from,
                to = lb_common::layout::LAYOUT_VERSION,
                "migrating the pinned state from layout {} to {}: {}; every other map is kept \
                 (tracked flows and rings stay)",
                migration.from,
                lb_common::layout::LAYOUT_VERSION,
                migration.summary()
            );
        }
        let ids = if adopting {
            let vips = datapath.vips()?;
            let backends = datapath.backends()?;
            tracing::info!(
                vips = vips.len(),
                backends = backends.len(),
                "adopting pinned datapath state"
            );
            Ids::adopt(MAX_VIPS, MAX_BACKENDS, &vips, &backends)
        } else {
            Ids::new(MAX_VIPS, MAX_BACKENDS)
        };
        let neighbour_snapshots = neighbours::spawn_neighbour_reader();
        let (check_paths, check_interface) =
            set_up_vip_checks(&mut datapath, &config.live, neighbour_snapshots.clone()).await?;
        let (checkers, events) = Checkers::new(check_paths);
        let loads = datapath.take_loads()?;
        let second_chance = datapath.take_second_chance_maps()?;
        let metrics = metrics::start(&config).await; // metrics hook: serves /metrics if configured
        let (control_socket, control) =
            match control_socket::listen(&status::socket_for(&config.fixed.state_dir)) {
                Ok((socket, requests)) => (Some(socket), requests),
                Err(error) => {
                    tracing::error!(
                    "cannot listen on the control socket {}: {error}; `lb backend` will not work",
                    status::socket_for(&config.fixed.state_dir).display()
                );
                    (None, mpsc::channel(1).1)
                }
            };
        let mut agent = Self {
            path,
            fixed: config.fixed.clone(),
            file_fixed: config.fixed.clone(),
            live: config.live.clone(),
            datapath,
            flow_clock: FlowClock::read_or_assume(),
            vips: state::AgentState::default(),
            ids,
            checkers,
            rings: rings::RingCache::default(),
            events,
            attached: Attached {
                ifindex,
                mode: XdpMode::Driver,
                program_id: None,
            },
            metrics,
            announcer: None,
            stopping: false,
            keep_datapath,
            records: records::load(&config.fixed.state_dir),
            publisher: publish::Publisher::start(config.fixed.state_dir.clone()),
            started: false,
            control,
            _control_socket: control_socket,
            neighbour_snapshots,
            check_interface,
            loads,
            loads_failed: false,
            second_chance,
            hops_published: 0,
        };
        agent.write_settings()?;
        agent.add_vips(config.live.vips.clone()).await?;
        let backends: usize = agent.vips.values().map(|vip| vip.backends.len()).sum();
        tracing::info!(
            backends,
            probes = agent.checkers.probes(),
            "health: {backends} backends, {} distinct checks (backends checked alike share one)",
            agent.checkers.probes()
        );
        agent.remove_unclaimed()?;
        let attachment = agent
            .datapath
            .attach_pinned(&config.fixed.interface, config.fixed.xdp_mode.xdp_mode())?;
        agent.attached.mode = attachment.mode;
        if let Some(Upgraded { migration, flows }) = agent.datapath.finish_upgrade()? {
            tracing::info!(
                flows_tracked = flows.tracked,
                flows_without_room = flows.no_room,
                "pinned state migrated from layout {} to {}",
                migration.from,
                lb_common::layout::LAYOUT_VERSION
            );
        }
        agent.attached.program_id = agent.datapath.program_id().ok();
        agent.started = true;
        agent.reconcile_announcements().await;
        agent.publish();
        // Once this line is logged, `lb status` shows the running agent.
        agent.publisher.wait();
        return_free_memory();
        tracing::info!(
            interface = %config.fixed.interface,
            mode = ?attachment.mode,
            adopted = attachment.adopted,
            vips = agent.vips.len(),
            state_dir = %config.fixed.state_dir.display(),
            "datapath attached{}",
            if attachment.adopted { " (adopted the running datapath: conntrack and rings kept)" } else { "" }
        );
        Ok(agent)
    }

    /// Removes what a previous agent left that the configuration no longer has: its VIPs (out
    /// of `VIPS`, backends cleared) and backend entries of VIPs that are gone; frees their ids.
    fn remove_unclaimed(&mut self) -> anyhow::Result<()> {
        let (vips, orphans) = self.ids.unclaimed();
        for (key, mut written) in vips {
            let writes = plan_removal(key, &written);
            apply::apply(&mut self.datapath, &mut written, writes)?;
        }
        for id in orphans {
            self.datapath
                .set_backend(id, &lb_common::maps::Backend::default())?;
        }
        self.ids.release_unclaimed();
        Ok(())
    }

    /// Writes the settings: the interface's MAC (only frames addressed to it are balanced),
    /// the tunnel source addresses: the configured ones, else the interface's (its first IPv4
    /// address and its first IPv6 address that is not link-local, if any), and the
    /// `[conntrack]` timeouts in the flow table's ticks.
    fn write_settings(&mut self) -> anyhow::Result<()> {
        let mut settings = Settings {
            local_mac: interface::mac(&self.fixed.interface)?.unwrap_or_default(),
            idle_timeouts: self.live.conntrack.idle_timeouts(&self.flow_clock),
            ..Settings::default()
        };
        let mut sources = self.live.tunnel_source.clone();
        if sources.is_empty() {
            sources = interface::addresses(&self.fixed.interface)?;
        }
        for source in sources.iter().rev() {
            match source {
                IpAddr::V4(v4) => settings.tunnel_source_v4 = v4.octets(),
                IpAddr::V6(v6)
                    if !v6.is_unicast_link_local() || settings.tunnel_source_v6 == [0; 16] =>
                {
                    settings.tunnel_source_v6 = v6.octets()
                }
                IpAddr::V6(_) => {}
            }
        }
        self.datapath.set_settings(&settings)?;
        Ok(())
    }

    /// Brings the datapath's entries of one VIP in line with what the agent knows of its
    /// backends: target, plan, apply.
    fn sync_vip(&mut self, key: &VipKey) -> anyhow::Result<()> {
        self.sync_vips(&[*key])
            .pop()
            .map_or(Ok(()), |(_, result)| result)
    }

    /// Programs the VIPs `keys` as they are now: their backends' next hops resolved, then
    /// [`Agent::sync_vips`].
    async fn program(&mut self, keys: &[VipKey]) -> Vec<(VipKey, anyhow::Result<()>)> {
        self.resolve_next_hops(keys).await;
        self.sync_vips(keys)
    }

    /// [`Self::sync_vip`] for many VIPs, their rings swapped a group at a time (see
    /// [`apply::group_size`]): a result per VIP still in the configuration.
    fn sync_vips(&mut self, keys: &[VipKey]) -> Vec<(VipKey, anyhow::Result<()>)> {
        let table_size = self.live.table_size;
        let mut results = Vec::with_capacity(keys.len());
        for group in keys.chunks(apply::group_size(table_size as usize)) {
            let wanted: std::collections::BTreeSet<&VipKey> = group.iter().collect();
            let now = Instant::now();
            let mut facts_of = std::collections::BTreeMap::new();
            let mut shapes = Vec::new();
            for (key, vip) in self.vips.iter().filter(|(key, _)| wanted.contains(key)) {
                let facts = vip.backend_facts(now);
                shapes.push(target::ring_shape(&vip.facts(table_size), &facts));
                facts_of.insert(*key, facts);
            }
            // Their rings are built side by side first (thousands, at start-up).
            self.rings.prepare(shapes);
            let mut synced = Vec::new();
            let mut writes = Vec::new();
            // Logged once the rings hold what they say.
            let mut held_changes = Vec::new();
            for (key, vip) in self.vips.iter_mut().filter(|(key, _)| wanted.contains(key)) {
                let facts = facts_of.remove(key).unwrap_or_default();
                let held = target::held_by_own_address(&facts).len();
                if held != std::mem::replace(&mut vip.held, held) {
                    held_changes.push((vip.config.name.clone(), held));
                }
                match target::vip_target(&vip.facts(table_size), &facts, &mut self.rings) {
                    Ok((target, shared)) => {
                        writes.push(apply::VipWrites {
                            writes: plan(&vip.written, &target, self.attached.ifindex),
                            written: &mut vip.written,
                        });
                        synced.push((*key, facts, target, shared));
                    }
                    Err(error) => results.push((*key, Err(error))),
                }
            }
            let applied = apply::apply_all(&mut self.datapath, writes);
            for (name, held) in held_changes {
                log_held(&name, held);
            }
            for ((key, facts, target, shared), applied) in synced.into_iter().zip(applied) {
                let result = self.synced(&key, &facts, &target, shared, applied);
                results.push((key, result));
            }
        }
        results
    }

    /// After VIP `key`'s writes: keeps what its new ring is, frees the ids of backends
    /// cleared and tells the metrics.
    fn synced(
        &mut self,
        key: &VipKey,
        facts: &[target::BackendFacts],
        target: &plan::VipTarget,
        shared: Arc<rings::SharedRing>,
        applied: Result<apply::Applied, crate::datapath::DatapathError>,
    ) -> anyhow::Result<()> {
        let Some(vip) = self.vips.get_mut(key) else {
            return Ok(());
        };
        let applied = match applied {
            Ok(applied) => applied,
            Err(error) => {
                // What its ring is now is unknown.
                vip.ring = None;
                return Err(error)
                    .with_context(|| format!("updating the datapath for vip {}", vip.config.name));
            }
        };
        if applied.rings > 0 {
            vip.ring = applied
                .ring_map_id
                .map(|map_id| runtime::SwappedRing::of(map_id, &shared));
            let old = vip.current.replace(shared.shape().clone());
            let previous = match (vip.config.forward, &old) {
                (lb_common::maps::ForwardMode::Tunnel, Some(old)) => {
                    second_chance::PreviousRing::after_change(
                        vip.previous.as_ref(),
                        old,
                        shared.shape(),
                        vip.config.second_chance,
                        SystemTime::now(),
                    )
                }
                _ => None,
            };
            let continued = previous.as_ref().is_some_and(|p| {
                p.chain.len() > 2
                    && vip.previous.as_ref().and_then(|kept| kept.chain.first()) == p.chain.first()
            });
            // The ring before the change, from the cache (built again if it left it).
            let old_ring = match (&previous, old) {
                (Some(_), Some(old)) => match self.rings.ring(old) {
                    Ok(ring) => Some(ring),
                    Err(error) => {
                        tracing::error!("vip {}: second chance: {error}", vip.config.name);
                        None
                    }
                },
                _ => None,
            };
            let merged = old_ring.map(|old| {
                let prior = if continued {
                    self.second_chance.slots(vip.id).ok().flatten()
                } else {
                    None
                };
                let ids = backend_ids(vip);
                second_chance::merge(prior.as_deref(), &old.ids(&ids), &shared.ids(&ids))
            });
            update_previous_ring(&mut self.second_chance, vip, previous, merged);
        }
        for id in &applied.cleared {
            self.ids.release_backend(*id);
        }
        let vip = &self.vips[key];
        if let Some(m) = &self.metrics {
            if applied.rings > 0 {
                m.ring_rebuilt(&vip.config.name);
            }
            // Applied: the ring in the datapath is the target's.
            m.vip_synced(
                vip.id,
                &vip.config.name,
                shared.fingerprint(),
                facts
                    .iter()
                    .map(|b| (b.id, b.address, target.backends[&b.id].state())),
            );
        } // metrics hook
        Ok(())
    }

    /// [`Self::sync_vip`], logging a failure (the next change retries).
    fn sync_vip_logged(&mut self, key: &VipKey) -> Option<SystemTime> {
        self.sync_vips_logged(&[*key]).pop().flatten()
    }

    /// [`Self::sync_vips`], logging failures (the next change retries): for each VIP in
    /// order, when its datapath entries were updated.
    fn sync_vips_logged(&mut self, keys: &[VipKey]) -> Vec<Option<SystemTime>> {
        let results: std::collections::HashMap<VipKey, anyhow::Result<()>> =
            self.sync_vips(keys).into_iter().collect();
        let now = SystemTime::now();
        keys.iter()
            .map(|key| match results.get(key) {
                Some(Ok(())) => Some(now),
                Some(Err(error)) => {
                    tracing::error!("{error:#}");
                    None
                }
                None => None,
            })
            .collect()
    }

    /// Handles events until SIGINT or SIGTERM; without `--keep-datapath` and with
    /// `[announce]`, a first signal withdraws every address and keeps forwarding for
    /// `announce.drain` (events still handled), and a second one ends the drain at once.
    async fn serve(&mut self) -> anyhow::Result<()> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut changes = crate::watch::watch_file(&self.path)?;
        let mut neighbour_snapshots = self.neighbour_snapshots.clone();
        // Check results that change no state reach the snapshot at most once per interval:
        // rewriting it for every check made an agent with 1000 backends spend its one thread on
        // JSON and fall behind its health events (found by `bench-swap`).
        let mut publish_tick = tokio::time::interval(PUBLISH_INTERVAL);
        publish_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unpublished = false;
        let mut drained_at: Option<Instant> = None;
        let mut ramp_tick = tokio::time::interval(RAMP_STEP);
        ramp_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut response_tick = tokio::time::interval(response_time::PERIOD);
        response_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut window_tick = tokio::time::interval(Duration::from_secs(1));
        window_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut load_tick = tokio::time::interval(LOAD_COUNT_PERIOD);
        load_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                Some(pending) = self.control.recv() => {
                    let reply = self.administer(&pending.request, pending.peer).await;
                    let _ = pending.reply.send(reply);
                    false
                }
                // Whether a backend ramps is asked at each tick, not before every event: the
                // question walks every backend.
                _ = ramp_tick.tick() => {
                    if self.vips.is_ramping() {
                        self.step_ramps().await;
                    }
                    false
                }
                _ = response_tick.tick() => {
                    self.weigh_response_times();
                    false
                }
                _ = window_tick.tick() => {
                    let closed = self.close_second_chance_windows();
                    if closed || self.second_chance.hops_carried() != self.hops_published {
                        self.publish();
                    }
                    false
                }
                _ = load_tick.tick() => {
                    if self.vips.has_least_conn() {
                        self.count_loads();
                    }
                    false
                }
                Ok(()) = neighbour_snapshots.changed() => {
                    let snapshot = neighbour_snapshots.borrow_and_update().clone();
                    self.refresh_next_hops(&snapshot);
                    self.update_announcements().await;
                    false
                }
                Some(results) = self.events.recv() => {
                    unpublished = !self.on_health_events(results).await;
                    false
                }
                _ = publish_tick.tick(), if unpublished => {
                    self.publish();
                    unpublished = false;
                    false
                }
                _ = hangup.recv() => {
                    self.reload("SIGHUP").await;
                    false
                }
                Some(change) = changes.changed() => {
                    changes.settle(change).await;
                    self.reload("file changed").await;
                    false
                }
                () = sleep_until(drained_at) => return Ok(()),
                _ = terminate.recv() => true,
                _ = interrupt.recv() => true,
            };
            if stop {
                if self.stopping || !self.begin_graceful_stop().await {
                    return Ok(());
                }
                let drain = self.live.announce.map(|a| a.drain).unwrap_or_default();
                drained_at = Some(Instant::now() + drain);
            }
        }
    }

    /// Forgets the previous rings whose second-chance window closed; whether one did.
    fn close_second_chance_windows(&mut self) -> bool {
        let now = SystemTime::now();
        let mut closed = false;
        for vip in self.vips.values_mut() {
            // (A reload may have turned it off, or the VIP to DSR.)
            let off = vip.config.second_chance.is_zero()
                || vip.config.forward != lb_common::maps::ForwardMode::Tunnel;
            if vip.previous.as_ref().is_some_and(|p| p.until <= now || off) {
                update_previous_ring(&mut self.second_chance, vip, None, None);
                tracing::info!(
                    vip = %vip.config.name,
                    "vip {}: second-chance window closed: untracked packets carry no hop",
                    vip.config.name
                );
                closed = true;
            }
        }
        closed
    }

    /// Counts the active flows of least-conn VIPs' backends and writes them, with their
    /// weights, into `LOADS`.
    fn count_loads(&mut self) {
        let census = match self.datapath.flow_census(self.flow_clock.now()) {
            Ok(census) => census,
            Err(error) => {
                if !std::mem::replace(&mut self.loads_failed, true) {
                    tracing::error!(
                        "least-conn: cannot count active flows: {error}; new flows are weighed by \
                         the datapath's own counts until a count succeeds"
                    );
                }
                return;
            }
        };
        if std::mem::replace(&mut self.loads_failed, false) {
            tracing::info!("least-conn: active flows counted again");
        }
        for (id, load) in self.vips.least_conn_loads(&census.active, Instant::now()) {
            self.loads.set(id, load);
        }
    }

    /// The configuration file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A function naming VIP `vip`'s backends' ids by address (`NO_BACKEND`: not one of them).
pub(super) fn backend_ids(vip: &runtime::VipRuntime) -> impl Fn(IpAddr) -> u32 {
    let ids: std::collections::HashMap<IpAddr, u32> =
        vip.backends.iter().map(|b| (b.address(), b.id)).collect();
    move |address| {
        ids.get(&address)
            .copied()
            .unwrap_or(lb_common::maps::NO_BACKEND)
    }
}

/// Makes `previous` VIP `vip`'s previous ring, with `slots` (backend ids by slot) in the
/// datapath (`None`: it has none). A failure is logged: packets then carry no hop, as without
/// second chance.
pub(super) fn update_previous_ring(
    maps: &mut crate::datapath::SecondChanceMaps,
    vip: &mut runtime::VipRuntime,
    previous: Option<second_chance::PreviousRing>,
    slots: Option<Vec<u32>>,
) {
    let written = match &slots {
        Some(slots) => maps.set(vip.id, slots),
        None if vip.previous.is_some() => maps.clear(vip.id),
        None => Ok(()),
    };
    if let Err(error) = written {
        tracing::error!(
            vip = %vip.config.name,
            "vip {}: second chance: {error}; packets carry no hop",
            vip.config.name
        );
    }
    vip.previous = previous.filter(|_| slots.is_some());
}

/// Logs that VIP `vip` keeps `held` backends although none passes its checks through the VIP.
fn log_held(vip: &str, held: usize) {
    if held == 0 {
        tracing::info!(
            vip,
            "vip {vip}: no backend is kept on its own address's answers any more"
        );
    } else {
        tracing::error!(
            vip,
            held,
            "vip {vip}: no backend passes its checks through the vip, but {held} answer at their own \
             address: they keep serving it. Suspect this host's check path (a reverse-path filter \
             or firewall dropping answers from the vip; docs/DEPLOY.md, \"How checks reach the \
             backends\") before the backends"
        );
    }
}

/// Where checks through the VIP are routed, when the configuration has such checks: the
/// check paths and interface (`None`, `None` without such checks, so that an agent with none
/// leaves the namespace's check interface alone). Fails naming a backend that needs them.
pub(super) async fn set_up_vip_checks(
    datapath: &mut Datapath,
    live: &crate::config::LiveConfig,
    neighbours: tokio::sync::watch::Receiver<Arc<crate::nexthop::Snapshot>>,
) -> anyhow::Result<(
    Option<Arc<crate::check_paths::CheckPaths>>,
    Option<crate::check_paths::interface::CheckInterface>,
)> {
    let Some(backend) = live
        .vips
        .iter()
        .flat_map(|vip| &vip.backends)
        .find(|backend| backend.health.target == crate::config::CheckTarget::Vip)
    else {
        return Ok((None, None));
    };
    let (paths, interface) = crate::check_paths::set_up(datapath, neighbours)
        .await
        .with_context(|| {
            format!(
                "backend {} is checked through its vip (health.target = \"vip\", the default; \
                 \"backend\" checks backends' own addresses)",
                backend.address
            )
        })?;
    Ok((Some(paths), Some(interface)))
}

/// Loads (or adopts, or migrates, or with `fresh_state` replaces) the datapath pinned in
/// `config.fixed.state_dir`. Every error of loading names the state directory or the pin it
/// concerns, so the context does not repeat it.
fn load_datapath(config: &Config, fresh_state: bool) -> anyhow::Result<Datapath> {
    Datapath::load(&Options {
        conntrack_size: config.fixed.conntrack_size,
        pin_dir: Some(config.fixed.state_dir.clone()),
        fresh_state,
    })
    .context("loading the datapath")
}

/// Gives the memory the allocator holds free back to the kernel: start-up and a reload build
/// and drop rings, configurations and batches by the megabyte, and glibc keeps what was
/// freed (19 MB of 129 at 1000 VIPs x 16 distinct backends) for allocations that never come.
pub(crate) fn return_free_memory() {
    // SAFETY: malloc_trim only releases free pages of the allocator's heaps; it touches no
    // memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state directory that cannot be created (here: below a regular file; under a
    /// read-only /sys/fs/bpf, "Read-only file system") fails before any BPF call, and the
    /// agent's error names the directory once.
    #[test]
    fn a_state_directory_that_cannot_be_created_is_named_once() {
        let file = std::env::temp_dir().join(format!("lb-unit-not-a-dir-{}", std::process::id()));
        std::fs::write(&file, "").expect("write a file");
        let state_dir = file.join("lb");
        let text = format!(
            "interface = \"eth0\"\nstate_dir = \"{}\"\n\n[[vip]]\nname = \"web\"\n\
             address = \"10.0.0.100\"\nport = 80\n[[vip.backend]]\naddress = \"10.0.0.11\"\n",
            state_dir.display()
        );
        let config = config::parse(Path::new("lb.toml"), &text).expect("a valid configuration");
        let Err(error) = load_datapath(&config, false) else {
            panic!("loaded a datapath below a regular file");
        };
        std::fs::remove_file(&file).expect("remove the file");
        let rendered = format!("{error:#}");
        assert_eq!(
            rendered,
            format!(
                "loading the datapath: cannot create the state directory {}: Not a directory \
                 (os error 20)",
                state_dir.display()
            )
        );
        assert_eq!(
            rendered.matches(&state_dir.display().to_string()).count(),
            1,
            "{rendered}"
        );
    }
}
