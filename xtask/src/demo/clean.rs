//! Removing demo labs by name, whoever started them: `--clean` (every lab, kept ones too) and,
//! at the start of a demo, the leftovers of demos that were killed.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::config::PREFIX;

/// `cargo xtask demo --clean`: removes every demo lab (running, kept or left over).
pub fn clean() -> Result<()> {
    let ids = lab_ids();
    if ids.is_empty() {
        println!("nothing to clean: no {PREFIX}-* namespaces, temp or state directories");
        return Ok(());
    }
    let mut problems = Vec::new();
    for id in &ids {
        println!("removing {id}");
        problems.extend(clean_lab(id));
    }
    if !problems.is_empty() {
        bail!("cleanup incomplete:\n  {}", problems.join("\n  "));
    }
    println!("removed {} lab(s)", ids.len());
    Ok(())
}

/// Every demo lab on the machine (`lbdemo-<pid>`), from namespaces, temp and state directories.
fn lab_ids() -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            return;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() {
            let id = format!("{PREFIX}-{pid}");
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    };
    for name in netns_names() {
        add(&name);
    }
    for dir in [std::env::temp_dir(), PathBuf::from("/sys/fs/bpf")] {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                add(&entry.file_name().to_string_lossy());
            }
        }
    }
    ids
}

/// At start: removes labs of earlier demos that are no longer running (kept ones stay).
pub(super) fn remove_leftovers() {
    for id in lab_ids() {
        let pid = id.trim_start_matches(&format!("{PREFIX}-"));
        let running =
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "xtask");
        if running {
            continue;
        }
        if std::env::temp_dir().join(&id).join("kept").exists() {
            println!("note: {id} is a lab kept with --keep; `cargo xtask demo --clean` removes it");
            continue;
        }
        println!("removing leftovers of an earlier demo: {id}");
        for problem in clean_lab(&id) {
            eprintln!("cleanup: {problem}");
        }
    }
}

/// Names under /run/netns.
fn netns_names() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes lab `id` (its processes, namespaces, state and temp directories) whoever started it.
/// Returns what could not be removed.
pub(super) fn clean_lab(id: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let namespaces: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{id}-")))
        .collect();
    let inodes: HashSet<u64> = namespaces
        .iter()
        .filter_map(|n| fs::metadata(format!("/run/netns/{n}")).ok())
        .map(|m| m.ino())
        .collect();
    let dir = std::env::temp_dir().join(id);

    // Processes: the recorded ones (the agent first, so it detaches), then anything else still
    // in the lab's namespaces. A pid counts only while it is in one of them (pids get reused).
    let recorded = fs::read_to_string(dir.join("pids")).unwrap_or_default();
    let mut agents = Vec::new();
    let mut others = Vec::new();
    for line in recorded.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(Ok(pid)), Some(role)) = (parts.next().map(str::parse::<i32>), parts.next()) {
            if in_namespaces(pid, &inodes) {
                if role.starts_with("agent") {
                    agents.push(pid)
                } else {
                    others.push(pid)
                }
            }
        }
    }
    terminate(&agents, &inodes, Duration::from_secs(5));
    terminate(&others, &inodes, Duration::from_secs(3));
    let stray: Vec<i32> = fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| *pid != std::process::id() as i32 && in_namespaces(*pid, &inodes))
                .collect()
        })
        .unwrap_or_default();
    terminate(&stray, &inodes, Duration::from_secs(3));

    if !namespaces.is_empty() {
        let script: String = namespaces
            .iter()
            .map(|n| format!("netns del {n}\n"))
            .collect();
        let out = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(script.as_bytes())?;
                child.wait_with_output()
            });
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => problems.push(format!(
                "ip netns del: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(error) => problems.push(format!("ip netns del: {error}")),
        }
    }

    // Pins left behind (an agent was killed): unlinking the link's pin detaches the program.
    // The first instance's state directory is the lab's id, lb2's `<id>-lb2`.
    let state_dirs = fs::read_dir("/sys/fs/bpf")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n == id || n.starts_with(&format!("{id}-")))
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for state_dir in state_dirs {
        problems.extend(remove_state_dir(&state_dir));
    }
    // The agents' records (administrative state, availability) of those state directories:
    // `/var/lib/lb/<state_dir with '/' as '_'>.json` (lb-user's `records::path_for`).
    let records = format!("sys_fs_bpf_{id}");
    if let Ok(entries) = fs::read_dir("/var/lib/lb") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name
                .strip_prefix(&records)
                .is_some_and(|rest| rest == ".json" || rest.starts_with('-'));
            if ours {
                if let Err(error) = fs::remove_file(entry.path()) {
                    problems.push(format!("{}: {error}", entry.path().display()));
                }
            }
        }
    }
    if dir.exists() {
        if let Err(error) = fs::remove_dir_all(&dir) {
            problems.push(format!("{}: {error}", dir.display()));
        }
    }
    problems
}

/// Removes an agent's state directory on bpffs and its pins; what could not be removed.
fn remove_state_dir(state_dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if let Ok(entries) = fs::read_dir(state_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(error) = removed {
                problems.push(format!("{}: {error}", path.display()));
            }
        }
    }
    if let Err(error) = fs::remove_dir(state_dir) {
        problems.push(format!("{}: {error}", state_dir.display()));
    }
    problems
}

/// Whether process `pid` lives in one of the network namespaces `inodes`.
fn in_namespaces(pid: i32, inodes: &HashSet<u64>) -> bool {
    fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| inodes.contains(&m.ino()))
}

/// SIGTERM to `pids` (not our children), SIGKILL to those still there after `grace`.
fn terminate(pids: &[i32], inodes: &HashSet<u64>, grace: Duration) {
    if pids.is_empty() {
        return;
    }
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    let alive = || {
        pids.iter()
            .copied()
            .filter(|p| in_namespaces(*p, inodes))
            .collect::<Vec<_>>()
    };
    while Instant::now() < deadline && !alive().is_empty() {
        thread::sleep(Duration::from_millis(20));
    }
    for pid in alive() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
