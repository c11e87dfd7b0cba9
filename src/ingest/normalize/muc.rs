//! The legacy format: `chat_type: "muc"` callbacks, one `operation` per
//! change, members as JIDs or in `to`.

use serde_json::Value;

use super::{base, group_id, name_field, str_field};
use crate::event::{Event, EventKind, Format, Mute, Scope};
use crate::ingest::verify::check_id;
use crate::ingest::verify::{BadRequest, Verified};

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

pub(super) fn legacy(v: &Verified, received_at_ms: i64) -> Result<Event, BadRequest> {
    let body = v.body();
    let mut e = base(v, Format::Muc, received_at_ms);
    e.group_id = group_id(body, "group_id")?;
    let payload = match body.get("payload") {
        Some(Value::Object(p)) => p,
        Some(_) => return Err(BadRequest::new("field `payload` must be an object")),
        None => return Err(BadRequest::new("field `payload` is missing")),
    };
    e.operation = match payload.get("operation") {
        Some(Value::String(op)) if !op.is_empty() => {
            check_id("payload.operation", "the operation", op)?;
            op.clone()
        }
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

    // `from` is the operator's JID and `to` a member (or the group): both
    // reach targets and log lines, so they are checked like IDs.
    let from = name_field(body, "from", "from", "the operator's JID")?;
    let to = name_field(body, "to", "to", "a member")?.filter(|to| *to != e.group_id);
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
