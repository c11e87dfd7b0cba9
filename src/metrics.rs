//! Prometheus metrics, served at `GET /metrics`.
//!
//! Labels are closed sets (outcomes, event kinds); nothing the sender
//! controls (callId, group ID, appkey) becomes a label, so cardinality is
//! bounded whatever traffic arrives.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::event::EventKind;

/// What happened to a callback; the `outcome` label of `mutebridge_webhooks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Published,
    Duplicate,
    BadRequest,
    Unauthorized,
    TooLarge,
    Unavailable,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Published,
        Outcome::Duplicate,
        Outcome::BadRequest,
        Outcome::Unauthorized,
        Outcome::TooLarge,
        Outcome::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Published => "published",
            Outcome::Duplicate => "duplicate",
            Outcome::BadRequest => "bad_request",
            Outcome::Unauthorized => "unauthorized",
            Outcome::TooLarge => "too_large",
            Outcome::Unavailable => "unavailable",
        }
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
            "Records Kafka did not acknowledge (delivery errors, full producer queue, ack deadline passed).",
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

        for outcome in Outcome::ALL {
            webhooks.with_label_values(&[outcome.as_str()]);
        }
        for kind in EventKind::ALL {
            events_published.with_label_values(&[kind.as_str()]);
        }
        for m in [
            Box::new(webhooks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(webhook_duration.clone()),
            Box::new(events_published.clone()),
            Box::new(produce_errors.clone()),
            Box::new(dedup_entries.clone()),
            Box::new(kafka_ready.clone()),
            Box::new(build_info),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Metrics {
            registry,
            webhooks,
            webhook_duration,
            events_published,
            produce_errors,
            dedup_entries,
            kafka_ready,
        }
    }

    /// The registry, for components that add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one answered callback.
    pub fn answered(&self, outcome: Outcome) {
        self.webhooks.with_label_values(&[outcome.as_str()]).inc();
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
