//! The token endpoint of the Docker token flow (`/auth/token`): GET with Basic auth
//! (docker, podman, skopeo, buildah) or anonymously, and POST with a password or a
//! refresh token (the OAuth2 form containerd and docker use). The token grants exactly
//! the requested actions the caller may perform now.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::Serialize;

use super::RegistryState;
use super::error::{ErrorCode, RegistryError};
use crate::auth::scope::{Scope, parse_all};
use crate::auth::token::{self, Claims, ResourceActions, Subject, TokenKind};
use crate::auth::{AuthError, SignedIn};
use crate::oci::RepositoryName;
use crate::policy::{Action, Caller};

#[derive(Serialize)]
struct TokenResponse {
    token: String,
    access_token: String,
    expires_in: u64,
    issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

fn params(text: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

fn first<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn count(state: &RegistryState, grant: &'static str) {
    state
        .metrics
        .tokens
        .get_or_create(&crate::metrics::TokenLabels { grant })
        .inc();
}

fn unauthorized(state: &RegistryState, headers: &HeaderMap, error: AuthError) -> Response {
    tracing::info!(%error, "token request refused");
    count(state, "refused");
    if let Some(wait) = error.retry_after() {
        return super::access::slow_down(error.to_string(), wait).into_response();
    }
    let settings = state.auth.settings();
    RegistryError::new(ErrorCode::Unauthorized, error.to_string())
        .with_header(
            header::WWW_AUTHENTICATE,
            super::header_value(format!(
                "Basic realm=\"{}\"",
                crate::auth::challenge::realm(settings, headers)
            )),
        )
        .into_response()
}

/// GET: credentials (if any) in the Authorization header, scopes in the query.
pub async fn get(
    State(state): State<RegistryState>,
    connection: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = params(query.as_deref().unwrap_or(""));
    let client = connection.map(|c| c.0.0.ip());
    let signed_in = match state.auth.sign_in(&headers, client).await {
        Ok(signed_in) => signed_in.unwrap_or(SignedIn {
            caller: Caller::Anonymous,
            until: None,
        }),
        Err(e) => return unauthorized(&state, &headers, e),
    };
    count(
        &state,
        if headers.contains_key(header::AUTHORIZATION) {
            "basic"
        } else {
            "anonymous"
        },
    );
    let scopes = parse_all(
        query
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    );
    let offline = first(&query, "offline_token") == Some("true");
    issue(&state, &signed_in, &scopes, offline)
}

/// POST: an OAuth2 form with `grant_type` `password` or `refresh_token`.
pub async fn post(
    State(state): State<RegistryState>,
    connection: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = connection.map(|c| c.0.0.ip());
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad_request("the form is not UTF-8");
    };
    let form = params(text);
    let signed_in = match first(&form, "grant_type") {
        Some("password") => {
            let (Some(user), Some(password)) = (first(&form, "username"), first(&form, "password"))
            else {
                return bad_request("grant_type=password needs username and password");
            };
            match state.auth.login(user, password, client).await {
                Ok(signed_in) => {
                    count(&state, "password");
                    signed_in
                }
                Err(e) => return unauthorized(&state, &headers, e),
            }
        }
        Some("refresh_token") => {
            let Some(refresh) = first(&form, "refresh_token") else {
                return bad_request("grant_type=refresh_token needs refresh_token");
            };
            let claims = token::decode(
                state.auth.key(),
                refresh,
                &state.auth.settings().service,
                TokenKind::Refresh,
                Timestamp::now().as_second(),
            );
            // A refresh token lends its own expiry to what it mints, so refreshing never
            // extends it: it dies with the credential it came from.
            match claims.map_err(AuthError::from).and_then(|c| {
                if c.subject != Subject::User {
                    return Err(AuthError::ServiceAccount(
                        "a ServiceAccount signs in with its own token, not a refresh token".into(),
                    ));
                }
                let until = jiff::Timestamp::from_second(c.exp).ok();
                state
                    .auth
                    .caller_of(&c)
                    .map(|caller| SignedIn { caller, until })
            }) {
                Ok(signed_in) => {
                    count(&state, "refresh_token");
                    signed_in
                }
                Err(e) => return unauthorized(&state, &headers, e),
            }
        }
        Some(other) => {
            return bad_request(&format!(
                "grant_type {other:?} is not supported (password, refresh_token)"
            ));
        }
        None => return bad_request("grant_type is required"),
    };
    let scopes = parse_all(
        form.iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    );
    // containerd asks for a refresh token with access_type=offline; returning one on
    // every POST is what distribution's token servers do for refresh grants too.
    let offline = first(&form, "access_type") == Some("offline")
        || first(&form, "grant_type") == Some("refresh_token");
    issue(&state, &signed_in, &scopes, offline)
}

fn bad_request(message: &str) -> Response {
    RegistryError::new(ErrorCode::Unsupported, message.to_string())
        .with_status(StatusCode::BAD_REQUEST)
        .into_response()
}

/// What `caller` may have of each requested scope, now.
fn grant(state: &RegistryState, caller: &Caller, scopes: &[Scope]) -> Vec<ResourceActions> {
    let snapshot = state.policy.current();
    let now = Timestamp::now();
    let mut granted: HashMap<(String, String), Vec<String>> = HashMap::new();
    for scope in scopes {
        let actions: Vec<String> = match scope.resource_type.as_str() {
            "repository" => {
                let Ok(repo) = scope.name.parse::<RepositoryName>() else {
                    continue;
                };
                let wanted: Vec<Action> = scope
                    .actions
                    .iter()
                    .flat_map(|a| match a.as_str() {
                        "*" => Action::ALL.to_vec(),
                        other => Action::parse(other).into_iter().collect(),
                    })
                    .collect();
                snapshot
                    .allowed_actions(caller, &repo, &wanted, now)
                    .into_iter()
                    .map(|a| a.as_str().to_string())
                    .collect()
            }
            // Listing is filtered per repository; any signed-in caller may ask.
            "registry" if scope.name == "catalog" && matches!(caller, Caller::User { .. }) => {
                vec!["*".to_string()]
            }
            _ => continue,
        };
        let entry = granted
            .entry((scope.resource_type.clone(), scope.name.clone()))
            .or_default();
        for a in actions {
            if !entry.contains(&a) {
                entry.push(a);
            }
        }
    }
    let mut access: Vec<ResourceActions> = granted
        .into_iter()
        .map(|((resource_type, name), actions)| ResourceActions {
            resource_type,
            name,
            actions,
        })
        .collect();
    access.sort_by(|a, b| (&a.resource_type, &a.name).cmp(&(&b.resource_type, &b.name)));
    access
}

/// The subject of a token for `caller`, and the kind of sign-in it must be re-checked against.
fn subject(caller: &Caller) -> Subject {
    match caller {
        Caller::Anonymous => Subject::Anonymous,
        Caller::User { name, .. } if name.starts_with("system:serviceaccount:") => {
            Subject::ServiceAccount
        }
        // A pull-only caller's tokens grant only pulls (what `grant` allowed it).
        Caller::User { .. } | Caller::PullOnly { .. } => Subject::User,
    }
}

fn claims_for(
    state: &RegistryState,
    signed_in: &SignedIn,
    kind: TokenKind,
    ttl: std::time::Duration,
    access: Vec<ResourceActions>,
) -> Claims {
    let caller = &signed_in.caller;
    let now = Timestamp::now().as_second();
    let exp = match signed_in.until {
        Some(until) => (now + ttl.as_secs() as i64).min(until.as_second()),
        None => now + ttl.as_secs() as i64,
    };
    let subject = subject(caller);
    let (sub, pwf) = match (caller, subject) {
        (Caller::Anonymous, _) => (String::new(), None),
        (Caller::User { name, .. } | Caller::PullOnly { name, .. }, Subject::User) => (
            name.clone(),
            state
                .auth
                .users()
                .current()
                .get(name)
                .map(|u| state.auth.password_fingerprint(u)),
        ),
        (Caller::User { name, .. } | Caller::PullOnly { name, .. }, _) => (name.clone(), None),
    };
    Claims {
        iss: token::ISSUER.into(),
        sub,
        aud: state.auth.settings().service.clone(),
        exp,
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        access,
        kind,
        subject,
        pwf,
    }
}

fn issue(state: &RegistryState, signed_in: &SignedIn, scopes: &[Scope], offline: bool) -> Response {
    let settings = state.auth.settings();
    let access = grant(state, &signed_in.caller, scopes);
    let claims = claims_for(
        state,
        signed_in,
        TokenKind::Access,
        settings.token_ttl,
        access,
    );
    let expires_in = (claims.exp - claims.iat).max(0) as u64;
    let token = token::encode(state.auth.key(), &claims);
    // Only users get refresh tokens: a ServiceAccount signs in again with its own
    // (short-lived, reviewed) token, so deleting the ServiceAccount revokes it.
    // Nor does a pull-only caller: its credential expires and is rotated.
    let refresh_token = (offline
        && matches!(signed_in.caller, Caller::User { .. })
        && subject(&signed_in.caller) == Subject::User)
        .then(|| {
            token::encode(
                state.auth.key(),
                &claims_for(
                    state,
                    signed_in,
                    TokenKind::Refresh,
                    settings.refresh_ttl,
                    Vec::new(),
                ),
            )
        });
    let body = TokenResponse {
        access_token: token.clone(),
        token,
        expires_in,
        issued_at: Timestamp::now().to_string(),
        refresh_token,
    };
    super::json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).expect("token responses serialize"),
    )
}
