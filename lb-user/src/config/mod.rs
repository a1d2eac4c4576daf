//! The agent's configuration: a TOML file parsed and validated into typed, fully resolved
//! structures ([`Config`]).
//!
//! Every default is applied here and every health setting is resolved per backend (global
//! `[health]`, then the VIP's `health`, then the backend's `health`), so the agent never looks
//! at the raw file. Only `tunnel_source` may stay empty: the interface's addresses are looked up
//! at run time.
//!
//! Errors name the file, the line and column (1-based) and the key path of the offending value,
//! like `lb.toml:14:11: vip[1].backend[0].weight: weight must be between 0 and 10000`. Parsing
//! stops at the first error.

mod announce;
mod conntrack;
mod error;
mod health;
mod raw;
mod resolve;
#[cfg(test)]
mod tests;
mod vip;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{
    conntrack::IdleTimeouts,
    maps::{ForwardMode, Protocol, VipKey},
};

pub use self::error::ConfigError;
use self::{error::io_message, resolve::Ctx};
use crate::datapath::AttachMode;

/// Default directory where the maps and the program link are pinned.
pub const DEFAULT_STATE_DIR: &str = "/sys/fs/bpf/lb";
/// Smallest accepted `conntrack_size`.
pub const MIN_CONNTRACK_SIZE: u32 = 1024;
/// Largest accepted backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Default backend weight.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Default `second_chance` window: Beamer's.
pub const DEFAULT_SECOND_CHANCE: std::time::Duration = std::time::Duration::from_secs(240);
/// Default health-check interval.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Default health-check timeout.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// Default number of consecutive successes that mark a down backend up.
pub const DEFAULT_HEALTH_RISE: u32 = 2;
/// Default number of consecutive failures that mark an up backend down.
pub const DEFAULT_HEALTH_FALL: u32 = 3;
/// The Maglev ring must have at least this many slots per backend of the largest VIP.
pub const RING_SLOTS_PER_BACKEND: u32 = 10;
/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
pub const MAX_INTERFACE_NAME: usize = 15;

/// The agent's whole configuration, defaults applied: what only a restart of `lb run` applies,
/// and what a reload does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Fixed for the agent's life.
    pub fixed: FixedConfig,
    /// Applied by a reload.
    pub live: LiveConfig,
}

/// What only a restart of `lb run` applies: where and how the datapath is loaded and attached,
/// the size of its flow table, and the metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedConfig {
    /// NIC the XDP program attaches to.
    pub interface: String,
    /// How the XDP program is attached.
    pub xdp_mode: AttachMode,
    /// Number of tracked flows (at least [`MIN_CONNTRACK_SIZE`]).
    pub conntrack_size: u32,
    /// Absolute directory where the maps and the program link are pinned.
    pub state_dir: PathBuf,
    /// Address of the Prometheus endpoint, if any.
    pub metrics: Option<SocketAddr>,
}

impl FixedConfig {
    /// The settings of `self` that `new` changes, as `name (old -> new)`.
    pub fn changes(&self, new: &Self) -> Vec<String> {
        let Self {
            interface,
            xdp_mode,
            conntrack_size,
            state_dir,
            metrics,
        } = self;
        let show_metrics = |m: &Option<SocketAddr>| m.map_or("none".to_owned(), |a| a.to_string());
        [
            (interface != &new.interface)
                .then(|| format!("interface ({interface} -> {})", new.interface)),
            (xdp_mode != &new.xdp_mode)
                .then(|| format!("xdp_mode ({xdp_mode:?} -> {:?})", new.xdp_mode)),
            (conntrack_size != &new.conntrack_size).then(|| {
                format!(
                    "conntrack_size ({conntrack_size} -> {})",
                    new.conntrack_size
                )
            }),
            (state_dir != &new.state_dir).then(|| {
                format!(
                    "state_dir ({} -> {})",
                    state_dir.display(),
                    new.state_dir.display()
                )
            }),
            (metrics != &new.metrics).then(|| {
                format!(
                    "metrics ({} -> {})",
                    show_metrics(metrics),
                    show_metrics(&new.metrics)
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// What a reload applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// Outer source addresses for tunnel VIPs: at most one IPv4 and one IPv6 address. Empty
    /// means "the interface's addresses", resolved at run time.
    pub tunnel_source: Vec<IpAddr>,
    /// Maglev ring size (a prime, at least 10 × the backend count of any VIP).
    pub table_size: u32,
    /// How long idle flows stay protected from eviction (`[conntrack]`).
    pub conntrack: ConntrackConfig,
    /// Announcing servable VIPs through a routing table (`[announce]`), if set.
    pub announce: Option<AnnounceConfig>,
    /// The VIPs, in file order.
    pub vips: Vec<VipConfig>,
}

/// `[conntrack]`: how long an established or closing flow that sends nothing stays protected
/// from eviction by new flows (see `lb_common::conntrack`). Applied by a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// TCP connections lb saw a packet of after the first.
    pub tcp_timeout: Duration,
    /// UDP flows that sent a second datagram.
    pub udp_timeout: Duration,
    /// TCP connections whose client sent a FIN or RST.
    pub tcp_closing_timeout: Duration,
}

impl ConntrackConfig {
    /// The timeouts in the flow table's ticks, as `SETTINGS` holds them.
    pub fn idle_timeouts(&self, clock: &crate::datapath::FlowClock) -> IdleTimeouts {
        let Self {
            tcp_timeout,
            udp_timeout,
            tcp_closing_timeout,
        } = *self;
        IdleTimeouts::new(
            clock.ticks_of(tcp_timeout),
            clock.ticks_of(udp_timeout),
            clock.ticks_of(tcp_closing_timeout),
        )
    }
}

impl Default for ConntrackConfig {
    /// 15 minutes for TCP (IPVS's established timeout), 30 s for UDP and for closing TCP.
    fn default() -> Self {
        Self {
            tcp_timeout: Duration::from_secs(15 * 60),
            udp_timeout: Duration::from_secs(30),
            tcp_closing_timeout: Duration::from_secs(30),
        }
    }
}

/// What a VIP does when none of its backends is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnAllDown {
    /// Drop the VIP's packets.
    Drop,
    /// Keep balancing over all backends (weight above 0) as if they were up.
    FailOpen,
}

impl OnAllDown {
    /// Every choice, the default first.
    pub const ALL: [OnAllDown; 2] = [OnAllDown::Drop, OnAllDown::FailOpen];

    /// Its name in the configuration: `drop` or `fail-open`.
    pub const fn name(self) -> &'static str {
        match self {
            OnAllDown::Drop => "drop",
            OnAllDown::FailOpen => "fail-open",
        }
    }
}

/// How a VIP spreads new flows over its backends (`balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Maglev by the configured weights.
    Maglev,
    /// Maglev by the configured weights scaled by each backend's response time to its checks
    /// (slower: fewer new flows, down to a quarter of its weight).
    ResponseTime,
    /// A new flow goes to the less loaded (active flows for its weight) of two candidates:
    /// its Maglev slot's backend and a second slot's.
    LeastConn,
}

impl Balance {
    /// Every choice, the default first.
    pub const ALL: [Balance; 3] = [Balance::Maglev, Balance::ResponseTime, Balance::LeastConn];

    /// Its name in the configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Balance::Maglev => "maglev",
            Balance::ResponseTime => "response-time",
            Balance::LeastConn => "least-conn",
        }
    }

    /// How the datapath picks a new flow's backend.
    pub const fn new_flow_rule(self) -> lb_common::maps::NewFlowRule {
        match self {
            Balance::Maglev | Balance::ResponseTime => lb_common::maps::NewFlowRule::Ring,
            Balance::LeastConn => lb_common::maps::NewFlowRule::LeastConn,
        }
    }
}

/// How a backend is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// A TCP handshake with the health port: half-open where it can be (a SYN from a raw
    /// socket, to a backend's own address), else a connect.
    Tcp,
    /// A TCP connect to the health port, closed with a reset once established.
    TcpConnect,
    /// An HTTP/1.1 `GET` whose status line must be one of the expected codes.
    Http(HttpCheck),
}

impl CheckKind {
    /// Its name in the configuration (`type`).
    pub const fn name(&self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::TcpConnect => "tcp-connect",
            CheckKind::Http(_) => "http",
        }
    }
}

/// An HTTP check: `GET path` with `Host: host` (or the backend's address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpCheck {
    /// Request path (starts with `/`).
    pub path: String,
    /// The `Host` header; `None`: the backend's address and port.
    pub host: Option<String>,
    /// Status codes that pass; empty: any 2xx.
    pub expect: Vec<u16>,
}

impl HttpCheck {
    /// Whether `status` passes.
    pub fn accepts(&self, status: u16) -> bool {
        if self.expect.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect.contains(&status)
        }
    }
}

/// Default HTTP check path.
pub const DEFAULT_HTTP_PATH: &str = "/";

/// Health-check settings of one backend, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthSettings {
    /// Time between two checks (above 0).
    pub interval: Duration,
    /// Time a check may take (above 0, at most `interval`).
    pub timeout: Duration,
    /// Consecutive successes that mark a down backend up (at least 1).
    pub rise: u32,
    /// Consecutive failures that mark an up backend down (at least 1).
    pub fall: u32,
    /// Port checked: the explicit health port, else the VIP's port (never 0).
    pub port: u16,
    /// What a check does.
    pub check: CheckKind,
    /// After coming up (recovering, being added, leaving maintenance) the backend's weight
    /// ramps linearly from ~0 to its configured weight over this time; zero: at once.
    pub slow_start: Duration,
    /// Where checks go: to the VIP, steered to the backend (the serving path), or to the
    /// backend's own address.
    pub target: CheckTarget,
}

/// Where a backend's health checks go (`health.target`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CheckTarget {
    /// To the VIP's address, sent to the backend the way clients' packets are (DSR or tunnel):
    /// a backend that does not serve the VIP fails.
    #[default]
    Vip,
    /// To the backend's own address.
    Backend,
}

impl CheckTarget {
    /// Its name in the configuration, `lb status` and `/metrics`.
    pub const fn name(self) -> &'static str {
        match self {
            CheckTarget::Vip => "vip",
            CheckTarget::Backend => "backend",
        }
    }
}

/// One VIP and its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipConfig {
    /// Unique name made of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Virtual address.
    pub address: IpAddr,
    /// Virtual port; 0 means all ports.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// How packets reach the backends.
    pub forward: ForwardMode,
    /// What to do when no backend is up.
    pub on_all_down: OnAllDown,
    /// How new flows are spread over the backends.
    pub balance: Balance,
    /// How long after each ring change the ring before it is kept, so that a tunnel packet of a
    /// connection lb does not track carries the slot's previous backend as a hop (0: off).
    pub second_chance: std::time::Duration,
    /// Whether its address is announced while it is servable (always false without
    /// `[announce]`).
    pub announce: bool,
    /// The backends, in file order (at least one, distinct addresses).
    pub backends: Vec<BackendConfig>,
}

impl LiveConfig {
    /// What is valid but likely a mistake, one line each: a load-aware DSR VIP announced by
    /// routing, where several instances behind ECMP would choose different backends for one
    /// new flow, and a flow that moves between instances (one dies) breaks.
    ///
    /// And a DSR VIP announced by routing, which several instances serve: second chance needs
    /// a tunnel, so when an instance leaves after a ring change, the connections it carried
    /// whose slot moved break.
    pub fn warnings(&self) -> Vec<String> {
        if self.announce.is_none() {
            return Vec::new();
        }
        let announced_dsr = self
            .vips
            .iter()
            .filter(|vip| vip.forward == ForwardMode::Dsr && vip.announce);
        let mut warnings = Vec::new();
        for vip in announced_dsr {
            if vip.balance != Balance::Maglev {
                warnings.push(format!(
                    "vip {}: balance = \"{}\" with forward = \"dsr\" and [announce]: instances \
                     behind ECMP weigh backends by what each sees, so they may send one new flow \
                     to different backends, and a connection that moves to another instance \
                     breaks (docs/REDUNDANCY.md)",
                    vip.name,
                    vip.balance.name()
                ));
            }
            warnings.push(format!(
                "vip {}: forward = \"dsr\" with [announce]: second chance needs a tunnel, so \
                 when an instance leaves after a ring change, the connections it carried whose \
                 ring slot moved break; forward = \"tunnel\" with lb decap on the backends \
                 keeps them (docs/SECOND_CHANCE.md)",
                vip.name
            ));
        }
        warnings
    }
}

impl VipConfig {
    /// Its `VIPS` key.
    pub fn key(&self) -> VipKey {
        VipKey::new(self.address, self.port, self.protocol)
    }
}

/// `[announce]`: the kernel routing table lb keeps one route per servable VIP address in, for
/// the operator's routing daemon to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// The table (1..=252: not `default`, `main` or `local`).
    pub table: u32,
    /// The protocol number of lb's routes (what the daemon filters on; 5..=255).
    pub protocol: u8,
    /// On a graceful stop: how long to keep forwarding after withdrawing everything.
    pub drain: Duration,
}

/// Default `announce.table`.
pub const DEFAULT_ANNOUNCE_TABLE: u32 = 250;
/// Default `announce.protocol`.
pub const DEFAULT_ANNOUNCE_PROTOCOL: u8 = 250;
/// Default `announce.drain`.
pub const DEFAULT_ANNOUNCE_DRAIN: Duration = Duration::from_secs(2);

/// One backend of a VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Backend address (same family as the VIP for `dsr` VIPs).
    pub address: IpAddr,
    /// Relative weight, 0 to [`MAX_WEIGHT`]; 0 drains the backend.
    pub weight: u32,
    /// Health-check settings (global, then VIP, then backend overrides).
    pub health: HealthSettings,
}

/// Reads and parses the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        key: None,
        message: format!("cannot read {}: {}", path.display(), io_message(&error)),
    })?;
    parse(path, &text)
}

/// Parses and validates the configuration `text`; `path` only names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let ctx = Ctx { file: path, text };
    let raw: raw::RawConfig = toml::from_str(text).map_err(|error| ctx.toml_error(&error))?;
    ctx.resolve(raw)
}
