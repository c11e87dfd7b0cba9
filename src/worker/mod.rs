//! The worker role: one consumer group per target, and one that keeps the
//! groups' newest mute state, all on the event topic.
//!
//! A target never waits for another: each has its own committed offsets,
//! assignment, rate-limit share, circuit breaker and records, so a target
//! that is down lags *in Kafka* (durable, visible with any Kafka tool)
//! while the others go on at full speed, and catches up by itself when it
//! is back, sending only each group's newest state.
//!
//! Read it in the order a record travels: [`pipeline`] (one consumer group
//! and its coordinator; [`offsets`]: the commit position, which never
//! passes an unfinished event) -> [`scheduler`] (per-group queues: one job
//! per group at a time) -> [`handler`] (keeper or target) -> [`keeper`]
//! (the state keeper: judge, record the newest state) or [`engine`] (a
//! target: decode -> guard -> plan -> deliver -> dead-letter -> record what
//! it applied) -> [`deliver`] (breaker, rate limit, send, retry) -> [`dlq`].
//! [`store`] and [`reader`] keep the records in the state topic;
//! [`renewal`] re-applies capped mutes before the provider ends them;
//! [`breaker`] is the circuit breaker; [`outcome`] names the results and
//! [`metrics`] counts them. At start, [`topics`] checks the topics and
//! [`inherit`] gives new target groups their starting offsets.
//!
//! A job's completion protocol, from the scheduler to the commit (the
//! types are in [`completion`]):
//!
//! 1. a [`scheduler::Job`] (a consumed record, or a renewal) starts on its
//!    group's task ([`handler::Handler::spawn`]);
//! 2. the keeper or the engine handles it, and leaves a
//!    [`completion::Handled`]: the state record it wrote, as a
//!    [`store::PendingWrite`] (not yet acknowledged), and a target's next
//!    renewal [`completion::Lapse`];
//! 3. the group task sends the coordinator a [`completion::Report`]: the
//!    group's next job may start, and its offset may be committed
//!    [`completion::Commit::Now`] or [`completion::Commit::OnceWritten`];
//! 4. once Kafka acknowledged the record, it is [`completion::Written`]
//!    (abandoned when the partition was revoked: never committed here);
//! 5. the offset is finished in the [`offsets::Tracker`], and committed
//!    with the next commit once every offset before it is.

pub mod breaker;
pub mod completion;
pub mod config;
pub mod deliver;
pub mod dlq;
pub mod engine;
pub mod handler;
pub mod inherit;
pub mod keeper;
pub mod lease;
pub mod metrics;
pub mod offsets;
pub mod outcome;
pub mod pipeline;
pub mod reader;
pub mod rebalance;
pub mod renewal;
pub mod scheduler;
pub mod store;
#[cfg(test)]
mod testing;
pub mod topics;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::mpsc;

use crate::config::{Checked, Config};
use crate::kafka::client::{Producer, Watched};
use crate::kafka::{self, Cluster};
use crate::limit::{Limiter, Shares};
use crate::metrics::Metrics;
use crate::ops::Readiness;
use crate::policy::Policy;
use crate::state::applied;
use crate::targets::{Target, TargetConfig};
use crate::worker::config::WorkerConfig;
use deliver::{DeliverMetrics, Deliverer};
use dlq::DeadLetters;
use engine::{TargetEngine, TargetState};
use handler::Handler;
use keeper::Keeper;
use lease::Lease;
use metrics::{PipelineMetrics, WorkerMetrics, KEEPER};
use offsets::Tracker;
use pipeline::{Pipeline, Status};
use reader::{Fences, Newest, Sinks, StateReader};
use rebalance::WorkerContext;
use store::Store;

/// What the worker's pipelines report, for `/targets`.
pub type Statuses = Arc<Vec<Arc<Mutex<Status>>>>;

/// A subscribed, not yet running worker.
pub struct Worker {
    pipelines: Vec<Pipeline>,
    dlq: DeadLetters,
    ready: Arc<Readiness>,
    statuses: Statuses,
    topic: String,
}

/// The consumer group of a target: `{worker.group_id}.{target}`.
pub fn target_group(config: &WorkerConfig, target: &str) -> String {
    format!("{}.{target}", config.group_id)
}

impl Worker {
    /// Checks the policy, creates the dead-letter and state topics, gives
    /// each new target group its starting offsets, and joins every group.
    pub async fn start(
        config: &Checked,
        cluster: &Cluster,
        metrics: &Metrics,
    ) -> anyhow::Result<Worker> {
        let policy = config.policy().clone();
        if policy.is_empty() {
            tracing::warn!(
                "no [[policy.rules]]: events are consumed and committed without any action"
            );
        }
        let w = &config.worker;
        let partitions = topics::prepare(config, cluster).await?;
        let bootstrap = cluster.bootstrap_servers().to_owned();
        let dlq = DeadLetters::new(&config.kafka, &bootstrap, &w.dlq_topic)?;
        let mut state_config = kafka::producer_config(&config.kafka, &bootstrap);
        // Nobody waits on a state record but the offset commit, so
        // records are batched: far fewer requests for broker and client.
        state_config.set("linger.ms", "5");
        let state_producer = Watched::create(state_config, "state")
            .context("cannot create the state producer (check the [kafka.client] properties)")?;
        let producer = state_producer.producer.clone();
        let ready = Readiness::new();
        ready.watch(&state_producer);
        ready.watch(dlq.watched());
        let client = http_client(w)?;
        let build = Build {
            config,
            bootstrap: &bootstrap,
            metrics: &metrics.worker,
            dlq: &dlq,
            producer: &producer,
            partitions,
        };
        // The targets' groups get their starting offsets before anything
        // of this process consumes (see the `inherit` module).
        let targets: Vec<(&str, &TargetConfig, Policy)> = config
            .targets
            .iter()
            .filter_map(|(name, cfg)| {
                let part = policy.only(name);
                if part.is_empty() {
                    tracing::info!(target = %name, "no rule sends to this target; it gets no consumer group");
                    return None;
                }
                Some((name.as_str(), cfg, part))
            })
            .collect();
        for (name, _, _) in &targets {
            let group = target_group(w, name);
            let (kafka_cfg, boot, from, topic) = (
                config.kafka.clone(),
                bootstrap.clone(),
                w.group_id.clone(),
                config.kafka.topic.clone(),
            );
            tokio::task::spawn_blocking(move || {
                inherit::inherit_offsets(&kafka_cfg, &boot, &topic, partitions, &from, &group)
            })
            .await??;
        }
        let mut pipelines = vec![build.keeper()?];
        for (name, cfg, part) in targets {
            pipelines.push(build.target(name, cfg, part, client.clone())?);
        }
        let statuses = Arc::new(pipelines.iter().map(|p| p.status.clone()).collect());
        Ok(Worker {
            pipelines,
            dlq,
            ready,
            statuses,
            topic: config.kafka.topic.clone(),
        })
    }

    /// What `/readyz` of a worker-only process answers: ready while Kafka
    /// answers and its producers have not failed fatally. A provider
    /// outage does not make the worker unready.
    pub fn ready_flag(&self) -> Arc<Readiness> {
        self.ready.clone()
    }

    /// Each pipeline's status, for `/targets`.
    pub fn statuses(&self) -> Statuses {
        self.statuses.clone()
    }

    /// Makes librdkafka raise a fatal error on the state producer, as a
    /// fenced or unauthorized idempotent producer would (its own test hook).
    #[doc(hidden)]
    pub fn inject_fatal_error(&self, reason: &str) {
        use rdkafka::producer::Producer as _;
        if let Some(w) = self.ready.watches().iter().find(|w| w.role == "state") {
            crate::ingest::publish::inject_fatal_error(w.producer.client(), reason);
        }
    }

    /// Runs every pipeline until `shutdown` completes, then lets running
    /// actions finish (up to `worker.shutdown_grace_seconds`) and commits
    /// what is done.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let probe = {
            let consumer = Arc::downgrade(&self.pipelines[0].consumer);
            let topic = self.topic.clone();
            tokio::spawn(crate::ops::probe_kafka(
                "worker",
                self.ready.clone(),
                None,
                move |timeout| {
                    let c = consumer.upgrade()?;
                    Some(kafka::partition_count(c.client(), &topic, timeout).is_ok())
                },
                stop_rx.clone(),
            ))
        };
        let mut tasks = tokio::task::JoinSet::new();
        for p in self.pipelines {
            let mut rx = stop_rx.clone();
            tasks.spawn(p.run(async move {
                let _ = rx.wait_for(|s| *s).await;
            }));
        }
        // A producer that failed fatally can write no state record or dead
        // letter again: nothing could be committed, so stop (and let the
        // orchestrator restart with new producers) instead of stalling.
        let fatal = async {
            let waits = self
                .ready
                .watches()
                .into_iter()
                .map(|w| Box::pin(async move { w.fatal_error().await }));
            futures_util::future::select_all(waits).await.0
        };
        let failed = tokio::select! {
            () = shutdown => None,
            why = fatal => Some(why),
        };
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        // Not aborted: a probe holding a pipeline's consumer at this moment
        // closes it, and this returns only once it has.
        let _ = probe.await;
        self.dlq.flush(Duration::from_secs(5));
        if let Some(why) = failed {
            anyhow::bail!("{why}; the worker stopped (a restart creates new producers; what was not committed is applied again)");
        }
        tracing::info!("worker stopped; finished offsets committed");
        Ok(())
    }
}

/// What building the pipelines shares.
struct Build<'a> {
    config: &'a Config,
    bootstrap: &'a str,
    metrics: &'a WorkerMetrics,
    dlq: &'a DeadLetters,
    producer: &'a Producer,
    partitions: usize,
}

impl Build<'_> {
    /// The state keeper, in `worker.group_id`.
    fn keeper(&self) -> anyhow::Result<Pipeline> {
        let w = &self.config.worker;
        let pm = self.metrics.pipeline(KEEPER);
        let (loaded_tx, loaded_rx) = mpsc::unbounded_channel();
        let lease = Lease::new();
        let state = w.track_state.then(|| {
            Store::new(
                self.producer.clone(),
                &w.state_topic,
                w.state_horizon_days,
                kafka::client::max_message_bytes(&self.config.kafka),
                pm.store.clone(),
                loaded_tx,
                lease.clone(),
            )
        });
        let keeper = Arc::new(Keeper {
            dlq: self.dlq.clone(),
            metrics: self.metrics.keeper(),
            topic: self.config.kafka.topic.clone(),
            state: state.clone(),
        });
        let sinks = state.map(Sinks::Keeper);
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        self.pipeline(
            KEEPER,
            &w.group_id,
            Handler::Keeper(keeper),
            sinks,
            None,
            loaded_rx,
            pm,
            tracker,
            lease,
        )
    }

    /// Target `name`'s pipeline, in `{worker.group_id}.{name}`.
    fn target(
        &self,
        name: &str,
        cfg: &TargetConfig,
        policy: Policy,
        client: reqwest::Client,
    ) -> anyhow::Result<Pipeline> {
        let w = &self.config.worker;
        let pm = self.metrics.pipeline(name);
        let lease = Lease::new();
        let (deliverer, shares) = self.deliverer(name, cfg, client, lease.clone())?;
        let (loaded_tx, loaded_rx) = mpsc::unbounded_channel();
        // Targets that take whole events keep no records.
        let state = (w.track_state && !cfg.forwards()).then(|| TargetState {
            store: Store::new(
                self.producer.clone(),
                &w.state_topic,
                w.state_horizon_days,
                kafka::client::max_message_bytes(&self.config.kafka),
                pm.store.clone(),
                loaded_tx,
                lease.clone(),
            ),
            newest: Arc::new(Newest::default()),
        });
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let sinks = state.as_ref().map(|s| Sinks::Target {
            store: s.store.clone(),
            prefix: applied::key_prefix(name),
            newest: s.newest.clone(),
            fences: Fences {
                event_topic: self.config.kafka.topic.clone(),
                tracker: tracker.clone(),
            },
        });
        let renew_ahead_ms = cfg.mute_cap().map_or(0, |(_, ahead)| ahead as i64 * 1000);
        let engine = Arc::new(TargetEngine {
            name: Arc::from(name),
            policy,
            deliverer,
            dlq: self.dlq.clone(),
            metrics: self.metrics.target(name),
            topic: self.config.kafka.topic.clone(),
            state,
            renew_ahead_ms,
        });
        let group = target_group(w, name);
        self.pipeline(
            name,
            &group,
            Handler::Target(engine),
            sinks,
            shares,
            loaded_rx,
            pm,
            tracker,
            lease,
        )
    }

    /// Target `name`'s deliverer, and its rate-limit share (when it has a
    /// limit), which follows the pipeline's assignment.
    fn deliverer(
        &self,
        name: &str,
        cfg: &TargetConfig,
        client: reqwest::Client,
        lease: Lease,
    ) -> anyhow::Result<(Deliverer, Option<Arc<Shares>>)> {
        let w = &self.config.worker;
        let limiter = match cfg.limit_spec(name) {
            Some(spec) => {
                let handles = self
                    .metrics
                    .limit_metrics(name, spec.rate_per_second.is_some());
                let max_pause = Duration::from_millis(w.retry.max_backoff_ms);
                Some(Arc::new(Limiter::new(spec, max_pause, handles)?))
            }
            None => None,
        };
        let shares = limiter
            .clone()
            .map(|l| Arc::new(Shares::new(vec![l], self.partitions)));
        let events = &self.metrics.events;
        let metrics = DeliverMetrics {
            duration: events.action_duration.with_label_values(&[name]),
            retries: events.action_retries.with_label_values(&[name]),
        };
        let deliverer = Deliverer::new(
            name,
            Target::new(cfg),
            client,
            w.retry.clone(),
            limiter,
            w.circuit_breaker.clone(),
            metrics,
            lease,
        );
        Ok((deliverer, shares))
    }

    #[allow(clippy::too_many_arguments)]
    fn pipeline(
        &self,
        name: &str,
        group_id: &str,
        handler: Handler,
        sinks: Option<Sinks>,
        shares: Option<Arc<Shares>>,
        loaded: mpsc::UnboundedReceiver<i32>,
        metrics: PipelineMetrics,
        tracker: Arc<Mutex<Tracker>>,
        lease: Lease,
    ) -> anyhow::Result<Pipeline> {
        let kafka = &self.config.kafka;
        let state = match sinks {
            None => None,
            Some(sinks) => {
                let topic = &self.config.worker.state_topic;
                let reader =
                    StateReader::start(kafka, self.bootstrap, topic, sinks.clone(), group_id)?;
                Some((sinks, reader))
            }
        };
        let paused = Arc::new(AtomicBool::new(false));
        let backlog = Arc::new(AtomicI64::new(0));
        let context = WorkerContext {
            tracker: tracker.clone(),
            topic: kafka.topic.clone(),
            pipeline: name.to_owned(),
            lag: metrics.consumer_lag.clone(),
            state,
            shares,
            paused: paused.clone(),
            backlog: backlog.clone(),
            commit_failures: metrics.commit_failures.clone(),
        };
        let mut config = kafka::consumer_config(kafka, self.bootstrap, group_id);
        // rdkafka derives librdkafka's log level from the `log` crate's,
        // and the warning that an offset was reset (retention deleted
        // what this pipeline had not read) is how skipped records are
        // counted: it must reach the context whatever RUST_LOG says.
        use rdkafka::config::RDKafkaLogLevel::Warning;
        if (config.log_level as i32) < Warning as i32 {
            config.set_log_level(Warning);
        }
        let consumer: StreamConsumer<WorkerContext> = config
            .create_with_context(context)
            .context("cannot create the Kafka consumer (check the [kafka.client] properties)")?;
        consumer
            .subscribe(&[&kafka.topic])
            .with_context(|| format!("cannot subscribe to {}", kafka.topic))?;
        Ok(Pipeline {
            name: name.to_owned(),
            group_id: group_id.to_owned(),
            consumer: Arc::new(consumer),
            tracker,
            paused,
            backlog,
            handler,
            loaded,
            lease,
            config: self.config.worker.clone(),
            metrics,
            topic: kafka.topic.clone(),
            status: Arc::new(Mutex::new(Status {
                pipeline: name.to_owned(),
                group_id: group_id.to_owned(),
                ..Status::default()
            })),
        })
    }
}

/// The HTTP client every target shares. It follows no redirect: one
/// would carry a signed request, or RongCloud's signed headers, to wherever
/// the answer points (a 3xx is a permanent error that names the host).
fn http_client(w: &WorkerConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_millis(w.request_timeout_ms))
        .connect_timeout(Duration::from_millis(w.request_timeout_ms.min(5000)))
        // RongCloud asks for idle keep-alive under 55 s.
        .pool_idle_timeout(Duration::from_secs(50))
        .user_agent(concat!("mutebridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the HTTP client")
}
