//! `lb detach`: removes a datapath left forwarding by `lb run --keep-datapath` (or `systemctl
//! stop lb`, or a crash): its pinned link, which detaches the program, and its pinned maps.

use std::path::{Path, PathBuf};

use lb_common::maps::names;

use crate::{datapath::DatapathError, status};

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
    /// Removing the pins failed.
    #[error("cannot remove the datapath pinned at {}", dir.display())]
    Remove {
        /// The state directory.
        dir: PathBuf,
        /// The error (boxed: it is large, and rare).
        #[source]
        source: Box<DatapathError>,
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

/// The state directory to detach: `--state-dir`, else `state_dir` of `--config`, else the
/// default.
pub fn state_dir(
    state_dir: Option<PathBuf>,
    config: Option<&Path>,
) -> Result<PathBuf, DetachError> {
    Ok(match (state_dir, config) {
        (Some(dir), _) => dir,
        (None, Some(config)) => crate::config::load(config)?.state_dir,
        (None, None) => PathBuf::from(crate::config::DEFAULT_STATE_DIR),
    })
}

/// Detaches the datapath pinned at `dir`; returns what was done, for the operator.
pub fn detach(dir: &Path) -> Result<String, DetachError> {
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
    let pinned: Vec<&str> = std::iter::once(names::LINK)
        .chain(names::BALANCER)
        .filter(|name| dir.join(name).exists())
        .collect();
    if pinned.is_empty() {
        status::remove(dir);
        return Ok(format!(
            "nothing to detach: no lb datapath pinned at {}",
            dir.display()
        ));
    }
    crate::datapath::remove_pins(dir).map_err(|source| DetachError::Remove {
        dir: dir.to_path_buf(),
        source: Box::new(source),
    })?;
    status::remove(dir);
    let Some(snapshot) = snapshot else {
        return Ok(format!(
            "detached: removed {} pins from {}",
            pinned.len(),
            dir.display()
        ));
    };
    if let Some(program_id) = snapshot.program_id {
        if attached_program(&snapshot.interface) == Some(program_id) {
            return Err(DetachError::StillAttached {
                interface: snapshot.interface,
                program_id,
            });
        }
    }
    Ok(format!(
        "detached: the lb program is off {} and {} pins are removed from {}",
        snapshot.interface,
        pinned.len(),
        dir.display()
    ))
}

/// Id of the XDP program attached to `interface`, as `ip -j link show` reports it.
fn attached_program(interface: &str) -> Option<u32> {
    let output = std::process::Command::new("ip")
        .args(["-j", "link", "show", "dev", interface])
        .output()
        .ok()?;
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let id = links.get(0)?.get("xdp")?.get("prog")?.get("id")?.as_u64()?;
    u32::try_from(id).ok()
}
