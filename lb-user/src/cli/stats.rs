//! `lb stats`: counters by verdict and reason, per VIP and per backend; with `--watch`, rates.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use lb_common::{
    conntrack::Occupancy,
    maps::{BackendState, Protocol},
    stats::{BackendStats, Counter, CounterClass, VipStats},
};
use serde::Serialize;

use super::{
    format::{endpoint, si, si_space},
    view::{ReportError, View},
};
use crate::counters::CounterReading;

/// `lb stats` as JSON.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Stats {
    /// Global counters by verdict and reason (`lb_common::stats::Counter` names).
    pub global: BTreeMap<&'static str, u64>,
    /// The flow table's occupancy by class.
    pub flows: Occupancy,
    /// Per VIP.
    pub vips: Vec<VipStatsReport>,
}

/// Counters of one VIP.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VipStatsReport {
    /// Name (from the agent's snapshot; `vip<id>` without one).
    pub name: String,
    /// VIP id.
    pub id: u32,
    /// Address.
    pub address: String,
    /// Port (0 = all).
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: Option<Protocol>,
    /// Packets matched.
    pub packets: u64,
    /// Bytes matched.
    pub bytes: u64,
    /// Flows given a backend from the ring (conntrack misses and TCP SYNs).
    pub new_flows: u64,
    /// Packets whose flow was in conntrack.
    pub conntrack_hits: u64,
    /// Packets whose backend came from the ring (= new_flows).
    pub conntrack_misses: u64,
    /// Packets dropped (no backend, too big, ...).
    pub dropped: u64,
    /// Backends.
    pub backends: Vec<BackendStatsReport>,
}

/// Counters of one backend.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BackendStatsReport {
    /// Address.
    pub address: String,
    /// Backend id.
    pub id: u32,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows assigned.
    pub new_flows: u64,
    /// Active connections now: established, not closing, active within their timeout.
    pub active_flows: u64,
    /// `up`, `draining` or `down`, as the datapath sees it.
    pub state: BackendState,
    /// Configured weight (from the agent's snapshot).
    pub weight: Option<u32>,
}

/// Reads every counter.
pub fn stats(view: &mut View) -> Result<Stats, ReportError> {
    let vips = view.vips()?;
    let reading = CounterReading::read(
        &mut view.datapath,
        vips.iter().map(|vip| vip.entry.id),
        vips.iter()
            .flat_map(|vip| vip.backends.iter().map(|(id, _)| *id)),
    )?;
    let global = reading
        .global
        .iter()
        .map(|(counter, value)| (counter.name(), *value))
        .collect();
    let flows = reading.flows;
    let vips = vips
        .into_iter()
        .map(|vip| {
            let id = vip.entry.id;
            let VipStats {
                packets,
                bytes,
                new_flows,
                conntrack_hits,
                dropped,
            } = reading.vip(id);
            let backends = vip
                .backends
                .iter()
                .map(|(backend_id, backend)| {
                    let BackendStats {
                        packets,
                        bytes,
                        new_flows,
                    } = reading.backend(*backend_id);
                    BackendStatsReport {
                        address: backend.address().to_string(),
                        id: *backend_id,
                        packets,
                        bytes,
                        new_flows,
                        active_flows: reading.active_flows(*backend_id),
                        state: backend.state(),
                        weight: view.snapshot_backend(*backend_id).map(|b| b.weight),
                    }
                })
                .collect();
            VipStatsReport {
                name: view.vip_name(id),
                id,
                address: vip.key.address().to_string(),
                port: vip.key.port(),
                protocol: vip.key.protocol(),
                packets,
                bytes,
                new_flows,
                conntrack_hits,
                conntrack_misses: new_flows,
                dropped,
                backends,
            }
        })
        .collect();
    Ok(Stats {
        global,
        flows,
        vips,
    })
}

/// The names of the verdict counters, in index order.
fn verdicts() -> impl Iterator<Item = &'static str> {
    Counter::ALL
        .into_iter()
        .filter(|c| c.class() == CounterClass::Verdict)
        .map(Counter::name)
}

/// Human text of a totals report.
pub fn format_stats(stats: &Stats) -> String {
    let mut out = String::new();
    let value = |name: &str| stats.global.get(name).copied().unwrap_or_default();
    let _ = writeln!(
        out,
        "verdicts: {}",
        verdicts()
            .map(|v| format!("{v} {}", si(value(v) as f64)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let reasons: Vec<String> = stats
        .global
        .iter()
        .filter(|(name, _)| !verdicts().any(|v| v == **name))
        .map(|(name, value)| format!("{name} {}", si(*value as f64)))
        .collect();
    let _ = writeln!(out, "reasons:  {}", reasons.join(", "));
    let flows = &stats.flows;
    let _ = writeln!(
        out,
        "flows:    {} established, {} closing, {} unconfirmed, {} idle; {} of {} ways used",
        si(flows.established as f64),
        si(flows.closing as f64),
        si(flows.unconfirmed as f64),
        si(flows.idle as f64),
        si(flows.tracked() as f64),
        si(flows.capacity as f64),
    );
    for vip in &stats.vips {
        let _ = writeln!(
            out,
            "\nvip {} {}/{}: packets {}, bytes {}B, new flows {}, conntrack hits {} misses {}, dropped {}",
            vip.name,
            endpoint(&vip.address, vip.port),
            vip.protocol.map_or("?", Protocol::name),
            si(vip.packets as f64),
            si(vip.bytes as f64),
            si(vip.new_flows as f64),
            si(vip.conntrack_hits as f64),
            si(vip.conntrack_misses as f64),
            si(vip.dropped as f64),
        );
        for b in &vip.backends {
            let _ = writeln!(
                out,
                "  {:<24} {:<9} weight {:<5} packets {:<8} bytes {:<8} new flows {:<8} active {}",
                b.address,
                b.state.name(),
                b.weight.map_or("-".to_owned(), |w| w.to_string()),
                si(b.packets as f64),
                format!("{}B", si(b.bytes as f64)),
                si(b.new_flows as f64),
                si(b.active_flows as f64),
            );
        }
    }
    out
}

/// Rates between two samples, for `lb stats --watch`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Rates {
    /// Seconds between the samples.
    pub interval_seconds: f64,
    /// Packets per second by verdict.
    pub verdicts_pps: BTreeMap<&'static str, f64>,
    /// Per VIP.
    pub vips: Vec<VipRates>,
}

/// Rates of one VIP.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VipRates {
    /// Name.
    pub name: String,
    /// Packets per second.
    pub pps: f64,
    /// Bits per second.
    pub bps: f64,
    /// New flows per second.
    pub new_flows_per_second: f64,
    /// Per backend.
    pub backends: Vec<BackendRates>,
}

/// Rates of one backend.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BackendRates {
    /// Address.
    pub address: String,
    /// Packets per second.
    pub pps: f64,
    /// Bits per second.
    pub bps: f64,
    /// New flows per second.
    pub new_flows_per_second: f64,
}

/// Rates from `before` to `after`, `seconds` apart.
pub fn rates(before: &Stats, after: &Stats, seconds: f64) -> Rates {
    let per_second = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / seconds;
    let global = |stats: &Stats, name: &str| stats.global.get(name).copied().unwrap_or_default();
    let verdicts_pps = verdicts()
        .map(|v| (v, per_second(global(before, v), global(after, v))))
        .collect();
    let vips = after
        .vips
        .iter()
        .map(|vip| {
            let old = before.vips.iter().find(|v| v.id == vip.id);
            let backends = vip
                .backends
                .iter()
                .map(|b| {
                    let old = old.and_then(|v| v.backends.iter().find(|o| o.id == b.id));
                    BackendRates {
                        address: b.address.clone(),
                        pps: per_second(old.map_or(0, |o| o.packets), b.packets),
                        bps: 8.0 * per_second(old.map_or(0, |o| o.bytes), b.bytes),
                        new_flows_per_second: per_second(
                            old.map_or(0, |o| o.new_flows),
                            b.new_flows,
                        ),
                    }
                })
                .collect();
            VipRates {
                name: vip.name.clone(),
                pps: per_second(old.map_or(0, |o| o.packets), vip.packets),
                bps: 8.0 * per_second(old.map_or(0, |o| o.bytes), vip.bytes),
                new_flows_per_second: per_second(old.map_or(0, |o| o.new_flows), vip.new_flows),
                backends,
            }
        })
        .collect();
    Rates {
        interval_seconds: seconds,
        verdicts_pps,
        vips,
    }
}

/// Human text of rates: "1.2 Mpps, 3.4 Gbit/s".
pub fn format_rates(rates: &Rates) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "every {:.1}s: {}",
        rates.interval_seconds,
        rates
            .verdicts_pps
            .iter()
            .map(|(v, pps)| format!("{v} {}pps", si_space(*pps)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for vip in &rates.vips {
        let _ = writeln!(
            out,
            "vip {}: {}pps, {}bit/s, {} new flows/s",
            vip.name,
            si_space(vip.pps),
            si_space(vip.bps),
            si(vip.new_flows_per_second)
        );
        for b in &vip.backends {
            let _ = writeln!(
                out,
                "  {:<24} {}pps, {}bit/s, {} new flows/s",
                b.address,
                si_space(b.pps),
                si_space(b.bps),
                si(b.new_flows_per_second)
            );
        }
    }
    out
}

/// Prints stats every `interval`, as rates, `count` times (forever when `None`).
pub fn watch(
    view: &mut View,
    interval: Duration,
    count: Option<u64>,
    json: bool,
) -> Result<(), ReportError> {
    let clear =
        super::escapes_allowed(std::io::IsTerminal::is_terminal(&std::io::stdout())) && !json;
    let mut before = stats(view)?;
    let mut at = Instant::now();
    let mut printed = 0;
    while count.is_none_or(|c| printed < c) {
        std::thread::sleep(interval);
        let after = stats(view)?;
        let now = Instant::now();
        let rates = rates(&before, &after, now.duration_since(at).as_secs_f64());
        if json {
            println!("{}", serde_json::to_string(&rates).unwrap_or_default());
        } else {
            if clear {
                print!("\x1b[2J\x1b[H");
            }
            println!("{}", format_rates(&rates));
        }
        (before, at) = (after, now);
        printed += 1;
    }
    Ok(())
}
