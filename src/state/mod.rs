//! The mute state of a group: the second versioned contract, beside the
//! event. The worker keeps one [`GroupState`] per group in a compacted
//! Kafka topic (`worker.state_topic`), so what a group's mute state is —
//! not only which events happened to it — survives restarts and
//! rebalances and can be read by anyone (`mutebridge state get|dump`,
//! kcat, a stream processor).
//!
//! Each dimension (the group-wide mute, and each member) remembers the
//! callback time (`at_ms`, Easemob's signed `timestamp`) and the event that
//! set it, which is what [`guard`] needs to refuse an older event that
//! arrives late (Easemob re-sends stored callbacks up to 3 days later).
//!
//! The JSON shape is published as a JSON Schema (`mutebridge schema state`,
//! checked in under `deploy/schema/`); changing it is a contract change.

pub mod guard;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::Scope;

/// Value of the `schema` field and the `schema` Kafka header.
pub const STATE_SCHEMA_V1: &str = "mutebridge.state/v1";

/// One group's mute state: the value of its record in the state topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "mutebridge.state/v1")]
pub struct GroupState {
    /// Always `mutebridge.state/v1` for this version of the contract.
    #[schemars(extend("const" = "mutebridge.state/v1"))]
    pub schema: String,
    /// The sender's application key (`org#app`).
    pub appkey: String,
    pub scope: Scope,
    /// Group or chatroom ID, as in the events.
    #[schemars(length(min = 1, max = 256))]
    pub group_id: String,
    /// The group-wide mute; null until a `mute_all` or `unmute_all` is seen.
    pub mute_all: Option<MuteAllState>,
    /// Each member a member mute or unmute was seen for, by member ID.
    /// Unmuted members stay (they refuse a late mute) until
    /// `worker.state_horizon_days` after the unmute; so do mutes past
    /// their end.
    #[schemars(with = "BTreeMap<String, MemberState>")]
    pub members: Members,
    /// When the worker wrote this record (milliseconds since the epoch).
    pub updated_at_ms: i64,
}

/// The group-wide mute dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteAllState {
    pub muted: bool,
    /// The `occurred_at_ms` of the event that set it: older events are stale.
    pub at_ms: i64,
    /// The `id` of that event.
    pub event_id: String,
}

/// One member's mute dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberState {
    pub muted: bool,
    /// End of the mute (ms since the epoch); null when permanent, unknown,
    /// or unmuted.
    pub until_ms: Option<i64>,
    /// The `occurred_at_ms` of the event that set it: older events are stale.
    pub at_ms: i64,
    /// The `id` of that event.
    pub event_id: String,
}

/// The member dimensions of a group, by member ID: a JSON object on the
/// wire, a sorted vector in memory. (A `BTreeMap` allocates a node for 11
/// entries, about 900 bytes, even for the one or two members a group
/// usually has; the worker holds a state per group.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members(Vec<(String, MemberState)>);

impl Members {
    /// The member's dimension.
    pub fn get(&self, member: &str) -> Option<&MemberState> {
        self.find(member).ok().map(|i| &self.0[i].1)
    }

    /// Sets the member's dimension.
    pub fn insert(&mut self, member: String, state: MemberState) {
        match self.find(&member) {
            Ok(i) => self.0[i].1 = state,
            Err(i) => self.0.insert(i, (member, state)),
        }
    }

    /// Keeps the members `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &MemberState) -> bool) {
        self.0.retain(|(m, s)| keep(m, s));
    }

    /// Gives back spare capacity (states are held for long).
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The members in ID order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MemberState)> {
        self.0.iter().map(|(m, s)| (m.as_str(), s))
    }

    fn find(&self, member: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(m, _)| m.as_str().cmp(member))
    }
}

impl Serialize for Members {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(m, s)| (m, s)))
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, MemberState>::deserialize(deserializer)?;
        let mut members: Vec<(String, MemberState)> = map.into_iter().collect();
        members.shrink_to_fit();
        Ok(Members(members))
    }
}

impl std::ops::Index<&str> for Members {
    type Output = MemberState;

    fn index(&self, member: &str) -> &MemberState {
        self.get(member).expect("no such member")
    }
}

/// The record key of a group's state: `{appkey}|{scope}|{group_id}`.
pub fn key(appkey: &str, scope: Scope, group_id: &str) -> String {
    format!("{appkey}|{}|{group_id}", scope.as_str())
}

impl GroupState {
    /// An empty state for a group.
    pub fn new(appkey: &str, scope: Scope, group_id: &str) -> GroupState {
        GroupState {
            schema: STATE_SCHEMA_V1.into(),
            appkey: appkey.into(),
            scope,
            group_id: group_id.into(),
            mute_all: None,
            members: Members::default(),
            updated_at_ms: 0,
        }
    }

    /// This state's record key.
    pub fn key(&self) -> String {
        key(&self.appkey, self.scope, &self.group_id)
    }
}

/// The JSON Schema of [`GroupState`], pretty-printed, as `mutebridge schema
/// state` prints it.
pub fn json_schema() -> String {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(GroupState)).expect("a schema is JSON");
    // Nullable fields are always written (as null); say so.
    crate::event::require(&mut schema, &["mute_all"]);
    if let Some(member) = schema.pointer_mut("/$defs/MemberState") {
        crate::event::require(member, &["until_ms"]);
    }
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    text.push('\n');
    text
}
