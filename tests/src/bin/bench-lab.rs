//! End to end in the namespace lab (issue #6, part 4): TCP connections per second and bulk
//! upload throughput from the client to the VIP versus from the client straight to one backend,
//! same backends, same run. Needs root and `cargo build --release -p lb-user` first.
//!
//! The lab is the agent tests' (`dsr_lab`): client, lb and three DSR backends with the VIP on
//! their loopback, on one bridge, and the real `lb run` (native XDP on the lb's veth, XDP_TX).
//! A second VIP port leads to bulk sinks on the same backends.

use std::{
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context as _};
use lb_common::stats::Counter;
use lb_tests::{
    bench::{
        load::{connect_for, process_cpu, upload_for, CpuTimes, Serve, Server},
        report_table::{self, median, Section},
    },
    netns::{
        agent::find_lb_binary,
        dsr_lab::{AgentLab, NAMES, PORT, VIP},
    },
};
use lb_user::datapath::Datapath;

/// Port of the bulk VIP and of the sinks.
const BULK_PORT: u16 = 8081;
const CLIENT_THREADS: usize = 4;
const SERVER_THREADS: usize = 4;
const ROUNDS: usize = 5;
const CPS_SECONDS: u64 = 3;
const BULK_SECONDS: u64 = 3;
const TARGET_RATIO: f64 = 0.9;

const ABOUT: &str = "bench-lab: TCP connections per second and bulk upload through the VIP versus straight to a backend.\n\
Needs root and the lb binary of the same profile: cargo build --release -p lb-user && cargo run --release -p lb-tests --bin bench-lab";

fn main() -> ExitCode {
    report_table::run_main("bench-lab", ABOUT, run)
}

/// One timed measurement.
struct Sample {
    /// Connections per second, or MB/s.
    rate: f64,
    /// Share of all CPUs busy meanwhile (other work on the machine included).
    cpu: f64,
    /// CPU time of this process (clients, servers and the kernel's packet path in their
    /// context) per connection or per MB, µs.
    cpu_per_unit: f64,
    /// Failed connections (CPS only).
    failed: u64,
    /// Packets the load balancer forwarded (XDP_TX) per connection or per MB.
    lb_packets_per_unit: f64,
}

fn run() -> anyhow::Result<Vec<Section>> {
    find_lb_binary().map_err(anyhow::Error::msg)?;
    eprintln!("bench-lab: building the lab and starting lb run");
    let mut lab = AgentLab::new("bench");
    // Lean servers instead of the lab's thread-per-connection ones, on the same backends.
    for server in &mut lab.servers {
        *server = None;
    }
    let mut servers = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let ns = &lab.lan.host(2 + i).ns;
        servers.push(Server::start(
            ns,
            SocketAddr::from(([0, 0, 0, 0], PORT)),
            SERVER_THREADS,
            Serve::Line(format!("{name}\n")),
        )?);
        servers.push(Server::start(
            ns,
            SocketAddr::from(([0, 0, 0, 0], BULK_PORT)),
            2,
            Serve::Sink,
        )?);
    }
    let bulk_vip = lab.config_text(&[1, 1, 1], "", &lab.files.state_dir)
        + &format!("\n[[vip]]\nname = \"bulk\"\naddress = \"{VIP}\"\nport = {BULK_PORT}\nforward = \"dsr\"\n")
        + &(0..NAMES.len()).map(|i| format!("  [[vip.backend]]\n  address = \"{}\"\n", lab.backend_ip(i))).collect::<String>();
    lab.files.write_config(&bulk_vip);
    let agent = lab.start_agent(false);
    let client = &lab.lan.host(0).ns;
    // Connections close client first, so the client keeps every 5-tuple in TIME_WAIT for 60 s:
    // all ports and reuse after 1 s keep it from running out of ephemeral ports.
    client.exec("sysctl -q -w net.ipv4.ip_local_port_range='1024 65535' net.ipv4.tcp_tw_reuse=1");

    let vip: IpAddr = VIP.parse().expect("VIP");
    let direct = lab.backend_ip(0);
    let targets = [("VIP", vip), ("direct to b1", direct)];
    let mut datapath =
        Datapath::open_pinned(&lab.files.state_dir).context("opening the agent's maps")?;
    let mut forwarded = move || datapath.counter(Counter::Tx).unwrap_or(0);

    eprintln!("bench-lab: warming up");
    for (_, address) in targets {
        let count = connect_for(
            client,
            SocketAddr::new(address, PORT),
            CLIENT_THREADS,
            Duration::from_millis(500),
        );
        if count.ok == 0 {
            bail!(
                "no connection to {address}:{PORT} succeeded ({} failed)",
                count.failed
            );
        }
    }

    let mut cps: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    let mut bulk: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        // Alternate which goes first, so a drift of the machine's load favours neither.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for t in order {
            let (name, address) = targets[t];
            eprintln!(
                "bench-lab: round {}/{ROUNDS}: connections to {name} for {CPS_SECONDS} s",
                round + 1
            );
            let (cpu_before, own_before, tx_before) = (CpuTimes::now(), process_cpu(), forwarded());
            let count = connect_for(
                client,
                SocketAddr::new(address, PORT),
                CLIENT_THREADS,
                Duration::from_secs(CPS_SECONDS),
            );
            let (cpu, own, tx) = (
                CpuTimes::now().busy_since(&cpu_before),
                process_cpu() - own_before,
                forwarded() - tx_before,
            );
            cps[t].push(Sample {
                rate: count.ok as f64 / CPS_SECONDS as f64,
                cpu,
                cpu_per_unit: own.as_secs_f64() * 1e6 / count.ok.max(1) as f64,
                failed: count.failed,
                lb_packets_per_unit: tx as f64 / count.ok.max(1) as f64,
            });
        }
        for t in order {
            let (name, address) = targets[t];
            eprintln!(
                "bench-lab: round {}/{ROUNDS}: upload to {name} for {BULK_SECONDS} s",
                round + 1
            );
            let (cpu_before, own_before, tx_before) = (CpuTimes::now(), process_cpu(), forwarded());
            let (bytes, took) = upload_for(
                client,
                SocketAddr::new(address, BULK_PORT),
                Duration::from_secs(BULK_SECONDS),
            )
            .with_context(|| format!("upload to {address}:{BULK_PORT}"))?;
            let (cpu, own, tx) = (
                CpuTimes::now().busy_since(&cpu_before),
                process_cpu() - own_before,
                forwarded() - tx_before,
            );
            let megabytes = bytes as f64 / 1e6;
            bulk[t].push(Sample {
                rate: megabytes / took.as_secs_f64(),
                cpu,
                cpu_per_unit: own.as_secs_f64() * 1e6 / megabytes,
                failed: 0,
                lb_packets_per_unit: tx as f64 / megabytes,
            });
        }
    }
    drop(agent);
    drop(servers);
    Ok(report(&cps, &bulk))
}

fn report(cps: &[Vec<Sample>; 2], bulk: &[Vec<Sample>; 2]) -> Vec<Section> {
    let med = |samples: &[Sample], f: fn(&Sample) -> f64| {
        median(&samples.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    };
    let rates = |samples: &[Sample], digits: usize| {
        samples
            .iter()
            .map(|s| format!("{:.digits$}", s.rate))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut sections = Vec::new();
    for (title, samples, unit, digits, method) in [
        (
            "TCP connections per second: VIP vs direct",
            cps,
            "connections/s",
            0,
            format!(
                "Namespace lab: client, lb and three DSR backends (VIP {VIP}:{PORT} on their loopback) on one bridge, the real \
                 agent (`lb run`, release build) with native XDP on the lb's veth (XDP_TX back out of it); backend answers go \
                 straight to the client. {CLIENT_THREADS} client threads each connect, read the backend's one-line answer and \
                 close, back to back, for {CPS_SECONDS} s, first to the VIP then straight to backend b1's own address (the same \
                 server), {ROUNDS} rounds alternating which goes first; median of the rounds. Servers: {SERVER_THREADS} threads \
                 per backend accepting from one listener (no thread per connection). The client closes first; its netns has \
                 ip_local_port_range 1024-65535 and tcp_tw_reuse = 1 so TIME_WAIT does not exhaust its ports. Everything \
                 (client, servers, agent, softirq of every veth) shares the machine's CPUs."
            ),
        ),
        (
            "Bulk upload throughput: VIP vs direct",
            bulk,
            "MB/s",
            1,
            format!(
                "Same lab and run. One TCP stream uploads 1 MiB writes for {BULK_SECONDS} s from the client to a sink on a second \
                 VIP port ({VIP}:{BULK_PORT}, same backends), then to the sink on b1's own address; the rate is the bytes the \
                 sink counted over the time from connect to the sink's answer after EOF (MB = 10^6 bytes). In DSR only the \
                 upload direction crosses the load balancer; ACKs go straight back. {ROUNDS} rounds alternating which goes \
                 first; median. The lab's veths run XDP (the switch ports `pass`), which turns GSO off on their peers, and \
                 checksum offload is off: every path carries MTU-sized (1500 byte) frames."
            ),
        ),
    ] {
        let mut section = Section::new(
            title,
            &method,
            &["path", &format!("median {unit}"), "rounds", "machine CPU busy", "lab CPU µs per unit", "lb XDP_TX packets per unit", "failed"],
        );
        for (t, name) in ["client -> VIP (through lb)", "client -> b1 directly"].iter().enumerate() {
            let failed: u64 = samples[t].iter().map(|s| s.failed).sum();
            section.row(vec![
                (*name).to_owned(),
                format!("{:.digits$}", med(&samples[t], |s| s.rate)),
                rates(&samples[t], digits),
                format!("{:.0}%", 100.0 * med(&samples[t], |s| s.cpu)),
                format!("{:.1}", med(&samples[t], |s| s.cpu_per_unit)),
                format!("{:.1}", med(&samples[t], |s| s.lb_packets_per_unit)),
                failed.to_string(),
            ]);
        }
        let ratio = med(&samples[0], |s| s.rate) / med(&samples[1], |s| s.rate);
        let cpu_ratio = med(&samples[1], |s| s.cpu_per_unit) / med(&samples[0], |s| s.cpu_per_unit);
        section.row(vec![
            "ratio VIP / direct".into(),
            format!("{ratio:.2}"),
            String::new(),
            String::new(),
            format!("{cpu_ratio:.2} (direct / VIP)"),
            String::new(),
            String::new(),
        ]);
        section.notes.push(format!(
            "\"lab CPU\": user + system time of the benchmark process (client and server threads, and the kernel's packet path \
             of the whole lab, which runs in their context) per unit. Wall-clock rates depend on whatever else the machine \
             runs; CPU per unit does not, and its ratio ({cpu_ratio:.2}) is what the rate ratio would be on an otherwise idle, \
             CPU-bound machine"
        ));
        if unit == "connections/s" {
            let verdict = |r: f64| if r >= TARGET_RATIO { "met" } else { "MISSED" };
            section.notes.push(format!(
                "target: connections/s through the VIP at least {TARGET_RATIO} x direct: {} by wall-clock rate ({ratio:.2}), {} by CPU per connection ({cpu_ratio:.2})",
                verdict(ratio),
                verdict(cpu_ratio)
            ));
            section.notes.push("\"per unit\": per connection; a DSR connection's client-to-server packets (SYN, ACK, request ACKs, FIN, ACK) cross the lb".into());
        } else {
            section.notes.push("\"per unit\": per MB uploaded".into());
        }
        sections.push(section);
    }
    sections
}
