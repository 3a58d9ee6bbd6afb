//! The `WWW-Authenticate` challenge that sends clients to the token endpoint.

use axum::http::{HeaderMap, HeaderValue, header};

use super::Settings;

/// The token endpoint's path on berth's own listener.
pub const TOKEN_PATH: &str = "/auth/token";

/// The token endpoint as the client reached berth: its scheme and host, unless configured.
pub fn realm(settings: &Settings, request: &HeaderMap) -> String {
    if let Some(realm) = &settings.realm {
        return realm.clone();
    }
    let text = |name| {
        request
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let scheme = text("x-forwarded-proto")
        .and_then(|s| s.split(',').next())
        .map(str::trim)
        .filter(|s| matches!(*s, "http" | "https"))
        .unwrap_or("http");
    // Only host-name characters: the value is echoed into a header and a URL.
    let host = text("x-forwarded-host")
        .or_else(|| text(header::HOST.as_str()))
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .unwrap_or("localhost");
    format!("{scheme}://{host}{TOKEN_PATH}")
}

/// `Bearer realm=…,service=…[,scope=…][,error=…]`.
pub fn bearer(
    settings: &Settings,
    request: &HeaderMap,
    scope: Option<&str>,
    error: Option<&str>,
) -> HeaderValue {
    let mut value = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        realm(settings, request),
        settings.service
    );
    if let Some(scope) = scope {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    if let Some(error) = error {
        value.push_str(&format!(",error=\"{error}\""));
    }
    // Host names and scopes are validated ASCII; anything else falls back to a bare challenge.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}
