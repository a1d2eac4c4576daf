//! The datapath's lookup rules as plain functions: which VIP keys a flow tries, which ring slot
//! it hashes to, and whether it follows its tracked backend or the ring. The XDP program and
//! `lb explain` both call these, so the CLI predicts the kernel by construction.

use crate::{
    flow_hash,
    maps::{BackendState, VipKey},
    FlowKey,
};

/// The `VIPS` keys tried for `flow`, in order: its exact destination port, then the address's
/// all-ports VIP (port 0).
#[inline(always)]
pub fn vip_keys(flow: &FlowKey) -> [VipKey; 2] {
    vip_key_words(flow).map(VipKey::from_words)
}

/// [`vip_keys`] as [`VipKey::words`], computed from [`FlowKey::words`] (how the datapath
/// builds them: a few shifts instead of copying bytes).
#[inline(always)]
pub fn vip_key_words(flow: &FlowKey) -> [[u32; 5]; 2] {
    let w = flow.words();
    // Word 8 holds the source then the destination port, word 9 protocol then family; a VIP
    // key's last word holds the destination port, protocol, family.
    let tail = w[9] << 16;
    [
        [w[4], w[5], w[6], w[7], (w[8] >> 16) | tail],
        [w[4], w[5], w[6], w[7], tail],
    ]
}

/// The ring slot of `flow` in a ring of `ring_size` slots; `None` for an empty ring.
#[inline(always)]
pub fn ring_slot(flow: &FlowKey, ring_size: u32) -> Option<u32> {
    if ring_size == 0 {
        None
    } else {
        Some(flow_hash(flow) % ring_size)
    }
}

/// Where a packet's backend comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The flow's tracked backend (conntrack), which is up or draining.
    Tracked,
    /// The ring: the flow is not tracked, or the packet is a SYN (a new connection, even on a
    /// reused 5-tuple).
    Ring,
    /// The ring, because the tracked backend is down or gone: the flow is re-hashed.
    Rehash,
}

/// Where the backend of a packet comes from, given the state of the backend its flow is
/// tracked to (`None`: not tracked) and whether the packet is a TCP SYN.
#[inline(always)]
pub fn source(tracked: Option<BackendState>, syn: bool) -> Source {
    match tracked {
        _ if syn => Source::Ring,
        None => Source::Ring,
        Some(state) if state.is_usable() => Source::Tracked,
        Some(_) => Source::Rehash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::Protocol;

    #[test]
    fn a_flow_tries_its_port_then_all_ports() {
        for flow in [
            FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 100], 40000, 80, Protocol::Tcp),
            FlowKey::v6([1; 16], [2; 16], 1, 65535, Protocol::Udp),
        ] {
            let [exact, all] = vip_keys(&flow);
            assert_eq!(exact, VipKey::of_flow(&flow));
            assert_eq!(all, VipKey::of_flow(&flow).all_ports());
            assert_eq!(vip_key_words(&flow), [exact.words(), all.words()]);
        }
    }

    #[test]
    fn tracked_flows_stay_while_their_backend_is_usable() {
        assert_eq!(source(Some(BackendState::Up), false), Source::Tracked);
        assert_eq!(source(Some(BackendState::Draining), false), Source::Tracked);
        assert_eq!(source(Some(BackendState::Down), false), Source::Rehash);
        assert_eq!(source(Some(BackendState::Unused), false), Source::Rehash);
        assert_eq!(source(None, false), Source::Ring);
        assert_eq!(source(Some(BackendState::Up), true), Source::Ring);
        let flow = FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 100], 40000, 80, Protocol::Tcp);
        assert_eq!(ring_slot(&flow, 0), None);
        assert_eq!(ring_slot(&flow, 7), Some(flow_hash(&flow) % 7));
    }
}
