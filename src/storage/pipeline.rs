//! Hashing beside the transfer. SHA-256 of an upload costs about as much CPU as
//! receiving and writing it, so done inline it halves push throughput. Here the request
//! task collects chunks into batches and hashes each batch on a blocking thread while it
//! goes on receiving the next one.
//!
//! At most one batch is being hashed and one is filling, so memory stays bounded
//! whatever the blob size, and a slow hash slows the sender (TCP back-pressure) rather
//! than queueing bytes. A blocking task is held only while it has bytes to hash, never
//! while it waits for the client, so slow uploads cannot exhaust the blocking pool.

use std::mem;

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::hasher::Hasher;

/// Bytes per hand-off: large enough that the cost of a blocking task (a few µs) is noise
/// next to hashing it (about 0.6 ms with SHA-NI), small enough to keep the pipe full.
const BATCH_BYTES: usize = 1 << 20;
/// About the most the pipeline keeps alive: a batch filling and one being hashed.
pub(super) const WORKING_SET: usize = 2 * BATCH_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum HashTaskFailed {
    /// The blocking task panicked or the runtime is shutting down.
    #[error("hashing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// Used again after such a failure: the hash state went with the task.
    #[error("hash state was lost in an earlier failure")]
    Lost,
}

/// Boxed: a hash state is a few hundred bytes, moved on every hand-off.
enum Current {
    Idle(Box<Hasher>),
    Hashing(JoinHandle<Box<Hasher>>),
    Lost,
}

pub(super) struct HashPipeline {
    current: Current,
    filling: Vec<Bytes>,
    filling_bytes: usize,
}

impl HashPipeline {
    pub fn new(hasher: Hasher) -> Self {
        HashPipeline {
            current: Current::Idle(Box::new(hasher)),
            filling: Vec::new(),
            filling_bytes: 0,
        }
    }

    /// Adds `chunk` (a cheap reference, the bytes are shared with the writer). Waits
    /// only when a full batch is ready and the previous one is still being hashed.
    pub async fn update(&mut self, chunk: Bytes) -> Result<(), HashTaskFailed> {
        self.filling_bytes += chunk.len();
        self.filling.push(chunk);
        if self.filling_bytes >= BATCH_BYTES {
            self.hand_off().await?;
        }
        Ok(())
    }

    /// The hasher after every byte given to `update`.
    pub async fn finish(mut self) -> Result<Hasher, HashTaskFailed> {
        if !self.filling.is_empty() {
            self.hand_off().await?;
        }
        Ok(*self.settle().await?)
    }

    async fn hand_off(&mut self) -> Result<(), HashTaskFailed> {
        let mut hasher = self.settle().await?;
        let batch = mem::take(&mut self.filling);
        self.filling_bytes = 0;
        self.current = Current::Hashing(tokio::task::spawn_blocking(move || {
            for chunk in &batch {
                hasher.update(chunk);
            }
            hasher
        }));
        Ok(())
    }

    /// Waits for the batch in flight, if any, and takes the hasher back.
    async fn settle(&mut self) -> Result<Box<Hasher>, HashTaskFailed> {
        match mem::replace(&mut self.current, Current::Lost) {
            Current::Idle(hasher) => Ok(hasher),
            Current::Hashing(task) => Ok(task.await?),
            Current::Lost => Err(HashTaskFailed::Lost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Algorithm, Digest};

    #[tokio::test]
    async fn batched_hash_equals_one_pass() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
        let bytes = Bytes::from(data.clone());
        // Uneven chunks, some larger than a batch, some tiny.
        let mut pipeline = HashPipeline::new(Hasher::new(Algorithm::Sha256));
        let mut at = 0;
        for (i, size) in [1usize, 70_000, 3 << 20, 5, 1 << 20]
            .iter()
            .cycle()
            .enumerate()
        {
            if at == bytes.len() || i > 1000 {
                break;
            }
            let end = (at + size).min(bytes.len());
            pipeline.update(bytes.slice(at..end)).await.unwrap();
            at = end;
        }
        assert_eq!(at, bytes.len());
        let digest = pipeline.finish().await.unwrap().finish();
        assert_eq!(digest, Digest::of(Algorithm::Sha256, &data));

        let empty = HashPipeline::new(Hasher::new(Algorithm::Sha512));
        assert_eq!(
            empty.finish().await.unwrap().finish(),
            Digest::of(Algorithm::Sha512, b"")
        );
    }
}
