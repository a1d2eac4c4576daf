//! Validation of the whole file: top-level keys here, each VIP in [`super::vip`], health
//! layers in [`super::health`]. Every error names the file, the line, the key and what to do.

use std::{
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
};

use lb_common::{
    maglev::is_prime,
    maps::{DEFAULT_CONNTRACK_SIZE, DEFAULT_RING_SIZE},
};
use toml::Spanned;

use super::{
    error::{join, key_path_at, line_column},
    health::HealthLayer,
    raw::{RawAddresses, RawConfig},
    vip::{Seen, VipDefaults},
    Config, ConfigError, ConntrackConfig, FixedConfig, LiveConfig, VipConfig, DEFAULT_STATE_DIR,
    MAX_INTERFACE_NAME, MIN_CONNTRACK_SIZE, RING_SLOTS_PER_BACKEND,
};
use crate::datapath::AttachMode;

/// An option of an enum-valued key: its names, in the order an error lists them, the default
/// first.
pub(super) trait Choice: Copy + 'static {
    /// Every value.
    fn all() -> &'static [Self];
    /// The value's name in the file.
    fn name(self) -> &'static str;
}

macro_rules! choice {
    ($($type:ty),+) => {$(
        impl Choice for $type {
            fn all() -> &'static [Self] {
                &<$type>::ALL
            }
            fn name(self) -> &'static str {
                <$type>::name(self)
            }
        }
    )+};
}

choice!(
    AttachMode,
    lb_common::maps::Protocol,
    lb_common::maps::ForwardMode,
    super::OnAllDown,
    super::Balance
);

/// The file being validated, for locating errors.
pub(super) struct Ctx<'a> {
    /// Its path (only for messages).
    pub file: &'a Path,
    /// Its text.
    pub text: &'a str,
}

pub(super) type Result<T, E = ConfigError> = std::result::Result<T, E>;

impl Ctx<'_> {
    /// An error at byte offsets `span` of the text.
    pub(super) fn error(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
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
    pub(super) fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
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
    pub(super) fn resolve(&self, raw: RawConfig) -> Result<Config> {
        let interface = self.interface(&raw.interface)?;
        let xdp_mode: AttachMode = self.choice(raw.xdp_mode.as_ref(), "xdp_mode")?;
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
        let conntrack = match &raw.conntrack {
            Some(conntrack) => self.conntrack(conntrack)?,
            None => ConntrackConfig::default(),
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
        let announce = match &raw.announce {
            Some(announce) => Some(self.announce(announce)?),
            None => None,
        };
        let defaults = VipDefaults {
            health: match &raw.health {
                Some(health) => self.health_layer(health, "health", 0)?,
                None => HealthLayer::default(),
            },
            announce: announce.is_some(),
        };

        let mut vips: Vec<VipConfig> = Vec::with_capacity(raw.vip.len());
        let mut seen = Seen::default();
        for (index, raw_vip) in raw.vip.iter().enumerate() {
            let vip = self.vip(index, raw_vip, &defaults, &mut seen, &vips)?;
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
            fixed: FixedConfig {
                interface,
                xdp_mode,
                conntrack_size,
                state_dir,
                metrics,
            },
            live: LiveConfig {
                tunnel_source,
                table_size,
                conntrack,
                announce,
                vips,
            },
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

    pub(super) fn address(&self, text: &str, span: Range<usize>, key: &str) -> Result<IpAddr> {
        text.parse()
            .map_err(|_| self.error(span, key, format!("invalid IP address {text:?}")))
    }

    /// One of `T`'s values (by name), or its first (the default) when `value` is missing.
    pub(super) fn choice<T: Choice>(
        &self,
        value: Option<&Spanned<String>>,
        key: &str,
    ) -> Result<T> {
        let Some(value) = value else {
            return Ok(T::all()[0]);
        };
        match T::all()
            .iter()
            .find(|choice| choice.name() == value.get_ref())
        {
            Some(choice) => Ok(*choice),
            None => {
                let names: Vec<&str> = T::all().iter().map(|choice| choice.name()).collect();
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
}

pub(super) fn family(address: IpAddr) -> &'static str {
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
