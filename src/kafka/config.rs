//! `[kafka]`: the cluster, the event topic, and what is passed to librdkafka.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::error::{invalid, Invalid};
use crate::config::secret::Secret;

/// librdkafka properties mutebridge sets itself; overriding them would break
/// a promise the service makes (durable 200s, Java-compatible partitioning).
pub const PINNED: &[(&str, &str)] = &[
    (
        "acks",
        "a 200 promises the record is on every in-sync replica (acks=all)",
    ),
    (
        "request.required.acks",
        "a 200 promises the record is on every in-sync replica (acks=all)",
    ),
    (
        "enable.idempotence",
        "retries must not duplicate or reorder records of a group",
    ),
    (
        "partitioner",
        "records are placed with murmur2 so Java clients agree on the partition",
    ),
    ("bootstrap.servers", "set kafka.brokers instead"),
    (
        "allow.auto.create.topics",
        "a topic the broker creates on a metadata request gets the broker's defaults (partition count, no compaction); mutebridge creates its topics itself (kafka.create_topics) or refuses to start without them",
    ),
];

/// `[kafka]`: where events go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `"embedded"` for the in-process cluster, or `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic of normalized events.
    pub topic: String,
    /// Partition count used when mutebridge creates the topic.
    pub partitions: i32,
    /// Replication factor of the topics mutebridge creates; unset: 3, or
    /// the broker count on a smaller cluster.
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas` of the topics mutebridge creates: a 200 means
    /// the record is on this many brokers. Unset: 2 with 3 or more
    /// replicas (one broker may fail without losing a record or stopping
    /// writes), else 1.
    pub min_insync_replicas: Option<i32>,
    /// How long the event topic keeps records (`retention.ms` when
    /// mutebridge creates it; `topics check` warns below it): the longest
    /// a target can be down, or behind, without losing events it has not
    /// read.
    pub retention_hours: u64,
    /// Create the topic at startup when it does not exist.
    pub create_topics: bool,
    /// Extra librdkafka properties, passed through as they are; a string
    /// `env:NAME` is read from the environment (a SASL password).
    pub client: BTreeMap<String, toml::Value>,
    /// The `env:` values of `client`, once read (kept apart so that they
    /// are never printed with the rest).
    #[serde(skip)]
    pub(crate) resolved_client: BTreeMap<String, Secret>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "embedded".into(),
            topic: "im.group-events".into(),
            partitions: 12,
            replication_factor: None,
            min_insync_replicas: None,
            retention_hours: 168,
            create_topics: true,
            client: BTreeMap::new(),
            resolved_client: BTreeMap::new(),
        }
    }
}

/// Client settings librdkafka refuses under the new consumer group
/// protocol (KIP-848): the broker decides them (`group.consumer.*`).
pub const NOT_WITH_CONSUMER_PROTOCOL: &[&str] = &[
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
    "group.protocol.type",
];

impl KafkaConfig {
    /// Whether `[kafka.client]` chooses the new consumer group protocol
    /// (`group.protocol = "consumer"`, KIP-848; Kafka 4 brokers).
    pub fn consumer_protocol(&self) -> bool {
        matches!(self.client.get("group.protocol"), Some(toml::Value::String(p)) if p.trim() == "consumer")
    }

    /// True when the in-process cluster should be started.
    pub fn is_embedded(&self) -> bool {
        self.brokers.trim() == "embedded"
    }

    /// `[kafka.client]` as librdkafka property strings, `env:` values read.
    pub fn client_properties(&self) -> Vec<(String, String)> {
        self.client
            .iter()
            .map(|(k, v)| {
                let value = match (self.resolved_client.get(k), v) {
                    (Some(secret), _) => secret.expose().to_owned(),
                    (None, toml::Value::String(s)) => s.clone(),
                    (None, other) => other.to_string(),
                };
                (k.clone(), value)
            })
            .collect()
    }
}

impl KafkaConfig {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.brokers.trim().is_empty() {
            return invalid(
                "brokers",
                "must be \"embedded\" or host:port[,host:port...]",
            );
        }
        if self.topic.trim().is_empty() {
            return invalid("topic", "must not be empty");
        }
        if !(1..=10_000).contains(&self.partitions) {
            return invalid(
                "partitions",
                format!("{} is not between 1 and 10000", self.partitions),
            );
        }
        if self.replication_factor.is_some_and(|rf| rf < 1) {
            return invalid("replication_factor", "must be at least 1");
        }
        if let Some(isr) = self.min_insync_replicas {
            if isr < 1 {
                return invalid("min_insync_replicas", "must be at least 1");
            }
            if let Some(rf) = self.replication_factor.filter(|rf| isr > *rf) {
                return invalid(
                    "min_insync_replicas",
                    format!(
                        "{isr} is above replication_factor ({rf}): every write would be refused"
                    ),
                );
            }
        }
        if !(1..=876_000).contains(&self.retention_hours) {
            return invalid(
                "retention_hours",
                format!(
                    "{} is not between 1 and 876000 (100 years)",
                    self.retention_hours
                ),
            );
        }
        if let Some(v) = self.client.get("message.max.bytes") {
            let n = match v {
                toml::Value::Integer(n) => Some(*n),
                toml::Value::String(s) => s.parse().ok(),
                _ => None,
            };
            if !n.is_some_and(|n| (1000..=1_000_000_000).contains(&n)) {
                return invalid(
                    "client.\"message.max.bytes\"",
                    format!("{v} is not a number of bytes between 1000 and 1000000000"),
                );
            }
        }
        if let Some(v) = self.client.get("group.protocol") {
            if !matches!(v, toml::Value::String(p) if p == "classic" || p == "consumer") {
                return invalid(
                    "client.\"group.protocol\"",
                    format!("{v} is not \"classic\" (the default) or \"consumer\" (KIP-848, Kafka 4 brokers)"),
                );
            }
        }
        if self.consumer_protocol() {
            if let Some(key) = NOT_WITH_CONSUMER_PROTOCOL
                .iter()
                .find(|k| self.client.contains_key(**k))
            {
                return invalid(
                    &format!("client.\"{key}\""),
                    "cannot be set with group.protocol = \"consumer\": the broker decides it (group.consumer.* broker settings); remove it",
                );
            }
        }
        for (name, why) in PINNED {
            if self.client.contains_key(*name) {
                return invalid(
                    &format!("client.\"{name}\""),
                    format!("mutebridge sets this itself and it cannot be overridden: {why}"),
                );
            }
        }
        Ok(())
    }
}
