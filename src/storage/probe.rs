//! Whether the store answers at all, for the readiness probe: one listing of a prefix
//! nothing is stored under, so its cost does not grow with the registry (a catalog
//! listing would page through every repository each few seconds on every replica).
//! A listing, not a HEAD: S3 answers a HEAD in a missing bucket with the same 404 as a
//! missing key, while a listing fails with NoSuchBucket.

use futures::StreamExt;

use super::Store;
use super::error::{Result, StorageError};
use super::layout::Key;

impl Store {
    /// `Ok` when the store answered a listing: reachable, the bucket there, the
    /// credentials accepted. Retries inside the object store client can make this slow
    /// when the store is down: callers bound it with a timeout.
    pub async fn check_reachable(&self) -> Result<()> {
        let prefix = Key::Probe.path();
        match self.objects.list(Some(&prefix)).next().await {
            Some(Err(e)) => Err(StorageError::backend("list", &prefix, e)),
            Some(Ok(_)) | None => Ok(()),
        }
    }
}
