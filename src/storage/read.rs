//! Streaming blob content out of the store without holding it in memory.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore};

use super::error::{Result, StorageError};
use super::local::LocalDir;

/// An inclusive byte range from an HTTP `Range: bytes=start-end` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `start-end`, or `start-` when `end` is `None`.
    From { start: u64, end: Option<u64> },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a single-range `bytes=` header value. Multi-range requests are not supported.
    pub fn parse(header: &str) -> Option<Self> {
        let spec = header.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            return b.parse().ok().map(ByteRange::Suffix);
        }
        let start = a.parse().ok()?;
        let end = if b.is_empty() {
            None
        } else {
            Some(b.parse().ok()?)
        };
        // An end before the start is well-formed but selects nothing: `resolve` answers 416.
        Some(ByteRange::From { start, end })
    }

    /// The half-open range this selects in an object of `size` bytes, or `None` when
    /// it selects nothing (416 Range Not Satisfiable).
    pub fn resolve(self, size: u64) -> Option<std::ops::Range<u64>> {
        match self {
            ByteRange::From { start, end } => {
                if start >= size || end.is_some_and(|e| e < start) {
                    return None;
                }
                let end = end.map_or(size, |e| (e + 1).min(size));
                Some(start..end)
            }
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(n) => Some(size.saturating_sub(n)..size),
        }
    }
}

/// A blob on its way out: its total size, the served range, and the bytes as a stream.
pub struct BlobBody {
    pub total_size: u64,
    pub range: std::ops::Range<u64>,
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

/// Reads served from local files use big chunks on a blocking thread: object_store's own
/// file stream reads 8 KiB per blocking task, which caps throughput far below the disk.
const LOCAL_READ_CHUNK: usize = 1 << 20;
/// Chunks read ahead of the client per served blob: enough to keep the socket busy while
/// the next one is read, few enough that memory per request stays small.
const LOCAL_READ_AHEAD: usize = 4;

pub(super) async fn open_range(
    objects: &dyn ObjectStore,
    local: Option<&LocalDir>,
    key: &Path,
    range: std::ops::Range<u64>,
    total_size: u64,
) -> Result<BlobBody> {
    let missing = || StorageError::corrupt(key, "linked blob content is missing");
    let stream = if range.is_empty() {
        futures::stream::empty().boxed()
    } else if let Some(local) = local {
        let file = local.open(key)?.ok_or_else(missing)?;
        local_file_stream(file, range.clone())
    } else {
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..Default::default()
        };
        let got = objects.get_opts(key, opts).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => missing(),
            e => StorageError::backend("read", key, e),
        })?;
        match got.payload {
            GetResultPayload::File(file, _) => local_file_stream(file, range.clone()),
            GetResultPayload::Stream(s) => s.map_err(std::io::Error::other).boxed(),
        }
    };
    Ok(BlobBody {
        total_size,
        range,
        stream,
    })
}

fn local_file_stream(
    file: std::fs::File,
    range: std::ops::Range<u64>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    use std::io::{Seek, SeekFrom};
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(LOCAL_READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        if let Err(e) = file.seek(SeekFrom::Start(range.start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut remaining = range.end - range.start;
        while remaining > 0 {
            let want = remaining.min(LOCAL_READ_CHUNK as u64) as usize;
            match read_chunk(&mut file, want) {
                Ok(chunk) => {
                    remaining -= want as u64;
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return; // the client went away
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    tokio_stream_from(rx)
}

/// Exactly `want` bytes from the file's position. The buffer is not zeroed first (a
/// `vec![0; want]` costs a memset per MiB served): `read_to_end` reads a `File` straight
/// into the spare capacity.
fn read_chunk(file: &mut std::fs::File, want: usize) -> std::io::Result<Bytes> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(want);
    file.take(want as u64).read_to_end(&mut buf)?;
    if buf.len() < want {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "blob file is shorter than its recorded size",
        ));
    }
    Ok(Bytes::from(buf))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves_ranges() {
        let r = ByteRange::parse("bytes=0-9").unwrap();
        assert_eq!(r.resolve(100), Some(0..10));
        assert_eq!(
            ByteRange::parse("bytes=90-").unwrap().resolve(100),
            Some(90..100)
        );
        assert_eq!(
            ByteRange::parse("bytes=-10").unwrap().resolve(100),
            Some(90..100)
        );
        assert_eq!(
            ByteRange::parse("bytes=50-500").unwrap().resolve(100),
            Some(50..100)
        );
        assert_eq!(ByteRange::parse("bytes=100-").unwrap().resolve(100), None);
        assert_eq!(ByteRange::parse("bytes=500-0").unwrap().resolve(1000), None);
        assert!(ByteRange::parse("bytes=0-1,3-4").is_none());
        assert!(ByteRange::parse("items=0-1").is_none());
    }
}
