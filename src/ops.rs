//! What operators and orchestrators talk to, for either role: `/metrics`,
//! `/healthz` (the process is alive) and `/readyz` (Kafka answers and
//! acknowledges, and if not, why: [`Readiness`]), the one readiness probe
//! loop behind `/readyz`, and binding the listeners.
//!
//! With `[ops] listen` set, `/metrics` is served only on that listener
//! ([`router`]); the callback port keeps `/healthz` and `/readyz`
//! ([`health_router`]) for the load balancer, and answers 404 for the rest.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::IntGauge;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::kafka::client::Watched;
use crate::metrics::Metrics;

/// Whether a role should get traffic and, when not, why: what `/readyz`
/// answers. Not ready while Kafka's metadata cannot be read, while the
/// role's producers have had records waiting for an acknowledgement past
/// the deadline with none acknowledged since (brokers down, too few
/// in-sync replicas), and for good after a producer's fatal error.
#[derive(Default)]
pub struct Readiness {
    /// The last metadata probe was answered.
    reachable: AtomicBool,
    producers: Mutex<Vec<Watched>>,
    /// Since when records wait past their deadline with no ack since.
    unacknowledged_since: Mutex<Option<Instant>>,
}

impl Readiness {
    /// Ready as long as Kafka answers (a role without producers to watch:
    /// set by [`probe_kafka`]).
    pub fn new() -> Arc<Readiness> {
        Arc::new(Readiness::default())
    }

    /// Ready from the start, with nothing to probe (the reconcile role).
    pub fn ready() -> Arc<Readiness> {
        let r = Readiness::default();
        r.reachable.store(true, Ordering::Relaxed);
        Arc::new(r)
    }

    /// Follows `producer` too (its fatal error, unreachable brokers).
    pub fn watch(&self, producer: &Watched) {
        self.producers
            .lock()
            .expect("readiness lock")
            .push(producer.clone());
    }

    /// The producers followed.
    pub fn watches(&self) -> Vec<Watched> {
        self.producers.lock().expect("readiness lock").clone()
    }

    fn set_reachable(&self, ok: bool) -> bool {
        self.reachable.swap(ok, Ordering::Relaxed)
    }

    /// A record was not acknowledged within its deadline.
    pub fn unacknowledged(&self) {
        self.unacknowledged_since
            .lock()
            .expect("readiness lock")
            .get_or_insert_with(Instant::now);
    }

    /// A record was acknowledged, or none waits any more.
    pub fn acknowledged(&self) {
        *self.unacknowledged_since.lock().expect("readiness lock") = None;
    }

    /// `None` when ready; why not otherwise.
    pub fn why_not(&self) -> Option<String> {
        let producers = self.producers.lock().expect("readiness lock").clone();
        if let Some(fatal) = producers.iter().find_map(Watched::fatal) {
            return Some(format!("{fatal}; the process is stopping"));
        }
        let unreachable: Vec<String> = producers.iter().flat_map(Watched::unreachable).collect();
        let brokers = if unreachable.is_empty() {
            String::new()
        } else {
            format!("; brokers not reachable: {}", unreachable.join(", "))
        };
        if let Some(since) = *self.unacknowledged_since.lock().expect("readiness lock") {
            return Some(format!(
                "Kafka has acknowledged no record for {} s (too few brokers or in-sync replicas?){brokers}",
                since.elapsed().as_secs()
            ));
        }
        if !self.reachable.load(Ordering::Relaxed) {
            return Some(format!("Kafka metadata is not reachable{brokers}"));
        }
        None
    }

    pub fn is_ready(&self) -> bool {
        self.why_not().is_none()
    }
}

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
    ready: Arc<Readiness>,
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

/// `/healthz` (alive) and `/readyz` (`ready`: Kafka answers and
/// acknowledges; the 503 says why not), served on every listener: load
/// balancers probe the port they send traffic to.
pub fn health_router(ready: Arc<Readiness>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { reply(StatusCode::OK, json!({"status": "alive"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let why_not = ready.why_not();
                async move {
                    match why_not {
                        None => reply(StatusCode::OK, json!({"status": "ready"})),
                        Some(why) => error(StatusCode::SERVICE_UNAVAILABLE, &why),
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

/// Keeps `ready`'s reachability equal to whether Kafka answers a
/// metadata request, asking every [`PROBE_INTERVAL`], and `gauge` (if
/// given) to whether the role is ready. `ask` runs on a blocking thread
/// (librdkafka's metadata call blocks) and returns `None` once its client
/// is gone, which ends the loop; so does `stop` turning true (or its
/// sender going away).
///
/// A question under way is always waited for, stopping or not: while it
/// runs, `ask` may hold the last reference to a consumer, which then
/// closes (leaves its group, commits on revoke) on that thread. A caller
/// that awaits this loop after its own clients are dropped knows they
/// have closed, while Kafka can still answer them.
pub async fn probe_kafka(
    role: &'static str,
    ready: Arc<Readiness>,
    gauge: Option<IntGauge>,
    ask: impl Fn(Duration) -> Option<bool> + Clone + Send + 'static,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut was_ready = false;
    loop {
        let ask = ask.clone();
        let answer = tokio::task::spawn_blocking(move || ask(PROBE_INTERVAL))
            .await
            .unwrap_or(Some(false));
        let Some(ok) = answer else { return };
        if *stop.borrow() {
            return;
        }
        ready.set_reachable(ok);
        let why_not = ready.why_not();
        match (&why_not, was_ready) {
            (None, false) => tracing::info!(role, "Kafka is reachable and acknowledges; ready"),
            (Some(why), true) => tracing::warn!(role, why, "not ready; /readyz answers 503"),
            _ => {}
        }
        was_ready = why_not.is_none();
        if let Some(g) = &gauge {
            g.set(was_ready as i64);
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
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
