//! The agent's side of `[announce]`: after every change that can make a VIP servable or not,
//! the announced addresses follow (see [`super::announce`] for the decisions and the routes).

use std::collections::BTreeMap;

use lb_common::maps::VipKey;

use super::{announce, announce::Announcer, runtime::VipRuntime, Agent};
use crate::{config::VipConfig, error::Chain, routes::RouteOwner};

/// Every VIP's configuration with whether it is servable now.
fn servability(vips: &BTreeMap<VipKey, VipRuntime>) -> Vec<(&VipConfig, bool)> {
    vips.values()
        .map(|vip| (&vip.config, announce::servable(&vip.written)))
        .collect()
}

impl Agent {
    /// Brings the announced addresses in line with the VIPs' servability.
    pub(super) async fn update_announcements(&mut self) {
        let Some(announcer) = self.announcer.as_mut() else {
            return;
        };
        let vips = servability(&self.vips);
        if self.stopping {
            announcer
                .update(&BTreeMap::new(), |_| "graceful stop".to_owned())
                .await;
        } else {
            let wanted = announce::wanted(vips.iter().copied());
            announcer
                .update(&wanted, |address| {
                    announce::withdraw_reason(address, vips.iter().copied())
                })
                .await;
        }
        if let Some(m) = &self.metrics {
            for vip in self.vips.values() {
                let announced = vip.config.announce
                    && announce::servable(&vip.written)
                    && announcer.is_announced(vip.config.address);
                m.vip_announced(vip.id, announced);
            }
        } // metrics hook
    }

    /// Reconciles the routing table with the configuration's `[announce]`: a changed table or
    /// protocol first withdraws everything from the old one; then the table is read and our
    /// routes for addresses no longer served are removed, missing ones added.
    pub(super) async fn reconcile_announcements(&mut self) {
        let wanted_owner = self.config.announce.map(|a| RouteOwner {
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
        let wanted = announce::wanted(vips.iter().copied());
        let why = |address| announce::withdraw_reason(address, vips.iter().copied());
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
