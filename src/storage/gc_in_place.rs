//! Garbage collection of blobs committed in place (`blob_index.rs`): index records no
//! kept link names go with their data, and data objects nothing indexes (a session that
//! was abandoned mid-commit, a process killed between completing and indexing) go once
//! older than the grace period and no session owns them.

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use object_store::path::Path;

use super::Store;
use super::blob_index::BlobIndex;
use super::error::{Result, StorageError};
use super::gc::{Deleted, GcOptions, GcReport};
use super::layout::Key;
use super::sweep_gate::Sweep;
use crate::oci::Digest;

const CONCURRENCY: usize = 32;

fn timestamp(meta: &object_store::ObjectMeta) -> Option<Timestamp> {
    let nanos = meta.last_modified.timestamp_nanos_opt()?;
    Timestamp::from_nanosecond(nanos as i128).ok()
}

impl Store {
    pub(super) async fn sweep_in_place(
        &self,
        sweep: &Sweep,
        options: &GcOptions,
        now: Timestamp,
        live: &HashSet<Digest>,
        report: &mut GcReport,
    ) -> Result<()> {
        let grace_cutoff = now - options.grace;
        // Data objects first, and whether their session still exists, then the index:
        // a commit indexes its data before it deletes its session, so data whose
        // session is gone by now is indexed in the listing that follows, if at all.
        let data = self.list_objects(&Key::BlobDataAll.path()).await?;
        let old: Vec<Path> = data
            .into_iter()
            .filter(|meta| timestamp(meta).is_some_and(|t| t <= grace_cutoff))
            .map(|meta| meta.location)
            .collect();
        let sessions: HashSet<String> = old
            .iter()
            .filter_map(|key| key.parts().nth(1).map(|p| p.as_ref().to_string()))
            .collect();
        let owned: HashSet<String> = stream::iter(sessions)
            .map(|id| async move {
                let exists = self.exists(&Key::UploadState(&id).path()).await?;
                Ok::<_, StorageError>(exists.then_some(id))
            })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|id| async move { Ok(id) })
            .try_collect()
            .await?;
        let orphans: Vec<Path> = old
            .into_iter()
            .filter(|key| {
                key.parts()
                    .nth(1)
                    .is_some_and(|id| !owned.contains(id.as_ref()))
            })
            .collect();

        let indexed: Vec<(Digest, Timestamp, BlobIndex)> =
            stream::iter(self.list_objects(&Key::BlobIndexAll.path()).await?)
                .filter_map(|meta| async move {
                    let parts: Vec<_> = meta.location.parts().collect();
                    let [.., alg, hex] = parts.as_slice() else {
                        return None;
                    };
                    let digest = format!("{}:{}", alg.as_ref(), hex.as_ref())
                        .parse::<Digest>()
                        .ok()?;
                    Some((digest, timestamp(&meta)?))
                })
                .map(|(digest, written)| async move {
                    let index: Option<BlobIndex> =
                        self.get_json(&Key::BlobIndex(&digest).path()).await?;
                    Ok::<_, StorageError>(index.map(|index| (digest, written, index)))
                })
                .buffer_unordered(CONCURRENCY)
                .try_filter_map(|found| async move { Ok(found) })
                .try_collect()
                .await?;

        let mut referenced: HashSet<String> = HashSet::new();
        let mut doomed = Vec::new();
        for (digest, written, index) in indexed {
            if live.contains(&digest) {
                referenced.insert(index.data);
            } else if written > grace_cutoff {
                report.kept_recent += 1;
                referenced.insert(index.data);
            } else {
                doomed.push((digest, index));
            }
        }
        for (digest, index) in doomed {
            match self
                .delete_unclaimed(sweep, &Key::BlobIndex(&digest).path())
                .await?
            {
                Deleted::Yes => {
                    self.index_cache.forget(&digest);
                    sweep.check_fence()?;
                    self.delete(&Path::from(index.data.as_str())).await?;
                    tracing::debug!(%digest, bytes = index.size, "deleted content nothing references");
                    report.blobs_deleted += 1;
                    report.bytes_freed += index.size;
                }
                Deleted::Gone => {}
                Deleted::Claimed => {
                    report.kept_claimed += 1;
                    referenced.insert(index.data);
                }
            }
        }
        for key in orphans {
            if referenced.contains(key.as_ref()) {
                continue;
            }
            sweep.check_fence()?;
            if self.delete(&key).await? {
                tracing::debug!(%key, "deleted upload data no index names");
            }
        }
        Ok(())
    }

    async fn list_objects(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>> {
        self.objects
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| StorageError::backend("list", prefix, e))
    }
}
