//! Labs of network namespaces with lb in them.
//!
//! The namespaces, the bridge LAN, the name servers and the routing daemons are [`lb_lab`]'s
//! (shared with `cargo xtask demo`, which must build without BPF); what needs lb itself is
//! here: [`topology::Lan`] attaches lb's `pass` program to the switch ports, [`agent`] runs the
//! real `lb` binary in a namespace, [`dsr_lab`] is the ready client + lb + three DSR backends
//! lab of the agent tests, [`redundancy`] the two-instance lab behind a router (issue #15),
//! and [`connections`] the client traffic every one of them sends through a VIP (connections
//! asked, held, pinged and opened at a rate).

pub mod agent;
pub mod connections;
pub mod dsr_lab;
pub mod flood;
pub mod previous;
pub mod redundancy;
pub mod topology;

pub use lb_lab::{servers, sh, Netns};

use std::time::{Duration, Instant};

/// Calls `condition` every 5 ms until it holds; how long that took (`None`: not within
/// `timeout`).
pub fn wait_until(timeout: Duration, condition: impl FnMut() -> bool) -> Option<Duration> {
    wait_every(timeout, Duration::from_millis(5), condition)
}

/// Calls `condition` every `every` until it holds; how long that took (`None`: not within
/// `timeout`). For conditions that are costly to ask (a walk of a map).
pub fn wait_every(
    timeout: Duration,
    every: Duration,
    mut condition: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if condition() {
            return Some(start.elapsed());
        }
        std::thread::sleep(every);
    }
    None
}

/// Loads lb's `pass` program and attaches it to every one of `ports` (switch ports, in the
/// calling thread's namespace): a veth delivers what the other end's XDP program transmits
/// only to a peer that runs an XDP program too. The programs stay attached while the returned
/// datapath lives.
pub fn pass_on(ports: &[String]) -> lb_user::datapath::Datapath {
    use lb_user::datapath::{Datapath, Options, Program};
    let mut datapath = Datapath::load(&Options {
        conntrack_size: 1,
        pin_dir: None,
        fresh_state: false,
    })
    .expect("load the pass program");
    for port in ports {
        datapath
            .attach_auto(Program::Pass, port, None)
            .expect("attach pass");
    }
    datapath
}
