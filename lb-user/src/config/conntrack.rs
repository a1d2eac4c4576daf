//! Validation of `[conntrack]`: how long an idle flow stays protected from eviction, by kind.

use std::time::Duration;

use toml::Spanned;

use super::{
    raw::RawConntrack,
    resolve::{Ctx, Result},
    ConntrackConfig,
};

/// The longest idle timeout accepted: a day. Longer, a client that vanished without a FIN holds
/// its way for days.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl Ctx<'_> {
    /// The validated `[conntrack]` table.
    pub(super) fn conntrack(&self, raw: &RawConntrack) -> Result<ConntrackConfig> {
        let RawConntrack {
            tcp_timeout,
            udp_timeout,
            tcp_closing_timeout,
        } = raw;
        let defaults = ConntrackConfig::default();
        Ok(ConntrackConfig {
            tcp_timeout: self.idle_timeout(tcp_timeout, "tcp_timeout", defaults.tcp_timeout)?,
            udp_timeout: self.idle_timeout(udp_timeout, "udp_timeout", defaults.udp_timeout)?,
            tcp_closing_timeout: self.idle_timeout(
                tcp_closing_timeout,
                "tcp_closing_timeout",
                defaults.tcp_closing_timeout,
            )?,
        })
    }

    fn idle_timeout(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration> {
        let Some(value) = value else {
            return Ok(default);
        };
        let key = format!("conntrack.{key}");
        let text = value.get_ref();
        let duration = humantime::parse_duration(text).map_err(|error| {
            self.error(
                value.span(),
                &key,
                format!("invalid duration {text:?}: {error}"),
            )
        })?;
        if duration > MAX_IDLE_TIMEOUT {
            return Err(self.error(
                value.span(),
                &key,
                format!(
                    "{text:?} is longer than a day: an established flow whose client vanished \
                     would hold its place that long (use at most \"24h\")"
                ),
            ));
        }
        Ok(duration)
    }
}
