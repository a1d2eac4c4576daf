//! Health settings in layers: `[health]`, then a VIP's `health`, then a backend's `health`;
//! each layer overrides the keys it sets, and each backend gets fully resolved settings.

use std::{ops::Range, time::Duration};

use toml::Spanned;

use super::{
    raw::RawHealth,
    resolve::{Ctx, Result},
    ConfigError, HealthSettings, DEFAULT_HEALTH_FALL, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_RISE,
    DEFAULT_HEALTH_TIMEOUT,
};

/// A value from the file with where it came from.
#[derive(Clone)]
pub(super) struct Located<T> {
    value: T,
    span: Range<usize>,
    key: String,
    /// 0: `[health]`, 1: the VIP's `health`, 2: the backend's `health`.
    level: u8,
}

/// The health keys set at one level (or, once merged, at any level up to it).
#[derive(Clone, Default)]
pub(super) struct HealthLayer {
    interval: Option<Located<Duration>>,
    timeout: Option<Located<Duration>>,
    rise: Option<u32>,
    fall: Option<u32>,
    port: Option<u16>,
}

impl HealthLayer {
    /// `self` with the keys set in `over` replaced.
    pub(super) fn overlay(&self, over: &HealthLayer) -> HealthLayer {
        HealthLayer {
            interval: over.interval.clone().or_else(|| self.interval.clone()),
            timeout: over.timeout.clone().or_else(|| self.timeout.clone()),
            rise: over.rise.or(self.rise),
            fall: over.fall.or(self.fall),
            port: over.port.or(self.port),
        }
    }
}

impl Ctx<'_> {
    pub(super) fn health_layer(
        &self,
        raw: &RawHealth,
        prefix: &str,
        level: u8,
    ) -> Result<HealthLayer> {
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

    /// The settings of one backend from its merged layers; `no_port` is the error when neither
    /// a health port nor a VIP port (not 0) is set.
    pub(super) fn resolve_health(
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
