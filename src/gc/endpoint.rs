//! `/api/gc`: garbage collection on demand, for administrators.
//!
//! * `POST /api/gc` runs a collection now and answers with its report;
//! * `GET /api/gc` answers with the last run, the next scheduled one and the settings.
//!
//! Callers sign in as to the registry (Basic, or a bearer token from `/auth/token`);
//! errors have the registry's JSON error body.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{Collector, GcError};
use crate::auth::Auth;
use crate::policy::{Caller, Policy};
use crate::registry::access::slow_down;
use crate::registry::error::{ErrorCode, RegistryError};

#[derive(Clone)]
struct GcState {
    collector: Arc<Collector>,
    auth: Auth,
    policy: Policy,
}

pub fn router(collector: Arc<Collector>, auth: Auth, policy: Policy) -> Router {
    Router::new()
        .route("/api/gc", get(last).post(run))
        .with_state(GcState {
            collector,
            auth,
            policy,
        })
}

/// Only administrators may start or read garbage collection.
async fn require_admin(state: &GcState, request: Request) -> Result<(), RegistryError> {
    let (request, _) = request.into_parts();
    if state.policy.current().open {
        // No configuration: everyone may do everything, as on the registry's routes.
        return Ok(());
    }
    let client = request
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let identity = state
        .auth
        .authenticate(&request.headers, client)
        .await
        .map_err(|e| match e.retry_after() {
            Some(wait) => slow_down(e.to_string(), wait),
            None => RegistryError::new(ErrorCode::Unauthorized, e.to_string()),
        })?;
    match identity.caller {
        Caller::User { admin: true, .. } => Ok(()),
        Caller::Anonymous => Err(RegistryError::new(
            ErrorCode::Unauthorized,
            "sign in as an administrator to run garbage collection",
        )
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"berth\""),
        )),
        _ => Err(RegistryError::new(
            ErrorCode::Denied,
            "only administrators may run garbage collection",
        )),
    }
}

async fn run(State(state): State<GcState>, request: Request) -> Response {
    if let Err(e) = require_admin(&state, request).await {
        return e.into_response();
    }
    match state.collector.run("request").await {
        Ok(_) => axum::Json(json!({ "run": state.collector.last_run() })).into_response(),
        Err(GcError::NotLeader) => {
            RegistryError::new(ErrorCode::Unknown, GcError::NotLeader.to_string())
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
                .into_response()
        }
        Err(GcError::Storage(e)) => RegistryError::from(e).into_response(),
    }
}

async fn last(State(state): State<GcState>, request: Request) -> Response {
    if let Err(e) = require_admin(&state, request).await {
        return e.into_response();
    }
    let options = state.collector.options();
    axum::Json(json!({
        "lastRun": state.collector.last_run(),
        "nextRun": state.collector.next_run(),
        "graceSeconds": options.grace.as_secs(),
        "untaggedDelaySeconds": options.untagged_delay.as_secs(),
    }))
    .into_response()
}
