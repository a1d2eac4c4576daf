//! The agent's view that the maps do not hold (VIP names, weights, health, last check), written
//! by `lb run` as a JSON snapshot after every state change and reload, and at most once a second
//! for other check results, and read by `lb status` and `lb stats`.
//!
//! The state directory is on bpffs, which only holds pins, so the snapshot lives in
//! [`RUN_DIR`], under a name derived from the state directory.

use std::{
    io,
    path::{Path, PathBuf},
};

use lb_common::maps::{BackendState, ForwardMode, Protocol};
use serde::{Deserialize, Serialize};

use crate::{admin::AdminState, datapath::AttachMode, routes::RouteOwner};

/// Where snapshots are written.
pub const RUN_DIR: &str = "/run/lb";

/// A file name for the agent using `state_dir`, for files that cannot live on bpffs: the
/// path with `/` as `_`, e.g. `sys_fs_bpf_lb`.
pub fn derived_name(state_dir: &Path) -> String {
    state_dir
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect()
}

/// Snapshot path for the agent using `state_dir`.
pub fn path_for(state_dir: &Path) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{}.json", derived_name(state_dir)))
}

/// Path of the agent's control socket (`lb backend ...`) for `state_dir`.
pub fn socket_for(state_dir: &Path) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{}.sock", derived_name(state_dir)))
}

/// What the agent knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The agent's pid.
    pub pid: u32,
    /// When the snapshot was written (Unix milliseconds).
    pub updated_unix_ms: u64,
    /// The configuration file.
    pub config: PathBuf,
    /// The interface the balancer is attached to.
    pub interface: String,
    /// `native` or `generic`.
    pub xdp_mode: AttachMode,
    /// Kernel id of the attached program.
    pub program_id: Option<u32>,
    /// Where servable VIP addresses are announced (`[announce]`), if anywhere.
    #[serde(default)]
    pub announce: Option<RouteOwner>,
    /// A graceful stop is under way (addresses withdrawn, draining).
    #[serde(default)]
    pub stopping: bool,
    /// Health-check packets sent along the serving path (`steer_check`), by what was done
    /// (`steered`, `encapsulated`, dropped with `no_path`...): never counted as clients'.
    #[serde(default)]
    pub check_packets: std::collections::BTreeMap<String, u64>,
    /// Packets of untracked connections sent with a second-chance hop.
    #[serde(default)]
    pub second_chance_hops: u64,
    /// TCP checks of backends' own addresses are half-open (false: they connect, for want of
    /// raw sockets).
    #[serde(default)]
    pub half_open_checks: bool,
    /// VIPs.
    pub vips: Vec<VipStatus>,
}

/// One VIP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    /// Name from the configuration.
    pub name: String,
    /// VIP id (index of its ring and counters).
    pub id: u32,
    /// Address.
    pub address: String,
    /// Port (0 = all).
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// `dsr` or `tunnel`.
    pub forward: ForwardMode,
    /// Whether its address is announced while it is servable (`announce`).
    #[serde(default)]
    pub announce: bool,
    /// How it spreads new flows (`None`: an older agent, `maglev`).
    #[serde(default)]
    pub balance: Option<crate::config::Balance>,
    /// Its second-chance window in seconds (tunnel VIPs; `None`: DSR, off, or an older agent).
    #[serde(default)]
    pub second_chance_seconds: Option<f64>,
    /// When the window of its previous ring closes (Unix ms; `None`: no previous ring).
    #[serde(default)]
    pub previous_ring_until_unix_ms: Option<u64>,
    /// The ring the agent last swapped in (`None`: none yet, or an older agent).
    #[serde(default)]
    pub ring: Option<RingStatus>,
    /// Backends.
    pub backends: Vec<BackendStatus>,
}

/// What the agent knows of the ring it swapped in for a VIP, so `lb status` need not read
/// and hash 65,537 slots per VIP: ring maps are filled before they are swapped in and never
/// written after, so while the kernel's `RINGS` entry is still map `map_id`, this is its
/// content. (Each backend's slots are in its [`BackendStatus::slots`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingStatus {
    /// The kernel's id of the ring map.
    pub map_id: u32,
    /// Its slots.
    pub size: u32,
    /// Its fingerprint (see `crate::fingerprint`), if the agent could read the ring.
    pub fingerprint: Option<u64>,
}

/// One backend of a VIP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Address.
    pub address: String,
    /// Backend id (index of its map entry and counters).
    pub id: u32,
    /// Configured weight.
    pub weight: u32,
    /// `up`, `down`, `draining` or `unknown`.
    pub state: ServingState,
    /// Whether the last check succeeded.
    pub last_check_ok: Option<bool>,
    /// Latency of the last check, microseconds.
    pub last_check_latency_us: Option<u64>,
    /// Error of the last check.
    pub last_check_error: Option<String>,
    /// When the state last changed (Unix milliseconds).
    pub last_change_unix_ms: u64,
    /// Where its checks go: `vip` (along the serving path) or `backend` (its own address);
    /// `None` in snapshots of agents that only checked backends' own addresses.
    #[serde(default)]
    pub check_target: Option<crate::config::CheckTarget>,
    /// Why its effective weight is below its weight for response-time balancing, e.g.
    /// `response time 40.0ms (fastest 2.0ms): weight x0.25`.
    #[serde(default)]
    pub weight_reason: Option<String>,
    /// Its checks' average response time, microseconds (response-time VIPs).
    #[serde(default)]
    pub response_time_us: Option<u64>,
    /// Its slots in the ring of [`VipStatus::ring`].
    #[serde(default)]
    pub slots: u32,
    /// `ready`, `drain` or `maint` (`lb backend drain|disable|enable`).
    #[serde(default)]
    pub admin: AdminState,
    /// Who set `admin`, and when.
    #[serde(default)]
    pub admin_by: Option<String>,
    /// The weight it gets now, in configured units: lower during slow start, 0 when drained or
    /// in maintenance.
    #[serde(default)]
    pub effective_weight: f64,
    /// Up → down transitions since the records were created.
    #[serde(default)]
    pub failures: u64,
    /// Mean time from down to up (`None` before the first recovery).
    #[serde(default)]
    pub mttr_seconds: Option<f64>,
    /// Mean time up before a failure (`None` before the first failure).
    #[serde(default)]
    pub mttf_seconds: Option<f64>,
    /// Time up / time observed (`None` before the first check).
    #[serde(default)]
    pub availability: Option<f64>,
    /// Seconds observed up, and observed in all (for rates over time).
    #[serde(default)]
    pub up_seconds: f64,
    /// Seconds observed with a known health.
    #[serde(default)]
    pub observed_seconds: f64,
}

/// Whether a backend serves, as the agent sees it: its health, and whether the datapath sends it
/// new flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServingState {
    /// Not checked yet: receives no traffic.
    Unknown,
    /// In the ring.
    Up,
    /// Healthy with weight 0: no new flows, tracked flows stay.
    Draining,
    /// Failed its checks (or has no next hop): no traffic, tracked flows re-hash.
    Down,
}

impl ServingState {
    /// Lower-case name as in the CLI and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            ServingState::Unknown => "unknown",
            ServingState::Up => "up",
            ServingState::Draining => "draining",
            ServingState::Down => "down",
        }
    }
}

impl From<BackendState> for ServingState {
    /// What a backend entry's state says when no agent snapshot does.
    fn from(state: BackendState) -> Self {
        match state {
            BackendState::Up => ServingState::Up,
            BackendState::Draining => ServingState::Draining,
            BackendState::Down | BackendState::Unused => ServingState::Down,
        }
    }
}

/// Writes `snapshot` for `state_dir` atomically (write, then rename).
pub fn write(state_dir: &Path, snapshot: &Snapshot) -> io::Result<()> {
    let path = path_for(state_dir);
    std::fs::create_dir_all(RUN_DIR)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(snapshot).map_err(io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// Reads the snapshot for `state_dir`, if an agent wrote one.
pub fn read(state_dir: &Path) -> Option<Snapshot> {
    let text = std::fs::read(path_for(state_dir)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Removes the snapshot (the agent stopped and detached).
pub fn remove(state_dir: &Path) {
    let _ = std::fs::remove_file(path_for(state_dir));
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_derived_from_the_state_dir() {
        assert_eq!(
            path_for(Path::new("/sys/fs/bpf/lb")),
            Path::new("/run/lb/sys_fs_bpf_lb.json")
        );
    }
}
