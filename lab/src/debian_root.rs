//! A minimal Debian 12 (bookworm) root file system with systemd, for the tests that boot it
//! as a container with systemd as PID 1 (`tests/tests/systemd.rs`).
//!
//! Bootstrapped once with `debootstrap` from the Debian mirror of the host's apt sources
//! (about 250 MB, a minute) and cached in [`CACHE`], outside any work tree, where later runs
//! find it at once. It is built in a directory of its own and renamed into place when
//! complete, so an interrupted build leaves no half root behind, under a lock file, so two
//! runs do not build it at once. Users of the root must not write to it: a container boots a
//! copy-on-write overlay of it. `cargo xtask test` builds it in the background while it
//! compiles.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use nix::fcntl::{Flock, FlockArg};

use crate::{
    command::run,
    error::{or_panic, LabError},
};

/// Where the root is kept between runs.
pub const CACHE: &str = "/var/cache/lb-tests/bookworm-root";
/// The packages the root gets beyond debootstrap's minimal base (`minbase`: apt, dpkg...).
pub const PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,procps";
/// The mirror when the host's apt sources name none.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// A file only a complete root has.
const COMPLETE: &str = "etc/os-release";

/// The cached root, bootstrapped first if it is not there (`debootstrap` must be installed:
/// `cargo xtask setup` installs it).
pub fn try_cached_root() -> Result<PathBuf, LabError> {
    let cache = PathBuf::from(CACHE);
    if cache.join(COMPLETE).exists() {
        return Ok(cache);
    }
    let parent = cache.parent().expect("the cache has a parent");
    let write = |path: &Path| {
        let path = path.display().to_string();
        move |source| LabError::Write { path, source }
    };
    fs::create_dir_all(parent).map_err(write(parent))?;
    let lock_path = parent.join("bookworm-root.lock");
    let lock = fs::File::create(&lock_path).map_err(write(&lock_path))?;
    // Released when dropped, at the end of this function.
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, errno)| write(&lock_path)(errno.into()))?;
    if cache.join(COMPLETE).exists() {
        return Ok(cache); // Another run built it while this one waited.
    }
    // What an interrupted build left (no other build runs: this one holds the lock).
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("bookworm-root.building-")
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let building = parent.join(format!("bookworm-root.building-{}", std::process::id()));
    let mirror = apt_mirror();
    let started = Instant::now();
    println!(
        "bootstrapping Debian 12 into {} from {mirror} (once: later runs use it)",
        cache.display()
    );
    let bootstrapped = run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
        ])
        .arg(&building)
        .arg(&mirror));
    if let Err(error) = bootstrapped.and_then(|_| prepare(&building)) {
        let _ = fs::remove_dir_all(&building);
        return Err(error);
    }
    fs::rename(&building, &cache).map_err(write(&cache))?;
    println!(
        "bootstrapped {} in {:.0} s",
        cache.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(cache)
}

/// [`try_cached_root`], panicking with the error.
pub fn cached_root() -> PathBuf {
    or_panic(try_cached_root())
}

/// What a test container needs of a fresh root: no timer running apt or dpkg behind the
/// test's back (it would hold dpkg's lock), an empty machine id (systemd makes one at each
/// boot), a hostname of its own.
fn prepare(root: &Path) -> Result<(), LabError> {
    let write = |path: &Path| {
        let path = path.display().to_string();
        move |source| LabError::Write { path, source }
    };
    let units = root.join("etc/systemd/system");
    fs::create_dir_all(&units).map_err(write(&units))?;
    for unit in [
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer",
        "e2scrub_all.timer",
    ] {
        let link = units.join(unit);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link).map_err(write(&link))?;
    }
    let machine_id = root.join("etc/machine-id");
    fs::write(&machine_id, "").map_err(write(&machine_id))?;
    let hostname = root.join("etc/hostname");
    fs::write(&hostname, "lb-gateway\n").map_err(write(&hostname))
}

/// The Debian mirror of the host's apt sources (`URIs:` of a deb822 `.sources` file, or a
/// `deb URL bookworm ...` line), else Debian's own (`deb.debian.org`).
pub fn apt_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter_map(|file| fs::read_to_string(file).ok())
        .find_map(|text| mirror_in(&text))
        .unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
}

/// The first Debian archive (not the security one) serving bookworm in a sources file.
fn mirror_in(text: &str) -> Option<String> {
    let is_debian = |uri: &str| uri.trim_end_matches('/').ends_with("/debian");
    // deb822: stanzas separated by blank lines.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        if let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) {
            if suites.split_whitespace().any(|s| s == "bookworm") {
                if let Some(uri) = uris.split_whitespace().find(|u| is_debian(u)) {
                    return Some(uri.to_owned());
                }
            }
        }
    }
    text.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["deb", uri, "bookworm", ..] if is_debian(uri) => Some((*uri).to_owned()),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_debian_mirror_in_both_source_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\n\
                      Suites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\n\
                      Suites: bookworm-security\n";
        assert_eq!(
            mirror_in(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let security = "Types: deb\nURIs: http://m/debian-security\nSuites: bookworm-security\n";
        assert_eq!(mirror_in(security), None);
        let one_line = "# comment\ndeb http://m.example/debian/ bookworm main\n";
        assert_eq!(
            mirror_in(one_line).as_deref(),
            Some("http://m.example/debian/")
        );
        assert_eq!(
            mirror_in("deb https://packages.example/apt cloud-sdk main\n"),
            None
        );
    }
}
