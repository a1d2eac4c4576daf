//! What the operator commands read: the maps an agent pinned and its status snapshot, from
//! another process, also while no agent runs.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use lb_common::maps::{Backend, Vip, VipKey};

use crate::{
    datapath::{Datapath, DatapathError},
    status::{self, BackendStatus, Snapshot, VipStatus},
};

/// Why a report cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No pinned datapath at the state directory.
    #[error("no lb datapath at {}: start one with `lb run --config FILE` (or pass --state-dir DIR if it uses another state_dir)", dir.display())]
    NoDatapath {
        /// The state directory.
        dir: PathBuf,
    },
    /// Not root.
    #[error("reading the datapath's maps needs root (CAP_BPF and CAP_SYS_ADMIN): run with sudo or as root")]
    NotRoot,
    /// The maps could not be read.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// A bad `--vip` or `--client`.
    #[error("{0}")]
    Usage(String),
    /// The announce table could not be read.
    #[error("reading the announce table")]
    Routes(#[source] crate::routes::RouteError),
}

/// One VIP as the maps hold it: its key and entry, and its backends' ids and entries.
pub struct VipEntry {
    /// `VIPS` key.
    pub key: VipKey,
    /// `VIPS` value.
    pub entry: Vip,
    /// Its backends in `BACKENDS`, by id.
    pub backends: Vec<(u32, Backend)>,
}

/// The pinned maps and the agent's snapshot.
pub struct View {
    /// The pinned maps.
    pub datapath: Datapath,
    /// The agent's snapshot, if one was written.
    pub snapshot: Option<Snapshot>,
    /// Whether the balancer's link is pinned there (the datapath is attached).
    pub attached: bool,
    /// Where each VIP and backend id is in the snapshot: looked up for every backend, a
    /// search made `lb status` quadratic (seconds at 16,384 backends).
    index: SnapshotIndex,
}

/// Positions in the snapshot by id.
#[derive(Default)]
struct SnapshotIndex {
    /// VIP id → index in `vips`.
    vips: HashMap<u32, usize>,
    /// Backend id → index of its VIP in `vips` and of it in that VIP's `backends`.
    backends: HashMap<u32, (usize, usize)>,
}

impl SnapshotIndex {
    fn of(snapshot: Option<&Snapshot>) -> Self {
        let mut index = Self::default();
        for (v, vip) in snapshot.iter().flat_map(|s| s.vips.iter().enumerate()) {
            index.vips.entry(vip.id).or_insert(v);
            for (b, backend) in vip.backends.iter().enumerate() {
                index.backends.entry(backend.id).or_insert((v, b));
            }
        }
        index
    }
}

impl View {
    /// Opens the state of the agent using `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, ReportError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(ReportError::NotRoot);
        }
        if !state_dir.join(lb_common::maps::names::VIPS).exists() {
            return Err(ReportError::NoDatapath {
                dir: state_dir.to_path_buf(),
            });
        }
        let snapshot = status::read(state_dir);
        Ok(Self {
            datapath: Datapath::open_pinned(state_dir)?,
            index: SnapshotIndex::of(snapshot.as_ref()),
            snapshot,
            attached: Datapath::is_pinned(state_dir),
        })
    }

    /// The id of the balancer program the agent last attached (from its snapshot).
    pub fn program_id(&self) -> Option<u32> {
        self.snapshot.as_ref()?.program_id
    }

    /// The agent's view of VIP `id`.
    pub fn snapshot_vip(&self, id: u32) -> Option<&VipStatus> {
        self.snapshot.as_ref()?.vips.get(*self.index.vips.get(&id)?)
    }

    /// The agent's view of backend `id`.
    pub fn snapshot_backend(&self, id: u32) -> Option<&BackendStatus> {
        let (v, b) = *self.index.backends.get(&id)?;
        self.snapshot.as_ref()?.vips.get(v)?.backends.get(b)
    }

    /// The name of VIP `id`: the configured one from the snapshot, else `vip<id>`.
    pub fn vip_name(&self, id: u32) -> String {
        self.snapshot_vip(id)
            .map_or_else(|| format!("vip{id}"), |v| v.name.clone())
    }

    /// VIPs sorted by id, with their backends.
    pub fn vips(&mut self) -> Result<Vec<VipEntry>, ReportError> {
        let backends = self.datapath.backends()?;
        let mut vips: Vec<VipEntry> = self
            .datapath
            .vips()?
            .into_iter()
            .map(|(key, entry)| VipEntry {
                key,
                entry,
                backends: backends
                    .iter()
                    .filter(|(_, b)| b.vip == entry.id)
                    .copied()
                    .collect(),
            })
            .collect();
        vips.sort_by_key(|vip| vip.entry.id);
        Ok(vips)
    }
}
