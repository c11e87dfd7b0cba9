//! Publishing normalized events to Kafka.
//!
//! Records are keyed by group ID and placed with librdkafka's
//! `murmur2_random` partitioner, the same placement Java clients compute, so
//! one group is one partition is one order. The producer is idempotent with
//! `acks=all`: a delivery report means every in-sync replica has the record,
//! which is what a 200 promises.
//!
//! [`Publisher::enqueue`] hands the record to librdkafka immediately and
//! returns the delivery future; it never waits behind other requests (an
//! awaited `send` per request would serialise them behind `linger.ms`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer as _};

use crate::event::{Event, SCHEMA_V1};
use crate::ingest::normalize::VerifiedEvent;
use crate::kafka;
use crate::kafka::client::{Producer, Watched};
use crate::kafka::config::KafkaConfig;

/// Why a record was not handed to Kafka or not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the producer queue is full")]
    QueueFull,
    /// Permanent: the same event will never fit.
    #[error("the event is {size} bytes as a Kafka record, more than the producer's message.max.bytes ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("Kafka did not acknowledge the record: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the producer shut down before the record was acknowledged")]
    Canceled,
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// A record handed to librdkafka, waiting for its delivery report: a
/// future of the broker's acknowledgement (or librdkafka's final error, at
/// the latest after `message.timeout.ms`). It can be polled in place and
/// moved elsewhere unfinished (it is `Unpin`).
pub struct Pending(DeliveryFuture);

impl std::future::Future for Pending {
    type Output = Result<Delivered, PublishError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(Ok(d)) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((e, _))) => Err(PublishError::Kafka(e)),
            Err(_) => Err(PublishError::Canceled),
        })
    }
}

/// The Kafka producer for normalized events.
#[derive(Clone)]
pub struct Publisher {
    producer: Producer,
    watched: Watched,
    topic: Arc<str>,
    /// librdkafka's `message.max.bytes` for this producer.
    max_message_bytes: usize,
}

impl Publisher {
    /// Creates the producer; mutebridge's delivery guarantees are pinned.
    pub fn new(cfg: &KafkaConfig, bootstrap: &str) -> anyhow::Result<Publisher> {
        let config = kafka::producer_config(cfg, bootstrap);
        let watched = Watched::create(config, "event")
            .context("cannot create the Kafka producer (check the [kafka.client] properties)")?;
        Ok(Publisher {
            producer: watched.producer.clone(),
            watched,
            topic: cfg.topic.as_str().into(),
            max_message_bytes: kafka::client::max_message_bytes(cfg),
        })
    }

    /// Hands the event to the producer without waiting; `QueueFull` when
    /// librdkafka's bounded queue has no room.
    pub fn enqueue(&self, event: &VerifiedEvent) -> Result<Pending, PublishError> {
        let e = event.event();
        let payload = serde_json::to_vec(e).expect("events always serialize");
        let headers = event_headers(e);
        // What librdkafka counts against message.max.bytes: value, key and
        // headers. Checked here so the answer says why, not "retry later".
        // The headers' size is summed from the strings they were made of
        // (reading them back would cross into librdkafka four times).
        let size = payload.len() + e.group_id.len() + event_headers_len(e);
        if size > self.max_message_bytes {
            return Err(PublishError::TooLarge {
                size,
                max: self.max_message_bytes,
            });
        }
        let record = FutureRecord::to(&self.topic)
            .key(e.group_id.as_str())
            .payload(&payload)
            .headers(headers);
        match self.producer.send_result(record) {
            Ok(future) => Ok(Pending(future)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(PublishError::QueueFull)
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                Err(PublishError::TooLarge {
                    size,
                    max: self.max_message_bytes,
                })
            }
            Err((e, _)) => Err(PublishError::Kafka(e)),
        }
    }

    /// True when the cluster answers a metadata request for the topic
    /// within `timeout`. Blocks: call it from a blocking thread.
    pub fn probe(&self, timeout: Duration) -> bool {
        kafka::partition_count(self.producer.client(), &self.topic, timeout).is_ok()
    }

    /// Waits up to `timeout` for every queued record to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Records queued in librdkafka and not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// The producer, for readiness (fatal error, brokers).
    pub fn watched(&self) -> &Watched {
        &self.watched
    }

    /// Makes librdkafka raise a fatal error on this producer, as a fenced
    /// or unauthorized idempotent producer would (librdkafka's own test
    /// hook: there is no practical way to cause a real one on purpose).
    #[doc(hidden)]
    pub fn inject_fatal_error(&self, reason: &str) {
        inject_fatal_error(self.producer.client(), reason);
    }
}

/// `rd_kafka_test_fatal_error` on `client`: an OUT_OF_ORDER_SEQUENCE_NUMBER
/// fatal error, as the idempotent producer raises when it cannot recover.
#[doc(hidden)]
pub fn inject_fatal_error<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    reason: &str,
) {
    let reason = std::ffi::CString::new(reason).unwrap_or_default();
    // SAFETY: a live client handle and a NUL-terminated string that
    // outlives the call (librdkafka copies it).
    unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            client.native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        );
    }
}

/// The headers every event record carries (see the README's topic
/// contract): consumers can route on them without parsing the value.
pub fn event_headers(e: &Event) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(4)
        .insert(Header {
            key: "event-kind",
            value: Some(e.kind.as_str()),
        })
        .insert(Header {
            key: "appkey",
            value: Some(e.appkey.as_str()),
        })
        .insert(Header {
            key: "call-id",
            value: Some(e.id.as_str()),
        })
        .insert(Header {
            key: "schema",
            value: Some(SCHEMA_V1),
        })
}

/// Bytes of [`event_headers`]' keys and values, without building them.
pub fn event_headers_len(e: &Event) -> usize {
    "event-kind".len()
        + e.kind.as_str().len()
        + "appkey".len()
        + e.appkey.len()
        + "call-id".len()
        + e.id.len()
        + "schema".len()
        + SCHEMA_V1.len()
}
