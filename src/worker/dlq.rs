//! The dead-letter topic: where an action that failed for good goes, with
//! everything needed to understand and replay it.
//!
//! A dead letter is what lets the worker commit past a failure without
//! losing it, so writing one is not allowed to fail: it is retried until
//! Kafka acknowledges it, holding up only that event's group.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer as _};
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::kafka;
use crate::kafka::client::{Producer, Watched};
use crate::kafka::config::KafkaConfig;
use crate::time::now_ms;

pub use super::outcome::Reason;
use super::outcome::{ActionId, Failure};

/// Value of the `schema` field of a dead letter.
pub const DEAD_LETTER_SCHEMA: &str = "mutebridge.dead_letter/v1";

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
    /// Fields left out (`users`, then `event` and `payload`) because the
    /// whole letter would not fit in one Kafka message; the event is still
    /// at `source` in the event topic.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub omitted: Vec<&'static str>,
    /// A mute target's: the group's newest state of each dimension this
    /// failure leaves the target without. Older events of the group that
    /// this one superseded were not sent, so this is what the target
    /// misses; replaying the letter applies it (unless a newer event, which
    /// reaches the target by itself, set it since: `set_by` says which).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_state: Vec<MissingDim>,
}

/// One dimension of a group's mute state a target is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingDim {
    /// `mute_all`, or `member:{id}`.
    pub dimension: String,
    pub muted: bool,
    /// A member mute's end (ms since the epoch); null when permanent.
    pub until_ms: Option<i64>,
    /// The event that set it, and its time.
    pub set_by: String,
    pub at_ms: i64,
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
    #[serde(default)]
    pub omitted: Vec<String>,
    #[serde(default)]
    pub missing_state: Vec<MissingDim>,
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
            omitted: Vec::new(),
            missing_state: Vec::new(),
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
            omitted: Vec::new(),
            missing_state: Vec::new(),
        }
    }

    /// The letter's JSON within `max` bytes: whole when it fits; else
    /// without the user list (the event names them), then without the
    /// event and raw payload (the letter keeps its reason, target and
    /// source position, where the event still is).
    fn to_json_within(&self, max: usize) -> (Vec<u8>, &'static [&'static str]) {
        let whole = serde_json::to_vec(self).expect("dead letters always serialize");
        if whole.len() <= max {
            return (whole, &[]);
        }
        let mut small = self.clone();
        small.users = Vec::new();
        small.omitted = vec!["users"];
        let json = serde_json::to_vec(&small).expect("dead letters always serialize");
        if json.len() <= max {
            return (json, &["users"]);
        }
        const ALL: &[&str] = &["users", "event", "payload"];
        small.event = None;
        small.payload = None;
        small.omitted = ALL.to_vec();
        small
            .error
            .truncate(floor_char_boundary(&small.error, 1024));
        let json = serde_json::to_vec(&small).expect("dead letters always serialize");
        (json, ALL)
    }
}

/// The largest index at most `at` that starts a character of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// The dead-letter producer (durable and idempotent, like the event producer).
#[derive(Clone)]
pub struct DeadLetters {
    producer: Producer,
    watched: Watched,
    topic: String,
    /// The largest letter written: the producers' `message.max.bytes` less
    /// room for the key, headers and framing; halved (once per refusal)
    /// when the broker's limit for the topic is lower.
    max_letter_bytes: Arc<AtomicUsize>,
}

/// What a letter needs beside its value in a message (key, headers,
/// framing).
const LETTER_FRAMING_BYTES: usize = 2048;

impl DeadLetters {
    pub fn new(cfg: &KafkaConfig, bootstrap: &str, topic: &str) -> anyhow::Result<DeadLetters> {
        let watched = Watched::create(kafka::producer_config(cfg, bootstrap), "dead-letter")
            .context(
                "cannot create the dead-letter producer (check the [kafka.client] properties)",
            )?;
        Ok(DeadLetters {
            producer: watched.producer.clone(),
            watched,
            topic: topic.to_owned(),
            max_letter_bytes: Arc::new(AtomicUsize::new(
                kafka::client::max_message_bytes(cfg).saturating_sub(LETTER_FRAMING_BYTES),
            )),
        })
    }

    /// The producer, for readiness (a fatal error).
    pub fn watched(&self) -> &Watched {
        &self.watched
    }

    /// Writes `letter` keyed like its event, retrying until Kafka
    /// acknowledges it.
    pub async fn write(&self, key: &[u8], letter: &DeadLetter) {
        let mut wait = Duration::from_millis(100);
        loop {
            let max = self.max_letter_bytes.load(Ordering::Relaxed);
            let (payload, omitted) = letter.to_json_within(max);
            if !omitted.is_empty() {
                tracing::warn!(topic = %self.topic, max, reason = letter.reason.as_str(), ?omitted, source_partition = letter.source.partition, source_offset = letter.source.offset, "a dead letter would not fit in one Kafka message: written without the fields named (the event is still at its source offset)");
            }
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
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
                        // The topic's limit is below the producers': keep
                        // letters to half of what was refused from now on.
                        self.max_letter_bytes
                            .fetch_min(payload.len() / 2, Ordering::Relaxed);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, Format, Mute, Scope, Source, SCHEMA_V1};

    fn letter(members: usize) -> DeadLetter {
        let members: Vec<String> = (0..members).map(|i| format!("member-{i:05}")).collect();
        let event = Event {
            schema: SCHEMA_V1.into(),
            id: "e1".into(),
            source: Source::Easemob,
            format: Format::GroupOpEvent,
            appkey: "org#app".into(),
            scope: Scope::Group,
            group_id: "g1".into(),
            kind: EventKind::MemberMuted,
            operation: "MUTE".into(),
            subtype: None,
            operator: None,
            members: members.clone(),
            mute: Some(Mute::Until { until_ms: None }),
            occurred_at_ms: 1,
            received_at_ms: 1,
            attributes: Default::default(),
        };
        let source = SourceRecord {
            topic: "events".into(),
            partition: 2,
            offset: 7,
        };
        let id = ActionId::new("rule".into(), "zego".into(), "mute_members");
        let failure = Failure {
            reason: Reason::PermanentError,
            error: "ZEGO 660000002: bad parameters".into(),
            attempts: 1,
            users: members,
        };
        DeadLetter::action(source, &event, &id, failure)
    }

    fn read(json: &[u8]) -> StoredDeadLetter {
        serde_json::from_slice(json).unwrap()
    }

    #[test]
    fn letters_too_large_for_a_message_lose_users_then_the_event() {
        let l = letter(2000);
        let whole = serde_json::to_vec(&l).unwrap();
        let (json, omitted) = l.to_json_within(whole.len());
        assert_eq!((json, omitted), (whole.clone(), &[][..]));
        // Without the user list, the event (which names them) still fits.
        let (json, omitted) = l.to_json_within(whole.len() - 1);
        assert_eq!(omitted, ["users"]);
        let back = read(&json);
        assert!(back.users.is_empty() && back.event.is_some());
        assert_eq!(back.omitted, ["users"]);
        // Not even the event fits: the reason, target and source remain.
        let (json, omitted) = l.to_json_within(1000);
        assert_eq!(omitted, ["users", "event", "payload"]);
        assert!(json.len() < 1000);
        let back = read(&json);
        assert!(back.event.is_none());
        assert_eq!(back.reason, Reason::PermanentError);
        assert_eq!(back.target.as_deref(), Some("zego"));
        assert_eq!((back.source.partition, back.source.offset), (2, 7));
    }
}
