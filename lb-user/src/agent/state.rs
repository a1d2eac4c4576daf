//! What the agent knows of every VIP and backend (configuration, health, last check,
//! administrative state, slow start, availability) and the transitions that change it: a
//! health result ([`AgentState::on_health`]), an operator's command
//! ([`AgentState::on_admin`]), the slow-start clock ([`AgentState::on_tick`]) and a new
//! configuration ([`AgentState::on_config`]). Each says which VIPs must be rebuilt; the shell
//! (the event loop in `mod.rs`) rebuilds them (target, plan, apply) and does the I/O. Pure: no
//! kernel, no sockets, no clock of its own.
//!
//! A checker's key names its VIP and backend, so a health result goes straight to its backend.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    ops::{Deref, DerefMut},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_common::maps::{BackendState, VipKey};
use tokio::time::Instant;

use super::{checkers::CheckerKey, response_time, runtime::VipRuntime, state_change::StateChange};
use crate::{
    admin::AdminState,
    config::{LiveConfig, VipConfig},
    control::{AdminCommand, ControlRequest},
    health::{Health, HealthEvent},
};

/// Every VIP the agent runs, by key.
#[derive(Debug, Default)]
pub struct AgentState {
    vips: BTreeMap<VipKey, VipRuntime>,
}

impl Deref for AgentState {
    type Target = BTreeMap<VipKey, VipRuntime>;

    fn deref(&self) -> &Self::Target {
        &self.vips
    }
}

impl DerefMut for AgentState {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.vips
    }
}

impl<'a> IntoIterator for &'a AgentState {
    type Item = (&'a VipKey, &'a VipRuntime);
    type IntoIter = std::collections::btree_map::Iter<'a, VipKey, VipRuntime>;

    fn into_iter(self) -> Self::IntoIter {
        self.vips.iter()
    }
}

impl<'a> IntoIterator for &'a mut AgentState {
    type Item = (&'a VipKey, &'a mut VipRuntime);
    type IntoIter = std::collections::btree_map::IterMut<'a, VipKey, VipRuntime>;

    fn into_iter(self) -> Self::IntoIter {
        self.vips.iter_mut()
    }
}

/// What a health result did.
#[derive(Debug)]
pub struct Checked {
    /// The VIP of the backend checked.
    pub vip: VipKey,
    /// The backend.
    pub backend: IpAddr,
    /// How long the check took.
    pub latency: Duration,
    /// Its health changed: the line to log once the datapath reflects it (the VIP must be
    /// rebuilt).
    pub change: Option<StateChange>,
}

/// What an operator's command changed.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminOutcome {
    /// The backend already was in that state.
    Unchanged {
        /// Says so.
        message: String,
    },
    /// The backend's state changed: its VIP must be rebuilt.
    Changed {
        /// Its VIP.
        vip: VipKey,
        /// `backend ADDR of vip NAME: FROM -> TO`.
        message: String,
    },
}

/// How a new configuration's VIPs differ from the running ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// VIPs no longer configured.
    pub removed: Vec<VipKey>,
    /// VIPs configured anew.
    pub added: Vec<VipConfig>,
    /// VIPs whose configuration changed (or whose rings change size).
    pub changed: Vec<VipConfig>,
}

impl AgentState {
    /// Stores a check result taken from the queue at `received` (`now` on the agent's
    /// monotonic clock); `None` for a result of a replaced checker.
    pub fn on_health(
        &mut self,
        event: HealthEvent<CheckerKey>,
        now: Instant,
        received: SystemTime,
    ) -> Option<Checked> {
        let HealthEvent {
            key,
            result,
            transition,
            health,
            decided,
        } = event;
        let vip = self.vips.get_mut(&key.vip)?;
        let backend = vip
            .backends
            .iter_mut()
            .find(|b| b.id == key.backend && b.checker.token == key.token)?;
        backend.observe(now);
        let latency = result.latency;
        if result.ok {
            backend.response.observe(latency);
        }
        backend.last = Some(result);
        let was = std::mem::replace(&mut backend.health, health);
        let mut checked = Checked {
            vip: key.vip,
            backend: backend.address(),
            latency,
            change: None,
        };
        let Some(transition) = transition else {
            return Some(checked);
        };
        match health {
            Health::Up => {
                backend.availability.record(true);
                if was != Health::Up {
                    backend.slow_start = backend
                        .slow_start
                        .came_up(now, backend.config.health.slow_start);
                }
            }
            Health::Down => {
                backend.availability.record(false);
                backend.slow_start = backend.slow_start.went_down();
            }
            Health::Unknown => {}
        }
        backend.last_change_unix_ms = unix_ms(received);
        checked.change = Some(StateChange {
            vip: vip.config.name.clone(),
            backend: backend.address(),
            transition,
            decided,
            received,
        });
        Some(checked)
    }

    /// Applies an operator's `request`, recording `asked_by` (who, and when); `now`: when on
    /// the agent's monotonic clock (a backend returned to service ramps from then). `Err`:
    /// why it was refused.
    pub fn on_admin(
        &mut self,
        request: &ControlRequest,
        asked_by: String,
        now: Instant,
    ) -> Result<AdminOutcome, String> {
        let ControlRequest {
            command,
            vip: name,
            backend: address,
        } = request;
        let Some((key, vip)) = self.vips.iter_mut().find(|(_, v)| v.config.name == *name) else {
            let names: Vec<&str> = self.vips.values().map(|v| v.config.name.as_str()).collect();
            return Err(format!(
                "no vip named {name:?} (vips: {})",
                names.join(", ")
            ));
        };
        let Some(backend) = vip.backends.iter_mut().find(|b| b.address() == *address) else {
            let addresses: Vec<String> = vip
                .backends
                .iter()
                .map(|b| b.address().to_string())
                .collect();
            return Err(format!(
                "vip {name} has no backend {address} (backends: {})",
                addresses.join(", ")
            ));
        };
        let to = match command {
            AdminCommand::Drain => AdminState::Drain,
            AdminCommand::Disable => AdminState::Maint,
            AdminCommand::Enable => AdminState::Ready,
        };
        let from = backend.admin;
        if from == to {
            return Ok(AdminOutcome::Unchanged {
                message: format!("backend {address} of vip {name} is already {}", to.name()),
            });
        }
        backend.admin = to;
        backend.admin_by = Some(asked_by);
        backend.slow_start = if to == AdminState::Ready {
            // Back to its weight, ramping if healthy now, else on its recovery.
            backend.slow_start.returned_to_service(
                backend.health == Health::Up,
                now,
                backend.config.health.slow_start,
            )
        } else {
            backend.slow_start.taken_out_of_service()
        };
        Ok(AdminOutcome::Changed {
            vip: *key,
            message: format!(
                "backend {address} of vip {name}: {} -> {}",
                from.name(),
                to.name()
            ),
        })
    }

    /// Whether a VIP balances by least connections (the shell then counts loads).
    pub fn has_least_conn(&self) -> bool {
        self.vips
            .values()
            .any(|vip| vip.config.balance == crate::config::Balance::LeastConn)
    }

    /// What `LOADS` should hold for the backends of least-conn VIPs at `now`: their active
    /// flows (`active`, by backend id, as counted in the flow table) and their ring weights, 0
    /// for a backend that is not up (it is no candidate).
    pub fn least_conn_loads(
        &self,
        active: &std::collections::HashMap<u32, u64>,
        now: Instant,
    ) -> Vec<(u32, lb_common::least_conn::BackendLoad)> {
        self.vips
            .values()
            .filter(|vip| vip.config.balance == crate::config::Balance::LeastConn)
            .flat_map(|vip| vip.backend_facts(now))
            .map(|facts| {
                let up = super::target::datapath_state(&facts) == BackendState::Up;
                let load = lb_common::least_conn::BackendLoad {
                    active: active.get(&facts.id).copied().unwrap_or(0),
                    weight: if up { facts.weight } else { 0 },
                    _pad: 0,
                };
                (facts.id, load)
            })
            .collect()
    }

    /// Whether a backend is in its slow start (the shell then ticks).
    pub fn is_ramping(&self) -> bool {
        self.vips
            .values()
            .any(|vip| vip.backends.iter().any(|b| b.slow_start.is_ramping()))
    }

    /// The slow-start clock reads `now`: the VIPs with a backend ramping, whose rings grow
    /// (those whose ramp ends now get their full weight); ramps that are over end.
    pub fn on_tick(&mut self, now: Instant) -> Vec<VipKey> {
        let mut ramping = Vec::new();
        for (key, vip) in &mut self.vips {
            if vip.backends.iter().any(|b| b.slow_start.is_ramping()) {
                ramping.push(*key);
                for backend in &mut vip.backends {
                    backend.slow_start = backend
                        .slow_start
                        .settled(now, backend.config.health.slow_start);
                }
            }
        }
        ramping
    }

    /// Sets the response-time factors of every response-time VIP's backends that are up (the
    /// others keep their full weight, as do the backends of other VIPs): the VIPs whose factors
    /// changed, one log line each (or more, one per backend changed).
    pub fn on_response_times(&mut self) -> Vec<(VipKey, String)> {
        let mut changes = Vec::new();
        for (key, vip) in &mut self.vips {
            let averages = vip.response_averages();
            let fastest = response_time::fastest(averages.iter().copied());
            let factors = response_time::factors(&averages);
            for (backend, steps) in vip.backends.iter_mut().zip(factors) {
                if backend.response.steps == steps {
                    continue;
                }
                backend.response.steps = steps;
                let why = backend
                    .response
                    .reason(fastest)
                    .unwrap_or_else(|| "full weight".to_owned());
                changes.push((
                    *key,
                    format!(
                        "backend {} of vip {}: {why}",
                        backend.address(),
                        vip.config.name
                    ),
                ));
            }
        }
        changes
    }

    /// How `new` differs from the running VIPs (`running`: the configuration in force): VIPs
    /// removed, added, and changed, a table size change changing every VIP.
    pub fn on_config(&self, running: &LiveConfig, new: &LiveConfig) -> ConfigDiff {
        let table_size_changed = new.table_size != running.table_size;
        let wanted: BTreeSet<VipKey> = new.vips.iter().map(VipConfig::key).collect();
        let mut diff = ConfigDiff {
            removed: self
                .vips
                .keys()
                .filter(|key| !wanted.contains(key))
                .copied()
                .collect(),
            ..ConfigDiff::default()
        };
        for config in &new.vips {
            match self.vips.get(&config.key()) {
                None => diff.added.push(config.clone()),
                Some(vip) if vip.config == *config && !table_size_changed => {}
                Some(_) => diff.changed.push(config.clone()),
            }
        }
        diff
    }
}

/// Milliseconds since the Unix epoch at `time`.
fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use lb_common::maps::{MAX_BACKENDS, MAX_VIPS};

    use super::*;
    use crate::{
        agent::{checkers::Checkers, ids::Ids, reload::start_backend, slow_start::SlowStart},
        config::Config,
        health::{CheckResult, Transition},
        records::Records,
    };

    /// Two VIPs (`web`, `api`) sharing backends 10.0.0.11 and 10.0.0.12, slow start 30 s.
    fn config(extra_vip: &str) -> Config {
        let text = format!(
            "interface = \"eth0\"\n[health]\nport = 9\ninterval = \"1h\"\nslow_start = \"30s\"\n\
             [[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 80\n\
             [[vip.backend]]\naddress = \"10.0.0.11\"\n[[vip.backend]]\naddress = \"10.0.0.12\"\n\
             [[vip]]\nname = \"api\"\naddress = \"10.0.0.101\"\nport = 80\n\
             [[vip.backend]]\naddress = \"10.0.0.11\"\n[[vip.backend]]\naddress = \"10.0.0.12\"\n\
             {extra_vip}"
        );
        crate::config::parse(Path::new("t.toml"), &text).expect("config")
    }

    /// The state of `config`'s VIPs, their backends just added (`added`: at run time).
    fn state(config: &Config, checkers: &mut Checkers, added: bool) -> AgentState {
        let mut ids = Ids::new(MAX_VIPS, MAX_BACKENDS);
        let mut state = AgentState::default();
        for vip in &config.live.vips {
            let key = vip.key();
            let (id, written) = ids.vip(&key).expect("vip id");
            let backends = vip
                .backends
                .iter()
                .map(|b| {
                    start_backend(
                        &mut ids,
                        checkers,
                        &Records::default(),
                        (&key, vip),
                        b.clone(),
                        added,
                    )
                    .expect("backend")
                })
                .collect();
            state.insert(
                key,
                VipRuntime {
                    id,
                    key,
                    config: vip.clone(),
                    backends,
                    written,
                    ring: None,
                    held: 0,
                    current: None,
                    previous: None,
                },
            );
        }
        state
    }

    fn key(state: &AgentState, name: &str) -> VipKey {
        *state
            .iter()
            .find(|(_, vip)| vip.config.name == name)
            .expect("vip")
            .0
    }

    /// The event a checker of backend `index` of VIP `name` sends, judged `health`.
    fn event(
        state: &AgentState,
        name: &str,
        index: usize,
        health: Health,
        from: Health,
    ) -> HealthEvent<CheckerKey> {
        let vip = key(state, name);
        let backend = &state[&vip].backends[index];
        HealthEvent {
            key: CheckerKey {
                vip,
                backend: backend.id,
                token: backend.checker.token,
            },
            result: CheckResult {
                ok: health == Health::Up,
                latency: Duration::from_millis(2),
                error: None,
                passed: None,
                own_address_answers: None,
            },
            transition: (from != health).then(|| Transition {
                from,
                to: health,
                reason: "test".to_owned(),
            }),
            health,
            decided: SystemTime::now(),
        }
    }

    fn backend<'a>(
        state: &'a AgentState,
        name: &str,
        index: usize,
    ) -> &'a crate::agent::runtime::BackendRuntime {
        &state[&key(state, name)].backends[index]
    }

    #[tokio::test]
    async fn response_times_weigh_the_backends_of_response_time_vips_only() {
        let (mut checkers, _events) = Checkers::new(None);
        let config = config(
            "[[vip]]\nname = \"rt\"\naddress = \"10.0.0.102\"\nport = 80\n\
             balance = \"response-time\"\n\
             [[vip.backend]]\naddress = \"10.0.0.21\"\n[[vip.backend]]\naddress = \"10.0.0.22\"\n",
        );
        let mut state = state(&config, &mut checkers, false);
        let now = Instant::now();
        let answered = |state: &mut AgentState, name: &str, index: usize, ms: u64| {
            let from = backend(state, name, index).health;
            let mut event = event(state, name, index, Health::Up, from);
            event.result.latency = Duration::from_millis(ms);
            state.on_health(event, now, SystemTime::now());
        };
        for name in ["web", "rt"] {
            answered(&mut state, name, 0, 2);
            answered(&mut state, name, 1, 40);
        }
        let changes = state.on_response_times();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].0, key(&state, "rt"));
        assert_eq!(
            changes[0].1,
            "backend 10.0.0.22 of vip rt: response time 40.0ms (fastest 2.0ms): weight x0.25"
        );
        assert_eq!(backend(&state, "rt", 1).facts(now).weight, 25);
        assert_eq!(backend(&state, "web", 1).facts(now).weight, 100, "maglev");
        assert!(state.on_response_times().is_empty(), "nothing changed");

        // Fast again: back to its full weight after a few checks.
        for _ in 0..20 {
            answered(&mut state, "rt", 1, 2);
        }
        let changes = state.on_response_times();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1, "backend 10.0.0.22 of vip rt: full weight");
        assert_eq!(backend(&state, "rt", 1).facts(now).weight, 100);
    }

    #[tokio::test]
    async fn least_conn_backends_are_weighed_by_their_active_flows_and_ring_weights() {
        let (mut checkers, _events) = Checkers::new(None);
        let config = config(
            "[[vip]]\nname = \"lc\"\naddress = \"10.0.0.103\"\nport = 80\n\
             balance = \"least-conn\"\n\
             [[vip.backend]]\naddress = \"10.0.0.31\"\nweight = 3\n\
             [[vip.backend]]\naddress = \"10.0.0.32\"\n",
        );
        let mut state = state(&config, &mut checkers, false);
        let now = Instant::now();
        assert!(state.has_least_conn());
        for name in ["web", "lc"] {
            for index in 0..state[&key(&state, name)].backends.len() {
                let from = backend(&state, name, index).health;
                let event = event(&state, name, index, Health::Up, from);
                state.on_health(event, now, SystemTime::now());
            }
        }
        let lc = key(&state, "lc");
        for index in 0..2 {
            state.get_mut(&lc).expect("lc").backends[index].next_hop =
                Some(crate::nexthop::NextHop {
                    ifindex: 2,
                    mtu: 1500,
                    src_mac: [2; 6],
                    dst_mac: [4; 6],
                    gateway: None,
                });
        }
        let (first, second) = (backend(&state, "lc", 0).id, backend(&state, "lc", 1).id);
        let active = [(first, 7), (second, 2), (backend(&state, "web", 0).id, 50)]
            .into_iter()
            .collect();
        let load = |active, weight| lb_common::least_conn::BackendLoad {
            active,
            weight,
            _pad: 0,
        };
        assert_eq!(
            state.least_conn_loads(&active, now),
            vec![(first, load(7, 300)), (second, load(2, 100))],
            "only the least-conn VIP's backends, with their ring weights"
        );

        let down = event(&state, "lc", 1, Health::Down, Health::Up);
        state.on_health(down, now, SystemTime::now());
        assert_eq!(
            state.least_conn_loads(&active, now)[1],
            (second, load(2, 0)),
            "a backend that is down is no candidate"
        );
    }

    #[tokio::test]
    async fn a_health_change_goes_to_its_vip_alone_and_a_recovery_ramps() {
        let (mut checkers, _events) = Checkers::new(None);
        let config = config("");
        let mut state = state(&config, &mut checkers, false);
        let now = Instant::now();

        let first = event(&state, "web", 0, Health::Up, Health::Unknown);
        let checked = state
            .on_health(first, now, SystemTime::now())
            .expect("a live checker");
        assert_eq!(checked.vip, key(&state, "web"));
        assert!(checked.change.is_some(), "unknown -> up is a change");
        assert_eq!(backend(&state, "web", 0).health, Health::Up);
        assert_eq!(
            backend(&state, "api", 0).health,
            Health::Unknown,
            "the other VIP's backend has its own state"
        );
        assert_eq!(
            backend(&state, "web", 0).slow_start,
            SlowStart::Full,
            "started with the agent: no ramp"
        );

        let same = event(&state, "web", 0, Health::Up, Health::Up);
        let checked = state
            .on_health(same, now, SystemTime::now())
            .expect("checked");
        assert!(checked.change.is_none(), "no change, nothing to rebuild");

        let down = event(&state, "web", 0, Health::Down, Health::Up);
        assert!(state
            .on_health(down, now, SystemTime::now())
            .expect("checked")
            .change
            .is_some());
        let up = event(&state, "web", 0, Health::Up, Health::Down);
        state.on_health(up, now, SystemTime::now());
        assert_eq!(
            backend(&state, "web", 0).slow_start,
            SlowStart::Ramping { since: now },
            "a recovery ramps"
        );
        assert_eq!(backend(&state, "web", 0).availability.failures, 1);
    }

    #[tokio::test]
    async fn results_of_a_replaced_checker_are_ignored() {
        let (mut checkers, _events) = Checkers::new(None);
        let config = config("");
        let mut state = state(&config, &mut checkers, false);
        let mut stale = event(&state, "web", 0, Health::Up, Health::Unknown);
        stale.key.token += 1000;
        assert!(state
            .on_health(stale, Instant::now(), SystemTime::now())
            .is_none());
        assert_eq!(backend(&state, "web", 0).health, Health::Unknown);
    }

    #[tokio::test]
    async fn operators_drain_and_enable_with_reasons_for_refusals() {
        let (mut checkers, _events) = Checkers::new(None);
        let config = config("");
        let mut state = state(&config, &mut checkers, false);
        let now = Instant::now();
        let up = event(&state, "web", 1, Health::Up, Health::Unknown);
        state.on_health(up, now, SystemTime::now());
        let request = |command, vip: &str, backend: &str| ControlRequest {
            command,
            vip: vip.to_owned(),
            backend: backend.parse().expect("address"),
        };

        let drained = state.on_admin(
            &request(AdminCommand::Drain, "web", "10.0.0.12"),
            "uid 0".into(),
            now,
        );
        assert_eq!(
            drained,
            Ok(AdminOutcome::Changed {
                vip: key(&state, "web"),
                message: "backend 10.0.0.12 of vip web: ready -> drain".to_owned()
            })
        );
        assert_eq!(backend(&state, "web", 1).admin, AdminState::Drain);
        assert_eq!(
            backend(&state, "api", 1).admin,
            AdminState::Ready,
            "per VIP"
        );
        assert!(matches!(
            state.on_admin(
                &request(AdminCommand::Drain, "web", "10.0.0.12"),
                "uid 0".into(),
                now
            ),
            Ok(AdminOutcome::Unchanged { .. })
        ));
        let enabled = state.on_admin(
            &request(AdminCommand::Enable, "web", "10.0.0.12"),
            "uid 0".into(),
            now,
        );
        assert!(matches!(enabled, Ok(AdminOutcome::Changed { .. })));
        assert_eq!(
            backend(&state, "web", 1).slow_start,
            SlowStart::Ramping { since: now },
            "healthy and back in service: ramps"
        );
        // VIPs are listed in key order.
        let names: Vec<String> = state.values().map(|v| v.config.name.clone()).collect();
        assert_eq!(
            state.on_admin(
                &request(AdminCommand::Drain, "nope", "10.0.0.12"),
                "uid 0".into(),
                now
            ),
            Err(format!(
                "no vip named \"nope\" (vips: {})",
                names.join(", ")
            ))
        );
        assert_eq!(
            state.on_admin(
                &request(AdminCommand::Drain, "web", "10.0.0.99"),
                "uid 0".into(),
                now
            ),
            Err("vip web has no backend 10.0.0.99 (backends: 10.0.0.11, 10.0.0.12)".to_owned())
        );
    }

    #[tokio::test]
    async fn the_tick_names_ramping_vips_and_ends_finished_ramps() {
        let (mut checkers, _events) = Checkers::new(None);
        let config = config("");
        let mut state = state(&config, &mut checkers, true);
        let start = Instant::now();
        assert!(!state.is_ramping());
        let up = event(&state, "api", 0, Health::Up, Health::Unknown);
        state.on_health(up, start, SystemTime::now());
        assert!(state.is_ramping(), "added at run time: ramps on coming up");
        let api = key(&state, "api");
        assert_eq!(state.on_tick(start + Duration::from_secs(10)), [api]);
        assert!(state.is_ramping());
        assert_eq!(
            state.on_tick(start + Duration::from_secs(30)),
            [api],
            "rebuilt once more at full weight"
        );
        assert!(!state.is_ramping());
        assert_eq!(state.on_tick(start + Duration::from_secs(31)), []);
    }

    #[tokio::test]
    async fn a_new_configuration_is_diffed_by_vip() {
        let (mut checkers, _events) = Checkers::new(None);
        let running = config("");
        let state = state(&running, &mut checkers, false);
        assert_eq!(
            state.on_config(&running.live, &running.live),
            ConfigDiff::default()
        );

        let mut new = config(
            "[[vip]]\nname = \"dns\"\naddress = \"10.0.0.102\"\nport = 53\n\
             [[vip.backend]]\naddress = \"10.0.0.13\"\n",
        )
        .live;
        new.vips.retain(|v| v.name != "api");
        new.vips[0].backends[0].weight = 3;
        let diff = state.on_config(&running.live, &new);
        assert_eq!(diff.removed, [key(&state, "api")]);
        assert_eq!(diff.added.len(), 1);
        assert_eq!(diff.added[0].name, "dns");
        assert_eq!(diff.changed.len(), 1);
        assert_eq!(diff.changed[0].name, "web");

        let resized = LiveConfig {
            table_size: 65521,
            ..running.live.clone()
        };
        assert_eq!(
            state.on_config(&running.live, &resized).changed.len(),
            2,
            "a new table size changes every ring"
        );
    }
}
