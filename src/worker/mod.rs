//! The worker role: consume the event topic, run each event through the
//! policy, apply its actions, dead-letter what fails for good, and commit
//! what is finished.
//!
//! Read it in the order a record travels: [`offsets`] (the consumer group
//! and the commit position, which never passes an unfinished event) ->
//! [`scheduler`] (per-group queues: one event per group at a time) ->
//! [`engine`] (decode -> guard -> decide -> deliver -> dead-letter ->
//! record the state) -> [`deliver`] (rate limit, send, retry) -> [`dlq`];
//! [`store`] keeps the groups' mute states in the state topic. [`outcome`]
//! names the results.
//!
//! [`Worker::run`] is one coordinator task that owns all scheduling state,
//! in two phases: consuming until shutdown, then draining what runs.

pub mod deliver;
pub mod dlq;
pub mod engine;
pub mod offsets;
pub mod outcome;
pub mod scheduler;
pub mod store;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::config::{Config, WorkerConfig};
use crate::kafka::{self, scan::Reader, Cluster};
use crate::limit::Shares;
use crate::metrics::{Metrics, WorkerMetrics};
use deliver::Deliverer;
use dlq::DeadLetters;
use engine::Engine;
use offsets::{Tracker, WorkerContext};
use scheduler::{Flow, GroupKey, Job, ReplayScope, Scheduler};
use store::Store;

/// A group task's report on its event.
struct Finished {
    group: GroupKey,
    offset: i64,
    generation: u64,
    stage: Stage,
}

/// How far a group task got.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Finished, and committable.
    Done,
    /// Finished: the group's next event may start. Its mute state is still
    /// on its way to Kafka, so its offset waits for [`Stage::Durable`].
    Released,
    /// The state record of a released event is acknowledged (`true`), or
    /// abandoned because the partition was revoked (`false`).
    Durable(bool),
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
    /// Checks the policy, creates the dead-letter and state topics, and
    /// joins the consumer group.
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
        let partitions = event_partitions(config, cluster).await?;
        let deliverer = Deliverer::new(w, &config.targets, &metrics.worker)?;
        // Every limiter starts at a zero share: nothing is assigned yet.
        let shares = Arc::new(Shares::new(deliverer.limiters(), partitions));
        metrics
            .worker
            .init_labels(config.targets.keys().map(String::as_str));
        let dlq = DeadLetters::new(&config.kafka, bootstrap, &w.dlq_topic)?;
        let state = if w.track_state {
            Some(open_state(config, cluster, metrics, partitions).await?)
        } else {
            None
        };

        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let context = WorkerContext {
            tracker: tracker.clone(),
            topic: config.kafka.topic.clone(),
            lag: metrics.worker.consumer_lag.clone(),
            state: state.clone(),
            shares,
        };
        let consumer: StreamConsumer<WorkerContext> =
            kafka::consumer_config(&config.kafka, bootstrap, &w.group_id)
                .create_with_context(context)
                .context(
                    "cannot create the Kafka consumer (check the [kafka.client] properties)",
                )?;
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
                state,
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
        let probe = {
            let consumer = Arc::downgrade(&self.consumer);
            let topic = self.engine.topic.clone();
            tokio::spawn(crate::ops::probe_kafka(
                "worker",
                self.ready.clone(),
                None,
                move |timeout| {
                    let c = consumer.upgrade()?;
                    Some(kafka::partition_count(c.client(), &topic, timeout).is_ok())
                },
            ))
        };
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Finished>();
        let mut run = Run {
            worker: &self,
            scheduler: Scheduler::new(
                self.config.max_in_flight_groups,
                self.config.max_buffered_events,
            ),
            done_tx,
            done_rx,
            metrics: self.engine.metrics.clone(),
            unconfirmed: 0,
        };
        run.consume(shutdown).await;
        run.drain().await;
        drop(run);
        probe.abort();
        let _ = probe.await;
        self.commit(CommitMode::Sync);
        self.engine.dlq.flush(Duration::from_secs(5));
        self.consumer.unsubscribe();
        // Closed here, while the cluster is still up: a consumer closed
        // later would wait out its session timeout trying to leave the group.
        drop(self);
        tracing::info!("worker stopped; finished offsets committed");
        Ok(())
    }

    /// Commits the positions that moved since the last commit.
    fn commit(&self, mode: CommitMode) {
        let tpl = self
            .tracker
            .lock()
            .expect("tracker lock")
            .take_commits(&self.engine.topic);
        if let Some(tpl) = tpl {
            if let Err(e) = self.consumer.commit(&tpl, mode) {
                tracing::warn!(error = %e, "offset commit failed; retried with the next commit");
            }
        }
    }
}

/// The event topic's partition count (the whole that rate-limit shares
/// are parts of).
async fn event_partitions(config: &Config, cluster: &Cluster) -> anyhow::Result<usize> {
    let count = partition_count(config, cluster, &config.kafka.topic).await;
    let hint = "create it, or let mutebridge create it (kafka.create_topics = true)";
    match count {
        Ok(0) => anyhow::bail!(
            "the event topic {} (kafka.topic) has no partitions yet: {hint}",
            config.kafka.topic
        ),
        Ok(n) => Ok(n),
        Err(e) => Err(e.context(format!(
            "the event topic {} (kafka.topic) cannot be read, so the workers' rate-limit shares cannot be set: {hint}",
            config.kafka.topic
        ))),
    }
}

/// How many partitions `topic` has (a metadata request, off the runtime:
/// librdkafka's metadata call blocks).
async fn partition_count(config: &Config, cluster: &Cluster, topic: &str) -> anyhow::Result<usize> {
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let (kafka_cfg, topic) = (config.kafka.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        Reader::new(&kafka_cfg, &bootstrap)?.partition_count(&topic)
    })
    .await?
}

/// Creates the state topic and checks that it is partitioned like the
/// event topic (a group's state lives in its events' partition number).
async fn open_state(
    config: &Config,
    cluster: &Cluster,
    metrics: &Metrics,
    events: usize,
) -> anyhow::Result<Store> {
    let (kafka, w) = (&config.kafka, &config.worker);
    cluster
        .create_compacted_topic(kafka, &w.state_topic)
        .await
        .with_context(|| format!("cannot create the state topic {}", w.state_topic))?;
    let states = partition_count(config, cluster, &w.state_topic).await.with_context(|| {
        format!(
            "the state topic {} (worker.state_topic) cannot be read: create it with cleanup.policy=compact and {events} partitions, or let mutebridge create it (kafka.create_topics = true), or set worker.track_state = false",
            w.state_topic
        )
    })?;
    if events != states {
        anyhow::bail!(
            "the state topic {} has {states} partitions and the event topic {} has {events}: they must match, because a group's state is kept in its events' partition number. Recreate {} with {events} partitions (its contents are rebuilt from new events), or set worker.state_topic to a new topic",
            w.state_topic,
            kafka.topic,
            w.state_topic
        );
    }
    Store::new(
        kafka,
        cluster.bootstrap_servers(),
        &w.state_topic,
        w.state_horizon_days,
        &metrics.worker,
    )
}

/// The coordinator's state while it runs.
struct Run<'w> {
    worker: &'w Worker,
    scheduler: Scheduler<AbortHandle>,
    done_tx: mpsc::UnboundedSender<Finished>,
    done_rx: mpsc::UnboundedReceiver<Finished>,
    metrics: WorkerMetrics,
    /// Released events whose state record is not acknowledged yet.
    unconfirmed: usize,
}

impl Run<'_> {
    /// Phase one: receive, schedule, record finished work and commit on a
    /// timer, until `shutdown` completes.
    async fn consume(&mut self, shutdown: impl Future<Output = ()>) {
        let w = self.worker;
        let mut commit_tick =
            tokio::time::interval(Duration::from_millis(w.config.commit_interval_ms));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            // Work of partitions taken away by a rebalance is dropped; the
            // new owner starts from what was committed at the revoke.
            let revoked = w.tracker.lock().expect("tracker lock").take_revoked();
            for (partition, generation) in revoked {
                self.scheduler.revoke(partition, generation);
            }
            self.start_ready();
            self.flow_control();
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                Some(done) = self.done_rx.recv() => self.finished(done),
                _ = commit_tick.tick() => w.commit(CommitMode::Async),
                message = w.consumer.recv() => match message {
                    Ok(msg) => self.received(&msg),
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    /// Phase two: nothing new starts; running events get the grace period,
    /// then are abandoned (they are re-delivered after a restart).
    async fn drain(&mut self) {
        let grace = Duration::from_secs(self.worker.config.shutdown_grace_seconds);
        tracing::info!(
            running = self.scheduler.running(),
            ?grace,
            "worker stopping: finishing running events"
        );
        let deadline = tokio::time::Instant::now() + grace;
        while self.scheduler.running() > 0 || self.unconfirmed > 0 {
            tokio::select! {
                Some(done) = self.done_rx.recv() => self.finished(done),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(abandoned = self.scheduler.running(), "grace period over; abandoning running events (they are re-delivered after restart)");
                    self.scheduler.abort_running();
                    break;
                }
            }
        }
    }

    fn received(&mut self, msg: &BorrowedMessage<'_>) {
        let (partition, offset) = (msg.partition(), msg.offset());
        let generation = self
            .worker
            .tracker
            .lock()
            .expect("tracker lock")
            .received(partition, offset);
        self.scheduler.push(Job {
            partition,
            offset,
            generation,
            key: msg.key().unwrap_or_default().to_vec(),
            payload: msg.payload().map(<[u8]>::to_vec),
            replay: replay_scope(msg),
        });
    }

    fn finished(&mut self, done: Finished) {
        let committable = match done.stage {
            Stage::Done => self.scheduler.finished(&done.group, done.generation),
            Stage::Released => {
                self.unconfirmed += 1;
                self.scheduler.finished(&done.group, done.generation);
                false
            }
            Stage::Durable(written) => {
                self.unconfirmed -= 1;
                // The tracker ignores an offset of an older assignment.
                written
            }
        };
        if committable {
            self.worker.tracker.lock().expect("tracker lock").finished(
                done.group.0,
                done.offset,
                done.generation,
            );
        }
    }

    /// Starts what may start, each event on a task of its own.
    fn start_ready(&mut self) {
        let engine = &self.worker.engine;
        let done_tx = &self.done_tx;
        self.scheduler.start_ready(|job| {
            let engine = engine.clone();
            let tx = done_tx.clone();
            tokio::spawn(async move {
                let staged = engine.process(&job).await;
                let report = |stage| Finished {
                    group: (job.partition, job.key.clone()),
                    offset: job.offset,
                    generation: job.generation,
                    stage,
                };
                let Some(staged) = staged else {
                    let _ = tx.send(report(Stage::Done));
                    return;
                };
                let _ = tx.send(report(Stage::Released));
                let written = match &engine.state {
                    Some(store) => store.confirm(staged).await.is_ok(),
                    None => false,
                };
                let _ = tx.send(report(Stage::Durable(written)));
            })
            .abort_handle()
        });
        self.metrics
            .groups_in_flight
            .set(self.scheduler.running() as i64);
        self.metrics
            .buffered_events
            .set(self.scheduler.buffered() as i64);
    }

    /// Pauses fetching at `worker.max_buffered_events`, resumes at half.
    fn flow_control(&mut self) {
        let Some(flow) = self.scheduler.flow() else {
            return;
        };
        let consumer = &self.worker.consumer;
        let Ok(assignment) = consumer.assignment() else {
            return;
        };
        match flow {
            Flow::Pause => {
                if consumer.pause(&assignment).is_ok() {
                    self.scheduler.set_paused(true);
                    tracing::info!(
                        buffered = self.scheduler.buffered(),
                        "backlog at worker.max_buffered_events; fetching paused"
                    );
                }
            }
            Flow::Resume => {
                if consumer.resume(&assignment).is_ok() {
                    self.scheduler.set_paused(false);
                }
            }
        }
    }
}

/// The scope of a record `dlq replay` published; `None` for any other.
fn replay_scope(msg: &BorrowedMessage<'_>) -> Option<ReplayScope> {
    use crate::event::{HEADER_REPLAY_OF, HEADER_REPLAY_RULE, HEADER_REPLAY_TARGET};
    let headers = msg.headers()?;
    let mut scope: Option<ReplayScope> = None;
    for h in headers.iter() {
        let value = || h.value.map(|v| String::from_utf8_lossy(v).into_owned());
        match h.key {
            HEADER_REPLAY_OF => {
                scope.get_or_insert_with(Default::default);
            }
            HEADER_REPLAY_TARGET => scope.get_or_insert_with(Default::default).target = value(),
            HEADER_REPLAY_RULE => scope.get_or_insert_with(Default::default).rule = value(),
            _ => {}
        }
    }
    scope
}
