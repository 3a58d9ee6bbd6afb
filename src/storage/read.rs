//! Streaming blob content out of the store without holding it in memory.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore};

use super::error::{Result, StorageError};
use super::local::{BlobReads, LocalDir, io_error};

/// An inclusive byte range from an HTTP `Range: bytes=start-end` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `start-end`, or `start-` when `end` is `None`.
    From { start: u64, end: Option<u64> },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// A `Range: bytes=…` header berth cannot serve: answered 416 with `Content-Range:
/// bytes */<size>`, never by silently sending the whole blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("range {0:?} is not <start>-<end>, <start>- or -<length> in decimal bytes")]
    Malformed(String),
    #[error("range {0:?} asks for several ranges; only one is supported")]
    MultiRange(String),
    #[error("range {0:?} has a position beyond any possible blob size")]
    TooLarge(String),
}

/// A decimal byte position: digits only (no sign, no spaces inside), at most `u64::MAX`.
fn position(digits: &str, header: &str) -> Result<u64, RangeError> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RangeError::Malformed(header.to_string()));
    }
    digits
        .parse()
        .map_err(|_| RangeError::TooLarge(header.to_string()))
}

impl ByteRange {
    /// Parses a `Range` header. A unit other than `bytes` is ignored as RFC 9110 allows
    /// (`Ok(None)`: the whole blob is served); a `bytes=` value berth cannot serve is an
    /// error, so a client never takes a full body for the part it asked for.
    pub fn parse(header: &str) -> Result<Option<Self>, RangeError> {
        let Some(spec) = header.trim().strip_prefix("bytes=") else {
            return Ok(None);
        };
        if spec.contains(',') {
            return Err(RangeError::MultiRange(header.to_string()));
        }
        let (a, b) = spec
            .split_once('-')
            .ok_or_else(|| RangeError::Malformed(header.to_string()))?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            return Ok(Some(ByteRange::Suffix(position(b, header)?)));
        }
        let start = position(a, header)?;
        let end = if b.is_empty() {
            None
        } else {
            Some(position(b, header)?)
        };
        // An end before the start is well-formed but selects nothing: `resolve` answers 416.
        Ok(Some(ByteRange::From { start, end }))
    }

    /// The half-open range this selects in an object of `size` bytes, or `None` when
    /// it selects nothing (416 Range Not Satisfiable).
    pub fn resolve(self, size: u64) -> Option<std::ops::Range<u64>> {
        match self {
            ByteRange::From { start, end } => {
                if start >= size || end.is_some_and(|e| e < start) {
                    return None;
                }
                // `start < size` here, so `size - 1` cannot wrap, and clamping the end
                // first keeps `+ 1` from overflowing on `bytes=0-18446744073709551615`.
                let end = end.map_or(size, |e| e.min(size - 1) + 1);
                Some(start..end)
            }
            // No byte to select: a zero-length suffix, or an empty blob.
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(_) if size == 0 => None,
            ByteRange::Suffix(n) => Some(size.saturating_sub(n)..size),
        }
    }
}

impl std::fmt::Display for ByteRange {
    /// The header value this range was parsed from, in canonical form.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ByteRange::From { start, end: None } => write!(f, "bytes={start}-"),
            ByteRange::From {
                start,
                end: Some(end),
            } => write!(f, "bytes={start}-{end}"),
            ByteRange::Suffix(n) => write!(f, "bytes=-{n}"),
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
        match local.blob_reads() {
            BlobReads::Mapped if range.end - range.start >= super::mapped::WORTH_MAPPING => {
                super::mapped::stream(file, range.clone()).map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => {
                        StorageError::corrupt(key, "blob file is shorter than its recorded size")
                    }
                    _ => io_error("map", key, e),
                })?
            }
            BlobReads::Mapped | BlobReads::Copied => local_file_stream(file, range.clone()),
        }
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

    fn parse(header: &str) -> ByteRange {
        ByteRange::parse(header).unwrap().unwrap()
    }

    #[test]
    fn parses_and_resolves_ranges() {
        assert_eq!(parse("bytes=0-9").resolve(100), Some(0..10));
        assert_eq!(parse("bytes=90-").resolve(100), Some(90..100));
        assert_eq!(parse("bytes=-10").resolve(100), Some(90..100));
        assert_eq!(parse("bytes=-1000").resolve(100), Some(0..100));
        assert_eq!(parse("bytes=50-500").resolve(100), Some(50..100));
        assert_eq!(parse("bytes=100-").resolve(100), None);
        assert_eq!(parse("bytes=500-0").resolve(1000), None);
        assert_eq!(parse("bytes=-0").resolve(1000), None);
    }

    #[test]
    fn other_units_are_ignored_as_rfc_9110_allows() {
        assert_eq!(ByteRange::parse("items=0-1"), Ok(None));
    }

    #[test]
    fn unservable_byte_ranges_are_errors_not_a_full_body() {
        for bad in [
            "bytes=0-1,3-4",
            "bytes=",
            "bytes=-",
            "bytes=abc-",
            "bytes=+1-2",
            "bytes=1-+2",
        ] {
            assert!(ByteRange::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ByteRange::parse("bytes=18446744073709551616-"),
            Err(RangeError::TooLarge("bytes=18446744073709551616-".into()))
        );
        assert!(matches!(
            ByteRange::parse("bytes=-99999999999999999999999"),
            Err(RangeError::TooLarge(_))
        ));
    }

    #[test]
    fn extreme_positions_resolve_without_overflow() {
        let max = u64::MAX;
        assert_eq!(parse(&format!("bytes=0-{max}")).resolve(10), Some(0..10));
        assert_eq!(parse(&format!("bytes={max}-{max}")).resolve(10), None);
        assert_eq!(parse(&format!("bytes={max}-")).resolve(max), None);
        assert_eq!(parse(&format!("bytes=-{max}")).resolve(10), Some(0..10));
        assert_eq!(
            parse(&format!("bytes=0-{max}")).resolve(max),
            Some(0..max),
            "the largest possible blob is served whole"
        );
        assert_eq!(
            parse("bytes=0-0").resolve(0),
            None,
            "an empty blob has no byte 0"
        );
    }

    #[test]
    fn display_round_trips() {
        for r in [
            ByteRange::From {
                start: 3,
                end: None,
            },
            ByteRange::From {
                start: 3,
                end: Some(9),
            },
            ByteRange::Suffix(7),
        ] {
            assert_eq!(parse(&r.to_string()), r);
        }
    }
}
