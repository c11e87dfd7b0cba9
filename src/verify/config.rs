//! `[verify]`: how often the reconcile role reads the targets back, whether
//! those scheduled passes repair what they find, and how much of a target's
//! rate limit the reads may take.

use serde::Deserialize;

use crate::config::error::{invalid, within, Invalid, DAY};

/// `[verify]`: `mutebridge verify`, and its passes in the reconcile role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Seconds from the end of one pass to the start of the next in the
    /// reconcile role; 0 = only on demand (`mutebridge verify`).
    pub interval_seconds: u64,
    /// Scheduled passes also repair what they find (as `mutebridge verify
    /// --repair`); off, they only report and count it.
    pub repair: bool,
    /// The targets scheduled passes read back; empty = every target whose
    /// provider can be read back (ZEGO, RongCloud, Tencent, Agora).
    pub targets: Vec<String>,
    /// In `rate_limit.mode = "partition_share"`: the part of the target's
    /// `rate_per_second × headroom` the reads take, on top of the workers'
    /// calls (no share is known across processes). In `redis` mode the
    /// reads take slots of the target's one schedule instead, so workers
    /// and reads together stay under the limit; this share then applies
    /// only while Redis does not answer.
    pub read_share: f64,
    /// Per read; past it the read counts as failed and is retried.
    pub request_timeout_ms: u64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            interval_seconds: 0,
            repair: false,
            targets: Vec::new(),
            read_share: 0.5,
            request_timeout_ms: 10_000,
        }
    }
}

impl VerifyConfig {
    /// Keys relative to `verify`; `targets` are checked against the
    /// configured ones by the caller, which knows them.
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        within(
            "interval_seconds",
            self.interval_seconds,
            0..=7 * DAY,
            "seconds (0: only on demand)",
        )?;
        within(
            "request_timeout_ms",
            self.request_timeout_ms,
            100..=120_000,
            "milliseconds",
        )?;
        if !(self.read_share >= 0.01 && self.read_share <= 1.0) {
            return invalid(
                "read_share",
                format!(
                    "{} is not between 0.01 and 1: the part of a target's rate_per_second the reads take in partition_share mode",
                    self.read_share
                ),
            );
        }
        Ok(())
    }
}
