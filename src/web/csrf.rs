//! Cross-site request forgery protection for the web API.
//!
//! The browser attaches the session cookie to every request to berth, whichever page
//! sends it, so a write is trusted only when it shows it comes from berth's own pages:
//!
//! - a cookie-authenticated write (any method but GET/HEAD/OPTIONS) carries the
//!   session's CSRF token in `X-Berth-CSRF`. The token is a SHA-256 of the session
//!   token, which is `HttpOnly`: only berth can compute it, and only a page of berth's
//!   origin can read it from `POST`/`GET /api/session` (no CORS headers are sent, so
//!   another origin cannot read those answers). A cross-site form cannot set a header.
//! - a write that a browser marks as coming from another site (`Sec-Fetch-Site:
//!   cross-site` or `same-site`) or from another origin (`Origin` not berth's host) is
//!   refused whatever it carries, sign-in included, so no other site can sign a user in
//!   to an account of its choosing either.
//!
//! Scripts authenticate with `Authorization: Basic`, which a browser never attaches on
//! another site's behalf here (berth never asks a browser for Basic credentials), so
//! they need no token.

use axum::extract::Request;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{ApiCode, ApiError};
use super::session::session_cookie;

/// The header a page sends its CSRF token in.
pub const HEADER: &str = "x-berth-csrf";

/// The CSRF token of a session: derived from the secret session token, so it needs no
/// storage and dies with the session.
pub fn token_for(session: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"berth-ui-csrf\0");
    hash.update(session.as_bytes());
    hex::encode(hash.finalize())
}

/// Why a write is refused, if it is.
pub fn check(method: &Method, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let refuse = |why: String| Err(ApiError::new(ApiCode::CsrfRejected, why));
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && matches!(site, "cross-site" | "same-site")
    {
        return refuse(format!(
            "{method} {path} was sent by a page of another site (Sec-Fetch-Site: {site}); berth accepts writes only from its own pages"
        ));
    }
    if let Some(origin) = text(header::ORIGIN.as_str()) {
        let host = text("x-forwarded-host").or_else(|| text(header::HOST.as_str()));
        let origin_host = origin.split_once("://").map(|(_, h)| h);
        if origin_host.is_none() || origin_host != host {
            return refuse(format!(
                "{method} {path} was sent from origin {origin}, not from berth's own pages"
            ));
        }
    }
    let Some(session) = session_cookie(headers) else {
        return Ok(());
    };
    if headers.contains_key(header::AUTHORIZATION)
        || (path == "/api/session" && method == Method::POST)
    {
        // Explicit credentials decide, not the cookie; signing in replaces the cookie.
        return Ok(());
    }
    let sent = text(HEADER).unwrap_or("");
    let expected = token_for(session);
    if sent.is_empty() {
        return refuse(format!(
            "{method} {path} is authenticated by the session cookie but carries no {HEADER} header; send the CSRF token from /api/session"
        ));
    }
    if !bool::from(sent.as_bytes().ct_eq(expected.as_bytes())) {
        return refuse(format!(
            "the {HEADER} header of {method} {path} is not this session's CSRF token"
        ));
    }
    Ok(())
}

/// The middleware in front of every `/api/` route.
pub async fn guard(request: Request, next: Next) -> Response {
    match check(request.method(), request.uri().path(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            tracing::info!(method = %request.method(), path = request.uri().path(), error = %e, "refused a possibly forged request");
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn reads_need_no_token() {
        let h = headers(&[("cookie", "berth_session=abc")]);
        assert!(check(&Method::GET, "/api/namespaces", &h).is_ok());
    }

    #[test]
    fn a_cookie_write_needs_the_session_token() {
        let cookie = ("cookie", "other=1; berth_session=abc");
        let none = headers(&[cookie]);
        let e = check(&Method::POST, "/api/repositories/a/b/-/delete-tags", &none).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "CSRF_REJECTED"));
        let wrong = headers(&[cookie, (HEADER, &token_for("abd"))]);
        assert!(check(&Method::DELETE, "/api/repositories/a/b", &wrong).is_err());
        let right = headers(&[
            cookie,
            (HEADER, &token_for("abc")),
            ("host", "reg:5000"),
            ("origin", "http://reg:5000"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(check(&Method::DELETE, "/api/repositories/a/b", &right).is_ok());
    }

    #[test]
    fn another_site_cannot_write_even_with_the_token() {
        let token = token_for("abc");
        let cross = headers(&[
            ("cookie", "berth_session=abc"),
            (HEADER, &token),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert!(check(&Method::POST, "/api/repositories/a/-/upload", &cross).is_err());
        let origin = headers(&[
            ("cookie", "berth_session=abc"),
            (HEADER, &token),
            ("host", "reg:5000"),
            ("origin", "https://evil.example"),
        ]);
        assert!(check(&Method::POST, "/api/repositories/a/-/upload", &origin).is_err());
        let login = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(check(&Method::POST, "/api/session", &login).is_err());
    }

    #[test]
    fn scripts_with_basic_credentials_need_no_token() {
        let h = headers(&[("authorization", "Basic dTpw")]);
        assert!(check(&Method::POST, "/api/repositories/a/-/delete-tags", &h).is_ok());
    }
}
