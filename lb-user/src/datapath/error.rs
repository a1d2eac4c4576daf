//! Errors of the datapath. Messages name what failed and where; the cause is the `#[source]`,
//! never repeated in the message, so `{error:#}` or [`crate::error::Chain`] print each once.

use std::path::PathBuf;

use aya::{maps::MapError, programs::ProgramError, EbpfError};

use super::layout;

/// What went wrong with the datapath, and where.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object could not be loaded (map creation, BTF, ...).
    #[error("cannot load the XDP object")]
    Load {
        /// The loader's error.
        #[source]
        source: EbpfError,
    },
    /// A program failed to load (verifier) or attach.
    #[error("BPF program `{program}`: {action} failed")]
    Program {
        /// Program name.
        program: &'static str,
        /// What we tried.
        action: &'static str,
        /// The error.
        #[source]
        source: ProgramError,
    },
    /// A map is missing from the object (a build mismatch).
    #[error("map {map} is not in the XDP object")]
    MissingMap {
        /// Map name.
        map: &'static str,
    },
    /// A map operation failed.
    #[error("map {map}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The error.
        #[source]
        source: MapError,
    },
    /// A devmap operation failed.
    #[error("map {map}")]
    DevMap {
        /// Map name.
        map: &'static str,
        /// The error.
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    /// A path of the state directory (the directory, a pin in it, its staging directory)
    /// could not be created, renamed or removed.
    #[error("cannot {action} {}", path.display())]
    StateDir {
        /// What was tried, on what: "create the state directory", "remove the pin"...
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The pinned link could not be opened, pinned or removed.
    #[error("pinned XDP link {}", path.display())]
    Link {
        /// The pin's path.
        path: PathBuf,
        /// The error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The pinned state's layout can be neither adopted nor migrated.
    #[error(transparent)]
    Layout(layout::LayoutError),
    /// The pinned state is of an older layout, which only an agent migrates.
    #[error(
        "the datapath pinned in {} has layout version {found}, from an older lb (this one reads \
         version {}): use the lb that runs it, or restart the agent with this lb, which migrates \
         the state without interrupting traffic",
        dir.display(),
        lb_common::layout::LAYOUT_VERSION
    )]
    OlderLayout {
        /// The state directory.
        dir: PathBuf,
        /// The version found.
        found: u32,
    },
    /// Per-CPU values of the wrong CPU count.
    #[error("map {map}: per-CPU values")]
    Counters {
        /// Map name.
        map: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Nothing is pinned where maps were expected.
    #[error("no lb datapath is pinned in {}", dir.display())]
    NothingPinned {
        /// The state directory.
        dir: PathBuf,
    },
    /// Pinning was asked of a datapath loaded without a pin directory.
    #[error("the datapath was loaded without a state directory")]
    NotPinned,
    /// Writing the VIP index (`VIP_SLOTS`, `VIP_ENTRIES`) through mmap failed.
    #[error("VIP index (maps VIP_SLOTS and VIP_ENTRIES)")]
    VipIndex {
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a ring through mmap failed.
    #[error("ring of VIP id {vip}")]
    Ring {
        /// VIP id.
        vip: u32,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Mapping an mmapable map into this process's memory failed.
    #[error("map {map}: mapping it into memory")]
    Mapping {
        /// Map name.
        map: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

pub(super) type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// Wraps an error of `map`'s syscalls with the map's name.
pub(super) fn map_error(map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}
