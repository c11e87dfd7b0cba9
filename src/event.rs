//! The normalized event: the one versioned contract between ingest and
//! every downstream consumer (the worker, users' stream processors).
//!
//! Both Easemob callback formats are turned into [`Event`] by
//! [`crate::ingest::normalize`]. The JSON shape is published as a JSON Schema
//! (`mutebridge schema`, checked in under `deploy/schema/`); changing a field
//! here is a contract change and needs a new `schema` version.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Value of the `schema` field and the `schema` Kafka header.
pub const SCHEMA_V1: &str = "mutebridge.event/v1";

/// Header on an event record that `mutebridge dlq replay` published again:
/// `{dlq topic}/{partition}/{offset}` of the dead letter. Consumers that
/// want each callback once can skip records that carry it.
pub const HEADER_REPLAY_OF: &str = "replay-of";
/// On a replayed record: the only target the worker applies it to.
pub const HEADER_REPLAY_TARGET: &str = "replay-target";
/// On a replayed record: the only rule the worker applies it with.
pub const HEADER_REPLAY_RULE: &str = "replay-rule";
/// On a `resync` marker (`mutebridge resync`): the `[targets.NAME]` to
/// bring in line with the group's mute state. Consumers that only want
/// callbacks skip records that carry it (or whose `kind` is `resync`).
pub const HEADER_RESYNC_TARGET: &str = "resync-target";

/// The action a record `dlq replay` published is for (its `replay-target`
/// and `replay-rule` headers); `None` parts match anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayScope {
    pub target: Option<String>,
    pub rule: Option<String>,
}

impl ReplayScope {
    /// Whether the action of `rule` on `target` is one the replay re-drives.
    pub fn wants(&self, rule: &str, target: &str) -> bool {
        self.target.as_deref().is_none_or(|t| t == target)
            && self.rule.as_deref().is_none_or(|r| r == rule)
    }
}

/// One group or chatroom change, normalized from either callback format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "mutebridge.event/v1")]
pub struct Event {
    /// Always `mutebridge.event/v1` for this version of the contract.
    #[schemars(extend("const" = "mutebridge.event/v1"))]
    pub schema: String,
    /// The sender's `callId`: the deduplication key for consumers.
    #[schemars(length(min = 1, max = 256))]
    pub id: String,
    /// Which IM platform sent the callback.
    pub source: Source,
    /// Which callback format it arrived in (or `reconciled`: read from
    /// Easemob's REST API, not called back).
    pub format: Format,
    /// The sender's application key (`org#app`).
    pub appkey: String,
    /// Group or chatroom.
    pub scope: Scope,
    /// Group or chatroom ID; also the Kafka record key. Never blank, no
    /// control characters.
    #[schemars(length(min = 1, max = 256))]
    pub group_id: String,
    /// What happened.
    pub kind: EventKind,
    /// The raw operation as sent (`ban_group`, `UPDATE`, ...).
    pub operation: String,
    /// The raw `payload.type` of `group_op_event` callbacks; null for `muc`.
    pub subtype: Option<String>,
    /// Who did it (a user ID or `@ppAdmin`); null when the callback does not say.
    pub operator: Option<String>,
    /// The users the change is about; empty when it is about the whole group.
    pub members: Vec<String>,
    /// Mute state for `mute_all`, `unmute_all` and `member_muted`; null otherwise.
    pub mute: Option<Mute>,
    /// The callback's `timestamp` (milliseconds since the epoch).
    pub occurred_at_ms: i64,
    /// When mutebridge accepted the callback (milliseconds since the epoch).
    pub received_at_ms: i64,
    /// Kind-specific extras: announcement text, file info, parsed metadata,
    /// member count, and for `unknown` the raw operation fields.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// The IM platform a callback came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Easemob,
    /// Written by mutebridge itself (a `resync` marker), not a callback.
    Mutebridge,
}

/// The callback format an event arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Legacy `chat_type: "muc"` callbacks.
    Muc,
    /// `event: "group_op_event"` callbacks.
    GroupOpEvent,
    /// Not a callback: a marker `mutebridge resync` published, or a mute
    /// state the worker re-applies for it.
    Resync,
    /// Not a callback: a correction `mutebridge reconcile` published after
    /// reading Easemob's REST API (a callback that never arrived);
    /// `occurred_at_ms` is the server time of the read.
    Reconciled,
}

/// Whether the event concerns a group or a chatroom.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Group,
    Chatroom,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Group => "group",
            Scope::Chatroom => "chatroom",
        }
    }

    /// Parses `group` or `chatroom`.
    pub fn from_name(name: &str) -> Option<Scope> {
        match name {
            "group" => Some(Scope::Group),
            "chatroom" => Some(Scope::Chatroom),
            _ => None,
        }
    }
}

impl EventKind {
    /// The kinds that change a mute state, guarded against late delivery
    /// (see [`crate::state`]).
    pub const MUTE: [EventKind; 4] = [
        EventKind::MuteAll,
        EventKind::UnmuteAll,
        EventKind::MemberMuted,
        EventKind::MemberUnmuted,
    ];

    /// True for the four kinds in [`EventKind::MUTE`].
    pub fn is_mute(self) -> bool {
        EventKind::MUTE.contains(&self)
    }
}

/// Mute state carried by mute events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum Mute {
    /// `mute_all` (`all: true`) or `unmute_all` (`all: false`).
    All { all: bool },
    /// `member_muted`: muted until this instant (ms), or null when permanent
    /// or when the callback does not say (legacy `add_mute` never does).
    Until { until_ms: Option<i64> },
}

macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What happened to the group or chatroom.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum EventKind {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)*
        }

        impl EventKind {
            /// Every kind, in contract order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The snake_case name used in JSON, headers and metric labels.
            pub fn as_str(self) -> &'static str {
                match self { $(EventKind::$variant => $name,)* }
            }

            /// Parses a snake_case kind name.
            pub fn from_name(name: &str) -> Option<EventKind> {
                match name { $($name => Some(EventKind::$variant),)* _ => None }
            }
        }
    };
}

event_kinds! {
    /// Everyone in the group is muted.
    MuteAll => "mute_all",
    /// The group-wide mute is lifted.
    UnmuteAll => "unmute_all",
    /// `members` are muted (see `mute.until_ms`).
    MemberMuted => "member_muted",
    /// `members` are unmuted.
    MemberUnmuted => "member_unmuted",
    /// `members` are exempted from mute-all.
    AllowlistAdded => "allowlist_added",
    AllowlistRemoved => "allowlist_removed",
    /// `members` are blocked from the group (Easemob's "blacklist").
    BlocklistAdded => "blocklist_added",
    BlocklistRemoved => "blocklist_removed",
    MemberJoined => "member_joined",
    MemberLeft => "member_left",
    /// `members` were removed by someone else (or dropped offline from a chatroom).
    MemberKicked => "member_kicked",
    JoinRequested => "join_requested",
    JoinRequestAccepted => "join_request_accepted",
    Invited => "invited",
    InviteAccepted => "invite_accepted",
    InviteDeclined => "invite_declined",
    GroupCreated => "group_created",
    GroupDestroyed => "group_destroyed",
    GroupUpdated => "group_updated",
    GroupDisabled => "group_disabled",
    GroupEnabled => "group_enabled",
    OwnerChanged => "owner_changed",
    AdminAdded => "admin_added",
    AdminRemoved => "admin_removed",
    SuperAdminAdded => "super_admin_added",
    SuperAdminRemoved => "super_admin_removed",
    AnnouncementUpdated => "announcement_updated",
    AnnouncementDeleted => "announcement_deleted",
    FileUploaded => "file_uploaded",
    FileDeleted => "file_deleted",
    /// A member blocks the group's messages for themselves.
    GroupShielded => "group_shielded",
    GroupUnshielded => "group_unshielded",
    MetadataSet => "metadata_set",
    MetadataDeleted => "metadata_deleted",
    MemberMetadataUpdated => "member_metadata_updated",
    /// An operation mutebridge does not know yet; the raw fields are in `attributes`.
    Unknown => "unknown",
    /// Not a change: a marker from `mutebridge resync` asking the worker
    /// that owns the group to re-apply its mute state to the target named
    /// in `attributes.target` (and the `resync-target` header).
    Resync => "resync",
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON Schema of [`Event`], pretty-printed, as `mutebridge schema` prints it.
pub fn json_schema() -> String {
    let mut schema = serde_json::to_value(schemars::schema_for!(Event)).expect("a schema is JSON");
    // Nullable fields are always present (as null) in what we publish;
    // schemars marks `Option` fields optional, so say so explicitly.
    require(&mut schema, &["subtype", "operator", "mute"]);
    if let Some(Value::Array(variants)) = schema.pointer_mut("/$defs/Mute/anyOf") {
        for variant in variants
            .iter_mut()
            .filter(|v| v.pointer("/properties/until_ms").is_some())
        {
            require(variant, &["until_ms"]);
        }
    }
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    text.push('\n');
    text
}

/// Marks `fields` required in the object schema `schema`.
pub(crate) fn require(schema: &mut Value, fields: &[&str]) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Value::Array(required) = object
        .entry("required")
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        for field in fields {
            if !required.iter().any(|r| r == field) {
                required.push(Value::String((*field).to_owned()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip_through_serde() {
        for kind in EventKind::ALL {
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(EventKind::from_name(kind.as_str()), Some(*kind));
            let back: EventKind = serde_json::from_str(&json).unwrap();
            assert_eq!(back, *kind);
        }
        assert_eq!(EventKind::ALL.len(), 37);
    }

    #[test]
    fn mute_shapes_are_distinct() {
        let all: Mute = serde_json::from_str(r#"{"all":true}"#).unwrap();
        assert_eq!(all, Mute::All { all: true });
        let until: Mute = serde_json::from_str(r#"{"until_ms":null}"#).unwrap();
        assert_eq!(until, Mute::Until { until_ms: None });
        let until: Mute = serde_json::from_str(r#"{"until_ms":5}"#).unwrap();
        assert_eq!(until, Mute::Until { until_ms: Some(5) });
        assert!(serde_json::from_str::<Mute>(r#"{"other":1}"#).is_err());
    }
}
