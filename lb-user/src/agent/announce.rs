//! Announcing VIP addresses (`[announce]`): lb keeps one `blackhole ADDR/32` (`/128`) route per
//! servable VIP address in a routing table it owns, and the operator's routing daemon (bird2,
//! FRR) announces that table's routes upstream. lb speaks no routing protocol itself.
//!
//! The pure half decides: a VIP is servable when its `VIPS` entry is in place and its ring
//! holds a backend ([`servable`]); an address is wanted when a servable VIP with `announce` on
//! has it ([`wanted`]); [`Announcer`] (the I/O half) adds and deletes routes so the table holds
//! exactly the wanted ones, logging one line per change with its reason. The agent's side
//! (`update_announcements`, `reconcile_announcements`) makes the announced addresses follow
//! every change that can make a VIP servable or not.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Instant,
};

use lb_common::maps::VipKey;

use super::{plan::Written, runtime::VipRuntime, Agent};
use crate::{
    config::VipConfig,
    error::Chain,
    routes::{host_prefix, RouteError, RouteOwner, Routes},
};

/// Whether a VIP can serve: its `VIPS` entry is in place and its ring holds a backend (a
/// backend up, or fail-open backends).
pub fn servable(written: &Written) -> bool {
    written.entry.is_some() && written.ring.is_some_and(|ring| ring.has_backend())
}

/// The addresses to announce, each with the name of a servable VIP that wants it.
pub fn wanted<'a>(
    vips: impl IntoIterator<Item = (&'a VipConfig, bool)>,
) -> BTreeMap<IpAddr, &'a str> {
    let mut wanted = BTreeMap::new();
    for (vip, servable) in vips {
        if vip.announce && servable {
            wanted.entry(vip.address).or_insert(vip.name.as_str());
        }
    }
    wanted
}

/// Why `address` is no longer wanted, from what the VIPs on it say.
pub fn withdraw_reason<'a>(
    address: IpAddr,
    vips: impl IntoIterator<Item = (&'a VipConfig, bool)>,
) -> String {
    let reasons: Vec<String> = vips
        .into_iter()
        .filter(|(vip, _)| vip.address == address)
        .map(|(vip, servable)| match (vip.announce, servable) {
            (false, _) => format!("vip {} has announce = false", vip.name),
            (true, false) => format!("vip {} has no backend to send to", vip.name),
            (true, true) => format!("vip {} is servable", vip.name),
        })
        .collect();
    if reasons.is_empty() {
        "no vip has this address any more".to_owned()
    } else {
        reasons.join(", ")
    }
}

/// The table's routes, split: ours (our protocol number) and foreign ones.
fn split(routes: &[crate::routes::TableRoute], protocol: u8) -> (BTreeSet<IpAddr>, Vec<IpAddr>) {
    let mut ours = BTreeSet::new();
    let mut foreign = Vec::new();
    for route in routes {
        if route.protocol == protocol {
            ours.insert(route.address);
        } else {
            foreign.push(route.address);
        }
    }
    (ours, foreign)
}

/// Keeps the routing table in line with the wanted addresses.
#[derive(Debug)]
pub struct Announcer {
    routes: Routes,
    owner: RouteOwner,
    /// Our routes in the table, as far as we know.
    announced: BTreeSet<IpAddr>,
}

impl Announcer {
    /// Connects and reconciles the table with `wanted`: our routes for other addresses are
    /// removed, routes of other protocols are left alone with a warning, missing ones are
    /// added. Routes a previous agent left for wanted addresses stay in place (no flap).
    pub async fn start(
        owner: RouteOwner,
        wanted: &BTreeMap<IpAddr, &str>,
        why: impl Fn(IpAddr) -> String,
    ) -> Result<Self, RouteError> {
        let routes = Routes::connect()?;
        let (ours, foreign) = split(&routes.list(owner.table).await?, owner.protocol);
        for address in foreign {
            tracing::warn!(
                table = owner.table,
                "route {} in table {} has another protocol number than {}: left alone",
                host_prefix(address),
                owner.table,
                owner.protocol
            );
        }
        let mut announcer = Self {
            routes,
            owner,
            announced: ours,
        };
        announcer.update(wanted, why).await;
        Ok(announcer)
    }

    /// Re-reads the table, then [`Self::update`]s: our routes someone else removed are added
    /// again, ours for addresses no longer wanted are removed.
    pub async fn reconcile(
        &mut self,
        wanted: &BTreeMap<IpAddr, &str>,
        why: impl Fn(IpAddr) -> String,
    ) {
        match self.routes.list(self.owner.table).await {
            Ok(routes) => self.announced = split(&routes, self.owner.protocol).0,
            Err(error) => tracing::error!(
                // The error names the table.
                "cannot read the announced routes, keeping what this agent wrote: {}",
                Chain(&error)
            ),
        }
        self.update(wanted, why).await;
    }

    /// Which table and protocol it writes.
    pub fn owner(&self) -> RouteOwner {
        self.owner
    }

    /// Whether `address` is announced.
    pub fn is_announced(&self, address: IpAddr) -> bool {
        self.announced.contains(&address)
    }

    /// Whether [`Self::update`] with `wanted` would withdraw an address.
    pub fn would_withdraw(&self, wanted: &BTreeMap<IpAddr, &str>) -> bool {
        self.announced.iter().any(|a| !wanted.contains_key(a))
    }

    /// Adds the wanted addresses that are not announced and deletes the announced ones that
    /// are not wanted (`why` says why, per address). A failure is logged and retried on the
    /// next update.
    pub async fn update(
        &mut self,
        wanted: &BTreeMap<IpAddr, &str>,
        why: impl Fn(IpAddr) -> String,
    ) {
        let stale: Vec<IpAddr> = self
            .announced
            .iter()
            .filter(|address| !wanted.contains_key(address))
            .copied()
            .collect();
        for address in stale {
            let started = Instant::now();
            match self.routes.remove(self.owner, address).await {
                Ok(()) => {
                    self.announced.remove(&address);
                    tracing::info!(
                        %address,
                        table = self.owner.table,
                        netlink_us = started.elapsed().as_micros() as u64,
                        "vip address {address} withdrawn: {}",
                        why(address)
                    );
                }
                Err(error) => tracing::error!(
                    %address,
                    // The error names the route (the address) and the table.
                    "cannot withdraw a vip address: {}",
                    Chain(&error)
                ),
            }
        }
        for (address, vip) in wanted {
            if self.announced.contains(address) {
                continue;
            }
            let started = Instant::now();
            match self.routes.add(self.owner, *address).await {
                Ok(()) => {
                    self.announced.insert(*address);
                    tracing::info!(
                        %address,
                        table = self.owner.table,
                        netlink_us = started.elapsed().as_micros() as u64,
                        "vip address {address} announced: vip {vip} is servable"
                    );
                }
                Err(error) => tracing::error!(
                    %address,
                    // The error names the route (the address) and the table.
                    "cannot announce a vip address: {}",
                    Chain(&error)
                ),
            }
        }
    }

    /// Withdraws every address (graceful stop, `[announce]` changed or removed).
    pub async fn withdraw_all(&mut self, why: &str) {
        self.update(&BTreeMap::new(), |_| why.to_owned()).await;
    }
}

/// Every VIP's configuration with whether it is servable now.
fn servability(vips: &BTreeMap<VipKey, VipRuntime>) -> Vec<(&VipConfig, bool)> {
    vips.values()
        .map(|vip| (&vip.config, servable(&vip.written)))
        .collect()
}

impl Agent {
    /// Brings the announced addresses in line with the VIPs' servability. Before an address
    /// is withdrawn, the status snapshot saying why is written: whoever sees the route gone
    /// (a test, a supervisor) finds `lb status --check` failing already.
    pub(super) async fn update_announcements(&mut self) {
        let Some(announcer) = self.announcer.as_ref() else {
            return;
        };
        let withdrawing =
            self.stopping || announcer.would_withdraw(&wanted(servability(&self.vips)));
        if withdrawing {
            self.publish();
            self.publisher.wait();
        }
        let Some(announcer) = self.announcer.as_mut() else {
            return;
        };
        let vips = servability(&self.vips);
        if self.stopping {
            announcer
                .update(&BTreeMap::new(), |_| "graceful stop".to_owned())
                .await;
        } else {
            let wanted = wanted(vips.iter().copied());
            announcer
                .update(&wanted, |address| {
                    withdraw_reason(address, vips.iter().copied())
                })
                .await;
        }
        if let Some(m) = &self.metrics {
            for vip in self.vips.values() {
                let announced = vip.config.announce
                    && servable(&vip.written)
                    && announcer.is_announced(vip.config.address);
                m.vip_announced(vip.id, announced);
            }
        } // metrics hook
    }

    /// Reconciles the routing table with the configuration's `[announce]`: a changed table or
    /// protocol first withdraws everything from the old one; then the table is read and our
    /// routes for addresses no longer served are removed, missing ones added.
    pub(super) async fn reconcile_announcements(&mut self) {
        let wanted_owner = self.live.announce.map(|a| RouteOwner {
            table: a.table,
            protocol: a.protocol,
        });
        if self.announcer.as_ref().map(Announcer::owner) != wanted_owner {
            if let Some(mut old) = self.announcer.take() {
                old.withdraw_all("[announce] changed").await;
            }
        }
        let Some(owner) = wanted_owner else {
            return;
        };
        let vips = servability(&self.vips);
        let wanted = wanted(vips.iter().copied());
        let why = |address| withdraw_reason(address, vips.iter().copied());
        match self.announcer.as_mut() {
            Some(announcer) => announcer.reconcile(&wanted, why).await,
            None => match Announcer::start(owner, &wanted, why).await {
                Ok(announcer) => self.announcer = Some(announcer),
                Err(error) => tracing::error!(
                    table = owner.table,
                    // A refused request names the table; a socket that cannot open has none.
                    "cannot announce vip addresses: {}",
                    Chain(&error)
                ),
            },
        }
        self.update_announcements().await;
    }
}

#[cfg(test)]
mod tests {
    use lb_common::maps::{ForwardMode, Vip};

    use super::*;
    use crate::agent::plan::RingDigest;
    use lb_common::maps::NO_BACKEND;

    fn vip(name: &str, address: &str, announce: bool) -> VipConfig {
        let text = format!(
            "interface = \"eth0\"\n[announce]\n[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\n\
             port = 80\nannounce = {announce}\n[[vip.backend]]\naddress = \"10.0.0.11\"\n"
        );
        let config = crate::config::parse(std::path::Path::new("t.toml"), &text).expect("config");
        config.live.vips[0].clone()
    }

    #[test]
    fn a_vip_serves_once_its_entry_and_a_backend_are_in_place() {
        let mut written = Written::default();
        assert!(!servable(&written));
        written.ring = Some(RingDigest::of(&[NO_BACKEND; 7]));
        written.entry = Some(Vip::new(0, 7, ForwardMode::Dsr));
        assert!(!servable(&written), "an empty ring drops");
        written.ring = Some(RingDigest::of(&[NO_BACKEND, 3, NO_BACKEND]));
        assert!(servable(&written));
    }

    #[test]
    fn an_address_is_wanted_while_one_announced_vip_on_it_serves() {
        let web = vip("web", "10.0.0.100", true);
        let dns = vip("dns", "10.0.0.100", true);
        let quiet = vip("quiet", "10.0.0.101", false);
        let all = [(&web, false), (&dns, true), (&quiet, true)];
        let wanted = wanted(all);
        assert_eq!(wanted.len(), 1, "{wanted:?}");
        assert_eq!(wanted[&web.address], "dns");
        assert_eq!(
            withdraw_reason(quiet.address, all),
            "vip quiet has announce = false"
        );
        assert_eq!(
            withdraw_reason(web.address, [(&web, false)]),
            "vip web has no backend to send to"
        );
        assert_eq!(
            withdraw_reason("10.9.9.9".parse().unwrap(), all),
            "no vip has this address any more"
        );
    }

    #[test]
    fn routes_of_other_protocols_are_not_ours() {
        let route = |address: &str, protocol| crate::routes::TableRoute {
            address: address.parse().unwrap(),
            protocol,
        };
        let (ours, foreign) = split(
            &[
                route("10.0.0.1", 250),
                route("10.0.0.2", 12),
                route("fd00::1", 250),
            ],
            250,
        );
        assert_eq!(ours.len(), 2);
        assert_eq!(foreign, ["10.0.0.2".parse::<IpAddr>().unwrap()]);
    }
}
