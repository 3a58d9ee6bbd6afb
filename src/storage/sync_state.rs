//! What a standalone SyncRule must remember across restarts: when it was first seen,
//! so the tags pushed since (and only those, without `syncExisting`) are its to copy.
//! In a cluster the resource's creationTimestamp says it.

use jiff::Timestamp;
use object_store::{PutMode, PutOptions, PutPayload};

use super::Store;
use super::error::{Result, StorageError};
use super::layout::Key;

impl Store {
    /// When the rule `name` was first seen: recorded now if never before (create-only,
    /// so two processes on one store agree).
    pub async fn sync_rule_since(&self, name: &str) -> Result<Timestamp> {
        let key = Key::SyncSince(name).path();
        let now = Timestamp::now();
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .objects
            .put_opts(
                &key,
                PutPayload::from(now.to_string().into_bytes()),
                options,
            )
            .await
        {
            Ok(_) => Ok(now),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let bytes = self
                    .get_small(&key)
                    .await?
                    .ok_or_else(|| StorageError::corrupt(&key, "vanished"))?;
                String::from_utf8_lossy(&bytes)
                    .trim()
                    .parse()
                    .map_err(|e| StorageError::corrupt(&key, e))
            }
            Err(e) => Err(StorageError::backend("write", &key, e)),
        }
    }
}
