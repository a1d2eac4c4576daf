//! The agent's control plane as it grows: V VIPs × 16 backends (the same 16 addresses behind
//! every VIP, as when one pool serves many services), TCP checks of the backends' own addresses
//! (`target = "backend"`, the checks that can be shared) every second with `rise = 1`
//! and a 500 ms timeout, rings of 65537 slots, for V = 10, 100 and 1000 (the documented
//! maximum is 1024); and 1000 VIPs whose 16,000 backends are all distinct, so every check is
//! a probe of its own. Needs root and `cargo build --release -p lb-user` first (see `--help`).
//!
//! The lab: the real `lb run` in an `lb` namespace and one backend host `bk` on a bridge, whose
//! loopback holds the backend addresses (10.79.0.1-17 shared, 10.80.0.0/16 distinct) and one
//! listener on port 80 that accepts and closes. For each size it measures: the time from starting the agent to every
//! backend up in `BACKENDS`; the agent's CPU over 10 s of steady checking, and per check; the
//! time from a changed configuration file (one VIP gains a 17th backend) to that backend in
//! the VIP's ring; `lb status --json`'s run time; the agent's resident memory.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use lb_common::maps::BackendState;
use lb_tests::{
    bench::{
        load::{Serve, Server},
        report_table::{self, median, Section},
    },
    netns::{
        agent::{find_lb_binary, lb_binary, AgentFiles, AgentProcess},
        topology::Lan,
        wait_every,
    },
};
use lb_user::datapath::Datapath;

/// Backends per VIP.
const BACKENDS: usize = 16;
/// The sizes measured: VIPs, and how their backends are pooled.
const SIZES: [(usize, Pool); 4] = [
    (10, Pool::Shared),
    (100, Pool::Shared),
    (1000, Pool::Shared),
    (1000, Pool::Distinct),
];

/// Which addresses the VIPs' backends have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pool {
    /// The same 16 addresses behind every VIP (one pool serving many services): one probe per
    /// address, every VIP following its result.
    Shared,
    /// 16 addresses of its own behind each VIP: a probe per backend.
    Distinct,
}

impl Pool {
    /// The address of backend `b` of VIP `v`.
    fn backend(self, v: usize, b: usize) -> IpAddr {
        match self {
            Pool::Shared => IpAddr::from([10, 79, 0, b as u8 + 1]),
            Pool::Distinct => {
                let n = v * BACKENDS + b;
                IpAddr::from([10, 80, (n / 250) as u8, (n % 250) as u8 + 1])
            }
        }
    }

    /// Every address the backend host needs for `vips` VIPs, plus the one a reload adds.
    fn addresses(self, vips: usize) -> Vec<IpAddr> {
        match self {
            Pool::Shared => (0..=BACKENDS).map(|b| self.backend(0, b)).collect(),
            Pool::Distinct => (0..=vips * BACKENDS)
                .map(|n| self.backend(n / BACKENDS, n % BACKENDS))
                .collect(),
        }
    }

    /// The backend a reload adds to VIP 0.
    fn added(self, vips: usize) -> IpAddr {
        match self {
            Pool::Shared => self.backend(0, BACKENDS),
            Pool::Distinct => self.backend(vips, 0),
        }
    }

    /// How a table row names it.
    fn label(self, vips: usize) -> String {
        match self {
            Pool::Shared => format!("{vips} × {BACKENDS}"),
            Pool::Distinct => format!("{vips} × {BACKENDS}, all distinct"),
        }
    }
}
const PORT: u16 = 80;
const TABLE_SIZE: u32 = 65537;
/// How long the steady state is watched.
const STEADY: Duration = Duration::from_secs(10);

/// Targets at the largest size.
mod target {
    /// Every backend up after start, seconds.
    pub const ALL_UP_S: f64 = 3.0;
    /// Steady CPU, share of one core.
    pub const CPU: f64 = 0.20;
    /// A one-VIP change in the datapath after the file changed, ms.
    pub const RELOAD_MS: f64 = 100.0;
    /// `lb status --json`, ms.
    pub const STATUS_MS: f64 = 150.0;
    /// Resident memory, MB.
    pub const RSS_MB: f64 = 120.0;
}

const ABOUT: &str = "bench-agent: the agent at 10, 100 and 1000 VIPs x 16 backends (start-up, CPU per check, reload, status, memory).\n\
Needs root and the lb binary of the same profile: cargo build --release -p lb-user && cargo run --release -p lb-tests --bin bench-agent\n\
LB_BENCH_AGENT_SIZES=1000,1000d (comma-separated; d: distinct backends) measures only those sizes; LB_BENCH_AGENT_LOG=1 prints the agent's log once all is up.";

fn vip(v: usize) -> IpAddr {
    IpAddr::from([10, 78, (v / 250) as u8, (v % 250) as u8 + 1])
}

/// The configuration: `vips` VIPs of `BACKENDS` backends from `pool`, VIP 0 with the
/// backend a reload adds if `added`.
fn config(files: &AgentFiles, vips: usize, pool: Pool, added: bool) -> String {
    let mut text = format!(
        "interface = \"eth0\"\nstate_dir = \"{}\"\nconntrack_size = 65536\ntable_size = {TABLE_SIZE}\n\n\
         [health]\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 1\nfall = 3\ntarget = \"backend\"\n",
        files.state_dir.display()
    );
    for v in 0..vips {
        text += &format!(
            "\n[[vip]]\nname = \"v{v}\"\naddress = \"{}\"\nport = {PORT}\nforward = \"tunnel\"\n",
            vip(v)
        );
        for b in 0..BACKENDS {
            text += &format!(
                "  [[vip.backend]]\n  address = \"{}\"\n",
                pool.backend(v, b)
            );
        }
        if v == 0 && added {
            text += &format!("  [[vip.backend]]\n  address = \"{}\"\n", pool.added(vips));
        }
    }
    text
}

/// CPU time of process `pid`: (user, system).
fn process_cpu(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let path = format!("/proc/{pid}/stat");
    let stat = lb_tests::proc_stat::read(std::path::Path::new(&path))
        .with_context(|| format!("{path}: no name, utime and stime"))?;
    Ok((stat.user, stat.system))
}

/// Resident memory of process `pid`, in MB.
fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kb / 1024.0)
}

/// Whether backend `address` is in VIP 0's ring (VIP 0's address: `vip(0)`).
fn in_ring_of_vip0(files: &AgentFiles, address: IpAddr) -> bool {
    let Ok(mut maps) = Datapath::open_pinned(&files.state_dir) else {
        return false;
    };
    let Some(id) = maps.backends().ok().and_then(|backends| {
        backends
            .into_iter()
            .find(|(_, b)| b.address() == address && b.state == BackendState::Up as u8)
            .map(|(id, _)| id)
    }) else {
        return false;
    };
    let vip0 = maps.vips().ok().and_then(|vips| {
        vips.into_iter()
            .find(|(key, _)| key.address() == vip(0))
            .map(|(_, v)| v.id)
    });
    vip0.and_then(|v| maps.ring(v).ok().flatten())
        .is_some_and(|ring| ring.contains(&id))
}

/// One size's figures.
struct Figures {
    all_up: Duration,
    cpu: f64,
    per_check: Duration,
    /// Of `cpu`, the share spent in the kernel.
    system: f64,
    /// The switch ports' NAPI threads over the same window ([`Lan::thread_switch_napi`]): the
    /// lab's forwarding and the backend host's TCP work, besides the agent's replies.
    lab_napi: f64,
    reload: Duration,
    status: Duration,
    rss_mb: f64,
    /// [`Lan::transmit_drops`] over the whole measurement.
    lab_drops: u64,
}

fn measure(vips: usize, pool: Pool) -> anyhow::Result<Figures> {
    eprintln!("bench-agent: {}", pool.label(vips));
    let lan = Lan::new(&format!("agent{vips}"), &["lb", "bk"]);
    lan.thread_switch_napi();
    let (lb, bk) = (lan.host(0), lan.host(1));
    let addresses: Vec<String> = pool
        .addresses(vips)
        .iter()
        .map(|address| format!("addr add {address}/32 dev lo"))
        .collect();
    bk.ns.ip_batch(&addresses);
    // One listener stands in for up to 16,000 backend hosts: its accept queue must hold a
    // second's worth of their checks, or the lab, not the agent, makes checks time out.
    bk.ns.sysctl("net.core.somaxconn", "65535");
    bk.ns.sysctl("net.ipv4.tcp_max_syn_backlog", "65535");
    lb.ns.ip(&format!("route add 10.79.0.0/16 via {}", bk.ip));
    lb.ns.ip(&format!("route add 10.80.0.0/16 via {}", bk.ip));
    let _server = Server::start(
        &bk.ns,
        SocketAddr::from(([0, 0, 0, 0], PORT)),
        4,
        Serve::Close,
    )?;
    let files = AgentFiles::new(&format!("agent{vips}"));
    files.write_config(&config(&files, vips, pool, false));
    let started = Instant::now();
    let agent = AgentProcess::start(&lb.ns, &files, false);
    let total = vips * BACKENDS;
    let Some(_) = wait_every(Duration::from_secs(300), Duration::from_millis(50), || {
        files.backends_up() == total
    }) else {
        bail!(
            "not every backend came up within 300 s; the agent's log:\n{}",
            files.log_text()
        );
    };
    let all_up = started.elapsed();
    if std::env::var_os("LB_BENCH_AGENT_LOG").is_some() {
        eprintln!("{}", files.log_text());
    }

    // Part of the measurement, not a wait for an event: 2 s for the start-up's last one-off
    // work to end, then the steady-state window whose CPU time is measured.
    std::thread::sleep(Duration::from_secs(2));
    let (user_before, system_before) = process_cpu(agent.pid())?;
    let napi_before = lan.napi_cpu();
    std::thread::sleep(STEADY);
    let (user_after, system_after) = process_cpu(agent.pid())?;
    let lab_napi =
        (lan.napi_cpu().saturating_sub(napi_before)).as_secs_f64() / STEADY.as_secs_f64();
    let system_used = system_after.saturating_sub(system_before);
    let used = user_after.saturating_sub(user_before) + system_used;
    let cpu = used.as_secs_f64() / STEADY.as_secs_f64();
    let system = system_used.as_secs_f64() / STEADY.as_secs_f64();
    let per_check = used / (total as u32 * STEADY.as_secs() as u32);

    let status: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let output = Command::new(lb_binary())
                .args(["status", "--json", "--state-dir"])
                .arg(&files.state_dir)
                .output()?;
            anyhow::ensure!(output.status.success(), "lb status failed");
            Ok(start.elapsed().as_secs_f64())
        })
        .collect::<anyhow::Result<_>>()?;
    let status = Duration::from_secs_f64(median(&status).unwrap_or_default());

    let added = pool.added(vips);
    files.write_config(&config(&files, vips, pool, true));
    let changed = Instant::now();
    let Some(_) = wait_every(Duration::from_secs(60), Duration::from_millis(5), || {
        in_ring_of_vip0(&files, added)
    }) else {
        bail!(
            "the added backend never entered the ring; the agent's log:\n{}",
            files.log_text()
        );
    };
    let reload = changed.elapsed();
    let rss_mb = rss_mb(agent.pid())?;
    let lab_drops = lan.transmit_drops();
    drop(agent);
    Ok(Figures {
        all_up,
        cpu,
        per_check,
        system,
        lab_napi,
        reload,
        status,
        rss_mb,
        lab_drops,
    })
}

/// The sizes to measure: `SIZES`, or those listed in `LB_BENCH_AGENT_SIZES` (comma-separated
/// VIP counts, `d` after one for distinct backends: `1000,1000d`), to look at one while
/// profiling.
fn sizes() -> anyhow::Result<Vec<(usize, Pool)>> {
    match std::env::var("LB_BENCH_AGENT_SIZES") {
        Ok(list) => list
            .split(',')
            .map(|v| {
                let v = v.trim();
                let (count, pool) = match v.strip_suffix('d') {
                    Some(count) => (count, Pool::Distinct),
                    None => (v, Pool::Shared),
                };
                let count = count
                    .parse()
                    .with_context(|| format!("LB_BENCH_AGENT_SIZES: {v:?} is not a size"))?;
                Ok((count, pool))
            })
            .collect(),
        Err(_) => Ok(SIZES.to_vec()),
    }
}

fn main() -> ExitCode {
    report_table::run_main("bench-agent", ABOUT, run)
}

fn run() -> anyhow::Result<Vec<Section>> {
    find_lb_binary().map_err(anyhow::Error::msg)?;
    let mut section = Section::new(
        "Agent at scale",
        "The real agent (`lb run`, release build) with V VIPs x 16 backends: the same 16 \
         addresses (on one backend host's loopback, one listener that accepts and closes) behind \
         every VIP, or (all distinct) 16 of its own behind each VIP, so that every backend is a \
         probe of its own; TCP checks of the backends' own addresses (target = \"backend\": only those can be shared) every 1 s with rise = 1 and a 500 ms timeout, rings of 65537 slots. \
         All up: from starting the agent to every backend up in the pinned BACKENDS (polled every \
         50 ms). CPU: the agent's user + system time over 10 s of steady checking, as a share of \
         one core and per check (V x 16 checks a second), and the share of it spent in the \
         kernel. The switch ports run their receive work (NAPI) in kernel threads, as a real \
         NIC runs it in interrupts: on a veth it otherwise runs in the sender's system calls, \
         and the agent was charged the backend host's TCP work; those threads' CPU over the \
         same window is its own column. TCP checks are half-open (a SYN from a raw socket). Reload: from renaming a configuration \
         with one more backend for one VIP over the file to that backend in the VIP's ring \
         (polled every 5 ms). Status: `lb status --json`, median of 5 runs. RSS: the agent's \
         resident memory after the reload. Lab drops: frames the veths dropped on transmit over \
         the whole run; a veth whose peer runs XDP has a 256-frame ring, so a burst of checks \
         loses SYNs or SYN-ACKs, and each such check times out (500 ms) and counts against its \
         backend: with every backend distinct, that makes backends flap in the lab, which \
         rebuilds rings and costs CPU a real NIC's ring would not.",
        &[
            "VIPs × backends",
            "all up after",
            "agent CPU, steady",
            "of which in the kernel",
            "CPU per check",
            "lab's NAPI threads",
            "reload: ring in after",
            "lb status --json",
            "agent RSS",
            "frames the lab's veths dropped",
        ],
    );
    let mut largest = Vec::new();
    for (vips, pool) in sizes()? {
        let figures = measure(vips, pool)?;
        section.row(vec![
            pool.label(vips),
            format!("{:.2} s", figures.all_up.as_secs_f64()),
            format!("{:.1}%", figures.cpu * 100.0),
            format!("{:.1}%", figures.system * 100.0),
            format!("{:.1} µs", figures.per_check.as_secs_f64() * 1e6),
            format!("{:.1}%", figures.lab_napi * 100.0),
            format!("{:.0} ms", figures.reload.as_secs_f64() * 1e3),
            format!("{:.0} ms", figures.status.as_secs_f64() * 1e3),
            format!("{:.0} MB", figures.rss_mb),
            figures.lab_drops.to_string(),
        ]);
        if vips >= 1000 {
            largest.push((pool.label(vips), figures));
        }
    }
    for (vips, figures) in largest {
        let verdict = |what: &str, value: f64, limit: f64, unit: &str| {
            let met = if value <= limit { "met" } else { "MISSED" };
            format!("target at {vips}: {what} ≤ {limit}{unit}: {met} ({value:.2}{unit})")
        };
        section.notes.push(verdict(
            "all up",
            figures.all_up.as_secs_f64(),
            target::ALL_UP_S,
            " s",
        ));
        section.notes.push(verdict(
            "steady CPU",
            figures.cpu * 100.0,
            target::CPU * 100.0,
            "% of a core",
        ));
        section.notes.push(verdict(
            "reload",
            figures.reload.as_secs_f64() * 1e3,
            target::RELOAD_MS,
            " ms",
        ));
        section.notes.push(verdict(
            "lb status --json",
            figures.status.as_secs_f64() * 1e3,
            target::STATUS_MS,
            " ms",
        ));
        section
            .notes
            .push(verdict("RSS", figures.rss_mb, target::RSS_MB, " MB"));
    }
    Ok(vec![section])
}
