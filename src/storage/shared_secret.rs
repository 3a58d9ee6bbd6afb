//! The signing key of `berth serve` processes sharing a bucket: the first to start
//! creates it with a create-only put, every other (and every restart) reads it, so a
//! token or credential issued by one replica verifies on all of them.

use bytes::Bytes;
use object_store::{PutMode, PutOptions, PutPayload};

use super::Store;
use super::error::{Result, StorageError};
use super::layout::Key;

impl Store {
    /// The shared signing key's bytes, created from `generate` if the store has none.
    /// Two processes starting together agree: the loser of the create reads the winner's.
    pub async fn shared_signing_key(&self, generate: impl FnOnce() -> Vec<u8>) -> Result<Bytes> {
        let key = Key::SigningKey.path();
        if let Some(existing) = self.get_small(&key).await? {
            return Ok(existing);
        }
        let fresh = Bytes::from(generate());
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .objects
            .put_opts(&key, PutPayload::from_bytes(fresh.clone()), options)
            .await
        {
            Ok(_) => Ok(fresh),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => self
                .get_small(&key)
                .await?
                .ok_or_else(|| StorageError::corrupt(&key, "vanished right after it was created")),
            Err(e) => Err(StorageError::backend("create", &key, e)),
        }
    }
}
