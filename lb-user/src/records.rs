//! What the agent keeps across restarts beside the pinned maps: each backend's administrative
//! state (`lb backend drain|disable|enable`) and availability history, by VIP name and backend
//! address, in `/var/lib/lb/<state>.json` (bpffs, where the maps are pinned, holds only pins;
//! `/var/lib` also survives a reboot, so a backend in maintenance stays there).

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{admin::AdminState, availability::Availability, status};

/// Where records are kept.
pub const LIB_DIR: &str = "/var/lib/lb";

/// Records path for the agent using `state_dir`.
pub fn path_for(state_dir: &Path) -> PathBuf {
    Path::new(LIB_DIR).join(format!("{}.json", status::derived_name(state_dir)))
}

/// Everything kept, by backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Records {
    /// When the records were created (Unix ms): availability counts from there.
    pub created_unix_ms: u64,
    /// By `vip/address` (see [`key`]).
    pub backends: BTreeMap<String, BackendRecord>,
    /// Tunnel VIPs' previous rings within their second-chance window, by VIP name: what a
    /// restarted agent (even with `--fresh-state`, which forgets every tracked flow) needs to
    /// rebuild them.
    #[serde(default)]
    pub previous_rings: BTreeMap<String, PreviousRingRecord>,
}

/// A previous ring, as the rings its window saw (it is computed from them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PreviousRingRecord {
    /// The rings since the window opened, oldest first, ending with the one in force.
    pub chain: Vec<RingRecord>,
    /// When its window closes (Unix ms).
    pub until_unix_ms: u64,
}

/// A ring, as what it is built from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RingRecord {
    /// Its slots.
    pub size: u32,
    /// Its members: address and ring weight.
    pub members: Vec<(IpAddr, u32)>,
}

/// What is kept of one backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendRecord {
    /// Its administrative state.
    #[serde(default)]
    pub admin: AdminState,
    /// Who set it and when, for `lb status` and the logs.
    #[serde(default)]
    pub admin_by: Option<String>,
    /// Its health history.
    #[serde(default)]
    pub availability: Availability,
}

/// The key of backend `address` of VIP `vip`.
pub fn key(vip: &str, address: IpAddr) -> String {
    format!("{vip}/{address}")
}

/// Reads the records for `state_dir`; none yet: empty records created now. A file that cannot
/// be parsed is kept aside (`.json.bad`) with an error, and the agent starts afresh.
pub fn load(state_dir: &Path) -> Records {
    let path = path_for(state_dir);
    let fresh = || Records {
        created_unix_ms: status::now_unix_ms(),
        ..Records::default()
    };
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return fresh(),
        Err(error) => {
            tracing::error!(
                "cannot read {}: {error}; starting without records",
                path.display()
            );
            return fresh();
        }
    };
    match serde_json::from_slice(&text) {
        Ok(records) => records,
        Err(error) => {
            let aside = path.with_extension("json.bad");
            let _ = std::fs::rename(&path, &aside);
            tracing::error!(
                "{} is not valid ({error}): kept as {}; administrative states and availability \
                 history start afresh",
                path.display(),
                aside.display()
            );
            fresh()
        }
    }
}

/// Writes `records` for `state_dir` atomically (write, then rename).
pub fn save(state_dir: &Path, records: &Records) -> io::Result<()> {
    let path = path_for(state_dir);
    std::fs::create_dir_all(LIB_DIR)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(records).map_err(io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// Removes the records (for tests and a full uninstall).
pub fn remove(state_dir: &Path) {
    let _ = std::fs::remove_file(path_for(state_dir));
}
