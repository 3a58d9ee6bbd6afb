//! Blob downloads answered with a presigned S3 URL instead of the bytes: with several
//! replicas behind one bucket, a large layer then travels from S3 to the client
//! directly, and no replica spends CPU and bandwidth proxying it.
//!
//! Only whole-blob GETs of blobs at least [`RedirectSettings::min_size`] bytes long are
//! redirected; the caller has already checked access (the URL is a bearer credential
//! for that one object, valid [`RedirectSettings::expiry`]). Ranged GETs stay with
//! berth, so the 206/416 semantics a resuming client relies on are berth's own, and
//! small blobs are cheaper to serve than to redirect (one extra round trip).
//!
//! The URL is signed for the endpoint clients use: the one replicas use, or
//! [`RedirectSettings::endpoint`] when clients reach the bucket under another address
//! (SigV4 signs the host, so rewriting a signed URL's host, as CNCF distribution's
//! `redirect` middleware does for unsigned URLs, would void it).

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use url::Url;

use super::backend::{BackendError, StorageLocation};
use super::error::{Result, StorageError};
use super::{BlobStat, Store};
use crate::oci::{Digest, RepositoryName};

/// SigV4 refuses presigned URLs valid for longer than a week.
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// When and where blob GETs are redirected (`--blob-redirect-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectSettings {
    /// Blobs at least this long are redirected.
    pub min_size: u64,
    /// How long a presigned URL stays valid.
    pub expiry: Duration,
    /// The S3 endpoint as clients reach it (`http(s)://host[:port]`), when it is not
    /// the one the replicas use.
    pub endpoint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("blob redirects need S3 storage; {0} is a local directory, which only berth can serve")]
    NotS3(String),
    #[error("a blob redirect expiry of {0:?} is not between 1s and 7 days (the SigV4 limit)")]
    Expiry(Duration),
    #[error("blob redirect endpoint {0:?} is not an http:// or https:// URL without a path")]
    Endpoint(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What a blob GET gets instead of the bytes.
#[derive(Debug, Clone)]
pub struct BlobRedirect {
    pub url: Url,
    pub size: u64,
}

/// The signer and rules, shared by every clone of a [`Store`].
#[derive(Debug)]
pub(super) struct BlobRedirects {
    signer: AmazonS3,
    /// The bucket prefix the store's keys live under (`PrefixStore` adds it on reads;
    /// the signer sees whole keys).
    prefix: Option<Path>,
    min_size: u64,
    expiry: Duration,
}

impl BlobRedirects {
    pub(super) fn new(
        location: &StorageLocation,
        settings: &RedirectSettings,
    ) -> std::result::Result<Self, RedirectError> {
        let StorageLocation::S3(s3) = location else {
            return Err(RedirectError::NotS3(location.to_string()));
        };
        if settings.expiry < Duration::from_secs(1) || settings.expiry > MAX_EXPIRY {
            return Err(RedirectError::Expiry(settings.expiry));
        }
        let mut s3 = s3.as_ref().clone();
        if let Some(endpoint) = &settings.endpoint {
            let parsed = Url::parse(endpoint)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .filter(|u| u.host_str().is_some() && u.path() == "/" && u.query().is_none())
                .ok_or_else(|| RedirectError::Endpoint(endpoint.clone()))?;
            s3.allow_http = Some(parsed.scheme() == "http" || s3.allow_http == Some(true));
            s3.endpoint = Some(endpoint.trim_end_matches('/').to_string());
        }
        let signer = s3.build().map_err(|source| BackendError::Open {
            location: location.to_string(),
            source,
        })?;
        let prefix = (!s3.prefix.is_empty()).then(|| Path::from(s3.prefix.as_str()));
        Ok(BlobRedirects {
            signer,
            prefix,
            min_size: settings.min_size,
            expiry: settings.expiry,
        })
    }

    /// The object key inside the bucket.
    fn bucket_key(&self, key: Path) -> Path {
        match &self.prefix {
            Some(prefix) => prefix.parts().chain(key.parts()).collect(),
            None => key,
        }
    }
}

impl Store {
    /// Redirects whole-blob GETs of large blobs to presigned URLs (see `redirect.rs`).
    pub fn with_blob_redirects(
        mut self,
        location: &StorageLocation,
        settings: &RedirectSettings,
    ) -> std::result::Result<Self, RedirectError> {
        self.redirects = Some(Arc::new(BlobRedirects::new(location, settings)?));
        Ok(self)
    }

    /// A presigned URL for the whole blob when redirects are on and the blob is large
    /// enough; `Ok(None)` when berth serves it itself. `BlobUnknown` when `repo` does not
    /// link the blob: no URL is ever made for content a repository does not hold.
    pub async fn blob_redirect(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<BlobRedirect>> {
        let Some(redirects) = &self.redirects else {
            return Ok(None);
        };
        let BlobStat { size } = self
            .stat_blob(repo, digest)
            .await?
            .ok_or_else(|| StorageError::BlobUnknown(digest.clone()))?;
        if size < redirects.min_size {
            return Ok(None);
        }
        // The bytes may live where their upload wrote them (`blob-data/`, see
        // blob_index.rs), not at the content key.
        let key = redirects.bucket_key(self.content_key(digest).await?);
        let url = redirects
            .signer
            .signed_url(Method::GET, &key, redirects.expiry)
            .await
            .map_err(|e| StorageError::backend("presign", &key, e))?;
        Ok(Some(BlobRedirect { url, size }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::S3Settings;

    fn s3(prefix: &str) -> StorageLocation {
        StorageLocation::S3(Box::new(S3Settings {
            bucket: "registry".into(),
            prefix: prefix.into(),
            region: Some("us-east-1".into()),
            endpoint: Some("http://10.0.0.5:9000".into()),
            allow_http: Some(true),
            access_key_id: Some("key".into()),
            secret_access_key: Some("secret".into()),
            ..S3Settings::default()
        }))
    }

    fn settings(endpoint: Option<&str>) -> RedirectSettings {
        RedirectSettings {
            min_size: 1,
            expiry: Duration::from_secs(300),
            endpoint: endpoint.map(str::to_string),
        }
    }

    async fn url_for(location: &StorageLocation, settings: &RedirectSettings) -> Url {
        let redirects = BlobRedirects::new(location, settings).unwrap();
        let key = redirects.bucket_key(Path::from("blobs/sha256/abc"));
        redirects
            .signer
            .signed_url(Method::GET, &key, redirects.expiry)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn urls_name_the_prefixed_key_on_the_endpoint_clients_use() {
        let internal = url_for(&s3("team/berth"), &settings(None)).await;
        assert_eq!(internal.host_str(), Some("10.0.0.5"));
        assert_eq!(internal.path(), "/registry/team/berth/blobs/sha256/abc");
        let query: std::collections::HashMap<_, _> = internal.query_pairs().collect();
        assert_eq!(query["X-Amz-Expires"], "300");
        assert!(query.contains_key("X-Amz-Signature"));

        let public = url_for(&s3(""), &settings(Some("https://s3.example.com"))).await;
        assert_eq!(public.scheme(), "https");
        assert_eq!(public.host_str(), Some("s3.example.com"));
        assert_eq!(public.path(), "/registry/blobs/sha256/abc");
    }

    #[test]
    fn local_storage_bad_expiries_and_bad_endpoints_are_refused() {
        let local = StorageLocation::Local("/srv/berth".into());
        assert!(matches!(
            BlobRedirects::new(&local, &settings(None)),
            Err(RedirectError::NotS3(_))
        ));
        for expiry in [Duration::ZERO, MAX_EXPIRY + Duration::from_secs(1)] {
            let bad = RedirectSettings {
                expiry,
                ..settings(None)
            };
            assert!(matches!(
                BlobRedirects::new(&s3(""), &bad),
                Err(RedirectError::Expiry(_))
            ));
        }
        for endpoint in [
            "s3.example.com",
            "ftp://x",
            "http://x/path",
            "https://x?a=b",
        ] {
            assert!(
                matches!(
                    BlobRedirects::new(&s3(""), &settings(Some(endpoint))),
                    Err(RedirectError::Endpoint(_))
                ),
                "{endpoint}"
            );
        }
    }
}
