//! The gate every registry request passes: who is calling (auth), what the request
//! does (route and method), and whether the live policy allows it. Refusals follow the
//! token specification: a caller who has not shown who they are, or whose token lacks
//! the scope, gets `UNAUTHORIZED` with a challenge naming the scope to ask for; a known
//! caller without the permission gets `DENIED` with the reason.

use axum::http::{HeaderMap, Method, header};
use jiff::Timestamp;

use super::error::{ErrorCode, RegistryError, Result};
use super::routes::Route;
use super::{RegistryState, Request};
use crate::auth::Identity;
use crate::auth::challenge;
use crate::oci::RepositoryName;
use crate::policy::{Action, Caller, Snapshot};

/// What a request needs.
enum Need<'a> {
    /// `/v2/`: any credentials, so `docker login` can check them.
    SignedIn,
    /// `_catalog`: a signed-in caller; the listing is filtered per repository.
    Catalog,
    Repository(&'a RepositoryName, Action),
}

fn need<'a>(route: &'a Route, method: &Method) -> Need<'a> {
    let action = match (route, method) {
        (Route::Base, _) => return Need::SignedIn,
        (Route::Catalog, _) => return Need::Catalog,
        (Route::Manifest(..) | Route::Blob(..), &Method::DELETE) => Action::Delete,
        (Route::Uploads(_) | Route::Upload(..), _) => Action::Push,
        (Route::Manifest(..), &Method::PUT) => Action::Push,
        _ => Action::Pull,
    };
    let repo = route
        .repository()
        .expect("every other route names a repository");
    Need::Repository(repo, action)
}

/// The scope a client should ask a token for, as distribution words it.
fn scope_for(repo: &RepositoryName, action: Action) -> String {
    let actions = match action {
        Action::Pull => "pull",
        Action::Push => "pull,push",
        Action::Delete => "delete",
    };
    format!("repository:{repo}:{actions}")
}

/// The source of a cross-repository mount (`POST …/uploads/?mount=…&from=…`).
fn mount_source(route: &Route, req: &Request) -> Option<RepositoryName> {
    match route {
        Route::Uploads(_) if req.method == Method::POST && req.query("mount").is_some() => {
            req.query("from")?.parse().ok()
        }
        _ => None,
    }
}

/// Every scope the request needs, space-separated as distribution's challenges list
/// them: a mount also reads its source, so a client asks one token for both.
fn challenge_scope(route: &Route, req: &Request, repo: &RepositoryName, action: Action) -> String {
    let scope = scope_for(repo, action);
    match mount_source(route, req) {
        Some(from) if &from != repo => format!("{scope} {}", scope_for(&from, Action::Pull)),
        _ => scope,
    }
}

fn unauthorized(
    state: &RegistryState,
    headers: &HeaderMap,
    message: String,
    scope: Option<&str>,
    error: Option<&str>,
) -> RegistryError {
    RegistryError::new(ErrorCode::Unauthorized, message).with_header(
        header::WWW_AUTHENTICATE,
        challenge::bearer(state.auth.settings(), headers, scope, error),
    )
}

/// `TOOMANYREQUESTS` with `Retry-After` (whole seconds, at least one).
pub(crate) fn slow_down(message: String, wait: std::time::Duration) -> RegistryError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    RegistryError::new(ErrorCode::TooManyRequests, message).with_header(
        header::RETRY_AFTER,
        super::header_value(seconds.max(1).to_string()),
    )
}

/// Authenticates and authorizes `req`, returning who is calling. In an open registry
/// (no configuration) everyone may do everything and credentials are not examined.
pub async fn admit(state: &RegistryState, route: &Route, req: &Request) -> Result<Identity> {
    if let Some(identity) = &req.in_process {
        return Ok(identity.clone());
    }
    let snapshot = state.policy.current();
    if snapshot.open {
        return Ok(Identity {
            caller: Caller::User {
                name: "anonymous".into(),
                admin: true,
            },
            presented: false,
            token: None,
        });
    }
    let identity = match state.auth.authenticate(&req.headers, req.client).await {
        Ok(identity) => identity,
        Err(e) => {
            tracing::info!(error = %e, "authentication failed");
            if let Some(wait) = e.retry_after() {
                return Err(slow_down(e.to_string(), wait));
            }
            let scope = match need(route, &req.method) {
                Need::Repository(repo, action) => Some(challenge_scope(route, req, repo, action)),
                Need::Catalog => Some("registry:catalog:*".to_string()),
                Need::SignedIn => None,
            };
            return Err(unauthorized(
                state,
                &req.headers,
                e.to_string(),
                scope.as_deref(),
                Some("invalid_token"),
            ));
        }
    };
    authorize_route(state, route, req, &identity)?;
    Ok(identity)
}

/// Whether the authenticated `identity` may make `req` on `route`: the registry's own
/// decision, also asked by the web API before it runs a registry operation.
pub fn authorize_route(
    state: &RegistryState,
    route: &Route,
    req: &Request,
    identity: &Identity,
) -> Result<()> {
    let snapshot = state.policy.current();
    if snapshot.open {
        return Ok(());
    }
    match need(route, &req.method) {
        Need::SignedIn => {
            if !identity.presented {
                return Err(unauthorized(
                    state,
                    &req.headers,
                    "authentication required".into(),
                    None,
                    None,
                ));
            }
        }
        Need::Catalog => {
            let scope = "registry:catalog:*";
            let token_ok = identity
                .token
                .as_ref()
                .is_none_or(|t| t.grants("registry", "catalog", "*"));
            if !identity.presented || !token_ok || identity.caller == Caller::Anonymous {
                return Err(unauthorized(
                    state,
                    &req.headers,
                    "listing the catalog needs a signed-in user".into(),
                    Some(scope),
                    None,
                ));
            }
        }
        Need::Repository(repo, action) => {
            let scope = challenge_scope(route, req, repo, action);
            authorize(
                state,
                &snapshot,
                identity,
                repo,
                action,
                &scope,
                &req.headers,
            )?;
        }
    }
    Ok(())
}

fn authorize(
    state: &RegistryState,
    snapshot: &Snapshot,
    identity: &Identity,
    repo: &RepositoryName,
    action: Action,
    scope: &str,
    headers: &HeaderMap,
) -> Result<()> {
    let live = snapshot.may(&identity.caller, repo, action, Timestamp::now());
    let token_grants = identity
        .token
        .as_ref()
        .is_none_or(|t| t.grants("repository", repo.as_str(), action.as_str()));
    if live.is_ok() && token_grants {
        return Ok(());
    }
    if !identity.presented || identity.caller == Caller::Anonymous {
        let message = live
            .err()
            .map(|d| d.to_string())
            .unwrap_or_else(|| "authentication required".into());
        return Err(unauthorized(state, headers, message, Some(scope), None));
    }
    if action == Action::Push {
        // A namespace that does not exist is the more useful thing to hear about.
        snapshot
            .check_push(repo)
            .map_err(|refusal| RegistryError::new(ErrorCode::Denied, refusal.to_string()))?;
    }
    match live {
        Err(denial) => Err(RegistryError::new(ErrorCode::Denied, denial.to_string())),
        // Allowed now, but the token was issued without it: ask for a new token.
        Ok(()) => Err(unauthorized(
            state,
            headers,
            format!("the token does not grant {} on {repo}", action.as_str()),
            Some(scope),
            Some("insufficient_scope"),
        )),
    }
}

/// Whether an admitted mount request may read its source. Never "from anywhere the
/// blob exists", which would reveal private content: only from a named repository the
/// caller may pull; otherwise the request becomes a plain upload, revealing nothing.
/// A caller the policy lets pull the source, whose token was issued without that
/// scope, is asked for a new token naming both scopes, as distribution does: clients
/// that cache a token per repository (the conformance suite) would else never mount.
pub fn may_mount(state: &RegistryState, route: &Route, req: &Request) -> Result<bool> {
    let Some(from) = mount_source(route, req) else {
        return Ok(false);
    };
    if !may_list(state, &req.identity, &from) {
        return Ok(false);
    }
    let token_grants = req
        .identity
        .token
        .as_ref()
        .is_none_or(|t| t.grants("repository", from.as_str(), "pull"));
    if token_grants {
        return Ok(true);
    }
    let Need::Repository(repo, action) = need(route, &req.method) else {
        return Ok(false);
    };
    Err(unauthorized(
        state,
        &req.headers,
        format!("the token does not grant pull on {from}, the source of the mount"),
        Some(&challenge_scope(route, req, repo, action)),
        Some("insufficient_scope"),
    ))
}

/// Whether `repo` shows in the caller's catalog: the policy alone decides, as a
/// catalog token carries no per-repository scopes.
pub fn may_list(state: &RegistryState, identity: &Identity, repo: &RepositoryName) -> bool {
    state
        .policy
        .current()
        .may(&identity.caller, repo, Action::Pull, Timestamp::now())
        .is_ok()
}
