//! Parses `/v2/...` paths once, into a route with validated parts. Repository names
//! contain slashes, so the path is read from its end: the last one or two segments say
//! what is addressed, and everything before them is the name.

use super::error::{ErrorCode, RegistryError, Result};
use crate::oci::{Digest, Reference, RepositoryName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepositoryName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepositoryName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepositoryName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    Uploads(RepositoryName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepositoryName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepositoryName, Digest),
}

impl Route {
    /// The repository the request addresses, if any.
    pub fn repository(&self) -> Option<&RepositoryName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::Uploads(n)
            | Route::Upload(n, _)
            | Route::Referrers(n, _) => Some(n),
        }
    }

    /// A low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::Uploads(_) => "uploads",
            Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }
}

fn not_found(path: &str) -> RegistryError {
    RegistryError::new(ErrorCode::Unsupported, format!("no registry API at {path}"))
        .with_status(axum::http::StatusCode::NOT_FOUND)
}

/// Parses the raw (still percent-encoded) request path.
pub fn parse(path: &str) -> Result<Route> {
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => return Ok(Route::Base),
        Some(r) => r.strip_prefix('/').ok_or_else(|| not_found(path))?,
        None => return Err(not_found(path)),
    };
    // No valid name, tag, digest or upload id contains '%': refusing it outright means
    // no encoded '.', '/' or other trick can reach the parsers below.
    if rest.contains('%') {
        return Err(RegistryError::new(
            ErrorCode::NameInvalid,
            "percent-encoded characters are not allowed in registry paths",
        ));
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let (head, tail) = rest.rsplit_once('/').ok_or_else(|| not_found(path))?;
    let (name, keyword) = head.rsplit_once('/').ok_or_else(|| not_found(path))?;
    let route = match keyword {
        "tags" if tail == "list" => Route::Tags(name.parse()?),
        "manifests" => Route::Manifest(name.parse()?, tail.parse()?),
        "blobs" if tail == "uploads" => Route::Uploads(name.parse()?),
        "blobs" => Route::Blob(name.parse()?, tail.parse()?),
        "referrers" => Route::Referrers(name.parse()?, tail.parse()?),
        "uploads" => {
            let name = name.strip_suffix("/blobs").ok_or_else(|| not_found(path))?;
            if tail.is_empty() {
                Route::Uploads(name.parse()?)
            } else {
                Route::Upload(name.parse()?, tail.to_string())
            }
        }
        _ => return Err(not_found(path)),
    };
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RepositoryName {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_endpoint_with_nested_names() {
        let d = format!("sha256:{}", "a".repeat(64));
        let digest: Digest = d.parse().unwrap();
        assert_eq!(parse("/v2/").unwrap(), Route::Base);
        assert_eq!(parse("/v2").unwrap(), Route::Base);
        assert_eq!(parse("/v2/_catalog").unwrap(), Route::Catalog);
        assert_eq!(
            parse("/v2/a/b/c/tags/list").unwrap(),
            Route::Tags(name("a/b/c"))
        );
        assert_eq!(
            parse("/v2/a/b/manifests/latest").unwrap(),
            Route::Manifest(name("a/b"), "latest".parse().unwrap())
        );
        assert_eq!(
            parse(&format!("/v2/a/blobs/{d}")).unwrap(),
            Route::Blob(name("a"), digest.clone())
        );
        assert_eq!(
            parse("/v2/a/b/blobs/uploads/").unwrap(),
            Route::Uploads(name("a/b"))
        );
        assert_eq!(
            parse("/v2/a/b/blobs/uploads").unwrap(),
            Route::Uploads(name("a/b"))
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/1234-abcd").unwrap(),
            Route::Upload(name("a"), "1234-abcd".into())
        );
        assert_eq!(
            parse(&format!("/v2/x/referrers/{d}")).unwrap(),
            Route::Referrers(name("x"), digest.clone())
        );
        // Keywords may also be name components.
        assert_eq!(
            parse("/v2/blobs/manifests/manifests/v1").unwrap(),
            Route::Manifest(name("blobs/manifests"), "v1".parse().unwrap())
        );
        assert_eq!(
            parse(&format!("/v2/a/blobs/uploads/blobs/{d}")).unwrap(),
            Route::Blob(name("a/blobs/uploads"), digest)
        );
    }

    #[test]
    fn rejects_tricks_with_the_right_code() {
        let code = |p: &str| parse(p).unwrap_err().code;
        assert_eq!(code("/v2/a/%2e%2e/manifests/v1"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/../etc/manifests/v1"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a//b/manifests/v1"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/Upper/manifests/v1"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a/manifests/..x"), ErrorCode::TagInvalid);
        assert_eq!(code("/v2/a/blobs/sha256:xyz"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/unknown/thing"), ErrorCode::Unsupported);
        assert_eq!(code("/v3/a/manifests/v1"), ErrorCode::Unsupported);
    }
}
