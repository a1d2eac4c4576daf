//! What the agent keeps per VIP and per backend while it runs.

use std::net::IpAddr;

use lb_common::maps::VipKey;
use tokio::time::Instant;

use super::{
    checkers::Checker,
    plan::Written,
    response_time::ResponseTime,
    rings::SharedRing,
    slow_start::{Ramp, SlowStart},
    target::{BackendFacts, VipFacts},
    weights::ring_weight,
};
use crate::{
    admin::AdminState,
    availability::Availability,
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
    /// Its slow start.
    pub slow_start: SlowStart,
    /// Its health history.
    pub availability: Availability,
    /// Up to when `availability` counts.
    pub observed_at: Instant,
    /// Its response time and the factor it gives its weight (`balance = "response-time"`).
    pub response: ResponseTime,
}

impl BackendRuntime {
    /// Its address.
    pub fn address(&self) -> IpAddr {
        self.config.address
    }

    /// Where its slow start stands at `now`, if it is in one.
    pub fn ramp(&self, now: Instant) -> Option<Ramp> {
        self.slow_start.ramp(now, self.config.health.slow_start)
    }

    /// What its datapath entry and ring membership depend on, at `now`.
    pub fn facts(&self, now: Instant) -> BackendFacts {
        BackendFacts {
            id: self.id,
            address: self.config.address,
            weight: self.response.scale(ring_weight(
                self.config.weight,
                self.admin,
                self.ramp(now),
            )),
            maintenance: self.admin == AdminState::Maint,
            health: self.health,
            next_hop: self.next_hop,
            answers_at_own_address: self.answers_at_own_address(),
        }
    }

    /// Down because its checks through the VIP fail while its own address answers them.
    pub fn answers_at_own_address(&self) -> bool {
        self.health == Health::Down
            && self
                .last
                .as_ref()
                .is_some_and(|r| r.own_address_answers == Some(true))
    }

    /// Counts the time since the last call into its availability.
    pub fn observe(&mut self, now: Instant) {
        self.availability
            .advance(now.saturating_duration_since(self.observed_at));
        self.observed_at = now;
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
    /// The ring this agent swapped in for it, if it knows its map.
    pub ring: Option<SwappedRing>,
    /// How many of its backends it keeps although down, none being up: they fail through the
    /// VIP but answer at their own addresses (see `target::held_by_own_address`).
    pub held: usize,
    /// What the ring in the datapath now was built from (not its slots: 256 KiB a VIP when
    /// every VIP's ring differs; the ring cache builds it again when a change needs it).
    pub current: Option<super::rings::RingShape>,
    /// The ring before its last change, kept for its second-chance window (tunnel VIPs).
    pub previous: Option<super::second_chance::PreviousRing>,
}

/// What the agent keeps of a ring it swapped into `RINGS` (see `crate::status::RingStatus`):
/// not its slots, which would be 256 KiB a VIP when every VIP's ring differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwappedRing {
    /// The kernel's id of its map.
    pub map_id: u32,
    /// Its slots.
    pub size: u32,
    /// The slots of each member, by address.
    pub slots: Vec<(IpAddr, u32)>,
}

impl SwappedRing {
    /// The summary of `ring`, swapped in as map `map_id`.
    pub fn of(map_id: u32, ring: &SharedRing) -> Self {
        Self {
            map_id,
            size: ring.size(),
            slots: ring.member_slots().collect(),
        }
    }

    /// The slots of backend `address`.
    pub fn slots_of(&self, address: IpAddr) -> u32 {
        self.slots
            .iter()
            .find(|(member, _)| *member == address)
            .map_or(0, |(_, slots)| *slots)
    }
}

impl VipRuntime {
    /// What its target depends on, besides its backends.
    pub fn facts(&self, ring_size: u32) -> VipFacts<'_> {
        VipFacts {
            id: self.id,
            key: self.key,
            name: &self.config.name,
            forward: self.config.forward,
            new_flows: self.config.balance.new_flow_rule(),
            on_all_down: self.config.on_all_down,
            ring_size,
        }
    }

    /// Its backends' facts at `now`, in configuration order.
    pub fn backend_facts(&self, now: Instant) -> Vec<BackendFacts> {
        self.backends.iter().map(|b| b.facts(now)).collect()
    }

    /// The average response time of each backend that counts for response-time balancing:
    /// up, of a `balance = "response-time"` VIP (`None` for the others).
    pub fn response_averages(&self) -> Vec<Option<std::time::Duration>> {
        let weighed = self.config.balance == crate::config::Balance::ResponseTime;
        self.backends
            .iter()
            .map(|b| {
                (weighed && b.health == Health::Up)
                    .then_some(b.response.average)
                    .flatten()
            })
            .collect()
    }

    /// The backend with id `id`.
    pub fn backend_mut(&mut self, id: u32) -> Option<&mut BackendRuntime> {
        self.backends.iter_mut().find(|b| b.id == id)
    }
}
