//! Which layout the pinned state in a state directory has, and what adopting it takes: use it
//! as it is, migrate it (maps whose layout is unchanged are kept, so tracked flows and rings
//! survive; the others are created anew and, where they hold what must survive, filled from
//! the old ones), or refuse with what differs.
//!
//! The layout is recorded in the `LAYOUT` map (see `lb_common::layout`); state from before the
//! scheme (version 0) has no such map and is recognised by its maps' shapes. Versions 0 and 1
//! tracked flows in `CONNTRACK`, an LRU hash map; their flows are converted into `FLOWS`.

use std::{collections::BTreeMap, path::Path};

use aya::maps::MapData;
use lb_common::{
    layout::{Layout, LAYOUT_VERSION, V1_FINGERPRINT, V2_FINGERPRINT},
    maps::names,
    stats::Counter,
};

use super::{OldFlows, OBJECT};

/// What must match for a program to use a map: the kernel's view of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// `bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Entries (not compared for `FLOWS` and `CONNTRACK`, whose size is a setting).
    pub max_entries: u32,
}

impl Shape {
    /// Whether a map of shape `self` can serve where `other` is expected (`map` names it).
    fn fits(&self, other: &Shape, map: &str) -> bool {
        let Self {
            map_type,
            key_size,
            value_size,
            max_entries,
        } = *self;
        map_type == other.map_type
            && key_size == other.key_size
            && value_size == other.value_size
            && (max_entries == other.max_entries || sized_by_setting(map))
    }
}

/// Whether the size of map `map` is the `conntrack_size` setting of the agent that created it.
fn sized_by_setting(map: &str) -> bool {
    map == names::FLOWS || map == names::CONNTRACK
}

/// `BPF_MAP_TYPE_LRU_HASH`, the type of layouts 0 and 1's `CONNTRACK`.
const LRU_HASH: u32 = 9;

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// What adopting pinned state does with one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Kept as it is (same layout): the new program uses the pinned map.
    Keep,
    /// Created anew; the agent writes its content (settings, layout).
    Create,
    /// Created anew; once the new program runs, the old map's counters are added to it by
    /// name (`names`: the old layout's counter names, in index order).
    Counters {
        /// Counter names of the old layout, by index.
        names: &'static [&'static str],
    },
    /// Created anew and given the flows of the old layout's table (`from`): before the new
    /// program runs, and again once it does, for the flows the old program tracked in between.
    /// The old map is then removed.
    Flows {
        /// The old table.
        from: OldFlows,
    },
}

/// How pinned state of an older layout becomes this build's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The layout version found.
    pub from: u32,
    /// Every balancer map of this build and what happens to it.
    pub fates: Vec<(&'static str, Fate)>,
}

impl Migration {
    /// A migration that keeps nothing (`lb run --fresh-state`): every map is created anew,
    /// so tracked flows re-hash, but the pinned link is kept and its program replaced.
    pub fn fresh(from: u32) -> Self {
        Self {
            from,
            fates: names::BALANCER
                .into_iter()
                .map(|name| (name, Fate::Create))
                .collect(),
        }
    }

    /// What becomes of the map `map` (`None`: not a map of this build).
    pub fn fate(&self, map: &str) -> Option<Fate> {
        self.fates
            .iter()
            .find(|(name, _)| *name == map)
            .map(|(_, fate)| *fate)
    }

    /// What the maps not kept are, for the log: `STATS (counters), SETTINGS (new)`.
    pub fn summary(&self) -> String {
        let changed: Vec<String> = self
            .fates
            .iter()
            .filter_map(|(name, fate)| match fate {
                Fate::Keep => None,
                Fate::Create => Some(format!("{name} (new)")),
                Fate::Counters { .. } => Some(format!("{name} (counters carried over)")),
                Fate::Flows { from } => Some(format!(
                    "{name} (tracked flows of the old {})",
                    from.pin_name()
                )),
            })
            .collect();
        changed.join(", ")
    }
}

/// What a state directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinnedLayout {
    /// No pinned maps: a fresh start.
    Empty,
    /// This build's layout: adopt as it is.
    Current,
    /// An older layout this build migrates.
    Older(Migration),
}

/// Pinned state this build can neither adopt nor migrate.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A newer lb created it (a downgrade).
    #[error(
        "the pinned state in {dir} has layout version {found}, newer than this lb's {LAYOUT_VERSION}: \
         run the lb version that created it, or start this one with --fresh-state (the maps are \
         recreated: tracked flows re-hash, counters restart)"
    )]
    Newer {
        /// The state directory.
        dir: String,
        /// The version found.
        found: u32,
    },
    /// Its maps match no layout this build knows.
    #[error(
        "the pinned state in {dir} matches no layout this lb knows (version {found}): {}; start \
         with --fresh-state to recreate the maps (tracked flows re-hash, counters restart)",
        differences.join("; ")
    )]
    Unknown {
        /// The state directory.
        dir: String,
        /// The version its `LAYOUT` map claims (0 without one).
        found: u32,
        /// What differs, map by map.
        differences: Vec<String>,
    },
    /// The object embedded in this binary cannot be parsed (a build problem).
    #[error("the embedded XDP object cannot be parsed")]
    Object(#[source] aya_obj::ParseError),
}

/// The shape of every balancer map of this build, from the embedded object.
pub fn current_shapes() -> Result<BTreeMap<&'static str, Shape>, LayoutError> {
    let object = aya_obj::Object::parse(OBJECT).map_err(LayoutError::Object)?;
    Ok(names::BALANCER
        .into_iter()
        .filter_map(|name| {
            let map = object.maps.get(name)?;
            Some((
                name,
                Shape {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    max_entries: map.max_entries(),
                },
            ))
        })
        .collect())
}

/// This build's counter names, by index.
const COUNTER_NAMES: [&str; Counter::COUNT as usize] = {
    let mut names = [""; Counter::COUNT as usize];
    let mut i = 0;
    while i < names.len() {
        names[i] = Counter::ALL[i].name();
        i += 1;
    }
    names
};

/// The counter names of layout 0, by index: this build's first 17 (counters keep their
/// index; new ones are added at the end).
pub fn v0_counter_names() -> &'static [&'static str] {
    &COUNTER_NAMES[..17]
}

/// The counter names of layouts 1 and 2, by index: this build's first 18.
pub fn v2_counter_names() -> &'static [&'static str] {
    &COUNTER_NAMES[..18]
}

/// What an older layout pinned and what becomes of it.
struct OlderLayout {
    /// The maps it pinned, by name, and their shapes.
    pinned: BTreeMap<&'static str, Shape>,
    /// What each map of this build takes.
    fates: Vec<(&'static str, Fate)>,
}

/// The maps layout `version` (0, 1 or 2) pinned, derived from this build's (`current`), and
/// what migrating each takes. Layout 2 had `FLOWS` of the same shape, whose stamps were only a
/// tick (no class), `SETTINGS` without the idle timeouts (28 bytes) and 18 counters; layout 1
/// also had `CONNTRACK` (an LRU hash map) where this build has `FLOWS`, and no VIP index
/// (`VIP_SLOTS`, `VIP_ENTRIES`); layout 0 also had 17 counters, 20-byte `SETTINGS` (no
/// interface MAC) and no `LAYOUT`.
fn older_layout(version: u32, current: &BTreeMap<&'static str, Shape>) -> Option<OlderLayout> {
    if version > 2 {
        return None;
    }
    let counters = if version == 0 {
        v0_counter_names()
    } else {
        v2_counter_names()
    };
    let mut pinned = BTreeMap::new();
    let mut fates = Vec::new();
    for (name, shape) in current {
        let (old, fate) = match *name {
            names::FLOWS if version == 2 => (
                Some(*shape),
                Fate::Flows {
                    from: OldFlows::Flows,
                },
            ),
            names::FLOWS => (
                None,
                Fate::Flows {
                    from: OldFlows::Conntrack,
                },
            ),
            names::VIP_SLOTS | names::VIP_ENTRIES if version < 2 => (None, Fate::Create),
            // The layout recorded changes with the version; written aside, so an upgrade that
            // stops half-way starts over.
            names::LAYOUT => ((version > 0).then_some(*shape), Fate::Create),
            names::STATS => (
                Some(Shape {
                    max_entries: counters.len() as u32,
                    ..*shape
                }),
                Fate::Counters { names: counters },
            ),
            names::SETTINGS => (
                Some(Shape {
                    value_size: if version == 0 { 20 } else { 28 },
                    ..*shape
                }),
                Fate::Create,
            ),
            _ => (Some(*shape), Fate::Keep),
        };
        if let Some(old) = old {
            pinned.insert(*name, old);
        }
        fates.push((*name, fate));
    }
    if version < 2 {
        pinned.insert(
            names::CONNTRACK,
            Shape {
                map_type: LRU_HASH,
                key_size: size_of::<lb_common::FlowKey>() as u32,
                value_size: size_of::<lb_common::maps::Conntrack>() as u32,
                max_entries: lb_common::maps::DEFAULT_CONNTRACK_SIZE,
            },
        );
    }
    Some(OlderLayout { pinned, fates })
}

/// The shape of the map pinned at `dir/name`, if there is one.
fn pinned_shape(dir: &Path, name: &str) -> Option<Shape> {
    let info = MapData::from_pin(dir.join(name)).ok()?.info().ok()?;
    Some(Shape {
        map_type: info.map_type().ok()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    })
}

/// The `LAYOUT` pinned in `dir`, if any.
fn pinned_layout(dir: &Path) -> Option<Layout> {
    let data = MapData::from_pin(dir.join(names::LAYOUT)).ok()?;
    let map = aya::maps::Map::Array(data);
    let array: aya::maps::Array<_, Layout> = aya::maps::Array::try_from(map).ok()?;
    array.get(&0, 0).ok()
}

/// What the state directory `dir` holds.
pub fn inspect(dir: &Path) -> Result<PinnedLayout, LayoutError> {
    let current = current_shapes()?;
    let pinned: BTreeMap<&str, Shape> = names::BALANCER
        .into_iter()
        .chain(names::RETIRED)
        .filter_map(|name| Some((name, pinned_shape(dir, name)?)))
        .collect();
    if pinned.is_empty() {
        return Ok(PinnedLayout::Empty);
    }
    let display = dir.display().to_string();
    let recorded = pinned_layout(dir);
    let version = recorded.map_or(0, |layout| layout.version);
    if version > LAYOUT_VERSION {
        return Err(LayoutError::Newer {
            dir: display,
            found: version,
        });
    }
    let unknown = |differences| LayoutError::Unknown {
        dir: display.clone(),
        found: version,
        differences,
    };
    let fingerprint_differs = |expected: u64| {
        recorded
            .filter(|layout| layout.fingerprint != expected)
            .map(|layout| {
                format!(
                "LAYOUT records version {} with fingerprint {:#x}, which version {} does not have \
                 (expected {expected:#x})",
                layout.version, layout.fingerprint, layout.version
            )
            })
    };
    if version == LAYOUT_VERSION {
        let mut differences = differences(&pinned, current.iter().map(|(n, s)| (*n, *s)));
        differences.extend(fingerprint_differs(Layout::CURRENT.fingerprint));
        return if differences.is_empty() {
            Ok(PinnedLayout::Current)
        } else {
            Err(unknown(differences))
        };
    }
    let Some(older) = older_layout(version, &current) else {
        return Err(unknown(vec![format!(
            "layout version {version} is not known"
        )]));
    };
    let mut differences = differences(&pinned, older.pinned.iter().map(|(n, s)| (*n, *s)));
    match version {
        1 => differences.extend(fingerprint_differs(V1_FINGERPRINT)),
        2 => differences.extend(fingerprint_differs(V2_FINGERPRINT)),
        _ => {}
    }
    if differences.is_empty() {
        Ok(PinnedLayout::Older(Migration {
            from: version,
            fates: older.fates,
        }))
    } else {
        Err(unknown(differences))
    }
}

/// How the pinned maps differ from `expected`, one line per map.
fn differences<'a>(
    pinned: &BTreeMap<&str, Shape>,
    expected: impl IntoIterator<Item = (&'a str, Shape)>,
) -> Vec<String> {
    expected
        .into_iter()
        .filter_map(|(name, want)| match pinned.get(name) {
            None => Some(format!("{name} is missing")),
            Some(have) if !have.fits(&want, name) => {
                Some(format!("{name} has {have}, expected {want}"))
            }
            Some(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_builds_maps_are_all_in_the_object() {
        let shapes = current_shapes().expect("object");
        assert_eq!(shapes.len(), names::BALANCER.len(), "{shapes:?}");
        assert_eq!(
            shapes[names::STATS].max_entries,
            Counter::COUNT,
            "one STATS slot per counter"
        );
    }

    /// The maps of layout `version` whose shape differs from this build's, and those it did
    /// not have.
    fn changes(version: u32) -> (Vec<&'static str>, Vec<&'static str>) {
        let current = current_shapes().expect("object");
        let older = older_layout(version, &current).expect("a known layout");
        let changed = older
            .pinned
            .iter()
            .filter(|(name, shape)| current.get(*name) != Some(*shape))
            .map(|(name, _)| *name)
            .collect();
        let missing = current
            .keys()
            .filter(|name| !older.pinned.contains_key(*name))
            .copied()
            .collect();
        (changed, missing)
    }

    /// The fate of `map` in the migration from layout `version`.
    fn fate(version: u32, map: &str) -> Option<Fate> {
        let current = current_shapes().expect("object");
        let older = older_layout(version, &current).expect("a known layout");
        older
            .fates
            .iter()
            .find(|(name, _)| *name == map)
            .map(|(_, f)| *f)
    }

    #[test]
    fn layout_2_had_flows_without_classes_settings_without_timeouts_and_18_counters() {
        let (changed, missing) = changes(2);
        assert_eq!(changed, [names::SETTINGS, names::STATS]);
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(
            fate(2, names::FLOWS),
            Some(Fate::Flows {
                from: OldFlows::Flows
            }),
            "same shape, other meaning: its flows are carried over, not kept"
        );
        assert_eq!(fate(2, names::SETTINGS), Some(Fate::Create));
        assert_eq!(
            fate(2, names::STATS),
            Some(Fate::Counters {
                names: v2_counter_names()
            })
        );
        assert_eq!(v2_counter_names()[17], "other_mac");
        for kept in [
            names::VIP_SLOTS,
            names::VIP_ENTRIES,
            names::RINGS,
            names::VIPS,
        ] {
            assert_eq!(fate(2, kept), Some(Fate::Keep), "{kept}");
        }
    }

    #[test]
    fn layout_1_had_conntrack_instead_of_flows_and_no_vip_index() {
        let (changed, missing) = changes(1);
        assert_eq!(changed, [names::CONNTRACK, names::SETTINGS, names::STATS]);
        assert_eq!(
            missing,
            [names::FLOWS, names::VIP_ENTRIES, names::VIP_SLOTS]
        );
        assert_eq!(
            fate(1, names::FLOWS),
            Some(Fate::Flows {
                from: OldFlows::Conntrack
            })
        );
        assert_eq!(fate(1, names::LAYOUT), Some(Fate::Create));
        assert_eq!(fate(1, names::RINGS), Some(Fate::Keep));
        assert_eq!(
            fate(1, names::STATS),
            Some(Fate::Counters {
                names: v2_counter_names()
            })
        );
    }

    #[test]
    fn layout_0_also_differs_in_the_counters_and_the_settings() {
        let (changed, missing) = changes(0);
        assert_eq!(changed, [names::CONNTRACK, names::SETTINGS, names::STATS]);
        assert_eq!(
            missing,
            [
                names::FLOWS,
                names::LAYOUT,
                names::VIP_ENTRIES,
                names::VIP_SLOTS
            ]
        );
        let current = current_shapes().expect("object");
        let older = older_layout(0, &current).expect("layout 0");
        assert_eq!(older.pinned[names::STATS].max_entries, 17);
        assert_eq!(older.pinned[names::SETTINGS].value_size, 20);
        // Counters kept their index: v0's names are this build's first 17.
        assert_eq!(v0_counter_names()[16], "icmp_error");
        assert_eq!(v0_counter_names()[9], "parse_error");
        assert!(older_layout(3, &current).is_none());
    }

    #[test]
    fn shapes_fit_except_conntrack_size() {
        let shape = Shape {
            map_type: 9,
            key_size: 40,
            value_size: 4,
            max_entries: 1024,
        };
        let bigger = Shape {
            max_entries: 4096,
            ..shape
        };
        assert!(bigger.fits(&shape, names::CONNTRACK));
        assert!(bigger.fits(&shape, names::FLOWS));
        assert!(!bigger.fits(&shape, names::VIPS));
    }
}
