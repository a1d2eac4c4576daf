//! The loaded XDP object: its programs and the maps they read. This module is the only
//! userspace writer of the datapath's maps (see `lb_common::maps::names`).

mod checks;
mod clock;
mod decap;
mod error;
mod flows;
mod handles;
pub mod layout;
mod loads;
mod mapping;
mod maps;
mod ring;
mod second_chance;
mod upgrade;
mod vip_index;

use std::path::{Path, PathBuf};

use aya::{
    maps::{Map, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        ProgramError, Xdp, XdpMode,
    },
    EbpfLoader,
};
use lb_common::{
    conntrack,
    maps::{names, DEFAULT_CONNTRACK_SIZE},
};

pub use self::{
    checks::{check_counts, CheckMaps},
    clock::{ClockError, FlowClock},
    decap::{Decap, DecapCounts, DecapError},
    error::DatapathError,
    flows::{FlowCensus, OldFlows, TrackedFlow},
    loads::Loads,
    ring::{read_ring_by_id, PreparedRing},
    second_chance::{previous_owner, SecondChanceMaps},
    upgrade::{FlowsCarried, Origin, Upgraded},
};
use self::{
    error::{map_error, Result},
    layout::{Fate, PinnedLayout},
    upgrade::STAGING,
};

/// The compiled XDP programs (lb-ebpf), built by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// The XDP programs in [`OBJECT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// The load balancer.
    Balancer,
    /// Strips our tunnels on backends.
    Decap,
    /// Passes everything (lab veth peers).
    Pass,
    /// Transmits everything back (benchmark floor).
    Tx,
}

impl Program {
    /// Name of the program's function in the object.
    pub const fn name(self) -> &'static str {
        match self {
            Program::Balancer => "lb",
            Program::Decap => "decap",
            Program::Pass => "pass",
            Program::Tx => "tx",
        }
    }
}

/// How an XDP program is attached: the `xdp_mode` setting and `--xdp-mode` flag. As a report
/// of how a program *is* attached, only `Native` and `Generic` occur.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode if the driver supports it, else generic mode with a warning.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode.
    Generic,
}

impl AttachMode {
    /// Every mode, `auto` first (the default).
    pub const ALL: [AttachMode; 3] = [AttachMode::Auto, AttachMode::Native, AttachMode::Generic];

    /// The aya mode to ask for; `None` for `Auto` (try native, fall back to generic).
    pub fn xdp_mode(self) -> Option<XdpMode> {
        match self {
            AttachMode::Auto => None,
            AttachMode::Native => Some(XdpMode::Driver),
            AttachMode::Generic => Some(XdpMode::Skb),
        }
    }

    /// How a program attached in aya's `mode` runs: generic for SKB mode, else native.
    pub fn of(mode: XdpMode) -> Self {
        if mode == XdpMode::Skb {
            AttachMode::Generic
        } else {
            AttachMode::Native
        }
    }

    /// Lower-case name as in the configuration and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Choices made at load time.
#[derive(Clone, Debug)]
pub struct Options {
    /// Flows `FLOWS` tracks (`conntrack_size`; sets of 4, rounded up). A pinned `FLOWS` keeps
    /// its size.
    pub conntrack_size: u32,
    /// Where the balancer's maps and link are pinned (the agent's `state_dir`). Maps already
    /// pinned there are adopted: as they are if their layout is this build's, migrated if it is
    /// an older one (see [`layout`]), refused otherwise. Conntrack, rings and counters survive
    /// restarts and upgrades. `None`: nothing is pinned (tests, `lb decap`).
    pub pin_dir: Option<PathBuf>,
    /// Recreate every pinned map instead of adopting them (tracked flows re-hash, counters
    /// restart); the pinned link is kept, so forwarding does not stop.
    pub fresh_state: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            conntrack_size: DEFAULT_CONNTRACK_SIZE,
            pin_dir: None,
            fresh_state: false,
        }
    }
}

/// How the balancer ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Native or generic.
    pub mode: XdpMode,
    /// A previous agent's pinned link was found and its program replaced in place.
    pub adopted: bool,
}

/// The XDP object loaded into the kernel, with its maps.
pub struct Datapath {
    /// The loaded object (programs); `None` when only pinned maps were opened.
    ebpf: Option<aya::Ebpf>,
    /// Every map, typed once, taken out of the object (or opened from pins).
    maps: handles::BalancerMaps,
    pin_dir: Option<PathBuf>,
    /// The writer of the VIP index, opened on first use (loading opens it, so the index of
    /// maps from a previous agent, or new maps beside its `VIPS`, is right before any program
    /// of ours runs).
    vip_index: Option<vip_index::VipIndexWriter>,
    /// Where the maps came from.
    origin: Origin,
    /// Flows of an older layout's `CONNTRACK` carried into `FLOWS` so far (see
    /// [`Self::finish_upgrade`]).
    carried_flows: FlowsCarried,
}

impl Datapath {
    /// Creates the maps and loads the load balancer program (running the verifier).
    pub fn load(options: &Options) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        let mut origin = Origin::New;
        let mut flow_sets = conntrack::sets_for(options.conntrack_size);
        if let Some(dir) = &options.pin_dir {
            std::fs::create_dir_all(dir).map_err(|source| DatapathError::StateDir {
                action: "create the state directory",
                path: dir.clone(),
                source,
            })?;
            let found = match layout::inspect(dir) {
                Ok(PinnedLayout::Empty) => PinnedLayout::Empty,
                Ok(PinnedLayout::Current) if options.fresh_state => {
                    PinnedLayout::Older(layout::Migration::fresh(lb_common::layout::LAYOUT_VERSION))
                }
                Ok(PinnedLayout::Older(migration)) if options.fresh_state => {
                    PinnedLayout::Older(layout::Migration::fresh(migration.from))
                }
                Ok(found) => found,
                Err(_) if options.fresh_state => PinnedLayout::Older(layout::Migration::fresh(0)),
                Err(error) => return Err(DatapathError::Layout(error)),
            };
            let staging = dir.join(STAGING);
            match &found {
                PinnedLayout::Empty | PinnedLayout::Current => {
                    for map in names::BALANCER {
                        loader.map_pin_path(map, dir.join(map));
                    }
                }
                PinnedLayout::Older(migration) => {
                    // New maps are pinned aside until the new program runs; a staging
                    // directory left by an upgrade that did not finish is started over.
                    let _ = std::fs::remove_dir_all(&staging);
                    std::fs::create_dir(&staging).map_err(|source| DatapathError::StateDir {
                        action: "create the staging directory",
                        path: staging.clone(),
                        source,
                    })?;
                    for (map, fate) in &migration.fates {
                        let at = if *fate == Fate::Keep { dir } else { &staging };
                        loader.map_pin_path(map, at.join(map));
                    }
                }
            }
            // A FLOWS that is kept keeps its size, whatever `conntrack_size` says now: the
            // program must be told its size.
            let keeps_flows = match &found {
                PinnedLayout::Empty => false,
                PinnedLayout::Current => true,
                PinnedLayout::Older(migration) => migration.fate(names::FLOWS) == Some(Fate::Keep),
            };
            if keeps_flows {
                if let Some(sets) = pinned_flow_sets(dir)? {
                    flow_sets = sets;
                }
            }
            origin = match found {
                PinnedLayout::Empty => Origin::New,
                PinnedLayout::Current => Origin::Adopted,
                PinnedLayout::Older(migration) => Origin::Upgrading(migration),
            };
        }
        loader.map_max_entries(names::FLOWS, flow_sets);
        loader.override_global(FLOW_SETS, &flow_sets, true);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|source| DatapathError::Load { source })?;
        let mut maps = std::collections::HashMap::new();
        for name in names::BALANCER
            .into_iter()
            .chain([names::DECAP_ADDRS, names::DECAP_STATS])
        {
            let map = ebpf
                .take_map(name)
                .ok_or(DatapathError::MissingMap { map: name })?;
            maps.insert(name, map);
        }
        let mut datapath = Self {
            ebpf: Some(ebpf),
            maps: handles::BalancerMaps::new(maps)?,
            pin_dir: options.pin_dir.clone(),
            vip_index: None,
            origin,
            carried_flows: FlowsCarried::default(),
        };
        datapath.vip_index()?;
        datapath.carry_flows()?;
        datapath.program(Program::Balancer)?;
        if datapath.origin != Origin::Adopted {
            datapath.set_layout(&lb_common::layout::Layout::CURRENT)?;
        }
        Ok(datapath)
    }

    /// Takes map `name` out of the loaded object (once): for the maps that are not pinned,
    /// whose owner holds them apart from the datapath (checks, loads, second chance, decap).
    pub(super) fn take_object_map(&mut self, name: &'static str) -> Result<Map> {
        self.ebpf
            .as_mut()
            .and_then(|ebpf| ebpf.take_map(name))
            .ok_or(DatapathError::MissingMap { map: name })
    }

    /// Where its maps came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Opens the maps a running (or stopped) agent pinned in `dir`, without loading any
    /// program: for the CLI and for tests that watch a running agent.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        match layout::inspect(dir).map_err(DatapathError::Layout)? {
            PinnedLayout::Current => {}
            PinnedLayout::Empty => return Err(DatapathError::NothingPinned { dir: dir.into() }),
            PinnedLayout::Older(migration) => {
                return Err(DatapathError::OlderLayout {
                    dir: dir.into(),
                    found: migration.from,
                })
            }
        }
        let mut maps = std::collections::HashMap::new();
        for name in names::BALANCER {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).map_err(map_error(name))?;
            let map = Map::from_map_data(data).map_err(map_error(name))?;
            maps.insert(name, map);
        }
        Ok(Self {
            ebpf: None,
            maps: handles::BalancerMaps::new(maps)?,
            pin_dir: Some(dir.to_path_buf()),
            vip_index: None,
            origin: Origin::Adopted,
            carried_flows: FlowsCarried::default(),
        })
    }

    /// A program of the object, loaded into the kernel on first use.
    pub fn program(&mut self, program: Program) -> Result<&mut Xdp> {
        let name = program.name();
        let xdp: &mut Xdp = self
            .ebpf
            .as_mut()
            .ok_or(DatapathError::Program {
                program: name,
                action: "lookup",
                source: ProgramError::NotLoaded,
            })?
            .program_mut(name)
            .ok_or(DatapathError::Program {
                program: name,
                action: "lookup",
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DatapathError::Program {
                program: name,
                action: "lookup",
                source,
            })?;
        if xdp.fd().is_err() {
            xdp.load().map_err(|source| DatapathError::Program {
                program: name,
                action: "load",
                source,
            })?;
        }
        Ok(xdp)
    }

    /// Attaches `program` to `interface` (in the calling thread's network namespace).
    pub fn attach(
        &mut self,
        program: Program,
        interface: &str,
        mode: XdpMode,
    ) -> Result<XdpLinkId> {
        self.program(program)?
            .attach(interface, mode)
            .map_err(|source| DatapathError::Program {
                program: program.name(),
                action: "attach",
                source,
            })
    }

    /// Attaches `program` in `mode`; `None` ("auto"): native, falling back to generic (skb)
    /// mode with a warning when the driver has no native XDP. Returns the link and the mode used.
    pub fn attach_auto(
        &mut self,
        program: Program,
        interface: &str,
        mode: Option<XdpMode>,
    ) -> Result<(XdpLinkId, XdpMode)> {
        if let Some(mode) = mode {
            return Ok((self.attach(program, interface, mode)?, mode));
        }
        match self.attach(program, interface, XdpMode::Driver) {
            Ok(id) => Ok((id, XdpMode::Driver)),
            Err(native) => {
                tracing::warn!(%interface, error = %native, "native XDP unavailable; using generic mode (slower)");
                Ok((self.attach(program, interface, XdpMode::Skb)?, XdpMode::Skb))
            }
        }
    }

    /// Kernel id of the loaded balancer program.
    pub fn program_id(&mut self) -> Result<u32> {
        let info =
            self.program(Program::Balancer)?
                .info()
                .map_err(|source| DatapathError::Program {
                    program: Program::Balancer.name(),
                    action: "info",
                    source,
                })?;
        Ok(info.id())
    }

    /// Whether `dir` holds a previous agent's pinned link (its datapath is still forwarding).
    pub fn is_pinned(dir: &Path) -> bool {
        dir.join(names::LINK).exists()
    }

    /// Attaches the balancer to `interface` so that it stays attached after this process
    /// exits: the link is pinned in the pin directory. If a previous agent's link is pinned
    /// there, the new program replaces the old one inside that link atomically, so no packet
    /// meets an interface without a program. `mode` `None`: native, else generic with a warning.
    pub fn attach_pinned(&mut self, interface: &str, mode: Option<XdpMode>) -> Result<Attachment> {
        let Some(dir) = self.pin_dir.clone() else {
            return Err(DatapathError::NotPinned);
        };
        let link_path = dir.join(names::LINK);
        let name = Program::Balancer.name();
        let program_error = |action, source| DatapathError::Program {
            program: name,
            action,
            source,
        };
        if link_path.exists() {
            let pinned =
                PinnedLink::from_pin(&link_path).map_err(|source| DatapathError::Link {
                    path: link_path.clone(),
                    source: source.into(),
                })?;
            let link =
                XdpLink::try_from(FdLink::from(pinned)).map_err(|source| DatapathError::Link {
                    path: link_path.clone(),
                    source: source.into(),
                })?;
            let xdp = self.program(Program::Balancer)?;
            let id = xdp
                .attach_to_link(link)
                .map_err(|source| program_error("replace in pinned link", source))?;
            // The link stays pinned; forget our handle so dropping the program keeps it attached.
            let link = xdp
                .take_link(id)
                .map_err(|source| program_error("take link", source))?;
            std::mem::forget(link);
            let mode = crate::interface::attached_xdp_mode(interface)
                .unwrap_or(mode.unwrap_or(XdpMode::Driver));
            return Ok(Attachment {
                mode,
                adopted: true,
            });
        }
        let (id, mode) = self.attach_auto(Program::Balancer, interface, mode)?;
        let xdp = self.program(Program::Balancer)?;
        let link = xdp
            .take_link(id)
            .map_err(|source| program_error("take link", source))?;
        let fd_link = FdLink::try_from(link).map_err(|source| DatapathError::Link {
            path: link_path.clone(),
            source: source.into(),
        })?;
        fd_link
            .pin(&link_path)
            .map_err(|source| DatapathError::Link {
                path: link_path.clone(),
                source: source.into(),
            })?;
        Ok(Attachment {
            mode,
            adopted: false,
        })
    }

    /// Detaches the balancer and removes every pin (maps included): the state directory is
    /// left empty and removed. Used on shutdown without `--keep-datapath`.
    pub fn detach_and_unpin(self) -> Result<()> {
        let Some(dir) = self.pin_dir.clone() else {
            return Ok(());
        };
        remove_pins(&dir)
    }
}

/// The name of the program's global holding the number of `FLOWS` sets.
const FLOW_SETS: &str = "FLOW_SETS";

/// The number of sets of the `FLOWS` pinned in `dir`, if one is.
fn pinned_flow_sets(dir: &Path) -> Result<Option<u32>> {
    let path = dir.join(names::FLOWS);
    if !path.exists() {
        return Ok(None);
    }
    let map = MapData::from_pin(&path).map_err(map_error(names::FLOWS))?;
    let info = map.info().map_err(map_error(names::FLOWS))?;
    Ok(Some(info.max_entries()))
}

/// Detaches a pinned balancer (its link) and removes the pinned maps and the directory.
pub fn remove_pins(dir: &Path) -> Result<()> {
    let link_path = dir.join(names::LINK);
    if link_path.exists() {
        let pinned = PinnedLink::from_pin(&link_path).map_err(|source| DatapathError::Link {
            path: link_path.clone(),
            source: source.into(),
        })?;
        // Unpinning drops the last reference to the link: the program is detached.
        drop(pinned.unpin().map_err(|source| DatapathError::Link {
            path: link_path.clone(),
            source: source.into(),
        })?);
    }
    for map in names::BALANCER.into_iter().chain(names::RETIRED) {
        let path = dir.join(map);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|source| DatapathError::StateDir {
                action: "remove the pin",
                path,
                source,
            })?;
        }
    }
    // New maps of an upgrade that did not finish.
    let staging = dir.join(STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|source| DatapathError::StateDir {
            action: "remove the staging directory",
            path: staging,
            source,
        })?;
    }
    match std::fs::remove_dir(dir) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            Err(DatapathError::StateDir {
                action: "remove the state directory",
                path: dir.to_path_buf(),
                source,
            })
        }
        _ => Ok(()),
    }
}
