//! Stopping: a graceful stop withdraws every announced address and keeps forwarding for
//! `announce.drain` before the datapath is detached; `--keep-datapath` leaves the datapath (and
//! its routes) to the next agent.

use super::Agent;
use crate::error::Chain;

impl Agent {
    /// Starts a graceful stop: withdraws every address; returns whether to keep forwarding for
    /// the drain time (`[announce]` set, the datapath not kept).
    pub(super) async fn begin_graceful_stop(&mut self) -> bool {
        let Some(announce) = self.live.announce else {
            return false;
        };
        if self.keep_datapath || self.announcer.is_none() {
            return false;
        }
        self.stopping = true;
        // `lb status --check` fails from now on (written before the first address goes), so a
        // supervisor (keepalived) moves away at once.
        self.update_announcements().await;
        self.publish();
        tracing::info!(
            "graceful stop: every vip address withdrawn; forwarding for {} more, then detaching (a second SIGTERM detaches at once)",
            humantime::format_duration(announce.drain)
        );
        !announce.drain.is_zero()
    }

    /// Stops health checks; unless `--keep-datapath`, withdraws every address (if not done
    /// yet) and detaches and unpins the datapath.
    pub async fn shutdown(mut self) {
        if !self.keep_datapath {
            self.stopping = true;
            self.update_announcements().await;
        }
        let Self {
            fixed,
            datapath,
            vips,
            keep_datapath,
            mut publisher,
            check_interface,
            ..
        } = self;
        publisher.close(); // what it writes must not follow the removal below
        drop(vips); // stops the checkers
        if let Some(interface) = check_interface {
            interface.remove().await;
        }
        if keep_datapath {
            tracing::info!(state_dir = %fixed.state_dir.display(), "datapath left attached (--keep-datapath): the next lb run adopts it");
            return;
        }
        crate::status::remove(&fixed.state_dir);
        match datapath.detach_and_unpin() {
            Ok(()) => tracing::info!("datapath detached"),
            Err(error) => tracing::error!("detaching the datapath failed: {}", Chain(&error)),
        }
    }
}
