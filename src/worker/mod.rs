//! The worker role, assembled: consume the event topic, run each event
//! through the policy, apply its actions, dead-letter what fails for good,
//! and commit what is finished.
//!
//! One coordinator task owns all scheduling state. Events are queued per
//! group (partition + key) and a group runs one event at a time, so a
//! group's actions happen in partition order; up to
//! `worker.max_in_flight_groups` groups run at once, so a group stuck in
//! retries holds up only itself. The commit position of a partition never
//! passes an unfinished event ([`crate::worker::offsets::Tracker`]).

pub mod deliver;
pub mod dlq;
pub mod offsets;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::config::{Config, WorkerConfig};
use crate::event::{Event, SCHEMA_V1};
use crate::kafka::{self, Cluster};
use crate::metrics::{Metrics, WorkerMetrics};
use crate::policy::{Planned, Policy};
use crate::worker::deliver::{Deliverer, Settled};
use crate::worker::dlq::{DeadLetter, DeadLetters, Reason, SourceRecord, DEAD_LETTER_SCHEMA};
use crate::worker::offsets::{Tracker, WorkerContext};

/// Consumer defaults a user may change through `[kafka.client]`.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    // A new consumer group starts with the oldest retained event, so events
    // published before the first worker started are applied too.
    ("auto.offset.reset", "earliest"),
    ("statistics.interval.ms", "5000"),
];

/// How often the worker's readiness probe checks Kafka.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// What happened to one event; the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Applied,
    Skipped,
    NoMatch,
    DeadLettered,
}

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Applied => "applied",
            EventOutcome::Skipped => "skipped",
            EventOutcome::NoMatch => "no_match",
            EventOutcome::DeadLettered => "dead_lettered",
        }
    }
}

/// Everything that handles one event, shared by the group tasks.
struct Engine {
    policy: Policy,
    deliverer: Deliverer,
    dlq: DeadLetters,
    metrics: WorkerMetrics,
    topic: String,
}

struct Job {
    partition: i32,
    offset: i64,
    generation: u64,
    key: Vec<u8>,
    payload: Option<Vec<u8>>,
}

type GroupKey = (i32, Vec<u8>);

struct Running {
    generation: u64,
    abort: AbortHandle,
}

struct Finished {
    group: GroupKey,
    offset: i64,
    generation: u64,
}

/// A subscribed, not yet running worker.
pub struct Worker {
    consumer: Arc<StreamConsumer<WorkerContext>>,
    tracker: Arc<Mutex<Tracker>>,
    engine: Arc<Engine>,
    config: WorkerConfig,
    ready: Arc<AtomicBool>,
}

impl Worker {
    /// Checks the policy, creates the dead-letter topic, and joins the
    /// consumer group.
    pub async fn start(
        config: &Config,
        cluster: &Cluster,
        metrics: &Metrics,
    ) -> anyhow::Result<Worker> {
        let policy = config.policy()?;
        if policy.is_empty() {
            tracing::warn!(
                "no [[policy.rules]]: events are consumed and committed without any action"
            );
        }
        let w = &config.worker;
        cluster
            .create_extra_topic(&config.kafka, &w.dlq_topic)
            .await
            .with_context(|| format!("cannot create the dead-letter topic {}", w.dlq_topic))?;
        let bootstrap = cluster.bootstrap_servers();
        let deliverer = Deliverer::new(w, &config.targets, &metrics.worker)?;
        metrics
            .worker
            .init_labels(config.targets.keys().map(String::as_str));
        let dlq = DeadLetters::new(&config.kafka, bootstrap, &w.dlq_topic)?;

        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let context = WorkerContext {
            tracker: tracker.clone(),
            topic: config.kafka.topic.clone(),
            lag: metrics.worker.consumer_lag.clone(),
        };
        let mut client = rdkafka::ClientConfig::new();
        for (key, value) in CONSUMER_DEFAULTS {
            client.set(*key, *value);
        }
        for (key, value) in kafka::client_config(&config.kafka, bootstrap).config_map() {
            client.set(key, value);
        }
        // Pinned: offsets move only when work is finished, never on a timer.
        client
            .set("group.id", &w.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: StreamConsumer<WorkerContext> = client
            .create_with_context(context)
            .context("cannot create the Kafka consumer (check the [kafka.client] properties)")?;
        consumer
            .subscribe(&[&config.kafka.topic])
            .with_context(|| format!("cannot subscribe to {}", config.kafka.topic))?;
        Ok(Worker {
            consumer: Arc::new(consumer),
            tracker,
            engine: Arc::new(Engine {
                policy,
                deliverer,
                dlq,
                metrics: metrics.worker.clone(),
                topic: config.kafka.topic.clone(),
            }),
            config: w.clone(),
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// True while the last Kafka metadata probe succeeded (for `/readyz` of
    /// a worker-only process).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Runs until `shutdown` completes, then lets running actions finish
    /// (up to `worker.shutdown_grace_seconds`) and commits what is done.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Worker {
            consumer,
            tracker,
            engine,
            config,
            ready,
        } = self;
        let topic = engine.topic.clone();
        let probe = tokio::spawn(probe(Arc::downgrade(&consumer), topic.clone(), ready));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let mut queues: HashMap<GroupKey, VecDeque<Job>> = HashMap::new();
        let mut running: HashMap<GroupKey, Running> = HashMap::new();
        let mut ready_groups: VecDeque<GroupKey> = VecDeque::new();
        let mut buffered = 0usize;
        let mut paused = false;
        let mut commit_tick =
            tokio::time::interval(Duration::from_millis(config.commit_interval_ms));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let m = engine.metrics.clone();
        tokio::pin!(shutdown);

        loop {
            // Work of partitions taken away by a rebalance is dropped; the
            // new owner starts from what was committed at the revoke.
            let revoked = tracker.lock().expect("tracker lock").take_revoked();
            for (partition, generation) in revoked {
                for (key, queue) in queues.iter_mut() {
                    if key.0 == partition {
                        let before = queue.len();
                        queue.retain(|j| j.generation != generation);
                        buffered -= before - queue.len();
                    }
                }
                running.retain(|key, r| {
                    let stale = key.0 == partition && r.generation == generation;
                    if stale {
                        r.abort.abort();
                        buffered -= 1;
                    }
                    !stale
                });
                ready_groups.retain(|k| queues.get(k).is_some_and(|q| !q.is_empty()));
                queues.retain(|k, q| !q.is_empty() || running.contains_key(k));
            }
            while running.len() < config.max_in_flight_groups {
                let Some(key) = ready_groups.pop_front() else {
                    break;
                };
                let Some(job) = queues.get_mut(&key).and_then(VecDeque::pop_front) else {
                    continue;
                };
                let generation = job.generation;
                let engine = engine.clone();
                let tx = done_tx.clone();
                let group = key.clone();
                let handle = tokio::spawn(async move {
                    engine.process(&job).await;
                    let _ = tx.send(Finished {
                        group,
                        offset: job.offset,
                        generation: job.generation,
                    });
                });
                running.insert(
                    key,
                    Running {
                        generation,
                        abort: handle.abort_handle(),
                    },
                );
            }
            m.groups_in_flight.set(running.len() as i64);
            m.buffered_events.set(buffered as i64);
            if !paused && buffered >= config.max_buffered_events {
                if let Ok(assignment) = consumer.assignment() {
                    if consumer.pause(&assignment).is_ok() {
                        paused = true;
                        tracing::info!(
                            buffered,
                            "backlog at worker.max_buffered_events; fetching paused"
                        );
                    }
                }
            } else if paused && buffered <= config.max_buffered_events / 2 {
                if let Ok(assignment) = consumer.assignment() {
                    if consumer.resume(&assignment).is_ok() {
                        paused = false;
                    }
                }
            }

            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(done) = done_rx.recv() => {
                    if running.get(&done.group).is_some_and(|r| r.generation == done.generation) {
                        running.remove(&done.group);
                        buffered -= 1;
                        tracker.lock().expect("tracker lock").finished(done.group.0, done.offset, done.generation);
                        if queues.get(&done.group).is_some_and(|q| !q.is_empty()) {
                            ready_groups.push_back(done.group);
                        } else {
                            queues.remove(&done.group);
                        }
                    }
                }
                _ = commit_tick.tick() => commit(&consumer, &tracker, &topic, CommitMode::Async),
                message = consumer.recv() => match message {
                    Ok(msg) => {
                        let partition = msg.partition();
                        let offset = msg.offset();
                        let generation = tracker.lock().expect("tracker lock").received(partition, offset);
                        let key: GroupKey = (partition, msg.key().unwrap_or_default().to_vec());
                        let job = Job {
                            partition,
                            offset,
                            generation,
                            key: key.1.clone(),
                            payload: msg.payload().map(<[u8]>::to_vec),
                        };
                        buffered += 1;
                        let known = running.contains_key(&key) || queues.contains_key(&key);
                        queues.entry(key.clone()).or_default().push_back(job);
                        if !known {
                            ready_groups.push_back(key);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }

        // Shutdown: nothing new starts; running events get the grace period.
        let grace = Duration::from_secs(config.shutdown_grace_seconds);
        tracing::info!(
            running = running.len(),
            ?grace,
            "worker stopping: finishing running events"
        );
        let deadline = tokio::time::Instant::now() + grace;
        while !running.is_empty() {
            tokio::select! {
                Some(done) = done_rx.recv() => {
                    if running.get(&done.group).is_some_and(|r| r.generation == done.generation) {
                        running.remove(&done.group);
                        tracker.lock().expect("tracker lock").finished(done.group.0, done.offset, done.generation);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(abandoned = running.len(), "grace period over; abandoning running events (they are re-delivered after restart)");
                    for r in running.values() {
                        r.abort.abort();
                    }
                    break;
                }
            }
        }
        probe.abort();
        let _ = probe.await;
        commit(&consumer, &tracker, &topic, CommitMode::Sync);
        engine.dlq.flush(Duration::from_secs(5));
        consumer.unsubscribe();
        // Closed here, while the cluster is still up: a consumer closed
        // later would wait out its session timeout trying to leave the group.
        drop(consumer);
        tracing::info!("worker stopped; finished offsets committed");
        Ok(())
    }
}

fn commit(
    consumer: &StreamConsumer<WorkerContext>,
    tracker: &Mutex<Tracker>,
    topic: &str,
    mode: CommitMode,
) {
    let tpl = tracker.lock().expect("tracker lock").to_commit(topic);
    if let Some(tpl) = tpl {
        if let Err(e) = consumer.commit(&tpl, mode) {
            tracing::warn!(error = %e, "offset commit failed; retried with the next commit");
        }
    }
}

async fn probe(
    consumer: std::sync::Weak<StreamConsumer<WorkerContext>>,
    topic: String,
    ready: Arc<AtomicBool>,
) {
    loop {
        let Some(c) = consumer.upgrade() else { return };
        let t = topic.clone();
        let ok = tokio::task::spawn_blocking(move || {
            kafka::partition_count(c.client(), &t, PROBE_INTERVAL).is_ok()
        })
        .await
        .unwrap_or(false);
        if ok != ready.swap(ok, Ordering::Relaxed) && !ok {
            tracing::warn!("worker: Kafka metadata is not reachable");
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Engine {
    /// Applies one event's actions; returns once each is done, moot,
    /// skipped, or written to the dead-letter topic.
    async fn process(&self, job: &Job) {
        let source = SourceRecord {
            topic: self.topic.clone(),
            partition: job.partition,
            offset: job.offset,
        };
        let event = match decode(job.payload.as_deref()) {
            Ok(e) => e,
            Err(why) => {
                tracing::error!(partition = job.partition, offset = job.offset, %why, "undecodable record; dead-lettered");
                self.dead_letter(
                    &job.key,
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
                        payload: job
                            .payload
                            .as_deref()
                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                    },
                )
                .await;
                self.finish(EventOutcome::DeadLettered);
                return;
            }
        };
        let planned = self.policy.decide(&event);
        if planned.is_empty() {
            self.finish(EventOutcome::NoMatch);
            return;
        }
        let (mut ok, mut dead) = (false, false);
        for p in planned {
            match p {
                Planned::Skip {
                    rule,
                    target,
                    action,
                    why,
                } => {
                    tracing::debug!(%rule, %target, %why, event = %event.id, "skipped by policy");
                    self.count(&target, action, "skipped");
                }
                Planned::Unmapped {
                    rule,
                    target,
                    action,
                    why,
                } => {
                    dead = true;
                    self.count(&target, action, "dead_lettered");
                    self.dead_letter(
                        &job.key,
                        DeadLetter {
                            schema: DEAD_LETTER_SCHEMA,
                            reason: Reason::Unmapped,
                            error: why,
                            target: Some(target.to_string()),
                            rule: Some(rule.to_string()),
                            action: Some(action),
                            users: Vec::new(),
                            attempts: 0,
                            source: source.clone(),
                            failed_at_ms: now_ms(),
                            event: Some(event.clone()),
                            payload: None,
                        },
                    )
                    .await;
                }
                Planned::Act(action) => {
                    let (rule, target, name) =
                        (action.rule.clone(), action.target.clone(), action.op.name());
                    for settled in self.deliverer.apply(action, &event).await {
                        match settled {
                            Settled::Done => {
                                ok = true;
                                self.count(&target, name, "ok");
                            }
                            Settled::Moot(why) => {
                                tracing::debug!(%rule, %target, why, event = %event.id, "nothing to do");
                                self.count(&target, name, "skipped");
                            }
                            Settled::Failed(f) => {
                                dead = true;
                                tracing::warn!(%rule, %target, reason = f.reason.as_str(), error = %f.error, event = %event.id, "action failed; dead-lettered");
                                self.count(&target, name, "dead_lettered");
                                self.dead_letter(
                                    &job.key,
                                    DeadLetter {
                                        schema: DEAD_LETTER_SCHEMA,
                                        reason: f.reason,
                                        error: f.error,
                                        target: Some(target.to_string()),
                                        rule: Some(rule.to_string()),
                                        action: Some(name),
                                        users: f.users,
                                        attempts: f.attempts,
                                        source: source.clone(),
                                        failed_at_ms: now_ms(),
                                        event: Some(event.clone()),
                                        payload: None,
                                    },
                                )
                                .await;
                            }
                        }
                    }
                }
            }
        }
        self.finish(if dead {
            EventOutcome::DeadLettered
        } else if ok {
            EventOutcome::Applied
        } else {
            EventOutcome::Skipped
        });
    }

    fn count(&self, target: &str, action: &str, outcome: &str) {
        self.metrics
            .actions
            .with_label_values(&[target, action, outcome])
            .inc();
    }

    fn finish(&self, outcome: EventOutcome) {
        self.metrics
            .events
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    async fn dead_letter(&self, key: &[u8], letter: DeadLetter) {
        self.metrics
            .dead_letters
            .with_label_values(&[
                letter.target.as_deref().unwrap_or("none"),
                letter.reason.as_str(),
            ])
            .inc();
        self.dlq.write(key, &letter).await;
    }
}

fn decode(payload: Option<&[u8]>) -> Result<Event, String> {
    let payload = payload.ok_or("the record has no value")?;
    let event: Event =
        serde_json::from_slice(payload).map_err(|e| format!("not a {SCHEMA_V1} event: {e}"))?;
    if event.schema != SCHEMA_V1 {
        return Err(format!("schema {:?} is not {SCHEMA_V1}", event.schema));
    }
    Ok(event)
}
