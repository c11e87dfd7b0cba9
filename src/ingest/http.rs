//! The HTTP surface of the ingest role: `POST /webhooks/easemob` plus the
//! operations endpoints of [`crate::ops`] (`/metrics` only while no
//! `[ops] listen` serves it).
//!
//! This module only reads the request (bounded) and turns the pipeline's
//! [`Answer`] into a reply; [`super::accept`] decides. Each status code is a
//! promise to the sender:
//!
//! | status | promise |
//! |---|---|
//! | 200 | the event is in Kafka (acked), or was already, or is a duplicate of one that is |
//! | 400 | the body is not a callback; the reply says which field |
//! | 401 | unknown appkey, wrong signature, or outside the replay window |
//! | 408 | the body did not arrive within `http.body_timeout_seconds`; the connection is closed |
//! | 413 | the body is over `http.max_body_bytes` (the connection is closed), or its event would be over Kafka's `message.max.bytes` |
//! | 503 | Kafka did not acknowledge in time or the queue is full; retry later |
//!
//! Reply bodies are short JSON, always under 1000 bytes (Easemob bans a rule
//! whose endpoint answers with more).

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::{accept, Answer, Ingestor};
use crate::metrics::CloseReason;
use crate::ops::error;

/// The routes of the ingest role's callback port; with `with_metrics`,
/// `/metrics` too (when no ops listener serves it).
pub fn router(ingestor: Arc<Ingestor>, with_metrics: bool) -> Router {
    let ops = if with_metrics {
        ops_router(&ingestor)
    } else {
        crate::ops::health_router(ingestor.kafka_ready.clone())
    };
    Router::new()
        .route("/webhooks/easemob", post(easemob))
        .with_state(ingestor)
        .merge(ops)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; callbacks go to POST /webhooks/easemob",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
}

/// The ingest role's operators' routes (`/metrics`, `/healthz`, `/readyz`).
pub fn ops_router(ingestor: &Arc<Ingestor>) -> Router {
    let scrape = {
        let ingestor = ingestor.clone();
        move || {
            let m = &ingestor.metrics;
            m.dedup_entries.set(ingestor.dedup.len() as i64);
            m.kafka_ready.set(ingestor.kafka_ready.is_ready() as i64);
        }
    };
    crate::ops::router(
        ingestor.metrics.clone(),
        ingestor.kafka_ready.clone(),
        scrape,
    )
}

async fn easemob(State(ingestor): State<Arc<Ingestor>>, request: Request) -> Response {
    let started = Instant::now();
    // The request taken whole: axum's HeaderMap extractor would clone the
    // headers of every callback.
    let (parts, body) = request.into_parts();
    let answer = match read_body(&ingestor, &parts.headers, body).await {
        Ok(bytes) => accept(&ingestor, &bytes).await,
        Err(answer) => answer,
    };
    ingestor.metrics.answered(answer.outcome());
    ingestor
        .metrics
        .webhook_duration
        .observe(started.elapsed().as_secs_f64());
    respond(&ingestor, answer)
}

/// The body, or 413 without reading further once it is over the limit.
async fn read_body(ingestor: &Ingestor, headers: &HeaderMap, body: Body) -> Result<Bytes, Answer> {
    let limit = ingestor.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Answer::TooLarge(limit));
    }
    let read = tokio::time::timeout(ingestor.body_timeout, Limited::new(body, limit).collect());
    match read.await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(Answer::TooLarge(limit)),
        Ok(Err(e)) => Err(Answer::BadRequest(format!("could not read the body: {e}"))),
        Err(_) => {
            ingestor.metrics.http.closed(CloseReason::BodyTimeout);
            Err(Answer::BodyTimeout(ingestor.body_timeout))
        }
    }
}

fn respond(ingestor: &Ingestor, answer: Answer) -> Response {
    match answer {
        // The hot path: written out, not built as a JSON value and rendered.
        Answer::Published(d) => raw(
            StatusCode::OK,
            format!(
                r#"{{"status":"published","partition":{},"offset":{}}}"#,
                d.partition, d.offset
            ),
        ),
        Answer::Duplicate => raw(StatusCode::OK, r#"{"status":"duplicate"}"#.to_owned()),
        Answer::BadRequest(message) => error(StatusCode::BAD_REQUEST, &message),
        Answer::Unauthorized(message) => error(StatusCode::UNAUTHORIZED, &message),
        Answer::TooLarge(limit) => closing(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body is larger than {limit} bytes"),
        )),
        Answer::EventTooLarge(message) => error(StatusCode::PAYLOAD_TOO_LARGE, &message),
        Answer::BodyTimeout(after) => closing(error(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the body did not arrive within {} s", after.as_secs()),
        )),
        Answer::Unavailable(message) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, &message);
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(ingestor.retry_after_seconds),
            );
            response
        }
    }
}

/// A JSON reply whose body is already rendered.
fn raw(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The body was not read to its end, so the connection cannot carry
/// another request: say so, and hyper closes it after this reply.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
