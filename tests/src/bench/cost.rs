//! Per-packet cost of the balancer's paths: the real program run by `BPF_PROG_TEST_RUN` in
//! live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, kernel 5.18), timed by the kernel, against
//! trivial programs timed the same way (the floor).
//!
//! Every timed call is checked: the balancer's counters must have moved by exactly the number
//! of frames, on the route the path is meant to take, so the benchmark cannot silently time
//! another path.

use std::net::IpAddr;

use anyhow::{anyhow, bail, ensure, Context as _};
use aya::{
    programs::{TestRun as _, TestRunOptions},
    TestRunAttrs,
};
use lb_common::{
    conntrack::conntrack_hash,
    least_conn::{second_slot, BackendLoad},
    maps::{ForwardMode, NewFlowRule, Protocol, DEFAULT_CONNTRACK_SIZE},
    stats::Counter,
};
use lb_user::datapath::Program;

use crate::bench::report_table::Section;
use crate::packet::{
    frames::{self, ip, Frame},
    lab::{backend_mac, verdict, PacketLab, TUNNEL_SOURCE_V4, TUNNEL_SOURCE_V6},
};

/// Frames per live-frames batch: the kernel's default, NAPI_POLL_WEIGHT (a driver's budget).
pub const BATCH_SIZE: u32 = 64;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Frames per timed call.
    pub repeat: u32,
    /// Timed passes over every path (after one discarded warm-up pass).
    pub passes: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            repeat: 250_000,
            passes: 21,
        }
    }
}

/// The verdict a path ends with; a path's cost is compared with the trivial program that
/// returns the same verdict, so both pay the same kernel work after the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `XDP_TX`.
    Tx,
    /// `XDP_PASS`.
    Pass,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Verdict::Tx => "XDP_TX",
            Verdict::Pass => "XDP_PASS",
        }
    }
}

/// Where the balancer must have sent every timed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A trivial program: the balancer's counters must not move.
    Floor,
    /// Forwarded to the backend tracked in `CONNTRACK`, for VIP id `vip`.
    ConntrackHit {
        /// VIP id.
        vip: u32,
    },
    /// Forwarded to the backend of the VIP's ring (a new flow), for VIP id `vip`.
    NewFlow {
        /// VIP id.
        vip: u32,
    },
    /// Forwarded to the backend of the VIP's ring, not tracked (its set is full of
    /// established flows), for VIP id `vip`.
    Untracked {
        /// VIP id.
        vip: u32,
    },
    /// Passed to the host: no VIP matches.
    NotVip,
}

/// One measured path.
#[derive(Clone, Debug)]
pub struct Path {
    /// What it is, as printed.
    pub name: String,
    /// The program timed.
    pub program: Program,
    /// The frame fed to it.
    pub frame: Vec<u8>,
    /// Its verdict (selects the floor).
    pub verdict: Verdict,
    /// Where its frames must go.
    pub route: Route,
    /// Highest acceptable ratio to the floor, if the path has a target.
    pub target: Option<f64>,
}

/// Targets, as the highest acceptable ratio to the floor of the path's verdict.
pub mod target {
    /// A DSR conntrack hit, TCP or UDP (a known UDP flow).
    pub const DSR_HIT: f64 = 1.7;
    /// A tunnel conntrack hit, TCP or UDP, IPv4 or IPv6.
    pub const TUNNEL_HIT: f64 = 1.8;
    /// A new flow (TCP SYN), DSR or tunnel, whether its set has room or is full of
    /// established flows.
    pub const SYN: f64 = 2.0;
    /// A least-conn VIP's new flow (TCP SYN, DSR): both candidates weighed.
    pub const LEAST_CONN_SYN: f64 = 2.5;
    /// A packet to no VIP, against the `XDP_PASS` floor: the host's own traffic.
    pub const NOT_VIP: f64 = 1.1;
}

/// Port a VIP of the benchmark listens on.
const PORT: u16 = 80;
/// The client.
const CLIENT_V4: &str = "192.0.2.10";
const CLIENT_V6: &str = "2001:db8:c::10";

/// The standard lab with the default `CONNTRACK` size, plus two tunnel VIPs for the
/// benchmark, and the paths to time.
///
/// Why the benchmark's tunnel VIPs have odd backend addresses: live frames recycle their pages
/// and the kernel resets only a frame's pointers, not its bytes. Encapsulation moves the
/// Ethernet header 20 (or 40) bytes to the front and the outer header's last 14 bytes take its
/// place, so the next run on that page reads those as the Ethernet header: bytes 12-13 are the
/// last two bytes of the outer destination (the backend). Backends `x.y.8.0` (IPv4) and
/// `...::86dd` (IPv6) make them the right ethertype, so the recycled frame is the same flow
/// with other MAC addresses, and takes the same path (the lab balances frames whatever their
/// destination MAC: see [`PacketLab::balance_every_mac`]).
pub fn lab_and_paths() -> anyhow::Result<(PacketLab, Vec<Path>)> {
    let mut lab = PacketLab::standard_with_conntrack(DEFAULT_CONNTRACK_SIZE);
    lab.balance_every_mac();
    let tunnel = ForwardMode::Tunnel;
    let (tcp, udp) = (Protocol::Tcp, Protocol::Udp);
    let v4_backends = [(16, "10.1.8.0"), (17, "10.2.8.0")];
    let v6_backends = [(18, "fd01::86dd"), (19, "fd02::86dd")];
    let v4_udp_backends = [(20, "10.3.8.0"), (21, "10.4.8.0")];
    let v6_udp_backends = [(22, "fd03::86dd"), (23, "fd04::86dd")];
    lab.add_vip(
        "bench-tun4",
        10,
        "10.0.0.220",
        PORT,
        tcp,
        tunnel,
        &v4_backends,
    );
    lab.add_vip(
        "bench-tun6",
        11,
        "fd00::220",
        PORT,
        tcp,
        tunnel,
        &v6_backends,
    );
    lab.add_vip(
        "bench-tun4-udp",
        12,
        "10.0.0.220",
        53,
        udp,
        tunnel,
        &v4_udp_backends,
    );
    lab.add_vip(
        "bench-tun6-udp",
        13,
        "fd00::220",
        53,
        udp,
        tunnel,
        &v6_udp_backends,
    );

    let probe = Frame::ack(CLIENT_V4, 40000, "10.0.0.100", PORT).build();
    let mut paths = vec![
        floor(Program::Tx, Verdict::Tx, &probe),
        floor(Program::Pass, Verdict::Pass, &probe),
        conntrack_hit(
            &mut lab,
            "TCP v4 conntrack hit (dsr)",
            "web4",
            Frame::ack(CLIENT_V4, 40001, "10.0.0.100", PORT),
            target::DSR_HIT,
        )?,
        new_flow(
            &mut lab,
            "TCP v4 SYN (ring, dsr)",
            "web4",
            Frame::syn(CLIENT_V4, 40002, "10.0.0.100", PORT),
        )?,
        conntrack_hit(
            &mut lab,
            "UDP v4 (dsr, conntrack hit)",
            "dns4",
            Frame::udp(CLIENT_V4, 40005, "10.0.0.100", 53),
            target::DSR_HIT,
        )?,
        conntrack_hit(
            &mut lab,
            "TCP v4 conntrack hit (tunnel)",
            "bench-tun4",
            Frame::ack(CLIENT_V4, 40003, "10.0.0.220", PORT),
            target::TUNNEL_HIT,
        )?,
        conntrack_hit(
            &mut lab,
            "TCP v6 conntrack hit (tunnel)",
            "bench-tun6",
            Frame::ack(CLIENT_V6, 40004, "fd00::220", PORT),
            target::TUNNEL_HIT,
        )?,
        new_flow(
            &mut lab,
            "TCP v4 SYN (ring, tunnel)",
            "bench-tun4",
            Frame::syn(CLIENT_V4, 40007, "10.0.0.220", PORT),
        )?,
        new_flow(
            &mut lab,
            "TCP v6 SYN (ring, tunnel)",
            "bench-tun6",
            Frame::syn(CLIENT_V6, 40008, "fd00::220", PORT),
        )?,
        conntrack_hit(
            &mut lab,
            "UDP v4 (tunnel, conntrack hit)",
            "bench-tun4-udp",
            Frame::udp(CLIENT_V4, 40009, "10.0.0.220", 53),
            target::TUNNEL_HIT,
        )?,
        conntrack_hit(
            &mut lab,
            "UDP v6 (tunnel, conntrack hit)",
            "bench-tun6-udp",
            Frame::udp(CLIENT_V6, 40010, "fd00::220", 53),
            target::TUNNEL_HIT,
        )?,
    ];
    paths.push(syn_into_established(&mut lab)?);
    paths.push(least_conn_syn(&mut lab)?);
    paths.push(second_chance_hop(&mut lab)?);
    let not_vip = Frame::ack(CLIENT_V4, 40006, "10.0.0.99", PORT).build();
    let (action, out) = lab.run(&not_vip)?;
    ensure!(
        action == verdict::PASS && out == not_vip,
        "non-VIP frame: verdict {action}, frame changed: {}",
        out != not_vip
    );
    paths.push(Path {
        name: "non-VIP packet (pass)".into(),
        program: Program::Balancer,
        frame: not_vip,
        verdict: Verdict::Pass,
        route: Route::NotVip,
        target: Some(target::NOT_VIP),
    });
    Ok((lab, paths))
}

fn floor(program: Program, verdict: Verdict, frame: &[u8]) -> Path {
    Path {
        name: format!("floor: `return {}`", verdict.name()),
        program,
        frame: frame.to_vec(),
        verdict,
        route: Route::Floor,
        target: None,
    }
}

/// A path of an established flow: its first packet is sent once through the normal path so
/// its conntrack entry exists, then `frame` (a non-SYN packet of the flow) is the timed one.
fn conntrack_hit(
    lab: &mut PacketLab,
    name: &str,
    vip: &str,
    frame: Frame,
    target: f64,
) -> anyhow::Result<Path> {
    let mut first = frame.clone();
    if first.kind == frames::Kind::TcpAck {
        first.kind = frames::Kind::TcpSyn;
        first.payload.clear();
    }
    let (action, _) = lab.run(&first.build())?;
    ensure!(
        action == verdict::TX,
        "{name}: first packet: verdict {action}"
    );
    let backend = lab
        .datapath
        .conntrack(&frame.flow_key())?
        .ok_or_else(|| anyhow!("{name}: the first packet left no conntrack entry"))?;
    let bytes = frame.build();
    check_forward(lab, name, vip, &frame, &bytes, backend)?;
    let id = lab.vip(vip).id;
    Ok(Path {
        name: name.into(),
        program: Program::Balancer,
        frame: bytes,
        verdict: Verdict::Tx,
        route: Route::ConntrackHit { vip: id },
        target: Some(target),
    })
}

/// A path of a new connection: a SYN, hashed through the VIP's ring.
fn new_flow(lab: &mut PacketLab, name: &str, vip: &str, frame: Frame) -> anyhow::Result<Path> {
    let id = lab.vip(vip).id;
    let backend = lab.ring_backend(id, &frame.flow_key());
    let bytes = frame.build();
    check_forward(lab, name, vip, &frame, &bytes, backend)?;
    Ok(Path {
        name: name.into(),
        program: Program::Balancer,
        frame: bytes,
        verdict: Verdict::Tx,
        route: Route::NewFlow { vip: id },
        target: Some(target::SYN),
    })
}

/// A least-conn VIP's SYN whose second candidate is the less loaded: both ring slots read,
/// both backends' loads compared, the second taken. Repeated, the flow is a SYN sent again,
/// which is asked only after weighing: the whole choice is timed.
fn least_conn_syn(lab: &mut PacketLab) -> anyhow::Result<Path> {
    let name = "TCP v4 SYN (least-conn, dsr)";
    lab.add_vip(
        "bench-lc4",
        14,
        "10.0.0.230",
        PORT,
        Protocol::Tcp,
        ForwardMode::Dsr,
        &[(24, "10.0.0.41"), (25, "10.0.0.42")],
    );
    lab.set_new_flow_rule("bench-lc4", NewFlowRule::LeastConn);
    let ring = &lab.rings[&14];
    let (frame, ring_backend, second) = (42000..43000)
        .map(|port| Frame::syn(CLIENT_V4, port, "10.0.0.230", PORT))
        .find_map(|frame| {
            let flow = frame.flow_key();
            let first = ring[(lb_common::flow_hash(&flow) % ring.len() as u32) as usize];
            let slot = second_slot(conntrack_hash(&flow), ring.len() as u32)?;
            let second = ring[slot as usize];
            (first != second).then_some((frame, first, second))
        })
        .ok_or_else(|| anyhow!("{name}: no flow whose two candidates differ"))?;
    let load = |active| BackendLoad {
        active,
        weight: 100,
        _pad: 0,
    };
    lab.loads.set(ring_backend, load(1_000_000));
    lab.loads.set(second, load(0));
    let bytes = frame.build();
    check_forward(lab, name, "bench-lc4", &frame, &bytes, second)?;
    Ok(Path {
        name: name.into(),
        program: Program::Balancer,
        frame: bytes,
        verdict: Verdict::Tx,
        route: Route::NewFlow { vip: 14 },
        target: Some(target::LEAST_CONN_SYN),
    })
}

/// A packet of a connection lb does not track whose ring slot moved: the previous ring is
/// read, the hop's backend checked, the outer header carries the hop option, nothing is
/// tracked (so every repetition takes the same path). The hop, `10.2.8.0`, ends in the bytes
/// a recycled page reads as the ethertype (see [`lab_and_paths`]).
fn second_chance_hop(lab: &mut PacketLab) -> anyhow::Result<Path> {
    let name = "TCP v4 untracked, slot moved (tunnel, hop)";
    let vip = lab.vip("bench-tun4").id;
    lab.second_chance
        .set(vip, &vec![17; lb_common::maps::DEFAULT_RING_SIZE as usize])
        .context("previous ring")?;
    let frame = (43000..44000)
        .map(|port| Frame::ack(CLIENT_V4, port, "10.0.0.220", PORT))
        .find(|frame| lab.ring_backend(vip, &frame.flow_key()) == 16)
        .ok_or_else(|| anyhow!("{name}: no flow on backend 16"))?;
    let bytes = frame.build();
    let plain = frames::tunnel(
        &bytes,
        backend_mac(16),
        ip(TUNNEL_SOURCE_V4),
        lab.backend_address("bench-tun4", 16),
        &frame.flow_key(),
    );
    let expected = frames::with_hop(&plain, 14, lab.backend_address("bench-tun4", 17));
    let (action, out) = lab.run(&bytes)?;
    ensure!(
        action == verdict::TX && out == expected,
        "{name}: not the expected forward with a hop (verdict {action})"
    );
    ensure_reparses_as_itself(name, &bytes, &out, lab.backend_address("bench-tun4", 16))?;
    Ok(Path {
        name: name.into(),
        program: Program::Balancer,
        frame: bytes,
        verdict: Verdict::Tx,
        route: Route::NewFlow { vip },
        target: None,
    })
}

/// A SYN whose set of `FLOWS` is full of established flows (what a flood meets in a table
/// full of connections): every way is looked at, none may be evicted, the flow is forwarded
/// untracked. Its four neighbours are established first (a SYN, then an ACK each).
fn syn_into_established(lab: &mut PacketLab) -> anyhow::Result<Path> {
    use lb_common::conntrack::{conntrack_hash, set_index, sets_for, WAYS};

    let sets = sets_for(DEFAULT_CONNTRACK_SIZE);
    let set_of = |frame: &Frame| set_index(conntrack_hash(&frame.flow_key()), sets);
    let timed = Frame::syn(CLIENT_V4, 41000, "10.0.0.100", PORT);
    // Clients of 198.18.0.0/16 (the benchmarking range) on 16 ports: a million flows, about
    // four per set.
    let neighbours: Vec<Frame> = (0..=u16::MAX)
        .flat_map(|host| {
            let [a, b] = host.to_be_bytes();
            (41001..41017)
                .map(move |port| Frame::syn(&format!("198.18.{a}.{b}"), port, "10.0.0.100", PORT))
        })
        .filter(|frame| set_of(frame) == set_of(&timed))
        .take(WAYS)
        .collect();
    ensure!(
        neighbours.len() == WAYS,
        "no {WAYS} flows share a set with the timed SYN"
    );
    for syn in neighbours {
        let mut ack = syn.clone();
        ack.kind = frames::Kind::TcpAck;
        for frame in [syn, ack] {
            let (action, _) = lab.run(&frame.build())?;
            ensure!(
                action == verdict::TX,
                "establishing {frame:?}: verdict {action}"
            );
        }
    }
    let mut path = new_flow(
        lab,
        "TCP v4 SYN, set full of connections (dsr)",
        "web4",
        timed,
    )?;
    path.route = Route::Untracked {
        vip: lab.vip("web4").id,
    };
    Ok(path)
}

/// Runs the frame once (not live) and checks the verdict and the whole output frame.
fn check_forward(
    lab: &mut PacketLab,
    name: &str,
    vip: &str,
    frame: &Frame,
    bytes: &[u8],
    backend: u32,
) -> anyhow::Result<()> {
    let expected = match lab.vip(vip).forward {
        ForwardMode::Dsr => frames::dsr(bytes, backend_mac(backend)),
        ForwardMode::Tunnel => {
            let address = lab.backend_address(vip, backend);
            let source = ip(if address.is_ipv4() {
                TUNNEL_SOURCE_V4
            } else {
                TUNNEL_SOURCE_V6
            });
            frames::tunnel(
                bytes,
                backend_mac(backend),
                source,
                address,
                &frame.flow_key(),
            )
        }
    };
    let (action, out) = lab.run(bytes)?;
    ensure!(
        action == verdict::TX,
        "{name}: verdict {action}, expected XDP_TX"
    );
    ensure!(
        out == expected,
        "{name}: the output frame is not the expected forward to backend {backend}"
    );
    if lab.vip(vip).forward == ForwardMode::Tunnel {
        ensure_reparses_as_itself(name, bytes, &out, lab.backend_address(vip, backend))?;
    }
    Ok(())
}

/// Checks that a recycled live-frames page still holds the same flow (see [`lab_and_paths`]).
fn ensure_reparses_as_itself(
    name: &str,
    input: &[u8],
    output: &[u8],
    backend: IpAddr,
) -> anyhow::Result<()> {
    let outer = output.len() - input.len();
    let recycled = &output[outer..];
    if recycled[12..14] != input[12..14] || recycled[14..] != input[14..] {
        bail!("{name}: backend {backend}: a recycled live frame would not parse as the same flow");
    }
    Ok(())
}

/// The balancer's counters a route moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    tx: u64,
    pass: u64,
    not_vip: u64,
    conntrack_hits: u64,
    new_flows: u64,
    untracked: u64,
}

impl Counters {
    fn read(lab: &mut PacketLab, route: Route) -> anyhow::Result<Self> {
        let vip = match route {
            Route::ConntrackHit { vip } | Route::NewFlow { vip } | Route::Untracked { vip } => {
                Some(vip)
            }
            Route::Floor | Route::NotVip => None,
        };
        let stats = vip
            .map(|vip| lab.datapath.vip_stats(vip))
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            tx: lab.datapath.counter(Counter::Tx)?,
            pass: lab.datapath.counter(Counter::Pass)?,
            not_vip: lab.datapath.counter(Counter::NotVip)?,
            conntrack_hits: stats.conntrack_hits,
            new_flows: stats.new_flows,
            untracked: lab.datapath.counter(Counter::ConntrackFull)?,
        })
    }

    fn since(self, before: Self) -> Self {
        let Self {
            tx,
            pass,
            not_vip,
            conntrack_hits,
            new_flows,
            untracked,
        } = self;
        Self {
            tx: tx - before.tx,
            pass: pass - before.pass,
            not_vip: not_vip - before.not_vip,
            conntrack_hits: conntrack_hits - before.conntrack_hits,
            new_flows: new_flows - before.new_flows,
            untracked: untracked - before.untracked,
        }
    }

    fn expected(route: Route, frames: u64) -> Self {
        let none = Self::default();
        match route {
            Route::Floor => none,
            Route::ConntrackHit { .. } => Self {
                tx: frames,
                conntrack_hits: frames,
                ..none
            },
            Route::NewFlow { .. } => Self {
                tx: frames,
                new_flows: frames,
                ..none
            },
            Route::Untracked { .. } => Self {
                tx: frames,
                new_flows: frames,
                untracked: frames,
                ..none
            },
            Route::NotVip => Self {
                pass: frames,
                not_vip: frames,
                ..none
            },
        }
    }
}

/// Times `path` once: `repeat` live frames; the kernel's per-frame time in ns.
///
/// The kernel reports whole nanoseconds, truncated; half a nanosecond is added back so the
/// figure is unbiased.
pub fn time(lab: &mut PacketLab, path: &Path, repeat: u32) -> anyhow::Result<f64> {
    let before = Counters::read(lab, path.route)?;
    let xdp = lab.datapath.program(path.program)?;
    let mut options = TestRunOptions::new();
    options.data_in = Some(&path.frame);
    options.repeat = repeat;
    options.attrs = TestRunAttrs::new().xdp_live_frames(BATCH_SIZE);
    let result = xdp
        .test_run(options)
        .with_context(|| format!("{}: live test run", path.name))?;
    let moved = Counters::read(lab, path.route)?.since(before);
    let expected = Counters::expected(path.route, u64::from(repeat));
    ensure!(
        moved == expected,
        "{}: counters moved {moved:?}, expected {expected:?}: the wrong path was timed",
        path.name
    );
    Ok(result.duration.as_nanos() as f64 + 0.5)
}

/// Every path's samples, one per pass, passes interleaved (floor, paths..., floor, ...) so that
/// drift (frequency, other load) affects all paths alike. One warm-up pass is discarded.
pub fn measure(lab: &mut PacketLab, paths: &[Path], plan: Plan) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut samples = vec![Vec::with_capacity(plan.passes); paths.len()];
    for pass in 0..=plan.passes {
        for (path, samples) in paths.iter().zip(&mut samples) {
            let ns = time(lab, path, plan.repeat)?;
            if pass > 0 {
                samples.push(ns);
            }
        }
    }
    Ok(samples)
}

/// Median, min and max of samples.
fn summary(samples: &[f64]) -> (f64, f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (median, sorted[0], sorted[n - 1])
}

/// The "Per-packet cost" section.
pub fn section(paths: &[Path], samples: &[Vec<f64>], plan: Plan, cpu: usize) -> Section {
    let floor_of = |verdict: Verdict| {
        paths
            .iter()
            .zip(samples)
            .find(|(p, _)| p.route == Route::Floor && p.verdict == verdict)
            .map(|(_, s)| s)
    };
    let mut verdicts = Vec::new();
    let rows = paths
        .iter()
        .zip(samples)
        .map(|(path, samples)| {
            let (median, min, max) = summary(samples);
            let ratio = floor_of(path.verdict).map(|floor| {
                let ratios: Vec<f64> = samples
                    .iter()
                    .zip(floor)
                    .map(|(ns, floor)| ns / floor)
                    .collect();
                summary(&ratios).0
            });
            let target = match (path.target, ratio) {
                (Some(target), Some(ratio)) => {
                    verdicts.push(verdict_line(path, target, ratio));
                    format!(
                        "≤ {target:.1}× ({})",
                        if ratio <= target { "met" } else { "missed" }
                    )
                }
                _ => "—".into(),
            };
            vec![
                path.name.clone(),
                path.verdict.name().into(),
                format!("{median:.1}"),
                format!("{min:.1}–{max:.1}"),
                ratio.map_or_else(|| "—".into(), |r| format!("{r:.2}")),
                target,
            ]
        })
        .collect();
    Section {
        title: "Per-packet cost".into(),
        method: format!(
            "The real XDP object (lb-ebpf, as embedded in lb) loaded with the lab's VIPs, the \
             default conntrack_size ({DEFAULT_CONNTRACK_SIZE} flows in FLOWS) and rings of the default \
             size, run by BPF_PROG_TEST_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES, \
             batches of {BATCH_SIZE}): each frame is a page-pool page run through the program \
             and then handled by its verdict, as a driver would. The kernel times each call of \
             {} frames (its figure is whole ns, truncated; 0.5 ns is added back). The floor is a \
             trivial program (`return XDP_TX`, `return XDP_PASS`) of the same object timed by \
             the same harness; each path is compared with the floor of its own verdict. Passes \
             are interleaved (floors, then every path, {} times after a discarded warm-up), on \
             one pinned CPU (CPU {cpu}); the table gives the median over passes and the \
             spread, and × floor is the median over passes of the path's time divided by the \
             floor's time in the same pass. Established flows are first sent once through the normal path (so their \
             conntrack entry exists), then a non-SYN packet of the flow is timed. Before \
             timing, one ordinary run of each frame checks its verdict and its whole output \
             frame; after every timed call, the balancer's counters must have moved by exactly \
             the number of frames on the intended route (conntrack hit, new flow, not a VIP), \
             or the benchmark fails.",
            plan.repeat, plan.passes,
        ),
        columns: ["path", "verdict", "ns/packet (median)", "min–max", "× floor", "target"]
            .map(String::from)
            .to_vec(),
        rows,
        notes: vec![
            "Frames run as if received on the loopback device. XDP_TX becomes a redirect back to \
             it, which loopback cannot transmit, so the frame is freed right after the program: \
             the same cost for the floor and the balancer. XDP_PASS builds an skb and hands it \
             to the stack (which drops it: the destination MAC is not loopback's), which is why \
             the XDP_PASS floor is much higher than the XDP_TX one."
                .into(),
            "Live frames recycle their pages and the kernel resets only a frame's pointers, not \
             its bytes: a run sees the bytes the previous run on that page left. DSR rewrites \
             only MAC addresses, which the balancer does not read. Tunnel paths write the outer \
             header where the Ethernet header was; their VIPs use backends whose last address \
             bytes (x.y.8.0, ...::86dd) read as the right ethertype there, so every run is the \
             same flow. The counter check proves each timed frame took the intended path."
                .into(),
            "UDP has no SYN: after the first datagram a flow's datagrams are conntrack hits."
                .into(),
            "The lab balances frames whatever their destination MAC (local_mac unset): a \
             forwarded frame leaves the backend's MAC (or tunnel header bytes) where the next \
             run on its page reads the destination. The program still reads and compares the \
             setting on every packet."
                .into(),
        ]
        .into_iter()
        .chain(verdicts)
        .collect(),
    }
}

/// `target: ...` with the verdict: met (and by how much), or missed by how much.
fn verdict_line(path: &Path, target: f64, ratio: f64) -> String {
    let floor = path.verdict.name();
    let outcome = if ratio <= target {
        format!("met ({ratio:.2}×, {:.2}× to spare)", target - ratio)
    } else {
        format!("MISSED by {:.2}× ({ratio:.2}×)", ratio - target)
    };
    format!(
        "target: {} ≤ {target:.1}× the {floor} floor: {outcome}",
        path.name
    )
}
