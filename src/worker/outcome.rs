//! The worker's words for results, from a provider call up to a metric
//! label: how one action ended ([`ActionOutcome`]) and how one event ended
//! ([`EventOutcome`]).

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Which action an outcome belongs to: the rule, the target and what it
/// does there (the `action` label: `mute_all`, ..., `none`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionId {
    pub rule: Arc<str>,
    pub target: Arc<str>,
    pub action: &'static str,
}

impl ActionId {
    pub fn new(rule: Arc<str>, target: Arc<str>, action: &'static str) -> ActionId {
        ActionId {
            rule,
            target,
            action,
        }
    }
}

/// How one action (one provider call, or the policy's verdict for one
/// `then` entry) ended; the `outcome` label of `mutebridge_actions_total`.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionOutcome {
    /// The target accepted it.
    Ok,
    /// Nothing to do: by policy, or moot (an expired mute); says why.
    Skipped(Cow<'static, str>),
    /// Failed for good; it goes to the dead-letter topic.
    DeadLettered(Failure),
    /// Not sent: a newer event already set what it would change.
    Stale,
    /// Not sent: this event already set what it would change (a redelivery).
    Duplicate,
    /// Not sent: a newer event of the group has set what it would change
    /// since, and reaches the target too.
    Superseded,
}

/// How an action ended, without the details: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum ActionLabel {
    Ok,
    Skipped,
    DeadLettered,
    Stale,
    Duplicate,
    Superseded,
}

impl ActionLabel {
    /// Every label, for creating the series at zero.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl ActionOutcome {
    pub fn label(&self) -> ActionLabel {
        match self {
            ActionOutcome::Ok => ActionLabel::Ok,
            ActionOutcome::Skipped(_) => ActionLabel::Skipped,
            ActionOutcome::DeadLettered(_) => ActionLabel::DeadLettered,
            ActionOutcome::Stale => ActionLabel::Stale,
            ActionOutcome::Duplicate => ActionLabel::Duplicate,
            ActionOutcome::Superseded => ActionLabel::Superseded,
        }
    }

    /// The outcome of an action the guard held for `hold`.
    pub fn held(hold: &crate::state::guard::Hold) -> ActionOutcome {
        use crate::state::guard::Hold;
        match hold {
            Hold::Stale { .. } => ActionOutcome::Stale,
            Hold::Duplicate => ActionOutcome::Duplicate,
            Hold::Superseded { .. } => ActionOutcome::Superseded,
        }
    }
}

/// Why an action has to be dead-lettered.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: Reason,
    /// The last error, as the target or the policy put it.
    pub error: String,
    pub attempts: u32,
    /// Empty when the whole call failed; else the users that did.
    pub users: Vec<String>,
}

impl Failure {
    /// The whole call failed (no per-user split).
    pub fn whole(reason: Reason, error: String, attempts: u32) -> ActionOutcome {
        ActionOutcome::DeadLettered(Failure {
            reason,
            error,
            attempts,
            users: Vec::new(),
        })
    }
}

/// What happened to one event at one target; the `outcome` label of
/// `mutebridge_worker_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum EventOutcome {
    /// At least one action succeeded and none was dead-lettered.
    Applied,
    /// Every action was skipped.
    Skipped,
    /// No rule matched.
    NoMatch,
    /// At least one action (or the record itself) was dead-lettered.
    DeadLettered,
    /// A mute event older than the group's state for everything it would
    /// change: nothing of it was sent.
    Stale,
    /// A mute event that had already set everything it would change (a
    /// redelivery): nothing of it was sent again.
    Duplicate,
    /// A mute event whose every change a newer event of the group has made
    /// since (a target catching up): only the newer one is sent.
    Superseded,
}

impl EventOutcome {
    /// Every variant, in declaration order.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What the state keeper did with one event; the `outcome` label of
/// `mutebridge_state_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum KeeperOutcome {
    /// The group's newest state changed and was written.
    Recorded,
    /// A mute event that changed nothing (a redelivery, or a replay).
    Unchanged,
    /// A mute event older than the state for everything it would change.
    Stale,
    /// Not a mute event: the state is not about it.
    NotMute,
    /// A `group_destroyed`: the group's state was deleted.
    Removed,
    /// Not a `mutebridge.event/v1` record: dead-lettered.
    Undecodable,
}

impl KeeperOutcome {
    /// Every variant, in declaration order.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Why an action was dead-lettered; the `reason` metric label.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Reason {
    /// The target refused the call in a way retrying cannot fix (bad
    /// credentials or parameters, no such group, no permission).
    PermanentError,
    /// Retryable failures outlasted `[worker.retry]`'s budget.
    RetriesExhausted,
    /// The provider kept answering "rate limited" for longer than
    /// `worker.retry.rate_limited_horizon_seconds`.
    RateLimited,
    /// An ID had no mapping and the rule says `on_unmapped = "dead_letter"`.
    Unmapped,
    /// The record is not a `mutebridge.event/v1` event.
    Undecodable,
}

impl Reason {
    /// Every variant, in declaration order.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl Reason {
    /// The reason whose label is `label`.
    pub fn parse(label: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == label)
    }
}
