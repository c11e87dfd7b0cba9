//! The worker's metrics, and the handles each of its pipelines (the state
//! keeper and one per target) counts with.
//!
//! Labels are closed sets: `target` is a configured name, `pipeline` is a
//! target's name or `state` (the keeper), outcomes and actions are the
//! worker's enums, partitions are bounded by the topic.

use std::sync::Arc;

use prometheus::{
    CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts,
};

use super::breaker::Circuit;
use super::dlq::Reason;
use super::outcome::{ActionLabel, EventOutcome, KeeperOutcome};
use super::store::StoreMetrics;
use crate::limit::LimitMetrics;
use crate::policy::Op;

/// The `pipeline` label of the state keeper.
pub use crate::config::KEEPER;

/// Every worker metric, as registered.
#[derive(Clone)]
pub struct WorkerMetrics {
    pub events: EventVecs,
    pub limits: LimitVecs,
    pub pipelines: PipelineVecs,
}

/// The state keeper's handles.
#[derive(Clone)]
pub struct KeeperMetrics {
    /// By [`KeeperOutcome`], in its order.
    pub events: Arc<Vec<IntCounter>>,
    /// Undecodable records dead-lettered.
    pub dead_letters: IntCounter,
}

/// One target pipeline's handles.
#[derive(Clone)]
pub struct TargetMetrics {
    /// By [`EventOutcome`], in its order.
    pub events: Arc<Vec<IntCounter>>,
    /// By action name, then [`ActionLabel`] in its order (resolved once: a
    /// label lookup hashes and locks, and every event counts one).
    actions: Arc<Vec<(&'static str, Vec<IntCounter>)>>,
    pub dead_letters: IntCounterVec,
    pub renewals: IntCounter,
    pub circuit: IntGauge,
    pub lag_seconds: prometheus::Gauge,
}

/// What every pipeline (keeper or target) shows of its consumer.
#[derive(Clone)]
pub struct PipelineMetrics {
    pub name: String,
    pub in_flight: IntGauge,
    pub buffered: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub commit_failures: IntCounter,
    pub offsets_skipped: IntCounter,
    pub store: StoreMetrics,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

/// What the pipelines finished: events, actions, dead letters, renewals.
#[derive(Clone)]
pub struct EventVecs {
    pub target_events: IntCounterVec,
    pub state_events: IntCounterVec,
    pub actions: IntCounterVec,
    pub action_duration: HistogramVec,
    pub action_retries: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub renewals: IntCounterVec,
}

impl EventVecs {
    fn new() -> EventVecs {
        EventVecs {
        target_events: counter(
            "mutebridge_worker_events_total",
            "Events finished at each target, by outcome (applied, skipped, no_match, dead_lettered, stale, duplicate, superseded).",
            &["target", "outcome"],
        ),
        state_events: counter(
            "mutebridge_state_events_total",
            "Events the state keeper finished, by outcome (recorded, unchanged, stale, not_mute, removed, undecodable).",
            &["outcome"],
        ),
        actions: counter(
            "mutebridge_actions_total",
            "Actions finished, by target, action and outcome (ok, skipped, dead_lettered, stale, duplicate, superseded).",
            &["target", "action", "outcome"],
        ),
        action_duration: HistogramVec::new(
            HistogramOpts::new(
                "mutebridge_action_duration_seconds",
                "Duration of one HTTP attempt against a target.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["target"],
        )
        .expect("valid metric"),
        action_retries: counter(
            "mutebridge_action_retries_total",
            "Attempts that were retried, by target.",
            &["target"],
        ),
        dead_letters: counter(
            "mutebridge_dead_letters_total",
            "Records written to the dead-letter topic, by target and reason.",
            &["target", "reason"],
        ),
        renewals: counter(
            "mutebridge_target_renewals_total",
            "Capped mutes re-applied before the provider would have ended them, by target.",
            &["target"],
        ),
        }
    }
}

/// The targets' rate limits.
#[derive(Clone)]
pub struct LimitVecs {
    pub rate_limit_wait: CounterVec,
    pub rate_limit_share: GaugeVec,
    pub rate_limit_exact: IntGaugeVec,
    pub rate_limit_fallbacks: IntCounterVec,
    pub target_rate_limited: IntCounterVec,
}

impl LimitVecs {
    fn new() -> LimitVecs {
        LimitVecs {
        rate_limit_wait: CounterVec::new(
            Opts::new(
                "mutebridge_rate_limit_wait_seconds_total",
                "Time actions spent waiting for their target's rate limiter.",
            ),
            &["target"],
        )
        .expect("valid metric"),
        rate_limit_share: GaugeVec::new(
            Opts::new(
                "mutebridge_rate_limit_share_per_second",
                "Calls per second this replica may make to a target while on its partition share: the target's limit x headroom x assigned / all partitions.",
            ),
            &["target"],
        )
        .expect("valid metric"),
        rate_limit_exact: gauge(
            "mutebridge_rate_limit_exact",
            "1 while a target's rate limit is kept in Redis (mode = redis and Redis answers); 0 on the partition share.",
            &["target"],
        ),
        rate_limit_fallbacks: counter(
            "mutebridge_rate_limit_fallbacks_total",
            "Times Redis stopped answering and a target's limit fell back to the partition share.",
            &["target"],
        ),
        target_rate_limited: counter(
            "mutebridge_target_rate_limited_total",
            "Provider answers saying a target's rate limit was exceeded (each pauses every call of the target).",
            &["target"],
        ),
        }
    }
}

/// Each pipeline's consumer, records and breaker.
#[derive(Clone)]
pub struct PipelineVecs {
    pub consumer_lag: IntGaugeVec,
    pub commit_failures: IntCounterVec,
    pub offsets_skipped: IntCounterVec,
    pub groups_in_flight: IntGaugeVec,
    pub buffered_events: IntGaugeVec,
    pub state_groups: IntGaugeVec,
    pub state_rebuild: HistogramVec,
    pub state_writes: IntCounterVec,
    pub state_write_errors: IntCounterVec,
    pub state_members_dropped: IntCounterVec,
    pub circuit_state: IntGaugeVec,
    pub target_lag: GaugeVec,
}

impl PipelineVecs {
    fn new() -> PipelineVecs {
        PipelineVecs {
        consumer_lag: gauge(
            "mutebridge_consumer_lag",
            "Messages between the committed offset and the end of each assigned partition, by pipeline (a target, or `state`: the state keeper) and partition (librdkafka statistics).",
            &["pipeline", "partition"],
        ),
        commit_failures: counter(
            "mutebridge_worker_commit_failures_total",
            "Offset commits Kafka refused or did not answer (the group coordinator moved, a rebalance), by pipeline; each is issued again, and nothing counts as committed until Kafka acknowledges it.",
            &["pipeline"],
        ),
        offsets_skipped: counter(
            "mutebridge_worker_offsets_skipped_total",
            "Events a pipeline never read because retention deleted them first (librdkafka reset its position past them), by pipeline: the event topic's retention is shorter than the pipeline's lag was.",
            &["pipeline"],
        ),
        groups_in_flight: gauge(
            "mutebridge_worker_groups_in_flight",
            "Groups with an event being applied right now, by pipeline.",
            &["pipeline"],
        ),
        buffered_events: gauge(
            "mutebridge_worker_buffered_events",
            "Events consumed and not yet finished (running or queued behind their group), by pipeline.",
            &["pipeline"],
        ),
        state_groups: gauge(
            "mutebridge_worker_state_groups",
            "Records held for the assigned partitions, by pipeline: group states (`state`) or a target's applied records.",
            &["pipeline"],
        ),
        state_rebuild: HistogramVec::new(
            HistogramOpts::new(
                "mutebridge_worker_state_rebuild_seconds",
                "Time to read a newly assigned partition's records from the state topic, by pipeline.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["pipeline"],
        )
        .expect("valid metric"),
        state_writes: counter(
            "mutebridge_worker_state_writes_total",
            "Records written to the state topic and acknowledged, by pipeline.",
            &["pipeline"],
        ),
        state_write_errors: counter(
            "mutebridge_worker_state_write_errors_total",
            "Failed attempts to write a record to the state topic (retried; the offset waits), by pipeline.",
            &["pipeline"],
        ),
        state_members_dropped: counter(
            "mutebridge_worker_state_members_dropped_total",
            "Member dimensions dropped from a record so that it fits in one Kafka message (`message.max.bytes`), by pipeline: their stale-event guard (and, for a target, their renewal) is gone.",
            &["pipeline"],
        ),
        circuit_state: gauge(
            "mutebridge_target_circuit_state",
            "Each target's circuit breaker: 0 closed, 1 half-open (a probe is out), 2 open (no call goes out but the probe), 3 recovering (calls are admitted through a widening window).",
            &["target"],
        ),
        target_lag: GaugeVec::new(
            Opts::new(
                "mutebridge_target_lag_seconds",
                "Age of the oldest event a target has not finished (0 when it is caught up).",
            ),
            &["target"],
        )
        .expect("valid metric"),
        }
    }
}

impl WorkerMetrics {
    pub fn new() -> WorkerMetrics {
        WorkerMetrics {
            events: EventVecs::new(),
            limits: LimitVecs::new(),
            pipelines: PipelineVecs::new(),
        }
    }

    /// Every collector, for registering.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.events.target_events.clone()),
            Box::new(self.events.state_events.clone()),
            Box::new(self.events.actions.clone()),
            Box::new(self.events.action_duration.clone()),
            Box::new(self.events.action_retries.clone()),
            Box::new(self.events.dead_letters.clone()),
            Box::new(self.pipelines.consumer_lag.clone()),
            Box::new(self.pipelines.commit_failures.clone()),
            Box::new(self.pipelines.offsets_skipped.clone()),
            Box::new(self.limits.rate_limit_wait.clone()),
            Box::new(self.limits.rate_limit_share.clone()),
            Box::new(self.limits.rate_limit_exact.clone()),
            Box::new(self.limits.rate_limit_fallbacks.clone()),
            Box::new(self.limits.target_rate_limited.clone()),
            Box::new(self.pipelines.groups_in_flight.clone()),
            Box::new(self.pipelines.buffered_events.clone()),
            Box::new(self.pipelines.state_groups.clone()),
            Box::new(self.pipelines.state_rebuild.clone()),
            Box::new(self.pipelines.state_writes.clone()),
            Box::new(self.pipelines.state_write_errors.clone()),
            Box::new(self.pipelines.state_members_dropped.clone()),
            Box::new(self.pipelines.circuit_state.clone()),
            Box::new(self.pipelines.target_lag.clone()),
            Box::new(self.events.renewals.clone()),
        ]
    }

    /// The state keeper's handles (creates its series at zero).
    pub fn keeper(&self) -> KeeperMetrics {
        KeeperMetrics {
            events: Arc::new(
                KeeperOutcome::ALL
                    .iter()
                    .map(|o| self.events.state_events.with_label_values(&[o.as_str()]))
                    .collect(),
            ),
            dead_letters: self
                .events
                .dead_letters
                .with_label_values(&["none", Reason::Undecodable.as_str()]),
        }
    }

    /// Target `name`'s handles; every label combination of it is created
    /// at zero, so dashboards and alerts see the series before the first
    /// failure.
    pub fn target(&self, name: &str) -> TargetMetrics {
        let actions = Op::names()
            .map(|action| {
                let by_outcome = ActionLabel::ALL
                    .iter()
                    .map(|o| {
                        self.events
                            .actions
                            .with_label_values(&[name, action, o.as_str()])
                    })
                    .collect();
                (action, by_outcome)
            })
            .collect();
        for &reason in Reason::ALL {
            if reason != Reason::Undecodable {
                self.events
                    .dead_letters
                    .with_label_values(&[name, reason.as_str()]);
            }
        }
        self.events.action_duration.with_label_values(&[name]);
        self.events.action_retries.with_label_values(&[name]);
        self.limits.rate_limit_wait.with_label_values(&[name]);
        self.limits.target_rate_limited.with_label_values(&[name]);
        let circuit = self.pipelines.circuit_state.with_label_values(&[name]);
        circuit.set(Circuit::Closed.value());
        TargetMetrics {
            events: Arc::new(
                EventOutcome::ALL
                    .iter()
                    .map(|o| {
                        self.events
                            .target_events
                            .with_label_values(&[name, o.as_str()])
                    })
                    .collect(),
            ),
            actions: Arc::new(actions),
            dead_letters: self.events.dead_letters.clone(),
            renewals: self.events.renewals.with_label_values(&[name]),
            circuit,
            lag_seconds: self.pipelines.target_lag.with_label_values(&[name]),
        }
    }

    /// Pipeline `name`'s consumer and store handles.
    pub fn pipeline(&self, name: &str) -> PipelineMetrics {
        PipelineMetrics {
            name: name.to_owned(),
            in_flight: self.pipelines.groups_in_flight.with_label_values(&[name]),
            buffered: self.pipelines.buffered_events.with_label_values(&[name]),
            consumer_lag: self.pipelines.consumer_lag.clone(),
            commit_failures: self.pipelines.commit_failures.with_label_values(&[name]),
            offsets_skipped: self.pipelines.offsets_skipped.with_label_values(&[name]),
            store: StoreMetrics {
                held: self.pipelines.state_groups.with_label_values(&[name]),
                rebuild: self.pipelines.state_rebuild.with_label_values(&[name]),
                writes: self.pipelines.state_writes.with_label_values(&[name]),
                write_errors: self.pipelines.state_write_errors.with_label_values(&[name]),
                members_dropped: self
                    .pipelines
                    .state_members_dropped
                    .with_label_values(&[name]),
            },
        }
    }

    /// The handles of `target`'s rate limiter (creates its series); the
    /// share and exact gauges only when it is `spaced` (has a rate).
    pub fn limit_metrics(&self, target: &str, spaced: bool) -> LimitMetrics {
        LimitMetrics {
            share: spaced.then(|| self.limits.rate_limit_share.with_label_values(&[target])),
            exact: spaced.then(|| self.limits.rate_limit_exact.with_label_values(&[target])),
            fallbacks: self
                .limits
                .rate_limit_fallbacks
                .with_label_values(&[target]),
            rate_limited: self.limits.target_rate_limited.with_label_values(&[target]),
            waited: self.limits.rate_limit_wait.with_label_values(&[target]),
        }
    }
}

impl TargetMetrics {
    /// Counts one action `action` (an [`Op`] name, or `none`) that ended
    /// with `outcome`.
    pub fn action(&self, action: &str, outcome: ActionLabel) {
        if let Some((_, by_outcome)) = self.actions.iter().find(|(a, _)| *a == action) {
            by_outcome[outcome as usize].inc();
        }
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics::new()
    }
}
