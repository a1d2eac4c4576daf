//! The operator commands `lb stats`, `lb status` and `lb explain`: they read the maps an agent
//! pinned (and its status snapshot), from another process, also while no agent runs.
//!
//! The JSON shapes here are the documented, stable schema (README, "JSON output").

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lb_common::{
    flow_hash,
    maps::{Backend, BackendState, Protocol, Vip, VipKey, NO_BACKEND},
    stats::{BackendStats, Counter, VipStats},
    FlowKey,
};
use serde::Serialize;

use crate::{
    agent::addr_from_bytes,
    datapath::{Datapath, DatapathError},
    status::{self, Snapshot},
};

/// Why a report cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No pinned datapath at the state directory.
    #[error("no lb datapath at {}: start one with `lb run --config FILE` (or pass --state-dir DIR if it uses another state_dir)", dir.display())]
    NoDatapath {
        /// The state directory.
        dir: PathBuf,
    },
    /// Not root.
    #[error("reading the datapath's maps needs root (CAP_BPF and CAP_SYS_ADMIN): run with sudo or as root")]
    NotRoot,
    /// The maps could not be read.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// A bad `--vip` or `--client`.
    #[error("{0}")]
    Usage(String),
}

/// A VIP's key and entry, with its backends' ids and entries.
type VipEntry = (VipKey, Vip, Vec<(u32, Backend)>);

/// The pinned maps and the agent's snapshot.
pub struct View {
    datapath: Datapath,
    snapshot: Option<Snapshot>,
}

impl View {
    /// Opens the state of the agent using `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, ReportError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(ReportError::NotRoot);
        }
        if !state_dir.join(lb_common::maps::names::VIPS).exists() {
            return Err(ReportError::NoDatapath {
                dir: state_dir.to_path_buf(),
            });
        }
        Ok(Self {
            datapath: Datapath::open_pinned(state_dir)?,
            snapshot: status::read(state_dir),
        })
    }

    fn vip_name(&self, id: u32) -> String {
        self.snapshot
            .as_ref()
            .and_then(|s| s.vips.iter().find(|v| v.id == id))
            .map_or_else(|| format!("vip{id}"), |v| v.name.clone())
    }

    fn weight(&self, backend: u32) -> Option<u32> {
        let snapshot = self.snapshot.as_ref()?;
        snapshot
            .vips
            .iter()
            .flat_map(|v| &v.backends)
            .find(|b| b.id == backend)
            .map(|b| b.weight)
    }

    /// VIPs sorted by id, with their backends.
    fn vips(&mut self) -> Result<Vec<VipEntry>, ReportError> {
        let backends = self.datapath.backends()?;
        let mut vips: Vec<VipEntry> = self
            .datapath
            .vips()?
            .into_iter()
            .map(|(key, vip)| {
                let mine = backends
                    .iter()
                    .filter(|(_, b)| b.vip == vip.id)
                    .copied()
                    .collect();
                (key, vip, mine)
            })
            .collect();
        vips.sort_by_key(|(_, vip, _)| vip.id);
        Ok(vips)
    }
}

/// `lb stats` as JSON.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Stats {
    /// Global counters by verdict and reason (`lb_common::stats::Counter` names).
    pub global: BTreeMap<&'static str, u64>,
    /// Per VIP.
    pub vips: Vec<VipStatsReport>,
}

/// Counters of one VIP.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VipStatsReport {
    /// Name (from the agent's snapshot; `vip<id>` without one).
    pub name: String,
    /// VIP id.
    pub id: u32,
    /// Address.
    pub address: String,
    /// Port (0 = all).
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// Packets matched.
    pub packets: u64,
    /// Bytes matched.
    pub bytes: u64,
    /// Flows given a backend from the ring (conntrack misses and TCP SYNs).
    pub new_flows: u64,
    /// Packets whose flow was in conntrack.
    pub conntrack_hits: u64,
    /// Packets whose backend came from the ring (= new_flows).
    pub conntrack_misses: u64,
    /// Packets dropped (no backend, too big, ...).
    pub dropped: u64,
    /// Backends.
    pub backends: Vec<BackendStatsReport>,
}

/// Counters of one backend.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BackendStatsReport {
    /// Address.
    pub address: String,
    /// Backend id.
    pub id: u32,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows assigned.
    pub new_flows: u64,
    /// `up`, `draining` or `down`, as the datapath sees it.
    pub state: &'static str,
    /// Configured weight (from the agent's snapshot).
    pub weight: Option<u32>,
}

fn protocol_name(protocol: u8) -> &'static str {
    if protocol == Protocol::Udp as u8 {
        "udp"
    } else {
        "tcp"
    }
}

fn state_name(state: u8) -> &'static str {
    match state {
        s if s == BackendState::Up as u8 => "up",
        s if s == BackendState::Draining as u8 => "draining",
        _ => "down",
    }
}

/// Reads every counter.
pub fn stats(view: &mut View) -> Result<Stats, ReportError> {
    let mut global = BTreeMap::new();
    for counter in Counter::ALL {
        global.insert(counter.name(), view.datapath.counter(counter)?);
    }
    let mut vips = Vec::new();
    for (key, Vip { id, .. }, backends) in view.vips()? {
        let VipStats {
            packets,
            bytes,
            new_flows,
            conntrack_hits,
            dropped,
        } = view.datapath.vip_stats(id)?;
        let mut reports = Vec::new();
        for (backend_id, backend) in backends {
            let BackendStats {
                packets,
                bytes,
                new_flows,
            } = view.datapath.backend_stats(backend_id)?;
            reports.push(BackendStatsReport {
                address: addr_from_bytes(&backend.addr, backend.family).to_string(),
                id: backend_id,
                packets,
                bytes,
                new_flows,
                state: state_name(backend.state),
                weight: view.weight(backend_id),
            });
        }
        vips.push(VipStatsReport {
            name: view.vip_name(id),
            id,
            address: addr_from_bytes(&key.addr, key.family).to_string(),
            port: u16::from_be_bytes(key.port),
            protocol: protocol_name(key.protocol),
            packets,
            bytes,
            new_flows,
            conntrack_hits,
            conntrack_misses: new_flows,
            dropped,
            backends: reports,
        });
    }
    Ok(Stats { global, vips })
}

/// A number with an SI suffix: 1234567 → "1.2M".
pub fn si(value: f64) -> String {
    let (scaled, suffix) = if value >= 1e12 {
        (value / 1e12, "T")
    } else if value >= 1e9 {
        (value / 1e9, "G")
    } else if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        return if value.fract() == 0.0 {
            format!("{value}")
        } else {
            format!("{value:.1}")
        };
    };
    format!("{scaled:.1}{suffix}")
}

/// Human text of a totals report.
pub fn format_stats(stats: &Stats) -> String {
    let mut out = String::new();
    let verdicts = ["pass", "tx", "redirect", "drop"];
    let _ = writeln!(
        out,
        "verdicts: {}",
        verdicts
            .iter()
            .map(|v| format!("{v} {}", si(stats.global[v] as f64)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let reasons: Vec<String> = stats
        .global
        .iter()
        .filter(|(name, _)| !verdicts.contains(name))
        .map(|(name, value)| format!("{name} {}", si(*value as f64)))
        .collect();
    let _ = writeln!(out, "reasons:  {}", reasons.join(", "));
    for vip in &stats.vips {
        let _ = writeln!(
            out,
            "\nvip {} {}/{}: packets {}, bytes {}B, new flows {}, conntrack hits {} misses {}, dropped {}",
            vip.name,
            endpoint(&vip.address, vip.port),
            vip.protocol,
            si(vip.packets as f64),
            si(vip.bytes as f64),
            si(vip.new_flows as f64),
            si(vip.conntrack_hits as f64),
            si(vip.conntrack_misses as f64),
            si(vip.dropped as f64),
        );
        for b in &vip.backends {
            let _ = writeln!(
                out,
                "  {:<24} {:<9} weight {:<5} packets {:<8} bytes {:<8} new flows {}",
                b.address,
                b.state,
                b.weight.map_or("-".to_owned(), |w| w.to_string()),
                si(b.packets as f64),
                format!("{}B", si(b.bytes as f64)),
                si(b.new_flows as f64),
            );
        }
    }
    out
}

fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// Rates between two samples, for `lb stats --watch`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Rates {
    /// Seconds between the samples.
    pub interval_seconds: f64,
    /// Packets per second by verdict.
    pub verdicts_pps: BTreeMap<&'static str, f64>,
    /// Per VIP.
    pub vips: Vec<VipRates>,
}

/// Rates of one VIP.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VipRates {
    /// Name.
    pub name: String,
    /// Packets per second.
    pub pps: f64,
    /// Bits per second.
    pub bps: f64,
    /// New flows per second.
    pub new_flows_per_second: f64,
    /// Per backend.
    pub backends: Vec<BackendRates>,
}

/// Rates of one backend.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BackendRates {
    /// Address.
    pub address: String,
    /// Packets per second.
    pub pps: f64,
    /// Bits per second.
    pub bps: f64,
    /// New flows per second.
    pub new_flows_per_second: f64,
}

/// Rates from `before` to `after`, `seconds` apart.
pub fn rates(before: &Stats, after: &Stats, seconds: f64) -> Rates {
    let per_second = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / seconds;
    let verdicts_pps = ["pass", "tx", "redirect", "drop"]
        .into_iter()
        .map(|v| (v, per_second(before.global[v], after.global[v])))
        .collect();
    let vips = after
        .vips
        .iter()
        .map(|vip| {
            let old = before.vips.iter().find(|v| v.id == vip.id);
            let backends = vip
                .backends
                .iter()
                .map(|b| {
                    let old = old.and_then(|v| v.backends.iter().find(|o| o.id == b.id));
                    BackendRates {
                        address: b.address.clone(),
                        pps: per_second(old.map_or(0, |o| o.packets), b.packets),
                        bps: 8.0 * per_second(old.map_or(0, |o| o.bytes), b.bytes),
                        new_flows_per_second: per_second(
                            old.map_or(0, |o| o.new_flows),
                            b.new_flows,
                        ),
                    }
                })
                .collect();
            VipRates {
                name: vip.name.clone(),
                pps: per_second(old.map_or(0, |o| o.packets), vip.packets),
                bps: 8.0 * per_second(old.map_or(0, |o| o.bytes), vip.bytes),
                new_flows_per_second: per_second(old.map_or(0, |o| o.new_flows), vip.new_flows),
                backends,
            }
        })
        .collect();
    Rates {
        interval_seconds: seconds,
        verdicts_pps,
        vips,
    }
}

/// Human text of rates: "1.2 Mpps, 3.4 Gbit/s".
pub fn format_rates(rates: &Rates) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "every {:.1}s: {}",
        rates.interval_seconds,
        rates
            .verdicts_pps
            .iter()
            .map(|(v, pps)| format!("{v} {}pps", si_space(*pps)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for vip in &rates.vips {
        let _ = writeln!(
            out,
            "vip {}: {}pps, {}bit/s, {} new flows/s",
            vip.name,
            si_space(vip.pps),
            si_space(vip.bps),
            si(vip.new_flows_per_second)
        );
        for b in &vip.backends {
            let _ = writeln!(
                out,
                "  {:<24} {}pps, {}bit/s, {} new flows/s",
                b.address,
                si_space(b.pps),
                si_space(b.bps),
                si(b.new_flows_per_second)
            );
        }
    }
    out
}

/// "1.2 M" (with a space before the unit), "12 " for small values.
fn si_space(value: f64) -> String {
    let text = si(value);
    match text.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => format!("{} {c}", &text[..text.len() - 1]),
        _ => format!("{text} "),
    }
}

/// Prints stats every `interval`, as rates, `count` times (forever when `None`).
pub fn watch(
    view: &mut View,
    interval: Duration,
    count: Option<u64>,
    json: bool,
) -> Result<(), ReportError> {
    let clear = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !json;
    let mut before = stats(view)?;
    let mut at = Instant::now();
    let mut printed = 0;
    while count.is_none_or(|c| printed < c) {
        std::thread::sleep(interval);
        let after = stats(view)?;
        let now = Instant::now();
        let rates = rates(&before, &after, now.duration_since(at).as_secs_f64());
        if json {
            println!("{}", serde_json::to_string(&rates).unwrap_or_default());
        } else {
            if clear {
                print!("\x1b[2J\x1b[H");
            }
            println!("{}", format_rates(&rates));
        }
        (before, at) = (after, now);
        printed += 1;
    }
    Ok(())
}

/// `lb status` as JSON.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Status {
    /// Interface the balancer is attached to (from the agent's snapshot).
    pub interface: Option<String>,
    /// `native` or `generic`.
    pub xdp_mode: Option<String>,
    /// Kernel id of the program.
    pub program_id: Option<u32>,
    /// The agent.
    pub agent: Option<AgentStatus>,
    /// VIPs.
    pub vips: Vec<VipStatusReport>,
}

/// The agent that wrote the snapshot.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AgentStatus {
    /// Pid.
    pub pid: u32,
    /// Whether that pid is alive.
    pub running: bool,
    /// Configuration file.
    pub config: String,
    /// When the snapshot was written (Unix ms).
    pub updated_unix_ms: u64,
}

/// One VIP's status.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VipStatusReport {
    /// Name.
    pub name: String,
    /// Id.
    pub id: u32,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// `dsr` or `tunnel`.
    pub forward: &'static str,
    /// Ring size.
    pub ring_size: u32,
    /// Short hash of the ring as backend addresses per slot: equal on two instances with the
    /// same configuration and health.
    pub ring_fingerprint: String,
    /// Backends.
    pub backends: Vec<BackendStatusReport>,
}

/// One backend's status.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BackendStatusReport {
    /// Address.
    pub address: String,
    /// Id.
    pub id: u32,
    /// `up`, `down`, `draining` or `unknown`.
    pub state: String,
    /// Configured weight.
    pub weight: Option<u32>,
    /// Ring slots it owns.
    pub slots: u32,
    /// Share of the ring (0..1).
    pub share: f64,
    /// Whether the last health check succeeded.
    pub last_check_ok: Option<bool>,
    /// Its latency in microseconds.
    pub last_check_latency_us: Option<u64>,
    /// Its error.
    pub last_check_error: Option<String>,
    /// Seconds since the state last changed.
    pub since_change_seconds: Option<f64>,
}

/// Reads the status of every VIP.
pub fn status(view: &mut View) -> Result<Status, ReportError> {
    let now = status::now_unix_ms();
    let mut vips = Vec::new();
    for (key, vip_entry, backends) in view.vips()? {
        let id = vip_entry.id;
        let ring = view.datapath.ring(id)?.unwrap_or_default();
        let addresses: BTreeMap<u32, String> = backends
            .iter()
            .map(|(id, b)| (*id, addr_from_bytes(&b.addr, b.family).to_string()))
            .collect();
        let snapshot_vip = view
            .snapshot
            .as_ref()
            .and_then(|s| s.vips.iter().find(|v| v.id == id))
            .cloned();
        let reports = backends
            .iter()
            .map(|(backend_id, backend)| {
                let slots = ring.iter().filter(|s| **s == *backend_id).count() as u32;
                let snap = snapshot_vip
                    .as_ref()
                    .and_then(|v| v.backends.iter().find(|b| b.id == *backend_id));
                BackendStatusReport {
                    address: addresses[backend_id].clone(),
                    id: *backend_id,
                    state: snap
                        .map_or_else(|| state_name(backend.state).to_owned(), |s| s.state.clone()),
                    weight: snap.map(|s| s.weight),
                    slots,
                    share: if ring.is_empty() {
                        0.0
                    } else {
                        slots as f64 / ring.len() as f64
                    },
                    last_check_ok: snap.and_then(|s| s.last_check_ok),
                    last_check_latency_us: snap.and_then(|s| s.last_check_latency_us),
                    last_check_error: snap.and_then(|s| s.last_check_error.clone()),
                    since_change_seconds: snap
                        .map(|s| now.saturating_sub(s.last_change_unix_ms) as f64 / 1000.0),
                }
            })
            .collect();
        vips.push(VipStatusReport {
            name: view.vip_name(id),
            id,
            address: addr_from_bytes(&key.addr, key.family).to_string(),
            port: u16::from_be_bytes(key.port),
            protocol: protocol_name(key.protocol),
            forward: if vip_entry.forward == lb_common::maps::ForwardMode::Tunnel as u8 {
                "tunnel"
            } else {
                "dsr"
            },
            ring_size: ring.len() as u32,
            ring_fingerprint: fingerprint(&ring, &addresses),
            backends: reports,
        });
    }
    let agent = view.snapshot.as_ref().map(|s| AgentStatus {
        pid: s.pid,
        running: nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.pid as i32), None).is_ok(),
        config: s.config.display().to_string(),
        updated_unix_ms: s.updated_unix_ms,
    });
    Ok(Status {
        interface: view.snapshot.as_ref().map(|s| s.interface.clone()),
        xdp_mode: view.snapshot.as_ref().map(|s| s.xdp_mode.clone()),
        program_id: view.snapshot.as_ref().and_then(|s| s.program_id),
        agent,
        vips,
    })
}

/// FNV-1a (64-bit) over the backend address of every slot; 12 hex digits.
pub fn fingerprint(ring: &[u32], addresses: &BTreeMap<u32, String>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for slot in ring {
        let name = if *slot == NO_BACKEND {
            "-"
        } else {
            addresses.get(slot).map_or("?", String::as_str)
        };
        for byte in name.bytes().chain([b'\n']) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{:012x}", hash >> 16)
}

/// Human text of a status report.
pub fn format_status(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "interface {} ({} XDP), program id {}",
        status.interface.as_deref().unwrap_or("?"),
        status.xdp_mode.as_deref().unwrap_or("?"),
        status
            .program_id
            .map_or("?".to_owned(), |id| id.to_string())
    );
    match &status.agent {
        Some(agent) => {
            let _ = writeln!(
                out,
                "agent pid {} ({}), config {}",
                agent.pid,
                if agent.running {
                    "running"
                } else {
                    "not running: the datapath forwards on its own"
                },
                agent.config
            );
        }
        None => {
            let _ = writeln!(
                out,
                "no agent snapshot: health unknown, states as the datapath sees them"
            );
        }
    }
    for vip in &status.vips {
        let _ = writeln!(
            out,
            "\nvip {} {}/{} {}  ring {} slots, fingerprint {}",
            vip.name,
            endpoint(&vip.address, vip.port),
            vip.protocol,
            vip.forward,
            vip.ring_size,
            vip.ring_fingerprint
        );
        let _ = writeln!(
            out,
            "  {:<24} {:<9} {:>6} {:>7} {:>7}  {:<28} SINCE CHANGE",
            "BACKEND", "STATE", "WEIGHT", "SLOTS", "SHARE", "LAST CHECK"
        );
        for b in &vip.backends {
            let check = match (
                b.last_check_ok,
                b.last_check_latency_us,
                &b.last_check_error,
            ) {
                (Some(true), Some(us), _) => {
                    format!("ok in {}", human_duration(Duration::from_micros(us)))
                }
                (Some(false), _, Some(error)) => format!("failed: {error}"),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<24} {:<9} {:>6} {:>7} {:>6.1}%  {:<28} {}",
                b.address,
                b.state,
                b.weight.map_or("-".to_owned(), |w| w.to_string()),
                b.slots,
                b.share * 100.0,
                check,
                b.since_change_seconds
                    .map_or("-".to_owned(), |s| human_duration(Duration::from_secs_f64(
                        s
                    )))
            );
        }
    }
    out
}

fn human_duration(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros < 1000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        format!("{:.1}ms", micros as f64 / 1000.0)
    } else {
        let seconds = duration.as_secs();
        match seconds {
            0..60 => format!("{:.1}s", duration.as_secs_f64()),
            60..3600 => format!("{}m{}s", seconds / 60, seconds % 60),
            _ => format!("{}h{}m", seconds / 3600, (seconds % 3600) / 60),
        }
    }
}

/// `lb explain` as JSON.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Explanation {
    /// The VIP matched (name).
    pub vip: String,
    /// The client.
    pub client: String,
    /// `flow_hash` of the 5-tuple.
    pub hash: u32,
    /// Ring slot (`hash % ring_size`).
    pub slot: u32,
    /// Backend in that slot (`None`: no backend).
    pub ring_backend: Option<String>,
    /// Backend the flow is tracked to, if any.
    pub tracked_backend: Option<String>,
    /// Where the next packet of this flow goes.
    pub backend: Option<String>,
    /// `tracked`, `ring` or `rehash` (tracked backend down).
    pub reason: &'static str,
}

/// Parses `ADDR:PORT/PROTO` (`[v6]:port/proto`).
pub fn parse_vip(text: &str) -> Result<(SocketAddr, Protocol), ReportError> {
    let usage = || {
        ReportError::Usage(format!("--vip {text}: expected ADDR:PORT/tcp or ADDR:PORT/udp, e.g. 10.0.0.100:80/tcp or [fd00::100]:80/udp"))
    };
    let (address, protocol) = text.rsplit_once('/').ok_or_else(usage)?;
    let protocol = match protocol {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(usage()),
    };
    Ok((address.parse().map_err(|_| usage())?, protocol))
}

/// Which backend a flow goes to now, and why, computed with the kernel's own hash and maps.
pub fn explain(
    view: &mut View,
    vip: SocketAddr,
    protocol: Protocol,
    client: SocketAddr,
) -> Result<Explanation, ReportError> {
    let flow = match (client.ip(), vip.ip()) {
        (IpAddr::V4(c), IpAddr::V4(v)) => {
            FlowKey::v4(c.octets(), v.octets(), client.port(), vip.port(), protocol)
        }
        (IpAddr::V6(c), IpAddr::V6(v)) => {
            FlowKey::v6(c.octets(), v.octets(), client.port(), vip.port(), protocol)
        }
        _ => {
            return Err(ReportError::Usage(
                "--client and --vip must be of the same address family".into(),
            ))
        }
    };
    let vips = view.datapath.vips()?;
    let mut key = VipKey {
        addr: flow.dst,
        port: flow.dst_port,
        protocol: protocol as u8,
        family: flow.family,
    };
    let entry = match vips.iter().find(|(k, _)| *k == key) {
        Some((_, v)) => *v,
        None => {
            key.port = [0, 0];
            vips.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    ReportError::Usage(format!(
                        "{vip}/{} is not a VIP of this datapath",
                        protocol_name(protocol as u8)
                    ))
                })?
        }
    };
    let backends: BTreeMap<u32, Backend> = view.datapath.backends()?.into_iter().collect();
    let name_of = |id: u32| {
        backends
            .get(&id)
            .map(|b| addr_from_bytes(&b.addr, b.family).to_string())
    };
    let hash = flow_hash(&flow);
    let ring = view.datapath.ring(entry.id)?.unwrap_or_default();
    let slot = if entry.ring_size == 0 {
        0
    } else {
        hash % entry.ring_size
    };
    let ring_id = ring
        .get(slot as usize)
        .copied()
        .filter(|id| *id != NO_BACKEND);
    let ring_backend = ring_id.and_then(name_of);
    let tracked = view.datapath.conntrack(&flow)?;
    let tracked_usable = tracked.and_then(|id| backends.get(&id)).is_some_and(|b| {
        b.state == BackendState::Up as u8 || b.state == BackendState::Draining as u8
    });
    let (backend, reason) = match tracked {
        Some(id) if tracked_usable => (name_of(id), "tracked"),
        Some(_) => (ring_backend.clone(), "rehash"),
        None => (ring_backend.clone(), "ring"),
    };
    Ok(Explanation {
        vip: view.vip_name(entry.id),
        client: client.to_string(),
        hash,
        slot,
        ring_backend,
        tracked_backend: tracked.and_then(name_of),
        backend,
        reason,
    })
}

/// Human text of an explanation.
pub fn format_explanation(e: &Explanation) -> String {
    let to = |b: &Option<String>| {
        b.clone()
            .unwrap_or_else(|| "no backend (dropped)".to_owned())
    };
    let mut out = match e.reason {
        "tracked" => format!(
            "{} → vip {}: tracked flow → backend {}\n(its ring slot {} would give {})",
            e.client,
            e.vip,
            to(&e.backend),
            e.slot,
            to(&e.ring_backend)
        ),
        "rehash" => format!(
            "{} → vip {}: tracked to {}, which is down: the next packet is re-hashed to ring slot {} → backend {}",
            e.client,
            e.vip,
            to(&e.tracked_backend),
            e.slot,
            to(&e.backend)
        ),
        _ => format!(
            "{} → vip {}: not tracked: flow hash {:#010x}, ring slot {} → backend {}",
            e.client,
            e.vip,
            e.hash,
            e.slot,
            to(&e.backend)
        ),
    };
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1234.0), "1.2k");
        assert_eq!(si(1_234_567.0), "1.2M");
        assert_eq!(si(3_400_000_000.0), "3.4G");
        assert_eq!(si_space(1_200_000.0), "1.2 M");
        assert_eq!(si_space(12.0), "12 ");
    }

    #[test]
    fn vip_arguments() {
        assert_eq!(parse_vip("10.0.0.1:80/tcp").expect("v4").1, Protocol::Tcp);
        assert_eq!(parse_vip("[fd00::1]:53/udp").expect("v6").0.port(), 53);
        assert!(parse_vip("10.0.0.1:80").is_err());
        assert!(parse_vip("10.0.0.1/tcp").is_err());
    }

    #[test]
    fn fingerprints_depend_on_addresses_not_ids() {
        let a: BTreeMap<u32, String> =
            [(0, "10.0.0.1".to_owned()), (1, "10.0.0.2".to_owned())].into();
        let b: BTreeMap<u32, String> =
            [(7, "10.0.0.1".to_owned()), (9, "10.0.0.2".to_owned())].into();
        assert_eq!(fingerprint(&[0, 1, 0], &a), fingerprint(&[7, 9, 7], &b));
        assert_ne!(fingerprint(&[0, 1, 0], &a), fingerprint(&[1, 0, 0], &a));
    }
}
