//! The HTTP surface: `POST /webhooks/easemob`, `GET /metrics`, `/healthz`,
//! `/readyz`.
//!
//! A callback's path through this handler is the service in miniature:
//! read (bounded) -> [`verify`](crate::ingest::verify) -> [`normalize`] ->
//! [`dedup`](crate::ingest::dedup) -> [`publish`](crate::ingest::publish) -> wait for the
//! ack (bounded) -> reply. Each status code is a promise to the sender:
//!
//! | status | promise |
//! |---|---|
//! | 200 | the event is in Kafka (acked), or was already, or is a duplicate of one that is |
//! | 400 | the body is not a callback; the reply says which field |
//! | 401 | unknown appkey, wrong signature, or outside the replay window |
//! | 413 | the body is over `http.max_body_bytes` |
//! | 503 | Kafka did not acknowledge in time or the queue is full; retry later |
//!
//! Reply bodies are short JSON, always under 1000 bytes (Easemob bans a rule
//! whose endpoint answers with more).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use crate::ingest::dedup::{Claim, Dedup};
use crate::ingest::normalize::normalize;
use crate::ingest::publish::{Delivered, Publisher};
use crate::ingest::verify::{Unverified, Verifier};
use crate::metrics::{Metrics, Outcome};

/// The longest error message put in a reply; keeps bodies under 1000 bytes.
const MAX_MESSAGE_CHARS: usize = 300;

/// Everything a request handler needs, shared by all requests.
pub struct AppState {
    pub verifier: Verifier,
    pub dedup: Dedup,
    pub publisher: Publisher,
    pub metrics: Metrics,
    /// Set by the readiness probe loop.
    pub kafka_ready: AtomicBool,
    pub ack_timeout: Duration,
    pub max_body_bytes: usize,
    pub retry_after: HeaderValue,
}

/// The router for every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhooks/easemob", post(easemob))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; callbacks go to POST /webhooks/easemob",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .with_state(state)
}

/// `/metrics`, `/healthz` and `/readyz` alone, for a worker-only process.
pub fn ops_router(metrics: Metrics, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics_reply(&metrics) }
            }),
        )
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move { ready_reply(ready.load(Ordering::Relaxed)) }
            }),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    let message: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    reply(status, json!({"status": "error", "error": message}))
}

/// The reply and the outcome to count for it.
struct Answer(Outcome, Response);

impl Answer {
    fn published(d: Delivered) -> Answer {
        Answer(
            Outcome::Published,
            reply(
                StatusCode::OK,
                json!({"status": "published", "partition": d.partition, "offset": d.offset}),
            ),
        )
    }

    fn duplicate() -> Answer {
        Answer(
            Outcome::Duplicate,
            reply(StatusCode::OK, json!({"status": "duplicate"})),
        )
    }

    fn bad_request(message: &str) -> Answer {
        Answer(Outcome::BadRequest, error(StatusCode::BAD_REQUEST, message))
    }

    fn unavailable(state: &AppState, message: &str) -> Answer {
        let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, state.retry_after.clone());
        Answer(Outcome::Unavailable, response)
    }
}

async fn easemob(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let Answer(outcome, response) = handle(&state, &headers, body).await;
    state.metrics.answered(outcome);
    state
        .metrics
        .webhook_duration
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, Answer> {
    let too_large = || {
        let msg = format!("body is larger than {} bytes", state.max_body_bytes);
        Answer(
            Outcome::TooLarge,
            error(StatusCode::PAYLOAD_TOO_LARGE, &msg),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        return Err(too_large());
    }
    match Limited::new(body, state.max_body_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Answer::bad_request(&format!(
            "could not read the body: {e}"
        ))),
    }
}

async fn handle(state: &AppState, headers: &HeaderMap, body: Body) -> Answer {
    let bytes = match read_body(state, headers, body).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let unverified = match Unverified::parse(&bytes) {
        Ok(u) => u,
        Err(e) => return Answer::bad_request(&e.0),
    };
    let received_at = now_ms();
    let verified = match state.verifier.verify(unverified, received_at) {
        Ok(v) => v,
        Err(rejected) => {
            return Answer(
                Outcome::Unauthorized,
                error(StatusCode::UNAUTHORIZED, &rejected.to_string()),
            );
        }
    };
    let event = match normalize(verified, received_at) {
        Ok(e) => e,
        Err(e) => return Answer::bad_request(&e.0),
    };
    if event.event().kind == crate::event::EventKind::Unknown {
        tracing::warn!(
            operation = %event.event().operation,
            subtype = ?event.event().subtype,
            "unknown operation; publishing it as kind `unknown`"
        );
    }

    let ticket = match state.dedup.claim(event.event()) {
        Claim::Published => return Answer::duplicate(),
        Claim::InFlight(pending) => {
            return if pending.published_within(state.ack_timeout).await {
                Answer::duplicate()
            } else {
                Answer::unavailable(
                    state,
                    "the first copy of this callback is not acknowledged by Kafka yet",
                )
            };
        }
        Claim::New(ticket) => ticket,
    };

    let pending = match state.publisher.enqueue(&event) {
        Ok(p) => p,
        Err(e) => {
            state.metrics.produce_errors.inc();
            ticket.resolve(false);
            return Answer::unavailable(state, &e.to_string());
        }
    };
    // The delivery report is awaited on its own task, so it is recorded even
    // when the sender hangs up or our deadline passes first: a late ack still
    // makes the sender's retry a duplicate instead of a second record.
    let metrics = state.metrics.clone();
    let kind = event.event().kind;
    let delivery = tokio::spawn(async move {
        let result = pending.acknowledged().await;
        match &result {
            Ok(_) => {
                metrics.published(kind);
                ticket.resolve(true);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Kafka did not acknowledge an event");
                metrics.produce_errors.inc();
                ticket.resolve(false);
            }
        }
        result
    });
    // Dropping the JoinHandle at the deadline does not cancel the task.
    match tokio::time::timeout(state.ack_timeout, delivery).await {
        Ok(Ok(Ok(delivered))) => Answer::published(delivered),
        Ok(Ok(Err(e))) => Answer::unavailable(state, &e.to_string()),
        Ok(Err(_)) => Answer::unavailable(state, "the delivery task failed"),
        Err(_) => Answer::unavailable(
            state,
            &format!(
                "Kafka did not acknowledge within {} ms",
                state.ack_timeout.as_millis()
            ),
        ),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.dedup_entries.set(state.dedup.len() as i64);
    metrics_reply(&state.metrics)
}

fn metrics_reply(metrics: &Metrics) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

async fn healthz() -> Response {
    reply(StatusCode::OK, json!({"status": "alive"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    ready_reply(state.kafka_ready.load(Ordering::Relaxed))
}

fn ready_reply(ready: bool) -> Response {
    if ready {
        reply(StatusCode::OK, json!({"status": "ready"}))
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Kafka metadata is not reachable",
        )
    }
}
