//! Signing in to a remote registry the way docker clients do: Basic when the registry
//! asks for Basic, else the token flow — a `WWW-Authenticate: Bearer realm=…,service=…`
//! challenge, a token from the realm for the scopes a request needs (with the
//! credentials, if any), cached per scope until shortly before it expires.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// A user name and password (or identity token) for a remote registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// What a registry asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// Not asked yet.
    Unknown,
    /// It answered without asking for credentials.
    Open,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: Scheme,
    /// The scope a Bearer challenge names (what the refused request needs).
    pub scope: Option<String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge {
            scheme: Scheme::Basic,
            scope: None,
        });
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(Challenge {
        scheme: Scheme::Bearer {
            realm: get("realm")?,
            service: get("service"),
        },
        scope: get("scope"),
    })
}

/// `key="quoted, value",key2=token` → pairs; commas inside quotes stay in the value.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next().is_none() || key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

/// Tokens by scope, at most [`MAX_TOKENS`] (a sync touches few repositories at a time).
#[derive(Default)]
pub struct TokenCache(HashMap<String, (String, Instant)>);

const MAX_TOKENS: usize = 256;

/// A token is renewed this long before it expires, so no request carries a dying one.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

impl TokenCache {
    pub fn get(&self, scope: &str) -> Option<String> {
        self.0
            .get(scope)
            .filter(|(_, until)| Instant::now() + EXPIRY_MARGIN < *until)
            .map(|(t, _)| t.clone())
    }

    pub fn insert(&mut self, scope: String, token: String, lifetime: Duration) {
        if self.0.len() >= MAX_TOKENS {
            let now = Instant::now();
            self.0.retain(|_, (_, until)| *until > now);
            if self.0.len() >= MAX_TOKENS {
                self.0.clear();
            }
        }
        self.0.insert(scope, (token, Instant::now() + lifetime));
    }

    pub fn forget(&mut self, scope: &str) {
        self.0.remove(scope);
    }
}

/// The token endpoint's answer (`token`, or OAuth2's `access_token`).
#[derive(serde::Deserialize)]
pub struct TokenReply {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_give_realm_service_and_scope() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c.scheme,
            Scheme::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into())
            }
        );
        assert_eq!(c.scope.as_deref(), Some("repository:a/b:pull,push"));
    }

    #[test]
    fn basic_challenges_and_unknown_schemes() {
        assert_eq!(
            parse_challenge(r#"Basic realm="registry""#).unwrap().scheme,
            Scheme::Basic
        );
        assert!(parse_challenge("Negotiate abc").is_none());
        assert!(parse_challenge("Bearer service=x").is_none(), "no realm");
    }

    #[test]
    fn the_cache_forgets_expiring_tokens() {
        let mut cache = TokenCache::default();
        cache.insert("a".into(), "t".into(), Duration::from_secs(300));
        cache.insert("b".into(), "t".into(), Duration::from_secs(5));
        assert_eq!(cache.get("a").as_deref(), Some("t"));
        assert_eq!(cache.get("b"), None, "within the margin");
    }
}
