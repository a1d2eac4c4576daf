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

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_common::maglev::is_prime;
use lb_common::maps::{
    ForwardMode, Protocol, DEFAULT_CONNTRACK_SIZE, DEFAULT_RING_SIZE, MAX_BACKENDS, MAX_VIPS,
};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Default directory where the maps and the program link are pinned.
pub const DEFAULT_STATE_DIR: &str = "/sys/fs/bpf/lb";
/// Smallest accepted `conntrack_size`.
pub const MIN_CONNTRACK_SIZE: u32 = 1024;
/// Largest accepted backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Default backend weight.
pub const DEFAULT_WEIGHT: u32 = 1;
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
const MAX_INTERFACE_NAME: usize = 15;

/// The agent's whole configuration, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// NIC the XDP program attaches to.
    pub interface: String,
    /// How the XDP program is attached.
    pub xdp_mode: XdpModeSetting,
    /// Outer source addresses for tunnel VIPs: at most one IPv4 and one IPv6 address. Empty
    /// means "the interface's addresses", resolved at run time.
    pub tunnel_source: Vec<IpAddr>,
    /// Maglev ring size (a prime, at least 10 × the backend count of any VIP).
    pub table_size: u32,
    /// Number of tracked flows (at least [`MIN_CONNTRACK_SIZE`]).
    pub conntrack_size: u32,
    /// Absolute directory where the maps and the program link are pinned.
    pub state_dir: PathBuf,
    /// Address of the Prometheus endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// The VIPs, in file order.
    pub vips: Vec<VipConfig>,
}

/// The `xdp_mode` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XdpModeSetting {
    /// Native (driver) mode if the driver supports it, else generic mode with a warning.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode.
    Generic,
}

/// What a VIP does when none of its backends is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnAllDown {
    /// Drop the VIP's packets.
    Drop,
    /// Keep balancing over all backends (weight above 0) as if they were up.
    FailOpen,
}

/// Health-check settings of one backend, fully resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The backends, in file order (at least one, distinct addresses).
    pub backends: Vec<BackendConfig>,
}

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

/// A configuration that cannot be read, parsed or validated.
///
/// Displays as `file:line:column: key: message`, leaving out the parts that are unknown. An
/// error with neither a line nor a key is about the whole file (it could not be read): it
/// displays as its message alone, which names the file (`cannot read lb.toml: ...`).
#[derive(Debug, thiserror::Error)]
#[error("{}", render(self))]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line of the offending text.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending text.
    pub column: Option<usize>,
    /// Key path of the offending value, like `vip[0].backend[2].address`.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

fn render(error: &ConfigError) -> String {
    if error.line.is_none() && error.key.is_none() {
        return error.message.clone();
    }
    let mut out = error.file.display().to_string();
    if let Some(line) = error.line {
        out.push_str(&format!(":{line}"));
        if let Some(column) = error.column {
            out.push_str(&format!(":{column}"));
        }
    }
    out.push_str(": ");
    if let Some(key) = &error.key {
        out.push_str(key);
        out.push_str(": ");
    }
    out.push_str(&error.message);
    out
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

/// The I/O error's text without the ` (os error N)` suffix.
fn io_message(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(end) => text[..end].to_owned(),
        None => text,
    }
}

/// Parses and validates the configuration `text`; `path` only names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let ctx = Ctx { file: path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|error| ctx.toml_error(&error))?;
    ctx.resolve(raw)
}

// ---------------------------------------------------------------------------------------------
// Raw file structure, as deserialized (with spans for error locations).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Spanned<String>,
    xdp_mode: Option<Spanned<String>>,
    tunnel_source: Option<Spanned<RawAddresses>>,
    table_size: Option<Spanned<u32>>,
    conntrack_size: Option<Spanned<u32>>,
    state_dir: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    health: Option<RawHealth>,
    #[serde(default)]
    vip: Vec<Spanned<RawVip>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    port: Option<Spanned<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Spanned<String>,
    address: Spanned<String>,
    port: Spanned<u16>,
    protocol: Option<Spanned<String>>,
    forward: Option<Spanned<String>>,
    on_all_down: Option<Spanned<String>>,
    health: Option<RawHealth>,
    #[serde(default)]
    backend: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<Spanned<u32>>,
    health: Option<RawHealth>,
}

/// `tunnel_source`: one address, or a list of them.
enum RawAddresses {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for RawAddresses {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AddressesVisitor;

        impl<'de> Visitor<'de> for AddressesVisitor {
            type Value = RawAddresses;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an IP address or a list of IP addresses")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawAddresses, E> {
                Ok(RawAddresses::One(value.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawAddresses, A::Error> {
                let mut addresses = Vec::new();
                while let Some(address) = seq.next_element::<Spanned<String>>()? {
                    addresses.push(address);
                }
                Ok(RawAddresses::Many(addresses))
            }
        }

        deserializer.deserialize_any(AddressesVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Health layers.

/// A value from the file with where it came from.
#[derive(Clone)]
struct Located<T> {
    value: T,
    span: Range<usize>,
    key: String,
    /// 0: `[health]`, 1: the VIP's `health`, 2: the backend's `health`.
    level: u8,
}

/// The health keys set at one level (or, once merged, at any level up to it).
#[derive(Clone, Default)]
struct HealthLayer {
    interval: Option<Located<Duration>>,
    timeout: Option<Located<Duration>>,
    rise: Option<u32>,
    fall: Option<u32>,
    port: Option<u16>,
}

impl HealthLayer {
    /// `self` with the keys set in `over` replaced.
    fn overlay(&self, over: &HealthLayer) -> HealthLayer {
        HealthLayer {
            interval: over.interval.clone().or_else(|| self.interval.clone()),
            timeout: over.timeout.clone().or_else(|| self.timeout.clone()),
            rise: over.rise.or(self.rise),
            fall: over.fall.or(self.fall),
            port: over.port.or(self.port),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

impl Ctx<'_> {
    /// An error at byte offsets `span` of the text.
    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_column(self.text, span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line: Some(line),
            column: Some(column),
            key: (!key.is_empty()).then(|| key.to_owned()),
            message: message.into(),
        }
    }

    /// A syntax or type error from toml, with the key path found from its span.
    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let message = error.message().trim().to_owned();
        let Some(span) = error.span() else {
            // toml locates all its errors; this is only a fallback that still names the file.
            return ConfigError {
                file: self.file.to_path_buf(),
                line: None,
                column: None,
                key: None,
                message: format!("{}: {message}", self.file.display()),
            };
        };
        let mut key = key_path_at(self.text, &span);
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            // The span is the table's: the key is the missing one inside it.
            key = Some(join(key.as_deref().unwrap_or(""), field));
        }
        let (line, column) = line_column(self.text, span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line: Some(line),
            column: Some(column),
            key,
            message,
        }
    }

    fn resolve(&self, raw: RawConfig) -> Result<Config> {
        let interface = self.interface(&raw.interface)?;
        let xdp_mode = self.choice(
            raw.xdp_mode.as_ref(),
            "xdp_mode",
            &[
                ("auto", XdpModeSetting::Auto),
                ("native", XdpModeSetting::Native),
                ("generic", XdpModeSetting::Generic),
            ],
        )?;
        let tunnel_source = match &raw.tunnel_source {
            Some(addresses) => self.tunnel_source(addresses)?,
            None => Vec::new(),
        };
        let table_size = match &raw.table_size {
            Some(size) => self.table_size(size)?,
            None => DEFAULT_RING_SIZE,
        };
        let conntrack_size = match &raw.conntrack_size {
            Some(size) if *size.get_ref() < MIN_CONNTRACK_SIZE => {
                return Err(self.error(
                    size.span(),
                    "conntrack_size",
                    format!(
                        "conntrack_size must be at least {MIN_CONNTRACK_SIZE} (got {})",
                        size.get_ref()
                    ),
                ))
            }
            Some(size) => *size.get_ref(),
            None => DEFAULT_CONNTRACK_SIZE,
        };
        let state_dir = match &raw.state_dir {
            Some(dir) if !Path::new(dir.get_ref()).is_absolute() => {
                return Err(self.error(
                    dir.span(),
                    "state_dir",
                    format!(
                        "state_dir must be an absolute path (got {:?})",
                        dir.get_ref()
                    ),
                ))
            }
            Some(dir) => PathBuf::from(dir.get_ref()),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let metrics = match &raw.metrics {
            Some(text) => Some(text.get_ref().parse::<SocketAddr>().map_err(|_| {
                self.error(
                    text.span(),
                    "metrics",
                    format!(
                        "invalid socket address {:?}: expected an IP address and a port, like \
                         127.0.0.1:9300 or [::1]:9300",
                        text.get_ref()
                    ),
                )
            })?),
            None => None,
        };
        let global = match &raw.health {
            Some(health) => self.health_layer(health, "health", 0)?,
            None => HealthLayer::default(),
        };

        let mut vips: Vec<VipConfig> = Vec::with_capacity(raw.vip.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut endpoints: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
        let mut total_backends: u32 = 0;
        for (index, raw_vip) in raw.vip.iter().enumerate() {
            let vip = self.vip(
                index,
                raw_vip,
                &global,
                &mut names,
                &mut endpoints,
                &vips,
                &mut total_backends,
            )?;
            vips.push(vip);
        }

        // Maglev spreads M slots over N backends: it needs M much larger than N.
        if let Some((index, vip)) = vips
            .iter()
            .enumerate()
            .max_by_key(|(index, vip)| (vip.backends.len(), std::cmp::Reverse(*index)))
        {
            let needed = u64::from(RING_SLOTS_PER_BACKEND) * vip.backends.len() as u64;
            if u64::from(table_size) < needed {
                let hint = match u32::try_from(needed).ok().and_then(next_prime) {
                    Some(prime) => format!("{prime}"),
                    None => "a larger prime".to_owned(),
                };
                let count = vip.backends.len();
                return Err(match &raw.table_size {
                    Some(size) => self.error(
                        size.span(),
                        "table_size",
                        format!(
                            "table_size {table_size} is too small for VIP {:?} with {count} \
                             backends: Maglev needs at least {RING_SLOTS_PER_BACKEND} × {count} \
                             = {needed} slots (try {hint})",
                            vip.name
                        ),
                    ),
                    None => self.error(
                        raw.vip[index].span(),
                        &format!("vip[{index}]"),
                        format!(
                            "VIP {:?} has {count} backends: the default table_size {table_size} \
                             is too small (Maglev needs at least {RING_SLOTS_PER_BACKEND} × \
                             {count} = {needed} slots): set table_size = {hint}",
                            vip.name
                        ),
                    ),
                });
            }
        }

        Ok(Config {
            interface,
            xdp_mode,
            tunnel_source,
            table_size,
            conntrack_size,
            state_dir,
            metrics,
            vips,
        })
    }

    fn interface(&self, interface: &Spanned<String>) -> Result<String> {
        let name = interface.get_ref();
        if name.is_empty() {
            return Err(self.error(interface.span(), "interface", "interface must not be empty"));
        }
        if name.len() > MAX_INTERFACE_NAME {
            return Err(self.error(
                interface.span(),
                "interface",
                format!("interface name {name:?} is longer than {MAX_INTERFACE_NAME} bytes"),
            ));
        }
        Ok(name.clone())
    }

    fn table_size(&self, size: &Spanned<u32>) -> Result<u32> {
        let value = *size.get_ref();
        if value < 2 {
            return Err(self.error(size.span(), "table_size", "table_size must be at least 2"));
        }
        if !is_prime(value) {
            let hint = match (next_prime(value), previous_prime(value)) {
                (Some(above), Some(below)) => format!("try {above} or {below}"),
                (None, Some(prime)) | (Some(prime), None) => format!("try {prime}"),
                (None, None) => unreachable!("there are primes below any u32 above 2"),
            };
            return Err(self.error(
                size.span(),
                "table_size",
                format!("{value} is not prime ({hint})"),
            ));
        }
        Ok(value)
    }

    fn tunnel_source(&self, addresses: &Spanned<RawAddresses>) -> Result<Vec<IpAddr>> {
        match addresses.get_ref() {
            RawAddresses::One(text) => Ok(vec![self.address(
                text,
                addresses.span(),
                "tunnel_source",
            )?]),
            RawAddresses::Many(list) => {
                if list.len() > 2 {
                    return Err(self.error(
                        list[2].span(),
                        "tunnel_source[2]",
                        format!(
                            "tunnel_source has {} addresses: give at most two, one IPv4 and one \
                             IPv6",
                            list.len()
                        ),
                    ));
                }
                let mut resolved: Vec<IpAddr> = Vec::with_capacity(list.len());
                for (index, text) in list.iter().enumerate() {
                    let key = format!("tunnel_source[{index}]");
                    let address = self.address(text.get_ref(), text.span(), &key)?;
                    if let Some(other) = resolved
                        .iter()
                        .find(|other| other.is_ipv4() == address.is_ipv4())
                    {
                        return Err(self.error(
                            text.span(),
                            &key,
                            format!(
                                "{address} and {other} are both {}: give at most one IPv4 and \
                                 one IPv6 address",
                                family(address)
                            ),
                        ));
                    }
                    resolved.push(address);
                }
                Ok(resolved)
            }
        }
    }

    fn address(&self, text: &str, span: Range<usize>, key: &str) -> Result<IpAddr> {
        text.parse()
            .map_err(|_| self.error(span, key, format!("invalid IP address {text:?}")))
    }

    /// One of `options` (by name), or the first option when `value` is missing.
    fn choice<T: Copy>(
        &self,
        value: Option<&Spanned<String>>,
        key: &str,
        options: &[(&str, T)],
    ) -> Result<T> {
        let Some(value) = value else {
            return Ok(options[0].1);
        };
        match options.iter().find(|(name, _)| name == value.get_ref()) {
            Some((_, choice)) => Ok(*choice),
            None => {
                let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
                let field = key.rsplit('.').next().unwrap_or(key);
                Err(self.error(
                    value.span(),
                    key,
                    format!(
                        "invalid {field} {:?}: expected one of {}",
                        value.get_ref(),
                        names.join(", ")
                    ),
                ))
            }
        }
    }

    fn health_layer(&self, raw: &RawHealth, prefix: &str, level: u8) -> Result<HealthLayer> {
        let duration = |value: &Option<Spanned<String>>, name: &str| -> Result<_> {
            let Some(value) = value else { return Ok(None) };
            let key = format!("{prefix}.{name}");
            let parsed = humantime::parse_duration(value.get_ref()).map_err(|error| {
                self.error(
                    value.span(),
                    &key,
                    format!("invalid duration {:?}: {error}", value.get_ref()),
                )
            })?;
            if parsed.is_zero() {
                return Err(self.error(value.span(), &key, format!("{name} must be above 0")));
            }
            Ok(Some(Located {
                value: parsed,
                span: value.span(),
                key,
                level,
            }))
        };
        let count = |value: &Option<Spanned<u32>>, name: &str| -> Result<_> {
            match value {
                Some(value) if *value.get_ref() == 0 => Err(self.error(
                    value.span(),
                    &format!("{prefix}.{name}"),
                    format!("{name} must be at least 1"),
                )),
                Some(value) => Ok(Some(*value.get_ref())),
                None => Ok(None),
            }
        };
        let port = match &raw.port {
            Some(port) if *port.get_ref() == 0 => {
                return Err(self.error(
                    port.span(),
                    &format!("{prefix}.port"),
                    "health port must not be 0",
                ))
            }
            Some(port) => Some(*port.get_ref()),
            None => None,
        };
        Ok(HealthLayer {
            interval: duration(&raw.interval, "interval")?,
            timeout: duration(&raw.timeout, "timeout")?,
            rise: count(&raw.rise, "rise")?,
            fall: count(&raw.fall, "fall")?,
            port,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn vip(
        &self,
        index: usize,
        raw: &Spanned<RawVip>,
        global: &HealthLayer,
        names: &mut HashMap<String, usize>,
        endpoints: &mut HashMap<(IpAddr, u16, Protocol), usize>,
        vips: &[VipConfig],
        total_backends: &mut u32,
    ) -> Result<VipConfig> {
        let path = format!("vip[{index}]");
        if index >= MAX_VIPS as usize {
            return Err(self.error(
                raw.span(),
                &path,
                format!("too many VIPs: at most {MAX_VIPS}"),
            ));
        }
        let vip = raw.get_ref();

        let name = vip.name.get_ref();
        let name_key = format!("{path}.name");
        if name.is_empty() {
            return Err(self.error(vip.name.span(), &name_key, "VIP name must not be empty"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(self.error(
                vip.name.span(),
                &name_key,
                format!("invalid VIP name {name:?}: use only letters, digits, '_', '.' and '-'"),
            ));
        }
        if let Some(first) = names.insert(name.clone(), index) {
            return Err(self.error(
                vip.name.span(),
                &name_key,
                format!("duplicate VIP name {name:?} (also vip[{first}].name)"),
            ));
        }

        let address_key = format!("{path}.address");
        let address = self.address(vip.address.get_ref(), vip.address.span(), &address_key)?;
        let port = *vip.port.get_ref();
        let protocol = self.choice(
            vip.protocol.as_ref(),
            &format!("{path}.protocol"),
            &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)],
        )?;
        if let Some(first) = endpoints.insert((address, port, protocol), index) {
            return Err(self.error(
                vip.address.span(),
                &address_key,
                format!(
                    "VIP {name:?} has the same address, port and protocol ({}/{}) as VIP {:?} \
                     (vip[{first}])",
                    SocketAddr::new(address, port),
                    protocol_name(protocol),
                    vips[first].name
                ),
            ));
        }
        let forward = self.choice(
            vip.forward.as_ref(),
            &format!("{path}.forward"),
            &[("dsr", ForwardMode::Dsr), ("tunnel", ForwardMode::Tunnel)],
        )?;
        let on_all_down = self.choice(
            vip.on_all_down.as_ref(),
            &format!("{path}.on_all_down"),
            &[
                ("drop", OnAllDown::Drop),
                ("fail-open", OnAllDown::FailOpen),
            ],
        )?;
        let vip_health = match &vip.health {
            Some(health) => {
                global.overlay(&self.health_layer(health, &format!("{path}.health"), 1)?)
            }
            None => global.clone(),
        };

        let mut backends: Vec<BackendConfig> = Vec::with_capacity(vip.backend.len());
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        for (backend_index, raw_backend) in vip.backend.iter().enumerate() {
            let backend_path = format!("{path}.backend[{backend_index}]");
            if *total_backends >= MAX_BACKENDS {
                return Err(self.error(
                    raw_backend.span(),
                    &backend_path,
                    format!("too many backends: at most {MAX_BACKENDS} in total over all VIPs"),
                ));
            }
            *total_backends += 1;
            let backend = raw_backend.get_ref();

            let address_key = format!("{backend_path}.address");
            let backend_address = self.address(
                backend.address.get_ref(),
                backend.address.span(),
                &address_key,
            )?;
            if let Some(first) = seen.insert(backend_address, backend_index) {
                return Err(self.error(
                    backend.address.span(),
                    &address_key,
                    format!("duplicate backend address {backend_address} (also {path}.backend[{first}])"),
                ));
            }
            if forward == ForwardMode::Dsr && backend_address.is_ipv4() != address.is_ipv4() {
                return Err(self.error(
                    backend.address.span(),
                    &address_key,
                    format!(
                        "backend {backend_address} is {} but VIP {name:?} is {}: dsr cannot \
                         change the address family: use forward = \"tunnel\"",
                        family(backend_address),
                        family(address)
                    ),
                ));
            }

            let weight = match &backend.weight {
                Some(weight) if *weight.get_ref() > MAX_WEIGHT => {
                    return Err(self.error(
                        weight.span(),
                        &format!("{backend_path}.weight"),
                        format!("weight must be between 0 and {MAX_WEIGHT}"),
                    ))
                }
                Some(weight) => *weight.get_ref(),
                None => DEFAULT_WEIGHT,
            };

            let merged = match &backend.health {
                Some(health) => vip_health.overlay(&self.health_layer(
                    health,
                    &format!("{backend_path}.health"),
                    2,
                )?),
                None => vip_health.clone(),
            };
            let health = self.resolve_health(&merged, port, || {
                self.error(
                    raw_backend.span(),
                    &backend_path,
                    format!(
                        "VIP {name:?} has port 0 (all ports): backend {backend_address} needs a \
                         health port (set port in [health], in the VIP's health or in the \
                         backend's health)"
                    ),
                )
            })?;

            backends.push(BackendConfig {
                address: backend_address,
                weight,
                health,
            });
        }
        if backends.is_empty() {
            return Err(self.error(
                raw.span(),
                &path,
                format!("VIP {name:?} has no backends (add a [[vip.backend]])"),
            ));
        }

        Ok(VipConfig {
            name: name.clone(),
            address,
            port,
            protocol,
            forward,
            on_all_down,
            backends,
        })
    }

    /// The settings of one backend from its merged layers; `no_port` is the error when neither
    /// a health port nor a VIP port (not 0) is set.
    fn resolve_health(
        &self,
        merged: &HealthLayer,
        vip_port: u16,
        no_port: impl FnOnce() -> ConfigError,
    ) -> Result<HealthSettings> {
        let interval = merged
            .interval
            .as_ref()
            .map_or(DEFAULT_HEALTH_INTERVAL, |interval| interval.value);
        let timeout = merged
            .timeout
            .as_ref()
            .map_or(DEFAULT_HEALTH_TIMEOUT, |timeout| timeout.value);
        if timeout > interval {
            // Blame the key set closest to the backend: it is the one that broke the pair.
            let blame_timeout = match (&merged.timeout, &merged.interval) {
                (Some(timeout), Some(interval)) => timeout.level >= interval.level,
                (Some(_), None) => true,
                _ => false,
            };
            let message = format!(
                "timeout {} is longer than interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            );
            let culprit = if blame_timeout {
                &merged.timeout
            } else {
                &merged.interval
            };
            // One of them is set: the defaults alone are consistent.
            let culprit = culprit.as_ref().expect("a set health key");
            return Err(self.error(culprit.span.clone(), &culprit.key, message));
        }
        let port = match merged.port {
            Some(port) => port,
            None if vip_port == 0 => return Err(no_port()),
            None => vip_port,
        };
        Ok(HealthSettings {
            interval,
            timeout,
            rise: merged.rise.unwrap_or(DEFAULT_HEALTH_RISE),
            fall: merged.fall.unwrap_or(DEFAULT_HEALTH_FALL),
            port,
        })
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn family(address: IpAddr) -> &'static str {
    if address.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The smallest prime at least `n`, if it fits a `u32`.
fn next_prime(n: u32) -> Option<u32> {
    (n.max(2)..=u32::MAX).find(|&candidate| is_prime(candidate))
}

/// The largest prime at most `n`, if any.
fn previous_prime(n: u32) -> Option<u32> {
    (2..=n).rev().find(|&candidate| is_prime(candidate))
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The key path (`vip[0].backend[2].address`) of the smallest key or value of the document
/// that contains `span`: the empty path for the document itself, `None` if the text does not
/// parse.
fn key_path_at(text: &str, span: &Range<usize>) -> Option<String> {
    let document = DeTable::parse(text).ok()?;
    let mut best: Option<(usize, String)> = None;
    if !span.is_empty() {
        visit_table(document.get_ref(), "", span, &mut best);
    }
    Some(best.map(|(_, path)| path).unwrap_or_default())
}

fn consider(
    node: Range<usize>,
    path: &str,
    span: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    if node.start <= span.start && span.end <= node.end {
        let length = node.end - node.start;
        if best
            .as_ref()
            .is_none_or(|(best_length, _)| length <= *best_length)
        {
            *best = Some((length, path.to_owned()));
        }
    }
}

fn visit_table(
    table: &DeTable<'_>,
    path: &str,
    span: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    for (key, value) in table {
        let key_path = join(path, key.get_ref());
        consider(key.span(), &key_path, span, best);
        visit_value(value, &key_path, span, best);
    }
}

fn visit_value(
    value: &Spanned<DeValue<'_>>,
    path: &str,
    span: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    consider(value.span(), path, span, best);
    match value.get_ref() {
        DeValue::Table(table) => visit_table(table, path, span, best),
        DeValue::Array(array) => {
            for (index, item) in array.iter().enumerate() {
                visit_value(item, &format!("{path}[{index}]"), span, best);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Config {
        parse(Path::new("test.toml"), text).unwrap_or_else(|error| panic!("{error}"))
    }

    fn error(text: &str) -> ConfigError {
        match parse(Path::new("test.toml"), text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(error) => error,
        }
    }

    /// Asserts the error's line, key and that its message contains `message`.
    #[track_caller]
    fn assert_error(text: &str, line: usize, key: &str, message: &str) -> ConfigError {
        let error = error(text);
        assert_eq!(error.file, Path::new("test.toml"), "{error}");
        assert_eq!(error.line, Some(line), "{error}");
        assert!(error.column.is_some(), "{error}");
        assert_eq!(error.key.as_deref(), Some(key), "{error}");
        assert!(
            error.message.contains(message),
            "{error}\nexpected: {message}"
        );
        error
    }

    const HEAD: &str = "interface = \"eth0\"\n";

    /// A config with one VIP `web` on 10.0.0.100:80 and one backend; `vip` and `backend` are
    /// extra lines for the VIP table and the backend table.
    fn one_vip(top: &str, vip: &str, backend: &str) -> String {
        format!(
            "{HEAD}{top}\n[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 80\n{vip}\n\
             [[vip.backend]]\naddress = \"10.0.0.11\"\n{backend}\n"
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const FULL: &str = r#"
interface = "eth0"
xdp_mode = "native"
tunnel_source = ["192.0.2.1", "2001:db8::1"]
table_size = 251
conntrack_size = 4096
state_dir = "/run/lb"
metrics = "127.0.0.1:9300"

[health]
interval = "2s"
timeout = "1s"
rise = 4
port = 8080

[[vip]]
name = "web"
address = "10.0.0.100"
port = 80
health = { timeout = "300ms", fall = 5 }

  [[vip.backend]]
  address = "10.0.0.11"

  [[vip.backend]]
  address = "10.0.0.12"
  weight = 0
  health = { interval = "1s", port = 8081 }

[[vip]]
name = "dns.v6"
address = "2001:db8::53"
port = 0
protocol = "udp"
forward = "tunnel"
on_all_down = "fail-open"

  [[vip.backend]]
  address = "192.168.0.1"
  weight = 10000

[[vip]]
name = "api_2"
address = "10.0.0.100"
port = 443

  [[vip.backend]]
  address = "10.0.0.11"
  weight = 3
  health = { port = 9000, rise = 1 }
"#;

    #[test]
    fn full_config() {
        let config = ok(FULL);
        let global = HealthSettings {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 4,
            fall: 3,
            port: 8080,
        };
        let web = HealthSettings {
            timeout: Duration::from_millis(300),
            fall: 5,
            ..global
        };
        let expected = Config {
            interface: "eth0".into(),
            xdp_mode: XdpModeSetting::Native,
            tunnel_source: vec![ip("192.0.2.1"), ip("2001:db8::1")],
            table_size: 251,
            conntrack_size: 4096,
            state_dir: "/run/lb".into(),
            metrics: Some("127.0.0.1:9300".parse().unwrap()),
            vips: vec![
                VipConfig {
                    name: "web".into(),
                    address: ip("10.0.0.100"),
                    port: 80,
                    protocol: Protocol::Tcp,
                    forward: ForwardMode::Dsr,
                    on_all_down: OnAllDown::Drop,
                    backends: vec![
                        BackendConfig {
                            address: ip("10.0.0.11"),
                            weight: 1,
                            health: web,
                        },
                        BackendConfig {
                            address: ip("10.0.0.12"),
                            weight: 0,
                            health: HealthSettings {
                                interval: Duration::from_secs(1),
                                port: 8081,
                                ..web
                            },
                        },
                    ],
                },
                VipConfig {
                    name: "dns.v6".into(),
                    address: ip("2001:db8::53"),
                    port: 0,
                    protocol: Protocol::Udp,
                    forward: ForwardMode::Tunnel,
                    on_all_down: OnAllDown::FailOpen,
                    backends: vec![BackendConfig {
                        address: ip("192.168.0.1"),
                        weight: 10000,
                        health: global,
                    }],
                },
                VipConfig {
                    name: "api_2".into(),
                    address: ip("10.0.0.100"),
                    port: 443,
                    protocol: Protocol::Tcp,
                    forward: ForwardMode::Dsr,
                    on_all_down: OnAllDown::Drop,
                    backends: vec![BackendConfig {
                        address: ip("10.0.0.11"),
                        weight: 3,
                        health: HealthSettings {
                            port: 9000,
                            rise: 1,
                            ..global
                        },
                    }],
                },
            ],
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn defaults() {
        let config = ok(&one_vip("", "", ""));
        assert_eq!(config.xdp_mode, XdpModeSetting::Auto);
        assert!(config.tunnel_source.is_empty());
        assert_eq!(config.table_size, 65537);
        assert_eq!(config.conntrack_size, DEFAULT_CONNTRACK_SIZE);
        assert_eq!(config.state_dir, Path::new("/sys/fs/bpf/lb"));
        assert_eq!(config.metrics, None);
        let vip = &config.vips[0];
        assert_eq!(
            (vip.protocol, vip.forward, vip.on_all_down),
            (Protocol::Tcp, ForwardMode::Dsr, OnAllDown::Drop)
        );
        assert_eq!(vip.backends[0].weight, 1);
        assert_eq!(
            vip.backends[0].health,
            HealthSettings {
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                rise: 2,
                fall: 3,
                port: 80,
            }
        );
    }

    #[test]
    fn minimal_config() {
        let config = ok("interface = \"eth0\"\n");
        assert_eq!(config.interface, "eth0");
        assert!(config.vips.is_empty());
        let config = ok("interface = \"eth0\"\ntunnel_source = \"2001:db8::1\"\n");
        assert_eq!(config.tunnel_source, vec![ip("2001:db8::1")]);
        // A backend of another family through a tunnel, and inline tables.
        let config = ok(&format!(
            "{HEAD}vip = [{{ name = \"a\", address = \"10.0.0.1\", port = 1, forward = \
             \"tunnel\", backend = [{{ address = \"2001:db8::2\" }}] }}]\n"
        ));
        assert_eq!(config.vips[0].backends[0].address, ip("2001:db8::2"));
    }

    #[test]
    fn display() {
        let error = ConfigError {
            file: "demo.toml".into(),
            line: Some(14),
            column: Some(11),
            key: Some("vip[1].backend[0].weight".into()),
            message: "weight must be between 0 and 10000".into(),
        };
        assert_eq!(
            error.to_string(),
            "demo.toml:14:11: vip[1].backend[0].weight: weight must be between 0 and 10000"
        );
        let error = ConfigError {
            line: Some(3),
            column: None,
            key: None,
            ..error
        };
        assert_eq!(
            error.to_string(),
            "demo.toml:3: weight must be between 0 and 10000"
        );
    }

    #[test]
    fn unreadable_file() {
        let error = load(Path::new("/nonexistent/demo.toml")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot read /nonexistent/demo.toml: No such file or directory"
        );
        assert_eq!((error.line, error.key), (None, None));
    }

    #[test]
    fn load_reads_the_file() {
        let path = std::env::temp_dir().join(format!("lb-config-{}.toml", std::process::id()));
        std::fs::write(&path, one_vip("", "", "weight = 20000")).unwrap();
        let error = load(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(error.file, path);
        assert_eq!(
            error.to_string(),
            format!(
                "{}:10:10: vip[0].backend[0].weight: weight must be between 0 and 10000",
                path.display()
            )
        );
    }

    #[test]
    fn syntax_error() {
        let error = error("interface = \"eth0\"\n[health\n");
        assert_eq!(error.line, Some(2));
        assert_eq!(error.column, Some(8));
        assert!(error.message.contains("expected `]`"), "{error}");
        assert!(error.to_string().starts_with("test.toml:2:8: "), "{error}");
    }

    #[test]
    fn type_errors() {
        assert_error(
            &format!("{HEAD}table_size = \"big\"\n"),
            2,
            "table_size",
            "invalid type",
        );
        assert_error(
            &one_vip("", "", "weight = -1"),
            10,
            "vip[0].backend[0].weight",
            "u32",
        );
        assert_error(
            &one_vip("", "", "health = { port = 70000 }"),
            10,
            "vip[0].backend[0].health.port",
            "u16",
        );
        assert_error(
            &format!("{HEAD}tunnel_source = 3\n"),
            2,
            "tunnel_source",
            "IP address",
        );
    }

    #[test]
    fn missing_keys() {
        assert_error(
            "table_size = 3\n",
            1,
            "interface",
            "missing field `interface`",
        );
        let error = assert_error(
            &format!("{HEAD}[[vip]]\nname = \"a\"\nport = 1\n"),
            2,
            "vip[0].address",
            "missing field `address`",
        );
        assert_eq!(error.column, Some(1));
        assert_error(
            &one_vip("", "", "").replace("address = \"10.0.0.11\"", "weight = 2"),
            8,
            "vip[0].backend[0].address",
            "missing field `address`",
        );
    }

    #[test]
    fn unknown_keys() {
        assert_error(
            &format!("{HEAD}bogus = 1\n"),
            2,
            "bogus",
            "unknown field `bogus`",
        );
        assert_error(
            &format!("{HEAD}[health]\nrize = 1\n"),
            3,
            "health.rize",
            "unknown field",
        );
        assert_error(
            &one_vip("", "protcol = \"udp\"", ""),
            7,
            "vip[0].protcol",
            "unknown field",
        );
        let error = assert_error(
            &one_vip("", "", "wieght = 2"),
            10,
            "vip[0].backend[0].wieght",
            "unknown field",
        );
        assert_eq!(error.column, Some(1));
        assert_error(
            &one_vip("", "health = { prot = 1 }", ""),
            7,
            "vip[0].health.prot",
            "unknown field",
        );
    }

    #[test]
    fn table_size_not_prime() {
        let error = assert_error(
            &format!("{HEAD}table_size = 65536\n"),
            2,
            "table_size",
            "65536 is not prime (try 65537 or 65521)",
        );
        assert_eq!(
            error.to_string(),
            "test.toml:2:14: table_size: 65536 is not prime (try 65537 or 65521)"
        );
    }

    #[test]
    fn table_size_too_small() {
        assert_error(
            &format!("{HEAD}table_size = 1\n"),
            2,
            "table_size",
            "at least 2",
        );
        let mut text = format!(
            "{HEAD}table_size = 29\n[[vip]]\nname = \"a\"\naddress = \"10.0.0.1\"\nport = 1\n"
        );
        for backend in 1..=3 {
            text.push_str(&format!(
                "[[vip.backend]]\naddress = \"10.0.1.{backend}\"\n"
            ));
        }
        assert_error(&text, 2, "table_size", "too small for VIP \"a\" with 3 backends: Maglev needs at least 10 × 3 = 30 slots (try 31)");
        ok(&text.replace("= 29", "= 31"));
    }

    #[test]
    fn default_table_size_too_small() {
        let mut text = format!("{HEAD}[[vip]]\nname = \"a\"\naddress = \"10.0.0.1\"\nport = 1\n");
        for backend in 0..6554 {
            text.push_str(&format!(
                "[[vip.backend]]\naddress = \"10.1.{}.{}\"\n",
                backend / 256,
                backend % 256
            ));
        }
        assert_error(
            &text,
            2,
            "vip[0]",
            "the default table_size 65537 is too small",
        );
    }

    #[test]
    fn conntrack_size_too_small() {
        assert_error(
            &format!("{HEAD}conntrack_size = 1023\n"),
            2,
            "conntrack_size",
            "at least 1024",
        );
        ok(&format!("{HEAD}conntrack_size = 1024\n"));
    }

    #[test]
    fn state_dir_relative() {
        assert_error(
            &format!("{HEAD}state_dir = \"lb\"\n"),
            2,
            "state_dir",
            "absolute path",
        );
    }

    #[test]
    fn interface_empty() {
        assert_error("interface = \"\"\n", 1, "interface", "must not be empty");
        assert_error(
            "interface = \"a-very-long-interface\"\n",
            1,
            "interface",
            "longer than 15",
        );
    }

    #[test]
    fn too_many_vips() {
        let mut text = HEAD.to_owned();
        for vip in 0..=MAX_VIPS {
            text.push_str(&format!(
                "[[vip]]\nname = \"v{vip}\"\naddress = \"10.0.0.1\"\nport = {}\nbackend = [{{ address = \"10.0.1.1\" }}]\n",
                vip + 1
            ));
        }
        let line = 2 + 5 * MAX_VIPS as usize;
        assert_error(&text, line, "vip[1024]", "too many VIPs: at most 1024");
    }

    #[test]
    fn too_many_backends() {
        let mut text = HEAD.to_owned();
        for vip in 0..17 {
            text.push_str(&format!(
                "[[vip]]\nname = \"v{vip}\"\naddress = \"10.0.0.1\"\nport = {}\n",
                vip + 1
            ));
            for backend in 0..1000 {
                text.push_str(&format!(
                    "[[vip.backend]]\naddress = \"10.1.{}.{}\"\n",
                    backend / 256,
                    backend % 256
                ));
            }
        }
        let line = 2 + 16 * 2004 + 4 + 384 * 2;
        assert_error(
            &text,
            line,
            "vip[16].backend[384]",
            "too many backends: at most 16384",
        );
    }

    #[test]
    fn vip_name() {
        assert_error(
            &one_vip("", "", "").replace("\"web\"", "\"\""),
            4,
            "vip[0].name",
            "VIP name must not be empty",
        );
        assert_error(
            &one_vip("", "", "").replace("\"web\"", "\"we b\""),
            4,
            "vip[0].name",
            "invalid VIP name \"we b\"",
        );
    }

    #[test]
    fn duplicate_vip_name() {
        let text = format!(
            "{}[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 81\n",
            one_vip("", "", "")
        );
        assert_error(
            &text,
            12,
            "vip[1].name",
            "duplicate VIP name \"web\" (also vip[0].name)",
        );
    }

    #[test]
    fn duplicate_vip() {
        let text = format!(
            "{}[[vip]]\nname = \"web2\"\naddress = \"10.0.0.100\"\nport = 80\nprotocol = \"tcp\"\n",
            one_vip("", "", "")
        );
        assert_error(
            &text,
            13,
            "vip[1].address",
            "VIP \"web2\" has the same address, port and protocol (10.0.0.100:80/tcp) as VIP \"web\" (vip[0])",
        );
        // Another protocol is another VIP.
        let text = format!(
            "{}[[vip]]\nname = \"web2\"\naddress = \"10.0.0.100\"\nport = 80\nprotocol = \"udp\"\nbackend = [{{ address = \"10.0.0.1\" }}]\n",
            one_vip("", "", "")
        );
        ok(&text);
    }

    #[test]
    fn duplicate_backend() {
        let text = format!(
            "{}[[vip.backend]]\naddress = \"10.0.0.11\"\n",
            one_vip("", "", "")
        );
        assert_error(
            &text,
            12,
            "vip[0].backend[1].address",
            "duplicate backend address 10.0.0.11 (also vip[0].backend[0])",
        );
    }

    #[test]
    fn vip_without_backends() {
        let text = format!("{HEAD}[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 80\n");
        assert_error(&text, 2, "vip[0]", "VIP \"web\" has no backends");
    }

    #[test]
    fn weight_too_large() {
        let error = assert_error(
            &one_vip("", "", "weight = 10001"),
            10,
            "vip[0].backend[0].weight",
            "weight must be between 0 and 10000",
        );
        assert_eq!(error.column, Some(10));
    }

    #[test]
    fn dsr_family() {
        let text = one_vip("", "", "").replace("10.0.0.11", "2001:db8::11");
        assert_error(
            &text,
            9,
            "vip[0].backend[0].address",
            "dsr cannot change the address family: use forward = \"tunnel\"",
        );
        ok(&one_vip("", "forward = \"tunnel\"", "").replace("10.0.0.11", "2001:db8::11"));
    }

    #[test]
    fn port_zero_needs_a_health_port() {
        let text = one_vip("", "", "").replace("port = 80", "port = 0");
        assert_error(
            &text,
            8,
            "vip[0].backend[0]",
            "VIP \"web\" has port 0 (all ports): backend 10.0.0.11 needs a health port",
        );
        // From any level.
        let text = one_vip("[health]\nport = 1", "", "").replace("port = 80", "port = 0");
        assert_eq!(ok(&text).vips[0].backends[0].health.port, 1);
        let text = one_vip("", "health = { port = 2 }", "").replace("port = 80", "port = 0");
        assert_eq!(ok(&text).vips[0].backends[0].health.port, 2);
        let text = one_vip("", "", "health = { port = 3 }").replace("port = 80", "port = 0");
        assert_eq!(ok(&text).vips[0].backends[0].health.port, 3);
    }

    #[test]
    fn health_values() {
        assert_error(
            &one_vip("[health]\ninterval = \"0s\"", "", ""),
            3,
            "health.interval",
            "interval must be above 0",
        );
        assert_error(
            &one_vip("", "health = { timeout = \"0ms\" }", ""),
            7,
            "vip[0].health.timeout",
            "timeout must be above 0",
        );
        assert_error(
            &one_vip("", "", "health = { rise = 0 }"),
            10,
            "vip[0].backend[0].health.rise",
            "rise must be at least 1",
        );
        assert_error(
            &one_vip("[health]\nfall = 0", "", ""),
            3,
            "health.fall",
            "fall must be at least 1",
        );
        assert_error(
            &one_vip("[health]\nport = 0", "", ""),
            3,
            "health.port",
            "health port must not be 0",
        );
        assert_error(
            &one_vip("[health]\ninterval = \"1 fortnight\"", "", ""),
            3,
            "health.interval",
            "invalid duration \"1 fortnight\"",
        );
    }

    #[test]
    fn timeout_longer_than_interval() {
        assert_error(
            &one_vip("[health]\ntimeout = \"2s\"", "", ""),
            3,
            "health.timeout",
            "timeout 2s is longer than interval 1s",
        );
        // The key closest to the backend is blamed.
        assert_error(
            &one_vip(
                "[health]\ntimeout = \"800ms\"",
                "",
                "health = { interval = \"500ms\" }",
            ),
            11,
            "vip[0].backend[0].health.interval",
            "timeout 800ms is longer than interval 500ms",
        );
        assert_error(
            &one_vip(
                "[health]\ninterval = \"5s\"",
                "health = { timeout = \"6s\" }",
                "",
            ),
            8,
            "vip[0].health.timeout",
            "timeout 6s is longer than interval 5s",
        );
        ok(&one_vip("[health]\ninterval = \"500ms\"", "", ""));
    }

    #[test]
    fn tunnel_source() {
        assert_error(
            &format!("{HEAD}tunnel_source = [\"192.0.2.1\", \"2001:db8::1\", \"192.0.2.2\"]\n"),
            2,
            "tunnel_source[2]",
            "tunnel_source has 3 addresses: give at most two, one IPv4 and one IPv6",
        );
        let error = assert_error(
            &format!("{HEAD}tunnel_source = [\"192.0.2.1\", \"192.0.2.2\"]\n"),
            2,
            "tunnel_source[1]",
            "192.0.2.2 and 192.0.2.1 are both IPv4",
        );
        assert_eq!(error.column, Some(31));
        assert_error(
            &format!("{HEAD}tunnel_source = \"192.0.2\"\n"),
            2,
            "tunnel_source",
            "invalid IP address \"192.0.2\"",
        );
        assert!(ok(&format!("{HEAD}tunnel_source = []\n"))
            .tunnel_source
            .is_empty());
    }

    #[test]
    fn invalid_enums() {
        assert_error(
            &format!("{HEAD}xdp_mode = \"fast\"\n"),
            2,
            "xdp_mode",
            "invalid xdp_mode \"fast\": expected one of auto, native, generic",
        );
        assert_error(
            &one_vip("", "protocol = \"sctp\"", ""),
            7,
            "vip[0].protocol",
            "invalid protocol \"sctp\": expected one of tcp, udp",
        );
        assert_error(
            &one_vip("", "forward = \"nat\"", ""),
            7,
            "vip[0].forward",
            "expected one of dsr, tunnel",
        );
        assert_error(
            &one_vip("", "on_all_down = \"open\"", ""),
            7,
            "vip[0].on_all_down",
            "expected one of drop, fail-open",
        );
    }

    #[test]
    fn invalid_addresses() {
        assert_error(
            &format!("{HEAD}metrics = \"localhost:9300\"\n"),
            2,
            "metrics",
            "invalid socket address \"localhost:9300\"",
        );
        assert_error(
            &one_vip("", "", "").replace("10.0.0.100", "10.0.0"),
            5,
            "vip[0].address",
            "invalid IP address \"10.0.0\"",
        );
        assert_error(
            &one_vip("", "", "").replace("10.0.0.11", "backend1"),
            9,
            "vip[0].backend[0].address",
            "invalid IP address \"backend1\"",
        );
    }

    #[test]
    fn first_error_wins() {
        let text = one_vip("table_size = 4", "", "weight = 20000");
        assert_error(&text, 2, "table_size", "4 is not prime (try 5 or 3)");
    }
}
