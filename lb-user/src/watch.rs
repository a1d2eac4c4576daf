//! Watching the configuration file for changes (inotify through the `notify` crate). The
//! directory is watched, not the file, so editors that replace the file by renaming a new one
//! over it are seen too.

use std::{ffi::OsString, path::Path, time::Duration};

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Quiet period after a change before it is reported: one save is often several events.
const SETTLE: Duration = Duration::from_millis(150);

/// Changes to one file.
pub struct FileWatch {
    _watcher: RecommendedWatcher,
    events: mpsc::Receiver<()>,
}

impl FileWatch {
    /// Waits for the next change. Cancel-safe (usable in `select!`); call [`Self::settle`]
    /// before acting on it.
    pub async fn changed(&mut self) -> Option<()> {
        self.events.recv().await
    }

    /// Waits for a burst of events (one save is often several) to end and swallows the rest.
    pub async fn settle(&mut self) {
        tokio::time::sleep(SETTLE).await;
        while self.events.try_recv().is_ok() {}
    }
}

/// Starts watching `path`.
pub fn watch_file(path: &Path) -> notify::Result<FileWatch> {
    let (tx, events) = mpsc::channel(16);
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
        if ours && (event.kind.is_modify() || event.kind.is_create()) {
            let _ = tx.try_send(());
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
        assert_eq!(seen, Ok(Some(())), "in-place write");
        watch.settle().await;

        let tmp = dir.join("lb.toml.tmp");
        std::fs::write(&tmp, "c").expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
        let seen = tokio::time::timeout(Duration::from_secs(2), watch.changed()).await;
        assert_eq!(seen, Ok(Some(())), "rename over the file");
        watch.settle().await;

        std::fs::write(dir.join("other"), "x").expect("write");
        let seen = tokio::time::timeout(Duration::from_millis(400), watch.changed()).await;
        assert!(
            seen.is_err(),
            "another file in the directory is not a change"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
