//! Who calls the web API, and UI sessions.
//!
//! Scripts send Basic credentials (checked by the registry's own bounded, throttled
//! password check). The pages sign in once with `POST /api/session` and get a session
//! token: a berth-signed token that grants nothing on `/v2/` (its only grant is the
//! `berth-ui` session) and stands for the user's live permissions on the API. The page
//! keeps it in `sessionStorage` and sends it as `Authorization: Bearer`; no cookie is
//! involved, so a cross-site request carries no credentials at all (no CSRF), and the
//! token ends with the tab, at its expiry, or when the password changes.

use std::net::IpAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::error::{ApiCode, ApiError, ApiResult};
use crate::auth::token::{self, Claims, ResourceActions, Subject, TokenKind};
use crate::auth::{AuthError, Identity};
use crate::policy::Caller;
use crate::registry::RegistryState;

/// How long a UI session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

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
    let identity = state
        .auth
        .authenticate(headers, client)
        .await
        .map_err(auth_error)?;
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub token: String,
    pub user: String,
    pub admin: bool,
    pub expires_at: String,
}

/// `POST /api/session`: a UI session for a user name and password (or login-command
/// credential), through the same throttled check as every sign-in.
pub async fn sign_in(
    State(state): State<RegistryState>,
    connect: Client,
    Json(form): Json<SignIn>,
) -> ApiResult<Json<Session>> {
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
    Ok(Json(Session {
        token: token::encode(state.auth.key(), &claims),
        user: name,
        admin,
        expires_at,
    }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    pub signed_in: bool,
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
        user: identity.caller.name().map(str::to_string),
        admin,
        open: state.policy.current().open,
    }))
}
