//! Finding the VIP of a packet and the backend of its flow.

use lb_common::{
    flow_hash,
    maps::{Backend, BackendState, Conntrack, Vip, VipKey, NO_BACKEND},
    stats::Counter,
    FlowKey,
};

use crate::{
    maps::{BACKENDS, CONNTRACK, RINGS, VIPS},
    parse::Packet,
    stats,
};

/// The VIP a flow is addressed to: exact (address, port, protocol) first, then the address's
/// all-ports VIP (port 0).
#[inline(always)]
pub fn vip(flow: &FlowKey) -> Option<Vip> {
    let mut key = VipKey {
        addr: flow.dst,
        port: flow.dst_port,
        protocol: flow.protocol,
        family: flow.family,
    };
    if let Some(vip) = VIPS.get_ptr(&key) {
        // SAFETY: the kernel returned a pointer to a value of VIPS, valid for this program run;
        // we copy it out immediately.
        return Some(unsafe { *vip });
    }
    key.port = [0, 0];
    // SAFETY: as above.
    VIPS.get_ptr(&key).map(|vip| unsafe { *vip })
}

/// A backend chosen for a packet.
pub struct Choice {
    /// Index into `BACKENDS` and `BACKEND_STATS`.
    pub id: u32,
    /// Its entry.
    pub backend: Backend,
}

/// Chooses the backend of a packet's flow.
///
/// A tracked flow stays on its backend while that backend is up or draining; a SYN (a new
/// connection, even on a reused 5-tuple) and an untracked flow go through the VIP's Maglev ring,
/// and so does a tracked flow whose backend went down (it is re-hashed). An ICMP error follows
/// its flow the same way but is never tracked itself. `None`: no backend.
#[inline(always)]
pub fn backend(packet: &Packet, vip: &Vip) -> Option<Choice> {
    if !packet.syn {
        if let Some(choice) = tracked(&packet.flow) {
            stats::vip_conntrack_hit(vip.id);
            return Some(choice);
        }
    }
    let choice = from_ring(&packet.flow, vip)?;
    if packet.icmp_error {
        // An error message about a flow is no reason to track it.
        return Some(choice);
    }
    if CONNTRACK
        .insert(&packet.flow, &Conntrack { backend: choice.id }, 0)
        .is_err()
    {
        stats::count(Counter::ConntrackFull);
    }
    stats::new_flow(vip.id, choice.id);
    Some(choice)
}

#[inline(always)]
fn tracked(flow: &FlowKey) -> Option<Choice> {
    let entry = CONNTRACK.get_ptr(flow)?;
    // SAFETY: pointer from the kernel to a CONNTRACK value; we copy the u32 out at once.
    let id = unsafe { (*entry).backend };
    let backend = lookup_backend(id)?;
    if BackendState::from_raw(backend.state).is_usable() {
        Some(Choice { id, backend })
    } else {
        stats::count(Counter::Rehashed);
        None
    }
}

#[inline(always)]
fn from_ring(flow: &FlowKey, vip: &Vip) -> Option<Choice> {
    if vip.ring_size == 0 {
        return None;
    }
    let slot = flow_hash(flow) % vip.ring_size;
    let id = *RINGS.get_value(vip.id, &slot)?;
    if id == NO_BACKEND {
        return None;
    }
    Some(Choice {
        id,
        backend: lookup_backend(id)?,
    })
}

#[inline(always)]
fn lookup_backend(id: u32) -> Option<Backend> {
    BACKENDS.get(id).copied()
}
