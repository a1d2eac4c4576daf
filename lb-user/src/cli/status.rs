//! `lb status`: the attached datapath and each VIP's backends with health, weight and ring share.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use lb_common::maps::{ForwardMode, Protocol, NO_BACKEND};
use serde::Serialize;

use super::{
    format::{endpoint, human_duration},
    view::{ReportError, View},
};
use crate::{
    datapath::AttachMode,
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
    /// Configuration file.
    pub config: String,
    /// When the snapshot was written (Unix ms).
    pub updated_unix_ms: u64,
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
    /// Ring size.
    pub ring_size: u32,
    /// Short hash of the ring as backend addresses per slot: equal on two instances with the
    /// same configuration and health.
    pub ring_fingerprint: String,
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
    /// Share of the ring (0..1).
    pub share: f64,
    /// Whether the last health check succeeded.
    pub last_check_ok: Option<bool>,
    /// Its latency in microseconds.
    pub last_check_latency_us: Option<u64>,
    /// Its error.
    pub last_check_error: Option<String>,
    /// Seconds since the state last changed.
    pub since_change_seconds: Option<f64>,
}

/// Reads the status of every VIP.
pub fn status(view: &mut View) -> Result<Status, ReportError> {
    let now = status::now_unix_ms();
    let mut vips = Vec::new();
    for vip in view.vips()? {
        let id = vip.entry.id;
        let ring = view.datapath.ring(id)?.unwrap_or_default();
        let addresses: BTreeMap<u32, String> = vip
            .backends
            .iter()
            .map(|(id, b)| (*id, b.address().to_string()))
            .collect();
        let backends = vip
            .backends
            .iter()
            .map(|(backend_id, backend)| {
                let slots = ring.iter().filter(|s| **s == *backend_id).count() as u32;
                let snap = view.snapshot_backend(*backend_id);
                BackendStatusReport {
                    address: addresses[backend_id].clone(),
                    id: *backend_id,
                    state: snap.map_or_else(|| backend.state().into(), |s| s.state),
                    weight: snap.map(|s| s.weight),
                    slots,
                    share: if ring.is_empty() {
                        0.0
                    } else {
                        slots as f64 / ring.len() as f64
                    },
                    last_check_ok: snap.and_then(|s| s.last_check_ok),
                    last_check_latency_us: snap.and_then(|s| s.last_check_latency_us),
                    last_check_error: snap.and_then(|s| s.last_check_error.clone()),
                    since_change_seconds: snap
                        .map(|s| now.saturating_sub(s.last_change_unix_ms) as f64 / 1000.0),
                }
            })
            .collect();
        vips.push(VipStatusReport {
            name: view.vip_name(id),
            id,
            address: vip.key.address().to_string(),
            port: vip.key.port(),
            protocol: vip.key.protocol(),
            forward: vip.entry.forward_mode(),
            ring_size: ring.len() as u32,
            ring_fingerprint: fingerprint(&ring, &addresses),
            backends,
        });
    }
    let snapshot = view.snapshot.as_ref();
    let agent = snapshot.map(|s| AgentStatus {
        pid: s.pid,
        running: nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.pid as i32), None).is_ok(),
        config: s.config.display().to_string(),
        updated_unix_ms: s.updated_unix_ms,
    });
    Ok(Status {
        interface: snapshot.map(|s| s.interface.clone()),
        xdp_mode: snapshot.map(|s| s.xdp_mode),
        program_id: snapshot.and_then(|s| s.program_id),
        agent,
        vips,
    })
}

/// FNV-1a (64-bit) over the backend address of every slot; 12 hex digits.
pub fn fingerprint(ring: &[u32], addresses: &BTreeMap<u32, String>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for slot in ring {
        let name = if *slot == NO_BACKEND {
            "-"
        } else {
            addresses.get(slot).map_or("?", String::as_str)
        };
        for byte in name.bytes().chain([b'\n']) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{:012x}", hash >> 16)
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
        let _ = writeln!(
            out,
            "\nvip {} {}/{} {}  ring {} slots, fingerprint {}",
            vip.name,
            endpoint(&vip.address, vip.port),
            vip.protocol.map_or("?", Protocol::name),
            vip.forward.map_or("?", ForwardMode::name),
            vip.ring_size,
            vip.ring_fingerprint
        );
        let _ = writeln!(
            out,
            "  {:<24} {:<9} {:>6} {:>7} {:>7}  {:<28} SINCE CHANGE",
            "BACKEND", "STATE", "WEIGHT", "SLOTS", "SHARE", "LAST CHECK"
        );
        for b in &vip.backends {
            let check = match (
                b.last_check_ok,
                b.last_check_latency_us,
                &b.last_check_error,
            ) {
                (Some(true), Some(us), _) => {
                    format!("ok in {}", human_duration(Duration::from_micros(us)))
                }
                (Some(false), _, Some(error)) => format!("failed: {error}"),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<24} {:<9} {:>6} {:>7} {:>6.1}%  {:<28} {}",
                b.address,
                b.state.name(),
                b.weight.map_or("-".to_owned(), |w| w.to_string()),
                b.slots,
                b.share * 100.0,
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

    #[test]
    fn fingerprints_depend_on_addresses_not_ids() {
        let a: BTreeMap<u32, String> =
            [(0, "10.0.0.1".to_owned()), (1, "10.0.0.2".to_owned())].into();
        let b: BTreeMap<u32, String> =
            [(7, "10.0.0.1".to_owned()), (9, "10.0.0.2".to_owned())].into();
        assert_eq!(fingerprint(&[0, 1, 0], &a), fingerprint(&[7, 9, 7], &b));
        assert_ne!(fingerprint(&[0, 1, 0], &a), fingerprint(&[1, 0, 0], &a));
    }
}
