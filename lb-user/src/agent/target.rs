//! What the datapath should hold for a VIP, computed from what the agent knows of its backends
//! (health, next hop, weight): each backend's `BACKENDS` entry and the VIP's Maglev ring. Pure:
//! [`mod@super::plan`] turns the result into map writes.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use anyhow::Context as _;
use lb_common::maps::{Backend, BackendState, ForwardMode, NewFlowRule, Vip, VipKey, NO_BACKEND};

use super::{
    plan::VipTarget,
    rings::{RingCache, RingShape, SharedRing},
};
use crate::{config::OnAllDown, health::Health, nexthop::NextHop, status::ServingState};

/// What the target of one backend depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendFacts {
    /// Backend id.
    pub id: u32,
    /// Its address (also its Maglev identity).
    pub address: IpAddr,
    /// Its ring weight (0: draining): the configured weight scaled, during slow start ramping,
    /// 0 when drained or in maintenance (see `admin::ring_weight`).
    pub weight: u32,
    /// In maintenance: out of the ring and down in the datapath (tracked flows re-hash).
    pub maintenance: bool,
    /// Its health.
    pub health: Health,
    /// Where its packets go, once resolved.
    pub next_hop: Option<NextHop>,
    /// Down because its checks through the VIP fail while its own address answers them.
    pub answers_at_own_address: bool,
}

/// What the target of one VIP depends on, besides its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipFacts<'a> {
    /// VIP id.
    pub id: u32,
    /// Its `VIPS` key.
    pub key: VipKey,
    /// Its name (for errors).
    pub name: &'a str,
    /// How its packets reach the backends.
    pub forward: ForwardMode,
    /// How the datapath picks a new flow's backend.
    pub new_flows: NewFlowRule,
    /// What it does when no backend is up.
    pub on_all_down: OnAllDown,
    /// Slots of its ring (a prime).
    pub ring_size: u32,
}

/// The `BACKENDS` state a backend should have: up when healthy with a next hop, draining when
/// so with weight 0, else (or in maintenance) down.
pub fn datapath_state(backend: &BackendFacts) -> BackendState {
    match (
        backend.maintenance,
        backend.health,
        backend.next_hop.is_some(),
        backend.weight,
    ) {
        (false, Health::Up, true, 0) => BackendState::Draining,
        (false, Health::Up, true, _) => BackendState::Up,
        _ => BackendState::Down,
    }
}

/// How `lb status` shows a backend: unknown before its first check, else its datapath state.
pub fn serving_state(backend: &BackendFacts) -> ServingState {
    match backend.health {
        Health::Unknown => ServingState::Unknown,
        Health::Up | Health::Down => datapath_state(backend).into(),
    }
}

/// The `BACKENDS` entry of a backend of VIP `vip` (a backend without a next hop gets zeros).
pub fn backend_entry(vip: u32, backend: &BackendFacts) -> Backend {
    let (addr, family) = lb_common::encoding::addr_bytes(backend.address);
    let hop = backend.next_hop.unwrap_or(NextHop {
        ifindex: 0,
        mtu: 0,
        src_mac: [0; 6],
        dst_mac: [0; 6],
        gateway: None,
    });
    Backend {
        addr,
        family: family as u8,
        state: datapath_state(backend) as u8,
        _pad: [0; 2],
        vip,
        ifindex: hop.ifindex,
        mtu: hop.mtu,
        dst_mac: hop.dst_mac,
        src_mac: hop.src_mac,
    }
}

/// The backends of a VIP none of whose backends is up that fail their checks through the VIP
/// while their own addresses answer (with a weight and a next hop). That every backend of a VIP
/// stopped serving it at once is less likely than a fault of this host's check path (a
/// reverse-path filter dropping the answers, say: the backends look fine from here): they keep
/// the VIP, which would otherwise have no backend.
pub fn held_by_own_address(backends: &[BackendFacts]) -> Vec<&BackendFacts> {
    if backends
        .iter()
        .any(|b| datapath_state(b) == BackendState::Up)
    {
        return Vec::new();
    }
    backends
        .iter()
        .filter(|b| {
            b.answers_at_own_address && !b.maintenance && b.weight > 0 && b.next_hop.is_some()
        })
        .collect()
}

/// The ring of a VIP: its up backends by weight; with none up, those
/// [`held_by_own_address`], else with `on_all_down = "fail-open"` every backend with a weight
/// and a next hop; `NO_BACKEND` everywhere when empty. Built once per shape in `rings`.
pub fn ring(
    vip: &VipFacts<'_>,
    backends: &[BackendFacts],
    rings: &mut RingCache,
) -> anyhow::Result<Arc<SharedRing>> {
    rings
        .ring(ring_shape(vip, backends))
        .with_context(|| format!("building the ring of vip {}", vip.name))
}

/// What the ring of a VIP with `backends` is built from (see [`ring`]).
pub fn ring_shape(vip: &VipFacts<'_>, backends: &[BackendFacts]) -> RingShape {
    let mut members: Vec<&BackendFacts> = backends
        .iter()
        .filter(|b| datapath_state(b) == BackendState::Up)
        .collect();
    if members.is_empty() {
        members = held_by_own_address(backends);
    }
    if members.is_empty() && vip.on_all_down == OnAllDown::FailOpen {
        members = backends
            .iter()
            .filter(|b| b.weight > 0 && b.next_hop.is_some())
            .collect();
    }
    RingShape::new(vip.ring_size, members.iter().map(|b| (b.address, b.weight)))
}

/// Everything the datapath should hold for a VIP, and its ring as shared with the VIPs of the
/// same shape (its fingerprint, the slots of each backend).
pub fn vip_target(
    vip: &VipFacts<'_>,
    backends: &[BackendFacts],
    rings: &mut RingCache,
) -> anyhow::Result<(VipTarget, Arc<SharedRing>)> {
    let shared = ring(vip, backends, rings)?;
    let ids: BTreeMap<IpAddr, u32> = backends.iter().map(|b| (b.address, b.id)).collect();
    let target = VipTarget {
        key: vip.key,
        entry: Vip::new(vip.id, vip.ring_size, vip.forward).picking(vip.new_flows),
        ring: shared.ids(&|address| ids.get(&address).copied().unwrap_or(NO_BACKEND)),
        backends: backends
            .iter()
            .map(|b| (b.id, backend_entry(vip.id, b)))
            .collect::<BTreeMap<_, _>>(),
    };
    Ok((target, shared))
}

#[cfg(test)]
mod tests {
    use lb_common::maps::Protocol;

    use super::*;

    fn hop() -> Option<NextHop> {
        Some(NextHop {
            ifindex: 2,
            mtu: 1500,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            gateway: None,
        })
    }

    fn facts(id: u32, health: Health, weight: u32) -> BackendFacts {
        BackendFacts {
            id,
            address: format!("10.0.0.{}", 10 + id).parse().unwrap(),
            weight,
            maintenance: false,
            health,
            next_hop: hop(),
            answers_at_own_address: false,
        }
    }

    fn vip(on_all_down: OnAllDown) -> VipFacts<'static> {
        VipFacts {
            id: 3,
            key: VipKey::new("10.0.0.100".parse().unwrap(), 80, Protocol::Tcp),
            name: "web",
            forward: ForwardMode::Dsr,
            new_flows: NewFlowRule::Ring,
            on_all_down,
            ring_size: 251,
        }
    }

    /// The ring (with backend ids) of `vip(on_all_down)` over `backends`.
    fn ring_of(on_all_down: OnAllDown, backends: &[BackendFacts]) -> Vec<u32> {
        vip_target(&vip(on_all_down), backends, &mut RingCache::default())
            .expect("target")
            .0
            .ring
    }

    #[test]
    fn datapath_state_follows_health_next_hop_and_weight() {
        assert_eq!(datapath_state(&facts(0, Health::Up, 1)), BackendState::Up);
        assert_eq!(
            datapath_state(&facts(0, Health::Up, 0)),
            BackendState::Draining
        );
        let no_hop = BackendFacts {
            next_hop: None,
            ..facts(0, Health::Up, 1)
        };
        assert_eq!(datapath_state(&no_hop), BackendState::Down);
        assert_eq!(
            datapath_state(&facts(0, Health::Down, 0)),
            BackendState::Down
        );
        assert_eq!(
            datapath_state(&facts(0, Health::Unknown, 1)),
            BackendState::Down
        );
        assert_eq!(
            serving_state(&facts(0, Health::Unknown, 1)),
            ServingState::Unknown
        );
        assert_eq!(
            serving_state(&facts(0, Health::Up, 0)),
            ServingState::Draining
        );
        let maintenance = BackendFacts {
            maintenance: true,
            ..facts(0, Health::Up, 0)
        };
        assert_eq!(
            datapath_state(&maintenance),
            BackendState::Down,
            "tracked flows re-hash"
        );
    }

    #[test]
    fn the_ring_holds_up_backends_only() {
        let backends = [
            facts(0, Health::Up, 1),
            facts(1, Health::Down, 1),
            facts(2, Health::Up, 0),
        ];
        let ring = ring_of(OnAllDown::Drop, &backends);
        assert!(ring.iter().all(|slot| *slot == 0), "only backend 0 is up");
        let (target, _) = vip_target(&vip(OnAllDown::Drop), &backends, &mut RingCache::default())
            .expect("target");
        assert_eq!(target.entry, Vip::new(3, 251, ForwardMode::Dsr));
        assert_eq!(target.backends[&2].state(), BackendState::Draining);
        assert_eq!(target.backends[&1].vip, 3);
    }

    #[test]
    fn with_all_down_the_ring_is_empty_or_fails_open() {
        let backends = [facts(0, Health::Down, 1), facts(1, Health::Down, 0)];
        let dropped = ring_of(OnAllDown::Drop, &backends);
        assert!(dropped.iter().all(|slot| *slot == NO_BACKEND));
        let open = ring_of(OnAllDown::FailOpen, &backends);
        assert!(open.iter().all(|slot| *slot == 0), "weighted backends only");
    }

    #[test]
    fn with_none_up_backends_answering_at_their_own_address_keep_the_vip() {
        let answering = BackendFacts {
            answers_at_own_address: true,
            ..facts(0, Health::Down, 1)
        };
        let dead = facts(1, Health::Down, 1);
        let held = ring_of(OnAllDown::Drop, &[answering, dead]);
        assert!(held.iter().all(|slot| *slot == 0), "the answering one only");
        assert_eq!(held_by_own_address(&[answering, dead]).len(), 1);
        // One backend up: it alone serves; the others are out, whatever their own address says.
        let up = facts(2, Health::Up, 1);
        assert!(ring_of(OnAllDown::Drop, &[answering, up])
            .iter()
            .all(|slot| *slot == 2));
        assert!(held_by_own_address(&[answering, up]).is_empty());
    }

    #[test]
    fn ids_do_not_move_slots() {
        let one = [facts(0, Health::Up, 1), facts(1, Health::Up, 1)];
        let mut other = one;
        other[0].id = 40;
        other[1].id = 41;
        other.reverse();
        let a = ring_of(OnAllDown::Drop, &one);
        let b = ring_of(OnAllDown::Drop, &other);
        let renamed: Vec<u32> = a.iter().map(|id| id + 40).collect();
        assert_eq!(renamed, b);
    }
}
