//! The newer format: `event: "group_op_event"` callbacks, an `operation`
//! plus `payload.type`, members in the payload.

use serde_json::{Map, Value};

use super::{base, group_id, name_field, str_field, user_list};
use crate::event::{Event, EventKind, Format, Mute, Scope};
use crate::ingest::verify::check_id;
use crate::ingest::verify::{millis, BadRequest, Verified};

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

pub(super) fn group_op_event(v: &Verified, received_at_ms: i64) -> Result<Event, BadRequest> {
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
        Some(Value::String(op)) if !op.is_empty() => {
            check_id("operation", "the operation", op)?;
            op.clone()
        }
        Some(Value::String(_)) | None => {
            return Err(BadRequest::new("field `operation` is missing"))
        }
        Some(_) => return Err(BadRequest::new("field `operation` must be a string")),
    };
    e.operator = name_field(body, "operator", "operator", "the operator")?.map(str::to_owned);
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
            e.members = user_list(payload, &["member", "members"])?;
            // A non-positive expiry is a permanent mute (-1 means "forever" in
            // Easemob's REST API); what the callback sends for it is unconfirmed.
            // Anything unreadable is refused: guessing "permanent" would turn
            // a timed mute into a permanent one downstream.
            let until = match payload.get("expire_timestamp") {
                None | Some(Value::Null) => None,
                Some(v) => match millis(v) {
                    Some((ms, _)) => (ms > 0).then_some(ms),
                    None => {
                        return Err(BadRequest::new(
                            "field `payload.expire_timestamp` must be an integer number of milliseconds (a JSON integer or a string of digits), like `timestamp`",
                        ))
                    }
                },
            };
            e.mute = Some(Mute::Until { until_ms: until });
            copy(attrs, payload, &["expire_timestamp"]);
        }
        AdminAdded | AdminRemoved | SuperAdminAdded | SuperAdminRemoved => {
            e.members = user_list(payload, &["admin", "super_admin", "member"])?;
        }
        OwnerChanged => {
            e.members = user_list(payload, &["new_owner", "owner"])?;
            copy(attrs, payload, &["owner", "new_owner"]);
        }
        GroupCreated => {
            e.members = user_list(payload, &["member"])?;
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
            e.members = user_list(payload, &["member", "members"])?;
            copy(attrs, payload, &["expire_timestamp", "action", "options"]);
        }
    }
    Ok(e)
}
