//! The agent's health checkers: one task per backend (see `crate::health`), whose events all
//! arrive on one queue, tagged so that events of a checker that was replaced are ignored.

use lb_common::maps::VipKey;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    config::BackendConfig,
    health::{spawn_checker, HealthEvent},
};

/// How many check results may wait for the agent.
pub(super) const QUEUE: usize = 1024;

/// Identity of a checker run: the VIP and backend it checks (so its events go straight to
/// them, not through a search of every VIP) and a token that changes whenever the checker is
/// restarted, so events of a stopped checker are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckerKey {
    /// The VIP.
    pub vip: VipKey,
    /// Backend id.
    pub backend: u32,
    /// Which run of its checker.
    pub token: u64,
}

/// A running checker; stopped when dropped.
#[derive(Debug)]
pub struct Checker {
    /// Its events carry this token.
    pub token: u64,
    task: JoinHandle<()>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts checkers that all report to one queue.
#[derive(Debug)]
pub struct Checkers {
    events: mpsc::Sender<HealthEvent<CheckerKey>>,
    next_token: u64,
}

impl Checkers {
    /// The spawner and the queue its checkers report to.
    pub fn new() -> (Self, mpsc::Receiver<HealthEvent<CheckerKey>>) {
        let (events, receiver) = mpsc::channel(QUEUE);
        (
            Self {
                events,
                next_token: 0,
            },
            receiver,
        )
    }

    /// Starts checking backend `id` of VIP `vip` as `config` says (its first check runs at
    /// once).
    pub fn start(&mut self, vip: &VipKey, id: u32, config: &BackendConfig) -> Checker {
        self.next_token += 1;
        let token = self.next_token;
        let task = spawn_checker(
            CheckerKey {
                vip: *vip,
                backend: id,
                token,
            },
            config.address,
            &config.health,
            self.events.clone(),
        );
        Checker { token, task }
    }
}
