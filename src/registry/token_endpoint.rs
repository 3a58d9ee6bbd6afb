//! The token endpoint of the Docker token flow (`/auth/token`): GET with Basic auth
//! (docker, podman, skopeo, buildah) or anonymously, and POST with a password or a
//! refresh token (the OAuth2 form containerd and docker use). The token grants exactly
//! the requested actions the caller may perform now.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::Serialize;

use super::RegistryState;
use super::error::{ErrorCode, RegistryError};
use crate::auth::scope::{Scope, parse_all};
use crate::auth::token::{self, Claims, ResourceActions, Subject, TokenKind};
use crate::auth::{AuthError, password_fingerprint};
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
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = params(query.as_deref().unwrap_or(""));
    let caller = match state.auth.authenticate(&headers).await {
        Ok(identity) => identity.caller,
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
    issue(&state, &caller, &scopes, offline)
}

/// POST: an OAuth2 form with `grant_type` `password` or `refresh_token`.
pub async fn post(State(state): State<RegistryState>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad_request("the form is not UTF-8");
    };
    let form = params(text);
    let caller = match first(&form, "grant_type") {
        Some("password") => {
            let (Some(user), Some(password)) = (first(&form, "username"), first(&form, "password"))
            else {
                return bad_request("grant_type=password needs username and password");
            };
            match state.auth.login(user, password).await {
                Ok(caller) => {
                    count(&state, "password");
                    caller
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
            match claims
                .map_err(AuthError::from)
                .and_then(|c| state.auth.caller_of(&c))
            {
                Ok(caller) => {
                    count(&state, "refresh_token");
                    caller
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
    issue(&state, &caller, &scopes, offline)
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

fn claims_for(
    state: &RegistryState,
    caller: &Caller,
    kind: TokenKind,
    ttl: std::time::Duration,
    access: Vec<ResourceActions>,
) -> Claims {
    let now = Timestamp::now().as_second();
    let (sub, subject, pwf) = match caller {
        Caller::Anonymous => (String::new(), Subject::Anonymous, None),
        Caller::User { name, .. } if name.starts_with("system:serviceaccount:") => {
            (name.clone(), Subject::ServiceAccount, None)
        }
        // A pull-only caller's token grants only what was allowed: pulls. It gets no
        // refresh token (that is for `Caller::User`), so it cannot outlive its credential much.
        Caller::User { name, .. } | Caller::PullOnly { name, .. } => (
            name.clone(),
            Subject::User,
            state
                .auth
                .users()
                .current()
                .get(name)
                .map(|u| password_fingerprint(&u.password_hash)),
        ),
    };
    Claims {
        iss: token::ISSUER.into(),
        sub,
        aud: state.auth.settings().service.clone(),
        exp: now + ttl.as_secs() as i64,
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        access,
        kind,
        subject,
        pwf,
    }
}

fn issue(state: &RegistryState, caller: &Caller, scopes: &[Scope], offline: bool) -> Response {
    let settings = state.auth.settings();
    let access = grant(state, caller, scopes);
    let claims = claims_for(state, caller, TokenKind::Access, settings.token_ttl, access);
    let token = token::encode(state.auth.key(), &claims);
    let refresh_token = (offline && matches!(caller, Caller::User { .. })).then(|| {
        token::encode(
            state.auth.key(),
            &claims_for(
                state,
                caller,
                TokenKind::Refresh,
                settings.refresh_ttl,
                Vec::new(),
            ),
        )
    });
    let body = TokenResponse {
        access_token: token.clone(),
        token,
        expires_in: settings.token_ttl.as_secs(),
        issued_at: Timestamp::now().to_string(),
        refresh_token,
    };
    super::json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).expect("token responses serialize"),
    )
}
