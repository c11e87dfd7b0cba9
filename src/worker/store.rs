//! The mute states of the groups in this worker's partitions, kept in the
//! compacted state topic (`worker.state_topic`).
//!
//! A group's state record goes to the same partition number as the group's
//! events, so a worker owns exactly the states of the partitions it
//! consumes. On assignment the states of the new partitions are read to
//! the end before any of their events is judged ([`Store::partition`]
//! waits for that); on revoke they are dropped, and no further state of
//! those partitions is written by this worker: a write either was handed
//! to Kafka before the revoke (which then waits for it) or does not
//! happen, so the next owner reads everything this one wrote.
//!
//! A state is written after the actions it vouches for have finished, and
//! acknowledged before the event's offset may be committed: a crash in
//! between re-applies the event (at-least-once), never skips it. The
//! group's next event does not wait for that acknowledgement (it is judged
//! against the state held here), only the commit does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::config::KafkaConfig;
use crate::kafka::{self, scan::Reader};
use crate::metrics::WorkerMetrics;
use crate::state::{guard, GroupState, STATE_SCHEMA_V1};
use crate::time::now_ms;

/// The states of the assigned partitions; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    parts: Mutex<HashMap<i32, Arc<Partition>>>,
    producer: FutureProducer,
    topic: String,
    kafka: KafkaConfig,
    bootstrap: String,
    horizon_ms: i64,
    runtime: Handle,
    metrics: WorkerMetrics,
}

/// One assigned partition's states.
pub struct Partition {
    id: i32,
    /// True once the states are read up to the end.
    loaded: watch::Sender<bool>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    groups: HashMap<String, GroupState>,
    revoked: bool,
}

/// The partition was revoked: the state was not written (the new owner
/// re-applies the event from the committed offset).
#[derive(Debug)]
pub struct Revoked;

impl Store {
    /// A store writing to `topic`; call from within the runtime.
    pub fn new(
        kafka: &KafkaConfig,
        bootstrap: &str,
        topic: &str,
        horizon_days: u32,
        metrics: &WorkerMetrics,
    ) -> anyhow::Result<Store> {
        let producer: FutureProducer = kafka::producer_config(kafka, bootstrap)
            // Nobody waits on a state record but the offset commit, so
            // records are batched: far fewer requests for broker and client.
            .set("linger.ms", "5")
            .create()
            .context("cannot create the state producer (check the [kafka.client] properties)")?;
        Ok(Store {
            shared: Arc::new(Shared {
                parts: Mutex::new(HashMap::new()),
                producer,
                topic: topic.to_owned(),
                kafka: kafka.clone(),
                bootstrap: bootstrap.to_owned(),
                horizon_ms: i64::from(horizon_days) * 86_400_000,
                runtime: Handle::current(),
                metrics: metrics.clone(),
            }),
        })
    }

    /// How long unmuted members are remembered, in milliseconds.
    pub fn horizon_ms(&self) -> i64 {
        self.shared.horizon_ms
    }

    /// Partitions were assigned: starts reading their states. Called from
    /// the rebalance callback, so it only starts the work.
    pub fn assign(&self, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        let fresh: Vec<Arc<Partition>> = partitions
            .iter()
            .map(|&id| {
                Arc::new(Partition {
                    id,
                    loaded: watch::Sender::new(false),
                    inner: Mutex::new(Inner::default()),
                })
            })
            .collect();
        let mut dropped = 0;
        {
            let mut parts = self.shared.parts.lock().expect("state lock");
            for p in &fresh {
                if let Some(old) = parts.insert(p.id, p.clone()) {
                    dropped += old.revoke();
                }
            }
        }
        self.shared.metrics.state_groups.sub(dropped as i64);
        let shared = self.shared.clone();
        self.shared
            .runtime
            .spawn_blocking(move || load(&shared, fresh));
    }

    /// Partitions were revoked: drops their states and waits (up to 10 s)
    /// until every state write already handed to Kafka is acknowledged, so
    /// the next owner reads it. Called from the rebalance callback.
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
        self.shared.metrics.state_groups.sub(dropped as i64);
        if let Err(e) = self.shared.producer.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "state writes of revoked partitions not acknowledged within 10 s; the next owner may re-apply their events");
        }
    }

    /// The states of partition `id`, once they are read to the end; `None`
    /// when the partition is not (or no longer) assigned here.
    pub async fn partition(&self, id: i32) -> Option<Arc<Partition>> {
        let part = self
            .shared
            .parts
            .lock()
            .expect("state lock")
            .get(&id)
            .cloned()?;
        let mut loaded = part.loaded.subscribe();
        loaded.wait_for(|l| *l).await.ok()?;
        let revoked = part.inner.lock().expect("state lock").revoked;
        (!revoked).then_some(part)
    }

    /// Makes `state` its group's state here and hands its record to
    /// Kafka; [`Store::confirm`] then waits for the acknowledgement. The
    /// group's next event can be judged at once: only the commit of this
    /// event's offset waits for the record.
    pub fn stage(&self, part: &Arc<Partition>, state: GroupState) -> Result<Staged, Revoked> {
        let key = state.key();
        let payload = serde_json::to_vec(&state).expect("states always serialize");
        // Checked and handed over under the lock the revoke takes: after a
        // revoke nothing more is written for the partition.
        let mut inner = part.inner.lock().expect("state lock");
        if inner.revoked {
            return Err(Revoked);
        }
        let delivery = self.send(part.id, &key, &payload);
        if inner.groups.insert(key.clone(), state).is_none() {
            self.shared.metrics.state_groups.inc();
        }
        Ok(Staged {
            part: part.clone(),
            key,
            delivery,
        })
    }

    /// Waits until the staged record is acknowledged, writing the group's
    /// newest state again after a failure (never an older one: the newest
    /// is what must be in the topic last). `Err` once the partition is
    /// revoked.
    pub async fn confirm(&self, staged: Staged) -> Result<(), Revoked> {
        let Staged {
            part,
            key,
            mut delivery,
        } = staged;
        let mut wait = Duration::from_millis(100);
        loop {
            let error = match delivery.take() {
                None => "the producer queue is full".to_owned(),
                Some(future) => match future.await {
                    Ok(Ok(_)) => {
                        self.shared.metrics.state_writes.inc();
                        return Ok(());
                    }
                    Ok(Err((e, _))) => e.to_string(),
                    Err(_) => "the producer shut down".to_owned(),
                },
            };
            self.shared.metrics.state_write_errors.inc();
            tracing::error!(error, topic = %self.shared.topic, partition = part.id, "cannot write a group's mute state; retrying (its offset is not committed meanwhile)");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            let inner = part.inner.lock().expect("state lock");
            if inner.revoked {
                return Err(Revoked);
            }
            if let Some(newest) = inner.groups.get(&key) {
                let payload = serde_json::to_vec(newest).expect("states always serialize");
                delivery = self.send(part.id, &key, &payload);
            }
        }
    }

    /// Hands one state record to librdkafka (`None`: its queue is full).
    fn send(&self, partition: i32, key: &str, payload: &[u8]) -> Option<DeliveryFuture> {
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: "schema",
            value: Some(STATE_SCHEMA_V1),
        });
        let record = FutureRecord::to(&self.shared.topic)
            .partition(partition)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.shared.producer.send_result(record).ok()
    }
}

/// A state record handed to Kafka and not yet acknowledged.
pub struct Staged {
    part: Arc<Partition>,
    key: String,
    delivery: Option<DeliveryFuture>,
}

impl Partition {
    /// A copy of a group's state.
    pub fn get(&self, key: &str) -> Option<GroupState> {
        self.inner
            .lock()
            .expect("state lock")
            .groups
            .get(key)
            .cloned()
    }

    /// Marks it revoked and drops its states; returns how many.
    fn revoke(&self) -> usize {
        let mut inner = self.inner.lock().expect("state lock");
        inner.revoked = true;
        let n = inner.groups.len();
        inner.groups = HashMap::new();
        // Waiters see the sender dropped only with the last Arc; wake them.
        self.loaded.send_replace(true);
        n
    }
}

/// Reads the states of `parts` to the end (retrying while Kafka cannot be
/// read and the partitions are still assigned), then opens them.
fn load(shared: &Shared, parts: Vec<Arc<Partition>>) {
    let ids: Vec<i32> = parts.iter().map(|p| p.id).collect();
    let started = Instant::now();
    let mut wait = Duration::from_millis(200);
    let mut tables: HashMap<i32, HashMap<String, GroupState>> = HashMap::new();
    loop {
        tables.clear();
        let now = now_ms();
        let mut unreadable = 0usize;
        let result = Reader::new(&shared.kafka, &shared.bootstrap).and_then(|reader| {
            reader.read(
                &shared.topic,
                &ids,
                |record| {
                    let table = tables.entry(record.partition).or_default();
                    let Some(payload) = record.payload else {
                        // A tombstone (someone deleted the group's state):
                        // the key has no state from here on.
                        if let Some(key) = record.key {
                            table.remove(String::from_utf8_lossy(&key).as_ref());
                        }
                        return;
                    };
                    match serde_json::from_slice::<GroupState>(&payload) {
                        Ok(mut state) => {
                            guard::prune(&mut state, now, shared.horizon_ms);
                            table.insert(state.key(), state);
                        }
                        Err(_) => unreadable += 1,
                    }
                },
                |_| {},
            )
        });
        match result {
            Ok(()) => {
                if unreadable > 0 {
                    tracing::warn!(
                        unreadable,
                        topic = %shared.topic,
                        "records in the state topic are not {STATE_SCHEMA_V1} states; ignored"
                    );
                }
                break;
            }
            Err(e)
                if parts
                    .iter()
                    .all(|p| p.inner.lock().expect("state lock").revoked) =>
            {
                tracing::debug!(error = %e, "state rebuild abandoned: partitions revoked");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), ?ids, "cannot read the mute states of assigned partitions; retrying (their events wait)");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    let mut total = 0usize;
    for p in &parts {
        let table = tables.remove(&p.id).unwrap_or_default();
        let mut inner = p.inner.lock().expect("state lock");
        if inner.revoked {
            continue;
        }
        total += table.len();
        inner.groups = table;
        drop(inner);
        p.loaded.send_replace(true);
    }
    shared.metrics.state_groups.add(total as i64);
    let took = started.elapsed();
    shared.metrics.state_rebuild.observe(took.as_secs_f64());
    tracing::info!(partitions = ?ids, groups = total, ?took, "mute states rebuilt from the state topic");
}
