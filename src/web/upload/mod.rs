//! Uploading an image tarball from the browser: a `docker save` tar or an OCI image
//! layout tar, plain or gzip, up to [`MAX_UPLOAD`] bytes, becomes a tag.
//!
//! The archive is read as it arrives and never held whole: each file in it streams
//! into a registry upload session (the same `POST`/`PATCH` path a client's push takes,
//! so byte quotas meter it), hashed on the way. Only small JSON files (manifests,
//! configs, `index.json`, `manifest.json`) are also kept in memory, within a fixed
//! bound. Nothing is committed until the whole archive has been read and checked
//! (gzip trailer included): then the blobs the image needs are committed through the
//! registry's upload `PUT`, the rest cancelled, and the manifest pushed through the
//! registry's manifest `PUT`, where immutable tags and tag quotas apply as for any
//! push. A bad file cancels every session: nothing is stored.

pub mod assemble;
pub mod tar;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::body::Body;
use axum::http::{HeaderMap, Method, header};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use sha2::Digest as _;
use tokio::io::{AsyncBufReadExt, AsyncRead};

use super::delete::registry_request;
use super::error::{ApiCode, ApiError, ApiResult};
use crate::auth::Identity;
use crate::oci::{Algorithm, Digest, RepositoryName};
use crate::registry::{self, RegistryState, routes::Route};
use tar::{Kind, TarError, TarReader};

/// The largest archive accepted, as sent (compressed or not): 2 GiB.
pub const MAX_UPLOAD: u64 = 2 << 30;
/// The most an archive may unpack to (a gzip bomb stops here).
pub const MAX_UNPACKED: u64 = 8 << 30;
/// Files up to this size that look like JSON are kept in memory too.
const MAX_JSON_FILE: u64 = 4 << 20;
/// All kept JSON files together.
const MAX_JSON_TOTAL: usize = 32 << 20;
/// Top-level files of an archive that describe it, read into memory only.
const METADATA_FILES: [&str; 4] = ["index.json", "manifest.json", "oci-layout", "repositories"];
const CHUNK: usize = 256 << 10;

/// A file of the archive, staged in an upload session and not yet committed.
#[derive(Debug, Clone)]
pub struct Staged {
    pub session: String,
    pub size: u64,
    /// The file starts with the gzip magic (a compressed layer).
    pub gzipped: bool,
}

/// What reading the archive produced.
#[derive(Default)]
pub struct Contents {
    /// Every staged blob by digest (a file appearing twice is staged once).
    pub blobs: HashMap<Digest, Staged>,
    /// The digest of each file, by its path in the archive (links resolved at the end).
    pub paths: HashMap<String, Digest>,
    pub links: Vec<(String, String)>,
    /// Small JSON files and the metadata files, by digest and by path.
    pub json: HashMap<Digest, Bytes>,
    pub metadata: HashMap<String, Bytes>,
    json_total: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Uploaded {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    pub blobs: usize,
    pub bytes: u64,
}

/// Why the archive was refused, mapped to what the page says.
fn tar_error(e: TarError, state: &Flags) -> ApiError {
    if state.too_large.load(Ordering::Relaxed) {
        return ApiError::new(
            ApiCode::TooLarge,
            format!("the file is larger than the {} GiB limit", MAX_UPLOAD >> 30),
        );
    }
    if state.unpacked_too_large.load(Ordering::Relaxed) {
        return ApiError::new(
            ApiCode::TooLarge,
            format!(
                "the archive unpacks to more than {} GiB",
                MAX_UNPACKED >> 30
            ),
        );
    }
    match e {
        TarError::NotTar => ApiError::new(
            ApiCode::NotAnImage,
            "not an image: the file is not a tar archive (expected `docker save` output or an OCI image layout, as .tar or .tar.gz)",
        ),
        TarError::Corrupt(why) => ApiError::new(
            ApiCode::CorruptTar,
            format!("the tar archive is damaged: {why}"),
        ),
        TarError::Io(io) if state.body_failed.load(Ordering::Relaxed) => ApiError::new(
            ApiCode::BadRequest,
            format!("the upload was interrupted: {io}"),
        ),
        TarError::Io(io) if state.gzip => ApiError::new(
            ApiCode::CorruptGzip,
            format!("the gzip stream is corrupt: {io}"),
        ),
        TarError::Io(io) => ApiError::new(
            ApiCode::CorruptTar,
            format!("the archive could not be read: {io}"),
        ),
    }
}

#[derive(Default)]
struct Flags {
    too_large: AtomicBool,
    unpacked_too_large: AtomicBool,
    body_failed: AtomicBool,
    gzip: bool,
}

/// Counts what the archive unpacks to, and stops it at [`MAX_UNPACKED`].
struct Unpacked<R> {
    inner: R,
    seen: u64,
    flags: Arc<Flags>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Unpacked<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.seen += (buf.filled().len() - before) as u64;
        if this.seen > MAX_UNPACKED {
            this.flags.unpacked_too_large.store(true, Ordering::Relaxed);
            return std::task::Poll::Ready(Err(std::io::Error::other("unpacked size limit")));
        }
        poll
    }
}

type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// Opens the request body as an archive: gzip is recognised by its magic number.
async fn open(body: Body, declared: Option<u64>) -> ApiResult<(Reader, Arc<Flags>)> {
    if declared.is_some_and(|l| l > MAX_UPLOAD) {
        return Err(ApiError::new(
            ApiCode::TooLarge,
            format!("the file is larger than the {} GiB limit", MAX_UPLOAD >> 30),
        ));
    }
    let received = Arc::new(AtomicU64::new(0));
    let early = Arc::new(Flags::default());
    let (flags_for_body, received_c) = (early.clone(), received.clone());
    let stream = body.into_data_stream().map(move |chunk| match chunk {
        Ok(chunk) => {
            let total =
                received_c.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
            if total > MAX_UPLOAD {
                flags_for_body.too_large.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("upload size limit"));
            }
            Ok(chunk)
        }
        Err(e) => {
            flags_for_body.body_failed.store(true, Ordering::Relaxed);
            Err(std::io::Error::other(e))
        }
    });
    let mut raw = tokio_util::io::StreamReader::new(stream);
    let head = raw.fill_buf().await.map_err(|e| {
        ApiError::new(
            ApiCode::BadRequest,
            format!("the upload could not be read: {e}"),
        )
    })?;
    if head.is_empty() {
        return Err(ApiError::new(
            ApiCode::NotAnImage,
            "not an image: the file is empty",
        ));
    }
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    // The flags are shared by the body stream (size, interruption) and the reader.
    let flags = Arc::new(Flags {
        gzip,
        ..Flags::default()
    });
    let watcher = (early.clone(), flags.clone());
    let inner: Reader = if gzip {
        let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(raw);
        decoder.multiple_members(true);
        Box::pin(decoder)
    } else {
        Box::pin(raw)
    };
    let reader: Reader = Box::pin(Mirrored {
        inner: Unpacked {
            inner,
            seen: 0,
            flags: flags.clone(),
        },
        from: watcher.0,
        to: watcher.1,
    });
    Ok((reader, flags))
}

/// Copies the body stream's flags (set where the body is read) into the reader's.
struct Mirrored<R> {
    inner: R,
    from: Arc<Flags>,
    to: Arc<Flags>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Mirrored<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        for (from, to) in [
            (&self.from.too_large, &self.to.too_large),
            (&self.from.body_failed, &self.to.body_failed),
        ] {
            if from.load(Ordering::Relaxed) {
                to.store(true, Ordering::Relaxed);
            }
        }
        poll
    }
}

/// A registry operation on `repo` for the uploading caller.
pub struct Pusher<'a> {
    pub state: &'a RegistryState,
    pub identity: &'a Identity,
    pub headers: &'a HeaderMap,
    pub repo: RepositoryName,
}

impl Pusher<'_> {
    pub async fn call(
        &self,
        route: Route,
        method: Method,
        query: Vec<(String, String)>,
        content_type: Option<&str>,
        body: Body,
    ) -> ApiResult<axum::response::Response> {
        let mut req = registry_request(self.identity, self.headers, method, query);
        req.headers.remove(header::CONTENT_TYPE);
        if let Some(ct) = content_type {
            req.headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_str(ct).map_err(|_| {
                    ApiError::new(
                        ApiCode::NotAnImage,
                        format!("media type {ct:?} is not valid"),
                    )
                })?,
            );
        }
        Ok(registry::perform(self.state, route, req, body).await?)
    }

    async fn start_session(&self) -> ApiResult<String> {
        let response = self
            .call(
                Route::Uploads(self.repo.clone()),
                Method::POST,
                Vec::new(),
                None,
                Body::empty(),
            )
            .await?;
        response
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.split('?').next())
            .and_then(|l| l.rsplit('/').next())
            .map(str::to_string)
            .ok_or_else(|| ApiError::new(ApiCode::Internal, "an upload session has no location"))
    }

    pub async fn cancel(&self, session: &str) {
        let _ = self.state.store.cancel_upload(&self.repo, session).await;
    }

    pub async fn commit(&self, session: &str, digest: &Digest) -> ApiResult<()> {
        self.call(
            Route::Upload(self.repo.clone(), session.to_string()),
            Method::PUT,
            vec![("digest".into(), digest.to_string())],
            None,
            Body::empty(),
        )
        .await?;
        Ok(())
    }
}

/// Streams the current entry of `tar` into a new upload session, hashing it.
async fn stage_entry<R: AsyncRead + Unpin>(
    pusher: &Pusher<'_>,
    tar: &mut TarReader<R>,
    size: u64,
    keep_json: bool,
) -> ApiResult<Result<(Digest, Staged, Option<Bytes>), TarError>> {
    let session = pusher.start_session().await?;
    let (mut tx, rx) = futures::channel::mpsc::channel::<std::io::Result<Bytes>>(2);
    let patch = pusher.call(
        Route::Upload(pusher.repo.clone(), session.clone()),
        Method::PATCH,
        Vec::new(),
        Some("application/octet-stream"),
        Body::from_stream(rx),
    );
    let feed = async {
        let mut hasher = sha2::Sha256::new();
        let mut copy: Option<Vec<u8>> = (keep_json && size <= MAX_JSON_FILE).then(Vec::new);
        let mut head = [0u8; 2];
        let mut seen = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match tar.read_data(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = tx
                        .send(Err(std::io::Error::other("the archive could not be read")))
                        .await;
                    return Err(e);
                }
            };
            let chunk = &buf[..n];
            for (i, b) in chunk.iter().enumerate() {
                let at = seen as usize + i;
                if at < 2 {
                    head[at] = *b;
                } else {
                    break;
                }
            }
            if seen == 0 && chunk[0] != b'{' {
                copy = None;
            }
            seen += n as u64;
            hasher.update(chunk);
            if let Some(c) = copy.as_mut() {
                c.extend_from_slice(chunk);
            }
            if tx.send(Ok(Bytes::copy_from_slice(chunk))).await.is_err() {
                // The registry refused the body (a quota): its answer says why.
                break;
            }
        }
        drop(tx);
        let hex = hex::encode(hasher.finalize());
        let digest = Digest::new(Algorithm::Sha256, &hex).expect("a SHA-256 digest is valid");
        Ok((digest, head == [0x1f, 0x8b], copy))
    };
    let (patched, fed) = futures::join!(patch, feed);
    let (digest, gzipped, copy) = match fed {
        Ok(v) => v,
        Err(e) => {
            pusher.cancel(&session).await;
            return Ok(Err(e));
        }
    };
    if let Err(e) = patched {
        pusher.cancel(&session).await;
        return Err(e);
    }
    Ok(Ok((
        digest,
        Staged {
            session,
            size,
            gzipped,
        },
        copy.map(Bytes::from),
    )))
}

/// Reads the whole archive into upload sessions; on any failure cancels what it staged.
async fn read_archive(
    pusher: &Pusher<'_>,
    body: Body,
    declared: Option<u64>,
) -> ApiResult<Contents> {
    let (reader, flags) = open(body, declared).await?;
    let mut tar = TarReader::new(reader);
    let mut contents = Contents::default();
    let result = read_entries(pusher, &mut tar, &mut contents).await;
    let result = match result {
        Ok(Ok(())) => tar.finish().await.map_err(|e| tar_error(e, &flags)),
        Ok(Err(e)) => Err(tar_error(e, &flags)),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        for staged in contents.blobs.values() {
            pusher.cancel(&staged.session).await;
        }
        return Err(e);
    }
    Ok(contents)
}

async fn read_entries<R: AsyncRead + Unpin>(
    pusher: &Pusher<'_>,
    tar: &mut TarReader<R>,
    contents: &mut Contents,
) -> ApiResult<Result<(), TarError>> {
    loop {
        let entry = match tar.next().await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(Ok(())),
            Err(e) => return Ok(Err(e)),
        };
        match entry.kind {
            Kind::Other => continue,
            Kind::Link(target) => {
                contents.links.push((entry.path, target));
                continue;
            }
            Kind::File => {}
        }
        if METADATA_FILES.contains(&entry.path.as_str()) {
            if entry.size > MAX_JSON_FILE {
                return Err(ApiError::new(
                    ApiCode::NotAnImage,
                    format!("not an image: {} is {} bytes", entry.path, entry.size),
                ));
            }
            let mut data = Vec::with_capacity(entry.size as usize);
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match tar.read_data(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => data.extend_from_slice(&buf[..n]),
                    Err(e) => return Ok(Err(e)),
                }
            }
            contents.metadata.insert(entry.path, data.into());
            continue;
        }
        let keep = contents.json_total < MAX_JSON_TOTAL;
        let (digest, staged, copy) = match stage_entry(pusher, tar, entry.size, keep).await? {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(named) = named_digest(&entry.path)
            && named != digest
        {
            pusher.cancel(&staged.session).await;
            return Err(ApiError::new(
                ApiCode::CorruptTar,
                format!(
                    "the archive is damaged: {} holds content that hashes to {digest}",
                    entry.path
                ),
            ));
        }
        if let Some(copy) = copy {
            contents.json_total += copy.len();
            contents.json.insert(digest.clone(), copy);
        }
        contents.paths.insert(entry.path, digest.clone());
        match contents.blobs.entry(digest) {
            std::collections::hash_map::Entry::Occupied(_) => pusher.cancel(&staged.session).await,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(staged);
            }
        }
    }
}

/// The digest an OCI layout names a blob by (`blobs/<alg>/<hex>`).
fn named_digest(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    format!("{alg}:{hex}").parse().ok()
}

/// `POST /api/repositories/{name}/-/upload?tag=…`: the whole upload.
pub async fn upload(
    pusher: Pusher<'_>,
    tag: crate::oci::Tag,
    body: Body,
    declared: Option<u64>,
) -> ApiResult<Uploaded> {
    let contents = read_archive(&pusher, body, declared).await?;
    let result = assemble::push(&pusher, &contents, &tag).await;
    // Whatever the image did not use, and everything after a failure, is dropped.
    for staged in contents.blobs.values() {
        pusher.cancel(&staged.session).await;
    }
    result
}
