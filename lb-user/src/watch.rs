//! Watching the configuration file for changes (inotify through the `notify` crate). The
//! directory is watched, not the file, so editors that replace the file by renaming a new one
//! over it are seen too.

use std::{ffi::OsString, path::Path, time::Duration};

use notify::{
    event::{AccessKind, AccessMode, ModifyKind, RenameMode},
    EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
};
use tokio::sync::mpsc;

/// Quiet period after an event that ends a save (the file closed after writing, or renamed
/// over): a save by rename is one event, so this only gathers what came with it.
const SETTLE_COMPLETE: Duration = Duration::from_millis(10);
/// Quiet period after an event that may be followed by more of the same save (a write before
/// the file is closed, a creation).
const SETTLE_PARTIAL: Duration = Duration::from_millis(150);

/// One event on the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A save ended: written and closed, or renamed over the file.
    Complete,
    /// Part of a save: more may follow.
    Partial,
}

impl Change {
    /// What inotify's `kind` says of a save, if it is a change of the file at all.
    fn of(kind: &EventKind) -> Option<Self> {
        match kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
                Some(Self::Complete)
            }
            EventKind::Modify(_) | EventKind::Create(_) => Some(Self::Partial),
            EventKind::Any | EventKind::Access(_) | EventKind::Remove(_) | EventKind::Other => None,
        }
    }

    /// How long to wait for another event before acting on this one.
    fn quiet(self) -> Duration {
        match self {
            Self::Complete => SETTLE_COMPLETE,
            Self::Partial => SETTLE_PARTIAL,
        }
    }
}

/// Changes to one file.
pub struct FileWatch {
    _watcher: RecommendedWatcher,
    events: mpsc::Receiver<Change>,
}

impl FileWatch {
    /// Waits for the next change. Cancel-safe (usable in `select!`); call [`Self::settle`]
    /// with it before acting on it.
    pub async fn changed(&mut self) -> Option<Change> {
        self.events.recv().await
    }

    /// Waits until the save that `first` began is over: no event for the quiet period of the
    /// last one (10 ms after a close or a rename, 150 ms after a write that may go on).
    pub async fn settle(&mut self, first: Change) {
        let mut last = first;
        while let Ok(Some(next)) = tokio::time::timeout(last.quiet(), self.events.recv()).await {
            last = next;
        }
    }
}

/// Starts watching `path`.
pub fn watch_file(path: &Path) -> notify::Result<FileWatch> {
    let (tx, events) = mpsc::channel(64);
    let name: Option<OsString> = path.file_name().map(ToOwned::to_owned);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let ours = event
            .paths
            .iter()
            .any(|p| p.file_name().map(ToOwned::to_owned) == name);
        if let (true, Some(change)) = (ours, Change::of(&event.kind)) {
            let _ = tx.try_send(change);
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(FileWatch {
        _watcher: watcher,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_writes_and_renames_over_the_file() {
        let dir = std::env::temp_dir().join(format!("lb-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("lb.toml");
        std::fs::write(&file, "a").expect("write");
        let mut watch = watch_file(&file).expect("watch");

        std::fs::write(&file, "b").expect("write");
        let seen = tokio::time::timeout(Duration::from_secs(2), watch.changed()).await;
        let Ok(Some(first)) = seen else {
            panic!("an in-place write is not seen: {seen:?}")
        };
        assert_eq!(first, Change::Partial, "the write before the close");
        let settled = std::time::Instant::now();
        watch.settle(first).await;
        assert!(
            settled.elapsed() < SETTLE_PARTIAL,
            "the close ends the save: {:?}",
            settled.elapsed()
        );

        let tmp = dir.join("lb.toml.tmp");
        std::fs::write(&tmp, "c").expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
        let seen = tokio::time::timeout(Duration::from_secs(2), watch.changed()).await;
        assert_eq!(seen, Ok(Some(Change::Complete)), "rename over the file");
        watch.settle(Change::Complete).await;

        // A write left open is waited for: its save may go on.
        let mut open = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .expect("open");
        std::io::Write::write_all(&mut open, b"d").expect("write");
        let seen = tokio::time::timeout(Duration::from_secs(2), watch.changed()).await;
        assert_eq!(seen, Ok(Some(Change::Partial)), "a write");
        let settled = std::time::Instant::now();
        watch.settle(Change::Partial).await;
        assert!(settled.elapsed() >= SETTLE_PARTIAL);
        drop(open);
        let seen = tokio::time::timeout(Duration::from_secs(2), watch.changed()).await;
        assert_eq!(seen, Ok(Some(Change::Complete)), "its close");
        watch.settle(Change::Complete).await;

        std::fs::write(dir.join("other"), "x").expect("write");
        let seen = tokio::time::timeout(Duration::from_millis(400), watch.changed()).await;
        assert!(
            seen.is_err(),
            "another file in the directory is not a change"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
