//! A probe of what the kernel does right now: a second copy of the `lb` program, loaded on a
//! running agent's pinned maps (never attached), run on one frame through `BPF_PROG_TEST_RUN`.
//! It reads the same `VIPS`, `RINGS` and `BACKENDS` as the attached program, so its output
//! changes the moment the agent's map update lands.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::programs::{TestRun as _, TestRunOptions};
use lb_user::datapath::{Datapath, DatapathError, Options, Program};

use crate::packet::lab::verdict;

/// The probe program on an agent's pinned maps.
pub struct RingProbe {
    datapath: Datapath,
    out: Vec<u8>,
}

impl RingProbe {
    /// Loads the program reusing the maps pinned in `state_dir` (`conntrack_size` must be the
    /// agent's, the size of the pinned `CONNTRACK`).
    pub fn open(state_dir: &Path, conntrack_size: u32) -> Result<Self, DatapathError> {
        let datapath = Datapath::load(&Options {
            conntrack_size,
            pin_dir: Some(state_dir.to_path_buf()),
            fresh_state: false,
        })?;
        Ok(Self {
            datapath,
            out: vec![0; 4096],
        })
    }

    /// The MAC the agent's datapath balances frames for (its interface's): probe frames must
    /// be addressed to it, or they pass as `other_mac`.
    pub fn local_mac(&mut self) -> Result<[u8; 6], DatapathError> {
        Ok(self.datapath.settings()?.local_mac)
    }

    /// Runs the program once on `frame` (a TCP or UDP frame, not itself IPIP); for a frame it
    /// encapsulates in an IPv4 tunnel, the outer destination (the backend), else `None`.
    pub fn tunnel_destination(&mut self, frame: &[u8]) -> std::io::Result<Option<IpAddr>> {
        let xdp = self
            .datapath
            .program(Program::Balancer)
            .map_err(std::io::Error::other)?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut self.out);
        let result = xdp.test_run(opts).map_err(std::io::Error::other)?;
        let out = &self.out[..result.data_size_out as usize];
        // The probe's ingress is not the agent's interface, so where the attached program
        // returns XDP_TX this copy tries XDP_REDIRECT to an interface its devmap lacks and
        // drops; the frame it built is the same. Ethernet (14) + outer IPv4 (protocol 4 at
        // 9, destination at 16..20).
        let forwarded = matches!(
            result.return_value,
            verdict::TX | verdict::REDIRECT | verdict::DROP
        );
        if !forwarded || out.len() < 34 || out[12..14] != [0x08, 0x00] || out[14 + 9] != 4 {
            return Ok(None);
        }
        Ok(Some(IpAddr::V4(Ipv4Addr::new(
            out[30], out[31], out[32], out[33],
        ))))
    }

    /// Runs `frame` back to back (yielding the CPU between runs) until `done` holds for its
    /// tunnel destination; returns the wall-clock time of the first run that satisfied it,
    /// in microseconds since the Unix epoch, or `None` after `timeout`.
    pub fn wait_for(
        &mut self,
        frame: &[u8],
        timeout: Duration,
        mut done: impl FnMut(Option<IpAddr>) -> bool,
    ) -> std::io::Result<Option<u64>> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let destination = self.tunnel_destination(frame)?;
            if done(destination) {
                return Ok(Some(unix_micros(SystemTime::now())));
            }
            std::thread::yield_now();
        }
        Ok(None)
    }
}

/// Microseconds since the Unix epoch (CLOCK_REALTIME, as the agent logs).
pub fn unix_micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
