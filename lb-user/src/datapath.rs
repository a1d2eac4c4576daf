//! The loaded XDP object: its programs and the maps they read. This module is the only
//! userspace writer of the datapath's maps (see `lb_common::maps::names`).

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    ptr::NonNull,
};

use aya::{
    maps::{
        xdp::DevMapHash, Array, ArrayOfMaps, HashMap, Map, MapData, MapError, PerCpuArray,
        PerCpuValues,
    },
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use lb_common::{
    maps::{
        names, Backend, Conntrack, DecapKey, Settings, Vip, VipKey, DEFAULT_CONNTRACK_SIZE,
        RING_FLAGS,
    },
    stats::{BackendStats, Counter, DecapCounter, VipStats},
    FlowKey,
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

/// What went wrong with the datapath, and where.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object could not be loaded (map creation, BTF, ...).
    #[error("cannot load the XDP object: {source}")]
    Load {
        /// The loader's error.
        #[source]
        source: EbpfError,
    },
    /// A program failed to load (verifier) or attach.
    #[error("XDP program `{program}`: {action} failed: {source}")]
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
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The error.
        #[source]
        source: MapError,
    },
    /// A devmap operation failed.
    #[error("map {map}: {source}")]
    DevMap {
        /// Map name.
        map: &'static str,
        /// The error.
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    /// The state directory could not be created or cleaned.
    #[error("state directory {}: {source}", dir.display())]
    StateDir {
        /// The path.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The pinned link could not be opened, pinned or removed.
    #[error("pinned XDP link {}: {source}", path.display())]
    Link {
        /// The pin's path.
        path: PathBuf,
        /// The error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Pinning was asked of a datapath loaded without a pin directory.
    #[error("the datapath was loaded without a state directory")]
    NotPinned,
    /// Writing a ring through mmap failed.
    #[error("ring of VIP id {vip}: {source}")]
    Ring {
        /// VIP id.
        vip: u32,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// Choices made at load time.
#[derive(Clone, Debug)]
pub struct Options {
    /// Entries of `CONNTRACK` (tracked flows).
    pub conntrack_size: u32,
    /// Where the balancer's maps and link are pinned (the agent's `state_dir`). Maps already
    /// pinned there are reused as they are: conntrack, rings and counters survive restarts.
    /// `None`: nothing is pinned (tests, `lb decap`).
    pub pin_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            conntrack_size: DEFAULT_CONNTRACK_SIZE,
            pin_dir: None,
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
    ebpf: Option<Ebpf>,
    /// Every map, by name, taken out of the object (or opened from pins).
    maps: std::collections::HashMap<&'static str, Map>,
    pin_dir: Option<PathBuf>,
}

impl Datapath {
    /// Creates the maps and loads the load balancer program (running the verifier).
    pub fn load(options: &Options) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(names::CONNTRACK, options.conntrack_size);
        if let Some(dir) = &options.pin_dir {
            std::fs::create_dir_all(dir).map_err(|source| DatapathError::StateDir {
                dir: dir.clone(),
                source,
            })?;
            for map in names::BALANCER {
                loader.map_pin_path(map, dir.join(map));
            }
        }
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
            maps,
            pin_dir: options.pin_dir.clone(),
        };
        datapath.program(Program::Balancer)?;
        Ok(datapath)
    }

    /// Opens the maps a running (or stopped) agent pinned in `dir`, without loading any
    /// program: for the CLI and for tests that watch a running agent.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        let mut maps = std::collections::HashMap::new();
        for name in names::BALANCER {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).map_err(map_error(name))?;
            let map = Map::from_map_data(data).map_err(map_error(name))?;
            maps.insert(name, map);
        }
        Ok(Self {
            ebpf: None,
            maps,
            pin_dir: Some(dir.to_path_buf()),
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
            let mode = attached_mode(interface).unwrap_or(mode.unwrap_or(XdpMode::Driver));
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

    fn map(&mut self, map: &'static str) -> Result<&mut Map> {
        self.maps
            .get_mut(map)
            .ok_or(DatapathError::MissingMap { map })
    }

    /// `map` as the typed aya handle `T` (`Array`, `HashMap`, ...).
    fn typed<'a, T>(&'a mut self, map: &'static str) -> Result<T>
    where
        T: TryFrom<&'a mut Map, Error = MapError>,
    {
        T::try_from(self.map(map)?).map_err(map_error(map))
    }

    /// Sets the global settings.
    pub fn set_settings(&mut self, settings: &Settings) -> Result<()> {
        let map = names::SETTINGS;
        let mut array: Array<_, Settings> = self.typed(map)?;
        array.set(0, settings, 0).map_err(map_error(map))
    }

    /// Adds or replaces a VIP.
    pub fn set_vip(&mut self, key: &VipKey, vip: &Vip) -> Result<()> {
        let map = names::VIPS;
        let mut vips: HashMap<_, VipKey, Vip> = self.typed(map)?;
        vips.insert(key, vip, 0).map_err(map_error(map))
    }

    /// Every VIP in `VIPS`.
    pub fn vips(&mut self) -> Result<Vec<(VipKey, Vip)>> {
        let map = names::VIPS;
        let vips: HashMap<_, VipKey, Vip> = self.typed(map)?;
        vips.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error(map))
    }

    /// Every backend entry in use (state other than `Unused`), with its id.
    pub fn backends(&mut self) -> Result<Vec<(u32, Backend)>> {
        let map = names::BACKENDS;
        let backends: Array<_, Backend> = self.typed(map)?;
        let mut used = Vec::new();
        for (id, backend) in backends.iter().enumerate() {
            let backend = backend.map_err(map_error(map))?;
            if backend.state != lb_common::maps::BackendState::Unused as u8 {
                used.push((id as u32, backend));
            }
        }
        Ok(used)
    }

    /// Removes a VIP: its packets stop matching at once.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        let map = names::VIPS;
        let mut vips: HashMap<_, VipKey, Vip> = self.typed(map)?;
        vips.remove(key).map_err(map_error(map))
    }

    /// Writes backend `id`.
    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        let map = names::BACKENDS;
        let mut backends: Array<_, Backend> = self.typed(map)?;
        backends.set(id, backend, 0).map_err(map_error(map))
    }

    /// Reads backend `id`.
    pub fn backend(&mut self, id: u32) -> Result<Backend> {
        let map = names::BACKENDS;
        let backends: Array<_, Backend> = self.typed(map)?;
        backends.get(&id, 0).map_err(map_error(map))
    }

    /// Replaces the ring of VIP `vip` atomically.
    ///
    /// The new ring is a fresh map, filled completely through mmap while no packet can see it,
    /// then swapped into `RINGS[vip]` with a single map update: a packet uses either the whole
    /// old ring or the whole new one. The old ring is freed by the kernel once no program run
    /// holds it.
    pub fn set_ring(&mut self, vip: u32, ring: &[u32]) -> Result<()> {
        let prepared = Self::prepare_ring(vip, ring)?;
        self.swap_ring(vip, &prepared)
    }

    /// The first half of [`Self::set_ring`]: the new ring map, created and filled, not yet
    /// visible to any packet.
    pub fn prepare_ring(vip: u32, ring: &[u32]) -> Result<PreparedRing> {
        new_ring(ring)
            .map(PreparedRing)
            .map_err(|source| DatapathError::Ring { vip, source })
    }

    /// The second half of [`Self::set_ring`]: one update of `RINGS[vip]`. Packets use the new
    /// ring at once; the call returns only after an RCU grace period, when no program run
    /// still holds the old one.
    pub fn swap_ring(&mut self, vip: u32, ring: &PreparedRing) -> Result<()> {
        let map = names::RINGS;
        let mut rings: ArrayOfMaps<_, MapData> = self.typed(map)?;
        rings.set(vip, &ring.0, 0).map_err(map_error(map))
    }

    /// The ring of VIP `vip` as the kernel currently uses it (`None`: no ring).
    pub fn ring(&mut self, vip: u32) -> Result<Option<Vec<u32>>> {
        let map = names::RINGS;
        let rings: ArrayOfMaps<_, MapData> = self.typed(map)?;
        let inner = match rings.get(&vip, 0) {
            Ok(inner) => inner,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => return Err(map_error(map)(source)),
        };
        read_ring(&inner)
            .map(Some)
            .map_err(|source| DatapathError::Ring { vip, source })
    }

    /// Lets `XDP_REDIRECT` send to interface `ifindex`.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let map = names::TX_PORTS;
        let mut ports: DevMapHash<_> = self.typed(map)?;
        ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|source| DatapathError::DevMap { map, source })
    }

    /// The backend id a flow is tracked to, if it is tracked.
    pub fn conntrack(&mut self, flow: &FlowKey) -> Result<Option<u32>> {
        let map = names::CONNTRACK;
        let table: HashMap<_, FlowKey, Conntrack> = self.typed(map)?;
        match table.get(flow, 0) {
            Ok(entry) => Ok(Some(entry.backend)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error(map)(source)),
        }
    }

    /// Adds a local address the `decap` program strips tunnels for.
    pub fn add_decap_address(&mut self, key: &DecapKey) -> Result<()> {
        let map = names::DECAP_ADDRS;
        let mut addrs: HashMap<_, DecapKey, u8> = self.typed(map)?;
        addrs.insert(key, 1, 0).map_err(map_error(map))
    }

    /// A global counter, summed over CPUs.
    pub fn counter(&mut self, counter: Counter) -> Result<u64> {
        sum_u64(self.map(names::STATS)?, names::STATS, counter as u32)
    }

    /// A `decap` counter, summed over CPUs.
    pub fn decap_counter(&mut self, counter: DecapCounter) -> Result<u64> {
        sum_u64(
            self.map(names::DECAP_STATS)?,
            names::DECAP_STATS,
            counter as u32,
        )
    }

    /// Counters of VIP `vip`, summed over CPUs.
    pub fn vip_stats(&mut self, vip: u32) -> Result<VipStats> {
        let map = names::VIP_STATS;
        let per_cpu = per_cpu::<VipStats>(self.map(map)?, map, vip)?;
        Ok(per_cpu.iter().fold(VipStats::default(), |sum, cpu| {
            let VipStats {
                packets,
                bytes,
                new_flows,
                conntrack_hits,
                dropped,
            } = *cpu;
            VipStats {
                packets: sum.packets + packets,
                bytes: sum.bytes + bytes,
                new_flows: sum.new_flows + new_flows,
                conntrack_hits: sum.conntrack_hits + conntrack_hits,
                dropped: sum.dropped + dropped,
            }
        }))
    }

    /// Counters of backend `id`, summed over CPUs.
    pub fn backend_stats(&mut self, id: u32) -> Result<BackendStats> {
        let map = names::BACKEND_STATS;
        let per_cpu = per_cpu::<BackendStats>(self.map(map)?, map, id)?;
        Ok(per_cpu.iter().fold(BackendStats::default(), |sum, cpu| {
            let BackendStats {
                packets,
                bytes,
                new_flows,
            } = *cpu;
            BackendStats {
                packets: sum.packets + packets,
                bytes: sum.bytes + bytes,
                new_flows: sum.new_flows + new_flows,
            }
        }))
    }
}

/// A ring map filled by [`Datapath::prepare_ring`], waiting for [`Datapath::swap_ring`].
pub struct PreparedRing(MapData);

/// Wraps an error of `map`'s syscalls with the map's name.
fn map_error(map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// The mode of the XDP program attached to `interface`, as the kernel reports it
/// (`ip -j link show`: 1 native, 2 generic, 3 offloaded); `None` if unknown.
fn attached_mode(interface: &str) -> Option<XdpMode> {
    let output = std::process::Command::new("ip")
        .args(["-j", "link", "show", "dev", interface])
        .output()
        .ok()?;
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    match links.get(0)?.get("xdp")?.get("mode")?.as_u64()? {
        1 => Some(XdpMode::Driver),
        2 => Some(XdpMode::Skb),
        3 => Some(XdpMode::Hardware),
        _ => None,
    }
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
    for map in names::BALANCER {
        let path = dir.join(map);
        if path.exists() {
            std::fs::remove_file(&path)
                .map_err(|source| DatapathError::StateDir { dir: path, source })?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            Err(DatapathError::StateDir {
                dir: dir.to_path_buf(),
                source,
            })
        }
        _ => Ok(()),
    }
}

fn per_cpu<V: aya::Pod>(map: &mut Map, name: &'static str, index: u32) -> Result<PerCpuValues<V>> {
    let array: PerCpuArray<_, V> = PerCpuArray::try_from(map).map_err(map_error(name))?;
    array.get(&index, 0).map_err(map_error(name))
}

fn sum_u64(map: &mut Map, name: &'static str, index: u32) -> Result<u64> {
    Ok(per_cpu::<u64>(map, name, index)?.iter().sum())
}

/// Reads a ring map through mmap (one copy instead of a syscall per slot).
fn read_ring(map: &MapData) -> std::io::Result<Vec<u32>> {
    const STRIDE: usize = 8;
    let size = map.info().map_err(std::io::Error::other)?.max_entries() as usize;
    let bytes = size * STRIDE;
    // SAFETY: read-only shared mapping of a BPF_F_MMAPABLE array's value area (size * STRIDE
    // bytes); checked before use and unmapped before returning.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if area == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let slots = (0..size)
        // SAFETY: `index * STRIDE + 4 <= bytes`, inside the live mapping.
        .map(|index| unsafe {
            area.cast::<u8>()
                .add(index * STRIDE)
                .cast::<u32>()
                .read_unaligned()
        })
        .collect();
    // SAFETY: unmapping exactly the mapping created above; no reference to it survives.
    unsafe { libc::munmap(area, bytes) };
    Ok(slots)
}

/// Creates a ring map (`RING_FLAGS`) holding `slots`, written through mmap.
///
/// The kernel lays array values out at a stride of `round_up(value_size, 8)`, so each 4-byte
/// slot occupies 8 bytes of the mapping.
fn new_ring(slots: &[u32]) -> std::io::Result<MapData> {
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const STRIDE: usize = 8;
    let size = u32::try_from(slots.len()).map_err(std::io::Error::other)?;
    let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_ARRAY, 4, 4, size, RING_FLAGS);
    let map = MapData::create(obj, "lb_ring", None).map_err(std::io::Error::other)?;
    let bytes = slots.len() * STRIDE;
    // SAFETY: mmap of a BPF_F_MMAPABLE array fd, shared, read-write, at offset 0, covering the
    // value area (size * STRIDE bytes; the kernel page-rounds it). The result is checked
    // before use and unmapped before returning.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if area == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let Some(area) = NonNull::new(area.cast::<u8>()) else {
        return Err(std::io::Error::other("mmap returned null"));
    };
    for (index, slot) in slots.iter().enumerate() {
        // SAFETY: `index * STRIDE + 4 <= bytes`, inside the live mapping; nothing else
        // references it (no program can reach this map yet). Unaligned-safe write.
        unsafe {
            area.as_ptr()
                .add(index * STRIDE)
                .cast::<u32>()
                .write_unaligned(*slot)
        };
    }
    // SAFETY: unmapping exactly the mapping created above; no reference to it survives.
    unsafe { libc::munmap(area.as_ptr().cast(), bytes) };
    Ok(map)
}
