//! One consumer group of the worker and the coordinator task that drives
//! it: the state keeper (`worker.group_id`) or one target
//! (`{worker.group_id}.{target}`).
//!
//! The coordinator owns all scheduling state: it receives records, queues
//! them per group, starts what may start, records what finished, commits
//! on a timer, pauses fetching (a full backlog; the target's circuit
//! breaker not closed, once `probe_candidates` groups are held) and queues
//! renewals of capped mutes as they come due. It runs in two phases:
//! consuming until shutdown, then draining what runs.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::breaker::Circuit;
use super::engine::{Processed, TargetEngine};
use super::keeper::Keeper;
use super::lease::Lease;
use super::metrics::PipelineMetrics;
use super::offsets::Tracker;
use super::rebalance::WorkerContext;
use super::scheduler::{Flow, GroupKey, Job, Scheduler, Work};
use crate::event::ReplayScope;
use crate::time::now_ms;
use crate::worker::config::WorkerConfig;

/// Records taken from the consumer in one pass of the coordinator, at most.
const BATCH: usize = 256;

/// What a pipeline does with its jobs.
pub enum Stage {
    Keeper(Arc<Keeper>),
    Target(Arc<TargetEngine>),
}

/// What `/targets` and `mutebridge targets` show of a pipeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub pipeline: String,
    pub group_id: String,
    /// Targets only.
    pub circuit: Option<Circuit>,
    pub paused: bool,
    /// Age of the oldest unfinished event, in seconds.
    pub lag_seconds: f64,
    /// Events consumed and not finished.
    pub buffered: usize,
    pub running: usize,
    /// Events in the assigned partitions not consumed yet.
    pub backlog: i64,
    pub partitions: Vec<i32>,
}

/// A subscribed pipeline, ready to run.
pub struct Pipeline {
    pub name: String,
    pub group_id: String,
    pub consumer: Arc<StreamConsumer<WorkerContext>>,
    pub tracker: Arc<Mutex<Tracker>>,
    pub paused: Arc<AtomicBool>,
    pub backlog: Arc<AtomicI64>,
    pub stage: Stage,
    /// Partitions whose records are read, from the pipeline's store.
    pub loaded: mpsc::UnboundedReceiver<i32>,
    /// Whether this process still holds its partitions after a stall.
    pub lease: Lease,
    pub config: WorkerConfig,
    pub metrics: PipelineMetrics,
    pub topic: String,
    pub status: Arc<Mutex<Status>>,
}

/// A group task's report on its job.
struct Finished {
    group: GroupKey,
    offset: Option<i64>,
    generation: u64,
    stage: Progress,
    /// An applied record whose next lapse changed (targets).
    lapse: Option<(String, Option<i64>)>,
}

/// A record on its way to Kafka; true once acknowledged, false when
/// abandoned (the partition was revoked).
type Confirm = Pin<Box<dyn Future<Output = bool> + Send>>;

/// How far a group task got.
enum Progress {
    /// Finished, and committable.
    Done,
    /// Finished: the group's next job may start. Its record is still on
    /// its way to Kafka, so its offset waits for the confirmation.
    Released(Confirm),
}

/// A released job's record, acknowledged (`true`) or abandoned.
struct Durable {
    group: GroupKey,
    offset: Option<i64>,
    generation: u64,
    written: bool,
}

/// A running job: its task, or nothing when it finished on its first poll.
pub struct Handle(Option<AbortHandle>);

impl super::scheduler::Abort for Handle {
    fn abort(&self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// Capped mutes waiting for their renewal, by when it is due.
#[derive(Default)]
struct Renewals {
    due: BTreeSet<(i64, String)>,
    by_key: HashMap<String, (i64, GroupKey)>,
}

impl Renewals {
    fn set(&mut self, key: String, group: GroupKey, due: Option<i64>) {
        if let Some((old, _)) = self.by_key.remove(&key) {
            self.due.remove(&(old, key.clone()));
        }
        if let Some(t) = due {
            self.due.insert((t, key.clone()));
            self.by_key.insert(key, (t, group));
        }
    }

    /// The renewals due by `now`, taken out of the schedule.
    fn take_due(&mut self, now: i64) -> Vec<(String, GroupKey)> {
        let mut out = Vec::new();
        while let Some((t, key)) = self.due.first().cloned() {
            if t > now {
                break;
            }
            self.due.pop_first();
            if let Some((_, group)) = self.by_key.remove(&key) {
                out.push((key, group));
            }
        }
        out
    }

    fn revoke(&mut self, partition: i32) {
        let gone: Vec<String> = self
            .by_key
            .iter()
            .filter(|(_, (_, g))| g.0 == partition)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.set(k, (partition, Vec::new()), None);
        }
    }
}

/// The coordinator's state while it runs.
struct Run<'p> {
    p: &'p Pipeline,
    scheduler: Scheduler<Handle>,
    done_tx: mpsc::UnboundedSender<Finished>,
    done_rx: mpsc::UnboundedReceiver<Finished>,
    /// Released jobs' records on their way to Kafka.
    confirms: FuturesUnordered<Pin<Box<dyn Future<Output = Durable> + Send>>>,
    /// Paused for a full backlog; the target's circuit breaker not closed,
    /// with calls waiting on it (fetching stops at `probe_candidates`
    /// groups held).
    flow_paused: bool,
    breaker_blocked: bool,
    paused_since: Option<i64>,
    renewals: Renewals,
    membership: Membership,
}

/// Confirming, after a stall, that the pipeline still holds its partitions.
#[derive(Default)]
struct Membership {
    /// The synchronous commit asking the coordinator, with the stall it is for.
    asking: Option<(
        u64,
        tokio::task::JoinHandle<rdkafka::error::KafkaResult<()>>,
    )>,
    /// Since when there was nothing to commit (then only time tells).
    idle_since: Option<tokio::time::Instant>,
}

/// With nothing to commit after a stall, a member that was expelled hears
/// of it within a heartbeat or two (the rebalance callback then revokes
/// what it lost): after this long without that, it is still a member.
const MEMBERSHIP_SETTLE: Duration = Duration::from_secs(10);

impl Pipeline {
    /// Runs until `shutdown` completes, then lets running work finish (up
    /// to `worker.shutdown_grace_seconds`) and commits what is done.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let loaded = std::mem::replace(&mut self.loaded, mpsc::unbounded_channel().1);
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Finished>();
        let mut run = Run {
            p: &self,
            scheduler: Scheduler::new(
                self.config.max_in_flight_groups,
                self.config.max_buffered_events,
            ),
            done_tx,
            done_rx,
            confirms: FuturesUnordered::new(),
            flow_paused: false,
            breaker_blocked: false,
            paused_since: None,
            renewals: Renewals::default(),
            membership: Membership::default(),
        };
        run.consume(shutdown, loaded).await;
        run.drain().await;
        drop(run);
        self.commit(CommitMode::Sync);
        self.consumer.unsubscribe();
        tracing::info!(pipeline = %self.name, "pipeline stopped; finished offsets committed");
    }

    /// Commits the positions that moved since the last commit.
    fn commit(&self, mode: CommitMode) {
        let tpl = self
            .tracker
            .lock()
            .expect("tracker lock")
            .take_commits(&self.topic);
        let Some(tpl) = tpl else { return };
        let result = self.consumer.commit(&tpl, mode);
        // An async commit's answer comes through the context's callback.
        if matches!(mode, CommitMode::Sync) || result.is_err() {
            super::rebalance::answered(
                &self.tracker,
                &self.topic,
                &self.name,
                &self.metrics.commit_failures,
                result,
                &tpl,
            );
        }
    }

    /// Whether the target's breaker blocks (open, calls waiting on it).
    fn blocked(&self) -> Option<watch::Receiver<bool>> {
        match &self.stage {
            Stage::Target(t) => Some(t.deliverer.breaker.subscribe()),
            Stage::Keeper(_) => None,
        }
    }

    fn is_loaded(&self, partition: i32) -> bool {
        match &self.stage {
            Stage::Keeper(k) => k.state.as_ref().is_none_or(|s| s.is_loaded(partition)),
            Stage::Target(t) => t
                .state
                .as_ref()
                .is_none_or(|s| s.store.is_loaded(partition)),
        }
    }
}

impl Run<'_> {
    /// Phase one: receive, schedule, record finished work, commit and
    /// renew on timers, until `shutdown` completes.
    async fn consume(
        &mut self,
        shutdown: impl Future<Output = ()>,
        mut loaded: mpsc::UnboundedReceiver<i32>,
    ) {
        let p = self.p;
        let mut commit_tick =
            tokio::time::interval(Duration::from_millis(p.config.commit_interval_ms));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew_tick = tokio::time::interval(Duration::from_secs(1));
        renew_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lease_tick = tokio::time::interval(Duration::from_millis(250));
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut blocked = p.blocked();
        tokio::pin!(shutdown);
        loop {
            self.take_revoked();
            self.start_ready();
            self.flow_control();
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                Some(done) = self.done_rx.recv() => {
                    self.finished(done);
                    // What else is done, before scheduling again.
                    while let Ok(done) = self.done_rx.try_recv() {
                        self.finished(done);
                    }
                }
                Some(durable) = self.confirms.next() => self.durable(durable),
                Some(partition) = loaded.recv() => self.partition_loaded(partition),
                Ok(()) = changed(&mut blocked) => {
                    let now = blocked.as_ref().is_some_and(|b| *b.borrow());
                    self.breaker_changed(now);
                }
                _ = commit_tick.tick() => {
                    p.commit(CommitMode::Async);
                    self.report();
                }
                _ = renew_tick.tick() => self.queue_renewals(),
                _ = lease_tick.tick() => self.confirm_membership(),
                message = p.consumer.recv() => match message {
                    Ok(msg) => {
                        self.received(&msg);
                        // A fetch brings many records: take what is there
                        // already before scheduling again (one pass of this
                        // loop per record costs more than the record).
                        for _ in 0..BATCH {
                            if self.scheduler.flow() == Some(Flow::Pause) || self.held_back() {
                                break;
                            }
                            match p.consumer.recv().now_or_never() {
                                Some(Ok(msg)) => self.received(&msg),
                                _ => break,
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(pipeline = %p.name, error = %e, "Kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    /// After a stall (see [`super::lease`]): asks the group coordinator,
    /// with a synchronous commit of the current positions, whether this
    /// pipeline is still a member; the coordinator refuses it from a member
    /// it expelled, whose rebalance callback then revokes what it lost.
    fn confirm_membership(&mut self) {
        let p = self.p;
        let Some(epoch) = p.lease.pending() else {
            self.membership = Membership::default();
            return;
        };
        match self.membership.asking.take() {
            Some((asked, handle)) if handle.is_finished() => {
                let answer = handle
                    .now_or_never()
                    .and_then(Result::ok)
                    .unwrap_or(Err(rdkafka::error::KafkaError::Canceled));
                match answer {
                    Ok(()) => {
                        tracing::info!(pipeline = %p.name, "after the stall the group coordinator accepted this worker's commit: its partitions are still its own; calls go on");
                        p.lease.confirm(asked);
                    }
                    Err(e) => {
                        tracing::warn!(pipeline = %p.name, error = %e, "after the stall the group coordinator refused this worker's commit: calls wait until the group settles (what was lost is revoked)");
                    }
                }
                return;
            }
            Some(running) => {
                self.membership.asking = Some(running);
                return;
            }
            None => {}
        }
        let positions = p.tracker.lock().expect("tracker lock").positions(&p.topic);
        if positions.count() == 0 {
            let since = *self
                .membership
                .idle_since
                .get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= MEMBERSHIP_SETTLE {
                tracing::info!(pipeline = %p.name, "after the stall no rebalance took anything away: calls go on");
                p.lease.confirm(epoch);
            }
            return;
        }
        let consumer = p.consumer.clone();
        let handle =
            tokio::task::spawn_blocking(move || consumer.commit(&positions, CommitMode::Sync));
        self.membership.asking = Some((epoch, handle));
    }

    /// Phase two: nothing new starts; running jobs get the grace period,
    /// then are abandoned (their events are re-delivered after a restart).
    async fn drain(&mut self) {
        let grace = Duration::from_secs(self.p.config.shutdown_grace_seconds);
        tracing::info!(pipeline = %self.p.name, running = self.scheduler.running(), ?grace, "stopping: finishing running events");
        let deadline = tokio::time::Instant::now() + grace;
        while self.scheduler.running() > 0 || !self.confirms.is_empty() {
            tokio::select! {
                Some(done) = self.done_rx.recv() => self.finished(done),
                Some(durable) = self.confirms.next() => self.durable(durable),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(pipeline = %self.p.name, abandoned = self.scheduler.running(), "grace period over; abandoning running events (they are re-delivered after restart)");
                    self.scheduler.abort_running();
                    break;
                }
            }
        }
    }

    /// Work of partitions taken away by a rebalance is dropped; the new
    /// owner starts from what was committed at the revoke.
    fn take_revoked(&mut self) {
        let revoked = self.p.tracker.lock().expect("tracker lock").take_revoked();
        for (partition, generation) in revoked {
            self.scheduler.revoke(partition, generation);
            self.renewals.revoke(partition);
        }
    }

    fn received(&mut self, msg: &BorrowedMessage<'_>) {
        // A revoke in the same poll as this record: drop its work first.
        self.take_revoked();
        let (partition, offset) = (msg.partition(), msg.offset());
        let written = msg.timestamp().to_millis().unwrap_or_else(now_ms);
        let generation = self
            .p
            .tracker
            .lock()
            .expect("tracker lock")
            .received(partition, offset, written);
        let replay = replay_scope(msg);
        self.scheduler.push(Job {
            partition,
            generation,
            key: msg.key().unwrap_or_default().to_vec(),
            work: Work::Record {
                offset,
                payload: msg.payload().map(<[u8]>::to_vec),
                replay,
            },
        });
    }

    fn finished(&mut self, done: Finished) {
        if let Some((key, lapse)) = done.lapse {
            let due = lapse.map(|t| t - self.renew_ahead_ms());
            self.renewals.set(key, done.group.clone(), due);
        }
        let Finished {
            group,
            offset,
            generation,
            stage,
            ..
        } = done;
        match stage {
            Progress::Done => {
                if self.scheduler.finished(&group, generation) {
                    self.commit_ready(group.0, offset, generation);
                }
            }
            Progress::Released(confirm) => {
                self.scheduler.finished(&group, generation);
                self.confirms.push(Box::pin(async move {
                    let written = confirm.await;
                    Durable {
                        group,
                        offset,
                        generation,
                        written,
                    }
                }));
            }
        }
    }

    /// A released job's record is in Kafka (or abandoned).
    fn durable(&mut self, d: Durable) {
        if d.written {
            // The tracker ignores an offset of an older assignment.
            self.commit_ready(d.group.0, d.offset, d.generation);
        }
    }

    fn commit_ready(&self, partition: i32, offset: Option<i64>, generation: u64) {
        if let Some(offset) = offset {
            self.p
                .tracker
                .lock()
                .expect("tracker lock")
                .finished(partition, offset, generation);
        }
    }

    /// A partition's records are read: its groups may run, and its capped
    /// mutes are scheduled for renewal.
    fn partition_loaded(&mut self, partition: i32) {
        self.scheduler.unpark(partition);
        let Stage::Target(t) = &self.p.stage else {
            return;
        };
        let ahead = t.renew_ahead_ms;
        for (key, group_id, lapse) in t.renewal_schedule(partition) {
            let group = (partition, group_id.into_bytes());
            self.renewals.set(key, group, Some(lapse - ahead));
        }
    }

    fn renew_ahead_ms(&self) -> i64 {
        match &self.p.stage {
            Stage::Target(t) => t.renew_ahead_ms,
            Stage::Keeper(_) => 0,
        }
    }

    /// Queues the renewals that are due, each behind its group's events.
    fn queue_renewals(&mut self) {
        for (key, (partition, group)) in self.renewals.take_due(now_ms()) {
            self.scheduler.push(Job {
                partition,
                generation: 0,
                key: group,
                work: Work::Renew(key),
            });
        }
    }

    /// Starts what may start, each job on a task of its own.
    fn start_ready(&mut self) {
        let p = self.p;
        let done_tx = &self.done_tx;
        self.scheduler.start_ready(
            |partition| p.is_loaded(partition),
            |mut job| match &p.stage {
                Stage::Keeper(k) => spawn_keeper(k.clone(), job, done_tx.clone()),
                Stage::Target(t) => {
                    // Re-applied after a rewind (its fence is read with the
                    // partition's records): judged as a replay of every rule.
                    if let Work::Record { offset, replay, .. } = &mut job.work {
                        if replay.is_none()
                            && p.tracker
                                .lock()
                                .expect("tracker lock")
                                .reapply(job.partition, *offset)
                        {
                            *replay = Some(ReplayScope::default());
                        }
                    }
                    spawn_target(t.clone(), job, done_tx.clone())
                }
            },
        );
        p.metrics.in_flight.set(self.scheduler.running() as i64);
        p.metrics.buffered.set(self.scheduler.buffered() as i64);
    }

    /// The target's breaker became blocked (not closed, calls waiting on
    /// it) or stopped being so.
    fn breaker_changed(&mut self, blocked: bool) {
        if blocked == self.breaker_blocked {
            return;
        }
        self.breaker_blocked = blocked;
        let p = self.p;
        let candidates = p.config.circuit_breaker.probe_candidates;
        if blocked {
            tracing::warn!(pipeline = %p.name, candidates, "circuit breaker not closed: the target holds the events of at most {candidates} groups (the calls probes and the recovery are chosen from); the rest wait in Kafka");
        } else {
            tracing::info!(pipeline = %p.name, "circuit breaker closed: fetching as usual");
        }
    }

    /// Whether the breaker holds fetching back: not closed, and enough
    /// groups held to choose probes and the recovery's calls from.
    fn held_back(&self) -> bool {
        self.breaker_blocked
            && self.scheduler.groups() >= self.p.config.circuit_breaker.probe_candidates
    }

    /// Pauses fetching at `worker.max_buffered_events` (resumes at half),
    /// and while the target's circuit breaker is not closed once
    /// `probe_candidates` groups are held (enough to choose from).
    fn flow_control(&mut self) {
        match self.scheduler.flow() {
            Some(Flow::Pause) => {
                self.scheduler.set_paused(true);
                self.flow_paused = true;
                tracing::info!(pipeline = %self.p.name, buffered = self.scheduler.buffered(), "backlog at worker.max_buffered_events; fetching paused");
            }
            Some(Flow::Resume) => {
                self.scheduler.set_paused(false);
                self.flow_paused = false;
            }
            None => {}
        }
        let p = self.p;
        let want = self.flow_paused || self.held_back();
        if want == p.paused.load(Ordering::SeqCst) {
            return;
        }
        // The flag first: a rebalance in between pauses what it assigns.
        p.paused.store(want, Ordering::SeqCst);
        let Ok(assignment) = p.consumer.assignment() else {
            return;
        };
        let result = if want {
            p.consumer.pause(&assignment)
        } else {
            p.consumer.resume(&assignment)
        };
        if let Err(e) = result {
            tracing::warn!(pipeline = %p.name, error = %e, "cannot pause or resume fetching");
        }
        self.paused_since = want.then(now_ms);
        if !want && !self.breaker_blocked {
            tracing::info!(pipeline = %p.name, "fetching resumed");
        }
    }

    /// Updates the lag gauge and the status `/targets` shows, and says
    /// which events retention deleted before this pipeline read them.
    fn report(&self) {
        let p = self.p;
        let now = now_ms();
        let (oldest, skipped) = {
            let mut tracker = p.tracker.lock().expect("tracker lock");
            (tracker.oldest_pending_ms(), tracker.take_skipped())
        };
        for s in skipped {
            let lost = s.to - s.from;
            p.metrics.offsets_skipped.inc_by(lost as u64);
            tracing::error!(pipeline = %p.name, partition = s.partition, from = s.from, to = s.to, lost, "{lost} event(s) of {} were deleted by retention before this pipeline read them (its consumer was reset past them): they are not applied here; keep the event topic's records longer than the longest outage (kafka.retention_hours), and run `mutebridge resync` for this target", p.topic);
        }
        let backlog = p.backlog.load(Ordering::Relaxed);
        let lag_ms = match (oldest, self.paused_since) {
            (Some(t), _) => now - t,
            // Nothing in memory, but events wait in Kafka since the pause.
            (None, Some(since)) if backlog > 0 => now - since,
            _ => 0,
        };
        let lag_seconds = lag_ms.max(0) as f64 / 1000.0;
        let circuit = match &p.stage {
            Stage::Target(t) => {
                let c = t.deliverer.breaker.circuit();
                t.metrics.circuit.set(c.value());
                t.metrics.lag_seconds.set(lag_seconds);
                Some(c)
            }
            Stage::Keeper(_) => None,
        };
        let partitions = p
            .consumer
            .assignment()
            .map(|a| a.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        *p.status.lock().expect("status lock") = Status {
            pipeline: p.name.clone(),
            group_id: p.group_id.clone(),
            circuit,
            paused: p.paused.load(Ordering::Relaxed),
            lag_seconds,
            buffered: self.scheduler.buffered(),
            running: self.scheduler.running(),
            backlog,
            partitions,
        };
    }
}

/// `rx.changed()`, or never when there is nothing to follow.
async fn changed(rx: &mut Option<watch::Receiver<bool>>) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

fn report(job: &Job, stage: Progress, lapse: Option<(String, Option<i64>)>) -> Finished {
    Finished {
        group: (job.partition, job.key.clone()),
        offset: job.offset(),
        generation: job.generation,
        stage,
        lapse,
    }
}

/// Runs `job` to its first wait right here; only what waits (a provider
/// call, a retry) goes on as a task of its own. Most jobs never wait (the
/// keeper's judgement, an event no rule routes, a `discard` target), and a
/// task per event costs more than the event.
fn run_or_spawn(job: impl Future<Output = ()> + Send + 'static) -> Handle {
    let mut job = Box::pin(job);
    // A job that waits registers this waker; its task polls it again at
    // once and registers its own.
    match job.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(()) => Handle(None),
        Poll::Pending => Handle(Some(tokio::spawn(job).abort_handle())),
    }
}

fn spawn_keeper(keeper: Arc<Keeper>, job: Job, tx: mpsc::UnboundedSender<Finished>) -> Handle {
    run_or_spawn(async move {
        let stage = match keeper.process(&job).await {
            None => Progress::Done,
            Some(staged) => {
                let store = keeper.state.clone().expect("staged only with state");
                Progress::Released(Box::pin(async move { store.confirm(staged).await.is_ok() }))
            }
        };
        let _ = tx.send(report(&job, stage, None));
    })
}

fn spawn_target(
    engine: Arc<TargetEngine>,
    job: Job,
    tx: mpsc::UnboundedSender<Finished>,
) -> Handle {
    run_or_spawn(async move {
        let Processed { staged, lapse } = engine.process(&job).await;
        let stage = match staged {
            None => Progress::Done,
            Some(staged) => {
                let engine = engine.clone();
                Progress::Released(Box::pin(async move {
                    let state = engine.state.as_ref().expect("staged only with state");
                    state.store.confirm(staged).await.is_ok()
                }))
            }
        };
        let _ = tx.send(report(&job, stage, lapse));
    })
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
