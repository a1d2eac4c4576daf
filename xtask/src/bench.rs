//! `cargo xtask bench`: runs the benchmarks, prints their tables and writes them,
//! with a description of the machine, into `docs/BENCHMARKS.md`.
//!
//! Each benchmark reports "sections" (a titled table with a paragraph on how it was measured):
//! the `bench-*` binaries of the lb-tests crate print them as JSON with `--json`; the Maglev
//! section is read from criterion's estimates. Benchmarks report; nothing here passes or fails
//! on a figure.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::{cmd, header, setup, workspace_root};

/// Every benchmark, in report order.
pub const BENCHMARKS: [&str; 5] = ["packet", "maglev", "swap", "lab", "agent"];

/// A titled table, as the `bench-*` binaries print it.
#[derive(Debug, Deserialize)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// How it was measured, one paragraph.
    pub method: String,
    /// Column headings.
    pub columns: Vec<String>,
    /// Rows, as many cells as columns.
    pub rows: Vec<Vec<String>>,
    /// Remarks printed under the table.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Runs the benchmarks named in `only` (all when empty); writes docs/BENCHMARKS.md unless
/// `no_write` or a subset was asked for.
pub fn run(only: &[String], no_write: bool) -> Result<()> {
    for name in only {
        if !BENCHMARKS.contains(&name.as_str()) {
            bail!(
                "unknown benchmark {name:?}: choose among {}",
                BENCHMARKS.join(", ")
            );
        }
    }
    let selected: Vec<&str> = BENCHMARKS
        .iter()
        .copied()
        .filter(|b| only.is_empty() || only.iter().any(|o| o == b))
        .collect();
    let root = workspace_root();

    header("setup");
    setup::run()?;
    header("build: release binaries (lb, bench-*)");
    cmd::run(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "-p",
                "lb-user",
                "-p",
                "lb-tests",
                "--bins",
            ])
            .current_dir(&root),
    )?;

    let mut sections = Vec::new();
    for bench in &selected {
        header(&format!("bench: {bench}"));
        match *bench {
            "maglev" => sections.push(maglev(&root)?),
            other => sections.extend(bench_binary(&root, other)?),
        }
    }
    // Memory is reported by the packet benchmark but reads best last, as in the issue.
    sections.sort_by_key(|s| s.title.to_lowercase().contains("memory"));

    let machine = Machine::describe();
    header("results");
    println!("{}", machine.text());
    for section in &sections {
        println!("{}", section_text(section));
    }
    if no_write || !only.is_empty() {
        println!(
            "(docs/BENCHMARKS.md not written: {})",
            if no_write {
                "--no-write"
            } else {
                "only part of the benchmarks ran"
            }
        );
        return Ok(());
    }
    let path = root.join("docs/BENCHMARKS.md");
    fs::write(&path, markdown(&machine, &sections))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Runs `target/release/bench-<name> --json` and parses its sections.
fn bench_binary(root: &Path, name: &str) -> Result<Vec<Section>> {
    let binary = root.join("target/release").join(format!("bench-{name}"));
    let mut command = Command::new(&binary);
    command
        .arg("--json")
        .current_dir(root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let line = cmd::display(&command);
    println!("$ {line}");
    let output = command
        .output()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !output.status.success() {
        bail!("`{line}` failed ({})", output.status);
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("`{line}` printed no section list"))
}

/// Criterion's point estimates, in nanoseconds.
#[derive(Deserialize)]
struct Estimates {
    median: Estimate,
    mean: Estimate,
}

#[derive(Deserialize)]
struct Estimate {
    point_estimate: f64,
}

/// Runs the criterion benchmark of `lb_common::maglev::build_ring` and tabulates it.
fn maglev(root: &Path) -> Result<Section> {
    cmd::run(
        Command::new("cargo")
            .args(["bench", "-p", "lb-common", "--bench", "maglev"])
            .current_dir(root),
    )?;
    let group = root.join("target/criterion/maglev_build");
    let mut rows = Vec::new();
    let mut verdicts = Vec::new();
    for entry in fs::read_dir(&group).with_context(|| format!("reading {}", group.display()))? {
        let dir = entry?.path();
        let estimates = dir.join("new/estimates.json");
        let Ok(text) = fs::read_to_string(&estimates) else {
            continue;
        };
        let Estimates { median, mean } = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", estimates.display()))?;
        let id = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        // Directory names are the benchmark ids "{backends}x{M}/{weighting}" with '/' -> '_'.
        let Some((shape, weighting)) = id.split_once('_') else {
            continue;
        };
        let Some((backends, size)) = shape.split_once('x') else {
            continue;
        };
        let (Ok(backends), Ok(size)) = (backends.parse::<u32>(), size.parse::<u32>()) else {
            continue;
        };
        let target = match maglev_target_ms(backends, size) {
            Some(limit) => {
                let median_ms = median.point_estimate / 1e6;
                let outcome = if median_ms < limit {
                    format!("met ({:.2} ms to spare)", limit - median_ms)
                } else {
                    format!("missed by {:.2} ms", median_ms - limit)
                };
                verdicts.push(format!(
                    "target: Maglev build of {backends} backends into {size} slots ({weighting}) \
                     < {limit} ms: {outcome}"
                ));
                format!(
                    "< {limit} ms: {}",
                    if median_ms < limit { "met" } else { "missed" }
                )
            }
            None => String::new(),
        };
        rows.push((
            (backends, size, weighting.to_owned()),
            vec![
                backends.to_string(),
                size.to_string(),
                weighting.to_owned(),
                millis(median.point_estimate),
                millis(mean.point_estimate),
                target.to_owned(),
            ],
        ));
    }
    if rows.is_empty() {
        bail!("no criterion results under {}", group.display());
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    verdicts.sort();
    Ok(Section {
        title: "Maglev table build".to_owned(),
        method:
            "criterion (`cargo bench -p lb-common --bench maglev`), release build, one thread: \
                 `lb_common::maglev::build_ring` for N backends named by their address strings, as \
                 the agent names them, into a ring of M slots; weighted = weights 1..=10."
                .to_owned(),
        columns: ["backends", "M", "weights", "median", "mean", "target"]
            .map(String::from)
            .to_vec(),
        rows: rows.into_iter().map(|(_, row)| row).collect(),
        notes: verdicts,
    })
}

/// The build-time target (median, ms) of the Maglev shapes issue #11 set: 1000 backends into
/// 65537 slots under 1 ms, into 655373 under 10 ms.
fn maglev_target_ms(backends: u32, size: u32) -> Option<f64> {
    match (backends, size) {
        (1000, 65537) => Some(1.0),
        (1000, 655373) => Some(10.0),
        _ => None,
    }
}

fn millis(nanos: f64) -> String {
    format!("{:.3} ms", nanos / 1e6)
}

/// What the figures were measured on.
struct Machine {
    cpu: String,
    cores: String,
    kernel: String,
    memory: String,
    rustc: String,
    commit: String,
    date: String,
}

impl Machine {
    fn describe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or_else(
                || "unknown".to_owned(),
                |kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0),
            );
        let probe = |program: &str, args: &[&str]| {
            cmd::probe(program, args)
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned())
        };
        Self {
            cpu,
            cores: std::thread::available_parallelism()
                .map_or_else(|_| "unknown".to_owned(), |n| n.to_string()),
            kernel: probe("uname", &["-r"]),
            memory,
            rustc: probe("rustc", &["--version"]),
            commit: probe(
                "git",
                &[
                    "-C",
                    &workspace_root().to_string_lossy(),
                    "rev-parse",
                    "--short",
                    "HEAD",
                ],
            ),
            date: probe("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }

    fn rows(&self) -> [(&str, &str); 7] {
        let Self {
            cpu,
            cores,
            kernel,
            memory,
            rustc,
            commit,
            date,
        } = self;
        [
            ("CPU", cpu),
            ("cores", cores),
            ("kernel", kernel),
            ("memory", memory),
            ("rustc (userspace)", rustc),
            ("commit", commit),
            ("date", date),
        ]
    }

    fn text(&self) -> String {
        self.rows()
            .iter()
            .map(|(k, v)| format!("{k:<18} {v}\n"))
            .collect()
    }
}

/// A section as an aligned text table.
fn section_text(section: &Section) -> String {
    let Section {
        title,
        method: _,
        columns,
        rows,
        notes,
    } = section;
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = format!("{title}\n");
    out += &line(columns);
    out += &line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for row in rows {
        out += &line(row);
    }
    for note in notes {
        out += &format!("  note: {note}\n");
    }
    out
}

/// docs/BENCHMARKS.md.
fn markdown(machine: &Machine, sections: &[Section]) -> String {
    let mut out = String::from(
        "# Benchmarks\n\n\
         Generated by `cargo xtask bench` (do not edit by hand: run it again). Figures are from one \
         run on the machine below; they are reported, not gated on.\n\n\
         ## Machine\n\n| | |\n|---|---|\n",
    );
    for (key, value) in machine.rows() {
        let _ = writeln!(out, "| {key} | {value} |");
    }
    for section in sections {
        let Section {
            title,
            method,
            columns,
            rows,
            notes,
        } = section;
        let _ = write!(
            out,
            "\n## {title}\n\n{method}\n\n| {} |\n|{}\n",
            columns.join(" | "),
            "---|".repeat(columns.len())
        );
        for row in rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        if !notes.is_empty() {
            out.push('\n');
            for note in notes {
                let _ = writeln!(out, "- {note}");
            }
        }
    }
    out
}
