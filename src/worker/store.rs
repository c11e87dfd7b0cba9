//! One pipeline's records in the compacted state topic
//! (`worker.state_topic`): the state keeper's group states, or a mute
//! target's applied records ([`Record`] says which).
//!
//! A record goes to the same partition number as the group's events, so a
//! pipeline owns exactly the records of the partitions it consumes. On
//! assignment the records of the new partitions are read to the end (by
//! the pipeline's [`super::reader::StateReader`]) before any of their
//! events is judged; on revoke they are dropped, and no further record of
//! those partitions is written by this pipeline: a write either was handed
//! to Kafka before the revoke (which then waits for it) or does not
//! happen, so the next owner reads everything this one wrote.
//!
//! A record is written after the actions it vouches for have finished, and
//! acknowledged before the event's offset may be committed: a crash in
//! between re-applies the event (at-least-once), never skips it. The
//! group's next event does not wait for that acknowledgement (it is judged
//! against the record held here), only the commit does.
//!
//! Every record carries its writer (a `writer` header, one ID per store
//! and process). A record of an owned partition written by anyone else
//! after it loaded (a former owner that froze past its session timeout and
//! woke with records still queued) is answered by writing this store's
//! record again ([`Store::foreign`]), so the owner's newest is what stays.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntGauge};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer as _};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::lease::Lease;
use crate::kafka::client::Producer;
use crate::state::applied::{AppliedState, APPLIED_SCHEMA_V1};
use crate::state::{guard, GroupState, STATE_SCHEMA_V1};

/// The header naming a record's writer.
pub const WRITER_HEADER: &str = "writer";

/// A kind of record a pipeline keeps.
pub trait Record: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The `schema` field and header.
    const SCHEMA: &'static str;
    fn key(&self) -> String;
    /// Forgets members past the horizon; how many.
    fn prune(&mut self, now_ms: i64, horizon_ms: i64) -> usize;
    /// Drops members until `bytes` of JSON are gone; how many
    /// ([`guard::shed_members`]).
    fn shed(&mut self, bytes: usize, now_ms: i64) -> usize;
}

impl Record for GroupState {
    const SCHEMA: &'static str = STATE_SCHEMA_V1;
    fn key(&self) -> String {
        GroupState::key(self)
    }
    fn prune(&mut self, now_ms: i64, horizon_ms: i64) -> usize {
        guard::prune(self, now_ms, horizon_ms)
    }
    fn shed(&mut self, bytes: usize, now_ms: i64) -> usize {
        guard::shed_members(&mut self.members, bytes, now_ms)
    }
}

impl Record for AppliedState {
    const SCHEMA: &'static str = APPLIED_SCHEMA_V1;
    fn key(&self) -> String {
        AppliedState::key(self)
    }
    fn prune(&mut self, now_ms: i64, horizon_ms: i64) -> usize {
        guard::prune_members(&mut self.members, now_ms, horizon_ms)
    }
    fn shed(&mut self, bytes: usize, now_ms: i64) -> usize {
        guard::shed_members(&mut self.members, bytes, now_ms)
    }
}

/// What a record needs beside its value in a message: the key (a group ID
/// is at most 256 bytes, with the app key and target name a little more),
/// the `schema` header and the batch's framing.
const RECORD_FRAMING_BYTES: usize = 2048;

/// The metric handles of one store.
#[derive(Clone)]
pub struct StoreMetrics {
    pub held: IntGauge,
    pub rebuild: Histogram,
    pub writes: IntCounter,
    pub write_errors: IntCounter,
    pub members_dropped: IntCounter,
}

/// The records of the assigned partitions; cheap to clone.
pub struct Store<R> {
    shared: Arc<Shared<R>>,
}

impl<R> Clone for Store<R> {
    fn clone(&self) -> Self {
        Store {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<R> {
    parts: Mutex<HashMap<i32, Arc<Partition<R>>>>,
    producer: Producer,
    topic: String,
    horizon_ms: i64,
    /// The largest record value written: the producers' `message.max.bytes`
    /// less room for the key, the header and the batch's framing; lowered
    /// when the broker refuses a record as too large.
    max_record_bytes: AtomicUsize,
    metrics: StoreMetrics,
    /// Tells the pipeline a partition's records are read.
    loaded: mpsc::UnboundedSender<i32>,
    /// This store's `writer` header value.
    writer: String,
    /// The pipeline's standing in its consumer group: nothing is written
    /// while it is in doubt.
    lease: Lease,
}

/// One assigned partition's records.
pub struct Partition<R> {
    id: i32,
    /// True once the records are read up to the end.
    loaded: watch::Sender<bool>,
    inner: Mutex<Inner<R>>,
}

struct Inner<R> {
    records: HashMap<String, R>,
    revoked: bool,
}

/// The partition was revoked: the record was not written (the new owner
/// re-applies the event from the committed offset).
#[derive(Debug)]
pub struct Revoked;

impl<R: Record> Store<R> {
    /// A store writing to `topic` with `producer` (shared by the worker's
    /// stores), records of at most `max_message_bytes` (the producers'
    /// `message.max.bytes`); `loaded` hears of each partition read to its
    /// end.
    pub fn new(
        producer: Producer,
        topic: &str,
        horizon_days: u32,
        max_message_bytes: usize,
        metrics: StoreMetrics,
        loaded: mpsc::UnboundedSender<i32>,
        lease: Lease,
    ) -> Store<R> {
        Store {
            shared: Arc::new(Shared {
                parts: Mutex::new(HashMap::new()),
                producer,
                topic: topic.to_owned(),
                horizon_ms: i64::from(horizon_days) * 86_400_000,
                max_record_bytes: AtomicUsize::new(
                    max_message_bytes.saturating_sub(RECORD_FRAMING_BYTES),
                ),
                metrics,
                loaded,
                writer: format!("{:016x}", fastrand::u64(..)),
                lease,
            }),
        }
    }

    /// Waits until the pipeline may write (see [`super::lease`]): call it
    /// right before staging.
    pub async fn member(&self) {
        self.shared.lease.wait().await;
    }

    /// Whether `writer` (a record's header) is this store.
    pub fn is_own(&self, writer: Option<&str>) -> bool {
        writer == Some(self.shared.writer.as_str())
    }

    /// Someone else wrote `key` of partition `id` after it loaded here (a
    /// former owner, frozen past its session timeout, waking up): this
    /// store's record (or its absence, as a tombstone) is written again so
    /// that it stays the newest. The owner re-applies every event whose
    /// offset is not committed, so what it holds is never older than what
    /// a former owner wrote.
    pub fn foreign(&self, id: i32, key: &str) {
        let Some(part) = self.part(id) else { return };
        let inner = part.inner.lock().expect("state lock");
        if inner.revoked || !*part.loaded.borrow() {
            return;
        }
        let payload = inner.records.get(key).map(|r| {
            let mut r = r.clone();
            self.fit(key, &mut r)
        });
        tracing::warn!(partition = id, key, topic = %self.shared.topic, "a record of a partition owned here was written by another writer (a former owner that woke up late?); writing this owner's record again");
        // Not awaited: the pipeline's own writes wait for theirs; this one
        // only has to land after the stray record.
        drop(self.send(id, key, payload.as_deref()));
    }

    /// How long unmuted members are remembered, in milliseconds.
    pub fn horizon_ms(&self) -> i64 {
        self.shared.horizon_ms
    }

    /// Partitions were assigned: their records are to be read (by the
    /// reader, which calls [`Store::load`] and [`Store::loaded`]).
    pub fn assign(&self, partitions: &[i32]) {
        let mut dropped = 0;
        {
            let mut parts = self.shared.parts.lock().expect("state lock");
            for &id in partitions {
                let fresh = Arc::new(Partition {
                    id,
                    loaded: watch::Sender::new(false),
                    inner: Mutex::new(Inner {
                        records: HashMap::new(),
                        revoked: false,
                    }),
                });
                if let Some(old) = parts.insert(id, fresh) {
                    dropped += old.revoke();
                }
            }
        }
        self.shared.metrics.held.sub(dropped as i64);
    }

    /// Partitions were revoked: drops their records and waits (up to 10 s)
    /// until every write already handed to Kafka is acknowledged, so the
    /// next owner reads it. Called from the rebalance callback.
    pub fn revoke(&self, partitions: &[i32]) {
        let mut dropped = 0;
        {
            let mut parts = self.shared.parts.lock().expect("state lock");
            for id in partitions {
                if let Some(p) = parts.remove(id) {
                    dropped += p.revoke();
                }
            }
        }
        self.shared.metrics.held.sub(dropped as i64);
        if let Err(e) = self.shared.producer.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "state writes of revoked partitions not acknowledged within 10 s; the next owner may re-apply their events");
        }
    }

    /// One record read while partition `id` loads (`None`: a tombstone).
    pub fn load(&self, id: i32, key: &str, record: Option<R>, now_ms: i64) {
        let Some(part) = self.part(id) else { return };
        let mut inner = part.inner.lock().expect("state lock");
        match record {
            Some(mut r) => {
                r.prune(now_ms, self.shared.horizon_ms);
                inner.records.insert(key.to_owned(), r);
            }
            None => {
                inner.records.remove(key);
            }
        }
    }

    /// Partition `id` is read to its end: its events may be judged.
    pub fn loaded(&self, id: i32) {
        let Some(part) = self.part(id) else { return };
        let held = {
            let inner = part.inner.lock().expect("state lock");
            if inner.revoked {
                return;
            }
            inner.records.len()
        };
        self.shared.metrics.held.add(held as i64);
        part.loaded.send_replace(true);
        let _ = self.shared.loaded.send(id);
        tracing::debug!(partition = id, records = held, topic = %self.shared.topic, "{} records rebuilt from the state topic", R::SCHEMA);
    }

    /// The partitions of one assignment are all read, in `took`.
    pub fn rebuilt(&self, took: Duration) {
        self.shared.metrics.rebuild.observe(took.as_secs_f64());
        tracing::info!(?took, topic = %self.shared.topic, "{} records of newly assigned partitions rebuilt from the state topic", R::SCHEMA);
    }

    /// A record was deleted (a tombstone) after the partition loaded: by
    /// hand, or by another writer. The next write must not resurrect it.
    pub fn deleted(&self, id: i32, key: &str) {
        let Some(part) = self.part(id) else { return };
        let removed = part
            .inner
            .lock()
            .expect("state lock")
            .records
            .remove(key)
            .is_some();
        if removed {
            self.shared.metrics.held.dec();
            tracing::info!(
                partition = id,
                key,
                "a record was deleted from the state topic; forgotten here too"
            );
        }
    }

    fn part(&self, id: i32) -> Option<Arc<Partition<R>>> {
        self.shared
            .parts
            .lock()
            .expect("state lock")
            .get(&id)
            .cloned()
    }

    /// Whether partition `id`'s records are read (or it is not assigned:
    /// its events are dropped anyway).
    pub fn is_loaded(&self, id: i32) -> bool {
        self.part(id).is_none_or(|p| *p.loaded.borrow())
    }

    /// The records of partition `id`, once they are read to the end;
    /// `None` when the partition is not (or no longer) assigned here.
    pub async fn partition(&self, id: i32) -> Option<Arc<Partition<R>>> {
        let part = self.part(id)?;
        let mut loaded = part.loaded.subscribe();
        loaded.wait_for(|l| *l).await.ok()?;
        let revoked = part.inner.lock().expect("state lock").revoked;
        (!revoked).then_some(part)
    }

    /// Makes `record` its group's record here and hands it to Kafka;
    /// [`PendingWrite::confirm`] then waits for the acknowledgement.
    pub fn stage(
        &self,
        part: &Arc<Partition<R>>,
        mut record: R,
    ) -> Result<PendingWrite<R>, Revoked> {
        let key = record.key();
        let payload = self.fit(&key, &mut record);
        // Checked and handed over under the lock the revoke takes: after a
        // revoke nothing more is written for the partition.
        let mut inner = part.inner.lock().expect("state lock");
        if inner.revoked {
            return Err(Revoked);
        }
        let delivery = self.send(part.id, &key, Some(&payload));
        if inner.records.insert(key.clone(), record).is_none() {
            self.shared.metrics.held.inc();
        }
        Ok(PendingWrite {
            store: self.clone(),
            part: part.clone(),
            key,
            delivery,
        })
    }

    /// Deletes the group's record here and writes its tombstone.
    pub fn stage_delete(
        &self,
        part: &Arc<Partition<R>>,
        key: &str,
    ) -> Result<PendingWrite<R>, Revoked> {
        let mut inner = part.inner.lock().expect("state lock");
        if inner.revoked {
            return Err(Revoked);
        }
        let delivery = self.send(part.id, key, None);
        if inner.records.remove(key).is_some() {
            self.shared.metrics.held.dec();
        }
        Ok(PendingWrite {
            store: self.clone(),
            part: part.clone(),
            key: key.to_owned(),
            delivery,
        })
    }

    /// The record's JSON, once it fits in a message: members dropped, the
    /// least important first, until it does (with a metric and a warning),
    /// so that a record too large is never retried for ever.
    fn fit(&self, key: &str, record: &mut R) -> Vec<u8> {
        let max = self.shared.max_record_bytes.load(Ordering::Relaxed);
        let mut payload = serde_json::to_vec(&*record).expect("records always serialize");
        let mut dropped = 0;
        while payload.len() > max {
            let n = record.shed(payload.len() - max, crate::time::now_ms());
            if n == 0 {
                break;
            }
            dropped += n;
            payload = serde_json::to_vec(&*record).expect("records always serialize");
        }
        if dropped > 0 {
            self.shared.metrics.members_dropped.inc_by(dropped as u64);
            tracing::warn!(key, dropped, bytes = payload.len(), max, topic = %self.shared.topic, "a group's {} record would not fit in one Kafka message: dropped the members that matter least (unmuted and ended first, then the oldest mutes); a late callback for them is no longer refused as stale", R::SCHEMA);
        }
        payload
    }

    /// The broker refused a record as too large: its limit for the topic
    /// (`max.message.bytes`) is below the producers'. Records from now on
    /// are kept to half of what was refused.
    fn refused_as_too_large(&self, refused_bytes: usize) {
        let half = refused_bytes / 2;
        let before = self
            .shared
            .max_record_bytes
            .fetch_min(half, Ordering::Relaxed);
        if half < before {
            tracing::error!(topic = %self.shared.topic, refused_bytes, max = half, "the broker refused a state record as too large: its max.message.bytes for the topic is below the producers' message.max.bytes; records are kept to {half} bytes from now on (set message.max.bytes in [kafka.client] to the topic's limit)");
        }
    }

    /// Hands one record (or tombstone) to librdkafka (`None`: its queue is
    /// full).
    fn send(&self, partition: i32, key: &str, payload: Option<&[u8]>) -> Option<DeliveryFuture> {
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: "schema",
                value: Some(R::SCHEMA),
            })
            .insert(Header {
                key: WRITER_HEADER,
                value: Some(self.shared.writer.as_str()),
            });
        let mut record = FutureRecord::<str, [u8]>::to(&self.shared.topic)
            .partition(partition)
            .key(key)
            .headers(headers);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        self.shared.producer.send_result(record).ok()
    }

    /// Calls `each` with every record of every loaded partition (for the
    /// renewal schedule after a rebuild).
    pub fn for_each_in(&self, id: i32, mut each: impl FnMut(&R)) {
        if let Some(part) = self.part(id) {
            for r in part.inner.lock().expect("state lock").records.values() {
                each(r);
            }
        }
    }
}

/// A record handed to Kafka and not yet acknowledged: step 2 of the
/// completion protocol (see [`super`]).
pub struct PendingWrite<R> {
    store: Store<R>,
    part: Arc<Partition<R>>,
    key: String,
    delivery: Option<DeliveryFuture>,
}

impl<R: Record> PendingWrite<R> {
    /// Waits until the staged record is acknowledged, writing the group's
    /// newest record (or its tombstone) again after a failure, never an
    /// older one: the newest is what must be in the topic last. `Err` once
    /// the partition is revoked.
    pub async fn confirm(self) -> Result<(), Revoked> {
        let PendingWrite {
            store,
            part,
            key,
            mut delivery,
        } = self;
        let mut wait = Duration::from_millis(100);
        loop {
            let error = match delivery.take() {
                None => "the producer queue is full".to_owned(),
                Some(future) => match future.await {
                    Ok(Ok(_)) => {
                        store.shared.metrics.writes.inc();
                        return Ok(());
                    }
                    Ok(Err((e, message))) => {
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
                            store.refused_as_too_large(message.payload().map_or(0, <[u8]>::len));
                        }
                        e.to_string()
                    }
                    Err(_) => "the producer shut down".to_owned(),
                },
            };
            store.shared.metrics.write_errors.inc();
            tracing::error!(error, topic = %store.shared.topic, partition = part.id, "cannot write a group's record to the state topic; retrying (its offset is not committed meanwhile)");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            store.member().await;
            let mut inner = part.inner.lock().expect("state lock");
            if inner.revoked {
                return Err(Revoked);
            }
            let payload = inner.records.get_mut(&key).map(|r| store.fit(&key, r));
            delivery = store.send(part.id, &key, payload.as_deref());
        }
    }
}

impl<R: Clone> Partition<R> {
    /// A copy of a group's record.
    pub fn get(&self, key: &str) -> Option<R> {
        self.inner
            .lock()
            .expect("state lock")
            .records
            .get(key)
            .cloned()
    }
}

impl<R> Partition<R> {
    /// Marks it revoked and drops its records; returns how many.
    fn revoke(&self) -> usize {
        let mut inner = self.inner.lock().expect("state lock");
        inner.revoked = true;
        let n = if *self.loaded.borrow() {
            inner.records.len()
        } else {
            0
        };
        inner.records = HashMap::new();
        // Waiters see the sender dropped only with the last Arc; wake them.
        self.loaded.send_replace(true);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Scope;
    use crate::state::MemberState;
    use crate::worker::metrics::WorkerMetrics;
    use crate::worker::testing;

    fn group_state(members: usize) -> GroupState {
        let mut s = GroupState::new("org#app", Scope::Group, "g1");
        for i in 0..members {
            s.members.insert(
                format!("member-{i:04}"),
                MemberState {
                    muted: true,
                    until_ms: None,
                    at_ms: i as i64,
                    event_id: format!("event-{i}"),
                },
            );
        }
        s
    }

    fn store(kafka: &crate::kafka::EmbeddedKafka, max: usize) -> (Store<GroupState>, StoreMetrics) {
        let metrics = WorkerMetrics::new().pipeline("keeper").store;
        (testing::store(kafka, metrics.clone(), max), metrics)
    }

    #[tokio::test]
    async fn a_partitions_records_are_judged_only_once_it_is_read_to_its_end() {
        let kafka = testing::kafka();
        let (store, metrics) = store(&kafka, 1_000_000);
        store.assign(&[0]);
        assert!(!store.is_loaded(0));
        assert!(store.is_loaded(1), "not assigned here: nothing to wait for");
        store.load(0, "g", Some(group_state(1)), crate::time::now_ms());
        let waiting = tokio::time::timeout(Duration::from_millis(50), store.partition(0)).await;
        assert!(waiting.is_err(), "still being read");
        store.loaded(0);
        let part = store.partition(0).await.expect("loaded");
        assert_eq!(part.get("g"), Some(group_state(1)));
        assert_eq!(metrics.held.get(), 1);
    }

    #[tokio::test]
    async fn a_staged_record_is_held_at_once_and_confirmed_once_kafka_has_it() {
        let kafka = testing::kafka();
        let (store, metrics) = store(&kafka, 1_000_000);
        store.assign(&[0]);
        store.loaded(0);
        let part = store.partition(0).await.unwrap();
        let record = group_state(2);
        let key = record.key();
        let write = store.stage(&part, record.clone()).unwrap();
        assert_eq!(part.get(&key), Some(record), "the next event sees it now");
        assert_eq!(metrics.writes.get(), 0, "not acknowledged yet");
        write.confirm().await.unwrap();
        assert_eq!((metrics.writes.get(), metrics.held.get()), (1, 1));
        // A delete forgets it here and writes the tombstone.
        let delete = store.stage_delete(&part, &key).unwrap();
        assert_eq!(part.get(&key), None);
        assert_eq!(metrics.held.get(), 0);
        delete.confirm().await.unwrap();
        assert_eq!(metrics.writes.get(), 2);
    }

    #[tokio::test]
    async fn nothing_is_written_for_a_revoked_partition() {
        let kafka = testing::kafka();
        let (store, metrics) = store(&kafka, 1_000_000);
        store.assign(&[0, 1]);
        store.loaded(0);
        store.loaded(1);
        let part = store.partition(0).await.unwrap();
        store.stage(&part, group_state(1)).unwrap();
        store.revoke(&[0]);
        assert!(matches!(store.stage(&part, group_state(2)), Err(Revoked)));
        assert!(matches!(store.stage_delete(&part, "g"), Err(Revoked)));
        assert!(store.partition(0).await.is_none(), "its events are dropped");
        assert!(store.partition(1).await.is_some(), "the other stays");
        assert_eq!(metrics.held.get(), 0, "its record is forgotten");
    }

    #[tokio::test]
    async fn a_record_too_large_for_one_message_sheds_members_until_it_fits() {
        let kafka = testing::kafka();
        let room = 4_000;
        let (store, metrics) = store(&kafka, RECORD_FRAMING_BYTES + room);
        store.assign(&[0]);
        store.loaded(0);
        let part = store.partition(0).await.unwrap();
        let record = group_state(100);
        let key = record.key();
        assert!(serde_json::to_vec(&record).unwrap().len() > room);
        let write = store.stage(&part, record).unwrap();
        let kept = part.get(&key).unwrap();
        let size = serde_json::to_vec(&kept).unwrap().len();
        assert!(size <= room, "{size} bytes");
        assert!(kept.members.len() < 100);
        assert_eq!(
            metrics.members_dropped.get(),
            100 - kept.members.len() as u64
        );
        // The oldest mutes went first.
        assert!(kept.members.get("member-0099").is_some());
        assert!(kept.members.get("member-0000").is_none());
        write.confirm().await.unwrap();
    }
}
