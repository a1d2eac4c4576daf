//! What the agent keeps per VIP and per backend while it runs.

use std::net::IpAddr;

use lb_common::maps::VipKey;

use super::{
    checkers::Checker,
    plan::Written,
    target::{BackendFacts, VipFacts},
};
use crate::{
    config::{BackendConfig, VipConfig},
    health::{CheckResult, Health},
    nexthop::NextHop,
};

/// One backend of a running VIP.
#[derive(Debug)]
pub struct BackendRuntime {
    /// Its id (index of `BACKENDS` and `BACKEND_STATS`).
    pub id: u32,
    /// Its configuration.
    pub config: BackendConfig,
    /// Its health from the checks.
    pub health: Health,
    /// The last check's result.
    pub last: Option<CheckResult>,
    /// When the health last changed (Unix milliseconds).
    pub last_change_unix_ms: u64,
    /// Where its packets go, once resolved.
    pub next_hop: Option<NextHop>,
    /// Its health checker.
    pub checker: Checker,
}

impl BackendRuntime {
    /// Its address.
    pub fn address(&self) -> IpAddr {
        self.config.address
    }

    /// What its datapath entry and ring membership depend on.
    pub fn facts(&self) -> BackendFacts {
        BackendFacts {
            id: self.id,
            address: self.config.address,
            weight: self.config.weight,
            health: self.health,
            next_hop: self.next_hop,
        }
    }
}

/// One running VIP.
#[derive(Debug)]
pub struct VipRuntime {
    /// Its id (index of `RINGS` and `VIP_STATS`).
    pub id: u32,
    /// Its `VIPS` key.
    pub key: VipKey,
    /// Its configuration.
    pub config: VipConfig,
    /// Its backends, in configuration order.
    pub backends: Vec<BackendRuntime>,
    /// What the datapath holds for it.
    pub written: Written,
}

impl VipRuntime {
    /// What its target depends on, besides its backends.
    pub fn facts(&self, ring_size: u32) -> VipFacts<'_> {
        VipFacts {
            id: self.id,
            key: self.key,
            name: &self.config.name,
            forward: self.config.forward,
            on_all_down: self.config.on_all_down,
            ring_size,
        }
    }

    /// Its backends' facts, in configuration order.
    pub fn backend_facts(&self) -> Vec<BackendFacts> {
        self.backends.iter().map(BackendRuntime::facts).collect()
    }

    /// The backend with id `id`.
    pub fn backend_mut(&mut self, id: u32) -> Option<&mut BackendRuntime> {
        self.backends.iter_mut().find(|b| b.id == id)
    }
}
