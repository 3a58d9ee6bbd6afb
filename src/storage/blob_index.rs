//! Blobs committed in place: on S3 an upload's bytes stay in the object they were
//! written to (`blob-data/<session>/…`), and a small index record, written once and
//! create-only after the bytes were verified against the digest, says where.
//!
//! Blobs written before (and manifests, and every blob on a local directory) live at
//! their content key `blobs/<alg>/<hex>`; a digest without an index record is read
//! there, so no migration is needed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::Store;
use super::error::{Result, StorageError};
use super::layout::Key;
use crate::oci::Digest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct BlobIndex {
    /// The key of the object holding the blob's bytes.
    pub data: String,
    pub size: u64,
}

/// Entries kept before the cache starts over: a few MiB at most.
const CACHED: usize = 50_000;

/// Index records seen by this process. A record is never rewritten while it exists
/// (content-addressed, create-only); one that garbage collection deleted is found
/// out when its data is missing, and read again.
#[derive(Clone, Default)]
pub(super) struct IndexCache(Arc<Mutex<HashMap<Digest, Path>>>);

impl IndexCache {
    fn get(&self, digest: &Digest) -> Option<Path> {
        self.0.lock().expect("index cache").get(digest).cloned()
    }

    fn insert(&self, digest: &Digest, data: Path) {
        let mut map = self.0.lock().expect("index cache");
        if map.len() >= CACHED {
            map.clear();
        }
        map.insert(digest.clone(), data);
    }

    pub fn forget(&self, digest: &Digest) {
        self.0.lock().expect("index cache").remove(digest);
    }
}

/// Whether an index record was written, or one for the digest existed already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Indexed {
    Written,
    Existed,
}

impl Store {
    /// The index record of `digest`, if the blob was committed in place.
    pub(super) async fn blob_index(&self, digest: &Digest) -> Result<Option<BlobIndex>> {
        if self.local.is_some() {
            return Ok(None);
        }
        self.get_json(&Key::BlobIndex(digest).path()).await
    }

    /// The key of the object holding the blob's bytes: its in-place data object, or
    /// else its content key.
    pub(super) async fn content_key(&self, digest: &Digest) -> Result<Path> {
        if self.local.is_some() {
            return Ok(Key::Blob(digest).path());
        }
        if let Some(data) = self.index_cache.get(digest) {
            return Ok(data);
        }
        match self.blob_index(digest).await? {
            Some(index) => {
                let data = Path::from(index.data);
                self.index_cache.insert(digest, data.clone());
                Ok(data)
            }
            None => Ok(Key::Blob(digest).path()),
        }
    }

    /// The size of the stored content of `digest`, wherever it lives; `None` when the
    /// store does not hold it.
    pub(super) async fn content_size(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some(index) = self.blob_index(digest).await? {
            return Ok(Some(index.size));
        }
        let key = Key::Blob(digest).path();
        match self.os_head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::backend("stat", &key, e)),
        }
    }

    /// Records, create-only, that `digest` lives at `data`. Only ever called with bytes
    /// verified against `digest`.
    pub(super) async fn write_index(
        &self,
        digest: &Digest,
        data: &Path,
        size: u64,
    ) -> Result<Indexed> {
        let key = Key::BlobIndex(digest).path();
        let record = BlobIndex {
            data: data.to_string(),
            size,
        };
        let body = Bytes::from(serde_json::to_vec(&record).expect("index records serialize"));
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .objects
            .put_opts(&key, PutPayload::from_bytes(body), options)
            .await
        {
            Ok(_) => {
                self.index_cache.insert(digest, data.clone());
                Ok(Indexed::Written)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Indexed::Existed),
            Err(e) => Err(StorageError::backend("write", &key, e)),
        }
    }
}
