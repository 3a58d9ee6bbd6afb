//! Prometheus metrics, served at `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The method label of a request: the methods the registry serves by name, anything
/// else `other`, so made-up methods cannot grow the metric families without bound.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    /// From [`method_label`].
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    /// From [`method_label`].
    pub method: &'static str,
}

/// HTTP-side metrics of the registry.
pub struct HttpMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    /// Bytes of blobs whose GET was redirected to S3 (served by S3, not berth).
    pub bytes_redirected: Counter,
    pub upload_duration: Histogram,
    pub blob_serve_duration: Histogram,
}

/// How a token was obtained: `anonymous`, `basic` (GET with Basic auth), `password`
/// or `refresh_token` (POST grants); `refused` for failed attempts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub grant: &'static str,
}

/// How a password check ended: `ok`, `wrong` (a wrong password or an unknown user),
/// `throttled` (refused before checking: too many recent failures) or `busy` (refused:
/// the pool of password checks was full).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PasswordCheckLabels {
    pub result: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub http: HttpMetrics,
    pub tokens: Family<TokenLabels, Counter>,
    pub password_checks: Family<PasswordCheckLabels, Counter>,
    /// Upload sessions deleted after lying idle past `--upload-expiry`.
    pub uploads_expired: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::new_unshared())
    }

    /// Metrics that more components can still register into before they are shared.
    pub fn new_unshared() -> Self {
        let mut registry = Registry::with_prefix("berth");
        let latency = || Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let http = HttpMetrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            bytes_redirected: Counter::default(),
            upload_duration: latency(),
            blob_serve_duration: latency(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to produce the response head, by route and method",
            http.request_duration.clone(),
        );
        registry.register(
            "blob_received_bytes",
            "Blob bytes received in uploads",
            http.bytes_received.clone(),
        );
        registry.register(
            "blob_sent_bytes",
            "Blob bytes served to clients",
            http.bytes_sent.clone(),
        );
        registry.register(
            "blob_redirected_bytes",
            "Blob bytes clients were redirected to fetch from S3 (--blob-redirect-min-size)",
            http.bytes_redirected.clone(),
        );
        registry.register(
            "blob_upload_duration_seconds",
            "Time to receive and store one upload request body",
            http.upload_duration.clone(),
        );
        registry.register(
            "blob_serve_duration_seconds",
            "Time to stream one blob to a client",
            http.blob_serve_duration.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "auth_tokens",
            "Token endpoint requests by grant (refused: credentials not accepted)",
            tokens.clone(),
        );
        let password_checks = Family::<PasswordCheckLabels, Counter>::default();
        registry.register(
            "auth_password_checks",
            "Sign-ins that needed a password check, by result (ok, wrong, throttled, busy)",
            password_checks.clone(),
        );
        let uploads_expired = Counter::default();
        registry.register(
            "uploads_expired",
            "Upload sessions deleted after lying idle longer than --upload-expiry",
            uploads_expired.clone(),
        );
        Metrics {
            registry,
            http,
            tokens,
            password_checks,
            uploads_expired,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn method_labels_come_from_a_closed_set() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        for made_up in ["BREW", "get", "TRACE", "CONNECT", "X-Y"] {
            let method = Method::from_bytes(made_up.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other", "{made_up}");
        }
    }
}
