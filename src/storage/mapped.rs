//! Serving blob files of a local store from the page cache without a copy through user
//! space.
//!
//! A `read` into a buffer and hyper's `write` of it copy every byte twice; here the file
//! is mapped and hyper writes slices of the mapping, so the kernel copies once, from
//! the page cache into the socket. hyper cannot hand a socket to `sendfile(2)`, so this
//! is as close as it gets. The pages of each chunk are faulted in on a blocking thread
//! (`MADV_POPULATE_READ`) before the chunk is handed over, so a blob not yet in the page
//! cache is read from disk there, never in the task that writes to the socket.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use memmap2::{Advice, Mmap, MmapOptions};

/// The smallest range served from a mapping. Mapping and unmapping cost a few system
/// calls and, once several threads touched the pages, a TLB flush on every core: for a
/// 1 MiB blob that costs about as much as the copy it saves (measured: 360-375 µs of
/// server CPU per 1 MiB GET either way), while a 64 MiB GET took 5-10 % less CPU mapped.
pub(super) const WORTH_MAPPING: u64 = 4 << 20;
/// Bytes faulted in and handed over at a time.
const CHUNK: usize = 2 << 20;
/// Chunks faulted in ahead of the socket: keeps a disk busy while the client reads.
const AHEAD: usize = 4;

/// Keeps the mapping alive for as long as any `Bytes` slice of it is.
struct Mapping(Arc<Mmap>);

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// `range` of `file`, as a stream of slices of one read-only mapping.
pub(super) fn stream(
    file: std::fs::File,
    range: Range<u64>,
) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
    let len = usize::try_from(range.end - range.start)
        .map_err(|_| io::Error::other("range does not fit in the address space"))?;
    if len == 0 {
        return Ok(futures::stream::empty().boxed());
    }
    if file.metadata()?.len() < range.end {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob file is shorter than its recorded size",
        ));
    }
    // SAFETY: a mapped file that shrinks makes reads of the lost pages fault (SIGBUS).
    // Blob content files are never written in place: they are staged under another name
    // and renamed into place when complete (`local_write.rs`, object_store's local
    // backend), and removed only by unlinking, which leaves an existing mapping intact.
    // The size was checked above, so the mapping covers only bytes the file holds. The
    // README says to turn this off (`--blob-reads copied`) if anything else could
    // truncate files in the storage folder.
    let map = unsafe { MmapOptions::new().offset(range.start).len(len).map(&file)? };
    let map = Arc::new(map);
    let whole = Bytes::from_owner(Mapping(map.clone()));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(AHEAD);
    tokio::task::spawn_blocking(move || {
        for start in (0..len).step_by(CHUNK) {
            let end = (start + CHUNK).min(len);
            // Not supported before Linux 5.14: then the pages fault in as they are sent.
            let _ = map.advise_range(Advice::PopulateRead, start, end - start);
            if tx.blocking_send(Ok(whole.slice(start..end))).is_err() {
                return; // the client went away
            }
        }
    });
    Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    async fn collect(file: std::fs::File, range: Range<u64>) -> io::Result<Vec<u8>> {
        let chunks: Vec<Bytes> = stream(file, range)?.try_collect().await?;
        Ok(chunks.concat())
    }

    #[tokio::test]
    async fn serves_any_range_of_the_file_even_after_it_is_unlinked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..(5 * CHUNK + 12_345) as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let open = || std::fs::File::open(&path).unwrap();
        let len = data.len() as u64;
        for range in [0..len, 1..len, 4097..(3 * CHUNK as u64 + 17), len - 1..len] {
            let got = collect(open(), range.clone()).await.unwrap();
            assert!(
                got == data[range.start as usize..range.end as usize],
                "{range:?}"
            );
        }
        assert!(collect(open(), 7..7).await.unwrap().is_empty());

        // Garbage collection unlinks while a pull is under way: the pull completes.
        let file = open();
        std::fs::remove_file(&path).unwrap();
        assert!(collect(file, 0..len).await.unwrap() == data);
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_recorded_size_is_an_error_not_a_fault() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"short").unwrap();
        let err = collect(std::fs::File::open(&path).unwrap(), 0..100)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
