//! `lb detach`: removes a datapath left forwarding by `lb run --keep-datapath` (or `systemctl
//! stop lb`, or a crash): first the routes it announced (`[announce]`), so that routers stop
//! sending the VIPs here, then its pinned link, which detaches the program, and its maps.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::maps::names;

use crate::{
    datapath::DatapathError,
    routes::{RouteError, RouteOwner, Routes},
    status,
};

/// Why the datapath was not (completely) detached.
#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    /// Not root.
    #[error("detaching needs root (CAP_BPF and CAP_NET_ADMIN): run with sudo or as root")]
    NotRoot,
    /// The agent is still running on this state directory: it would go on forwarding.
    #[error(
        "the agent (pid {pid}) is still running on {}: stop it first (`systemctl stop lb`, or \
         kill {pid}), then run lb detach again",
        dir.display()
    )]
    AgentRunning {
        /// The agent's pid, from its snapshot.
        pid: u32,
        /// The state directory.
        dir: PathBuf,
    },
    /// The configuration named by `--config` cannot be read.
    #[error("cannot find the state_dir to detach")]
    Config(#[from] crate::config::ConfigError),
    /// Removing the pins failed (the cause names the pin or directory).
    #[error("cannot remove the pinned datapath")]
    Remove {
        /// The error (boxed: it is large, and rare).
        #[source]
        source: Box<DatapathError>,
    },
    /// The announced routes could not be withdrawn; nothing was detached.
    #[error(
        "cannot withdraw lb's routes (protocol {}) from table {}: nothing was detached",
        owner.protocol,
        owner.table
    )]
    Routes {
        /// Whose routes.
        owner: RouteOwner,
        /// The error (boxed: it is large, and rare).
        #[source]
        source: Box<RouteError>,
    },
    /// The program is still attached after its link was unpinned: another process holds it.
    #[error(
        "the lb program (id {program_id}) is still attached to {interface}: a process still \
         holds its link (an `lb run` without a snapshot? see `bpftool link show` and \
         `bpftool link show pid`)"
    )]
    StillAttached {
        /// The interface.
        interface: String,
        /// Kernel id of the program.
        program_id: u32,
    },
}

/// What to detach: the state directory, and where its VIPs were announced.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// The state directory.
    pub dir: PathBuf,
    /// `[announce]` of `--config`: its routes are withdrawn, then `drain` waited; without
    /// `--config`, the agent's snapshot says where it announced (and nothing is waited).
    pub announce: Option<(RouteOwner, Duration)>,
}

impl Target {
    /// `--state-dir`, else `state_dir` and `[announce]` of `--config`, else the default.
    pub fn new(state_dir: Option<PathBuf>, config: Option<&Path>) -> Result<Self, DetachError> {
        Ok(match (state_dir, config) {
            (Some(dir), _) => Self {
                dir,
                announce: None,
            },
            (None, Some(config)) => {
                let config = crate::config::load(config)?;
                Self {
                    dir: config.fixed.state_dir,
                    announce: config.live.announce.map(|a| {
                        (
                            RouteOwner {
                                table: a.table,
                                protocol: a.protocol,
                            },
                            a.drain,
                        )
                    }),
                }
            }
            (None, None) => Self {
                dir: PathBuf::from(crate::config::DEFAULT_STATE_DIR),
                announce: None,
            },
        })
    }
}

/// Detaches `target`; returns what was done, for the operator.
pub async fn detach(target: &Target) -> Result<String, DetachError> {
    let dir = target.dir.as_path();
    if !nix::unistd::geteuid().is_root() {
        return Err(DetachError::NotRoot);
    }
    let snapshot = status::read(dir);
    if let Some(snapshot) = &snapshot {
        let alive =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(snapshot.pid as i32), None).is_ok();
        if alive && snapshot.pid != std::process::id() {
            return Err(DetachError::AgentRunning {
                pid: snapshot.pid,
                dir: dir.to_path_buf(),
            });
        }
    }
    // Routers first: once the routes are gone they stop sending the VIPs here; the program
    // forwards what still arrives for the drain time, as a graceful `lb run` stop does.
    let announce = target
        .announce
        .or_else(|| Some((snapshot.as_ref()?.announce?, Duration::ZERO)));
    let mut withdrawn = String::new();
    if let Some((owner, drain)) = announce {
        let count = withdraw(owner)
            .await
            .map_err(|source| DetachError::Routes {
                owner,
                source: Box::new(source),
            })?;
        if count > 0 {
            withdrawn = format!(
                "withdrew {count} announced routes from table {}; ",
                owner.table
            );
            tokio::time::sleep(drain).await;
        }
    }
    let pinned: Vec<&str> = std::iter::once(names::LINK)
        .chain(names::BALANCER)
        .filter(|name| dir.join(name).exists())
        .collect();
    if pinned.is_empty() {
        status::remove(dir);
        return Ok(format!(
            "{withdrawn}nothing to detach: no lb datapath pinned at {}",
            dir.display()
        ));
    }
    crate::datapath::remove_pins(dir).map_err(|source| DetachError::Remove {
        source: Box::new(source),
    })?;
    status::remove(dir);
    let Some(snapshot) = snapshot else {
        return Ok(format!(
            "{withdrawn}detached: removed {} pins from {}",
            pinned.len(),
            dir.display()
        ));
    };
    if let Some(program_id) = snapshot.program_id {
        if crate::interface::attached_xdp_program(&snapshot.interface) == Some(program_id) {
            return Err(DetachError::StillAttached {
                interface: snapshot.interface,
                program_id,
            });
        }
    }
    Ok(format!(
        "{withdrawn}detached: the lb program is off {} and {} pins are removed from {}",
        snapshot.interface,
        pinned.len(),
        dir.display()
    ))
}

/// Deletes every route of `owner`'s protocol from its table (other protocols' stay); returns
/// how many.
async fn withdraw(owner: RouteOwner) -> Result<usize, RouteError> {
    let routes = Routes::connect()?;
    let ours: Vec<_> = routes
        .list(owner.table)
        .await?
        .into_iter()
        .filter(|route| route.protocol == owner.protocol)
        .collect();
    for route in &ours {
        routes.remove(owner, route.address).await?;
    }
    Ok(ours.len())
}
