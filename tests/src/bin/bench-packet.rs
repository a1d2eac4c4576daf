//! `bench-packet`: per-packet cost of the XDP balancer's paths against a trivial XDP program,
//! and the kernel memory of its maps at the default sizes. Needs root.
//!
//! ```text
//! bench-packet [--json] [--repeat N] [--passes N] [--only PATH-NAME-PART] [--no-floors]
//! ```
//!
//! `--only` and `--no-floors` are for profiling one path (`perf record -C CPU` beside it).
//!
//! `--json` prints the sections as the JSON array `cargo xtask bench` renders into
//! `docs/BENCHMARKS.md`; without it, aligned text tables.

use anyhow::{anyhow, bail, Context as _};
use lb_tests::bench::{
    cost::{self, Plan},
    memory,
    report_table::{self, Section},
};
use nix::{
    sched::{sched_getaffinity, sched_setaffinity, CpuSet},
    unistd::Pid,
};

struct Args {
    json: bool,
    plan: Plan,
    /// Time only the floors and the paths whose name contains this (for profiling).
    only: Option<String>,
    /// Leave the floors out (for profiling: the samples are then all the chosen path's).
    no_floors: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        json: false,
        plan: Plan::default(),
        only: None,
        no_floors: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<u64> {
            let text = it.next().ok_or_else(|| anyhow!("{name} needs a value"))?;
            text.parse()
                .with_context(|| format!("{name} {text}: not a number"))
        };
        match arg.as_str() {
            "--json" => args.json = true,
            "--repeat" => args.plan.repeat = u32::try_from(value("--repeat")?.max(2))?,
            "--passes" => args.plan.passes = usize::try_from(value("--passes")?.max(1))?,
            "--only" => {
                args.only = Some(
                    it.next()
                        .ok_or_else(|| anyhow!("--only needs a path name"))?,
                )
            }
            "--no-floors" => args.no_floors = true,
            "-h" | "--help" => {
                println!("usage: bench-packet [--json] [--repeat FRAMES] [--passes N] [--only PATH-NAME-PART] [--no-floors]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    Ok(args)
}

/// Pins this thread to the last CPU: live frames run on the calling CPU, and its per-CPU
/// state (page pool, LRU lists, counters) then stays the same for every call.
fn pin_to_last_cpu() -> anyhow::Result<usize> {
    let me = Pid::from_raw(0);
    let allowed = sched_getaffinity(me)?;
    let cpu = (0..CpuSet::count())
        .rev()
        .find(|cpu| allowed.is_set(*cpu).unwrap_or(false))
        .ok_or_else(|| anyhow!("no CPU in this thread's affinity mask"))?;
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(me, &set)?;
    Ok(cpu)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let cpu = pin_to_last_cpu()?;
    let (mut lab, mut paths) = cost::lab_and_paths()?;
    if let Some(only) = &args.only {
        paths.retain(|p| p.route == cost::Route::Floor || p.name.contains(only.as_str()));
    }
    if args.no_floors {
        paths.retain(|p| p.route != cost::Route::Floor);
    }
    let samples = cost::measure(&mut lab, &paths, args.plan)?;
    let web4 = lab.vip("web4").id;
    let (maps, ring) = memory::measure(&mut lab.datapath, web4)?;
    let possible_cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
    let sections: Vec<Section> = vec![
        cost::section(&paths, &samples, args.plan, cpu),
        memory::section(&maps, &ring, possible_cpus),
    ];
    report_table::print(&sections, args.json);
    Ok(())
}
