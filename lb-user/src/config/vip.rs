//! Validation of one `[[vip]]` table and its backends.

use std::{collections::HashMap, net::IpAddr, net::SocketAddr};

use lb_common::maps::{ForwardMode, Protocol, MAX_BACKENDS, MAX_VIPS};
use toml::Spanned;

use super::{
    health::HealthLayer,
    raw::RawVip,
    resolve::{family, Ctx, Result},
    BackendConfig, Balance, OnAllDown, VipConfig, DEFAULT_SECOND_CHANCE, DEFAULT_WEIGHT,
    MAX_WEIGHT,
};

/// What a VIP inherits from the top of the file.
pub(super) struct VipDefaults {
    /// The `[health]` layer.
    pub health: HealthLayer,
    /// Whether VIPs are announced unless they say otherwise (`[announce]` is present).
    pub announce: bool,
}

/// What earlier VIPs of the file took: names, endpoints, backend count.
#[derive(Default)]
pub(super) struct Seen {
    /// VIP names and their index.
    names: HashMap<String, usize>,
    /// (address, port, protocol) and the index of the VIP that has it.
    endpoints: HashMap<(IpAddr, u16, Protocol), usize>,
    /// Backends over all VIPs so far.
    backends: u32,
}

impl Ctx<'_> {
    /// Validates `vip[index]` against the VIPs before it (`vips`, and what they took in `seen`).
    pub(super) fn vip(
        &self,
        index: usize,
        raw: &Spanned<RawVip>,
        defaults: &VipDefaults,
        seen: &mut Seen,
        vips: &[VipConfig],
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
        if let Some(first) = seen.names.insert(name.clone(), index) {
            return Err(self.error(
                vip.name.span(),
                &name_key,
                format!("duplicate VIP name {name:?} (also vip[{first}].name)"),
            ));
        }

        let address_key = format!("{path}.address");
        let address = self.address(vip.address.get_ref(), vip.address.span(), &address_key)?;
        let port = *vip.port.get_ref();
        let protocol: Protocol = self.choice(vip.protocol.as_ref(), &format!("{path}.protocol"))?;
        if let Some(first) = seen.endpoints.insert((address, port, protocol), index) {
            return Err(self.error(
                vip.address.span(),
                &address_key,
                format!(
                    "VIP {name:?} has the same address, port and protocol ({}/{}) as VIP {:?} \
                     (vip[{first}])",
                    SocketAddr::new(address, port),
                    protocol.name(),
                    vips[first].name
                ),
            ));
        }
        let forward: ForwardMode = self.choice(vip.forward.as_ref(), &format!("{path}.forward"))?;
        let on_all_down: OnAllDown =
            self.choice(vip.on_all_down.as_ref(), &format!("{path}.on_all_down"))?;
        let balance: Balance = self.choice(vip.balance.as_ref(), &format!("{path}.balance"))?;
        let second_chance = match &vip.second_chance {
            Some(window) => humantime::parse_duration(window.get_ref()).map_err(|error| {
                self.error(
                    window.span(),
                    &format!("{path}.second_chance"),
                    format!("invalid duration {:?}: {error}", window.get_ref()),
                )
            })?,
            None => DEFAULT_SECOND_CHANCE,
        };
        let vip_health = match &vip.health {
            Some(health) => {
                defaults
                    .health
                    .overlay(&self.health_layer(health, &format!("{path}.health"), 1)?)
            }
            None => defaults.health.clone(),
        };

        let mut backends: Vec<BackendConfig> = Vec::with_capacity(vip.backend.len());
        let mut addresses: HashMap<IpAddr, usize> = HashMap::new();
        for (backend_index, raw_backend) in vip.backend.iter().enumerate() {
            let backend_path = format!("{path}.backend[{backend_index}]");
            if seen.backends >= MAX_BACKENDS {
                return Err(self.error(
                    raw_backend.span(),
                    &backend_path,
                    format!("too many backends: at most {MAX_BACKENDS} in total over all VIPs"),
                ));
            }
            seen.backends += 1;
            let backend = raw_backend.get_ref();

            let address_key = format!("{backend_path}.address");
            let backend_address = self.address(
                backend.address.get_ref(),
                backend.address.span(),
                &address_key,
            )?;
            if let Some(first) = addresses.insert(backend_address, backend_index) {
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

        // Without `[announce]` nothing is announced, whatever the VIP says.
        let announce = defaults.announce && vip.announce.as_ref().is_none_or(|a| *a.get_ref());
        Ok(VipConfig {
            name: name.clone(),
            address,
            port,
            protocol,
            forward,
            on_all_down,
            balance,
            second_chance,
            announce,
            backends,
        })
    }
}
