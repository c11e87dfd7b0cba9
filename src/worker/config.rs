//! `[worker]` and `[worker.retry]`: the consumer groups, their limits, the
//! state topic, and the retry budget of one provider call.

use serde::Deserialize;

use crate::config::error::{invalid, within, Invalid, DAY};
use crate::kafka::config::KafkaConfig;

/// `[worker]`: the consumer groups that apply the policy: `group_id` keeps
/// the groups' newest mute state, `{group_id}.{target}` applies each
/// target's actions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// The state keeper's Kafka consumer group, and the prefix of each
    /// target's (`{group_id}.{target}`); every worker replica uses the same.
    pub group_id: String,
    /// Groups processed concurrently, per target; one group is always
    /// sequential.
    pub max_in_flight_groups: usize,
    /// Events held in memory per target (queued behind a busy group or
    /// running); at the limit fetching pauses until the backlog halves.
    pub max_buffered_events: usize,
    /// Where actions that failed for good go, with the reason.
    pub dlq_topic: String,
    /// Keep each group's mute state and refuse events older than it (the
    /// stale-event guard). Off: every event is applied in partition order.
    pub track_state: bool,
    /// The compacted topic holding one mute state per group; same
    /// partition count as `kafka.topic`.
    pub state_topic: String,
    /// How long an unmuted member (or a timed mute past its end) is
    /// remembered, to refuse a late mute of it. Longer than Easemob's
    /// 3-day re-send window.
    pub state_horizon_days: u32,
    /// How often finished offsets are committed (also on rebalance and
    /// exit); 100 to 60000.
    pub commit_interval_ms: u64,
    /// On SIGTERM, how long in-flight actions may take before they are
    /// abandoned (their events are re-delivered after a restart).
    pub shutdown_grace_seconds: u64,
    /// Per-attempt HTTP timeout for targets; 100 to 600000.
    pub request_timeout_ms: u64,
    pub retry: RetryConfig,
    /// Each target's circuit breaker: when it opens, and how often it
    /// probes.
    pub circuit_breaker: crate::worker::breaker::BreakerConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            group_id: "mutebridge-workers".into(),
            max_in_flight_groups: 256,
            max_buffered_events: 10_000,
            dlq_topic: "im.group-events.dlq".into(),
            track_state: true,
            state_topic: "im.group-events.state".into(),
            state_horizon_days: 7,
            commit_interval_ms: 1000,
            shutdown_grace_seconds: 10,
            request_timeout_ms: 10_000,
            retry: RetryConfig::default(),
            circuit_breaker: Default::default(),
        }
    }
}

/// `[worker.retry]`: the budget of one action (one provider call).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// Time from the first attempt after which no new attempt starts.
    pub max_elapsed_seconds: u64,
    /// Backoff ceiling of the first retry (10 to 60000); doubles per
    /// attempt, with full jitter (a uniformly random wait between 0 and the
    /// ceiling).
    pub initial_backoff_ms: u64,
    /// The largest backoff ceiling: at least `initial_backoff_ms`, at most
    /// an hour.
    pub max_backoff_ms: u64,
    /// How long one call may keep drawing the provider's rate-limit answer
    /// before it is dead-lettered (reason `rate_limited`). Rate-limit
    /// answers are temporary by definition: they count against this, not
    /// against `max_attempts` or `max_elapsed_seconds`.
    pub rate_limited_horizon_seconds: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 8,
            max_elapsed_seconds: 300,
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
            rate_limited_horizon_seconds: 6 * 3600,
        }
    }
}

impl WorkerConfig {
    pub(crate) fn validate(&self, kafka: &KafkaConfig) -> Result<(), Invalid> {
        if self.group_id.trim().is_empty() {
            return invalid("group_id", "must not be empty");
        }
        if self.max_in_flight_groups == 0 {
            return invalid("max_in_flight_groups", "must be at least 1");
        }
        if self.max_buffered_events < self.max_in_flight_groups {
            return invalid(
                "max_buffered_events",
                format!(
                    "must be at least worker.max_in_flight_groups ({})",
                    self.max_in_flight_groups
                ),
            );
        }
        if self.dlq_topic.trim().is_empty() || self.dlq_topic == kafka.topic {
            return invalid("dlq_topic", "must be set and differ from kafka.topic");
        }
        if self.state_topic.trim().is_empty()
            || self.state_topic == kafka.topic
            || self.state_topic == self.dlq_topic
        {
            return invalid(
                "state_topic",
                "must be set and differ from kafka.topic and worker.dlq_topic",
            );
        }
        if self.state_horizon_days < 4 {
            return invalid(
                "state_horizon_days",
                "must be at least 4: Easemob re-sends stored callbacks up to 3 days late, and a guard forgotten sooner lets such a callback undo a newer change",
            );
        }
        within(
            "state_horizon_days",
            self.state_horizon_days.into(),
            4..=3650,
            "days",
        )?;
        // Each commit is a request to the group coordinator: more often than
        // every 100 ms loads it for nothing; less often than a minute leaves
        // that much to re-apply after a crash.
        within(
            "commit_interval_ms",
            self.commit_interval_ms,
            100..=60_000,
            "ms",
        )?;
        within(
            "shutdown_grace_seconds",
            self.shutdown_grace_seconds,
            0..=3600,
            "seconds",
        )?;
        // Below 100 ms a provider's answer rarely arrives in time (every
        // call would time out and count as an outage).
        within(
            "request_timeout_ms",
            self.request_timeout_ms,
            100..=600_000,
            "ms",
        )?;
        self.retry.validate().map_err(|e| e.under("retry"))?;
        self.circuit_breaker
            .validate(self.retry.max_attempts)
            .map_err(|e| e.under("circuit_breaker"))
    }
}

impl RetryConfig {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.max_attempts == 0 {
            return invalid("max_attempts", "must be at least 1");
        }
        within(
            "initial_backoff_ms",
            self.initial_backoff_ms,
            10..=60_000,
            "ms",
        )?;
        within("max_backoff_ms", self.max_backoff_ms, 10..=3_600_000, "ms")?;
        if self.max_backoff_ms < self.initial_backoff_ms {
            return invalid(
                "max_backoff_ms",
                format!(
                    "{} is below initial_backoff_ms ({})",
                    self.max_backoff_ms, self.initial_backoff_ms
                ),
            );
        }
        within(
            "max_elapsed_seconds",
            self.max_elapsed_seconds,
            0..=30 * DAY,
            "seconds",
        )?;
        if self.rate_limited_horizon_seconds == 0 {
            return invalid(
                "rate_limited_horizon_seconds",
                "must be greater than 0 (hours are typical: a rate-limit answer is temporary)",
            );
        }
        within(
            "rate_limited_horizon_seconds",
            self.rate_limited_horizon_seconds,
            1..=30 * DAY,
            "seconds",
        )?;
        Ok(())
    }
}
