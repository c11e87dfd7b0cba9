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
//! Beside it, each mute target keeps what *it* applied ([`applied`]): the
//! worker runs one consumer group per target, so a target that lags or is
//! down has its own history, and a group's newest state is known to all.
//!
//! The JSON shapes are published as JSON Schemas (`mutebridge schema state`,
//! `mutebridge schema applied`, checked in under `deploy/schema/`); changing
//! one is a contract change.

pub mod applied;
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
    pub members: Members<MemberState>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members<D>(Vec<(String, D)>);

impl<D> Default for Members<D> {
    fn default() -> Self {
        Members(Vec::new())
    }
}

impl<D> Members<D> {
    /// The member's dimension.
    pub fn get(&self, member: &str) -> Option<&D> {
        self.find(member).ok().map(|i| &self.0[i].1)
    }

    /// The member's dimension, to change it in place.
    pub fn get_mut(&mut self, member: &str) -> Option<&mut D> {
        self.find(member).ok().map(|i| &mut self.0[i].1)
    }

    /// Sets the member's dimension.
    pub fn insert(&mut self, member: String, state: D) {
        match self.find(&member) {
            Ok(i) => self.0[i].1 = state,
            Err(i) => self.0.insert(i, (member, state)),
        }
    }

    /// Keeps the members `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &D) -> bool) {
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
    pub fn iter(&self) -> impl Iterator<Item = (&str, &D)> {
        self.0.iter().map(|(m, s)| (m.as_str(), s))
    }

    fn find(&self, member: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(m, _)| m.as_str().cmp(member))
    }
}

impl<D: Serialize> Serialize for Members<D> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(m, s)| (m, s)))
    }
}

impl<'de, D: Deserialize<'de>> Deserialize<'de> for Members<D> {
    fn deserialize<De: serde::Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        let map = BTreeMap::<String, D>::deserialize(deserializer)?;
        let mut members: Vec<(String, D)> = map.into_iter().collect();
        members.shrink_to_fit();
        Ok(Members(members))
    }
}

impl<D> std::ops::Index<&str> for Members<D> {
    type Output = D;

    fn index(&self, member: &str) -> &D {
        self.get(member).expect("no such member")
    }
}

/// The record key of a group's state: `{appkey}|{scope}|{group_id}`.
pub fn key(appkey: &str, scope: Scope, group_id: &str) -> String {
    format!("{appkey}|{}|{group_id}", scope.as_str())
}

/// Which event set a dimension (the group-wide mute, or one member), and
/// when: what the stale-event guard compares an event with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark<'a> {
    /// The `occurred_at_ms` of the event that set it.
    pub at_ms: i64,
    /// The `id` of that event.
    pub event_id: &'a str,
    pub muted: bool,
}

/// A group's dimensions as the guard reads them: the newest state
/// ([`GroupState`]) or what one target applied ([`applied::AppliedState`]).
pub trait Marks {
    fn mute_all_mark(&self) -> Option<Mark<'_>>;
    fn member_mark(&self, member: &str) -> Option<Mark<'_>>;
}

impl Marks for GroupState {
    fn mute_all_mark(&self) -> Option<Mark<'_>> {
        self.mute_all.as_ref().map(|d| Mark {
            at_ms: d.at_ms,
            event_id: &d.event_id,
            muted: d.muted,
        })
    }

    fn member_mark(&self, member: &str) -> Option<Mark<'_>> {
        self.members.get(member).map(|d| Mark {
            at_ms: d.at_ms,
            event_id: &d.event_id,
            muted: d.muted,
        })
    }
}

/// A member dimension, as far as pruning needs it.
pub trait MemberDim {
    fn muted(&self) -> bool;
    /// End of the mute; `None` when permanent, unknown or unmuted.
    fn until_ms(&self) -> Option<i64>;
    fn at_ms(&self) -> i64;
}

impl MemberDim for MemberState {
    fn muted(&self) -> bool {
        self.muted
    }
    fn until_ms(&self) -> Option<i64> {
        self.until_ms
    }
    fn at_ms(&self) -> i64 {
        self.at_ms
    }
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
