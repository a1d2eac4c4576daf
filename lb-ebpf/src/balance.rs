//! Finding the VIP of a packet and the backend of its flow.

use lb_common::{
    flow_hash, lookup,
    maps::{Backend, BackendState, Conntrack, Vip, VipKey, NO_BACKEND},
    stats::Counter,
    vip_index::{self, vip_hash_of_words},
    FlowKey,
};

use crate::{
    maps::{BACKENDS, CONNTRACK, RINGS, VIPS, VIP_ENTRIES, VIP_SLOTS},
    parse::Packet,
    stats,
};

/// The VIP a flow is addressed to: the keys of [`lookup::vip_keys`] in order (exact port, then
/// the address's all-ports VIP), each looked up in the VIP index (`lb_common::vip_index`) and,
/// when its slot says so, in `VIPS`.
#[inline(always)]
pub fn vip(flow: &FlowKey) -> Option<Vip> {
    let [exact, all_ports] = lookup::vip_key_words(flow);
    find_vip(exact).or_else(|| find_vip(all_ports))
}

/// The VIP of the key whose [`VipKey::words`] are `key`.
#[inline(always)]
fn find_vip(key: [u32; 5]) -> Option<Vip> {
    let hash = vip_hash_of_words(key);
    let word = *VIP_SLOTS.get(hash.slot)?;
    let probe = vip_index::probe(word, hash.tag);
    if let Some(entry) = probe.candidate.and_then(|id| VIP_ENTRIES.get(id)) {
        if same_words(entry.key.words(), key) {
            return Some(entry.vip);
        }
    }
    if !probe.ask_vips {
        return None;
    }
    let key = VipKey::from_words(key);
    // SAFETY: the kernel returned a pointer to a value of VIPS, valid for this program run;
    // we copy it out immediately.
    VIPS.get_ptr(&key).map(|vip| unsafe { *vip })
}

/// Whether two keys' words are equal, by folding their differences: `==` on arrays becomes a
/// call to a byte-by-byte `memcmp` in BPF.
#[inline(always)]
fn same_words<const N: usize>(a: [u32; N], b: [u32; N]) -> bool {
    let mut difference = 0;
    for i in 0..N {
        difference |= a[i] ^ b[i];
    }
    difference == 0
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
