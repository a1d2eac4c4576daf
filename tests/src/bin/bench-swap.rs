//! Ring swap latency (issue #6, part 3): from the agent deciding that a backend changed state to
//! the kernel using the ring that reflects it, over 100 swaps each way, with 10 VIPs of 100
//! backends. Needs root and `cargo build --release -p lb-user` first (see `--help`).
//!
//! The lab: the real `lb run` in an `lb` namespace and one backend host `bk` on a bridge. The
//! 1000 backend addresses (10.79.v.b) live on `bk`'s loopback, reached through a route via `bk`,
//! so the VIPs (10.78.0.1-10:8080) forward in IPv4 tunnels. One listener on `bk` answers the
//! health checks of 990 backends (every 1 s, the default). Backend 10.79.v.1 of each VIP is
//! checked every 50 ms on its own listener, port 9000, with rise = fall = 1: closing that
//! listener takes it down, reopening it brings it back.
//!
//! The agent logs, on every state change, when the check was judged (`decided_unix_us`) and
//! when its ring and backend entries were in the kernel (`ring_swapped_unix_us`). Meanwhile the
//! benchmark runs a probe frame whose flow maps to the switched backend through a second copy
//! of the program on the agent's pinned maps, back to back, and notes when its tunnel's outer
//! destination changes: that is when the kernel used the new ring. Both clocks are
//! CLOCK_REALTIME on one machine.

use std::{
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use lb_common::{
    maglev::{build_ring, MaglevBackend},
    maps::BackendState,
};
use lb_tests::{
    bench::{
        load::{Serve, Server},
        report_table::{self, max, median, Section},
    },
    netns::{
        agent::{find_lb_binary, AgentFiles, AgentProcess},
        topology::Lan,
        wait_every,
    },
    packet::{frames::Frame, probe::RingProbe},
};
use lb_user::datapath::{Datapath, Options};

const VIPS: usize = 10;
const BACKENDS: usize = 100;
const SWAPS: usize = 100;
const PORT: u16 = 8080;
const SWITCHED_PORT: u16 = 9000;
const SWITCHED_INTERVAL_MS: u64 = 50;
const CONNTRACK_SIZE: u32 = 65536;
const TABLE_SIZE: u32 = 65537;
const TARGET_MS: f64 = 10.0;

const ABOUT: &str = "bench-swap: ring swap latency of the real agent (10 VIPs x 100 tunnel backends, 100 swaps each way).\n\
Needs root and the lb binary of the same profile: cargo build --release -p lb-user && cargo run --release -p lb-tests --bin bench-swap";

fn vip_address(v: usize) -> IpAddr {
    IpAddr::from([10, 78, 0, v as u8 + 1])
}

fn backend_address(v: usize, b: usize) -> IpAddr {
    IpAddr::from([10, 79, v as u8, b as u8 + 1])
}

/// The backend of VIP `v` that the benchmark takes down and up.
fn switched(v: usize) -> IpAddr {
    backend_address(v, 0)
}

fn config(files: &AgentFiles) -> String {
    let mut text = format!(
        "interface = \"eth0\"\nstate_dir = \"{}\"\nconntrack_size = {CONNTRACK_SIZE}\ntable_size = {TABLE_SIZE}\n\n\
         [health]\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 3\ntarget = \"backend\"\n",
        files.state_dir.display()
    );
    for v in 0..VIPS {
        text += &format!(
            "\n[[vip]]\nname = \"v{v}\"\naddress = \"{}\"\nport = {PORT}\nforward = \"tunnel\"\n",
            vip_address(v)
        );
        for b in 0..BACKENDS {
            text += &format!(
                "  [[vip.backend]]\n  address = \"{}\"\n",
                backend_address(v, b)
            );
            if b == 0 {
                text += &format!(
                    "  health = {{ port = {SWITCHED_PORT}, interval = \"{SWITCHED_INTERVAL_MS}ms\", timeout = \"40ms\", rise = 1, fall = 1 }}\n"
                );
            }
        }
    }
    text
}

/// One state change as the agent logged it and the probe saw it.
struct Swap {
    decided_us: u64,
    queued_us: u64,
    swapped_us: u64,
    probe_us: u64,
}

/// The `n`-th (0-based) log line containing `needle`, and its `key=value` fields.
fn logged_fields(
    log: &str,
    needle: &str,
    n: usize,
) -> Option<std::collections::HashMap<String, String>> {
    let line = log.lines().filter(|l| l.contains(needle)).nth(n)?;
    Some(
        line.split_whitespace()
            .filter_map(|word| word.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

fn field(fields: &std::collections::HashMap<String, String>, key: &str) -> anyhow::Result<u64> {
    fields
        .get(key)
        .with_context(|| format!("no {key} in the log line"))?
        .parse()
        .with_context(|| format!("{key} is not a number"))
}

fn main() -> ExitCode {
    report_table::run_main("bench-swap", ABOUT, run)
}

fn run() -> anyhow::Result<Vec<Section>> {
    find_lb_binary().map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    eprintln!(
        "bench-swap: building the lab (2 namespaces, {} backend addresses)",
        VIPS * BACKENDS
    );
    let lan = Lan::new("swap", &["lb", "bk"]);
    let (lb, bk) = (lan.host(0), lan.host(1));
    let addresses: Vec<String> = (0..VIPS)
        .flat_map(|v| {
            (0..BACKENDS).map(move |b| format!("addr add {}/32 dev lo", backend_address(v, b)))
        })
        .collect();
    bk.ns.ip_batch(&addresses);
    lb.ns.ip(&format!("route add 10.79.0.0/16 via {}", bk.ip));
    let _health_target = Server::start(
        &bk.ns,
        SocketAddr::from(([0, 0, 0, 0], PORT)),
        2,
        Serve::Close,
    )?;
    let start_switched = |v: usize| {
        Server::start(
            &bk.ns,
            SocketAddr::new(switched(v), SWITCHED_PORT),
            1,
            Serve::Close,
        )
    };
    let mut switched_servers = (0..VIPS)
        .map(|v| start_switched(v).map(Some))
        .collect::<Result<Vec<_>, _>>()?;

    let files = AgentFiles::new("swap");
    files.write_config(&config(&files));
    eprintln!(
        "bench-swap: starting lb run (checks and next hops of {} backends first)",
        VIPS * BACKENDS
    );
    let mut agent = AgentProcess::start(&lb.ns, &files, false);
    if !files.wait_log("datapath attached", 1, Duration::from_secs(60)) {
        bail!(
            "the agent did not attach within 60 s; its log:\n{}",
            files.log_text()
        );
    }
    // The first round of checks may end before every backend answered: wait for all of them.
    let mut maps = Datapath::open_pinned(&files.state_dir).context("opening the agent's maps")?;
    let (mut up, mut failed) = (0, None);
    let all_up = wait_every(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || match maps.backends() {
            Ok(backends) => {
                up = backends
                    .iter()
                    .filter(|(_, b)| b.state == BackendState::Up as u8)
                    .count();
                up == VIPS * BACKENDS
            }
            Err(error) => {
                failed = Some(error);
                true
            }
        },
    );
    if let Some(error) = failed {
        return Err(error.into());
    }
    if all_up.is_none() {
        bail!(
            "{up} of {} backends are up after 30 s; the agent's log:\n{}",
            VIPS * BACKENDS,
            files.log_text()
        );
    }

    let mut probe = RingProbe::open(&files.state_dir, CONNTRACK_SIZE)
        .context("loading the probe program on the agent's maps")?;
    let local_mac = probe.local_mac().context("reading the agent's settings")?;
    // One probe flow per VIP whose ring slot belongs to the switched backend.
    let mut probes = Vec::new();
    for v in 0..VIPS {
        let target = switched(v);
        let frame = (1024..u16::MAX)
            .map(|port| {
                Frame::new(
                    lb_tests::packet::frames::Kind::TcpSyn,
                    "10.77.0.200".parse().expect("ip"),
                    port,
                    vip_address(v),
                    PORT,
                )
                .to_mac(local_mac)
                .build()
            })
            .find(|frame| probe.tunnel_destination(frame).ok().flatten() == Some(target))
            .with_context(|| format!("no client port maps to {target} in the ring of v{v}"))?;
        probes.push(frame);
    }

    eprintln!("bench-swap: {SWAPS} swaps each way");
    let probe_timeout = Duration::from_secs(3);
    let (mut downs, mut ups) = (Vec::new(), Vec::new());
    for i in 0..SWAPS {
        let v = i % VIPS;
        let target = switched(v);
        let round = i / VIPS;
        for going_down in [true, false] {
            let needle = if going_down {
                format!("backend {target} of vip v{v}: Up -> Down")
            } else {
                format!("backend {target} of vip v{v}: Down -> Up")
            };
            let probe_us = if going_down {
                switched_servers[v] = None;
                probe.wait_for(&probes[v], probe_timeout, |d| d != Some(target))?
            } else {
                switched_servers[v] = Some(start_switched(v)?);
                probe.wait_for(&probes[v], probe_timeout, |d| d == Some(target))?
            };
            let probe_us = probe_us.with_context(|| {
                format!("swap {i}: the probe never saw `{needle}` in the kernel")
            })?;
            if !files.wait_log(&needle, round + 1, Duration::from_secs(5)) {
                bail!("swap {i}: the agent never logged `{needle}`");
            }
            let fields = logged_fields(&files.log_text(), &needle, round).context("log line")?;
            let swap = Swap {
                decided_us: field(&fields, "decided_unix_us")?,
                queued_us: field(&fields, "queued_us")?,
                swapped_us: field(&fields, "ring_swapped_unix_us")?,
                probe_us,
            };
            if going_down {
                downs.push(swap)
            } else {
                ups.push(swap)
            }
        }
        if !agent.is_running() {
            bail!("the agent exited; its log:\n{}", files.log_text());
        }
    }
    let lab_time = started.elapsed();
    drop(agent);

    eprintln!("bench-swap: timing the parts of a swap in this process");
    let parts = swap_parts()?;
    Ok(report(&downs, &ups, &parts, lab_time))
}

/// Medians (µs) of the parts of a ring swap, measured in this process: building a 99-backend
/// Maglev ring, writing it with `Datapath::set_ring` on a scratch datapath (new map, filled,
/// swapped in), and of that the swap alone: one `BPF_MAP_UPDATE_ELEM` on an array of maps.
struct Parts {
    build_us: f64,
    prepare_us: f64,
    swap_us: f64,
}

/// Times the agent's steps of a ring change on a scratch datapath: the Maglev build, then the
/// two halves of `Datapath::set_ring`.
fn swap_parts() -> anyhow::Result<Parts> {
    let identities: Vec<Vec<u8>> = (1..BACKENDS)
        .map(|b| backend_address(0, b).to_string().into_bytes())
        .collect();
    let backends: Vec<MaglevBackend<'_>> = identities
        .iter()
        .enumerate()
        .map(|(id, identity)| MaglevBackend {
            id: id as u32,
            identity,
            weight: 1,
        })
        .collect();
    let mut datapath = Datapath::load(&Options {
        conntrack_size: 1024,
        pin_dir: None,
        fresh_state: false,
    })
    .context("loading a scratch datapath")?;
    let (mut build, mut prepare, mut swap) = (Vec::new(), Vec::new(), Vec::new());
    let micros = |t: Instant| t.elapsed().as_secs_f64() * 1e6;
    for _ in 0..SWAPS {
        let t = Instant::now();
        let ring = build_ring(&backends, TABLE_SIZE)?;
        build.push(micros(t));
        let t = Instant::now();
        let prepared = Datapath::prepare_ring(0, &ring)?;
        prepare.push(micros(t));
        let t = Instant::now();
        datapath.swap_ring(0, &prepared)?;
        swap.push(micros(t));
    }
    Ok(Parts {
        build_us: median(&build).unwrap_or(f64::NAN),
        prepare_us: median(&prepare).unwrap_or(f64::NAN),
        swap_us: median(&swap).unwrap_or(f64::NAN),
    })
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn report(downs: &[Swap], ups: &[Swap], parts: &Parts, lab_time: Duration) -> Vec<Section> {
    let mut latency = Section::new(
        "Ring swap latency",
        &format!(
            "The real agent (`lb run`, release build) in a namespace lab with {VIPS} tunnel VIPs of {BACKENDS} backends each \
             ({} health checks per second in the background). One backend per VIP is checked every {SWITCHED_INTERVAL_MS} ms \
             with rise = fall = 1 and is taken down and brought back {SWAPS} times each way, rotating over the VIPs, by \
             closing and reopening its health-check listener. Start: the agent's `decided_unix_us`, logged when the failing \
             (or passing) check is judged. \"probe\": a probe flow whose slot belongs to that backend runs back to back through \
             a second copy of the `lb` program on the agent's pinned maps (BPF_PROG_TEST_RUN); the end is the first run \
             whose tunnel destination changed, i.e. when the attached program also uses the new ring. \"agent\": the \
             agent's own `ring_swapped_unix_us`, once its map writes returned (see the next table for why that is \
             later). \"queued\": from the decision until the agent took the event. Ring size {TABLE_SIZE}, CLOCK_REALTIME \
             microseconds on both sides.",
            VIPS * (BACKENDS - 1)
        ),
        &["swap", "end", "swaps", "median ms", "max ms"],
    );
    let mut medians = Vec::new();
    for (name, swaps) in [("up -> down", downs), ("down -> up", ups)] {
        let series: [(&str, Vec<f64>); 3] = [
            (
                "probe sees the new ring",
                swaps
                    .iter()
                    .map(|s| s.probe_us.saturating_sub(s.decided_us) as f64)
                    .collect(),
            ),
            (
                "agent: set_ring returned",
                swaps
                    .iter()
                    .map(|s| s.swapped_us.saturating_sub(s.decided_us) as f64)
                    .collect(),
            ),
            (
                "agent: queued",
                swaps.iter().map(|s| s.queued_us as f64).collect(),
            ),
        ];
        for (end, values) in &series {
            let (m, x) = (
                median(values).unwrap_or(f64::NAN),
                max(values).unwrap_or(f64::NAN),
            );
            if *end == "probe sees the new ring" {
                medians.push((name, m));
            }
            latency.row(vec![
                name.to_owned(),
                (*end).to_owned(),
                values.len().to_string(),
                ms(m),
                ms(x),
            ]);
        }
    }
    for (name, median_us) in &medians {
        let verdict = if median_us / 1000.0 < TARGET_MS {
            "met"
        } else {
            "MISSED"
        };
        latency.notes.push(format!(
            "target: median under {TARGET_MS} ms ({name}): {verdict} ({} ms)",
            ms(*median_us)
        ));
    }
    let early = downs
        .iter()
        .chain(ups)
        .filter(|s| s.probe_us + 1000 < s.decided_us)
        .count();
    let late = downs
        .iter()
        .chain(ups)
        .filter(|s| s.probe_us > s.swapped_us + 1000)
        .count();
    latency.notes.push(format!(
        "consistency: {early} probe observations more than 1 ms before the decision, {late} more than 1 ms after the agent's \
         ring_swapped timestamp (the probe yields the CPU between runs, so on 2 cores it may see a change late)"
    ));
    latency
        .notes
        .push(format!("the lab ran {:.1} s", lab_time.as_secs_f64()));

    let mut parts_section = Section::new(
        "Parts of a ring swap",
        &format!(
            "Measured in the benchmark process, {SWAPS} times each, interleaved, median: building the Maglev ring of {} backends \
             (size {TABLE_SIZE}, `lb_common::maglev::build_ring`, what the agent does on a change), then the two \
             halves of `Datapath::set_ring` on a scratch datapath: `prepare_ring` (a new ring map created and filled \
             through mmap) and `swap_ring` (the one bpf(BPF_MAP_UPDATE_ELEM) that puts it into `RINGS`). \
             The rest of the agent's time is its event queue (the health checks run on a thread of their own and \
             hand their results over in batches, a health change at once) and the backend entry writes.",
            BACKENDS - 1
        ),
        &["part", "median ms"],
    );
    parts_section.row(vec!["Maglev build".into(), ms(parts.build_us)]);
    parts_section.row(vec![
        "Datapath::prepare_ring (create, fill)".into(),
        ms(parts.prepare_us),
    ]);
    parts_section.row(vec![
        "Datapath::swap_ring (update of RINGS)".into(),
        ms(parts.swap_us),
    ]);
    parts_section.notes.push(
        "the swap is visible to packets as soon as the update is made, but bpf(BPF_MAP_UPDATE_ELEM) on an array of maps \
         returns only after an RCU grace period (the kernel's guarantee that no program still runs on the old ring): \
         that wait is in the agent's own timestamp and not in the probe's"
            .into(),
    );
    vec![latency, parts_section]
}
