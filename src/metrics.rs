//! Prometheus metrics, served at `GET /metrics`.
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
    by_outcome: Arc<[IntCounter; 6]>,
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

        // Resolved once: a label lookup hashes and locks on every call,
        // and these are incremented on every request.
        let by_outcome = Outcome::ALL.map(|o| webhooks.with_label_values(&[o.as_str()]));
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
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Metrics {
            registry,
            by_outcome: Arc::new(by_outcome),
            by_kind: Arc::new(by_kind),
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
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
        for (i, k) in EventKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        let m = Metrics::new();
        m.answered(Outcome::TooLarge);
        m.published(EventKind::MemberMuted);
        let text = m.render();
        assert!(text.contains("mutebridge_webhooks_total{outcome=\"too_large\"} 1"));
        assert!(text.contains("mutebridge_events_published_total{kind=\"member_muted\"} 1"));
        assert!(text.contains("mutebridge_webhooks_total{outcome=\"published\"} 0"));
    }
}
