//! The web API's error codes, each with its HTTP status, and the JSON error body
//! `{"error": {"code": "...", "message": "..."}}`. Registry refusals met on the way
//! (quota, immutable tag, denied) keep their OCI code and status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::registry::error::RegistryError;
use crate::storage::StorageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiCode {
    /// No credentials, or credentials berth does not accept.
    Unauthorized,
    /// Signed in, without the permission.
    Denied,
    /// Not there, or not visible to this caller (a private repository looks absent).
    NotFound,
    BadRequest,
    /// An upload that is not a `docker save` or OCI image-layout tar.
    NotAnImage,
    /// An upload whose gzip stream is damaged.
    CorruptGzip,
    /// An upload whose tar is damaged, or whose blobs do not match their names.
    CorruptTar,
    /// An upload past the size limit.
    TooLarge,
    TooManyRequests,
    /// A cookie-authenticated write without the session's CSRF token, or sent from
    /// another site.
    CsrfRejected,
    Internal,
}

impl ApiCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiCode::Unauthorized => "UNAUTHORIZED",
            ApiCode::Denied => "DENIED",
            ApiCode::NotFound => "NOT_FOUND",
            ApiCode::BadRequest => "BAD_REQUEST",
            ApiCode::NotAnImage => "NOT_AN_IMAGE",
            ApiCode::CorruptGzip => "CORRUPT_GZIP",
            ApiCode::CorruptTar => "CORRUPT_TAR",
            ApiCode::TooLarge => "TOO_LARGE",
            ApiCode::TooManyRequests => "TOOMANYREQUESTS",
            ApiCode::CsrfRejected => "CSRF_REJECTED",
            ApiCode::Internal => "INTERNAL",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ApiCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiCode::Denied | ApiCode::CsrfRejected => StatusCode::FORBIDDEN,
            ApiCode::NotFound => StatusCode::NOT_FOUND,
            ApiCode::BadRequest
            | ApiCode::NotAnImage
            | ApiCode::CorruptGzip
            | ApiCode::CorruptTar => StatusCode::BAD_REQUEST,
            ApiCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApiCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<HeaderValue>,
    /// A `Set-Cookie` sent with the error (removing a session cookie that no longer works).
    pub set_cookie: Option<Box<HeaderValue>>,
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ApiCode, message: impl Into<String>) -> Self {
        ApiError {
            status: code.status(),
            code: code.as_str(),
            message: message.into(),
            retry_after: None,
            set_cookie: None,
        }
    }

    /// The error, also removing the browser's session cookie (it no longer works, and
    /// keeping it would fail every request, even for public pages).
    pub fn clearing_session(mut self, secure: bool) -> Self {
        self.set_cookie = Some(Box::new(super::session::cookie("", 0, secure)));
        self
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::new(
            ApiCode::NotFound,
            format!("{what} does not exist, or you may not see it"),
        )
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let retry_after = e
            .headers
            .iter()
            .find(|(n, _)| n == header::RETRY_AFTER)
            .map(|(_, v)| v.clone());
        ApiError {
            status: e.status,
            code: e.code.as_str(),
            message: e.message,
            retry_after,
            set_cookie: None,
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        RegistryError::from(e).into()
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Entry<'a>,
}

#[derive(Serialize)]
struct Entry<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: Entry {
                code: self.code,
                message: &self.message,
            },
        })
        .expect("error bodies serialize");
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let Some(wait) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, wait);
        }
        if let Some(cookie) = self.set_cookie {
            response.headers_mut().insert(header::SET_COOKIE, *cookie);
        }
        response
    }
}
