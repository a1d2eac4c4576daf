//! Finishing the migration of an older layout's pinned state (see [`super::layout`]): once the
//! new program runs in the pinned link, what must survive is carried over from the old maps and
//! the new maps take their pins.

use lb_common::maps::names;

use super::{
    error::{DatapathError, Result},
    layout::{self, Fate},
    Datapath, FlowClock,
};

/// Flows of an older layout's table carried into `FLOWS` (`Datapath::track_flows_of`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowsCarried {
    /// Flows now tracked in `FLOWS`.
    pub tracked: usize,
    /// Flows `FLOWS` tracked already (the second pass finds the first's, and the new program's).
    pub already: usize,
    /// Flows whose set had no empty way: they take the ring again.
    pub no_room: usize,
}

impl std::ops::AddAssign for FlowsCarried {
    fn add_assign(&mut self, other: Self) {
        self.tracked += other.tracked;
        self.already += other.already;
        self.no_room += other.no_room;
    }
}

/// A migration done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgraded {
    /// What was migrated.
    pub migration: layout::Migration,
    /// Flows carried over into `FLOWS`, both passes together.
    pub flows: FlowsCarried,
}

/// Where the maps of a loaded datapath came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Not pinned, or nothing was pinned: new maps.
    New,
    /// A previous agent's maps of this layout, adopted as they are.
    Adopted,
    /// An older layout's maps: those of unchanged layout kept, the others new until
    /// [`Datapath::finish_upgrade`] carries over what must survive and replaces their pins.
    Upgrading(layout::Migration),
}

/// Where new maps wait while an upgrade is under way (on bpffs, beside the pins; bpffs refuses
/// names with a dot).
pub(super) const STAGING: &str = "upgrading";

impl Datapath {
    /// Tracks the old layout's flows in the new `FLOWS`, if the upgrade under way converts
    /// them: once before the new program runs (so no tracked flow takes the ring when it
    /// starts), and again from [`Self::finish_upgrade`] (the flows the old program tracked in
    /// between).
    pub(super) fn carry_flows(&mut self) -> Result<()> {
        let Origin::Upgrading(migration) = &self.origin else {
            return Ok(());
        };
        let Some(Fate::Flows { from }) = migration.fate(names::FLOWS) else {
            return Ok(());
        };
        let Some(dir) = self.pin_dir.clone() else {
            return Err(DatapathError::NotPinned);
        };
        let now = match FlowClock::read() {
            Ok(clock) => Some(clock.now()),
            Err(error) => {
                tracing::warn!(
                    "{}; flows carried over from {} count as seen long ago",
                    crate::error::Chain(&error),
                    from.pin_name()
                );
                None
            }
        };
        let carried = self.track_flows_of(from, &dir.join(from.pin_name()), now)?;
        self.carried_flows += carried;
        Ok(())
    }

    /// Ends an upgrade once the new program runs in the pinned link: the old counters are
    /// added to the new maps', the old pins of replaced maps give way to the new maps, and the
    /// staging directory goes, and so do the pins of maps this layout retired (`CONNTRACK`,
    /// once its flows are carried over). Returns the migration done (`None`: there was none).
    pub fn finish_upgrade(&mut self) -> Result<Option<Upgraded>> {
        let Origin::Upgrading(migration) = &self.origin else {
            return Ok(None);
        };
        let migration = migration.clone();
        let Some(dir) = self.pin_dir.clone() else {
            return Err(DatapathError::NotPinned);
        };
        let staging = dir.join(STAGING);
        for (map, fate) in &migration.fates {
            if let Fate::Counters { names } = fate {
                self.add_counters(&dir.join(map), names)?;
            }
        }
        self.carry_flows()?;
        for (map, fate) in &migration.fates {
            if *fate == Fate::Keep {
                continue;
            }
            let (old, new) = (dir.join(map), staging.join(map));
            match std::fs::remove_file(&old) {
                Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DatapathError::StateDir {
                        action: "remove the old pin",
                        path: old,
                        source,
                    })
                }
                _ => {}
            }
            std::fs::rename(&new, &old).map_err(|source| DatapathError::StateDir {
                action: "move into place the migrated pin",
                path: new,
                source,
            })?;
        }
        for map in names::RETIRED {
            let old = dir.join(map);
            match std::fs::remove_file(&old) {
                Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DatapathError::StateDir {
                        action: "remove the old pin",
                        path: old,
                        source,
                    })
                }
                _ => {}
            }
        }
        std::fs::remove_dir(&staging).map_err(|source| DatapathError::StateDir {
            action: "remove the staging directory",
            path: staging,
            source,
        })?;
        self.origin = Origin::Adopted;
        Ok(Some(Upgraded {
            migration,
            flows: std::mem::take(&mut self.carried_flows),
        }))
    }
}
