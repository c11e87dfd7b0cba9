//! One consumer group of the worker and the coordinator task that drives
//! it: the state keeper (`worker.group_id`) or one target
//! (`{worker.group_id}.{target}`).
//!
//! The coordinator owns all scheduling state: it receives records, queues
//! them per group, starts what may start, records what finished (steps 3
//! to 5 of the completion protocol in [`super`]), commits on a timer,
//! pauses fetching (a full backlog; the target's circuit breaker not
//! closed, once `probe_candidates` groups are held) and queues renewals of
//! capped mutes as they come due. It runs in two phases: consuming until
//! shutdown, then draining what runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::breaker::Circuit;
use super::completion::{Commit, Report, Written};
use super::handler::{Handle, Handler};
use super::lease::Lease;
use super::metrics::PipelineMetrics;
use super::offsets::Tracker;
use super::rebalance::WorkerContext;
use super::renewal::Renewals;
use super::scheduler::{Flow, Job, Scheduler, Work};
use crate::event::ReplayScope;
use crate::time::now_ms;
use crate::worker::config::WorkerConfig;

/// Records taken from the consumer in one pass of the coordinator, at most.
const BATCH: usize = 256;

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
    pub handler: Handler,
    /// Partitions whose records are read, from the pipeline's store.
    pub loaded: mpsc::UnboundedReceiver<i32>,
    /// Whether this process still holds its partitions after a stall.
    pub lease: Lease,
    pub config: WorkerConfig,
    pub metrics: PipelineMetrics,
    pub topic: String,
    pub status: Arc<Mutex<Status>>,
}

/// The coordinator's state while it runs.
struct Run<'p> {
    p: &'p Pipeline,
    scheduler: Scheduler<Handle>,
    done_tx: mpsc::UnboundedSender<Report>,
    done_rx: mpsc::UnboundedReceiver<Report>,
    /// Records of reported jobs on their way to Kafka.
    writes: FuturesUnordered<Pin<Box<dyn Future<Output = Written> + Send>>>,
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
        let mut run = Run::new(&self);
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
}

impl<'p> Run<'p> {
    fn new(p: &'p Pipeline) -> Run<'p> {
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Report>();
        Run {
            p,
            scheduler: Scheduler::new(p.config.max_in_flight_groups, p.config.max_buffered_events),
            done_tx,
            done_rx,
            writes: FuturesUnordered::new(),
            flow_paused: false,
            breaker_blocked: false,
            paused_since: None,
            renewals: Renewals::new(p.handler.renew_ahead_ms()),
            membership: Membership::default(),
        }
    }

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
        let mut blocked = p.handler.blocked();
        tokio::pin!(shutdown);
        loop {
            self.take_revoked();
            self.start_ready();
            self.flow_control();
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                Some(report) = self.done_rx.recv() => {
                    self.reported(report);
                    // What else is done, before scheduling again.
                    while let Ok(report) = self.done_rx.try_recv() {
                        self.reported(report);
                    }
                }
                Some(written) = self.writes.next() => self.written(written),
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
        while self.scheduler.running() > 0 || !self.writes.is_empty() {
            tokio::select! {
                Some(report) = self.done_rx.recv() => self.reported(report),
                Some(written) = self.writes.next() => self.written(written),
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

    /// Step 3: a group task reported on its job. The group's next job
    /// may start; the offset is finished now or once its record is written.
    fn reported(&mut self, report: Report) {
        let Report {
            group,
            offset,
            generation,
            commit,
            lapse,
        } = report;
        if let Some(lapse) = lapse {
            self.renewals.lapse(lapse, group.clone());
        }
        match commit {
            Commit::Now => {
                if self.scheduler.finished(&group, generation) {
                    self.commit_ready(group.0, offset, generation);
                }
            }
            Commit::OnceWritten(confirm) => {
                self.scheduler.finished(&group, generation);
                self.writes.push(Box::pin(async move {
                    let acknowledged = confirm.await;
                    Written {
                        group,
                        offset,
                        generation,
                        acknowledged,
                    }
                }));
            }
        }
    }

    /// Step 4: a reported job's record is in Kafka (or abandoned).
    fn written(&mut self, w: Written) {
        if w.acknowledged {
            // The tracker ignores an offset of an older assignment.
            self.commit_ready(w.group.0, w.offset, w.generation);
        }
    }

    /// Step 5: the offset may be committed (once every offset before it may).
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
        for (lapse, group_id) in self.p.handler.renewal_schedule(partition) {
            self.renewals
                .lapse(lapse, (partition, group_id.into_bytes()));
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
            |partition| p.handler.is_loaded(partition),
            |job| p.handler.spawn(job, &p.tracker, done_tx.clone()),
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
        let circuit = p.handler.update_gauges(lag_seconds);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::config::KafkaConfig;
    use crate::kafka::EmbeddedKafka;
    use crate::worker::completion::Lapse;
    use crate::worker::dlq::DeadLetters;
    use crate::worker::keeper::Keeper;
    use crate::worker::metrics::WorkerMetrics;
    use crate::worker::scheduler::GroupKey;
    use crate::worker::testing::{self, DLQ, EVENTS};
    use tokio::sync::oneshot;

    /// A state keeper's pipeline on `kafka`, subscribed to nothing: the
    /// coordinator's bookkeeping is driven by hand.
    fn pipeline(kafka: &EmbeddedKafka) -> Pipeline {
        let metrics = WorkerMetrics::new();
        let pm = metrics.pipeline("keeper");
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let (paused, backlog) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicI64::new(0)),
        );
        let cfg = KafkaConfig::default();
        let context = WorkerContext {
            tracker: tracker.clone(),
            topic: EVENTS.into(),
            pipeline: "keeper".into(),
            lag: pm.consumer_lag.clone(),
            state: None,
            shares: None,
            paused: paused.clone(),
            backlog: backlog.clone(),
            commit_failures: pm.commit_failures.clone(),
        };
        let consumer: StreamConsumer<WorkerContext> =
            crate::kafka::consumer_config(&cfg, kafka.bootstrap_servers(), "keeper")
                .create_with_context(context)
                .unwrap();
        let keeper = Keeper {
            dlq: DeadLetters::new(&cfg, kafka.bootstrap_servers(), DLQ).unwrap(),
            metrics: metrics.keeper(),
            topic: EVENTS.into(),
            state: None,
        };
        Pipeline {
            name: "keeper".into(),
            group_id: "keeper".into(),
            consumer: Arc::new(consumer),
            tracker,
            paused,
            backlog,
            handler: Handler::Keeper(Arc::new(keeper)),
            loaded: mpsc::unbounded_channel().1,
            lease: Lease::new(),
            config: WorkerConfig::default(),
            metrics: pm,
            topic: EVENTS.into(),
            status: Arc::default(),
        }
    }

    fn group(key: &str) -> GroupKey {
        (0, key.as_bytes().to_vec())
    }

    /// Receives the record at `offset` of group `key` in partition 0, as
    /// `received` does; returns its generation.
    fn receive(run: &mut Run<'_>, key: &str, offset: i64) -> u64 {
        let generation = run.p.tracker.lock().unwrap().received(0, offset, 0);
        run.scheduler.push(Job {
            partition: 0,
            generation,
            key: key.as_bytes().to_vec(),
            work: Work::Record {
                offset,
                payload: None,
                replay: None,
            },
        });
        generation
    }

    /// Starts what may start (without running it); how many started.
    fn start(run: &mut Run<'_>) -> usize {
        let mut started = 0;
        run.scheduler.start_ready(
            |_| true,
            |_| {
                started += 1;
                Handle::none()
            },
        );
        started
    }

    fn report(key: &str, offset: i64, generation: u64, commit: Commit) -> Report {
        Report {
            group: group(key),
            offset: Some(offset),
            generation,
            commit,
            lapse: None,
        }
    }

    /// A record write that Kafka acknowledges (`true`) or that is
    /// abandoned (`false`) when the sender says.
    fn pending_write() -> (oneshot::Sender<bool>, Commit) {
        let (tx, rx) = oneshot::channel();
        let commit = Commit::OnceWritten(Box::pin(async move { rx.await.unwrap_or(false) }));
        (tx, commit)
    }

    fn position(run: &Run<'_>) -> Option<i64> {
        run.p.tracker.lock().unwrap().position(0)
    }

    #[tokio::test]
    async fn a_job_whose_record_is_on_its_way_frees_its_group_but_not_its_offset() {
        let kafka = testing::kafka();
        let p = pipeline(&kafka);
        let mut run = Run::new(&p);
        let g = receive(&mut run, "a", 10);
        receive(&mut run, "a", 11);
        assert_eq!(start(&mut run), 1, "one job per group");
        let (ack, commit) = pending_write();
        run.reported(report("a", 10, g, commit));
        assert_eq!(start(&mut run), 1, "the group's next job starts at once");
        assert_eq!(position(&run), Some(10), "10 waits for its record");
        run.reported(report("a", 11, g, Commit::Now));
        assert_eq!(position(&run), Some(10), "11 is done, 10 still is not");
        ack.send(true).unwrap();
        let written = run.writes.next().await.unwrap();
        assert!(written.acknowledged);
        run.written(written);
        assert_eq!(position(&run), Some(12), "both may be committed now");
    }

    #[tokio::test]
    async fn an_abandoned_write_never_lets_its_offset_be_committed() {
        let kafka = testing::kafka();
        let p = pipeline(&kafka);
        let mut run = Run::new(&p);
        let g = receive(&mut run, "a", 10);
        start(&mut run);
        let (abandon, commit) = pending_write();
        run.reported(report("a", 10, g, commit));
        abandon.send(false).unwrap();
        let written = run.writes.next().await.unwrap();
        run.written(written);
        assert_eq!(position(&run), Some(10));
        assert!(p.tracker.lock().unwrap().take_commits(EVENTS).is_none());
    }

    #[tokio::test]
    async fn a_report_from_before_a_revoke_commits_nothing() {
        let kafka = testing::kafka();
        let p = pipeline(&kafka);
        let mut run = Run::new(&p);
        let old = receive(&mut run, "a", 10);
        start(&mut run);
        p.tracker.lock().unwrap().revoke(0);
        run.take_revoked();
        let new = receive(&mut run, "a", 10);
        assert_ne!(old, new);
        assert_eq!(start(&mut run), 1, "the new owner's copy runs");
        run.reported(report("a", 10, old, Commit::Now));
        assert_eq!(
            position(&run),
            Some(10),
            "the old job's finish does not count"
        );
        let (ack, commit) = pending_write();
        run.reported(report("a", 10, old, commit));
        ack.send(true).unwrap();
        let written = run.writes.next().await.unwrap();
        run.written(written);
        assert_eq!(position(&run), Some(10), "nor does its record");
        run.reported(report("a", 10, new, Commit::Now));
        assert_eq!(position(&run), Some(11));
    }

    #[tokio::test]
    async fn a_reported_lapse_queues_a_renewal_in_its_group_when_due() {
        let kafka = testing::kafka();
        let p = pipeline(&kafka);
        let mut run = Run::new(&p);
        run.renewals = Renewals::new(60_000);
        let g = receive(&mut run, "a", 10);
        start(&mut run);
        let lapse = |at_ms| Lapse {
            record: "@rc|k".into(),
            at_ms: Some(at_ms),
        };
        let mut done = report("a", 10, g, Commit::Now);
        done.lapse = Some(lapse(now_ms() + 3_600_000));
        run.reported(done);
        run.queue_renewals();
        assert_eq!(run.scheduler.buffered(), 0, "not due for an hour");
        // A rebuild reports it due within the lead.
        run.renewals.lapse(lapse(now_ms() + 30_000), group("a"));
        run.queue_renewals();
        assert_eq!(run.scheduler.buffered(), 1, "queued");
        let mut renewal = None;
        run.scheduler.start_ready(
            |_| true,
            |job| {
                renewal = Some(job);
                Handle::none()
            },
        );
        let job = renewal.expect("started");
        assert_eq!((job.key.as_slice(), job.offset()), (&b"a"[..], None));
        assert_eq!(job.work, Work::Renew("@rc|k".into()));
    }
}
