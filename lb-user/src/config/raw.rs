//! The file's structure as deserialized, with spans for error locations. Nothing here is
//! validated: [`super::resolve`] turns it into a [`super::Config`].

use std::fmt;

use serde::{
    de::{self, Deserializer, SeqAccess, Visitor},
    Deserialize,
};
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) interface: Spanned<String>,
    pub(super) xdp_mode: Option<Spanned<String>>,
    pub(super) tunnel_source: Option<Spanned<RawAddresses>>,
    pub(super) table_size: Option<Spanned<u32>>,
    pub(super) conntrack_size: Option<Spanned<u32>>,
    pub(super) conntrack: Option<RawConntrack>,
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) metrics: Option<Spanned<String>>,
    pub(super) announce: Option<Spanned<RawAnnounce>>,
    pub(super) health: Option<RawHealth>,
    #[serde(default)]
    pub(super) vip: Vec<Spanned<RawVip>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConntrack {
    pub(super) tcp_timeout: Option<Spanned<String>>,
    pub(super) udp_timeout: Option<Spanned<String>>,
    pub(super) tcp_closing_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnounce {
    pub(super) table: Option<Spanned<u32>>,
    pub(super) protocol: Option<Spanned<u32>>,
    pub(super) drain: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) rise: Option<Spanned<u32>>,
    pub(super) fall: Option<Spanned<u32>>,
    pub(super) port: Option<Spanned<u16>>,
    #[serde(rename = "type")]
    pub(super) kind: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) expect: Option<Spanned<Vec<Spanned<u16>>>>,
    pub(super) slow_start: Option<Spanned<String>>,
    pub(super) target: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub(super) name: Spanned<String>,
    pub(super) address: Spanned<String>,
    pub(super) port: Spanned<u16>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) forward: Option<Spanned<String>>,
    pub(super) on_all_down: Option<Spanned<String>>,
    pub(super) balance: Option<Spanned<String>>,
    pub(super) second_chance: Option<Spanned<String>>,
    pub(super) announce: Option<Spanned<bool>>,
    pub(super) health: Option<RawHealth>,
    #[serde(default)]
    pub(super) backend: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Spanned<String>,
    pub(super) weight: Option<Spanned<u32>>,
    pub(super) health: Option<RawHealth>,
}

/// `tunnel_source`: one address, or a list of them.
pub(super) enum RawAddresses {
    /// One address.
    One(String),
    /// A list.
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
