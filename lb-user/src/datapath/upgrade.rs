//! Finishing the migration of an older layout's pinned state (see [`super::layout`]): once the
//! new program runs in the pinned link, what must survive is carried over from the old maps and
//! the new maps take their pins.

use super::{
    error::{DatapathError, Result},
    layout::{self, Fate},
    Datapath,
};

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
    /// Ends an upgrade once the new program runs in the pinned link: the old counters are
    /// added to the new maps', the old pins of replaced maps give way to the new maps, and the
    /// staging directory goes. Returns the migration done (`None`: there was none).
    pub fn finish_upgrade(&mut self) -> Result<Option<layout::Migration>> {
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
        for (map, fate) in &migration.fates {
            if *fate == Fate::Keep {
                continue;
            }
            let (old, new) = (dir.join(map), staging.join(map));
            match std::fs::remove_file(&old) {
                Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DatapathError::StateDir { dir: old, source })
                }
                _ => {}
            }
            std::fs::rename(&new, &old)
                .map_err(|source| DatapathError::StateDir { dir: new, source })?;
        }
        std::fs::remove_dir(&staging).map_err(|source| DatapathError::StateDir {
            dir: staging,
            source,
        })?;
        self.origin = Origin::Adopted;
        Ok(Some(migration))
    }
}
