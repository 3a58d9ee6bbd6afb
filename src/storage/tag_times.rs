//! When each tag was last written: a trigger's catch-up compares a workload with the
//! most recently pushed matching tag.

use jiff::Timestamp;

use super::Store;
use super::error::{Result, StorageError};
use super::layout::Key;
use crate::oci::RepositoryName;

impl Store {
    /// Every tag of `repo` with the time its pointer was last written (its last push),
    /// unordered; empty when the repository has none. One delimited listing, no reads.
    /// The time has the backend's precision: nanoseconds on a filesystem, seconds on S3.
    pub async fn tag_times(&self, repo: &RepositoryName) -> Result<Vec<(String, Timestamp)>> {
        let prefix = Key::Tags(repo).path();
        let listing = self
            .objects
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| StorageError::backend("list", &prefix, e))?;
        Ok(listing
            .objects
            .iter()
            .filter_map(|o| {
                let tag = o.location.filename()?.to_string();
                let nanos = o.last_modified.timestamp_nanos_opt()?;
                let at = Timestamp::from_nanosecond(nanos as i128).ok()?;
                Some((tag, at))
            })
            .collect())
    }
}
