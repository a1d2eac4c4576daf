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
    /// Waits for the next change (a burst of events counts once).
    pub async fn changed(&mut self) -> Option<()> {
        self.events.recv().await?;
        tokio::time::sleep(SETTLE).await;
        while self.events.try_recv().is_ok() {}
        Some(())
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
        let ours = event.paths.iter().any(|p| p.file_name().map(ToOwned::to_owned) == name);
        if ours && (event.kind.is_modify() || event.kind.is_create()) {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(FileWatch { _watcher: watcher, events })
}
