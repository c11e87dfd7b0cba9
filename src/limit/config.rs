//! `[targets.NAME.rate_limit]`: how a target's `rate_per_second` is shared
//! by the worker replicas.

use serde::Deserialize;

use crate::config::error::Invalid;

use crate::config::secret::Secret;

/// The smallest `headroom`.
pub const MIN_HEADROOM: f64 = 0.1;

/// The slowest `rate_per_second` accepted: one call every 1000 s. With the
/// smallest headroom and a one-partition share of 10,000 partitions, the
/// period between calls is still a duration a timer can hold (a rate near
/// 0 would make `1 / rate` seconds overflow it and stop the worker).
pub const MIN_RATE_PER_SECOND: f64 = 0.001;

/// How the replicas of one consumer group keep to one limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each replica takes `limit × assigned partitions ÷ all partitions`,
    /// recomputed on every rebalance. Needs nothing but Kafka.
    #[default]
    PartitionShare,
    /// One GCRA schedule in Redis for every caller of the provider app;
    /// the partition share while Redis does not answer.
    Redis,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::PartitionShare => "partition_share",
            Mode::Redis => "redis",
        }
    }
}

/// `[targets.NAME.rate_limit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub mode: Mode,
    /// `redis://[user:password@]host:port[/db]` (or `env:NAME`); required
    /// with `mode = "redis"`.
    pub url: Option<Secret>,
    /// The part of `rate_per_second` actually used, so that jitter between
    /// our spacing and the provider's window does not trip its limit.
    pub headroom: f64,
    /// Calls that may go back to back after an idle spell. 1 = evenly
    /// spaced, which no provider window (token bucket or sliding) refuses.
    pub burst: u32,
    /// Per Redis call; past it the call counts as Redis being unreachable.
    pub redis_timeout_ms: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            mode: Mode::PartitionShare,
            url: None,
            headroom: 0.95,
            burst: 1,
            redis_timeout_ms: 250,
        }
    }
}

impl RateLimitConfig {
    /// Keys relative to `rate_limit`.
    pub fn validate(&self) -> Result<(), Invalid> {
        // Not near 0: the pace is rate x headroom, and a period of
        // 1 / (rate x headroom) seconds must fit a timer.
        if !(self.headroom >= MIN_HEADROOM && self.headroom <= 1.0) {
            return Err(Invalid::new(
                "headroom",
                format!(
                    "{} is not between {MIN_HEADROOM} and 1: it is the share of rate_per_second used, e.g. 0.95",
                    self.headroom
                ),
            ));
        }
        if !(1..=1000).contains(&self.burst) {
            return Err(Invalid::new(
                "burst",
                format!("{} is not between 1 and 1000", self.burst),
            ));
        }
        if !(10..=10_000).contains(&self.redis_timeout_ms) {
            return Err(Invalid::new(
                "redis_timeout_ms",
                format!("{} is not between 10 and 10000", self.redis_timeout_ms),
            ));
        }
        match (self.mode, &self.url) {
            (Mode::Redis, None) => Err(Invalid::new(
                "url",
                "mode = \"redis\" needs the Redis URL, e.g. url = \"redis://redis:6379\" (or \"env:REDIS_URL\")",
            )),
            // Checked once read, by the role that uses it.
            (Mode::Redis, Some(url)) if !url.is_resolved() => Ok(()),
            (Mode::Redis, Some(url)) => match redis::Client::open(url.expose()) {
                Ok(_) => Ok(()),
                // The URL may hold a password: the message does not repeat it.
                Err(e) => Err(Invalid::new(
                    "url",
                    format!("is not a Redis URL (redis://host:port[/db]): {:?}", e.kind()),
                )),
            },
            (Mode::PartitionShare, Some(_)) => Err(Invalid::new(
                "url",
                "is only used with mode = \"redis\"; remove it or set the mode",
            )),
            (Mode::PartitionShare, None) => Ok(()),
        }
    }

    /// The `url` secret, for `env:` resolution.
    pub fn secrets_mut(&mut self) -> Vec<(String, &mut Secret)> {
        self.url
            .iter_mut()
            .map(|s| ("rate_limit.url".to_owned(), s))
            .collect()
    }
}
