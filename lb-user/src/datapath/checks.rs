//! The health checks' share of the object: the `steer_check` program, attached to the egress of
//! the agent's check interface, and its maps (`CHECK_PATHS`, `CHECK_STATS`), which are not
//! pinned: checks live and die with the agent.

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{tc::TcAttachType, SchedClassifier},
};
use lb_common::{
    check_path::{CheckCounter, CheckPath},
    maps::names,
};

use super::{
    error::{map_error, Result},
    Datapath, DatapathError,
};

/// The name of the steering program in the object.
const STEER_CHECK: &str = "steer_check";

/// `CHECK_PATHS` and `CHECK_STATS`, taken out of the object by their owner.
pub struct CheckMaps {
    /// Slot → path.
    pub paths: Array<MapData, CheckPath>,
    /// What the program did, by [`CheckCounter`].
    pub stats: PerCpuArray<MapData, u64>,
}

/// What `steer_check` counted, summed over CPUs, in [`CheckCounter::ALL`] order.
pub fn check_counts(stats: &PerCpuArray<MapData, u64>) -> Result<Vec<(CheckCounter, u64)>> {
    CheckCounter::ALL
        .into_iter()
        .map(|counter| {
            let values = stats
                .get(&(counter as u32), 0)
                .map_err(map_error(names::CHECK_STATS))?;
            Ok((counter, values.iter().sum()))
        })
        .collect()
}

impl Datapath {
    /// `steer_check`, loaded into the kernel on first use (running the verifier).
    pub fn check_steering_program(&mut self) -> Result<&mut SchedClassifier> {
        let program_error = |action, source| DatapathError::Program {
            program: STEER_CHECK,
            action,
            source,
        };
        let program: &mut SchedClassifier = self
            .ebpf
            .as_mut()
            .and_then(|ebpf| ebpf.program_mut(STEER_CHECK))
            .ok_or(DatapathError::Program {
                program: STEER_CHECK,
                action: "lookup",
                source: aya::programs::ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| program_error("lookup", source))?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|source| program_error("load", source))?;
        }
        Ok(program)
    }

    /// Loads `steer_check` and attaches it to the egress of `interface` (tcx); the link lasts
    /// as long as this datapath or the interface.
    pub fn attach_check_steering(&mut self, interface: &str) -> Result<()> {
        self.check_steering_program()?
            .attach(interface, TcAttachType::Egress)
            .map_err(|source| DatapathError::Program {
                program: STEER_CHECK,
                action: "attach",
                source,
            })?;
        Ok(())
    }

    /// Takes the checks' maps out of the object (once).
    pub fn take_check_maps(&mut self) -> Result<CheckMaps> {
        let paths = self.take_object_map(names::CHECK_PATHS)?;
        let stats = self.take_object_map(names::CHECK_STATS)?;
        Ok(CheckMaps {
            paths: Array::try_from(paths).map_err(map_error(names::CHECK_PATHS))?,
            stats: PerCpuArray::try_from(stats).map_err(map_error(names::CHECK_STATS))?,
        })
    }
}
