//! Writing one part of an upload (the body of one PATCH or PUT) while hashing it.
//!
//! Hashing runs beside receiving and writing, never in line with them: SHA-256 costs
//! about as much CPU as the rest of a push, so in line it nearly halved throughput.
//! On a local directory the part is written straight to its file (`local_write.rs`);
//! on an object store it goes out as a multipart upload while `pipeline.rs` hashes.

use std::fmt::Display;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::WriteMultipart;
use object_store::path::Path;

use super::Store;
use super::error::{Result, StorageError};
use super::hasher::Hasher;
use super::local::LocalDir;
use super::local_write::LocalPartWriter;
use super::pipeline::HashPipeline;
use super::uploads::{PART_CHUNK, PARTS_IN_FLIGHT};

/// A failure of berth's own writing or hashing tasks, reported as a backend failure
/// (a 500, and the upload stays open for a retry).
pub(super) fn task_failed(
    op: &'static str,
    key: &Path,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StorageError {
    StorageError::backend(
        op,
        key,
        object_store::Error::Generic {
            store: "berth",
            source: Box::new(e),
        },
    )
}

impl Store {
    /// Streams `body` into a new object at `key`, hashing on the way. Nothing is left
    /// behind if the body fails part-way; an empty body writes nothing. `hasher` moves
    /// on only when every byte is both written and hashed.
    pub(super) async fn write_part<S, E>(
        &self,
        key: &Path,
        hasher: &mut Hasher,
        mut body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let first = loop {
            match body.next().await {
                None => return Ok(0),
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => break chunk,
                Some(Err(e)) => return Err(StorageError::BodyRead(e.to_string())),
            }
        };
        // Reserved before any buffer is allocated, held until the part is written.
        let _memory = self.upload_budget.reserve(self.upload_working_set()).await;
        let (written, hashed) = match &self.local {
            Some(local) => write_local(local, key, hasher.clone(), first, body).await?,
            None => self.write_remote(key, hasher.clone(), first, body).await?,
        };
        *hasher = hashed;
        Ok(written)
    }

    async fn write_remote<S, E>(
        &self,
        key: &Path,
        hasher: Hasher,
        first: Bytes,
        mut body: S,
    ) -> Result<(u64, Hasher)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let upload = self
            .os_put_multipart(key)
            .await
            .map_err(|e| StorageError::backend("start writing", key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_CHUNK);
        let mut hashing = HashPipeline::new(hasher);
        let mut written = 0u64;
        let mut next: Option<std::result::Result<Bytes, E>> = Some(Ok(first));
        while let Some(item) = next {
            let failed = match item {
                Ok(chunk) => {
                    written += chunk.len() as u64;
                    match hashing.update(chunk.clone()).await {
                        Err(e) => Some(task_failed("hash", key, e)),
                        Ok(()) => match writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                            Err(e) => Some(StorageError::backend("write", key, e)),
                            Ok(()) => {
                                writer.put(chunk);
                                None
                            }
                        },
                    }
                }
                Err(e) => Some(StorageError::BodyRead(e.to_string())),
            };
            if let Some(error) = failed {
                let _ = writer.abort().await;
                return Err(error);
            }
            next = body.next().await;
        }
        let (written_out, hashed) = tokio::join!(writer.finish(), hashing.finish());
        written_out.map_err(|e| StorageError::backend("finish writing", key, e))?;
        let hasher = hashed.map_err(|e| task_failed("hash", key, e))?;
        Ok((written, hasher))
    }
}

async fn write_local<S, E>(
    local: &LocalDir,
    key: &Path,
    hasher: Hasher,
    first: Bytes,
    mut body: S,
) -> Result<(u64, Hasher)>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: Display,
{
    let mut writer = LocalPartWriter::create(local.file_path(key)?, hasher)
        .await
        .map_err(|e| task_failed("start writing", key, e))?;
    let mut written = 0u64;
    let mut next: Option<std::result::Result<Bytes, E>> = Some(Ok(first));
    while let Some(item) = next {
        // On any error the writer is dropped, which removes its file.
        let chunk = item.map_err(|e| StorageError::BodyRead(e.to_string()))?;
        written += chunk.len() as u64;
        writer
            .write(&chunk)
            .await
            .map_err(|e| task_failed("write", key, e))?;
        next = body.next().await;
    }
    let hasher = writer
        .finish()
        .await
        .map_err(|e| task_failed("finish writing", key, e))?;
    Ok((written, hasher))
}
