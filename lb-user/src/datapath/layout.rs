//! Which layout the pinned state in a state directory has, and what adopting it takes: use it
//! as it is, migrate it (maps whose layout is unchanged are kept, so tracked flows and rings
//! survive; the others are created anew and, where they hold what must survive, filled from
//! the old ones), or refuse with what differs.
//!
//! The layout is recorded in the `LAYOUT` map (see `lb_common::layout`); state from before the
//! scheme (version 0) has no such map and is recognised by its maps' shapes.

use std::{collections::BTreeMap, path::Path};

use aya::maps::MapData;
use lb_common::{
    layout::{Layout, LAYOUT_VERSION},
    maps::names,
    stats::Counter,
};

use super::OBJECT;

/// What must match for a program to use a map: the kernel's view of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// `bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Entries (not compared for `CONNTRACK`, whose size is a setting).
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
            && (max_entries == other.max_entries || map == names::CONNTRACK)
    }
}

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

    /// What the maps not kept are, for the log: `STATS (counters), SETTINGS (new)`.
    pub fn summary(&self) -> String {
        let changed: Vec<String> = self
            .fates
            .iter()
            .filter_map(|(name, fate)| match fate {
                Fate::Keep => None,
                Fate::Create => Some(format!("{name} (new)")),
                Fate::Counters { .. } => Some(format!("{name} (counters carried over)")),
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

/// The counter names of layout 0, by index: this build's first 17.
pub fn v0_counter_names() -> &'static [&'static str] {
    const V0_COUNTERS: usize = 17;
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        Counter::ALL[..V0_COUNTERS]
            .iter()
            .map(|counter| counter.name())
            .collect()
    })
}

/// The shapes of layout 0, from this build's (`current`): `STATS` had 17 counters, `SETTINGS`
/// was 20 bytes (no interface MAC), and there was no `LAYOUT`. Each entry also says what
/// migrating that map to this build takes.
fn v0_shapes(current: &BTreeMap<&'static str, Shape>) -> BTreeMap<&'static str, (Shape, Fate)> {
    current
        .iter()
        .filter(|(name, _)| **name != names::LAYOUT)
        .map(|(name, shape)| {
            let (shape, fate) = match *name {
                names::STATS => (
                    Shape {
                        max_entries: v0_counter_names().len() as u32,
                        ..*shape
                    },
                    Fate::Counters {
                        names: v0_counter_names(),
                    },
                ),
                names::SETTINGS => (
                    Shape {
                        value_size: 20,
                        ..*shape
                    },
                    Fate::Create,
                ),
                _ => (*shape, Fate::Keep),
            };
            (*name, (shape, fate))
        })
        .collect()
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
    let pinned: BTreeMap<&str, Shape> = current
        .keys()
        .filter_map(|name| Some((*name, pinned_shape(dir, name)?)))
        .collect();
    if pinned.is_empty() {
        return Ok(PinnedLayout::Empty);
    }
    let display = dir.display().to_string();
    match pinned_layout(dir) {
        Some(layout) if layout.version > LAYOUT_VERSION => Err(LayoutError::Newer {
            dir: display,
            found: layout.version,
        }),
        Some(layout) => {
            let mut differences = differences(&pinned, current.iter().map(|(n, s)| (*n, *s)));
            if layout != Layout::CURRENT && differences.is_empty() {
                differences.push(format!(
                    "LAYOUT records version {} with fingerprint {:#x}, this lb has version {} \
                     with fingerprint {:#x}",
                    layout.version,
                    layout.fingerprint,
                    Layout::CURRENT.version,
                    Layout::CURRENT.fingerprint
                ));
            }
            if differences.is_empty() {
                Ok(PinnedLayout::Current)
            } else {
                Err(LayoutError::Unknown {
                    dir: display,
                    found: layout.version,
                    differences,
                })
            }
        }
        None => {
            let v0 = v0_shapes(&current);
            let differences = differences(&pinned, v0.iter().map(|(n, (s, _))| (*n, *s)));
            if !differences.is_empty() {
                return Err(LayoutError::Unknown {
                    dir: display,
                    found: 0,
                    differences,
                });
            }
            let fates = current
                .keys()
                .map(|name| (*name, v0.get(name).map_or(Fate::Create, |(_, fate)| *fate)))
                .collect();
            Ok(PinnedLayout::Older(Migration { from: 0, fates }))
        }
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

    #[test]
    fn layout_0_differs_in_the_counters_and_the_settings_only() {
        let current = current_shapes().expect("object");
        let v0 = v0_shapes(&current);
        assert!(!v0.contains_key(names::LAYOUT));
        let changed: Vec<&str> = v0
            .iter()
            .filter(|(name, (shape, _))| *shape != current[*name])
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(changed, [names::SETTINGS, names::STATS]);
        assert_eq!(v0[names::STATS].0.max_entries, 17);
        // Counters kept their index: v0's names are this build's first 17.
        assert_eq!(v0_counter_names()[16], "icmp_error");
        assert_eq!(v0_counter_names()[9], "parse_error");
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
        assert!(!bigger.fits(&shape, names::VIPS));
    }
}
