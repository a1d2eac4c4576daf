//! `lb status`: the attached datapath and each VIP's backends with health, weight and ring share.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    time::Duration,
};

use lb_common::maps::{ForwardMode, Protocol, NO_BACKEND};
use serde::Serialize;

use super::{
    format::{endpoint, human_duration},
    view::{ReportError, View},
};
use crate::{
    admin::AdminState,
    datapath::AttachMode,
    fingerprint::ring_fingerprint,
    routes::{RouteOwner, Routes},
    status::{self, ServingState},
};

/// `lb status` as JSON.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Status {
    /// Interface the balancer is attached to (from the agent's snapshot).
    pub interface: Option<String>,
    /// `native` or `generic`.
    pub xdp_mode: Option<AttachMode>,
    /// Kernel id of the program.
    pub program_id: Option<u32>,
    /// Whether the balancer's link is pinned in the state directory (it is attached).
    pub attached: bool,
    /// Where servable VIP addresses are announced (`[announce]`), if anywhere.
    pub announce: Option<RouteOwner>,
    /// The agent.
    pub agent: Option<AgentStatus>,
    /// VIPs.
    pub vips: Vec<VipStatusReport>,
}

/// The agent that wrote the snapshot.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AgentStatus {
    /// Pid.
    pub pid: u32,
    /// Whether that pid is alive.
    pub running: bool,
    /// It is stopping gracefully (every address withdrawn, draining before it detaches).
    pub stopping: bool,
    /// Configuration file.
    pub config: String,
    /// When the snapshot was written (Unix ms).
    pub updated_unix_ms: u64,
    /// Health checks' packets sent along the serving path, by what was done (`steered`,
    /// `encapsulated`, or why dropped): apart from every client counter.
    pub check_packets: BTreeMap<String, u64>,
    /// Packets of untracked connections sent with a second-chance hop.
    pub second_chance_hops: u64,
    /// How TCP checks of backends' own addresses go: `half-open` (a SYN from a raw socket) or
    /// `connect` (without `CAP_NET_RAW`).
    pub tcp_checks: &'static str,
}

/// One VIP's status.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VipStatusReport {
    /// Name.
    pub name: String,
    /// Id.
    pub id: u32,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: Option<Protocol>,
    /// `dsr` or `tunnel`.
    pub forward: Option<ForwardMode>,
    /// How it spreads new flows: `maglev`, `response-time` or `least-conn` (`None`: not known,
    /// no agent has said).
    pub balance: Option<crate::config::Balance>,
    /// Its second-chance window, seconds (tunnel VIPs; `None`: DSR or off).
    pub second_chance_seconds: Option<f64>,
    /// Seconds its previous ring is kept for still (`None`: it has none).
    pub previous_ring_seconds_left: Option<f64>,
    /// Ring size.
    pub ring_size: u32,
    /// Short hash of the ring as backend addresses per slot: equal on two instances with the
    /// same configuration and health.
    pub ring_fingerprint: String,
    /// Its ring holds a backend: packets to it are forwarded.
    pub servable: bool,
    /// Servable, `announce = true`, and its address's route is in the announce table.
    pub announced: bool,
    /// Backends.
    pub backends: Vec<BackendStatusReport>,
}

/// One backend's status.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BackendStatusReport {
    /// Address.
    pub address: String,
    /// Id.
    pub id: u32,
    /// `up`, `down`, `draining` or `unknown`.
    pub state: ServingState,
    /// Configured weight.
    pub weight: Option<u32>,
    /// Ring slots it owns.
    pub slots: u32,
    /// Active connections now: established, not closing, active within their timeout.
    pub active_flows: u64,
    /// Share of the ring (0..1).
    pub share: f64,
    /// Whether the last health check succeeded.
    pub last_check_ok: Option<bool>,
    /// Its latency in microseconds.
    pub last_check_latency_us: Option<u64>,
    /// Its error.
    pub last_check_error: Option<String>,
    /// Where its checks go: `vip` (along the serving path) or `backend` (its own address).
    pub check_target: Option<crate::config::CheckTarget>,
    /// Why its effective weight is lower (response-time balancing).
    pub weight_reason: Option<String>,
    /// Its checks' average response time in microseconds (response-time VIPs).
    pub response_time_us: Option<u64>,
    /// Seconds since the state last changed.
    pub since_change_seconds: Option<f64>,
    /// `ready`, `drain` or `maint` (`lb backend ...`; `ready` without a snapshot).
    pub admin: AdminState,
    /// Who set `admin`, and when.
    pub admin_by: Option<String>,
    /// The weight it gets now (during slow start and drain), in configured units.
    pub effective_weight: Option<f64>,
    /// Up → down transitions.
    pub failures: Option<u64>,
    /// Mean time from down to up; null before the first recovery.
    pub mttr_seconds: Option<f64>,
    /// Mean time up before a failure; null before the first failure.
    pub mttf_seconds: Option<f64>,
    /// Time up / time observed, since the records were created.
    pub availability: Option<f64>,
}

/// The addresses whose route is in the announce table the agent's snapshot names (`None`
/// without `[announce]` or snapshot).
pub async fn announced_routes(view: &View) -> Result<Option<BTreeSet<IpAddr>>, ReportError> {
    let Some(owner) = view.snapshot.as_ref().and_then(|s| s.announce) else {
        return Ok(None);
    };
    let routes = Routes::connect().map_err(ReportError::Routes)?;
    let listed = routes
        .list(owner.table)
        .await
        .map_err(ReportError::Routes)?;
    Ok(Some(
        listed
            .into_iter()
            .filter(|route| route.protocol == owner.protocol)
            .map(|route| route.address)
            .collect(),
    ))
}

/// What `lb status` shows of a VIP's ring.
struct RingView {
    size: u32,
    fingerprint: u64,
    servable: bool,
    /// Slots by backend id, counted from the kernel's ring; `None`: the agent's snapshot
    /// describes the ring in use, and each backend's slots are in it.
    slots: Option<BTreeMap<u32, u32>>,
}

impl RingView {
    /// The ring VIP `id` uses: as the agent's snapshot describes it while the kernel still
    /// uses the map it names (ring maps are never written once swapped in), else read from
    /// the kernel and hashed here (`addresses`: the VIP's backends, by id).
    fn read(
        view: &mut View,
        id: u32,
        addresses: &BTreeMap<u32, String>,
    ) -> Result<Self, ReportError> {
        if let Some(known) = view.snapshot_vip(id).and_then(|v| v.ring) {
            if let (Some(fingerprint), true) = (
                known.fingerprint,
                view.datapath.ring_map_id(id)? == Some(known.map_id),
            ) {
                let servable = view
                    .snapshot_vip(id)
                    .is_some_and(|v| v.backends.iter().any(|b| b.slots > 0));
                return Ok(Self {
                    size: known.size,
                    fingerprint,
                    servable,
                    slots: None,
                });
            }
        }
        let ring = view.datapath.ring(id)?.unwrap_or_default();
        let mut slots = BTreeMap::new();
        for slot in ring.iter().filter(|slot| **slot != NO_BACKEND) {
            *slots.entry(*slot).or_insert(0) += 1;
        }
        Ok(Self {
            size: ring.len() as u32,
            fingerprint: ring_fingerprint(&ring, addresses),
            servable: !slots.is_empty(),
            slots: Some(slots),
        })
    }

    /// The slots of backend `id` (`snapshot`: the agent's view of it).
    fn slots(&self, id: u32, snapshot: Option<&status::BackendStatus>) -> u32 {
        match &self.slots {
            Some(counted) => counted.get(&id).copied().unwrap_or(0),
            None => snapshot.map_or(0, |b| b.slots),
        }
    }
}

/// Reads the status of every VIP; `routes`: what [`announced_routes`] found.
pub fn status(view: &mut View, routes: Option<&BTreeSet<IpAddr>>) -> Result<Status, ReportError> {
    let now = status::now_unix_ms();
    let census = view
        .datapath
        .flow_census(crate::datapath::FlowClock::read_or_assume().now())?;
    let mut vips = Vec::new();
    for vip in view.vips()? {
        let id = vip.entry.id;
        let addresses: BTreeMap<u32, String> = vip
            .backends
            .iter()
            .map(|(id, b)| (*id, b.address().to_string()))
            .collect();
        let ring = RingView::read(view, id, &addresses)?;
        let backends = vip
            .backends
            .iter()
            .map(|(backend_id, backend)| {
                let snap = view.snapshot_backend(*backend_id);
                let slots = ring.slots(*backend_id, snap);
                BackendStatusReport {
                    address: addresses[backend_id].clone(),
                    id: *backend_id,
                    state: snap.map_or_else(|| backend.state().into(), |s| s.state),
                    weight: snap.map(|s| s.weight),
                    slots,
                    active_flows: census.active.get(backend_id).copied().unwrap_or(0),
                    share: if ring.size == 0 {
                        0.0
                    } else {
                        f64::from(slots) / f64::from(ring.size)
                    },
                    last_check_ok: snap.and_then(|s| s.last_check_ok),
                    last_check_latency_us: snap.and_then(|s| s.last_check_latency_us),
                    last_check_error: snap.and_then(|s| s.last_check_error.clone()),
                    check_target: snap.and_then(|s| s.check_target),
                    weight_reason: snap.and_then(|s| s.weight_reason.clone()),
                    response_time_us: snap.and_then(|s| s.response_time_us),
                    since_change_seconds: snap
                        .map(|s| now.saturating_sub(s.last_change_unix_ms) as f64 / 1000.0),
                    admin: snap.map(|s| s.admin).unwrap_or_default(),
                    admin_by: snap.and_then(|s| s.admin_by.clone()),
                    effective_weight: snap.map(|s| s.effective_weight),
                    failures: snap.map(|s| s.failures),
                    mttr_seconds: snap.and_then(|s| s.mttr_seconds),
                    mttf_seconds: snap.and_then(|s| s.mttf_seconds),
                    availability: snap.and_then(|s| s.availability),
                }
            })
            .collect();
        let servable = ring.servable;
        let announce = view.snapshot_vip(id).is_some_and(|v| v.announce);
        let address = vip.key.address();
        vips.push(VipStatusReport {
            servable,
            announced: servable && announce && routes.is_some_and(|r| r.contains(&address)),
            name: view.vip_name(id),
            id,
            address: vip.key.address().to_string(),
            port: vip.key.port(),
            protocol: vip.key.protocol(),
            forward: vip.entry.forward_mode(),
            balance: view.snapshot_vip(id).and_then(|v| v.balance).or(
                match vip.entry.new_flow_rule() {
                    Some(lb_common::maps::NewFlowRule::LeastConn) => {
                        Some(crate::config::Balance::LeastConn)
                    }
                    _ => None,
                },
            ),
            second_chance_seconds: view.snapshot_vip(id).and_then(|v| v.second_chance_seconds),
            previous_ring_seconds_left: view
                .snapshot_vip(id)
                .and_then(|v| v.previous_ring_until_unix_ms)
                .map(|until| until.saturating_sub(now) as f64 / 1000.0),
            ring_size: ring.size,
            ring_fingerprint: fingerprint(ring.fingerprint),
            backends,
        });
    }
    let snapshot = view.snapshot.as_ref();
    let agent = snapshot.map(|s| AgentStatus {
        pid: s.pid,
        running: nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.pid as i32), None).is_ok(),
        stopping: s.stopping,
        config: s.config.display().to_string(),
        updated_unix_ms: s.updated_unix_ms,
        check_packets: s.check_packets.clone(),
        second_chance_hops: s.second_chance_hops,
        tcp_checks: if s.half_open_checks {
            "half-open"
        } else {
            "connect"
        },
    });
    Ok(Status {
        attached: view.attached,
        announce: snapshot.and_then(|s| s.announce),
        interface: snapshot.map(|s| s.interface.clone()),
        xdp_mode: snapshot.map(|s| s.xdp_mode),
        program_id: snapshot.and_then(|s| s.program_id),
        agent,
        vips,
    })
}

/// `lb status --check`: ready while the agent runs, the datapath is attached and at least one
/// VIP is servable. `Ok`: what is ready; `Err`: the first thing that is not, in one line.
pub fn readiness(status: &Status) -> Result<String, String> {
    let agent = status
        .agent
        .as_ref()
        .ok_or("no agent has written a status snapshot for this state directory")?;
    if !agent.running {
        return Err(format!("the agent (pid {}) is not running", agent.pid));
    }
    if agent.stopping {
        return Err(format!(
            "the agent (pid {}) is stopping: its addresses are withdrawn",
            agent.pid
        ));
    }
    if !status.attached {
        return Err("the datapath is not attached".to_owned());
    }
    let servable = status.vips.iter().filter(|v| v.servable).count();
    if servable == 0 {
        return Err(format!(
            "no VIP is servable ({} VIPs, none has a backend up)",
            status.vips.len()
        ));
    }
    Ok(format!(
        "agent pid {} running, datapath attached on {}, {servable} of {} VIPs servable",
        agent.pid,
        status.interface.as_deref().unwrap_or("?"),
        status.vips.len()
    ))
}

/// A ring's fingerprint ([`ring_fingerprint`]) as `lb status` shows it: 12 hex digits.
pub fn fingerprint(fingerprint: u64) -> String {
    format!("{fingerprint:012x}")
}

/// Human text of a status report.
pub fn format_status(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "interface {} ({} XDP), program id {}",
        status.interface.as_deref().unwrap_or("?"),
        status.xdp_mode.map_or("?", AttachMode::name),
        status
            .program_id
            .map_or("?".to_owned(), |id| id.to_string())
    );
    if let Some(owner) = status.announce {
        let _ = writeln!(
            out,
            "announcing servable VIP addresses in table {} (proto {})",
            owner.table, owner.protocol
        );
    }
    match &status.agent {
        Some(agent) => {
            let _ = writeln!(
                out,
                "agent pid {} ({}), config {}",
                agent.pid,
                if agent.running {
                    "running"
                } else {
                    "not running: the datapath forwards on its own"
                },
                agent.config
            );
        }
        None => {
            let _ = writeln!(
                out,
                "no agent snapshot: health unknown, states as the datapath sees them"
            );
        }
    }
    for vip in &status.vips {
        let announced = match (status.announce, vip.announced) {
            (None, _) => "",
            (Some(_), true) => ", announced",
            (Some(_), false) => ", not announced",
        };
        let _ = writeln!(
            out,
            "\nvip {} {}/{} {}{}  ring {} slots, fingerprint {}{}{}{announced}",
            vip.name,
            endpoint(&vip.address, vip.port),
            vip.protocol.map_or("?", Protocol::name),
            vip.forward.map_or("?", ForwardMode::name),
            match vip.balance {
                None | Some(crate::config::Balance::Maglev) => String::new(),
                Some(balance) => format!(" {}", balance.name()),
            },
            vip.ring_size,
            vip.ring_fingerprint,
            match (vip.second_chance_seconds, vip.previous_ring_seconds_left) {
                (Some(window), Some(left)) =>
                    format!(", second chance {window:.0}s (previous ring kept {left:.0}s more)"),
                (Some(window), None) => format!(", second chance {window:.0}s"),
                (None, _) => String::new(),
            },
            if vip.servable {
                ""
            } else {
                ", NOT SERVABLE (no backend)"
            }
        );
        let _ = writeln!(
            out,
            "  {:<24} {:<9} {:<6} {:>6} {:>7} {:>7} {:>7} {:>8} {:>6}  {:<28} SINCE CHANGE",
            "BACKEND",
            "STATE",
            "ADMIN",
            "WEIGHT",
            "SLOTS",
            "SHARE",
            "ACTIVE",
            "AVAIL",
            "FAILS",
            "LAST CHECK"
        );
        for b in &vip.backends {
            let check = match (
                b.last_check_ok,
                b.last_check_latency_us,
                &b.last_check_error,
            ) {
                (Some(true), Some(us), _) => format!(
                    "ok in {}{}",
                    human_duration(Duration::from_micros(us)),
                    b.check_target
                        .map_or(String::new(), |t| format!(" ({})", t.name()))
                ),
                (Some(false), _, Some(error)) => format!("failed: {error}"),
                _ => "-".to_owned(),
            };
            let weight = match (b.weight, b.effective_weight) {
                (Some(w), Some(e)) if f64::from(w) != e => format!("{e:.2}/{w}"),
                (Some(w), _) => w.to_string(),
                (None, _) => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<24} {:<9} {:<6} {:>6} {:>7} {:>6.1}% {:>7} {:>8} {:>6}  {:<28} {}",
                b.address,
                b.state.name(),
                b.admin.name(),
                weight,
                b.slots,
                b.share * 100.0,
                b.active_flows,
                b.availability
                    .map_or("-".to_owned(), |a| format!("{:.3}%", a * 100.0)),
                b.failures.map_or("-".to_owned(), |f| f.to_string()),
                check,
                b.since_change_seconds
                    .map_or("-".to_owned(), |s| human_duration(Duration::from_secs_f64(
                        s
                    )))
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(running: bool, attached: bool, servable: &[bool]) -> Status {
        Status {
            interface: Some("eth0".into()),
            xdp_mode: Some(AttachMode::Native),
            program_id: Some(7),
            attached,
            announce: None,
            agent: Some(AgentStatus {
                pid: 42,
                running,
                stopping: false,
                config: "/etc/lb/lb.toml".into(),
                updated_unix_ms: 0,
                check_packets: BTreeMap::new(),
                second_chance_hops: 0,
                tcp_checks: "half-open",
            }),
            vips: servable
                .iter()
                .map(|servable| VipStatusReport {
                    name: "web".into(),
                    id: 0,
                    address: "10.0.0.100".into(),
                    port: 80,
                    protocol: Some(Protocol::Tcp),
                    forward: Some(ForwardMode::Dsr),
                    balance: None,
                    second_chance_seconds: None,
                    previous_ring_seconds_left: None,
                    ring_size: 7,
                    ring_fingerprint: String::new(),
                    servable: *servable,
                    announced: false,
                    backends: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn ready_only_with_a_running_agent_an_attached_datapath_and_a_servable_vip() {
        let ready = readiness(&status(true, true, &[false, true])).expect("ready");
        assert_eq!(
            ready,
            "agent pid 42 running, datapath attached on eth0, 1 of 2 VIPs servable"
        );
        let not = |status: Status| readiness(&status).expect_err("not ready");
        assert_eq!(
            not(status(false, true, &[true])),
            "the agent (pid 42) is not running"
        );
        assert_eq!(
            not(status(true, false, &[true])),
            "the datapath is not attached"
        );
        assert!(not(status(true, true, &[false])).starts_with("no VIP is servable"));
        let mut stopping = status(true, true, &[true]);
        stopping.agent.as_mut().expect("agent").stopping = true;
        assert!(not(stopping).contains("is stopping"));
        let mut orphan = status(true, true, &[true]);
        orphan.agent = None;
        assert!(not(orphan).starts_with("no agent"));
    }

    #[test]
    fn fingerprints_depend_on_addresses_not_ids() {
        let a: BTreeMap<u32, String> =
            [(0, "10.0.0.1".to_owned()), (1, "10.0.0.2".to_owned())].into();
        let b: BTreeMap<u32, String> =
            [(7, "10.0.0.1".to_owned()), (9, "10.0.0.2".to_owned())].into();
        assert_eq!(
            fingerprint(ring_fingerprint(&[0, 1, 0], &a)),
            fingerprint(ring_fingerprint(&[7, 9, 7], &b))
        );
        assert_ne!(
            fingerprint(ring_fingerprint(&[0, 1, 0], &a)),
            fingerprint(ring_fingerprint(&[1, 0, 0], &a))
        );
    }
}
