//! Health settings in layers: `[health]`, then a VIP's `health`, then a backend's `health`;
//! each layer overrides the keys it sets, and each backend gets fully resolved settings.

use std::{ops::Range, time::Duration};

use toml::Spanned;

use super::{
    raw::RawHealth,
    resolve::{Ctx, Result},
    CheckKind, CheckTarget, ConfigError, HealthSettings, HttpCheck, DEFAULT_HEALTH_FALL,
    DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_RISE, DEFAULT_HEALTH_TIMEOUT, DEFAULT_HTTP_PATH,
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

/// A `type` as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KindName {
    Tcp,
    TcpConnect,
    Http,
}

/// The health keys set at one level (or, once merged, at any level up to it).
#[derive(Clone, Default)]
pub(super) struct HealthLayer {
    interval: Option<Located<Duration>>,
    timeout: Option<Located<Duration>>,
    rise: Option<u32>,
    fall: Option<u32>,
    port: Option<u16>,
    /// `type`.
    kind: Option<KindName>,
    path: Option<String>,
    host: Option<String>,
    expect: Option<Vec<u16>>,
    slow_start: Option<Duration>,
    target: Option<CheckTarget>,
    /// The first HTTP-only key set (`path`, `host`, `expect`), for the error when `type` is
    /// never set.
    http_key: Option<Located<()>>,
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
            kind: over.kind.or(self.kind),
            path: over.path.clone().or_else(|| self.path.clone()),
            host: over.host.clone().or_else(|| self.host.clone()),
            expect: over.expect.clone().or_else(|| self.expect.clone()),
            slow_start: over.slow_start.or(self.slow_start),
            target: over.target.or(self.target),
            http_key: over.http_key.clone().or_else(|| self.http_key.clone()),
        }
    }
}

/// Whether `text` is safe in an HTTP request line or header: printable ASCII without spaces.
fn is_header_text(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic())
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
        let kind = match &raw.kind {
            Some(kind) => match kind.get_ref().as_str() {
                "tcp" => Some(KindName::Tcp),
                "tcp-connect" => Some(KindName::TcpConnect),
                "http" => Some(KindName::Http),
                other => {
                    return Err(self.error(
                        kind.span(),
                        &format!("{prefix}.type"),
                        format!("invalid type {other:?}: expected one of tcp, tcp-connect, http"),
                    ))
                }
            },
            None => None,
        };
        let path = match &raw.path {
            Some(path) if !path.get_ref().starts_with('/') || !is_header_text(path.get_ref()) => {
                return Err(self.error(
                    path.span(),
                    &format!("{prefix}.path"),
                    format!(
                        "invalid path {:?}: it must start with '/' and hold no spaces or control \
                         characters (percent-encode them)",
                        path.get_ref()
                    ),
                ))
            }
            Some(path) => Some(path.get_ref().clone()),
            None => None,
        };
        let host = match &raw.host {
            Some(host) if !is_header_text(host.get_ref()) => {
                return Err(self.error(
                    host.span(),
                    &format!("{prefix}.host"),
                    format!(
                        "invalid host {:?}: a host name (and port) without spaces",
                        host.get_ref()
                    ),
                ))
            }
            Some(host) => Some(host.get_ref().clone()),
            None => None,
        };
        let expect = match &raw.expect {
            Some(codes) if codes.get_ref().is_empty() => {
                return Err(self.error(
                    codes.span(),
                    &format!("{prefix}.expect"),
                    "expect must list at least one status code (leave it out for any 2xx)",
                ))
            }
            Some(codes) => {
                for (index, code) in codes.get_ref().iter().enumerate() {
                    if !(100..=599).contains(code.get_ref()) {
                        return Err(self.error(
                            code.span(),
                            &format!("{prefix}.expect[{index}]"),
                            format!("{} is not an HTTP status code (100 to 599)", code.get_ref()),
                        ));
                    }
                }
                Some(codes.get_ref().iter().map(|code| *code.get_ref()).collect())
            }
            None => None,
        };
        let slow_start = match &raw.slow_start {
            Some(value) => Some(humantime::parse_duration(value.get_ref()).map_err(|error| {
                self.error(
                    value.span(),
                    &format!("{prefix}.slow_start"),
                    format!("invalid duration {:?}: {error}", value.get_ref()),
                )
            })?),
            None => None,
        };
        let target = match &raw.target {
            Some(target) => match target.get_ref().as_str() {
                "vip" => Some(CheckTarget::Vip),
                "backend" => Some(CheckTarget::Backend),
                other => {
                    return Err(self.error(
                        target.span(),
                        &format!("{prefix}.target"),
                        format!("invalid target {other:?}: expected one of vip, backend"),
                    ))
                }
            },
            None => None,
        };
        let http_key = [
            ("path", raw.path.as_ref().map(Spanned::span)),
            ("host", raw.host.as_ref().map(Spanned::span)),
            ("expect", raw.expect.as_ref().map(Spanned::span)),
        ]
        .into_iter()
        .find_map(|(name, span)| {
            Some(Located {
                value: (),
                span: span?,
                key: format!("{prefix}.{name}"),
                level,
            })
        });
        Ok(HealthLayer {
            interval: duration(&raw.interval, "interval")?,
            timeout: duration(&raw.timeout, "timeout")?,
            rise: count(&raw.rise, "rise")?,
            fall: count(&raw.fall, "fall")?,
            port,
            kind,
            path,
            host,
            expect,
            slow_start,
            target,
            http_key,
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
        let check = match (merged.kind, &merged.http_key) {
            (Some(KindName::Http), _) => CheckKind::Http(HttpCheck {
                path: merged
                    .path
                    .clone()
                    .unwrap_or_else(|| DEFAULT_HTTP_PATH.to_owned()),
                host: merged.host.clone(),
                expect: merged.expect.clone().unwrap_or_default(),
            }),
            // An HTTP key with no `type` anywhere is a forgotten `type = "http"`: checking TCP
            // instead would leave a sick service its traffic.
            (None, Some(key)) => {
                return Err(self.error(
                    key.span.clone(),
                    &key.key,
                    "this key is for HTTP checks, but no `type` is set: add type = \"http\" \
                     (or type = \"tcp\" to keep TCP checks)",
                ))
            }
            (Some(KindName::TcpConnect), _) => CheckKind::TcpConnect,
            (Some(KindName::Tcp) | None, _) => CheckKind::Tcp,
        };
        Ok(HealthSettings {
            interval,
            timeout,
            rise: merged.rise.unwrap_or(DEFAULT_HEALTH_RISE),
            fall: merged.fall.unwrap_or(DEFAULT_HEALTH_FALL),
            port,
            check,
            slow_start: merged.slow_start.unwrap_or_default(),
            target: merged.target.unwrap_or_default(),
        })
    }
}
