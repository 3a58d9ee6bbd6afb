//! Who calls the web API, and UI sessions.
//!
//! Scripts send Basic credentials (checked by the registry's own bounded, throttled
//! password check). The pages sign in once with `POST /api/session`, which sets the
//! session cookie `berth_session`: a berth-signed token that grants nothing on `/v2/`
//! (its only grant is the `berth-ui` session) and stands for the user's live
//! permissions on the API. The cookie is `HttpOnly` (no script reads it, so an
//! injected script cannot carry it away), `SameSite=Strict` (no other site's page makes
//! the browser send it), `Path=/`, and `Secure` when the client reached berth over TLS.
//! It ends at its expiry, on sign-out, or when the password changes.
//!
//! A browser sends a cookie with every request to berth, so cookie-authenticated writes
//! are guarded against cross-site request forgery (`csrf.rs`): each must carry the
//! session's CSRF token in `X-Berth-CSRF`, which only a page of berth's own origin can
//! learn (`POST`/`GET /api/session` return it; cross-origin reads are not allowed).

use std::net::IpAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::error::{ApiCode, ApiError, ApiResult};
use crate::auth::token::{self, Claims, ResourceActions, Subject, TokenKind};
use crate::auth::{AuthError, Identity};
use crate::policy::Caller;
use crate::registry::RegistryState;

/// How long a UI session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// The session cookie's name.
pub const COOKIE: &str = "berth_session";

const SESSION_RESOURCE: &str = "berth-ui";
const SESSION_NAME: &str = "session";

fn auth_error(e: AuthError) -> ApiError {
    let mut error = ApiError::new(ApiCode::Unauthorized, e.to_string());
    if let Some(wait) = e.retry_after() {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        error = ApiError::new(ApiCode::TooManyRequests, e.to_string());
        error.retry_after = Some(seconds.max(1).into());
    }
    error
}

/// Who sent `headers`: anonymous, a Basic-auth user, or the holder of a UI session.
/// The identity carries no token: what it may do is the live policy's answer, exactly
/// as for a Basic-auth registry request.
pub async fn caller(
    state: &RegistryState,
    headers: &HeaderMap,
    client: Option<IpAddr>,
) -> ApiResult<Identity> {
    if state.policy.current().open {
        return Ok(Identity {
            caller: Caller::User {
                name: "anonymous".into(),
                admin: true,
            },
            presented: false,
            token: None,
        });
    }
    let identity = if headers.contains_key(header::AUTHORIZATION) {
        state
            .auth
            .authenticate(headers, client)
            .await
            .map_err(auth_error)?
    } else if let Some(cookie) = session_cookie(headers) {
        // The cookie's token is checked exactly as a bearer token would be.
        let mut as_bearer = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {cookie}")).map_err(|_| {
            ApiError::new(ApiCode::Unauthorized, "the session cookie is malformed")
                .clearing_session(over_tls(state, headers))
        })?;
        as_bearer.insert(header::AUTHORIZATION, value);
        state
            .auth
            .authenticate(&as_bearer, client)
            .await
            .map_err(|e| {
                ApiError::new(
                    ApiCode::Unauthorized,
                    format!("the UI session is no longer valid ({e}); sign in again"),
                )
                .clearing_session(over_tls(state, headers))
            })?
    } else {
        Identity::nobody()
    };
    if let Some(token) = &identity.token
        && !token.grants(SESSION_RESOURCE, SESSION_NAME, "*")
    {
        return Err(ApiError::new(
            ApiCode::Unauthorized,
            "this API takes Basic credentials or a session token from POST /api/session, not a registry token",
        ));
    }
    Ok(Identity {
        token: None,
        ..identity
    })
}

/// The peer's address, when the server recorded it (throttling of failed sign-ins).
pub struct Client(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Client(
            parts
                .extensions
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

pub fn client(connect: Client) -> Option<IpAddr> {
    connect.0
}

#[derive(Deserialize)]
pub struct SignIn {
    pub username: String,
    pub password: String,
}

/// What a sign-in answers. The session itself is in the cookie, out of the page's reach;
/// the page keeps only the CSRF token, which is worthless without the cookie.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub user: String,
    pub admin: bool,
    pub expires_at: String,
    pub csrf_token: String,
}

/// The session token in the request's `berth_session` cookie, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Whether the client reached berth over TLS: berth listens in plain HTTP behind a
/// TLS-terminating proxy or ingress, which says so in `X-Forwarded-Proto`; a realm
/// configured as `https://…` says the same.
pub fn over_tls(state: &RegistryState, headers: &HeaderMap) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    forwarded
        || state
            .auth
            .settings()
            .realm
            .as_deref()
            .is_some_and(|r| r.starts_with("https://"))
}

/// The `Set-Cookie` value carrying a session for `max_age` seconds (0 removes it).
pub fn cookie(token: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        max_age.max(0)
    ))
    .expect("session tokens are base64url and dots")
}

/// `POST /api/session`: a UI session for a user name and password (or login-command
/// credential), through the same throttled check as every sign-in.
pub async fn sign_in(
    State(state): State<RegistryState>,
    connect: Client,
    headers: HeaderMap,
    Json(form): Json<SignIn>,
) -> ApiResult<Response> {
    let signed_in = state
        .auth
        .login(&form.username, &form.password, client(connect))
        .await
        .map_err(auth_error)?;
    let (name, admin, subject) = match &signed_in.caller {
        Caller::User { name, admin } if name.starts_with("system:serviceaccount:") => {
            (name.clone(), *admin, Subject::ServiceAccount)
        }
        Caller::User { name, admin } => (name.clone(), *admin, Subject::User),
        Caller::PullOnly { .. } | Caller::Anonymous => {
            return Err(ApiError::new(
                ApiCode::Unauthorized,
                "a pull-only credential cannot open a UI session; sign in with the user's password",
            ));
        }
    };
    let now = Timestamp::now();
    let mut expires = now.as_second() + SESSION_TTL.as_secs() as i64;
    if let Some(until) = signed_in.until {
        expires = expires.min(until.as_second());
    }
    let pwf = match subject {
        Subject::User => state
            .auth
            .users()
            .current()
            .get(&name)
            .map(|u| state.auth.password_fingerprint(u)),
        _ => None,
    };
    let claims = Claims {
        iss: token::ISSUER.into(),
        sub: name.clone(),
        aud: state.auth.settings().service.clone(),
        exp: expires,
        nbf: now.as_second() - 5,
        iat: now.as_second(),
        jti: uuid::Uuid::new_v4().to_string(),
        access: vec![ResourceActions {
            resource_type: SESSION_RESOURCE.into(),
            name: SESSION_NAME.into(),
            actions: vec!["*".into()],
        }],
        kind: TokenKind::Access,
        subject,
        pwf,
    };
    let expires_at = Timestamp::from_second(expires)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let session = token::encode(state.auth.key(), &claims);
    let set_cookie = cookie(
        &session,
        expires - now.as_second(),
        over_tls(&state, &headers),
    );
    Ok((
        [(header::SET_COOKIE, set_cookie)],
        Json(Session {
            csrf_token: super::csrf::token_for(&session),
            user: name,
            admin,
            expires_at,
        }),
    )
        .into_response())
}

/// `DELETE /api/session`: signs out (the cookie is removed; like any cookie-authenticated
/// write, this needs the CSRF token, so no other site can sign a user out).
pub async fn sign_out(State(state): State<RegistryState>, headers: HeaderMap) -> Response {
    (
        axum::http::StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            cookie("", 0, over_tls(&state, &headers)),
        )],
    )
        .into_response()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    pub signed_in: bool,
    /// The CSRF token of the session cookie sent, for the page's writes.
    pub csrf_token: Option<String>,
    pub user: Option<String>,
    pub admin: bool,
    pub open: bool,
}

/// `GET /api/session`: who the credentials sent belong to.
pub async fn who_am_i(
    State(state): State<RegistryState>,
    connect: Client,
    headers: HeaderMap,
) -> ApiResult<Json<WhoAmI>> {
    let identity = caller(&state, &headers, client(connect)).await?;
    let admin = matches!(identity.caller, Caller::User { admin: true, .. });
    Ok(Json(WhoAmI {
        signed_in: identity.presented,
        csrf_token: session_cookie(&headers)
            .filter(|_| identity.presented && !headers.contains_key(header::AUTHORIZATION))
            .map(super::csrf::token_for),
        user: identity.caller.name().map(str::to_string),
        admin,
        open: state.policy.current().open,
    }))
}
