//! Blobs as a repository sees them: content in the shared store, visible to a
//! repository only through its link.

use super::Store;
use super::error::{Result, StorageError};
use super::layout::Key;
use super::read::{BlobBody, ByteRange, open_range};
use super::sweep_marker::Crossed;
use crate::oci::{Digest, RepositoryName};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobStat {
    pub size: u64,
}

impl Store {
    /// The blob's size, if `repo` links it.
    pub async fn stat_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<BlobStat>> {
        let key = Key::BlobLink(repo, digest).path();
        let Some(link) = self.get_small(&key).await? else {
            return Ok(None);
        };
        let size = std::str::from_utf8(&link)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| StorageError::corrupt(&key, "blob link does not hold a size"))?;
        Ok(Some(BlobStat { size }))
    }

    /// Opens the blob for streaming, whole or the requested range. `Ok(None)` when the
    /// range selects nothing in the blob (the caller answers 416).
    pub async fn read_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<BlobBody>> {
        let stat = self
            .stat_blob(repo, digest)
            .await?
            .ok_or_else(|| StorageError::BlobUnknown(digest.clone()))?;
        let span = match range {
            None => 0..stat.size,
            Some(r) => match r.resolve(stat.size) {
                Some(span) => span,
                None => return Ok(None),
            },
        };
        let key = self.content_key(digest).await?;
        match open_range(
            self.objects.as_ref(),
            self.local.as_ref(),
            &key,
            span.clone(),
            stat.size,
        )
        .await
        {
            Err(StorageError::Corrupt { .. }) if self.local.is_none() => {
                // The remembered place may be gone (collected, and the blob pushed
                // again since): look it up afresh, once.
                self.index_cache.forget(digest);
                let key = self.content_key(digest).await?;
                open_range(self.objects.as_ref(), None, &key, span, stat.size)
                    .await
                    .map(Some)
            }
            opened => opened.map(Some),
        }
    }

    /// Records that `repo` holds the (already stored and verified) blob.
    pub(super) async fn link_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        self.put_bytes(&Key::BlobLink(repo, digest).path(), size.to_string().into())
            .await
    }

    /// Cross-repository mount: links a blob `from` another repository (or, without `from`,
    /// from anywhere in the store) into `repo`, without moving any bytes. Returns the
    /// blob's size, or `None` when there is nothing to mount and the client must upload.
    pub async fn mount_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        from: Option<&RepositoryName>,
    ) -> Result<Option<u64>> {
        // Only a link is written: a sweep on another replica may delete the content
        // between the check below and the link (see `sweep_gate.rs`).
        let window = self.open_sweep_window().await?;
        let pass = self
            .sweeps
            .enter([
                Key::Blob(digest).path().to_string(),
                Key::BlobIndex(digest).path().to_string(),
                Key::BlobLink(repo, digest).path().to_string(),
            ])
            .await;
        let size = match from {
            Some(from) => match self.stat_blob(from, digest).await? {
                Some(stat) => stat.size,
                None => return Ok(None),
            },
            None => match self.content_size(digest).await? {
                Some(size) => size,
                None => return Ok(None),
            },
        };
        let link = Key::BlobLink(repo, digest).path();
        self.link_blob(repo, digest, size).await?;
        drop(pass);
        if !self.sweep_crossed(&window).await? {
            return Ok(Some(size));
        }
        if self.content_survived(digest).await? {
            self.count_crossed(Crossed::kept);
            return Ok(Some(size));
        }
        // Collected while it was being mounted: the link goes, and the client uploads
        // the blob (202, as for a blob that is not there to mount).
        self.delete(&link).await?;
        self.count_crossed(Crossed::refused);
        tracing::info!(repository = %repo, %digest, "a garbage collection deleted the blob being mounted; asking for an upload");
        Ok(None)
    }

    /// Whether the content of `digest` is still stored, read afresh (not from the cache
    /// of index records).
    pub(super) async fn content_survived(&self, digest: &Digest) -> Result<bool> {
        self.index_cache.forget(digest);
        Ok(self.content_size(digest).await?.is_some())
    }

    /// Removes the blob from `repo`. The content stays until garbage collection finds
    /// nothing else uses it. Returns whether the repository had it.
    pub async fn delete_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool> {
        self.delete(&Key::BlobLink(repo, digest).path()).await
    }
}
