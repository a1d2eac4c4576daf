//! What the agent keeps per VIP and per backend while it runs.

use std::net::IpAddr;

use lb_common::maps::VipKey;
use tokio::time::Instant;

use super::{
    admin::{ring_weight, AdminState, Ramp},
    availability::Availability,
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
    /// What the operator decided at run time.
    pub admin: AdminState,
    /// Who decided it (`uid 0 pid 1234 at ...`), if anyone.
    pub admin_by: Option<String>,
    /// When its slow start began (`None`: not ramping).
    pub ramp_since: Option<Instant>,
    /// Its next coming up starts a slow start (it was added at run time, or went down).
    pub ramp_pending: bool,
    /// Its health history.
    pub availability: Availability,
    /// Up to when `availability` counts.
    pub observed_at: Instant,
}

impl BackendRuntime {
    /// Its address.
    pub fn address(&self) -> IpAddr {
        self.config.address
    }

    /// Where its slow start stands at `now`, if it is in one.
    pub fn ramp(&self, now: Instant) -> Option<Ramp> {
        self.ramp_since.map(|since| Ramp {
            elapsed: now.saturating_duration_since(since),
            total: self.config.health.slow_start,
        })
    }

    /// What its datapath entry and ring membership depend on, at `now`.
    pub fn facts(&self, now: Instant) -> BackendFacts {
        BackendFacts {
            id: self.id,
            address: self.config.address,
            weight: ring_weight(self.config.weight, self.admin, self.ramp(now)),
            maintenance: self.admin == AdminState::Maint,
            health: self.health,
            next_hop: self.next_hop,
        }
    }

    /// Counts the time since the last call into its availability.
    pub fn observe(&mut self, now: Instant) {
        self.availability
            .advance(now.saturating_duration_since(self.observed_at));
        self.observed_at = now;
    }

    /// Starts a slow start at `now` if it has one configured (else it serves at full weight).
    pub fn start_ramp(&mut self, now: Instant) {
        self.ramp_pending = false;
        self.ramp_since = (!self.config.health.slow_start.is_zero()).then_some(now);
    }

    /// Ends a slow start that is over at `now`; returns whether it is still ramping.
    pub fn settle_ramp(&mut self, now: Instant) -> bool {
        if self.ramp(now).is_some_and(|ramp| ramp.done()) {
            self.ramp_since = None;
        }
        self.ramp_since.is_some()
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

    /// Its backends' facts at `now`, in configuration order.
    pub fn backend_facts(&self, now: Instant) -> Vec<BackendFacts> {
        self.backends.iter().map(|b| b.facts(now)).collect()
    }

    /// The backend with id `id`.
    pub fn backend_mut(&mut self, id: u32) -> Option<&mut BackendRuntime> {
        self.backends.iter_mut().find(|b| b.id == id)
    }
}
