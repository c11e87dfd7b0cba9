//! What one mute target applied to one group (`mutebridge.applied/v1`).
//!
//! Each mute target runs as a consumer group of its own, so each keeps its
//! own record per group, in the state topic beside the group's newest state
//! (key `@{target}|{appkey}|{scope}|{group_id}`, same partition). It is the
//! target's guard (an event it already applied, redelivered after a crash,
//! is not sent again; one older than what it applied is stale) and what
//! the target renews: a provider that caps mutes (RongCloud chatroom gags
//! at 43,200 minutes, ZEGO at 30 days) ends a longer mute by itself, so
//! each dimension remembers when the provider will let go of it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Mark, Marks, MemberDim, Members};
use crate::event::Scope;

/// Value of the `schema` field and the `schema` Kafka header.
pub const APPLIED_SCHEMA_V1: &str = "mutebridge.applied/v1";

/// One target's record of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "mutebridge.applied/v1")]
pub struct AppliedState {
    /// Always `mutebridge.applied/v1` for this version of the contract.
    #[schemars(extend("const" = "mutebridge.applied/v1"))]
    pub schema: String,
    /// The `[targets.NAME]` this record belongs to.
    pub target: String,
    /// The sender's application key (`org#app`).
    pub appkey: String,
    pub scope: Scope,
    /// Group or chatroom ID, as in the events.
    #[schemars(length(min = 1, max = 256))]
    pub group_id: String,
    /// The group-wide mute; null until the target judged a `mute_all` or
    /// `unmute_all` of the group.
    pub mute_all: Option<AppliedDim>,
    /// Each member the target judged a member mute or unmute for.
    #[schemars(with = "std::collections::BTreeMap<String, AppliedDim>")]
    pub members: Members<AppliedDim>,
    /// When the worker wrote this record (milliseconds since the epoch).
    pub updated_at_ms: i64,
}

/// One dimension as the target has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppliedDim {
    pub muted: bool,
    /// End of a member mute at the source (ms since the epoch); null when
    /// permanent, unknown, unmuted, and for the group-wide mute.
    pub until_ms: Option<i64>,
    /// The `occurred_at_ms` of the event that set it: older events are stale.
    pub at_ms: i64,
    /// The `id` of that event: the same event again is a duplicate.
    pub event_id: String,
    /// When the provider accepted it (ms since the epoch); null when it was
    /// judged but not applied (skipped, superseded by a newer state, or
    /// dead-lettered).
    pub applied_at_ms: Option<i64>,
    /// When the provider will end this mute by itself although the group's
    /// mute goes on (its longest mute cut it short); the worker re-applies
    /// it before then. Null when the provider holds it as long as the group.
    pub lapses_at_ms: Option<i64>,
}

impl MemberDim for AppliedDim {
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

impl AppliedDim {
    fn mark(&self) -> Mark<'_> {
        Mark {
            at_ms: self.at_ms,
            event_id: &self.event_id,
            muted: self.muted,
        }
    }
}

impl Marks for AppliedState {
    fn mute_all_mark(&self) -> Option<Mark<'_>> {
        self.mute_all.as_ref().map(AppliedDim::mark)
    }

    fn member_mark(&self, member: &str) -> Option<Mark<'_>> {
        self.members.get(member).map(AppliedDim::mark)
    }
}

/// The record key of `target`'s record of a group:
/// `@{target}|{appkey}|{scope}|{group_id}`. Appkeys never start with `@`,
/// so it never equals a group state's key.
pub fn key(target: &str, appkey: &str, scope: Scope, group_id: &str) -> String {
    format!("@{target}|{}", super::key(appkey, scope, group_id))
}

/// The prefix of every key of `target`'s records.
pub fn key_prefix(target: &str) -> String {
    format!("@{target}|")
}

impl AppliedState {
    /// An empty record of `target` for a group.
    pub fn new(target: &str, appkey: &str, scope: Scope, group_id: &str) -> AppliedState {
        AppliedState {
            schema: APPLIED_SCHEMA_V1.into(),
            target: target.into(),
            appkey: appkey.into(),
            scope,
            group_id: group_id.into(),
            mute_all: None,
            members: Members::default(),
            updated_at_ms: 0,
        }
    }

    /// This record's key.
    pub fn key(&self) -> String {
        key(&self.target, &self.appkey, self.scope, &self.group_id)
    }

    /// The group's newest-state key (where the group's newest state is).
    pub fn group_key(&self) -> String {
        super::key(&self.appkey, self.scope, &self.group_id)
    }

    /// The earliest instant a dimension of it lapses at the provider.
    pub fn next_lapse_ms(&self) -> Option<i64> {
        let members = self.members.iter().filter_map(|(_, d)| d.lapses_at_ms);
        self.mute_all
            .as_ref()
            .and_then(|d| d.lapses_at_ms)
            .into_iter()
            .chain(members)
            .min()
    }
}

/// The JSON Schema of [`AppliedState`], pretty-printed, as `mutebridge
/// schema applied` prints it.
pub fn json_schema() -> String {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(AppliedState)).expect("a schema is JSON");
    crate::event::require(&mut schema, &["mute_all"]);
    if let Some(dim) = schema.pointer_mut("/$defs/AppliedDim") {
        crate::event::require(dim, &["until_ms", "applied_at_ms", "lapses_at_ms"]);
    }
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    text.push('\n');
    text
}
