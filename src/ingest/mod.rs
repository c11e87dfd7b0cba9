//! The ingest role: accept Easemob callbacks and publish them to Kafka.
//!
//! A callback's path is the service in miniature, and [`accept`] is that
//! path without HTTP: [`verify`] -> [`normalize`] -> [`dedup`] ->
//! [`publish`] -> wait for the ack (bounded) -> an [`Answer`]. [`http`]
//! reads the request (bounded) and turns the answer into a status code.
//! [`Ingest`] binds, serves and shuts down.
//!
//! Shutdown order matters for "nothing acknowledged that was not kept": stop
//! accepting, let in-flight requests finish (each waits for its own ack),
//! then flush the producer so late acks are not lost either.

pub mod config;
pub mod dedup;
pub mod http;
pub mod normalize;
pub mod publish;
pub mod verify;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::event::EventKind;
use crate::metrics::{Metrics, WebhookOutcome};
use crate::ops::Readiness;
use dedup::{Claim, Dedup};
use normalize::{normalize, VerifiedEvent};
use publish::{Delivered, PublishError, Publisher};
use verify::{Unverified, Verifier};

/// Everything a callback needs, shared by all requests.
pub struct Ingestor {
    pub verifier: Verifier,
    pub dedup: Dedup,
    pub publisher: Publisher,
    pub metrics: Metrics,
    /// What `/readyz` answers: kept by the probe loop, the delivery
    /// reports and the producer's watch.
    pub kafka_ready: Arc<Readiness>,
    /// How long a callback waits for Kafka's acknowledgement.
    pub ack_timeout: Duration,
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// Seconds, for `Retry-After` on [`Answer::Unavailable`].
    pub retry_after_seconds: u64,
}

/// What the sender is told about one callback. Each answer is a promise:
/// see the status table in [`http`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// In Kafka, acknowledged.
    Published(Delivered),
    /// Already in Kafka (or a copy of one that is).
    Duplicate,
    /// Not a callback; the message names the field.
    BadRequest(String),
    /// Unknown appkey, wrong signature, or outside the replay window.
    Unauthorized(String),
    /// The body is over `http.max_body_bytes`.
    TooLarge(usize),
    /// The event would be larger than Kafka takes; retrying cannot help.
    EventTooLarge(String),
    /// The body did not arrive within `http.body_timeout_seconds`.
    BodyTimeout(Duration),
    /// Not acknowledged in time, or the queue is full: retry later.
    Unavailable(String),
}

impl Answer {
    /// The `outcome` label this answer is counted under.
    pub fn outcome(&self) -> WebhookOutcome {
        match self {
            Answer::Published(_) => WebhookOutcome::Published,
            Answer::Duplicate => WebhookOutcome::Duplicate,
            Answer::BadRequest(_) => WebhookOutcome::BadRequest,
            Answer::Unauthorized(_) => WebhookOutcome::Unauthorized,
            Answer::TooLarge(_) | Answer::EventTooLarge(_) => WebhookOutcome::TooLarge,
            Answer::BodyTimeout(_) => WebhookOutcome::BodyTimeout,
            Answer::Unavailable(_) => WebhookOutcome::Unavailable,
        }
    }
}

/// Verifies, normalizes, deduplicates and publishes one callback body, and
/// waits (up to `ack_timeout`) for Kafka's acknowledgement.
pub async fn accept(ingestor: &Ingestor, body: &[u8]) -> Answer {
    let unverified = match Unverified::parse(body) {
        Ok(u) => u,
        Err(e) => return Answer::BadRequest(e.0),
    };
    let received_at = crate::time::now_ms();
    let verified = match ingestor.verifier.verify(unverified, received_at) {
        Ok(v) => v,
        Err(e @ verify::Rejected::Future { .. }) => return Answer::BadRequest(e.to_string()),
        Err(rejected) => return Answer::Unauthorized(rejected.to_string()),
    };
    let event = match normalize(verified, received_at) {
        Ok(e) => e,
        Err(e) => return Answer::BadRequest(e.0),
    };
    if event.event().kind == EventKind::Unknown {
        tracing::warn!(
            operation = %event.event().operation,
            subtype = ?event.event().subtype,
            "unknown operation; publishing it as kind `unknown`"
        );
    }
    let answer = publish(ingestor, &event).await;
    // The sender's mistakes are answered, not logged; ours are logged once,
    // with the callId, so an operator can follow a callback Easemob reports.
    if let Answer::Unavailable(why) | Answer::EventTooLarge(why) = &answer {
        let e = event.event();
        tracing::warn!(call_id = %e.id, appkey = %e.appkey, group = %e.group_id, %why, "callback not accepted");
    }
    answer
}

/// Deduplicates and publishes a verified event, and waits for the ack.
async fn publish(ingestor: &Ingestor, event: &VerifiedEvent) -> Answer {
    let ticket = match ingestor.dedup.claim(event.event()) {
        Claim::Published => return Answer::Duplicate,
        Claim::InFlight(pending) => {
            return if pending.published_within(ingestor.ack_timeout).await {
                Answer::Duplicate
            } else {
                Answer::Unavailable(
                    "the first copy of this callback is not acknowledged by Kafka yet".into(),
                )
            };
        }
        Claim::New(ticket) => ticket,
    };

    let pending = match ingestor.publisher.enqueue(event) {
        Ok(p) => p,
        Err(e @ PublishError::TooLarge { .. }) => {
            ticket.resolve(false);
            return Answer::EventTooLarge(e.to_string());
        }
        Err(e) => {
            ingestor.metrics.produce_errors.inc();
            ticket.resolve(false);
            return Answer::Unavailable(e.to_string());
        }
    };
    // The delivery report is awaited here, in the request's own task (no
    // task per callback); should the request stop waiting first (its
    // deadline, or the sender hanging up), `Awaiting` hands the report to a
    // task of its own, so a late ack is still recorded and the sender's
    // retry is a duplicate instead of a second record.
    let mut awaiting = Awaiting {
        pending: Some(pending),
        ticket: Some(ticket),
        metrics: ingestor.metrics.clone(),
        readiness: ingestor.kafka_ready.clone(),
        kind: event.event().kind,
    };
    let report = awaiting.pending.as_mut().expect("set above");
    match tokio::time::timeout(ingestor.ack_timeout, report).await {
        Ok(result) => {
            awaiting.pending = None;
            let ticket = awaiting.ticket.take().expect("set above");
            record(&awaiting, ticket, &result);
            match result {
                Ok(delivered) => Answer::Published(delivered),
                Err(e) => Answer::Unavailable(e.to_string()),
            }
        }
        Err(_) => {
            ingestor.kafka_ready.unacknowledged();
            Answer::Unavailable(format!(
                "Kafka did not acknowledge within {} ms",
                ingestor.ack_timeout.as_millis()
            ))
        }
    }
}

/// A record whose delivery report is awaited, with the dedup ticket it
/// resolves. Dropped before the report arrived, it spawns the rest.
struct Awaiting {
    pending: Option<publish::Pending>,
    ticket: Option<dedup::Ticket>,
    metrics: Metrics,
    readiness: Arc<Readiness>,
    kind: EventKind,
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        let (Some(pending), Some(ticket)) = (self.pending.take(), self.ticket.take()) else {
            return;
        };
        // Outside a runtime (it is shutting down) nobody waits any more:
        // the dropped ticket forgets the callback, so a retry publishes.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rest = Awaiting {
            pending: None,
            ticket: None,
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
            kind: self.kind,
        };
        runtime.spawn(async move {
            let result = pending.await;
            record(&rest, ticket, &result);
        });
    }
}

/// Counts a delivery report, resolves the callback's dedup ticket, and
/// tells readiness that Kafka acknowledges again.
fn record(awaiting: &Awaiting, ticket: dedup::Ticket, result: &Result<Delivered, PublishError>) {
    match result {
        Ok(_) => {
            awaiting.metrics.published(awaiting.kind);
            awaiting.readiness.acknowledged();
            ticket.resolve(true);
        }
        Err(e) => {
            tracing::warn!(error = %e, "Kafka did not acknowledge an event");
            awaiting.metrics.produce_errors.inc();
            ticket.resolve(false);
        }
    }
}

/// A bound, not yet serving, ingest server.
pub struct Ingest {
    ingestor: Arc<Ingestor>,
    listener: TcpListener,
    limits: crate::server::Limits,
    grace: Duration,
    /// `/metrics` on the callback port (no `[ops] listen` serves it).
    metrics_here: bool,
}

impl Ingest {
    /// Binds `http.listen` and prepares the handlers.
    pub async fn bind(
        config: &Config,
        publisher: Publisher,
        metrics: Metrics,
    ) -> anyhow::Result<Ingest> {
        config.require_ingest()?;
        let listener = crate::ops::bind(config.http.listen, "http.listen").await?;
        let e = &config.easemob;
        let ingestor = Arc::new(Ingestor {
            verifier: Verifier::new(&e.apps, e.replay_window_seconds, e.max_future_skew_seconds),
            dedup: Dedup::new(
                Duration::from_secs(e.dedup_window_seconds),
                e.dedup_capacity,
                e.dedup_by_content,
            ),
            publisher,
            metrics,
            kafka_ready: Readiness::new(),
            ack_timeout: Duration::from_millis(config.http.ack_timeout_ms),
            max_body_bytes: config.http.max_body_bytes,
            body_timeout: Duration::from_secs(config.http.body_timeout_seconds),
            retry_after_seconds: config.http.retry_after_seconds,
        });
        Ok(Ingest {
            ingestor,
            listener,
            limits: crate::server::Limits::new(&config.http, crate::server::fd_limit()),
            grace: Duration::from_secs(config.http.shutdown_grace_seconds),
            metrics_here: config.ops.listen.is_none(),
        })
    }

    /// The operators' routes of this ingest (`/metrics`, `/healthz`,
    /// `/readyz`), for an `[ops] listen` listener.
    pub fn ops_router(&self) -> axum::Router {
        http::ops_router(&self.ingestor)
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then drains and flushes.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Ingest {
            ingestor,
            listener,
            limits,
            grace,
            metrics_here,
        } = self;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        ingestor.kafka_ready.watch(ingestor.publisher.watched());
        let probe = {
            let publisher = ingestor.publisher.clone();
            let readiness = ingestor.kafka_ready.clone();
            tokio::spawn(crate::ops::probe_kafka(
                "ingest",
                ingestor.kafka_ready.clone(),
                Some(ingestor.metrics.kafka_ready.clone()),
                move |timeout| {
                    let ok = publisher.probe(timeout);
                    // Nothing waits any more: whatever was not
                    // acknowledged has failed; new callbacks tell again.
                    if publisher.in_flight() == 0 {
                        readiness.acknowledged();
                    }
                    Some(ok)
                },
                stop_rx.clone(),
            ))
        };
        let fatal = ingestor.publisher.watched().clone();
        let app = http::router(ingestor.clone(), metrics_here);
        let signalled = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing in-flight requests");
            let _ = stop_tx.send(true);
        };
        let server = crate::server::serve(
            listener,
            app,
            limits,
            ingestor.metrics.http.clone(),
            signalled,
        );
        let failed = tokio::select! {
            () = server => None,
            _ = async { let _ = stop_rx.wait_for(|s| *s).await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "in-flight requests did not finish within the grace period");
                None
            }
            // Nothing can be published any more: better restarted (a new
            // producer) than answering 503 for ever.
            why = fatal.fatal_error() => Some(why),
        };
        probe.abort();
        if let Some(why) = failed {
            anyhow::bail!("{why}; ingest stopped (a restart creates a new producer)");
        }
        let publisher = ingestor.publisher.clone();
        let left = publisher.in_flight();
        let flushed = tokio::task::spawn_blocking(move || publisher.flush(grace)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!(records = left, "producer flushed"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, records = left, "producer flush did not complete")
            }
            Err(e) => tracing::error!(error = %e, "producer flush task failed"),
        }
        Ok(())
    }
}
