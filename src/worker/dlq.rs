//! The dead-letter topic: where an action that failed for good goes, with
//! everything needed to understand and replay it.
//!
//! A dead letter is what lets the worker commit past a failure without
//! losing it, so writing one is not allowed to fail: it is retried until
//! Kafka acknowledges it, holding up only that event's group.

use std::time::Duration;

use anyhow::Context;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};

use crate::config::KafkaConfig;
use crate::event::Event;
use crate::kafka;
use crate::time::now_ms;

use super::outcome::{ActionId, Failure};

/// Value of the `schema` field of a dead letter.
pub const DEAD_LETTER_SCHEMA: &str = "mutebridge.dead_letter/v1";

/// Why an action was dead-lettered; the `reason` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The target refused the call in a way retrying cannot fix (bad
    /// credentials or parameters, no such group, no permission).
    PermanentError,
    /// Retryable failures outlasted `[worker.retry]`'s budget.
    RetriesExhausted,
    /// The provider kept answering "rate limited" for longer than
    /// `worker.retry.rate_limited_horizon_seconds`.
    RateLimited,
    /// An ID had no mapping and the rule says `on_unmapped = "dead_letter"`.
    Unmapped,
    /// The record is not a `mutebridge.event/v1` event.
    Undecodable,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::PermanentError,
        Reason::RetriesExhausted,
        Reason::RateLimited,
        Reason::Unmapped,
        Reason::Undecodable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PermanentError => "permanent_error",
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::RateLimited => "rate_limited",
            Reason::Unmapped => "unmapped",
            Reason::Undecodable => "undecodable",
        }
    }
}

/// Where the failed event was read from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One dead-letter record (the JSON value on the topic).
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub schema: &'static str,
    pub reason: Reason,
    /// The last error, as the target or the policy put it.
    pub error: String,
    /// The `[targets.NAME]`, when an action failed.
    pub target: Option<String>,
    /// The rule's name, when an action failed.
    pub rule: Option<String>,
    /// `mute_all`, `mute_members`, ...
    pub action: Option<&'static str>,
    /// The users the failure is about (a partial failure names some).
    pub users: Vec<String>,
    pub attempts: u32,
    pub source: SourceRecord,
    pub failed_at_ms: i64,
    /// The original event, when it could be decoded.
    pub event: Option<Event>,
    /// The raw record value, when it could not.
    pub payload: Option<String>,
}

/// A dead letter as read back from the topic (`dlq list`, `dlq replay`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDeadLetter {
    pub reason: Reason,
    pub error: String,
    pub target: Option<String>,
    pub rule: Option<String>,
    pub action: Option<String>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub attempts: u32,
    pub source: SourceRecord,
    pub failed_at_ms: i64,
    pub event: Option<Event>,
    pub payload: Option<String>,
}

/// Value of the `schema` field (and header) of a replay marker.
pub const REPLAY_SCHEMA: &str = "mutebridge.dead_letter_replay/v1";

/// Written to the dead-letter topic by `dlq replay` for each dead letter it
/// sent again, so the next replay knows (and `dlq list` shows) it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayMarker {
    pub schema: String,
    /// The dead letter replayed: its partition and offset in this topic.
    pub dead_letter: Position,
    /// Where the event was published again.
    pub replayed_to: Position,
    pub replayed_at_ms: i64,
}

/// A record's place in a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl Reason {
    /// The reason whose label is `label`.
    pub fn parse(label: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == label)
    }
}

impl DeadLetter {
    /// A record that is not a `mutebridge.event/v1` event.
    pub fn undecodable(source: SourceRecord, payload: Option<&[u8]>, why: String) -> DeadLetter {
        DeadLetter {
            schema: DEAD_LETTER_SCHEMA,
            reason: Reason::Undecodable,
            error: why,
            target: None,
            rule: None,
            action: None,
            users: Vec::new(),
            attempts: 0,
            source,
            failed_at_ms: now_ms(),
            event: None,
            payload: payload.map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }

    /// An action of `event` that failed for good.
    pub fn action(
        source: SourceRecord,
        event: &Event,
        id: &ActionId,
        failure: Failure,
    ) -> DeadLetter {
        DeadLetter {
            schema: DEAD_LETTER_SCHEMA,
            reason: failure.reason,
            error: failure.error,
            target: Some(id.target.to_string()),
            rule: Some(id.rule.to_string()),
            action: Some(id.action),
            users: failure.users,
            attempts: failure.attempts,
            source,
            failed_at_ms: now_ms(),
            event: Some(event.clone()),
            payload: None,
        }
    }
}

/// The dead-letter producer (durable and idempotent, like the event producer).
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(cfg: &KafkaConfig, bootstrap: &str, topic: &str) -> anyhow::Result<DeadLetters> {
        let producer: FutureProducer = kafka::producer_config(cfg, bootstrap).create().context(
            "cannot create the dead-letter producer (check the [kafka.client] properties)",
        )?;
        Ok(DeadLetters {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Writes `letter` keyed like its event, retrying until Kafka
    /// acknowledges it.
    pub async fn write(&self, key: &[u8], letter: &DeadLetter) {
        let payload = serde_json::to_vec(letter).expect("dead letters always serialize");
        let mut wait = Duration::from_millis(100);
        loop {
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: "reason",
                    value: Some(letter.reason.as_str()),
                })
                .insert(Header {
                    key: "schema",
                    value: Some(DEAD_LETTER_SCHEMA),
                });
            let record = FutureRecord::to(&self.topic)
                .key(key)
                .payload(&payload)
                .headers(headers);
            match self.producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => return,
                Err((e, _)) => {
                    tracing::error!(error = %e, topic = %self.topic, "cannot write a dead letter; retrying (the group waits)");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Waits up to `timeout` for queued dead letters.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}
