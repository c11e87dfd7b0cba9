//! `[easemob]`: which apps may call, their callback secrets, and how
//! callbacks are deduplicated and dated.

use std::collections::HashSet;

use serde::Deserialize;

use crate::config::error::{invalid, within, Invalid, DAY};
use crate::config::secret::Secret;
use crate::reconcile::config::RestConfig;

/// `[easemob]`: which apps may call, and how callbacks are deduplicated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EasemobConfig {
    pub apps: Vec<EasemobApp>,
    /// Reject callbacks whose `timestamp` is older than this many seconds
    /// (0 = off). Only the clock of the sender is trusted, so keep it generous.
    pub replay_window_seconds: u64,
    /// Reject callbacks whose `timestamp` is more than this many seconds
    /// ahead of our clock (400): a future-dated event would make every real
    /// change after it look older, and be refused as stale by the worker.
    pub max_future_skew_seconds: u64,
    /// How long a published `callId` is remembered to answer retries with 200.
    pub dedup_window_seconds: u64,
    /// Upper bound on remembered callbacks; the oldest are forgotten first.
    pub dedup_capacity: usize,
    /// Also treat a callback as a duplicate when its content (group, operation,
    /// members, timestamp) matches a recent one under a different `callId`.
    pub dedup_by_content: bool,
}

impl Default for EasemobConfig {
    fn default() -> Self {
        EasemobConfig {
            apps: Vec::new(),
            replay_window_seconds: 0,
            max_future_skew_seconds: 300,
            dedup_window_seconds: 600,
            dedup_capacity: 100_000,
            dedup_by_content: true,
        }
    }
}

/// One Easemob app and the secrets of its callback rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EasemobApp {
    pub appkey: String,
    /// One secret per callback rule (Easemob allows up to 4), so rules can be
    /// rotated without downtime. `env:NAME` reads the environment variable.
    pub secrets: Vec<Secret>,
    /// `[easemob.apps.rest]`: the app's REST API, which `mutebridge
    /// reconcile` reads the mute state from; no REST table, no reconciling.
    #[serde(default)]
    pub rest: Option<RestConfig>,
}

impl EasemobConfig {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.dedup_capacity == 0 {
            return invalid("dedup_capacity", "must be at least 1");
        }
        within(
            "replay_window_seconds",
            self.replay_window_seconds,
            0..=30 * DAY,
            "seconds",
        )?;
        within(
            "max_future_skew_seconds",
            self.max_future_skew_seconds,
            1..=DAY,
            "seconds",
        )?;
        within(
            "dedup_window_seconds",
            self.dedup_window_seconds,
            0..=7 * DAY,
            "seconds",
        )?;
        let mut seen = HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let at = format!("apps[{i}]");
            let part = |p: &str| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            };
            if !app
                .appkey
                .split_once('#')
                .is_some_and(|(o, a)| part(o) && part(a))
            {
                return invalid(
                    &format!("{at}.appkey"),
                    format!("{:?} is not an appkey (expected org#app)", app.appkey),
                );
            }
            if !seen.insert(app.appkey.as_str()) {
                return invalid(
                    &format!("{at}.appkey"),
                    format!(
                        "{} is configured twice; put all its secrets in one entry",
                        app.appkey
                    ),
                );
            }
            if app.secrets.is_empty() || app.secrets.len() > 4 {
                return invalid(
                    &format!("{at}.secrets"),
                    format!(
                        "needs 1 to 4 secrets (one per callback rule), found {}",
                        app.secrets.len()
                    ),
                );
            }
            if let Some(j) = app
                .secrets
                .iter()
                .position(|s| s.is_resolved() && s.expose().is_empty())
            {
                return invalid(&format!("{at}.secrets[{j}]"), "is empty");
            }
            if let Some(rest) = &app.rest {
                rest.validate(&app.appkey)
                    .map_err(|e| e.under(&format!("{at}.rest")))?;
            }
        }
        Ok(())
    }
}
