//! Normalization: a [`Verified`] callback in either Easemob format becomes
//! one [`Event`].
//!
//! The format is read from the body (`chat_type: "muc"` or
//! `event: "group_op_event"`), never from config. Operations we do not know
//! are not errors: they become kind `unknown` with their raw fields, so
//! nothing is dropped and the sender is never given a reason to ban the rule.
//!
//! Traps the providers' docs set, handled here on purpose:
//! - legacy `ban_group` / `remove_ban_group` are mute-all / unmute-all;
//! - legacy `ban` is the blocklist, never a mute (one doc example labels a
//!   member mute `ban`; we follow the operation table, not the example);
//! - legacy `add_mute` / `remove_mute` name the member in top-level `to`;
//! - `assing_owner` is spelt that way;
//! - chatroom `muc_id` sometimes lacks its suffix, so IDs come from
//!   `group_id` / `id` only.

mod group_op;
mod muc;

use serde_json::{Map, Value};

use crate::event::{Event, EventKind, Format, Scope, Source, SCHEMA_V1};
use crate::ingest::verify::{check_id, BadRequest, Verified};

/// An event built from a verified callback: the only thing the publisher
/// accepts. It cannot be constructed outside this module.
#[derive(Debug, Clone)]
pub struct VerifiedEvent(Event);

impl VerifiedEvent {
    pub fn event(&self) -> &Event {
        &self.0
    }

    pub fn into_event(self) -> Event {
        self.0
    }
}

/// Builds the normalized event; `received_at_ms` is when we accepted it.
pub fn normalize(v: Verified, received_at_ms: i64) -> Result<VerifiedEvent, BadRequest> {
    let body = v.body();
    let event = if body.get("chat_type").and_then(Value::as_str) == Some("muc") {
        muc::legacy(&v, received_at_ms)?
    } else if body.get("event").and_then(Value::as_str) == Some("group_op_event") {
        group_op::group_op_event(&v, received_at_ms)?
    } else {
        return Err(BadRequest::new(
            "not a group or chatroom callback: expected `chat_type: \"muc\"` or `event: \"group_op_event\"`",
        ));
    };
    Ok(VerifiedEvent(event))
}

pub(super) fn base(v: &Verified, format: Format, received_at_ms: i64) -> Event {
    Event {
        schema: SCHEMA_V1.to_string(),
        id: v.call_id().to_string(),
        source: Source::Easemob,
        format,
        appkey: v.appkey().to_string(),
        scope: Scope::Group,
        group_id: String::new(),
        kind: EventKind::Unknown,
        operation: String::new(),
        subtype: None,
        operator: None,
        members: Vec::new(),
        mute: None,
        occurred_at_ms: v.timestamp(),
        received_at_ms,
        attributes: Map::new(),
    }
}

pub(super) fn group_id(body: &Map<String, Value>, key: &str) -> Result<String, BadRequest> {
    match body.get(key) {
        Some(Value::String(s)) => {
            check_id(key, "the group or chatroom ID", s)?;
            Ok(s.clone())
        }
        // Some senders write numeric IDs as numbers; the digits are the ID.
        Some(Value::Number(n)) if n.is_u64() => Ok(n.to_string()),
        Some(_) => Err(BadRequest(format!(
            "field `{key}` (the group or chatroom ID) must be a string"
        ))),
        None => Err(BadRequest(format!(
            "field `{key}` (the group or chatroom ID) is missing"
        ))),
    }
}

pub(super) fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A user list under `payload` that may be an array of strings or a single
/// string. Each user is checked like an ID ([`check_id`]): user IDs reach
/// targets, logs and dead letters.
pub(super) fn user_list(
    obj: &Map<String, Value>,
    keys: &[&str],
) -> Result<Vec<String>, BadRequest> {
    for key in keys {
        let users: Vec<&str> = match obj.get(*key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .collect(),
            Some(Value::String(s)) if !s.is_empty() => vec![s],
            _ => continue,
        };
        for user in &users {
            check_id(&format!("payload.{key}"), "a member", user)?;
        }
        return Ok(users.into_iter().map(str::to_owned).collect());
    }
    Ok(Vec::new())
}

/// A string field that names something (an operation, a user) and reaches
/// log lines: checked like an ID when present and not empty.
pub(super) fn name_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    shown_as: &str,
    what: &str,
) -> Result<Option<&'a str>, BadRequest> {
    match str_field(obj, key) {
        Some(name) => check_id(shown_as, what, name).map(|()| Some(name)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::Secret;
    use crate::event::Mute;
    use crate::ingest::config::EasemobApp;
    use crate::ingest::verify::{sign, Unverified, Verifier};

    fn run(mut body: Value) -> Result<Event, BadRequest> {
        let obj = body.as_object_mut().unwrap();
        obj.insert("appkey".into(), "org#app".into());
        obj.insert("callId".into(), "org#app_1".into());
        obj.insert("timestamp".into(), 1700000000000i64.into());
        obj.insert(
            "security".into(),
            sign("org#app_1", "s", "1700000000000").into(),
        );
        let verifier = Verifier::new(
            &[EasemobApp {
                appkey: "org#app".into(),
                secrets: vec![Secret::new("s")],
                rest: None,
            }],
            0,
            300,
        );
        let u = Unverified::parse(body.to_string().as_bytes()).unwrap();
        normalize(verifier.verify(u, 1700000000000).unwrap(), 1).map(VerifiedEvent::into_event)
    }

    fn legacy_op(op: &str, chatroom: bool, to: &str) -> Value {
        serde_json::json!({
            "chat_type": "muc", "group_id": "g1", "to": to, "from": "org#app_alice@easemob.com/ios",
            "payload": {"operation": op, "is_chatroom": chatroom, "muc_id": "org#app_g1"}
        })
    }

    fn op_event(op: &str, payload: Value) -> Value {
        serde_json::json!({"event": "group_op_event", "id": "g1", "type": "GROUP", "operation": op,
                           "operator": "alice", "payload": payload})
    }

    #[test]
    fn legacy_traps() {
        let e = run(legacy_op("ban_group", true, "g1")).unwrap();
        assert_eq!(
            (e.kind, e.scope, e.mute),
            (
                EventKind::MuteAll,
                Scope::Chatroom,
                Some(Mute::All { all: true })
            )
        );
        assert!(e.members.is_empty());
        let e = run(legacy_op("ban", false, "bob")).unwrap();
        assert_eq!(e.kind, EventKind::BlocklistAdded);
        assert_eq!(e.mute, None);
        let e = run(legacy_op("add_mute", false, "bob")).unwrap();
        assert_eq!(e.kind, EventKind::MemberMuted);
        assert_eq!(e.members, ["bob"]);
        assert_eq!(e.mute, Some(Mute::Until { until_ms: None }));
        assert_eq!(e.operator.as_deref(), Some("alice"));
        let e = run(legacy_op("assing_owner", false, "bob")).unwrap();
        assert_eq!(e.kind, EventKind::OwnerChanged);
        let e = run(legacy_op("presence", false, "g1")).unwrap();
        assert_eq!(
            (e.kind, e.members.as_slice()),
            (EventKind::MemberJoined, &["alice".to_string()][..])
        );
    }

    #[test]
    fn unknown_operations_are_kept() {
        let e = run(legacy_op("brand_new", false, "bob")).unwrap();
        assert_eq!(e.kind, EventKind::Unknown);
        assert_eq!(e.operation, "brand_new");
        assert_eq!(e.attributes["payload"]["operation"], "brand_new");
        let e = run(op_event("PIN", serde_json::json!({"type": "ADD", "x": 1}))).unwrap();
        assert_eq!(
            (e.kind, e.subtype.as_deref()),
            (EventKind::Unknown, Some("ADD"))
        );
        assert_eq!(e.attributes["payload"]["x"], 1);
    }

    #[test]
    fn member_mute_expiry() {
        let e = run(op_event("MUTE", serde_json::json!({"type": "ADD", "member": ["a", "b"], "expire_timestamp": 1700000060000i64}))).unwrap();
        assert_eq!(e.kind, EventKind::MemberMuted);
        assert_eq!(e.members, ["a", "b"]);
        assert_eq!(
            e.mute,
            Some(Mute::Until {
                until_ms: Some(1700000060000)
            })
        );
        for permanent in [serde_json::json!(-1), serde_json::json!(null)] {
            let e = run(op_event(
                "MUTE",
                serde_json::json!({"type": "ADD", "member": ["a"], "expire_timestamp": permanent}),
            ))
            .unwrap();
            assert_eq!(e.mute, Some(Mute::Until { until_ms: None }));
        }
        let e = run(op_event(
            "MUTE",
            serde_json::json!({"type": "REMOVE", "member": ["a"]}),
        ))
        .unwrap();
        assert_eq!((e.kind, e.mute), (EventKind::MemberUnmuted, None));
    }

    #[test]
    fn op_event_table() {
        use EventKind::*;
        let cases = [
            (
                "UPDATE",
                serde_json::json!({"type": "MUTE", "mute": false}),
                UnmuteAll,
            ),
            (
                "UPDATE",
                serde_json::json!({"type": "DISABLE", "disabled": true}),
                GroupDisabled,
            ),
            (
                "UPDATE",
                serde_json::json!({"type": "DISABLE", "disable": false}),
                GroupEnabled,
            ),
            (
                "UPDATE",
                serde_json::json!({"type": "ANNOUNCEMENT", "announcement": "hi"}),
                AnnouncementUpdated,
            ),
            (
                "UPDATE",
                serde_json::json!({"type": "ANNOUNCEMENT"}),
                AnnouncementDeleted,
            ),
            (
                "UPDATE",
                serde_json::json!({"type": "OWNER", "owner": "a", "new_owner": "b"}),
                OwnerChanged,
            ),
            (
                "UPDATE",
                serde_json::json!({"type": "INFO", "info": {}}),
                GroupUpdated,
            ),
            (
                "WHITE",
                serde_json::json!({"type": "ADD", "member": ["a"]}),
                AllowlistAdded,
            ),
            (
                "BLOCK",
                serde_json::json!({"type": "REMOVE", "member": ["a"]}),
                BlocklistRemoved,
            ),
            (
                "SHIELD",
                serde_json::json!({"type": "ADD", "member": ["a"]}),
                GroupShielded,
            ),
            (
                "ADMIN",
                serde_json::json!({"type": "ADD", "admin": ["a"]}),
                AdminAdded,
            ),
            (
                "ROOM_SUPER_ADMIN",
                serde_json::json!({"type": "REMOVE", "admin": ["a"]}),
                SuperAdminRemoved,
            ),
            (
                "JOIN",
                serde_json::json!({"type": "INVITE", "member": ["a"]}),
                MemberJoined,
            ),
            (
                "LEAVE",
                serde_json::json!({"type": "KICK", "member": ["a"]}),
                MemberKicked,
            ),
            (
                "LEAVE",
                serde_json::json!({"type": "QUIT", "member": ["a"], "action": "user_offline"}),
                MemberLeft,
            ),
            (
                "CREATE",
                serde_json::json!({"member": ["a"], "role": {"a": "owner"}}),
                GroupCreated,
            ),
            (
                "SHARE_FILE",
                serde_json::json!({"type": "REMOVE", "share_file": []}),
                FileDeleted,
            ),
        ];
        for (op, payload, kind) in cases {
            let e = run(op_event(op, payload.clone())).unwrap();
            assert_eq!(e.kind, kind, "{op} {payload}");
        }
        let mut deleted = op_event("DELETE", Value::Null);
        deleted.as_object_mut().unwrap().remove("payload");
        assert_eq!(run(deleted).unwrap().kind, GroupDestroyed);
        let e = run(op_event(
            "UPDATE",
            serde_json::json!({"type": "OWNER", "owner": "a", "new_owner": "b"}),
        ))
        .unwrap();
        assert_eq!(e.members, ["b"]);
    }

    #[test]
    fn bad_inputs_say_which_field() {
        let mut no_id = op_event("UPDATE", serde_json::json!({"type": "MUTE", "mute": true}));
        no_id.as_object_mut().unwrap().remove("id");
        assert!(run(no_id).unwrap_err().0.contains("`id`"));
        let bad_mute = op_event("UPDATE", serde_json::json!({"type": "MUTE", "mute": "yes"}));
        assert!(run(bad_mute).unwrap_err().0.contains("payload.mute"));
        let mut no_group = legacy_op("kick", false, "bob");
        no_group.as_object_mut().unwrap().remove("group_id");
        assert!(run(no_group).unwrap_err().0.contains("group_id"));
        let neither = serde_json::json!({"event": "message"});
        assert!(run(neither).unwrap_err().0.contains("group_op_event"));
    }
}
