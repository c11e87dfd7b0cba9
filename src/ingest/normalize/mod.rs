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

use serde_json::{Map, Value};

use crate::event::{Event, EventKind, Format, Mute, Scope, Source, SCHEMA_V1};
use crate::ingest::verify::{BadRequest, Verified};

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
        legacy(&v, received_at_ms)?
    } else if body.get("event").and_then(Value::as_str) == Some("group_op_event") {
        group_op_event(&v, received_at_ms)?
    } else {
        return Err(BadRequest::new(
            "not a group or chatroom callback: expected `chat_type: \"muc\"` or `event: \"group_op_event\"`",
        ));
    };
    Ok(VerifiedEvent(event))
}

fn base(v: &Verified, format: Format, received_at_ms: i64) -> Event {
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

fn group_id(body: &Map<String, Value>, key: &str) -> Result<String, BadRequest> {
    match body.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(BadRequest(format!(
            "field `{key}` (the group or chatroom ID) is empty"
        ))),
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

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A user list that may be an array of strings or a single string.
fn user_list(obj: &Map<String, Value>, keys: &[&str]) -> Vec<String> {
    for key in keys {
        match obj.get(*key) {
            Some(Value::Array(items)) => {
                return items
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            Some(Value::String(s)) if !s.is_empty() => return vec![s.clone()],
            _ => {}
        }
    }
    Vec::new()
}

/// The user ID inside a legacy JID `{appkey}_{user}@easemob.com/{resource}`;
/// `None` for anything else (the appkey alone, a group ID, an anonymized value).
fn user_from_jid(jid: &str, appkey: &str) -> Option<String> {
    let rest = jid.strip_prefix(appkey)?.strip_prefix('_')?;
    let user = rest.split(['@', '/']).next().unwrap_or_default();
    (!user.is_empty()).then(|| user.to_owned())
}

fn legacy_kind(operation: &str) -> EventKind {
    use EventKind::*;
    match operation {
        "create" => GroupCreated,
        "destroy" => GroupDestroyed,
        "apply" => JoinRequested,
        "apply_accept" => JoinRequestAccepted,
        "invite" => Invited,
        "invite_accept" => InviteAccepted,
        "invite_decline" => InviteDeclined,
        "kick" => MemberKicked,
        "ban" => BlocklistAdded,
        "allow" => BlocklistRemoved,
        "update" => GroupUpdated,
        "block" => GroupShielded,
        "unblock" => GroupUnshielded,
        "presence" | "direct_joined" => MemberJoined,
        "absence" | "leave" => MemberLeft,
        "assing_owner" | "assign_owner" => OwnerChanged,
        "add_admin" => AdminAdded,
        "remove_admin" => AdminRemoved,
        "add_mute" => MemberMuted,
        "remove_mute" => MemberUnmuted,
        "update_announcement" => AnnouncementUpdated,
        "delete_announcement" => AnnouncementDeleted,
        "upload_file" => FileUploaded,
        "delete_file" => FileDeleted,
        "add_user_white_list" => AllowlistAdded,
        "remove_user_white_list" => AllowlistRemoved,
        "ban_group" => MuteAll,
        "remove_ban_group" => UnmuteAll,
        "set_metadata" => MetadataSet,
        "delete_metadata" => MetadataDeleted,
        "group_member_metadata_update" => MemberMetadataUpdated,
        _ => Unknown,
    }
}

/// Metadata `ext` is JSON inside a string; keep it parsed when it parses.
/// Keys are trimmed because the docs' own example has `"operator "`.
fn parse_ext(ext: &str) -> Value {
    match serde_json::from_str::<Value>(ext) {
        Ok(Value::Object(map)) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.trim().to_owned(), v))
                .collect(),
        ),
        Ok(other) => other,
        Err(_) => Value::String(ext.to_owned()),
    }
}

fn legacy(v: &Verified, received_at_ms: i64) -> Result<Event, BadRequest> {
    let body = v.body();
    let mut e = base(v, Format::Muc, received_at_ms);
    e.group_id = group_id(body, "group_id")?;
    let payload = match body.get("payload") {
        Some(Value::Object(p)) => p,
        Some(_) => return Err(BadRequest::new("field `payload` must be an object")),
        None => return Err(BadRequest::new("field `payload` is missing")),
    };
    e.operation = match payload.get("operation") {
        Some(Value::String(op)) if !op.is_empty() => op.clone(),
        Some(Value::String(_)) | None => {
            return Err(BadRequest::new("field `payload.operation` is missing"))
        }
        Some(_) => {
            return Err(BadRequest::new(
                "field `payload.operation` must be a string",
            ))
        }
    };
    e.scope = match payload.get("is_chatroom") {
        Some(Value::Bool(true)) => Scope::Chatroom,
        Some(Value::Bool(false)) => Scope::Group,
        Some(_) => {
            return Err(BadRequest::new(
                "field `payload.is_chatroom` must be true or false",
            ))
        }
        None => return Err(BadRequest::new("field `payload.is_chatroom` is missing")),
    };
    e.kind = legacy_kind(&e.operation);

    let from = str_field(body, "from");
    let to = str_field(body, "to").filter(|to| *to != e.group_id);
    e.operator = from.and_then(|f| user_from_jid(f, v.appkey()));
    let attrs = &mut e.attributes;
    if let Some(from) = from {
        attrs.insert("from".into(), Value::String(from.to_owned()));
    }
    if let Some(msg_id) = str_field(body, "msg_id") {
        attrs.insert("msg_id".into(), Value::String(msg_id.to_owned()));
    }

    use EventKind::*;
    match e.kind {
        // `to` is the group here; the member is the sender of the presence.
        MemberJoined | MemberLeft if matches!(e.operation.as_str(), "presence" | "absence") => {
            e.members = e.operator.clone().into_iter().collect();
        }
        JoinRequested
        | JoinRequestAccepted
        | Invited
        | InviteAccepted
        | InviteDeclined
        | MemberKicked
        | BlocklistAdded
        | BlocklistRemoved
        | GroupShielded
        | GroupUnshielded
        | MemberJoined
        | MemberLeft
        | OwnerChanged
        | AdminAdded
        | AdminRemoved
        | MemberMuted
        | MemberUnmuted
        | AllowlistAdded
        | AllowlistRemoved
        | MemberMetadataUpdated => {
            e.members = to.map(str::to_owned).into_iter().collect();
        }
        _ => {}
    }
    match e.kind {
        MuteAll => e.mute = Some(Mute::All { all: true }),
        UnmuteAll => e.mute = Some(Mute::All { all: false }),
        // The legacy format never says how long a member mute lasts.
        MemberMuted => e.mute = Some(Mute::Until { until_ms: None }),
        OwnerChanged => {
            if let Some(to) = to {
                e.attributes
                    .insert("new_owner".into(), Value::String(to.to_owned()));
            }
        }
        AnnouncementUpdated => {
            if let Some(text) = payload.get("reason").and_then(Value::as_str) {
                e.attributes
                    .insert("announcement".into(), Value::String(text.to_owned()));
            }
        }
        FileUploaded => {
            let file = payload.get("reason").and_then(|r| r.get("data")).cloned();
            if let Some(file) = file {
                e.attributes.insert("file".into(), file);
            }
        }
        FileDeleted => {
            if let Some(id) = payload
                .get("reason")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                e.attributes
                    .insert("file_id".into(), Value::String(id.to_owned()));
            }
        }
        MetadataSet | MetadataDeleted | MemberMetadataUpdated => {
            // `from` is the room, `to` the member who changed the metadata.
            e.operator = str_field(body, "to").map(str::to_owned);
            if let Some(ext) = payload
                .get("event_info")
                .and_then(|i| i.get("ext"))
                .and_then(Value::as_str)
            {
                e.attributes.insert("metadata".into(), parse_ext(ext));
            }
        }
        Unknown => {
            e.attributes
                .insert("payload".into(), Value::Object(payload.clone()));
            if let Some(to) = str_field(body, "to") {
                e.attributes
                    .insert("to".into(), Value::String(to.to_owned()));
            }
        }
        _ => {
            if let Some(reason) = payload
                .get("reason")
                .filter(|r| !matches!(r, Value::String(s) if s.is_empty()))
            {
                e.attributes.insert("reason".into(), reason.clone());
            }
        }
    }
    Ok(e)
}

/// `(operation, payload.type)` of a `group_op_event` to its kind; `None`
/// when it depends on a payload field or is unknown.
fn op_event_kind(operation: &str, subtype: Option<&str>) -> Option<EventKind> {
    use EventKind::*;
    Some(match (operation, subtype?) {
        ("MUTE", "ADD") => MemberMuted,
        ("MUTE", "REMOVE") => MemberUnmuted,
        ("WHITE", "ADD") => AllowlistAdded,
        ("WHITE", "REMOVE") => AllowlistRemoved,
        ("BLOCK", "ADD") => BlocklistAdded,
        ("BLOCK", "REMOVE") => BlocklistRemoved,
        ("SHIELD", "ADD") => GroupShielded,
        ("SHIELD", "REMOVE") => GroupUnshielded,
        ("ADMIN", "ADD") => AdminAdded,
        ("ADMIN", "REMOVE") => AdminRemoved,
        ("ROOM_SUPER_ADMIN", "ADD") => SuperAdminAdded,
        ("ROOM_SUPER_ADMIN", "REMOVE") => SuperAdminRemoved,
        ("JOIN", "DIRECT" | "INVITE" | "APPLY") => MemberJoined,
        ("LEAVE", "QUIT" | "DELETE") => MemberLeft,
        ("LEAVE", "KICK" | "BLOCK") => MemberKicked,
        ("UPDATE", "INFO") => GroupUpdated,
        ("UPDATE", "OWNER") => OwnerChanged,
        ("SHARE_FILE", "ADD") => FileUploaded,
        ("SHARE_FILE", "REMOVE") => FileDeleted,
        _ => return None,
    })
}

/// Copies the listed payload fields into the attributes when present.
fn copy(attrs: &mut Map<String, Value>, payload: &Map<String, Value>, keys: &[&str]) {
    for key in keys {
        if let Some(value) = payload.get(*key) {
            attrs.insert((*key).to_owned(), value.clone());
        }
    }
}

fn group_op_event(v: &Verified, received_at_ms: i64) -> Result<Event, BadRequest> {
    let body = v.body();
    let mut e = base(v, Format::GroupOpEvent, received_at_ms);
    e.group_id = group_id(body, "id")?;
    e.scope = match body.get("type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("GROUP") => Scope::Group,
        Some(Value::String(t)) if t.eq_ignore_ascii_case("CHATROOM") => Scope::Chatroom,
        Some(_) => {
            return Err(BadRequest::new(
                "field `type` must be \"GROUP\" or \"CHATROOM\"",
            ))
        }
        None => {
            return Err(BadRequest::new(
                "field `type` (GROUP or CHATROOM) is missing",
            ))
        }
    };
    e.operation = match body.get("operation") {
        Some(Value::String(op)) if !op.is_empty() => op.clone(),
        Some(Value::String(_)) | None => {
            return Err(BadRequest::new("field `operation` is missing"))
        }
        Some(_) => return Err(BadRequest::new("field `operation` must be a string")),
    };
    e.operator = str_field(body, "operator").map(str::to_owned);
    let empty = Map::new();
    let payload = match body.get("payload") {
        Some(Value::Object(p)) => p,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err(BadRequest::new("field `payload` must be an object")),
    };
    e.subtype = str_field(payload, "type").map(str::to_owned);
    let subtype = e.subtype.as_deref();

    use EventKind::*;
    e.kind = match (e.operation.as_str(), subtype) {
        ("UPDATE", Some("MUTE")) => match payload.get("mute") {
            Some(Value::Bool(true)) => MuteAll,
            Some(Value::Bool(false)) => UnmuteAll,
            _ => {
                return Err(BadRequest::new(
                    "field `payload.mute` must be true or false",
                ))
            }
        },
        ("UPDATE", Some("DISABLE")) => {
            match payload.get("disable").or_else(|| payload.get("disabled")) {
                Some(Value::Bool(true)) => GroupDisabled,
                Some(Value::Bool(false)) => GroupEnabled,
                _ => {
                    return Err(BadRequest::new(
                        "field `payload.disable` must be true or false",
                    ))
                }
            }
        }
        ("UPDATE", Some("ANNOUNCEMENT")) => match payload.get("announcement") {
            Some(Value::String(_)) => AnnouncementUpdated,
            _ => AnnouncementDeleted,
        },
        ("CREATE", _) => GroupCreated,
        ("DELETE", _) => GroupDestroyed,
        (op, sub) => op_event_kind(op, sub).unwrap_or(Unknown),
    };

    let attrs = &mut e.attributes;
    copy(attrs, body, &["member_count"]);
    match e.kind {
        MuteAll => e.mute = Some(Mute::All { all: true }),
        UnmuteAll => e.mute = Some(Mute::All { all: false }),
        MemberMuted => {
            e.members = user_list(payload, &["member", "members"]);
            // A non-positive expiry is a permanent mute (-1 means "forever" in
            // Easemob's REST API); what the callback sends for it is unconfirmed.
            let until = payload
                .get("expire_timestamp")
                .and_then(Value::as_i64)
                .filter(|t| *t > 0);
            e.mute = Some(Mute::Until { until_ms: until });
            copy(attrs, payload, &["expire_timestamp"]);
        }
        AdminAdded | AdminRemoved | SuperAdminAdded | SuperAdminRemoved => {
            e.members = user_list(payload, &["admin", "super_admin", "member"]);
        }
        OwnerChanged => {
            e.members = user_list(payload, &["new_owner", "owner"]);
            copy(attrs, payload, &["owner", "new_owner"]);
        }
        GroupCreated => {
            e.members = user_list(payload, &["member"]);
            copy(attrs, payload, &["role", "info"]);
        }
        GroupUpdated => copy(attrs, payload, &["info"]),
        AnnouncementUpdated => copy(attrs, payload, &["announcement"]),
        FileUploaded | FileDeleted => copy(attrs, payload, &["share_file"]),
        GroupDisabled | GroupEnabled | GroupDestroyed | AnnouncementDeleted => {}
        Unknown => {
            attrs.insert("payload".into(), Value::Object(payload.clone()));
        }
        _ => {
            e.members = user_list(payload, &["member", "members"]);
            copy(attrs, payload, &["expire_timestamp", "action", "options"]);
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EasemobApp, Secret};
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
            }],
            0,
        );
        let u = Unverified::parse(body.to_string().as_bytes()).unwrap();
        normalize(verifier.verify(u, 0).unwrap(), 1).map(VerifiedEvent::into_event)
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
