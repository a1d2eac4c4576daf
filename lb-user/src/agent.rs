//! `lb run`: turns the configuration into map contents, watches backend health, rewrites a
//! VIP's ring when one of its backends fails, recovers, drains or is reconfigured, reloads the
//! configuration on SIGHUP or when the file changes, and hands the datapath over to the next
//! agent without dropping a packet.
//!
//! Ordering rules that keep every packet correct while maps change:
//! - a backend's entry is written before any ring points at it, and marked down only after the
//!   ring without it is in place (its tracked flows are then re-hashed);
//! - a VIP is inserted into `VIPS` only after its ring exists, and removed before its backends
//!   are released;
//! - rings are swapped whole (see `Datapath::set_ring`), and only when their content changes.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use lb_common::{
    maglev::{build_ring, MaglevBackend},
    maps::{Backend, BackendState, Family, Settings, Vip, VipKey, MAX_BACKENDS, MAX_VIPS},
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};

use crate::{
    config::{self, BackendConfig, Config, OnAllDown, VipConfig, XdpModeSetting},
    datapath::{Datapath, Options},
    health::{spawn_checker, CheckResult, Health, HealthEvent},
    metrics::{self, Metrics},
    nexthop::{self, NextHop},
    status,
};

/// How long to wait for a backend's MAC (ARP/ND) before treating it as down.
const NEXT_HOP_WAIT: Duration = Duration::from_secs(1);
/// How often next hops in use are re-checked against the kernel's neighbour table.
const NEXT_HOP_REFRESH: Duration = Duration::from_secs(1);

/// How stale the status snapshot's last-check fields may get: it is rewritten at once on a
/// state change, reload or start, and otherwise at most this often.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Options of `lb run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The configuration file.
    pub config: PathBuf,
    /// Leave the datapath attached and pinned on SIGTERM/SIGINT.
    pub keep_datapath: bool,
}

/// Identity of a checker run: the backend id and a token that changes whenever the checker is
/// restarted, so events of a stopped checker are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CheckerKey {
    backend: u32,
    token: u64,
}

struct BackendRuntime {
    id: u32,
    config: BackendConfig,
    health: Health,
    last: Option<CheckResult>,
    last_change_unix_ms: u64,
    next_hop: Option<NextHop>,
    token: u64,
    checker: JoinHandle<()>,
    /// State last written to `BACKENDS`.
    written: Option<Backend>,
}

struct VipRuntime {
    id: u32,
    config: VipConfig,
    backends: Vec<BackendRuntime>,
    /// Ring last written to `RINGS`.
    ring: Option<Vec<u32>>,
}

/// A backend's health change, logged once the datapath reflects it.
struct StateChange {
    vip: String,
    backend: IpAddr,
    transition: crate::health::Transition,
    /// When the health check that caused it was judged.
    decided: SystemTime,
    /// When the agent took the event from the checkers' queue.
    received: SystemTime,
}

impl StateChange {
    /// Logs the change. `datapath_updated`: when the writes of its ring and backend entries
    /// returned (`None` at start-up, before any VIP is programmed, or when the update failed);
    /// a ring swap returns only after an RCU grace period, so packets used the new ring a few
    /// milliseconds earlier. The timestamps are wall-clock microseconds, so another process on
    /// the host can compare them with what it sees the kernel do (`bench-swap` does).
    fn log(&self, datapath_updated: Option<SystemTime>) {
        let Self {
            vip,
            backend,
            transition,
            decided,
            received,
        } = self;
        let micros_between = |from: &SystemTime, to: &SystemTime| {
            to.duration_since(*from).map_or(0, |d| d.as_micros() as u64)
        };
        tracing::info!(
            %vip,
            %backend,
            from = ?transition.from,
            to = ?transition.to,
            decided_unix_us = unix_micros(*decided),
            queued_us = micros_between(decided, received),
            ring_swapped_unix_us = datapath_updated.map(unix_micros),
            swap_us = datapath_updated.map(|updated| micros_between(decided, &updated)),
            "backend {backend} of vip {vip}: {:?} -> {:?} ({})",
            transition.from,
            transition.to,
            transition.reason
        );
    }
}

/// Microseconds since the Unix epoch.
fn unix_micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The running agent.
pub struct Agent {
    path: PathBuf,
    config: Config,
    datapath: Datapath,
    vips: BTreeMap<VipKey, VipRuntime>,
    free_vip_ids: Vec<u32>,
    free_backend_ids: Vec<u32>,
    /// Ids a previous agent used, by (VIP key, backend address): reused on adoption.
    adopted_backend_ids: HashMap<(VipKey, IpAddr), u32>,
    adopted_vip_ids: HashMap<VipKey, u32>,
    events_tx: mpsc::Sender<HealthEvent<CheckerKey>>,
    events: mpsc::Receiver<HealthEvent<CheckerKey>>,
    next_token: u64,
    attach_ifindex: u32,
    xdp_mode: aya::programs::XdpMode,
    program_id: Option<u32>,
    /// The `/metrics` endpoint's state (`metrics` in the configuration), updated by hooks.
    metrics: Option<std::sync::Arc<Metrics>>,
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let config = config::load(&options.config)?;
    let mut agent = Agent::start(options.config.clone(), config).await?;
    let result = agent.serve().await;
    agent.shutdown(options.keep_datapath);
    result
}

/// The `BACKENDS` state a backend should have.
fn datapath_state(health: Health, next_hop: bool, weight: u32) -> BackendState {
    match (health, next_hop, weight) {
        (Health::Up, true, 0) => BackendState::Draining,
        (Health::Up, true, _) => BackendState::Up,
        _ => BackendState::Down,
    }
}

/// `VIPS` key of a configured VIP.
pub fn vip_key(vip: &VipConfig) -> VipKey {
    let (addr, family) = addr_bytes(vip.address);
    VipKey {
        addr,
        port: vip.port.to_be_bytes(),
        protocol: vip.protocol as u8,
        family,
    }
}

/// An address as the maps store it, with its family.
pub fn addr_bytes(address: IpAddr) -> ([u8; 16], u8) {
    let mut bytes = [0; 16];
    match address {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, Family::V4 as u8)
        }
        IpAddr::V6(v6) => (v6.octets(), Family::V6 as u8),
    }
}

/// The address stored in a map entry.
pub fn addr_from_bytes(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == Family::V4 as u8 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(*addr)
    }
}

/// The Maglev identity of a backend: its address, so a backend keeps its slots whatever id it
/// gets and whatever the order of the configuration.
fn identity(address: IpAddr) -> Vec<u8> {
    address.to_string().into_bytes()
}

/// The ring of a VIP for its current backend states (`NO_BACKEND` everywhere when empty).
fn desired_ring(vip: &VipRuntime, table_size: u32) -> anyhow::Result<Vec<u32>> {
    let up = |b: &&BackendRuntime| {
        datapath_state(b.health, b.next_hop.is_some(), b.config.weight) == BackendState::Up
    };
    let mut members: Vec<&BackendRuntime> = vip.backends.iter().filter(up).collect();
    if members.is_empty() && vip.config.on_all_down == OnAllDown::FailOpen {
        members = vip
            .backends
            .iter()
            .filter(|b| b.config.weight > 0 && b.next_hop.is_some())
            .collect();
    }
    let identities: Vec<Vec<u8>> = members.iter().map(|b| identity(b.config.address)).collect();
    let backends: Vec<MaglevBackend<'_>> = members
        .iter()
        .zip(&identities)
        .map(|(b, identity)| MaglevBackend {
            id: b.id,
            identity,
            weight: b.config.weight,
        })
        .collect();
    build_ring(&backends, table_size)
        .with_context(|| format!("building the ring of vip {}", vip.config.name))
}

impl Agent {
    /// Loads (or adopts) the datapath, checks every backend once, programs VIPs, backends and
    /// rings, and attaches.
    pub async fn start(path: PathBuf, config: Config) -> anyhow::Result<Self> {
        let adopting = Datapath::is_pinned(&config.state_dir);
        let datapath = Datapath::load(&Options {
            conntrack_size: config.conntrack_size,
            pin_dir: Some(config.state_dir.clone()),
        })
        .with_context(|| {
            format!(
                "loading the datapath (state directory {})",
                config.state_dir.display()
            )
        })?;
        let attach_ifindex = interface_index(&config.interface)?;
        let (events_tx, events) = mpsc::channel(1024);
        let metrics = metrics::start(&config).await; // metrics hook: serves /metrics if configured
        let mut agent = Self {
            path,
            config: config.clone(),
            datapath,
            vips: BTreeMap::new(),
            free_vip_ids: (0..MAX_VIPS).rev().collect(),
            free_backend_ids: (0..MAX_BACKENDS).rev().collect(),
            adopted_backend_ids: HashMap::new(),
            adopted_vip_ids: HashMap::new(),
            events_tx,
            events,
            next_token: 0,
            attach_ifindex,
            xdp_mode: aya::programs::XdpMode::Driver,
            program_id: None,
            metrics,
        };
        let stale_vips = if adopting {
            agent.recover_ids()?
        } else {
            Vec::new()
        };
        agent.write_settings().await?;
        let added: Vec<VipConfig> = config.vips.clone();
        agent.add_vips(added).await?;
        for key in stale_vips {
            if !agent.vips.contains_key(&key) {
                agent.datapath.remove_vip(&key)?;
            }
        }
        agent.release_unclaimed_backends()?;
        let mode = match config.xdp_mode {
            XdpModeSetting::Auto => None,
            XdpModeSetting::Native => Some(aya::programs::XdpMode::Driver),
            XdpModeSetting::Generic => Some(aya::programs::XdpMode::Skb),
        };
        let attachment = agent.datapath.attach_pinned(&config.interface, mode)?;
        agent.xdp_mode = attachment.mode;
        agent.program_id = agent.datapath.program_id().ok();
        tracing::info!(
            interface = %config.interface,
            mode = ?attachment.mode,
            adopted = attachment.adopted,
            vips = agent.vips.len(),
            state_dir = %config.state_dir.display(),
            "datapath attached{}",
            if attachment.adopted { " (adopted the running datapath: conntrack and rings kept)" } else { "" }
        );
        agent.publish();
        Ok(agent)
    }

    /// Writes the status snapshot `lb status` reads.
    fn publish(&self) {
        let snapshot = status::Snapshot {
            pid: std::process::id(),
            updated_unix_ms: status::now_unix_ms(),
            config: self.path.clone(),
            interface: self.config.interface.clone(),
            xdp_mode: if self.xdp_mode == aya::programs::XdpMode::Skb {
                "generic"
            } else {
                "native"
            }
            .to_owned(),
            program_id: self.program_id,
            vips: self
                .vips
                .values()
                .map(|vip| status::VipStatus {
                    name: vip.config.name.clone(),
                    id: vip.id,
                    address: vip.config.address.to_string(),
                    port: vip.config.port,
                    protocol: if vip.config.protocol == lb_common::maps::Protocol::Udp {
                        "udp"
                    } else {
                        "tcp"
                    }
                    .to_owned(),
                    forward: if vip.config.forward == lb_common::maps::ForwardMode::Tunnel {
                        "tunnel"
                    } else {
                        "dsr"
                    }
                    .to_owned(),
                    backends: vip
                        .backends
                        .iter()
                        .map(|b| status::BackendStatus {
                            address: b.config.address.to_string(),
                            id: b.id,
                            weight: b.config.weight,
                            state: match (
                                b.health,
                                datapath_state(b.health, b.next_hop.is_some(), b.config.weight),
                            ) {
                                (Health::Unknown, _) => "unknown",
                                (_, BackendState::Up) => "up",
                                (_, BackendState::Draining) => "draining",
                                _ => "down",
                            }
                            .to_owned(),
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
        };
        if let Err(error) = status::write(&self.config.state_dir, &snapshot) {
            tracing::warn!(
                "cannot write the status snapshot {}: {error}",
                status::path_for(&self.config.state_dir).display()
            );
        }
    }

    /// Reads the ids a previous agent left in the pinned maps, so unchanged VIPs and backends
    /// keep theirs (and their tracked flows). Returns VIP keys found in the maps.
    fn recover_ids(&mut self) -> anyhow::Result<Vec<VipKey>> {
        let vips = self.datapath.vips()?;
        let by_id: HashMap<u32, VipKey> = vips.iter().map(|(key, vip)| (vip.id, *key)).collect();
        for (key, vip) in &vips {
            self.adopted_vip_ids.insert(*key, vip.id);
        }
        for (id, backend) in self.datapath.backends()? {
            if let Some(key) = by_id.get(&backend.vip) {
                self.adopted_backend_ids
                    .insert((*key, addr_from_bytes(&backend.addr, backend.family)), id);
            }
        }
        self.free_vip_ids.retain(|id| !by_id.contains_key(id));
        let taken: Vec<u32> = self.adopted_backend_ids.values().copied().collect();
        self.free_backend_ids.retain(|id| !taken.contains(id));
        tracing::info!(
            vips = vips.len(),
            backends = taken.len(),
            "adopting pinned datapath state"
        );
        Ok(vips.into_iter().map(|(key, _)| key).collect())
    }

    /// Marks backend entries of a previous agent that the configuration no longer has as unused.
    fn release_unclaimed_backends(&mut self) -> anyhow::Result<()> {
        let leftovers: Vec<u32> = self.adopted_backend_ids.drain().map(|(_, id)| id).collect();
        for id in leftovers {
            self.datapath.set_backend(id, &Backend::default())?;
            self.free_backend_ids.push(id);
        }
        for (_, id) in self.adopted_vip_ids.drain() {
            self.free_vip_ids.push(id);
        }
        Ok(())
    }

    async fn write_settings(&mut self) -> anyhow::Result<()> {
        let mut settings = Settings::default();
        let mut sources = self.config.tunnel_source.clone();
        if sources.is_empty() {
            sources = crate::decap::interface_addresses(&self.config.interface)?;
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

    fn allocate_vip_id(&mut self, key: &VipKey) -> anyhow::Result<u32> {
        if let Some(id) = self.adopted_vip_ids.remove(key) {
            return Ok(id);
        }
        self.free_vip_ids.pop().context("no free VIP id")
    }

    fn allocate_backend_id(&mut self, key: &VipKey, address: IpAddr) -> anyhow::Result<u32> {
        if let Some(id) = self.adopted_backend_ids.remove(&(*key, address)) {
            return Ok(id);
        }
        self.free_backend_ids.pop().context("no free backend id")
    }

    fn start_backend(
        &mut self,
        key: &VipKey,
        config: BackendConfig,
    ) -> anyhow::Result<BackendRuntime> {
        let id = self.allocate_backend_id(key, config.address)?;
        let (token, checker) = self.spawn_checker(id, &config);
        Ok(BackendRuntime {
            id,
            config,
            health: Health::Unknown,
            last: None,
            last_change_unix_ms: status::now_unix_ms(),
            next_hop: None,
            token,
            checker,
            written: None,
        })
    }

    fn spawn_checker(&mut self, id: u32, config: &BackendConfig) -> (u64, JoinHandle<()>) {
        self.next_token += 1;
        let token = self.next_token;
        let health = &config.health;
        let checker = spawn_checker(
            CheckerKey { backend: id, token },
            SocketAddr::new(config.address, health.port),
            health.interval,
            health.timeout,
            health.rise,
            health.fall,
            self.events_tx.clone(),
        );
        (token, checker)
    }

    /// Adds VIPs: starts their checks, waits for every backend's first result, resolves next
    /// hops, writes backends and rings, then inserts the VIPs.
    async fn add_vips(&mut self, vips: Vec<VipConfig>) -> anyhow::Result<()> {
        let mut keys = Vec::new();
        for vip in vips {
            let key = vip_key(&vip);
            let id = self.allocate_vip_id(&key)?;
            let mut backends = Vec::new();
            for backend in &vip.backends {
                backends.push(self.start_backend(&key, backend.clone())?);
            }
            self.vips.insert(
                key,
                VipRuntime {
                    id,
                    config: vip,
                    backends,
                    ring: None,
                },
            );
            keys.push(key);
        }
        self.first_round(&keys).await;
        for key in &keys {
            self.resolve_next_hops(key).await;
            self.sync_vip(key)?;
            let vip = &self.vips[key];
            let entry = Vip {
                id: vip.id,
                ring_size: self.config.table_size,
                forward: vip.config.forward as u8,
                _pad: [0; 3],
            };
            self.datapath.set_vip(key, &entry)?;
        }
        Ok(())
    }

    /// Waits until every backend of `keys` has had its first check (bounded by the largest
    /// timeout plus a margin), applying results as they come.
    async fn first_round(&mut self, keys: &[VipKey]) {
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

    /// Stores a check result; on a health change returns the VIP and the log line to print
    /// once the datapath reflects it.
    fn record(&mut self, event: HealthEvent<CheckerKey>) -> Option<(VipKey, StateChange)> {
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
                .find(|b| b.id == key.backend && b.token == key.token)
            else {
                continue;
            };
            if let Some(m) = &self.metrics {
                m.health_checked(&vip.config.name, backend.config.address, result.latency)
            } // metrics hook
            backend.last = Some(result);
            if let Some(transition) = transition {
                backend.health = health;
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
            backend.health = health;
            return None;
        }
        None
    }

    /// Resolves the next hop of every backend of a VIP that is up and has none yet (in
    /// parallel). Unresolvable backends stay out of the ring, with a log line.
    async fn resolve_next_hops(&mut self, key: &VipKey) {
        let Some(vip) = self.vips.get(key) else {
            return;
        };
        let on_link = vip.config.forward == lb_common::maps::ForwardMode::Dsr;
        let fail_open = vip.config.on_all_down == OnAllDown::FailOpen;
        let wanted: Vec<(u32, IpAddr)> = vip
            .backends
            .iter()
            .filter(|b| b.next_hop.is_none() && (b.health == Health::Up || fail_open))
            .map(|b| (b.id, b.config.address))
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (id, address) in wanted {
            tasks.spawn(async move {
                (
                    id,
                    address,
                    nexthop::resolve(address, on_link, NEXT_HOP_WAIT).await,
                )
            });
        }
        while let Some(Ok((id, address, result))) = tasks.join_next().await {
            let Some(vip) = self.vips.get_mut(key) else {
                return;
            };
            let Some(backend) = vip.backends.iter_mut().find(|b| b.id == id) else {
                continue;
            };
            match result {
                Ok(hop) => backend.next_hop = Some(hop),
                Err(error) => tracing::warn!(
                    vip = %vip.config.name,
                    backend = %address,
                    "backend {address} of vip {} treated as down: next hop unresolved: {error}",
                    vip.config.name
                ),
            }
        }
    }

    /// Follows changes of the next hops in use (a backend's new MAC, the interface's MTU), as
    /// `snapshot` shows them, and rewrites the affected `BACKENDS` entries.
    fn refresh_next_hops(&mut self, snapshot: &nexthop::Snapshot) {
        let mut changed = Vec::new();
        for (key, vip) in &mut self.vips {
            let mut vip_changed = false;
            for backend in &mut vip.backends {
                let Some(hop) = backend.next_hop else {
                    continue;
                };
                let fresh = snapshot.refresh(backend.config.address, &hop);
                if fresh != hop {
                    let address = backend.config.address;
                    tracing::info!(
                        vip = %vip.config.name,
                        backend = %address,
                        "backend {address} of vip {}: next hop changed: MAC {} -> {}, MTU {} -> {}",
                        vip.config.name,
                        nexthop::format_mac(&hop.dst_mac),
                        nexthop::format_mac(&fresh.dst_mac),
                        hop.mtu,
                        fresh.mtu
                    );
                    backend.next_hop = Some(fresh);
                    vip_changed = true;
                }
            }
            if vip_changed {
                changed.push(*key);
            }
        }
        for key in changed {
            if let Err(error) = self.sync_vip(&key) {
                tracing::error!("updating the datapath failed: {error:#}");
            }
        }
    }

    /// Brings `BACKENDS` and the ring of one VIP in line with its backends' states, in the
    /// order described in the module docs.
    fn sync_vip(&mut self, key: &VipKey) -> anyhow::Result<()> {
        let table_size = self.config.table_size;
        let attach_ifindex = self.attach_ifindex;
        let Some(vip) = self.vips.get_mut(key) else {
            return Ok(());
        };
        let ring = desired_ring(vip, table_size)?;
        let entries: Vec<(usize, Backend)> = vip
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let state = datapath_state(b.health, b.next_hop.is_some(), b.config.weight);
                let (addr, family) = addr_bytes(b.config.address);
                let hop = b.next_hop.unwrap_or(NextHop {
                    ifindex: 0,
                    mtu: 0,
                    src_mac: [0; 6],
                    dst_mac: [0; 6],
                    gateway: None,
                });
                let entry = Backend {
                    addr,
                    family,
                    state: state as u8,
                    _pad: [0; 2],
                    vip: vip.id,
                    ifindex: hop.ifindex,
                    mtu: hop.mtu,
                    dst_mac: hop.dst_mac,
                    src_mac: hop.src_mac,
                };
                (i, entry)
            })
            .collect();
        let usable = |e: &Backend| {
            e.state == BackendState::Up as u8 || e.state == BackendState::Draining as u8
        };
        // Entries that become usable (or change next hop) first, so the ring never points at a
        // stale entry...
        for (i, entry) in entries.iter().filter(|(_, e)| usable(e)) {
            let backend = &mut vip.backends[*i];
            if backend.written.as_ref() != Some(entry) {
                if entry.ifindex != attach_ifindex {
                    self.datapath.add_tx_port(entry.ifindex)?;
                }
                self.datapath.set_backend(backend.id, entry)?;
                backend.written = Some(*entry);
            }
        }
        // ...then the ring...
        if vip.ring.as_ref() != Some(&ring) {
            self.datapath.set_ring(vip.id, &ring)?;
            if let Some(m) = &self.metrics {
                m.ring_rebuilt(&vip.config.name)
            } // metrics hook
            vip.ring = Some(ring);
        }
        // ...then entries that stop being usable: their tracked flows re-hash into the new ring.
        for (i, entry) in entries.iter().filter(|(_, e)| !usable(e)) {
            let backend = &mut vip.backends[*i];
            if backend.written.as_ref() != Some(entry) {
                self.datapath.set_backend(backend.id, entry)?;
                backend.written = Some(*entry);
            }
        }
        if let Some(m) = &self.metrics {
            m.vip_synced(
                vip.id,
                &vip.config.name,
                vip.backends
                    .iter()
                    .zip(&entries)
                    .map(|(b, (_, e))| (b.id, b.config.address, e.state)),
            )
        } // metrics hook
        Ok(())
    }

    /// Handles events until SIGINT or SIGTERM.
    async fn serve(&mut self) -> anyhow::Result<()> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut changes = crate::watch::watch_file(&self.path)?;
        // The neighbour tables are read by their own task (two `ip` processes), so health events
        // never wait for them; applying a snapshot is in-memory work.
        let mut neighbour_snapshots = spawn_neighbour_reader();
        // Check results that change no state reach the snapshot at most once per interval:
        // rewriting it for every check made an agent with 1000 backends spend its one thread on
        // JSON and fall behind its health events (found by `bench-swap`).
        let mut publish_tick = tokio::time::interval(PUBLISH_INTERVAL);
        publish_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unpublished = false;
        loop {
            tokio::select! {
                Some(snapshot) = neighbour_snapshots.recv() => self.refresh_next_hops(&snapshot),
                Some(event) = self.events.recv() => {
                    let Some((key, change)) = self.record(event) else {
                        unpublished = true;
                        continue;
                    };
                    self.resolve_next_hops(&key).await;
                    let updated = match self.sync_vip(&key) {
                        Ok(()) => Some(SystemTime::now()),
                        Err(error) => {
                            tracing::error!("updating the datapath failed: {error:#}");
                            None
                        }
                    };
                    // Logged once the ring reflects it: from this line on, new flows obey it.
                    change.log(updated);
                    self.publish();
                    unpublished = false;
                }
                _ = publish_tick.tick(), if unpublished => {
                    self.publish();
                    unpublished = false;
                }
                _ = hangup.recv() => self.reload("SIGHUP").await,
                Some(()) = changes.changed() => {
                    changes.settle().await;
                    self.reload("file changed").await;
                }
                _ = terminate.recv() => return Ok(()),
                _ = interrupt.recv() => return Ok(()),
            }
        }
    }

    /// Re-reads the configuration; an invalid file is logged and changes nothing.
    pub async fn reload(&mut self, why: &str) {
        let config = match config::load(&self.path) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(
                    "reload ({why}) rejected, still running the previous configuration: {error}"
                );
                if let Some(m) = &self.metrics {
                    m.reloaded(false, &self.config)
                } // metrics hook
                return;
            }
        };
        if config == self.config {
            tracing::info!("reload ({why}): configuration unchanged");
            if let Some(m) = &self.metrics {
                m.reloaded(true, &self.config)
            } // metrics hook
            return;
        }
        let applied = self.apply(config).await;
        if let Some(m) = &self.metrics {
            m.reloaded(applied.is_ok(), &self.config)
        } // metrics hook
        match applied {
            Ok(summary) => tracing::info!("reloaded ({why}): {summary}"),
            Err(error) => tracing::error!("reload ({why}) failed part-way: {error:#}"),
        }
        self.publish();
    }

    /// Applies a new, valid configuration as a diff against the running one.
    async fn apply(&mut self, new: Config) -> anyhow::Result<String> {
        for (what, changed) in [
            ("interface", new.interface != self.config.interface),
            ("xdp_mode", new.xdp_mode != self.config.xdp_mode),
            ("state_dir", new.state_dir != self.config.state_dir),
            (
                "conntrack_size",
                new.conntrack_size != self.config.conntrack_size,
            ),
        ] {
            if changed {
                tracing::warn!("{what} changed: takes effect only after a restart of lb run");
            }
        }
        let table_size_changed = new.table_size != self.config.table_size;
        let tunnel_changed = new.tunnel_source != self.config.tunnel_source;
        let metrics = new.metrics;
        let old_table_size = self.config.table_size;
        self.config.table_size = new.table_size;
        self.config.tunnel_source = new.tunnel_source.clone();
        self.config.metrics = metrics;
        if tunnel_changed {
            self.write_settings().await?;
        }

        let new_vips: BTreeMap<VipKey, VipConfig> =
            new.vips.iter().map(|v| (vip_key(v), v.clone())).collect();
        let removed: Vec<VipKey> = self
            .vips
            .keys()
            .filter(|k| !new_vips.contains_key(*k))
            .copied()
            .collect();
        for key in &removed {
            self.remove_vip(key)?;
        }
        let added: Vec<VipConfig> = new_vips
            .iter()
            .filter(|(k, _)| !self.vips.contains_key(*k))
            .map(|(_, v)| v.clone())
            .collect();
        let mut changed = 0;
        for (key, config) in &new_vips {
            let Some(vip) = self.vips.get(key) else {
                continue;
            };
            if vip.config == *config && !table_size_changed {
                continue;
            }
            changed += 1;
            self.change_vip(key, config.clone(), old_table_size)?;
        }
        let added_count = added.len();
        self.add_vips(added).await?;
        self.config.vips = new.vips;
        Ok(format!(
            "{added_count} VIPs added, {} removed, {changed} changed",
            removed.len()
        ))
    }

    fn remove_vip(&mut self, key: &VipKey) -> anyhow::Result<()> {
        self.datapath.remove_vip(key)?;
        if let Some(vip) = self.vips.remove(key) {
            for backend in vip.backends {
                backend.checker.abort();
                self.datapath.set_backend(backend.id, &Backend::default())?;
                self.free_backend_ids.push(backend.id);
            }
            self.free_vip_ids.push(vip.id);
            tracing::info!(vip = %vip.config.name, "vip {} removed", vip.config.name);
        }
        Ok(())
    }

    /// Applies a changed VIP: backends added, removed, reweighted or with new health settings,
    /// and VIP attributes. New backends join the ring after their first successful check.
    fn change_vip(
        &mut self,
        key: &VipKey,
        config: VipConfig,
        old_table_size: u32,
    ) -> anyhow::Result<()> {
        let Some(mut vip) = self.vips.remove(key) else {
            return Ok(());
        };
        let mut kept = Vec::new();
        let mut released = Vec::new();
        for mut backend in std::mem::take(&mut vip.backends) {
            match config
                .backends
                .iter()
                .find(|b| b.address == backend.config.address)
            {
                Some(new) => {
                    if new.health != backend.config.health {
                        backend.checker.abort();
                        let (token, checker) = self.spawn_checker(backend.id, new);
                        backend.token = token;
                        backend.checker = checker;
                    }
                    backend.config = new.clone();
                    kept.push(backend);
                }
                None => released.push(backend),
            }
        }
        for new in &config.backends {
            if !kept.iter().any(|b| b.config.address == new.address) {
                kept.push(self.start_backend(key, new.clone())?);
            }
        }
        vip.backends = kept;
        vip.config = config;
        // Released backends leave the ring first, then their entries are cleared.
        for backend in &released {
            backend.checker.abort();
        }
        let table_size = self.config.table_size;
        let grows = table_size > old_table_size;
        let entry = Vip {
            id: vip.id,
            ring_size: table_size,
            forward: vip.config.forward as u8,
            _pad: [0; 3],
        };
        self.vips.insert(*key, vip);
        // A smaller ring is indexed with its own size before it is swapped in, a larger one
        // after: a packet never indexes past the end of the ring it holds.
        if !grows {
            self.datapath.set_vip(key, &entry)?;
        }
        self.sync_vip(key)?;
        if grows {
            self.datapath.set_vip(key, &entry)?;
        }
        for backend in released {
            self.datapath.set_backend(backend.id, &Backend::default())?;
            self.free_backend_ids.push(backend.id);
        }
        Ok(())
    }

    /// Stops health checks; detaches and unpins unless `keep_datapath`.
    pub fn shutdown(self, keep_datapath: bool) {
        for vip in self.vips.values() {
            for backend in &vip.backends {
                backend.checker.abort();
            }
        }
        if keep_datapath {
            tracing::info!(state_dir = %self.config.state_dir.display(), "datapath left attached (--keep-datapath): the next lb run adopts it");
            return;
        }
        status::remove(&self.config.state_dir);
        match self.datapath.detach_and_unpin() {
            Ok(()) => tracing::info!("datapath detached"),
            Err(error) => tracing::error!("detaching the datapath failed: {error}"),
        }
    }

    /// The configuration file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Index of `interface` in this network namespace.
/// Reads the neighbour and link tables every [`NEXT_HOP_REFRESH`] and hands each snapshot over;
/// stops when the receiver is dropped.
fn spawn_neighbour_reader() -> mpsc::Receiver<nexthop::Snapshot> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(NEXT_HOP_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match nexthop::Snapshot::take().await {
                Ok(snapshot) => {
                    if sender.send(snapshot).await.is_err() {
                        return;
                    }
                }
                Err(error) => tracing::warn!("re-checking next hops failed: {error}"),
            }
        }
    });
    receiver
}

fn interface_index(interface: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(interface).with_context(|| {
        format!("interface {interface} not found (set `interface` in the configuration)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datapath_state_follows_health_next_hop_and_weight() {
        assert_eq!(datapath_state(Health::Up, true, 1), BackendState::Up);
        assert_eq!(datapath_state(Health::Up, true, 0), BackendState::Draining);
        assert_eq!(datapath_state(Health::Up, false, 1), BackendState::Down);
        assert_eq!(datapath_state(Health::Down, true, 0), BackendState::Down);
        assert_eq!(datapath_state(Health::Unknown, true, 1), BackendState::Down);
    }

    #[test]
    fn addresses_round_trip_through_map_bytes() {
        for text in ["10.0.0.1", "fd00::1"] {
            let address: IpAddr = text.parse().expect("ip");
            let (bytes, family) = addr_bytes(address);
            assert_eq!(addr_from_bytes(&bytes, family), address);
        }
    }
}
