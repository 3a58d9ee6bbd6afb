//! The lease object that `berth serve` replicas sharing a bucket elect a leader with
//! (see `crate::replicas::lease`): created with `If-None-Match`, renewed and taken over
//! with `If-Match`, so of two replicas writing at once exactly one succeeds.

use object_store::UpdateVersion;
use serde::{Deserialize, Serialize};

use super::Store;
use super::error::{Result, StorageError};
use super::layout::Key;

/// Who leads, as the lease object records it. `renewed_at` is written by the holder's
/// clock and only informational: expiry is judged on the reader's own clock from how
/// long the record stayed unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketLease {
    pub holder: String,
    pub acquired_at: String,
    pub renewed_at: String,
    pub duration_ms: u64,
    pub transitions: u64,
}

/// The version of the lease object a conditional replace names.
#[derive(Debug, Clone)]
pub struct LeaseVersion(UpdateVersion);

impl LeaseVersion {
    /// Whether the object changed between two reads.
    pub fn same_as(&self, other: &LeaseVersion) -> bool {
        self.0.e_tag == other.0.e_tag && self.0.version == other.0.version
    }
}

impl Store {
    /// The lease and its version; `None` when no replica ever took it.
    pub async fn read_lease(&self) -> Result<Option<(BucketLease, LeaseVersion)>> {
        let key = Key::LeaderLease.path();
        let result = match self.os_get(&key, Default::default()).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(StorageError::backend("read", &key, e)),
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let bytes = result
            .bytes()
            .await
            .map_err(|e| StorageError::backend("read", &key, e))?;
        let lease = serde_json::from_slice(&bytes).map_err(|e| StorageError::corrupt(&key, e))?;
        Ok(Some((lease, LeaseVersion(version))))
    }

    /// Writes the lease if there is none (`None`) or if it is still at `version`;
    /// `false` when another replica wrote it first.
    pub async fn write_lease(
        &self,
        lease: &BucketLease,
        version: Option<&LeaseVersion>,
    ) -> Result<bool> {
        let key = Key::LeaderLease.path();
        let version = version.map(|v| v.0.clone());
        Ok(self.put_json_if(&key, lease, version).await?.is_some())
    }
}
