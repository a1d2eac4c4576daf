//! What an operator gets from the package and the guide, for the tests that follow them: the
//! command blocks of docs/DEPLOY.md marked `<!-- tested: NAME -->`, the systemd units' command
//! lines (packaging/), the `.deb` that `cargo xtask package` built, unpacked into a scratch root.
//!
//! Without systemd as PID 1 (CI runs in a container) the tests cannot run `systemctl`; where a
//! tested block says `systemctl enable --now UNIT` or `systemctl disable --now UNIT`, the test
//! does what systemd would: it starts the unit's `ExecStart` (after its `ExecStartPre`) or sends
//! it SIGTERM. [`SystemctlLine`] parses those lines and refuses any other use.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::netns::Netns;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The guide, docs/DEPLOY.md.
pub fn guide() -> String {
    let path = workspace().join("docs/DEPLOY.md");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced block after `<!-- tested: NAME -->` in the guide.
pub fn guide_block(name: &str) -> String {
    let text = guide();
    let marker = format!("<!-- tested: {name} -->");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/DEPLOY.md has no `{marker}`"));
    let rest = &text[start + marker.len()..];
    let open = rest
        .find("```")
        .unwrap_or_else(|| panic!("no code block after `{marker}`"));
    let body = &rest[open..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    let close = body
        .find("\n```")
        .unwrap_or_else(|| panic!("the block after `{marker}` is not closed"));
    body[..close + 1].to_owned()
}

/// A unit file of the package, as in packaging/ (the package test checks the `.deb` holds
/// the same bytes).
pub fn unit(name: &str) -> String {
    let path = workspace().join("packaging").join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every value of `key` in a unit's text (`ExecStart`, `ExecStartPre`, ...), in order.
pub fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(|value| value.trim().to_owned())
        .collect()
}

/// A unit's command line as argv, with `/usr/bin/lb` replaced by `lb`, `%i` by `instance`
/// and each `(from, to)` of `replace` applied to whole arguments.
pub fn unit_argv(
    command: &str,
    lb: &Path,
    instance: &str,
    replace: &[(&str, &Path)],
) -> Vec<String> {
    command
        .split_whitespace()
        .map(|arg| {
            if arg == "/usr/bin/lb" {
                return lb.display().to_string();
            }
            if let Some((_, to)) = replace.iter().find(|(from, _)| *from == arg) {
                return to.display().to_string();
            }
            arg.replace("%i", instance)
        })
        .collect()
}

/// A line of a tested block that uses systemctl: what systemd would do with it.
#[derive(Debug, PartialEq, Eq)]
pub enum SystemctlLine {
    /// `systemctl enable --now UNIT`: start it (and at boot).
    Start(String),
    /// `systemctl disable --now UNIT`: stop it (and not at boot).
    Stop(String),
}

impl SystemctlLine {
    /// `None` if `line` is not a systemctl command; panics on a use the tests do not know.
    pub fn parse(line: &str) -> Option<Self> {
        let command = line.split('#').next().unwrap_or_default();
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["systemctl", "enable", "--now", unit] => Some(Self::Start(unit.to_string())),
            ["systemctl", "disable", "--now", unit] => Some(Self::Stop(unit.to_string())),
            ["systemctl", ..] => panic!("the tests cannot stand in for `{}`", command.trim()),
            _ => None,
        }
    }
}

/// Runs `script` with `sh -e` inside `ns`'s network namespace and a private mount namespace
/// in which `/etc/sysctl.d` is an empty tmpfs, so that a block writing there (as the guide's
/// backend preparation does) changes nothing on the host. `PATH` starts with `lb`'s
/// directory. Returns the output; panics with it if the script fails.
pub fn run_in(ns: &Netns, script: &str, lb: &Path) -> String {
    let path = format!(
        "{}:{}",
        lb.parent().expect("lb's directory").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .args(["unshare", "--mount", "sh", "-c"])
        .arg("mount -t tmpfs lb-test /etc/sysctl.d && exec sh -e")
        .env("PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write the script");
    let output = child.wait_with_output().expect("wait for sh");
    let text = describe(&output);
    assert!(
        output.status.success(),
        "in {}, this failed ({}):\n{script}\n{text}",
        ns.name,
        output.status
    );
    text
}

/// Stdout and stderr of `output`, for messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `.deb` to check: `$LB_DEB` (set by `cargo xtask test`), else the newest
/// `target/debian/lb_*.deb`.
pub fn find_deb() -> Result<PathBuf, String> {
    if let Some(deb) = std::env::var_os("LB_DEB") {
        let deb = PathBuf::from(deb);
        return if deb.is_file() {
            Ok(deb)
        } else {
            Err(format!("LB_DEB={} is not a file", deb.display()))
        };
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("debian");
    let newest = fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("lb_") && n.ends_with(".deb"))
        })
        .max_by_key(|path| path.metadata().and_then(|m| m.modified()).ok());
    newest.ok_or_else(|| {
        format!(
            "no lb_*.deb in {}: run `cargo xtask package` first (`cargo xtask test` does)",
            dir.display()
        )
    })
}

/// A scratch directory, removed on drop.
pub struct Scratch {
    /// Its path.
    pub dir: PathBuf,
}

impl Scratch {
    /// A new empty directory under the temporary directory.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "lbt-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        Self { dir }
    }

    /// A scratch root with `deb` unpacked into it (`dpkg-deb -x`: the files, no scripts run).
    pub fn unpacked(tag: &str, deb: &Path) -> Self {
        let scratch = Self::new(tag);
        let output = Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(&scratch.dir)
            .output()
            .expect("run dpkg-deb");
        assert!(
            output.status.success(),
            "dpkg-deb -x {}: {}",
            deb.display(),
            describe(&output)
        );
        scratch
    }

    /// `path` inside the scratch directory (`path` may be absolute).
    pub fn join(&self, path: &str) -> PathBuf {
        self.dir.join(path.trim_start_matches('/'))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
