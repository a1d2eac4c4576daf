//! Validation of `[announce]`: the routing table lb keeps VIP routes in, their protocol number
//! and the drain time of a graceful stop.

use toml::Spanned;

use super::{
    raw::RawAnnounce,
    resolve::{Ctx, Result},
    AnnounceConfig, DEFAULT_ANNOUNCE_DRAIN, DEFAULT_ANNOUNCE_PROTOCOL, DEFAULT_ANNOUNCE_TABLE,
};

/// Tables lb may own: not 0 (unspecified), 253 (`default`), 254 (`main`), 255 (`local`).
const TABLES: std::ops::RangeInclusive<u32> = 1..=252;
/// Protocol numbers lb may use: not 0-4 (unspec, redirect, kernel, boot, static).
const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=255;

impl Ctx<'_> {
    /// The validated `[announce]` table.
    pub(super) fn announce(&self, raw: &Spanned<RawAnnounce>) -> Result<AnnounceConfig> {
        let raw = raw.get_ref();
        let table = match &raw.table {
            Some(table) if !TABLES.contains(table.get_ref()) => {
                return Err(self.error(
                    table.span(),
                    "announce.table",
                    format!(
                        "table {} is not one lb may own: use 1 to 252 (253, 254 and 255 are the \
                         kernel's default, main and local tables)",
                        table.get_ref()
                    ),
                ))
            }
            Some(table) => *table.get_ref(),
            None => DEFAULT_ANNOUNCE_TABLE,
        };
        let protocol = match &raw.protocol {
            Some(protocol) if !PROTOCOLS.contains(protocol.get_ref()) => {
                return Err(self.error(
                    protocol.span(),
                    "announce.protocol",
                    format!(
                        "protocol {} is reserved or out of range: use 5 to 255 (0-4 are unspec, \
                         redirect, kernel, boot and static)",
                        protocol.get_ref()
                    ),
                ))
            }
            Some(protocol) => *protocol.get_ref() as u8,
            None => DEFAULT_ANNOUNCE_PROTOCOL,
        };
        let drain = match &raw.drain {
            Some(drain) => humantime::parse_duration(drain.get_ref()).map_err(|error| {
                self.error(
                    drain.span(),
                    "announce.drain",
                    format!("invalid duration {:?}: {error}", drain.get_ref()),
                )
            })?,
            None => DEFAULT_ANNOUNCE_DRAIN,
        };
        Ok(AnnounceConfig {
            table,
            protocol,
            drain,
        })
    }
}
