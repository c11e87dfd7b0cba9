//! Prometheus metrics, served at `GET /metrics`: the ingest role's here,
//! the worker's in [`crate::worker::metrics`], the reconciler's in
//! [`crate::reconcile::metrics`], the verifier's in
//! [`crate::verify::metrics`], all in one registry.
//!
//! Labels are closed sets (outcomes, event kinds); nothing the sender
//! controls (callId, group ID, appkey) becomes a label, so cardinality is
//! bounded whatever traffic arrives.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use std::sync::Arc;

use crate::event::EventKind;
pub use crate::reconcile::metrics::ReconcileMetrics;
pub use crate::verify::metrics::VerifyMetrics;
pub use crate::worker::metrics::WorkerMetrics;

/// What happened to a callback; the `outcome` label of `mutebridge_webhooks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum WebhookOutcome {
    Published,
    Duplicate,
    BadRequest,
    Unauthorized,
    TooLarge,
    BodyTimeout,
    Unavailable,
}

impl WebhookOutcome {
    /// Every variant, in declaration order.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Why the server closed a connection; the `reason` label of
/// `mutebridge_http_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum CloseReason {
    /// The request head did not arrive within `http.header_timeout_seconds`.
    HeaderTimeout,
    /// The body did not arrive within `http.body_timeout_seconds`.
    BodyTimeout,
    /// No new request within `http.idle_timeout_seconds` of the last reply.
    Idle,
    /// Closed to make room at `http.max_connections` (or the fd limit).
    Limit,
    /// Closed because unfinished requests held more than
    /// `http.max_buffered_bytes`, this one the longest.
    Memory,
}

impl CloseReason {
    /// Every variant, in declaration order.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The HTTP server's connection metrics (either role).
#[derive(Clone)]
pub struct HttpMetrics {
    pub open: IntGauge,
    pub accept_errors: IntCounter,
    closed_by: Arc<[IntCounter]>,
}

impl HttpMetrics {
    /// Counts a connection the server closed.
    pub fn closed(&self, reason: CloseReason) {
        self.closed_by[reason as usize].inc();
    }
}

/// Every metric mutebridge exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub webhooks: IntCounterVec,
    pub webhook_duration: Histogram,
    pub events_published: IntCounterVec,
    pub produce_errors: IntCounter,
    pub dedup_entries: IntGauge,
    pub kafka_ready: IntGauge,
    pub http: HttpMetrics,
    pub worker: WorkerMetrics,
    pub reconcile: ReconcileMetrics,
    pub verify: VerifyMetrics,
    by_outcome: Arc<[IntCounter]>,
    by_kind: Arc<Vec<IntCounter>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let webhooks = IntCounterVec::new(
            Opts::new(
                "mutebridge_webhooks_total",
                "Callbacks answered, by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let webhook_duration = Histogram::with_opts(
            HistogramOpts::new(
                "mutebridge_webhook_duration_seconds",
                "Time from request to reply for POST /webhooks/easemob, including the wait for Kafka.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let events_published = IntCounterVec::new(
            Opts::new(
                "mutebridge_events_published_total",
                "Normalized events acknowledged by Kafka, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let produce_errors = IntCounter::new(
            "mutebridge_kafka_produce_errors_total",
            "Records Kafka did not take: delivery errors, and rejections because the producer queue was full.",
        )
        .expect("valid metric");
        let dedup_entries = IntGauge::new(
            "mutebridge_dedup_entries",
            "Callbacks currently remembered for duplicate suppression.",
        )
        .expect("valid metric");
        let kafka_ready = IntGauge::new(
            "mutebridge_kafka_ready",
            "1 while the last Kafka metadata probe succeeded, else 0.",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "mutebridge_build_info",
                "Always 1; labels say which build is running.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let connections_open = IntGauge::new(
            "mutebridge_http_connections_open",
            "HTTP connections open right now.",
        )
        .expect("valid metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "mutebridge_http_connections_closed_total",
                // Derived from the enum, so the help lists every reason.
                format!(
                    "HTTP connections the server closed, by reason ({}).",
                    CloseReason::ALL
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            &["reason"],
        )
        .expect("valid metric");
        let accept_errors = IntCounter::new(
            "mutebridge_http_accept_errors_total",
            "Failed accept() calls (e.g. out of file descriptors).",
        )
        .expect("valid metric");
        let http = HttpMetrics {
            open: connections_open.clone(),
            accept_errors: accept_errors.clone(),
            closed_by: CloseReason::ALL
                .iter()
                .map(|r| connections_closed.with_label_values(&[r.as_str()]))
                .collect(),
        };
        // process_open_fds, process_max_fds, RSS, CPU: what the fd alert reads.
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric names are unique");

        let worker = WorkerMetrics::new();
        for c in worker.collectors() {
            registry.register(c).expect("metric names are unique");
        }
        let reconcile = ReconcileMetrics::new();
        for c in reconcile.collectors() {
            registry.register(c).expect("metric names are unique");
        }
        let verify = VerifyMetrics::new();
        for c in verify.collectors() {
            registry.register(c).expect("metric names are unique");
        }

        // Resolved once: a label lookup hashes and locks on every call,
        // and these are incremented on every request.
        let by_outcome: Arc<[IntCounter]> = WebhookOutcome::ALL
            .iter()
            .map(|o| webhooks.with_label_values(&[o.as_str()]))
            .collect();
        let by_kind = EventKind::ALL
            .iter()
            .map(|k| events_published.with_label_values(&[k.as_str()]))
            .collect();
        for m in [
            Box::new(webhooks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(webhook_duration.clone()),
            Box::new(events_published.clone()),
            Box::new(produce_errors.clone()),
            Box::new(dedup_entries.clone()),
            Box::new(kafka_ready.clone()),
            Box::new(build_info),
            Box::new(connections_open),
            Box::new(connections_closed),
            Box::new(accept_errors),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Metrics {
            registry,
            by_outcome,
            by_kind: Arc::new(by_kind),
            webhooks,
            webhook_duration,
            events_published,
            produce_errors,
            dedup_entries,
            kafka_ready,
            http,
            worker,
            reconcile,
            verify,
        }
    }

    /// The registry, for components that add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one answered callback.
    pub fn answered(&self, outcome: WebhookOutcome) {
        self.by_outcome[outcome as usize].inc();
    }

    /// Counts one event acknowledged by Kafka.
    pub fn published(&self, kind: EventKind) {
        self.by_kind[kind as usize].inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding does not fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_resolved_counters_line_up_with_labels() {
        for (i, o) in WebhookOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
        for (i, k) in EventKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        let m = Metrics::new();
        m.answered(WebhookOutcome::TooLarge);
        m.published(EventKind::MemberMuted);
        let text = m.render();
        assert!(text.contains("mutebridge_webhooks_total{outcome=\"too_large\"} 1"));
        assert!(text.contains("mutebridge_events_published_total{kind=\"member_muted\"} 1"));
        assert!(text.contains("mutebridge_webhooks_total{outcome=\"published\"} 0"));
    }
}
