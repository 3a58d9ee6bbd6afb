//! Abandoned uploads: a client that starts an upload and goes away (or a process killed
//! between deleting a session's state and its parts) leaves objects under `uploads/`
//! that no request will ever finish. Sessions untouched for longer than an expiry are
//! deleted, as distribution's upload purging does (it defaults to a week).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;

use super::Store;
use super::error::{Result, StorageError};
use super::layout::Key;

impl Store {
    /// Deletes the upload sessions whose newest object is older than `max_age`, and
    /// returns how many. A session a request of this process is working on is kept,
    /// whatever its age.
    pub async fn expire_uploads(&self, max_age: Duration) -> Result<usize> {
        let cutoff = now_secs().saturating_sub(max_age.as_secs() as i64);
        let mut expired = 0;
        for (id, seen) in self.upload_sessions(None).await? {
            if seen.written > cutoff || self.uploads.is_busy(&id) {
                continue;
            }
            if seen.empty {
                // An empty folder older than the expiry (a fresh one may be a session
                // whose first file is being written): finished uploads of older
                // versions left these. No session, so not counted.
                self.discard_upload(&id).await?;
                continue;
            }
            let _guard = self.uploads.lock(&id).await;
            // A request may have added to it while this waited for the lock.
            let still_idle = self
                .upload_sessions(Some(&id))
                .await?
                .get(&id)
                .is_some_and(|seen| seen.written <= cutoff);
            if still_idle {
                self.discard_upload(&id).await?;
                if let Some(local) = &self.local {
                    // What object_store does not know of: staging files of cut-off writes.
                    let dir = local.file_path(&Key::Upload(&id).path())?;
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                }
                tracing::info!(upload = %id, "deleted an upload abandoned for longer than the expiry");
                expired += 1;
            }
        }
        Ok(expired)
    }

    /// The upload sessions (or only session `only`), each with the time of its newest
    /// object in seconds since the epoch: a chunk appended yesterday keeps a week-old
    /// session alive.
    async fn upload_sessions(&self, only: Option<&str>) -> Result<HashMap<String, Seen>> {
        let all = Key::Uploads.path();
        if let Some(local) = &self.local {
            // On disk, also the staging files of writes a crash interrupted, which
            // object_store does not list.
            let dir = local.file_path(&all)?;
            let only = only.map(str::to_string);
            return tokio::task::spawn_blocking(move || newest_files(&dir, only.as_deref()))
                .await
                .map_err(|e| StorageError::backend("list", &all, e.into()))?
                .map_err(|e| super::local::io_error("list", &all, e));
        }
        let prefix = match only {
            Some(id) => Key::Upload(id).path(),
            None => all,
        };
        let prefix = &prefix;
        let objects: Vec<_> = self
            .objects
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| StorageError::backend("list", prefix, e))?;
        let mut newest: HashMap<String, Seen> = HashMap::new();
        for object in objects {
            // uploads/<id>/state, uploads/<id>/parts/<offset>
            let Some(id) = object.location.parts().nth(1) else {
                continue;
            };
            let written = object.last_modified.timestamp();
            newest
                .entry(id.as_ref().to_string())
                .and_modify(|t| t.written = t.written.max(written))
                .or_insert(Seen {
                    written,
                    empty: false,
                });
        }
        Ok(newest)
    }
}

/// A session as found in storage.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When its newest object was written (seconds since the epoch); for a folder
    /// without any file, when the folder was.
    written: i64,
    /// A folder without any file (only on a local directory).
    empty: bool,
}

/// For each session folder in `uploads` (or only `only`), when it was last written.
fn newest_files(uploads: &Path, only: Option<&str>) -> std::io::Result<HashMap<String, Seen>> {
    /// The newest file's time under `path`, `None` when it holds no file.
    fn newest_under(path: &Path) -> std::io::Result<Option<i64>> {
        let meta = std::fs::symlink_metadata(path)?;
        if !meta.is_dir() {
            return Ok(Some(seconds(meta.modified()?)));
        }
        // Folders do not count: removing a finished part touches them too.
        let mut newest = None;
        for entry in std::fs::read_dir(path)? {
            newest = newest.max(newest_under(&entry?.path())?);
        }
        Ok(newest)
    }
    fn seen(path: &Path) -> std::io::Result<Seen> {
        Ok(match newest_under(path)? {
            Some(written) => Seen {
                written,
                empty: false,
            },
            None => Seen {
                written: seconds(std::fs::metadata(path)?.modified()?),
                empty: true,
            },
        })
    }
    let mut sessions = HashMap::new();
    let entries = match std::fs::read_dir(uploads) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(sessions),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(id) = entry.file_name().into_string() else {
            continue;
        };
        if only.is_some_and(|only| only != id) {
            continue;
        }
        match seen(&entry.path()) {
            Ok(found) => {
                sessions.insert(id, found);
            }
            // Deleted while we looked: a request finished it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sessions)
}

fn seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn now_secs() -> i64 {
    seconds(SystemTime::now())
}

/// Runs [`Store::expire_uploads`] at start and every hour, counting what it deletes,
/// whenever `leading` says this process is the one of its replicas that cleans up
/// (the others would only repeat its listing); a replica that becomes the leader runs
/// it within a second.
pub async fn expire_uploads_periodically(
    store: Store,
    max_age: Duration,
    expired: prometheus_client::metrics::counter::Counter,
    leading: impl Fn() -> bool + Send + 'static,
) {
    const EVERY: Duration = Duration::from_secs(3600);
    const LEADERSHIP_POLL: Duration = Duration::from_secs(1);
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        if !leading() {
            next = tokio::time::Instant::now() + LEADERSHIP_POLL;
            continue;
        }
        next = tokio::time::Instant::now() + EVERY;
        match store.expire_uploads(max_age).await {
            Ok(0) => {}
            Ok(n) => {
                expired.inc_by(n as u64);
                tracing::info!(count = n, "expired abandoned uploads");
            }
            Err(e) => {
                tracing::warn!(error = %e, "expiring abandoned uploads failed; trying again in an hour")
            }
        }
    }
}
