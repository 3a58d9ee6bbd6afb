//! Parts too large to gather in memory, streamed from a request body to S3 as the
//! bytes arrive (see `part_schedule.rs`).
//!
//! object_store's `put_part` takes a part's bytes whole; S3's UploadPart only needs its
//! length up front. So a large part goes to a presigned UploadPart URL (object_store's
//! signer folds `partNumber` and `uploadId` into the signature) through a plain HTTP
//! client, its body fed from a small bounded channel: memory per streamed part is a few
//! of the request's own chunks, whatever the part's size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::signer::{Method, SignedUrlOptions, Signer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks queued between the request body and the part's upload.
const FEED_DEPTH: usize = 8;

/// How long a presigned part URL stays valid: longer than any part takes to send.
const URL_EXPIRY: Duration = Duration::from_secs(24 * 3600);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends streamed parts to one bucket.
#[derive(Debug)]
pub struct PartStreamer {
    signer: AmazonS3,
    client: reqwest::Client,
}

/// Where a streamed part's bytes go; dropping it ends the part's body.
pub struct PartFeed {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
}

impl PartFeed {
    /// A feed whose chunks the caller receives (a store without a streamer).
    pub(super) fn gathered() -> (Self, mpsc::Receiver<std::io::Result<Bytes>>) {
        let (tx, rx) = mpsc::channel(FEED_DEPTH);
        (PartFeed { tx }, rx)
    }

    /// Queues `chunk`; false when the upload has ended (it failed: its handle says why).
    pub async fn send(&self, chunk: Bytes) -> bool {
        self.tx.send(Ok(chunk)).await.is_ok()
    }

    /// Ends the part's body with an error, so S3 never takes a short part.
    pub async fn fail(&self, reason: String) {
        let _ = self.tx.send(Err(std::io::Error::other(reason))).await;
    }
}

impl PartStreamer {
    pub fn new(signer: AmazonS3) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config())
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(PartStreamer { signer, client })
    }

    /// Starts uploading part `index` (0-based) of multipart upload `id` of `key` (the
    /// whole key in the bucket), `len` bytes long, to be fed through the returned feed.
    pub fn start(
        self: &Arc<Self>,
        key: Path,
        id: String,
        index: usize,
        len: u64,
    ) -> (PartFeed, JoinHandle<object_store::Result<PartId>>) {
        let (tx, rx) = mpsc::channel(FEED_DEPTH);
        let streamer = Arc::clone(self);
        let task = tokio::spawn(async move { streamer.upload(&key, &id, index, len, rx).await });
        (PartFeed { tx }, task)
    }

    async fn upload(
        &self,
        key: &Path,
        id: &str,
        index: usize,
        len: u64,
        rx: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> object_store::Result<PartId> {
        let options = SignedUrlOptions::default().with_query([
            ("partNumber", (index + 1).to_string()),
            ("uploadId", id.to_string()),
        ]);
        let url = self
            .signer
            .signed_url_opts(Method::PUT, key, URL_EXPIRY, &options)
            .await?;
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let response = self
            .client
            .put(url)
            // Set by hand: a streamed body would otherwise go chunked, which S3 refuses.
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| failed(key, format!("sending part {}: {e}", index + 1)))?;
        let status = response.status();
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let text: String = text.chars().take(1000).collect();
            return Err(failed(
                key,
                format!("S3 answered part {} with {status}: {text}", index + 1),
            ));
        }
        let content_id = etag.ok_or_else(|| {
            failed(
                key,
                format!("S3 answered part {} without an ETag", index + 1),
            )
        })?;
        Ok(PartId { content_id })
    }
}

fn failed(key: &Path, reason: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: format!("streamed upload of {key}: {reason}").into(),
    }
}

/// TLS as object_store's own S3 client has it: the system's roots.
fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
