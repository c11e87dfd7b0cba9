//! The policy as written in the config file: `[[policy.rules]]` and
//! `[maps.NAME]`. [`super::compile`] checks it and turns it into a
//! [`super::Policy`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::event::{EventKind, Scope};

/// `[policy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Evaluated in order; every matching rule applies.
    pub rules: Vec<RuleConfig>,
}

/// `[[policy.rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in logs, metrics-free dead letters and `policy explain`.
    pub name: String,
    #[serde(default)]
    pub when: WhenConfig,
    pub then: Vec<ThenConfig>,
    /// What to do with an event whose group or members have no entry in
    /// the ID map: `skip` (counted) or `dead_letter`.
    #[serde(default)]
    pub on_unmapped: OnUnmapped,
}

/// A rule's conditions; an empty list matches anything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhenConfig {
    pub scope: Option<Scope>,
    pub kinds: Vec<EventKind>,
    pub appkeys: Vec<String>,
    /// Group-ID patterns; `*` matches any run of characters.
    pub groups: Vec<String>,
}

/// One action of a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThenConfig {
    /// A `[targets.NAME]`.
    pub target: String,
    /// Downstream group ID template: `{group_id}`, `{appkey}`, `{org}`,
    /// `{app}`, `{scope}`.
    pub group: Option<String>,
    /// Downstream chatroom ID template (RongCloud chatroom endpoints).
    pub chatroom: Option<String>,
    /// RongCloud chatroom calls: notify the members.
    pub need_notify: Option<bool>,
    /// RongCloud chatroom calls: the notification's `extra` JSON.
    pub extra: Option<String>,
    /// Mute length for `mute_all`, and for `member_muted` events that do
    /// not say until when, counted from the event's time (a member mute
    /// ends then however late it is sent or how often a capped one is
    /// renewed). Unset = permanent (as long as the target allows).
    pub mute_seconds: Option<u64>,
    /// `[maps.NAME]` translating group IDs before `{group_id}` is filled in.
    pub group_map: Option<String>,
    /// `[maps.NAME]` translating member IDs.
    pub user_map: Option<String>,
}

/// What to do when an ID has no mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnmapped {
    #[default]
    Skip,
    DeadLetter,
}

/// `[maps.NAME]`: an inline table or a file (JSON object or TOML table of
/// `"source-id" = "downstream-id"`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    pub ids: Option<BTreeMap<String, String>>,
    /// Relative paths are relative to the config file.
    pub file: Option<PathBuf>,
}
