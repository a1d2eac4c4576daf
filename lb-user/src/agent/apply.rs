//! Carries out the planner's writes on the datapath, in order, recording each one that reached
//! the kernel; the first failure stops the rest (what was written stays recorded).

use lb_common::maps::Backend;

use super::plan::{MapWrite, Written};
use crate::datapath::{Datapath, DatapathError};

/// What a successful [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rings swapped.
    pub rings: usize,
    /// Backend entries cleared: their ids are free again.
    pub cleared: Vec<u32>,
}

/// Applies `writes` to `datapath` in order, recording each in `written`.
pub fn apply(
    datapath: &mut Datapath,
    written: &mut Written,
    writes: &[MapWrite],
) -> Result<Applied, DatapathError> {
    let mut applied = Applied::default();
    for write in writes {
        match write {
            MapWrite::TxPort { ifindex } => datapath.add_tx_port(*ifindex)?,
            MapWrite::Backend { id, entry } => {
                datapath.set_backend(*id, entry)?;
                if *entry == Backend::default() {
                    applied.cleared.push(*id);
                }
            }
            MapWrite::Ring { vip, slots } => {
                datapath.set_ring(*vip, slots)?;
                applied.rings += 1;
            }
            MapWrite::Vip { key, entry } => datapath.set_vip(key, entry)?,
            MapWrite::RemoveVip { key } => datapath.remove_vip(key)?,
        }
        written.record(write);
    }
    Ok(applied)
}
