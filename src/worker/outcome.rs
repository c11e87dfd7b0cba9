//! The worker's words for results, from a provider call up to a metric
//! label: how one action ended ([`ActionOutcome`]) and how one event ended
//! ([`EventOutcome`]).

use std::borrow::Cow;
use std::sync::Arc;

use super::dlq::Reason;

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
}

impl ActionOutcome {
    /// Every label, for creating the series at zero.
    pub const ALL: [&'static str; 5] = ["ok", "skipped", "dead_lettered", "stale", "duplicate"];

    pub fn as_str(&self) -> &'static str {
        match self {
            ActionOutcome::Ok => "ok",
            ActionOutcome::Skipped(_) => "skipped",
            ActionOutcome::DeadLettered(_) => "dead_lettered",
            ActionOutcome::Stale => "stale",
            ActionOutcome::Duplicate => "duplicate",
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

/// What happened to one event; the `outcome` label of
/// `mutebridge_worker_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl EventOutcome {
    pub const ALL: [EventOutcome; 6] = [
        EventOutcome::Applied,
        EventOutcome::Skipped,
        EventOutcome::NoMatch,
        EventOutcome::DeadLettered,
        EventOutcome::Stale,
        EventOutcome::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Applied => "applied",
            EventOutcome::Skipped => "skipped",
            EventOutcome::NoMatch => "no_match",
            EventOutcome::DeadLettered => "dead_lettered",
            EventOutcome::Stale => "stale",
            EventOutcome::Duplicate => "duplicate",
        }
    }
}
