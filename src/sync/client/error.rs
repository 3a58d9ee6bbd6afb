//! What can go wrong talking to another registry, worded for the rule's status: each
//! error names the registry and the request, and maps to one condition reason.

/// An error from one registry, with enough context to act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("TLS with {url} failed: {detail}")]
    Tls { url: String, detail: String },
    #[error("{url} refused the credentials: {detail}")]
    Unauthorized { url: String, detail: String },
    #[error("{method} {url} answered {status}: {detail}")]
    Status {
        method: String,
        url: String,
        status: u16,
        /// The OCI error code of the body, when it had one.
        code: Option<String>,
        detail: String,
    },
    #[error("the token endpoint {realm} failed: {detail}")]
    Token { realm: String, detail: String },
    #[error("{what} from {url} is larger than the {limit}-byte limit")]
    TooLarge {
        what: String,
        url: String,
        limit: usize,
    },
    #[error("{what} from {url} is not valid: {detail}")]
    Invalid {
        what: String,
        url: String,
        detail: String,
    },
    #[error("TLS settings: {0}")]
    TlsConfig(String),
    #[error("reading {url}: {detail}")]
    Body { url: String, detail: String },
}

impl ClientError {
    /// The reason a `Ready=False` condition gives for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ClientError::Unreachable { .. } | ClientError::Body { .. } => "RemoteUnreachable",
            ClientError::Tls { .. } | ClientError::TlsConfig(_) => "RemoteTLSFailed",
            ClientError::Unauthorized { .. } | ClientError::Token { .. } => "RemoteAuthFailed",
            ClientError::Status { status: 403, .. } => "RemoteDenied",
            ClientError::Status { .. } => "RemoteError",
            ClientError::TooLarge { .. } | ClientError::Invalid { .. } => "InvalidContent",
        }
    }

    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::Body { .. } => true,
            ClientError::Status { status, .. } => *status >= 500 || *status == 429,
            ClientError::Token { .. } => true,
            _ => false,
        }
    }

    /// Whether the remote could not be reached at all (as opposed to refusing one request).
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. }
                | ClientError::Tls { .. }
                | ClientError::TlsConfig(_)
                | ClientError::Unauthorized { .. }
                | ClientError::Token { .. }
        )
    }

    /// Classifies a transport error: TLS problems apart from plain connection failures.
    pub(crate) fn from_reqwest(url: &str, e: &reqwest::Error) -> Self {
        let mut detail = e.to_string();
        let mut tls = false;
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            let text = s.to_string();
            if s.is::<rustls::Error>() || text.contains("certificate") || text.contains("tls") {
                tls = true;
            }
            detail.push_str(": ");
            detail.push_str(&text);
            source = s.source();
        }
        let url = url.to_string();
        if tls {
            ClientError::Tls { url, detail }
        } else if e.is_body() || e.is_decode() {
            ClientError::Body { url, detail }
        } else {
            ClientError::Unreachable { url, detail }
        }
    }
}
