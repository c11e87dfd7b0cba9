//! Reading the state topic for one pipeline: the partitions it is assigned,
//! first to their end (the rebuild: nothing of a partition is judged before
//! it), then as they grow (the tail).
//!
//! The tail is what keeps a pipeline's picture current while it runs: a
//! mute target follows the group states the state keeper writes (the
//! group's newest state, which makes a lagging target skip what a newer
//! event has set since), and every pipeline hears of a record deleted by
//! hand (a tombstone), so its next write does not bring it back.
//!
//! librdkafka's consumer blocks, so the reader is a thread of its own,
//! driven by assign and revoke commands from the rebalance callback.

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::offsets::{fence_of, Tracker};
use super::store::{Record, Store, WRITER_HEADER};
use crate::kafka::client_config;
use crate::kafka::config::KafkaConfig;
use crate::state::applied::AppliedState;
use crate::state::GroupState;
use crate::time::now_ms;

/// The newest state of the groups in a target's partitions, as the state
/// keeper recorded it.
#[derive(Default)]
pub struct Newest {
    parts: Mutex<HashMap<i32, HashMap<String, GroupState>>>,
}

impl Newest {
    /// Runs `f` with the newest state of the group `key` in `partition`.
    pub fn with<T>(
        &self,
        partition: i32,
        key: &str,
        f: impl FnOnce(Option<&GroupState>) -> T,
    ) -> T {
        let parts = self.parts.lock().expect("newest lock");
        f(parts.get(&partition).and_then(|p| p.get(key)))
    }

    /// A copy of the group's newest state.
    pub fn get(&self, partition: i32, key: &str) -> Option<GroupState> {
        self.with(partition, key, |s| s.cloned())
    }

    /// Calls `each` with every group's newest state in `partition` (for
    /// the renewal schedule after a rebuild).
    pub fn for_each_in(&self, partition: i32, mut each: impl FnMut(&GroupState)) {
        if let Some(part) = self.parts.lock().expect("newest lock").get(&partition) {
            part.values().for_each(&mut each);
        }
    }

    pub(super) fn put(&self, partition: i32, key: &str, state: Option<GroupState>) {
        let mut parts = self.parts.lock().expect("newest lock");
        let Some(part) = parts.get_mut(&partition) else {
            return;
        };
        match state {
            Some(s) => {
                part.insert(key.to_owned(), s);
            }
            None => {
                part.remove(key);
            }
        }
    }

    pub(super) fn assign(&self, partition: i32) {
        self.parts
            .lock()
            .expect("newest lock")
            .insert(partition, HashMap::new());
    }

    fn revoke(&self, partition: i32) {
        self.parts.lock().expect("newest lock").remove(&partition);
    }
}

/// Where the records a pipeline reads go.
#[derive(Clone)]
pub enum Sinks {
    /// The state keeper: the group states are its own.
    Keeper(Store<GroupState>),
    /// A mute target: its applied records (keys starting with `prefix`),
    /// and the keeper's group states as the newest state. Before a
    /// partition loads, its committed offset is read too: a fence
    /// `mutebridge rewind` left there goes to the tracker.
    Target {
        store: Store<AppliedState>,
        prefix: String,
        newest: Arc<Newest>,
        fences: Fences,
    },
}

/// Where a target's rewind fences are read (its consumer group's commits
/// on the event topic) and kept.
#[derive(Clone)]
pub struct Fences {
    pub event_topic: String,
    pub tracker: Arc<Mutex<Tracker>>,
}

enum Command {
    Assign(Vec<i32>),
    Revoke(Vec<i32>),
}

/// A pipeline's reader thread; dropping it stops the thread.
pub struct StateReader {
    commands: Mutex<mpsc::Sender<Command>>,
}

impl StateReader {
    /// Starts the thread reading `topic` into `sinks`; `group_id` is the
    /// pipeline's consumer group, whose commits it reads (never joins).
    pub fn start(
        kafka: &KafkaConfig,
        bootstrap: &str,
        topic: &str,
        sinks: Sinks,
        group_id: &str,
    ) -> anyhow::Result<StateReader> {
        let consumer: BaseConsumer = client_config(kafka, bootstrap)
            // librdkafka wants a group id even for manual assignment; it is
            // never joined and nothing is committed. (Not the pipeline's
            // own: a second client of that group slows its rebalances.)
            .set("group.id", "mutebridge-state-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .context(
                "cannot create the state topic reader (check the [kafka.client] properties)",
            )?;
        // A target's reader asks its pipeline group for committed offsets
        // (rewind fences); it is never assigned anything and never joins.
        let committed = match &sinks {
            Sinks::Keeper { .. } => None,
            Sinks::Target { .. } => Some(
                client_config(kafka, bootstrap)
                    .set("group.id", group_id)
                    .set("enable.auto.commit", "false")
                    .create::<BaseConsumer>()
                    .context(
                        "cannot create the state topic reader (check the [kafka.client] properties)",
                    )?,
            ),
        };
        let (tx, rx) = mpsc::channel();
        let mut thread = Thread {
            consumer,
            committed,
            topic: topic.to_owned(),
            sinks,
            rx,
            loading: HashMap::new(),
            waiting: Vec::new(),
            assigned: 0,
            batches: Vec::new(),
        };
        std::thread::Builder::new()
            .name("state-reader".into())
            .spawn(move || thread.run())
            .context("cannot start the state topic reader thread")?;
        Ok(StateReader {
            commands: Mutex::new(tx),
        })
    }

    /// Partitions were assigned: the sinks hold them (not loaded yet) and
    /// the thread reads them from the start. Called from the rebalance
    /// callback, before any event of them can arrive.
    pub fn assign(&self, sinks: &Sinks, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        match sinks {
            Sinks::Keeper(store) => store.assign(partitions),
            Sinks::Target { store, newest, .. } => {
                store.assign(partitions);
                for &p in partitions {
                    newest.assign(p);
                }
            }
        }
        self.send(Command::Assign(partitions.to_vec()));
    }

    /// Partitions were revoked: the sinks drop them (waiting for their
    /// writes in flight) and the thread stops reading them.
    pub fn revoke(&self, sinks: &Sinks, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        match sinks {
            Sinks::Keeper(store) => store.revoke(partitions),
            Sinks::Target { store, newest, .. } => {
                store.revoke(partitions);
                for &p in partitions {
                    newest.revoke(p);
                }
            }
        }
        self.send(Command::Revoke(partitions.to_vec()));
    }

    fn send(&self, command: Command) {
        let _ = self.commands.lock().expect("reader lock").send(command);
    }
}

/// A partition being read to its end.
struct Loading {
    /// The end to reach (the high watermark when it was assigned).
    end: i64,
}

/// The partitions of one assignment, read together: one rebuild.
struct Batch {
    left: Vec<i32>,
    started: Instant,
}

struct Thread {
    consumer: BaseConsumer,
    /// A client of a target pipeline's group, for its committed offsets.
    committed: Option<BaseConsumer>,
    topic: String,
    sinks: Sinks,
    rx: mpsc::Receiver<Command>,
    loading: HashMap<i32, Loading>,
    /// Assigned partitions whose end could not be read yet (Kafka down).
    waiting: Vec<i32>,
    /// Partitions assigned to the consumer.
    assigned: usize,
    /// Assignments not read to their end yet.
    batches: Vec<Batch>,
}

impl Thread {
    fn run(&mut self) {
        let mut retry_at = Instant::now();
        loop {
            let idle = self.assigned == 0 && self.waiting.is_empty();
            let command = if idle {
                self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                self.rx.try_recv().map_err(|e| match e {
                    mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                    mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                })
            };
            match command {
                Ok(Command::Assign(ps)) => {
                    self.batches.push(Batch {
                        left: ps.clone(),
                        started: Instant::now(),
                    });
                    self.waiting.extend(ps);
                    retry_at = Instant::now();
                }
                Ok(Command::Revoke(ps)) => self.close(&ps),
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if !self.waiting.is_empty() && Instant::now() >= retry_at && !self.start_waiting() {
                retry_at = Instant::now() + Duration::from_secs(1);
            }
            if self.assigned > 0 {
                self.poll();
            } else if !self.waiting.is_empty() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn close(&mut self, partitions: &[i32]) {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            self.waiting.retain(|w| *w != p);
            self.settle(p, false);
            if self.loading.remove(&p).is_some() || self.tailed(p) {
                tpl.add_partition(&self.topic, p);
            }
        }
        if tpl.count() > 0 && self.consumer.incremental_unassign(&tpl).is_ok() {
            self.assigned = self.assigned.saturating_sub(tpl.count());
        }
    }

    /// Whether `p` is assigned to the consumer and read as it grows.
    fn tailed(&self, p: i32) -> bool {
        self.consumer
            .assignment()
            .map(|a| a.find_partition(&self.topic, p).is_some())
            .unwrap_or(false)
    }

    /// Reads the ends of the waiting partitions and starts reading them;
    /// false when Kafka could not be asked (tried again later).
    fn start_waiting(&mut self) -> bool {
        let mut tpl = TopicPartitionList::new();
        let mut still = Vec::new();
        for p in std::mem::take(&mut self.waiting) {
            if let Err(e) = self.read_fence(p) {
                tracing::warn!(error = %format!("{e:#}"), partition = p, "cannot read the committed offset of an assigned partition; retrying (its events wait)");
                still.push(p);
                continue;
            }
            match self
                .consumer
                .fetch_watermarks(&self.topic, p, Duration::from_secs(5))
            {
                Ok((low, high)) => {
                    if high <= low {
                        self.finish(p);
                    } else {
                        self.loading.insert(p, Loading { end: high });
                    }
                    let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(low));
                }
                Err(e) => {
                    tracing::warn!(error = %e, partition = p, topic = %self.topic, "cannot read the end of a state topic partition; retrying (its events wait)");
                    still.push(p);
                }
            }
        }
        if tpl.count() > 0 {
            match self.consumer.incremental_assign(&tpl) {
                Ok(()) => self.assigned += tpl.count(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the state topic; retrying");
                    for e in tpl.elements() {
                        self.loading.remove(&e.partition());
                        still.push(e.partition());
                    }
                }
            }
        }
        let ok = still.is_empty();
        self.waiting = still;
        ok
    }

    /// A target's fence on event partition `p`, if `mutebridge rewind`
    /// left one in the committed offset.
    fn read_fence(&self, p: i32) -> anyhow::Result<()> {
        let (Sinks::Target { fences, .. }, Some(group)) = (&self.sinks, &self.committed) else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&fences.event_topic, p);
        let committed = group.committed_offsets(tpl, Duration::from_secs(5))?;
        let fence = committed
            .find_partition(&fences.event_topic, p)
            .and_then(|e| fence_of(e.metadata()));
        if let Some(until) = fence {
            tracing::info!(
                partition = p,
                until,
                "rewound: events below this offset are applied again"
            );
        }
        fences
            .tracker
            .lock()
            .expect("tracker lock")
            .set_fence(p, fence);
        Ok(())
    }

    fn poll(&mut self) {
        let message = match self.consumer.poll(Duration::from_millis(100)) {
            None => return,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "state topic reader");
                return;
            }
            Some(Ok(m)) => m,
        };
        let p = message.partition();
        let loading = self.loading.contains_key(&p);
        let writer = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == WRITER_HEADER)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        });
        if let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) {
            self.record(p, key, message.payload(), writer, loading);
        }
        let done = self
            .loading
            .get(&p)
            .is_some_and(|l| message.offset() + 1 >= l.end);
        if done {
            self.loading.remove(&p);
            self.finish(p);
        }
    }

    /// Partition `p` is read to the end it had when assigned.
    fn finish(&mut self, p: i32) {
        match &self.sinks {
            Sinks::Keeper(store) => store.loaded(p),
            Sinks::Target { store, .. } => store.loaded(p),
        }
        self.settle(p, true);
    }

    /// Partition `p` is read (or revoked): once every partition of its
    /// assignment is, that rebuild took what it took.
    fn settle(&mut self, p: i32, read: bool) {
        let Some(i) = self.batches.iter().position(|b| b.left.contains(&p)) else {
            return;
        };
        let batch = &mut self.batches[i];
        batch.left.retain(|q| *q != p);
        if !batch.left.is_empty() {
            return;
        }
        let took = self.batches.remove(i).started.elapsed();
        if read {
            match &self.sinks {
                Sinks::Keeper(store) => store.rebuilt(took),
                Sinks::Target { store, .. } => store.rebuilt(took),
            }
        }
    }

    /// One record of partition `p`, written by `writer`; `loading` while
    /// the rebuild runs.
    fn record(
        &self,
        p: i32,
        key: &str,
        payload: Option<&[u8]>,
        writer: Option<&str>,
        loading: bool,
    ) {
        let now = now_ms();
        match &self.sinks {
            Sinks::Keeper(store) => {
                if key.starts_with('@') {
                    return;
                }
                own(store, p, key, payload, writer, loading, now);
            }
            Sinks::Target {
                store,
                prefix,
                newest,
                ..
            } => {
                if key.starts_with(prefix.as_str()) {
                    own(store, p, key, payload, writer, loading, now);
                } else if !key.starts_with('@') {
                    newest.put(p, key, payload.and_then(decode::<GroupState>));
                }
            }
        }
    }
}

/// A record of the pipeline's own kind: taken while loading; afterwards a
/// tombstone deletes, this pipeline's own write coming back changes
/// nothing, and another writer's record is overwritten with this owner's.
fn own<R: Record>(
    store: &Store<R>,
    p: i32,
    key: &str,
    payload: Option<&[u8]>,
    writer: Option<&str>,
    loading: bool,
    now: i64,
) {
    match (payload, loading) {
        (None, true) => store.load(p, key, None, now),
        (None, false) => store.deleted(p, key),
        (Some(bytes), true) => match decode::<R>(bytes) {
            Some(r) => store.load(p, key, Some(r), now),
            None => tracing::warn!(
                partition = p,
                key,
                "a record in the state topic is not a {} record; ignored",
                R::SCHEMA
            ),
        },
        (Some(_), false) if store.is_own(writer) => {}
        (Some(_), false) => store.foreign(p, key),
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}
