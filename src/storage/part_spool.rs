//! Parts too large for memory from a body of unknown length, gathered on local disk.
//!
//! S3 needs a part's length before its first byte. A body sent with chunked transfer
//! encoding (docker and podman push a layer that way) does not tell how much follows,
//! so a part larger than memory allows is first written to an unlinked temporary file
//! (in `$TMPDIR`: the chart mounts an emptyDir at `/tmp`), then streamed from it. Only
//! uploads past 24 GB get such parts (see `part_schedule.rs`); the disk they use is one
//! part at a time, freed as soon as it is sent.

use std::io::SeekFrom;

use bytes::{Bytes, BytesMut};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::s3_parts::PartFeed;

/// Bytes read back from the file per chunk fed to S3.
const READ_CHUNK: usize = 1 << 20;

pub(super) struct PartSpool {
    file: File,
    len: u64,
}

impl PartSpool {
    pub async fn create() -> std::io::Result<Self> {
        let file = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .map_err(std::io::Error::other)??;
        Ok(PartSpool {
            file: File::from_std(file),
            len: 0,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.file.write_all(chunk).await?;
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Reads everything back (a spool that turned out short).
    pub async fn into_bytes(mut self) -> std::io::Result<Bytes> {
        self.rewind().await?;
        let mut all = Vec::with_capacity(self.len as usize);
        self.file.read_to_end(&mut all).await?;
        Ok(all.into())
    }

    /// Feeds the first `len` bytes into `feed` and returns the rest, or `None` when the
    /// part's upload stopped taking bytes.
    pub async fn send(mut self, feed: &PartFeed, len: u64) -> std::io::Result<Option<Bytes>> {
        self.rewind().await?;
        let mut left = len;
        while left > 0 {
            let n = left.min(READ_CHUNK as u64) as usize;
            let mut chunk = BytesMut::zeroed(n);
            self.file.read_exact(&mut chunk).await?;
            if !feed.send(chunk.freeze()).await {
                return Ok(None);
            }
            left -= n as u64;
        }
        let mut rest = Vec::with_capacity((self.len - len) as usize);
        self.file.read_to_end(&mut rest).await?;
        Ok(Some(rest.into()))
    }

    async fn rewind(&mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        self.file.seek(SeekFrom::Start(0)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spool_sends_its_first_bytes_and_hands_back_the_rest() {
        let mut spool = PartSpool::create().await.unwrap();
        let data: Vec<u8> = (0..3 * READ_CHUNK + 17).map(|i| i as u8).collect();
        for piece in data.chunks(70_000) {
            spool.write(piece).await.unwrap();
        }
        assert_eq!(spool.len(), data.len() as u64);
        let (feed, mut rx) = PartFeed::gathered();
        let sent = 2 * READ_CHUNK as u64 + 5;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(chunk) = rx.recv().await {
                got.extend_from_slice(&chunk.unwrap());
            }
            got
        });
        let rest = spool.send(&feed, sent).await.unwrap().unwrap();
        drop(feed);
        assert_eq!(reader.await.unwrap(), data[..sent as usize]);
        assert_eq!(rest, data[sent as usize..]);
    }
}
