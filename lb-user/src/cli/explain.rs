//! `lb explain`: which backend a client's flow goes to now, and why, computed with the kernel's
//! own lookup rules (`lb_common::lookup`) over the pinned maps.

use std::{collections::BTreeMap, net::SocketAddr};

use lb_common::{
    conntrack::{conntrack_hash, idle_ticks},
    flow_hash,
    least_conn::{prefers_second, second_slot, BackendLoad},
    lookup::{self, Source as LookupSource},
    maps::{Backend, BackendState, NewFlowRule, Protocol, NO_BACKEND},
    FlowKey,
};
use serde::Serialize;

use super::view::{ReportError, View};
use crate::datapath::FlowClock;

/// `lb explain` as JSON.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Explanation {
    /// The VIP matched (name).
    pub vip: String,
    /// The client.
    pub client: String,
    /// `flow_hash` of the 5-tuple.
    pub hash: u32,
    /// Ring slot (`hash % ring_size`).
    pub slot: u32,
    /// Backend in that slot (`None`: no backend).
    pub ring_backend: Option<String>,
    /// Backend the flow is tracked to, if any.
    pub tracked_backend: Option<String>,
    /// How the flow is tracked, if it is.
    pub tracking: Option<Tracking>,
    /// Where the next packet of this flow goes.
    pub backend: Option<String>,
    /// Where that backend comes from.
    pub reason: Source,
    /// How the VIP spreads new flows: `maglev` (the ring by configured weights),
    /// `response-time` (the ring by weights scaled by response times) or `least-conn`.
    pub balance: crate::config::Balance,
    /// For a least-conn VIP: the two candidates of a new connection from this client, and
    /// which one it takes now.
    pub least_conn: Option<Candidates>,
    /// For a tunnel VIP within its second-chance window: the backend its slot had in the ring
    /// before the last change.
    pub previous_backend: Option<String>,
    /// Whether the flow's next packet carries that backend as a hop (not tracked, not a SYN,
    /// its slot moved to another backend).
    pub hop: bool,
}

/// A least-conn VIP's two candidates for a new flow (`lb_common::least_conn`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Candidates {
    /// The backend of the flow's ring slot.
    pub ring: Candidate,
    /// The backend of its second slot.
    pub second: Candidate,
    /// The one a new flow takes now (`None`: no backend).
    pub chosen: Option<String>,
}

/// One candidate for a new flow.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Candidate {
    /// Its ring slot.
    pub slot: u32,
    /// The backend there (`None`: no backend).
    pub backend: Option<String>,
    /// Its active flows, counted in the flow table now.
    pub active_flows: u64,
    /// Its weight now, in configured units (what `lb status` shows as its effective weight).
    pub weight: f64,
}

/// What the flow table knows of a tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tracking {
    /// `unconfirmed`, `tcp_established`, `udp_established` or `tcp_closing`.
    pub class: &'static str,
    /// Seconds since its last packet (to the table's tick of about a second).
    pub idle_seconds: f64,
    /// Whether no new flow may evict it now: established or closing, and idle for less than
    /// its class's timeout.
    pub protected: bool,
    /// That timeout, in seconds (0 for unconfirmed flows, which are never protected).
    pub timeout_seconds: f64,
}

/// Where the next packet's backend comes from (`reason` in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The flow's tracked backend, up or draining.
    Tracked,
    /// The ring: the flow is not tracked.
    Ring,
    /// The ring, because the tracked backend is down: the flow is re-hashed.
    Rehash,
}

impl From<LookupSource> for Source {
    fn from(source: LookupSource) -> Self {
        match source {
            LookupSource::Tracked => Source::Tracked,
            LookupSource::Ring => Source::Ring,
            LookupSource::Rehash => Source::Rehash,
        }
    }
}

/// Parses `ADDR:PORT/PROTO` (`[v6]:port/proto`).
pub fn parse_vip(text: &str) -> Result<(SocketAddr, Protocol), ReportError> {
    let usage = || {
        ReportError::Usage(format!("--vip {text}: expected ADDR:PORT/tcp or ADDR:PORT/udp, e.g. 10.0.0.100:80/tcp or [fd00::100]:80/udp"))
    };
    let (address, protocol) = text.rsplit_once('/').ok_or_else(usage)?;
    let protocol: Protocol = protocol.parse().map_err(|_| usage())?;
    Ok((address.parse().map_err(|_| usage())?, protocol))
}

/// Which backend the next (non-SYN) packet of `client` → `vip` goes to now, and why.
pub fn explain(
    view: &mut View,
    vip: SocketAddr,
    protocol: Protocol,
    client: SocketAddr,
) -> Result<Explanation, ReportError> {
    let flow = FlowKey::between(client, vip, protocol).ok_or_else(|| {
        ReportError::Usage("--client and --vip must be of the same address family".into())
    })?;
    let vips = view.datapath.vips()?;
    let entry = lookup::vip_keys(&flow)
        .iter()
        .find_map(|key| vips.iter().find(|(k, _)| k == key).map(|(_, v)| *v))
        .ok_or_else(|| {
            ReportError::Usage(format!("{vip}/{protocol} is not a VIP of this datapath"))
        })?;
    let backends: BTreeMap<u32, Backend> = view.datapath.backends()?.into_iter().collect();
    let name_of = |id: u32| backends.get(&id).map(|b| b.address().to_string());
    let ring = view.datapath.ring(entry.id)?.unwrap_or_default();
    let slot = lookup::ring_slot(&flow, entry.ring_size);
    let ring_backend = slot
        .and_then(|slot| ring.get(slot as usize).copied())
        .filter(|id| *id != NO_BACKEND)
        .and_then(name_of);
    let entry_tracked = view.datapath.tracked_flow(&flow)?;
    let tracked = entry_tracked.map(|flow| flow.backend);
    let tracking = match entry_tracked {
        Some(flow) => {
            let clock = FlowClock::read_or_assume();
            let now = clock.now();
            let timeouts = view.datapath.idle_timeouts()?;
            let class = flow.class();
            Some(Tracking {
                class: class.name(),
                idle_seconds: clock.duration_of(idle_ticks(flow.stamp, now)).as_secs_f64(),
                protected: timeouts.protects(flow.stamp, now),
                timeout_seconds: clock
                    .duration_of(timeouts.by_class[class as usize])
                    .as_secs_f64(),
            })
        }
        None => None,
    };
    // A tracked id without an entry in use reads as `Unused`, as the kernel's array lookup does.
    let tracked_state = tracked.map(|id| {
        backends
            .get(&id)
            .map_or(BackendState::Unused, Backend::state)
    });
    let reason = Source::from(lookup::source(tracked_state, false));
    let least_conn = match entry.new_flow_rule() {
        Some(NewFlowRule::LeastConn) => {
            let slots = Slots {
                ring: slot,
                second: second_slot(conntrack_hash(&flow), entry.ring_size),
            };
            Some(candidates(view, &ring, slots, &backends)?)
        }
        _ => None,
    };
    let previous = match (view.program_id(), slot) {
        (Some(program), Some(slot)) => {
            crate::datapath::previous_owner(program, entry.id, slot).map_err(ReportError::from)?
        }
        _ => None,
    }
    .filter(|id| *id != NO_BACKEND);
    let previous_backend = previous.and_then(name_of);
    let moved = previous.is_some()
        && previous_backend != ring_backend
        && entry.forward_mode() == Some(lb_common::maps::ForwardMode::Tunnel);
    let backend = match (reason, tracked, &least_conn) {
        (Source::Tracked, Some(id), _) => name_of(id),
        // The first datagram of a flow that is not tracked opens it: the candidates decide.
        (Source::Ring, None, Some(candidates)) if protocol != Protocol::Tcp => {
            candidates.chosen.clone()
        }
        _ => ring_backend.clone(),
    };
    Ok(Explanation {
        vip: view.vip_name(entry.id),
        client: client.to_string(),
        hash: flow_hash(&flow),
        slot: slot.unwrap_or(0),
        ring_backend,
        tracked_backend: tracked.and_then(name_of),
        tracking,
        backend,
        reason,
        balance: match (&least_conn, view.snapshot_vip(entry.id)) {
            (Some(_), _) => crate::config::Balance::LeastConn,
            (None, Some(vip)) => vip.balance.unwrap_or(crate::config::Balance::Maglev),
            (None, None) => crate::config::Balance::Maglev,
        },
        least_conn,
        hop: moved && reason == Source::Ring && protocol == Protocol::Tcp,
        previous_backend,
    })
}

/// A flow's two ring slots (`None`: the ring is empty).
struct Slots {
    ring: Option<u32>,
    second: Option<u32>,
}

/// The candidates of a new flow with ring slots `slots` in its VIP's ring `ring`, weighed as
/// the datapath weighs them: active flows counted in the flow table now, and the weights the
/// agent's snapshot shows.
fn candidates(
    view: &mut View,
    ring: &[u32],
    slots: Slots,
    backends: &BTreeMap<u32, Backend>,
) -> Result<Candidates, ReportError> {
    let census = view
        .datapath
        .flow_census(FlowClock::read_or_assume().now())?;
    let backend_at = |slot: Option<u32>| {
        slot.and_then(|slot| ring.get(slot as usize).copied())
            .filter(|id| *id != NO_BACKEND)
    };
    let candidate = |slot: Option<u32>| {
        let id = backend_at(slot);
        let weight = id
            .and_then(|id| view.snapshot_backend(id))
            .map_or(0.0, |b| b.effective_weight);
        Candidate {
            slot: slot.unwrap_or(0),
            backend: id.and_then(|id| backends.get(&id).map(|b| b.address().to_string())),
            active_flows: id
                .and_then(|id| census.active.get(&id).copied())
                .unwrap_or(0),
            weight,
        }
    };
    let (first, second) = (candidate(slots.ring), candidate(slots.second));
    let load = |c: &Candidate| BackendLoad {
        active: c.active_flows,
        weight: (c.weight * f64::from(crate::agent::weights::WEIGHT_SCALE)).round() as u32,
        _pad: 0,
    };
    let second_up = backend_at(slots.second)
        .filter(|id| Some(*id) != backend_at(slots.ring))
        .and_then(|id| backends.get(&id))
        .is_some_and(|b| b.state() == BackendState::Up);
    let chosen = if second_up && prefers_second(load(&first), load(&second)) {
        second.backend.clone()
    } else {
        first.backend.clone()
    };
    Ok(Candidates {
        ring: first,
        second,
        chosen,
    })
}

/// Human text of an explanation.
pub fn format_explanation(e: &Explanation) -> String {
    let to = |b: &Option<String>| {
        b.clone()
            .unwrap_or_else(|| "no backend (dropped)".to_owned())
    };
    let mut out = match e.reason {
        Source::Tracked => format!(
            "{} → vip {}: tracked flow → backend {}\n(its ring slot {} would give {})",
            e.client,
            e.vip,
            to(&e.backend),
            e.slot,
            to(&e.ring_backend)
        ),
        Source::Rehash => format!(
            "{} → vip {}: tracked to {}, which is down: the next packet is re-hashed to ring slot {} → backend {}",
            e.client,
            e.vip,
            to(&e.tracked_backend),
            e.slot,
            to(&e.backend)
        ),
        Source::Ring => format!(
            "{} → vip {}: not tracked: flow hash {:#010x}, ring slot {} → backend {}{}",
            e.client,
            e.vip,
            e.hash,
            e.slot,
            to(&e.backend),
            match e.balance {
                crate::config::Balance::Maglev | crate::config::Balance::LeastConn => "",
                crate::config::Balance::ResponseTime => {
                    " (balance response-time: the ring weighs backends by their response times)"
                }
            }
        ),
    };
    out.push('\n');
    if let Some(previous) = &e.previous_backend {
        out.push_str(&format!(
            "second chance: before the ring's last change its slot gave {previous}; {}\n",
            if e.hop {
                format!("its next packet carries {previous} as a hop (it is not tracked here)")
            } else {
                "no hop is carried (tracked, the same backend, or not a tunnel TCP flow)".to_owned()
            }
        ));
    }
    if let Some(c) = &e.least_conn {
        let candidate = |c: &Candidate| {
            format!(
                "slot {} → {} ({} active, weight {})",
                c.slot,
                to(&c.backend),
                c.active_flows,
                c.weight
            )
        };
        out.push_str(&format!(
            "balance least-conn: a new connection from this client has the candidates ring {} \
             and second {}: it goes to {}\n",
            candidate(&c.ring),
            candidate(&c.second),
            to(&c.chosen)
        ));
    }
    if let Some(tracking) = &e.tracking {
        out.push_str(&format!(
            "flow: {}, last packet {:.0} s ago; {}\n",
            tracking.class,
            tracking.idle_seconds,
            if tracking.protected {
                format!(
                    "protected from eviction until idle {:.0} s",
                    tracking.timeout_seconds
                )
            } else {
                "evictable by new flows".to_owned()
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_arguments() {
        assert_eq!(parse_vip("10.0.0.1:80/tcp").expect("v4").1, Protocol::Tcp);
        assert_eq!(parse_vip("[fd00::1]:53/udp").expect("v6").0.port(), 53);
        assert!(parse_vip("10.0.0.1:80").is_err());
        assert!(parse_vip("10.0.0.1/tcp").is_err());
    }
}
