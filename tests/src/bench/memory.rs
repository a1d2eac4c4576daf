//! Kernel memory of the balancer's maps, as the kernel accounts it: the `memlock:` line of
//! `/proc/self/fdinfo/<map fd>` (the map's `map_mem_usage`, exact since kernel 6.4).

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use anyhow::{anyhow, Context as _};
use aya::maps::{ArrayOfMaps, Map, MapData};
use lb_common::{
    conntrack::{FlowSet, WAYS},
    maps::{names, DEFAULT_RING_SIZE, MAX_VIPS},
};
use lb_user::datapath::{Datapath, Program};

use crate::bench::report_table::Section;

/// Number of VIPs of the "typical deployment" total.
pub const TYPICAL_VIPS: u32 = 10;

/// One map's kernel memory.
#[derive(Clone, Debug)]
pub struct MapMemory {
    /// Map name.
    pub name: String,
    /// Kernel map type.
    pub kind: String,
    /// `max_entries`.
    pub entries: u32,
    /// Bytes the kernel charges for it.
    pub bytes: u64,
}

/// The memory of every map the balancer program uses (in [`names::BALANCER`] order, which
/// also lists `LAYOUT`, pinned beside them but read only by the agent), and of
/// the ring of VIP `ring_vip`.
pub fn measure(
    datapath: &mut Datapath,
    ring_vip: u32,
) -> anyhow::Result<(Vec<MapMemory>, MapMemory)> {
    let ids = datapath
        .program(Program::Balancer)?
        .info()?
        .map_ids()?
        .ok_or_else(|| anyhow!("this kernel does not report a program's map ids"))?;
    let mut maps = Vec::new();
    let mut rings = None;
    for id in ids {
        let data = MapData::from_id(id).with_context(|| format!("map id {id}"))?;
        let memory = map_memory(&data)?;
        if memory.name == names::RINGS {
            rings = Some(data);
        }
        maps.push(memory);
    }
    // `LAYOUT` is pinned with the balancer's maps but only the agent reads it.
    let used: Vec<&str> = names::BALANCER
        .into_iter()
        .filter(|name| *name != names::LAYOUT)
        .collect();
    let position = |name: &str| used.iter().position(|n| *n == name);
    maps.retain(|m| position(&m.name).is_some());
    maps.sort_by_key(|m| position(&m.name));
    if maps.len() != used.len() {
        let found: Vec<&str> = maps.iter().map(|m| m.name.as_str()).collect();
        return Err(anyhow!("the balancer uses {found:?}, expected {used:?}"));
    }
    let rings = rings.ok_or_else(|| anyhow!("the balancer does not use {}", names::RINGS))?;
    let rings: ArrayOfMaps<MapData, MapData> = ArrayOfMaps::try_from(Map::from_map_data(rings)?)?;
    let ring = rings
        .get(&ring_vip, 0)
        .with_context(|| format!("ring of VIP id {ring_vip}"))?;
    Ok((maps, map_memory(&ring)?))
}

fn map_memory(data: &MapData) -> anyhow::Result<MapMemory> {
    let info = data.info()?;
    Ok(MapMemory {
        name: info.name_as_str().unwrap_or("?").to_string(),
        kind: info
            .map_type()
            .map_or_else(|_| "?".to_string(), |t| format!("{t:?}")),
        entries: info.max_entries(),
        bytes: memlock(data.fd().as_fd())?,
    })
}

/// The `memlock:` figure of a map fd.
fn memlock(fd: BorrowedFd<'_>) -> anyhow::Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    text.lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| anyhow!("{path}: no memlock line"))
}

/// Bytes in binary units.
pub fn human(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    }
}

/// The "Map memory" section.
pub fn section(maps: &[MapMemory], ring: &MapMemory, cpus: usize) -> Section {
    let row = |name: String, kind: &str, entries: String, bytes: u64| {
        vec![
            name,
            kind.to_string(),
            entries,
            human(bytes),
            bytes.to_string(),
        ]
    };
    let mut rows: Vec<Vec<String>> = maps
        .iter()
        .map(|m| row(m.name.clone(), &m.kind, m.entries.to_string(), m.bytes))
        .collect();
    rows.push(row(
        format!("one ring ({} slots)", ring.entries),
        &ring.kind,
        ring.entries.to_string(),
        ring.bytes,
    ));
    let fixed: u64 = maps.iter().map(|m| m.bytes).sum();
    for (what, vips) in [
        ("typical", TYPICAL_VIPS),
        ("worst case, MAX_VIPS", MAX_VIPS),
    ] {
        let rings = ring.bytes * u64::from(vips);
        rows.push(row(
            format!("rings × {vips} VIPs"),
            "",
            format!("{vips} × {}", ring.entries),
            rings,
        ));
        rows.push(row(
            format!("total, {vips} VIPs ({what})"),
            "",
            String::new(),
            fixed + rings,
        ));
    }
    Section {
        title: "Map memory".into(),
        method: format!(
            "The real object loaded with the default sizes (FLOWS {} sets of {WAYS} flows, rings of {} slots) \
             and the lab's VIPs. For each map the balancer program uses (its map ids, from the \
             kernel), the bytes the kernel charges for it: the `memlock:` line of \
             /proc/self/fdinfo/<map fd>. A ring is a separate map per VIP (the inner maps of \
             RINGS), measured on one live ring; totals add the fixed maps and one ring per VIP.",
            maps.iter().find(|m| m.name == names::FLOWS).map_or(0, |m| m.entries),
            DEFAULT_RING_SIZE,
        ),
        columns: ["map", "type", "entries", "memory", "bytes"]
            .map(String::from)
            .to_vec(),
        rows,
        notes: vec![
            format!(
                "Per-CPU maps (STATS, VIP_STATS, BACKEND_STATS) hold one value per possible CPU: \
                 measured with {cpus} possible CPUs, they grow linearly with the CPU count."
            ),
            format!(
                "FLOWS (connection tracking) is an array of sets of {WAYS} flows ({} bytes a \
                 set): its memory is taken at load time, empty or full. It scales with \
                 `conntrack_size`.",
                size_of::<FlowSet>()
            ),
            "VIP_SLOTS and VIP_ENTRIES (the VIP index) are arrays the agent writes through \
             mmap: page-aligned, whatever their size."
                .into(),
            "Ring slots are 4-byte backend ids, but a BPF array stores values at an 8-byte \
             stride, so a ring costs about 8 bytes per slot (plus the page-aligned mmap area)."
                .into(),
        ],
    }
}
