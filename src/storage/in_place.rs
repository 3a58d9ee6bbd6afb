//! Upload sessions on S3 that commit in place: a session is one S3 multipart upload of
//! `blob-data/<session>/blob`, and committing it completes that upload where it is and
//! writes the blob's index record (`blob_index.rs`). No byte is copied or read back,
//! whatever the blob's size.
//!
//! Each request turns its body into parts as it streams, sized by the session's part
//! schedule (`part_schedule.rs`: 8 MiB parts growing to 4 GiB, so 10,000 parts hold
//! more than S3's largest object). S3 takes parts of at least 5 MiB (but the last). A
//! part up to 16 MiB is gathered in memory: the request holds back up to its size +
//! [`MIN_PART`] and sends it whenever more arrived. A larger part is streamed from the
//! body as it arrives (`s3_parts.rs`) when the body's length covers it, and gathered on
//! local disk first (`part_spool.rs`) when the body's length is unknown. The last bytes
//! of a request go out as a part when they are 5 MiB or more; a shorter end is staged
//! as an object of its own (`blob-data/<session>/<offset>-<write>`) and read back by
//! the next request of the session, to go out in front of its bytes; a session whose
//! bytes all fit in such a staged object commits that object itself.
//!
//! The session record names the multipart upload, its parts' ETags and the staged
//! object beside the hash state, and is replaced conditionally (`uploads.rs`), so the
//! hash state always describes exactly the bytes the record names. S3 completes an
//! upload only with parts whose ETags match the ones listed, so a request that lost a
//! race on the session and overwrote a part (parts are numbered by position) makes the
//! commit fail rather than store other bytes under the digest.

use std::collections::VecDeque;
use std::fmt::Display;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{GetOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::Store;
use super::backend::Multipart;
use super::blob_index::Indexed;
use super::error::{Result, StorageError};
use super::hasher::Hasher;
use super::layout::Key;
use super::part_schedule::MAX_PARTS;
pub(super) use super::part_schedule::MIN_PART;
use super::part_spool::PartSpool;
use super::pipeline::HashPipeline;
use super::s3_parts::PartFeed;
use super::sweep_marker::Crossed;
use super::uploads::{PARTS_IN_FLIGHT, Part, UploadState};
use crate::oci::{Algorithm, Digest, RepositoryName};

/// A session's multipart upload and the ETags of its parts, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartParts {
    pub id: String,
    pub etags: Vec<String>,
}

/// What one request wrote in place.
pub(super) struct Written {
    pub bytes: u64,
    pub hasher: Hasher,
    pub multipart: Option<MultipartParts>,
    pub staged: Option<Part>,
    /// The staged object this request consumed (deleted once its record is taken).
    pub consumed: Option<Path>,
    /// A multipart upload this request started (aborted if its record is not taken).
    pub created: Option<String>,
}

impl Written {
    /// Removes what this request wrote that its (not taken) record would have named.
    pub async fn abandon(&self, store: &Store, multipart: &Multipart, session: &str) {
        if let Some(staged) = &self.staged {
            let _ = store
                .os_delete(&Key::BlobStaged(session, staged.offset, &staged.write).path())
                .await;
        }
        if let Some(id) = &self.created {
            let _ = multipart
                .abort(&Key::BlobData(session).path(), &id.clone())
                .await;
        }
    }
}

/// What discarding a session keeps of its objects.
#[derive(Debug, Clone, Copy)]
pub(super) enum Leftovers<'a> {
    /// The request that ends the session knows its outcome: everything but this goes.
    AllBut(Option<&'a Path>),
    /// Expiry or cancellation, which do not know whether a commit indexed the data.
    Unknown,
}

/// Body bytes held back until they make a part.
#[derive(Default)]
struct Held {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Held {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// The first `n` bytes (at most what is held), without copying.
    fn take(&mut self, n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut left = n.min(self.len);
        self.len -= left;
        while left > 0 {
            let mut chunk = self.chunks.pop_front().expect("held bytes add up");
            if chunk.len() > left {
                self.chunks.push_front(chunk.split_off(left));
            }
            left -= chunk.len();
            out.push(chunk);
        }
        out
    }
}

/// Sends parts of the session's multipart upload, at most [`PARTS_IN_FLIGHT`] at once.
struct PartSender {
    multipart: Multipart,
    key: Path,
    upload: Option<MultipartParts>,
    created: Option<String>,
    in_flight: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    sent: Vec<String>,
}

impl PartSender {
    fn started(&self) -> bool {
        self.upload.is_some()
    }

    /// Whether the `n` bytes a request ends with can go out as a part of their own:
    /// S3 takes a part under 5 MiB only as the upload's last, after others.
    fn takes_as_last_part(&self, n: u64, closing: bool) -> bool {
        n > 0 && (n >= MIN_PART as u64 || (closing && self.started()))
    }

    /// The index of the next part this request sends.
    fn next_index(&self) -> usize {
        self.upload.as_ref().map_or(0, |u| u.etags.len()) + self.sent.len() + self.in_flight.len()
    }

    /// The session's multipart upload (started on the first part), and the next part's
    /// index, refused past S3's last part.
    async fn next_part(&mut self) -> Result<(String, usize)> {
        let index = self.next_index();
        if index >= MAX_PARTS {
            return Err(StorageError::UploadTooLarge);
        }
        let upload = match &mut self.upload {
            Some(upload) => upload,
            None => {
                let id = self
                    .multipart
                    .create(&self.key)
                    .await
                    .map_err(|e| StorageError::backend("start writing", &self.key, e))?;
                self.created = Some(id.clone());
                self.upload.insert(MultipartParts {
                    id,
                    etags: Vec::new(),
                })
            }
        };
        Ok((upload.id.clone(), index))
    }

    /// Sends a part gathered in memory.
    async fn send(&mut self, bytes: Vec<Bytes>) -> Result<()> {
        let (id, index) = self.next_part().await?;
        let (multipart, key) = (self.multipart.clone(), self.key.clone());
        let payload: PutPayload = bytes.into_iter().collect();
        self.in_flight.push_back(tokio::spawn(async move {
            multipart.put_part(&key, &id, index, payload).await
        }));
        self.bound_in_flight().await
    }

    /// Starts a part of `len` bytes sent as they are fed.
    async fn stream(&mut self, len: u64) -> Result<PartFeed> {
        let (id, index) = self.next_part().await?;
        let (feed, task) = self.multipart.put_part_streamed(&self.key, &id, index, len);
        self.in_flight.push_back(task);
        // Settles older parts only: the one just started waits for its bytes.
        self.bound_in_flight().await?;
        Ok(feed)
    }

    async fn bound_in_flight(&mut self) -> Result<()> {
        while self.in_flight.len() > PARTS_IN_FLIGHT {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Why a part's upload ended early (its feed refused bytes).
    async fn failure(&mut self) -> StorageError {
        while !self.in_flight.is_empty() {
            if let Err(e) = self.settle_one().await {
                return e;
            }
        }
        StorageError::backend(
            "write",
            &self.key,
            object_store::Error::Generic {
                store: "S3",
                source: "a part's upload ended before its bytes were sent".into(),
            },
        )
    }

    async fn settle_one(&mut self) -> Result<()> {
        let Some(task) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let part = task
            .await
            .map_err(|e| StorageError::backend("write", &self.key, e.into()))?
            .map_err(|e| StorageError::backend("write", &self.key, e))?;
        self.sent.push(part.content_id);
        Ok(())
    }

    /// Waits for every part, and returns the upload with them.
    async fn finish(mut self) -> Result<(Option<MultipartParts>, Option<String>)> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        let mut upload = self.upload.take();
        if let Some(upload) = &mut upload {
            upload.etags.append(&mut self.sent);
        }
        Ok((upload, self.created))
    }
}

/// The request body, hashed and counted as it is read.
struct BodyReader<S> {
    body: S,
    /// The first chunk, read before anything was set up.
    first: Option<Bytes>,
    hashing: HashPipeline,
    bytes: u64,
    key: Path,
}

impl<S, E> BodyReader<S>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: Display,
{
    async fn pull(&mut self) -> Result<Option<Bytes>> {
        let chunk = match self.first.take() {
            Some(chunk) => chunk,
            None => match self.body.next().await {
                None => return Ok(None),
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Err(StorageError::BodyRead(e.to_string())),
            },
        };
        self.bytes += chunk.len() as u64;
        self.hashing
            .update(chunk.clone())
            .await
            .map_err(|e| super::parts::task_failed("hash", &self.key, e))?;
        Ok(Some(chunk))
    }

    async fn read_to_end(&mut self, held: &mut Held) -> Result<()> {
        while let Some(chunk) = self.pull().await? {
            held.push(chunk);
        }
        Ok(())
    }

    /// Sends `len` bytes into `feed`: the held ones first, then the body's; bytes past
    /// `len` are held. False when the part's upload stopped taking bytes.
    async fn feed(&mut self, feed: &PartFeed, held: &mut Held, len: u64) -> Result<bool> {
        let mut need = len;
        for chunk in held.take(usize::try_from(len).unwrap_or(usize::MAX)) {
            need -= chunk.len() as u64;
            if !feed.send(chunk).await {
                return Ok(false);
            }
        }
        while need > 0 {
            let mut chunk = match self.pull().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    let e = StorageError::BodyRead(format!(
                        "the body ended {need} bytes before its Content-Length"
                    ));
                    feed.fail(e.to_string()).await;
                    return Err(e);
                }
                Err(e) => {
                    feed.fail(e.to_string()).await;
                    return Err(e);
                }
            };
            if chunk.len() as u64 > need {
                held.push(chunk.split_off(need as usize));
            }
            need -= chunk.len() as u64;
            if !feed.send(chunk).await {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// What [`spool_part`] did.
enum Spooled {
    /// Sent a part, and more of the body follows.
    More,
    /// Sent the body's last bytes as a part.
    Last,
    /// The body ended too short for a part: its bytes are held.
    Short,
}

/// Gathers up to `target` + [`MIN_PART`] bytes of a body of unknown length on disk
/// (`part_spool.rs`) and sends `target` of them as a part, or all at the body's end;
/// what follows the part is held.
async fn spool_part<S, E>(
    reader: &mut BodyReader<S>,
    held: &mut Held,
    sender: &mut PartSender,
    target: usize,
    closing: bool,
) -> Result<Spooled>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: Display,
{
    let mut spool = PartSpool::create().await.map_err(StorageError::Spool)?;
    for chunk in held.take(held.len) {
        spool.write(&chunk).await.map_err(StorageError::Spool)?;
    }
    let limit = (target + MIN_PART) as u64;
    while spool.len() < limit {
        match reader.pull().await? {
            Some(chunk) => spool.write(&chunk).await.map_err(StorageError::Spool)?,
            None => break,
        }
    }
    let last = spool.len() < limit;
    if last && !sender.takes_as_last_part(spool.len(), closing) {
        held.push(spool.into_bytes().await.map_err(StorageError::Spool)?);
        return Ok(Spooled::Short);
    }
    let len = if last { spool.len() } else { target as u64 };
    let feed = sender.stream(len).await?;
    match spool.send(&feed, len).await {
        Ok(Some(rest)) => held.push(rest),
        Ok(None) => return Err(sender.failure().await),
        Err(e) => {
            feed.fail(e.to_string()).await;
            return Err(StorageError::Spool(e));
        }
    }
    Ok(if last { Spooled::Last } else { Spooled::More })
}

impl Store {
    /// Streams `body` into session `state`'s multipart upload (see the module comment),
    /// hashing on the way. `length`: the body's length, when known (`Content-Length`),
    /// which lets parts larger than memory stream. `closing`: no bytes follow, so the
    /// last part may be short.
    pub(super) async fn write_in_place<S, E>(
        &self,
        multipart: &Multipart,
        state: &UploadState,
        hasher: Hasher,
        mut body: S,
        length: Option<u64>,
        closing: bool,
    ) -> Result<Written>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let first = loop {
            match body.next().await {
                None => break None,
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => break Some(chunk),
                Some(Err(e)) => return Err(StorageError::BodyRead(e.to_string())),
            }
        };
        // A staged end goes out in front of new bytes, or as the last part at the end.
        let restage =
            state.staged.is_some() && (first.is_some() || (closing && state.multipart.is_some()));
        if first.is_none() && !restage {
            return Ok(Written {
                bytes: 0,
                hasher,
                multipart: state.multipart.clone(),
                staged: state.staged.clone(),
                consumed: None,
                created: None,
            });
        }
        // Reserved before any buffer is allocated, held until the parts are written.
        let _memory = self.upload_budget.reserve(self.upload_working_set()).await;
        let mut held = Held::default();
        let mut consumed = None;
        if let (true, Some(staged)) = (restage, &state.staged) {
            let key = Key::BlobStaged(&state.id, staged.offset, &staged.write).path();
            let bytes = self
                .os_get_bytes(&key)
                .await?
                .ok_or_else(|| StorageError::corrupt(&key, "staged chunk is missing"))?;
            if bytes.len() as u64 != staged.size {
                return Err(StorageError::corrupt(&key, "staged chunk has another size"));
            }
            held.push(bytes);
            consumed = Some(key);
        }
        let mut sender = PartSender {
            multipart: multipart.clone(),
            key: Key::BlobData(&state.id).path(),
            upload: state.multipart.clone(),
            created: None,
            in_flight: VecDeque::new(),
            sent: Vec::new(),
        };
        let schedule = *multipart.schedule();
        let mut reader = BodyReader {
            body,
            first,
            hashing: HashPipeline::new(hasher),
            bytes: 0,
            key: sender.key.clone(),
        };
        let mut staged = None;
        let streamed: Result<()> = async {
            loop {
                let index = sender.next_index();
                // The bytes left to place, when the body's length tells.
                let left = length.map(|l| l.saturating_sub(reader.bytes) + held.len as u64);
                let target = schedule.size(index);
                if let Some(left) = left.filter(|_| target > schedule.in_memory) {
                    let last = left < (target + MIN_PART) as u64;
                    let len = if last { left } else { target as u64 };
                    if last && !sender.takes_as_last_part(left, closing) {
                        // Too short for a part of its own: gathered below and staged.
                        reader.read_to_end(&mut held).await?;
                        break;
                    }
                    let feed = sender.stream(len).await?;
                    if !reader.feed(&feed, &mut held, len).await? {
                        return Err(sender.failure().await);
                    }
                    if last {
                        if reader.pull().await?.is_some_and(|c| !c.is_empty()) {
                            return Err(StorageError::BodyRead(
                                "the body is longer than its Content-Length".into(),
                            ));
                        }
                        return Ok(());
                    }
                    continue;
                }
                if length.is_none() && target > schedule.in_memory {
                    match spool_part(&mut reader, &mut held, &mut sender, target, closing).await? {
                        Spooled::More => continue,
                        Spooled::Last => return Ok(()),
                        Spooled::Short => break,
                    }
                }
                let target = schedule.size_in_memory(index);
                if held.len >= target + MIN_PART {
                    sender.send(held.take(target)).await?;
                    continue;
                }
                match reader.pull().await? {
                    Some(chunk) => held.push(chunk),
                    None => break,
                }
            }
            let rest = held.len;
            if rest == 0 {
                return Ok(());
            }
            if (closing && sender.started()) || (!closing && rest >= MIN_PART) {
                return sender.send(held.take(rest)).await;
            }
            let part = Part {
                offset: state.size + reader.bytes - rest as u64,
                size: rest as u64,
                write: uuid::Uuid::new_v4().simple().to_string(),
            };
            let key = Key::BlobStaged(&state.id, part.offset, &part.write).path();
            let payload: PutPayload = held.take(rest).into_iter().collect();
            self.objects
                .put_opts(&key, payload, Default::default())
                .await
                .map_err(|e| StorageError::backend("write", &key, e))?;
            staged = Some(part);
            Ok(())
        }
        .await;
        let bytes = reader.bytes;
        let hashing = reader.hashing;
        let created = sender.created.clone();
        let finished = match streamed {
            Ok(()) => sender.finish().await,
            Err(e) => Err(e),
        };
        let hashed = hashing
            .finish()
            .await
            .map_err(|e| super::parts::task_failed("hash", &Key::BlobData(&state.id).path(), e));
        match (finished, hashed) {
            (Ok((multipart_parts, _)), Ok(hasher)) => Ok(Written {
                bytes,
                hasher,
                multipart: multipart_parts,
                staged,
                consumed,
                created,
            }),
            (Err(e), _) | (_, Err(e)) => {
                Written {
                    bytes,
                    hasher: Hasher::new(state.algorithm),
                    multipart: None,
                    staged,
                    consumed: None,
                    created,
                }
                .abandon(self, multipart, &state.id)
                .await;
                Err(e)
            }
        }
    }

    /// Commits a claimed in-place session as `digest` into `repo`: verifies, completes
    /// the multipart upload where it is, and indexes it. Returns the blob's size and the
    /// data object the session must keep.
    pub(super) async fn commit_in_place(
        &self,
        multipart: &Multipart,
        repo: &RepositoryName,
        state: &UploadState,
        digest: &Digest,
    ) -> Result<(u64, Option<Path>)> {
        let same_algorithm = state.algorithm == digest.algorithm();
        if same_algorithm {
            let actual = Hasher::restore(state.algorithm, &state.hash_state)
                .map_err(|e| StorageError::corrupt(&Key::UploadState(&state.id).path(), e))?
                .finish();
            if &actual != digest {
                return Err(StorageError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
        }
        // Claimed before the existence check: content found here is not collected
        // before the link to it is written. On another replica, a sweep may still delete
        // it: the window tells (see `sweep_gate.rs`).
        let window = self.open_sweep_window().await?;
        let pass = self
            .sweeps
            .enter([
                Key::Blob(digest).path().to_string(),
                Key::BlobIndex(digest).path().to_string(),
                Key::BlobLink(repo, digest).path().to_string(),
            ])
            .await;
        if same_algorithm && let Some(size) = self.content_size(digest).await? {
            // Stored already (by another session, or before commits were in place).
            self.link_blob(repo, digest, size).await?;
            drop(pass);
            if self.linked_content_kept(&window, digest).await? {
                return Ok((size, None));
            }
            // Collected while it was being linked: this session's own bytes go in its
            // place below (its multipart upload is still open).
            return self.commit_own_bytes(multipart, repo, state, digest).await;
        }
        let committed = self.commit_own_bytes(multipart, repo, state, digest).await;
        drop(pass);
        if let Ok((_, None)) = &committed
            && !self.linked_content_kept(&window, digest).await?
        {
            // Another session's bytes were linked instead of ours, and collected since;
            // ours are still there (not discarded yet): index them.
            let data = self.session_data(state);
            if let Indexed::Existed = self.write_index(digest, &data, state.size).await? {
                // Yet another session indexed the digest meanwhile: fresh content.
                self.count_crossed(Crossed::kept);
                return committed;
            }
            self.link_blob(repo, digest, state.size).await?;
            return Ok((state.size, Some(data)));
        }
        committed
    }

    /// After a link-only commit: whether the content it linked is still there once no
    /// sweep runs across it (counted when one did).
    async fn linked_content_kept(
        &self,
        window: &super::sweep_marker::SweepWindow,
        digest: &Digest,
    ) -> Result<bool> {
        if !self.sweep_crossed(window).await? {
            return Ok(true);
        }
        if self.content_survived(digest).await? {
            self.count_crossed(Crossed::kept);
            return Ok(true);
        }
        self.count_crossed(Crossed::rewritten);
        tracing::info!(%digest, "a garbage collection deleted the content an upload was committed onto; committing the upload's own bytes");
        Ok(false)
    }

    /// The object holding the session's bytes once completed.
    fn session_data(&self, state: &UploadState) -> Path {
        match (&state.multipart, &state.staged) {
            (None, Some(staged)) => Key::BlobStaged(&state.id, staged.offset, &staged.write).path(),
            _ => Key::BlobData(&state.id).path(),
        }
    }

    /// Completes the session where it was written and indexes it (unless the digest is
    /// indexed already), then links it.
    async fn commit_own_bytes(
        &self,
        multipart: &Multipart,
        repo: &RepositoryName,
        state: &UploadState,
        digest: &Digest,
    ) -> Result<(u64, Option<Path>)> {
        let same_algorithm = state.algorithm == digest.algorithm();
        let data = match (&state.multipart, &state.staged) {
            (Some(upload), _) => {
                let key = Key::BlobData(&state.id).path();
                let parts = upload
                    .etags
                    .iter()
                    .map(|etag| PartId {
                        content_id: etag.clone(),
                    })
                    .collect();
                multipart
                    .complete(&key, &upload.id, parts)
                    .await
                    .map_err(|e| {
                        // A part was overwritten (by a request that lost a race on the
                        // session): its ETag no longer matches, and S3 refuses.
                        if format!("{e:?}").contains("InvalidPart") {
                            StorageError::UploadRestart {
                                id: state.id.clone(),
                                reason: format!("S3 refused to complete it: {e}"),
                            }
                        } else {
                            StorageError::backend("complete", &key, e)
                        }
                    })?;
                key
            }
            (None, Some(staged)) => Key::BlobStaged(&state.id, staged.offset, &staged.write).path(),
            (None, None) => {
                let key = Key::BlobData(&state.id).path();
                self.put_bytes(&key, Bytes::new()).await?;
                key
            }
        };
        if !same_algorithm {
            // The client chose another algorithm at the end: the only case that re-reads.
            let actual = self.rehash_object(&data, digest.algorithm()).await?;
            if &actual != digest {
                return Err(StorageError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            if let Some(size) = self.content_size(digest).await? {
                self.link_blob(repo, digest, size).await?;
                return Ok((size, None));
            }
        }
        let kept = match self.write_index(digest, &data, state.size).await? {
            Indexed::Written => Some(data),
            // Another session committed the same bytes first: ours go.
            Indexed::Existed => None,
        };
        self.link_blob(repo, digest, state.size).await?;
        Ok((state.size, kept))
    }

    async fn rehash_object(&self, key: &Path, algorithm: Algorithm) -> Result<Digest> {
        let mut hasher = Hasher::new(algorithm);
        let result = self
            .os_get(key, GetOptions::default())
            .await
            .map_err(|e| StorageError::backend("read", key, e))?;
        let mut stream = result
            .into_stream()
            .map_err(|e| StorageError::backend("read", key, e));
        while let Some(chunk) = stream.try_next().await? {
            hasher.update(&chunk);
        }
        Ok(hasher.finish())
    }

    /// Removes what an in-place session wrote: its multipart upload (if not completed)
    /// and its objects, but what `leftovers` keeps.
    pub(super) async fn discard_in_place(
        &self,
        multipart: &Multipart,
        state: Option<&UploadState>,
        id: &str,
        leftovers: Leftovers<'_>,
    ) -> Result<()> {
        if let Some(upload) = state.and_then(|s| s.multipart.as_ref()) {
            // Fails harmlessly on an upload that was completed.
            let _ = multipart.abort(&Key::BlobData(id).path(), &upload.id).await;
        }
        let keep = match leftovers {
            Leftovers::AllBut(keep) => keep,
            // A session whose commit was under way when its request ended may have
            // indexed its data; garbage collection, which knows what the index names,
            // deletes it if not.
            Leftovers::Unknown if state.is_some_and(|s| s.committing) => return Ok(()),
            Leftovers::Unknown => None,
        };
        let prefix = Key::BlobDataDir(id).path();
        let objects: Vec<Path> = self
            .objects
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| StorageError::backend("list", &prefix, e))?;
        for key in objects {
            if Some(&key) != keep {
                self.delete(&key).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use std::sync::Arc;

    fn repo() -> RepositoryName {
        "team/app".parse().unwrap()
    }

    /// Two replicas on one in-memory bucket, committing in place.
    fn two_replicas() -> (Store, Store) {
        let bucket = Arc::new(InMemory::new());
        let replica =
            || Store::new(bucket.clone()).with_multipart(Multipart::new(bucket.clone(), None));
        (replica(), replica())
    }

    fn chunk(bytes: Vec<u8>) -> impl Stream<Item = std::io::Result<Bytes>> + Unpin {
        futures::stream::iter([Ok(Bytes::from(bytes))])
    }

    fn content(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    async fn read_all(store: &Store, digest: &Digest) -> Vec<u8> {
        let body = store
            .read_blob(&repo(), digest, None)
            .await
            .unwrap()
            .unwrap();
        body.stream
            .try_fold(Vec::new(), |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn parts_staged_ends_and_replicas_make_one_blob_committed_where_it_was_written() {
        let (a, b) = two_replicas();
        let upload = a.start_upload(&repo(), Algorithm::Sha256).await.unwrap();
        // A part, a short end staged, then a chunk that takes the staged end in front.
        let pieces = [content(6 << 20, 1), content(1000, 2), content(7 << 20, 3)];
        let mut offset = 0u64;
        for (n, piece) in pieces.iter().enumerate() {
            let via = if n % 2 == 0 { &a } else { &b };
            let state = via
                .append_upload(
                    &repo(),
                    &upload.id,
                    Some(offset),
                    chunk(piece.clone()),
                    None,
                )
                .await
                .unwrap();
            offset += piece.len() as u64;
            assert_eq!(state.size, offset);
        }
        let status = b.upload_status(&repo(), &upload.id).await.unwrap();
        assert_eq!(status.multipart.as_ref().map(|m| m.etags.len()), Some(2));
        assert_eq!(status.staged, None);
        let last = content(300, 4);
        let whole: Vec<u8> = pieces.iter().flatten().chain(&last).copied().collect();
        let digest = Digest::of(Algorithm::Sha256, &whole);
        let size = b
            .finish_upload(
                &repo(),
                &upload.id,
                &digest,
                Some(offset),
                chunk(last),
                None,
            )
            .await
            .unwrap();
        assert_eq!(size, whole.len() as u64);
        let index = a.blob_index(&digest).await.unwrap().unwrap();
        assert_eq!(index.data, Key::BlobData(&upload.id).path().to_string());
        assert_eq!(read_all(&a, &digest).await, whole);
        // Nothing of the session is left but its data.
        let left: Vec<_> = a
            .objects
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert!(
            left.iter().all(|k| !k.starts_with("uploads/")
                && (!k.starts_with("blob-data/") || *k == index.data)),
            "{left:?}"
        );
    }

    #[tokio::test]
    async fn a_small_blob_is_its_staged_chunk_and_a_second_push_of_it_keeps_the_first() {
        let (a, b) = two_replicas();
        let bytes = content(4096, 9);
        let digest = Digest::of(Algorithm::Sha256, &bytes);
        let first = a.start_upload(&repo(), Algorithm::Sha256).await.unwrap();
        a.append_upload(&repo(), &first.id, Some(0), chunk(bytes.clone()), None)
            .await
            .unwrap();
        a.finish_upload(&repo(), &first.id, &digest, None, chunk(Vec::new()), None)
            .await
            .unwrap();
        let index = a.blob_index(&digest).await.unwrap().unwrap();
        assert!(index.data.starts_with(&format!("blob-data/{}/", first.id)));
        // The same bytes pushed monolithically through the other replica.
        b.put_blob(&repo(), &digest, chunk(bytes.clone()), None)
            .await
            .unwrap();
        assert_eq!(b.blob_index(&digest).await.unwrap().unwrap(), index);
        assert_eq!(read_all(&b, &digest).await, bytes);
        // A wrong digest stores nothing and leaves nothing.
        let wrong = Digest::of(Algorithm::Sha256, b"other");
        let refused = b
            .put_blob(&repo(), &wrong, chunk(content(10 << 20, 1)), None)
            .await;
        assert!(
            matches!(refused, Err(StorageError::DigestMismatch { .. })),
            "{refused:?}"
        );
        assert!(b.blob_index(&wrong).await.unwrap().is_none());
        let data: Vec<_> = b
            .objects
            .list(Some(&Key::BlobDataAll.path()))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(data, vec![index.data]);
    }
}
