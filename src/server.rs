//! Assembles the HTTP application: the registry API, health probes and metrics,
//! behind one metrics-recording middleware.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::metrics::{Metrics, RequestLabels, RouteLabels, method_label};
use crate::registry::{self, RegistryState, RouteLabel};

pub fn app(state: RegistryState) -> Router {
    app_with_cluster(state, None)
}

/// The application, with the cluster berth runs in when it runs as an operator (the
/// web UI shows where each tag runs).
pub fn app_with_cluster(state: RegistryState, cluster: Option<kube::Client>) -> Router {
    let metrics = state.metrics.clone();
    let web = crate::web::WebState {
        registry: state.clone(),
        cluster: cluster.map(|client| crate::web::runs::Cluster { client }),
    };
    registry::router(state.clone())
        .merge(crate::web::router(web))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz).with_state(state.clone()))
        .route("/metrics", get(serve_metrics).with_state(metrics.clone()))
        .layer(middleware::from_fn_with_state(metrics, record))
}

/// How long `/readyz` waits for storage: less than the chart's probe timeout (5 s), so
/// a store that is down answers 503 with a reason rather than a timed-out probe.
const READINESS_STORAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Ready when berth can serve: the configuration is loaded and storage answers. A
/// registry that would refuse pushes for want of its policy, or cannot reach its store,
/// should not get traffic; `/healthz` (liveness) stays up meanwhile, as restarting
/// berth does not bring the store back.
async fn readyz(State(state): State<RegistryState>) -> Response {
    if !state.policy.is_loaded() || !state.auth.users().is_loaded() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "configuration not loaded yet",
        )
            .into_response();
    }
    let unavailable = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage unavailable: {reason}"),
        )
            .into_response()
    };
    match tokio::time::timeout(READINESS_STORAGE_TIMEOUT, state.store.check_reachable()).await {
        Ok(Ok(())) => "ready".into_response(),
        Ok(Err(e)) => unavailable(e.to_string()),
        Err(_) => unavailable(format!(
            "no answer within {}s",
            READINESS_STORAGE_TIMEOUT.as_secs()
        )),
    }
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}

async fn record(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let path_label = match request.uri().path() {
        "/healthz" => Some("healthz"),
        "/readyz" => Some("readyz"),
        "/metrics" => Some("metrics"),
        p if p.starts_with("/api/") => Some("api"),
        p if p == "/ui" || p.starts_with("/ui/") => Some("ui"),
        _ => None,
    };
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map(|l| l.0)
        .or(path_label)
        .unwrap_or("other");
    metrics
        .http
        .request_duration
        .get_or_create(&RouteLabels { route, method })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Serves `app` until SIGINT or SIGTERM, then finishes in-flight requests.
pub async fn serve(listener: TcpListener, app: Router) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        // Small manifest replies must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
    });
    // The peer's address reaches handlers (throttling of failed sign-ins).
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
