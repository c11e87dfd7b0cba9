//! What operators and orchestrators talk to, for either role: `/metrics`,
//! `/healthz` (the process is alive) and `/readyz` (Kafka answers), the
//! one readiness probe loop behind `/readyz`, and binding the listeners.
//!
//! With `[ops] listen` set, `/metrics` is served only on that listener
//! ([`router`]); the callback port keeps `/healthz` and `/readyz`
//! ([`health_router`]) for the load balancer, and answers 404 for the rest.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::IntGauge;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// `[ops]`: the operators' listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// `HOST:PORT` serving `/metrics`, `/healthz` and `/readyz`. When set,
    /// `/metrics` is served only here (the callback port answers 404 for
    /// it), so the port exposed to the internet does not tell the fd limit,
    /// open connections and close reasons; a worker-only process listens
    /// here instead of `http.listen`.
    pub listen: Option<SocketAddr>,
}

/// How often the readiness probe asks Kafka for metadata.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The longest error message put in a reply; keeps bodies under 1000 bytes
/// (Easemob bans a rule whose endpoint answers with more).
const MAX_MESSAGE_CHARS: usize = 300;

/// Binds `listen`, the address of the setting `key`, with an error that
/// says what to do.
pub async fn bind(listen: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.with_context(|| {
        format!(
            "cannot listen on {listen}; is another process using it? Set {key} to another address"
        )
    })
}

/// The operators' routes: `/metrics`, `/healthz` and `/readyz`; a role
/// `.merge()`s its own (JSON) routes into it. `before_scrape` runs before
/// each `/metrics` rendering, for gauges that are read rather than kept.
pub fn router(
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    before_scrape: impl Fn() + Clone + Send + Sync + 'static,
) -> Router {
    health_router(ready).merge(metrics_router(metrics, before_scrape))
}

/// `/metrics` alone.
pub fn metrics_router(
    metrics: Metrics,
    before_scrape: impl Fn() + Clone + Send + Sync + 'static,
) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            before_scrape();
            let body = metrics.render();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
                    .into_response()
            }
        }),
    )
}

/// `/healthz` (alive) and `/readyz` (`ready`: Kafka answers), served on
/// every listener: load balancers probe the port they send traffic to.
pub fn health_router(ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { reply(StatusCode::OK, json!({"status": "alive"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        reply(StatusCode::OK, json!({"status": "ready"}))
                    } else {
                        error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "Kafka metadata is not reachable",
                        )
                    }
                }
            }),
        )
}

/// `GET path` answering the JSON `report` makes on each request (the
/// worker's `/targets`).
pub fn json_route(
    path: &str,
    report: impl Fn() -> serde_json::Value + Clone + Send + Sync + 'static,
) -> Router {
    Router::new().route(
        path,
        get(move || {
            let body = report();
            async move { reply(StatusCode::OK, body) }
        }),
    )
}

/// The 404 of an ops listener.
pub async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// A short JSON reply.
pub fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `{"status": "error", "error": message}`, the message cut to a length
/// that keeps the body under 1000 bytes.
pub fn error(status: StatusCode, message: &str) -> Response {
    let message: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    reply(status, json!({"status": "error", "error": message}))
}

/// Keeps `ready` (and `gauge`, if given) equal to whether Kafka answers a
/// metadata request, asking every [`PROBE_INTERVAL`]. `ask` runs on a
/// blocking thread (librdkafka's metadata call blocks) and returns `None`
/// once its client is gone, which ends the loop; so does aborting it.
pub async fn probe_kafka(
    role: &'static str,
    ready: Arc<AtomicBool>,
    gauge: Option<IntGauge>,
    ask: impl Fn(Duration) -> Option<bool> + Clone + Send + 'static,
) {
    loop {
        let ask = ask.clone();
        let answer = tokio::task::spawn_blocking(move || ask(PROBE_INTERVAL))
            .await
            .unwrap_or(Some(false));
        let Some(ok) = answer else { return };
        if ok != ready.swap(ok, Ordering::Relaxed) {
            if ok {
                tracing::info!(role, "Kafka is reachable; ready");
            } else {
                tracing::warn!(role, "Kafka metadata is not reachable; /readyz answers 503");
            }
        }
        if let Some(g) = &gauge {
            g.set(ok as i64);
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
