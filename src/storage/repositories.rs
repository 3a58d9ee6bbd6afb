//! Whole-repository views: usage figures for resource status, and removing a
//! repository's content when its resource is deleted with `deletionPolicy: Delete`.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;

use super::Store;
use super::error::{Result, StorageError};
use super::layout::Key;
use crate::oci::RepositoryName;

/// Reads of link objects run this many at once when summing sizes.
const STAT_CONCURRENCY: usize = 32;

/// What a repository holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepositoryUsage {
    pub tags: u64,
    /// Bytes of every blob linked into the repository (layers and configs) plus its manifests.
    pub bytes: u64,
    /// When a tag was last written, as seconds since the Unix epoch.
    pub last_push: Option<i64>,
}

impl Store {
    pub async fn repository_usage(&self, repo: &RepositoryName) -> Result<RepositoryUsage> {
        let tags_prefix = Key::Tags(repo).path();
        let tags: Vec<_> = self
            .objects
            .list(Some(&tags_prefix))
            .try_collect()
            .await
            .map_err(|e| StorageError::backend("list", &tags_prefix, e))?;
        let last_push = tags.iter().map(|t| t.last_modified.timestamp()).max();

        let mut bytes = 0;
        for prefix in [Key::BlobLinks(repo).path(), Key::ManifestLinks(repo).path()] {
            let links: Vec<Path> = self
                .objects
                .list(Some(&prefix))
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .map_err(|e| StorageError::backend("list", &prefix, e))?;
            let store = self.clone();
            let sizes: Vec<u64> = futures::stream::iter(links)
                .map(move |key| {
                    let store = store.clone();
                    async move { store.link_size(&key).await }
                })
                .buffer_unordered(STAT_CONCURRENCY)
                .try_collect()
                .await?;
            bytes += sizes.iter().sum::<u64>();
        }
        Ok(RepositoryUsage {
            tags: tags.len() as u64,
            bytes,
            last_push,
        })
    }

    /// Size recorded in a blob link (a decimal number) or a manifest link (JSON with `size`).
    async fn link_size(&self, key: &Path) -> Result<u64> {
        let Some(data) = self.get_small(key).await? else {
            return Ok(0); // deleted while we listed
        };
        if let Ok(size) = std::str::from_utf8(&data)
            .unwrap_or("")
            .trim()
            .parse::<u64>()
        {
            return Ok(size);
        }
        let link: super::ManifestLink =
            serde_json::from_slice(&data).map_err(|e| StorageError::corrupt(key, e))?;
        Ok(link.size)
    }

    /// Removes every tag, manifest and blob link of the repository. Tags go first, so a
    /// reader never finds a tag whose manifest is gone. Shared blob content stays for
    /// garbage collection. Returns how many objects were removed.
    pub async fn delete_repository(&self, repo: &RepositoryName) -> Result<u64> {
        let mut removed = 0;
        for prefix in [
            Key::Tags(repo).path(),
            Key::ReferrersAll(repo).path(),
            Key::ManifestLinks(repo).path(),
            Key::Repository(repo).path(),
            Key::PullCountsAll(repo).path(),
        ] {
            let keys: Vec<Path> = self
                .objects
                .list(Some(&prefix))
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .map_err(|e| StorageError::backend("list", &prefix, e))?;
            for key in keys {
                if self.delete(&key).await? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
