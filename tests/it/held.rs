//! What the ZEGO and RongCloud stand-ins hold: the mute state each applied
//! from the writes it accepted, the read APIs that answer it as the
//! providers document them (paging, field spellings, the quirks), and the
//! changes a moderator or an incident makes behind mutebridge's back.
//! `providers.rs` routes the reads here after checking their signature
//! and taking them from the app's rate limit, like every call.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An end: `None` = permanent.
type End = Option<i64>;

fn active(end: &End, now: i64) -> bool {
    end.is_none_or(|t| t > now)
}

// ---------------------------------------------------------------- ZEGO

/// The reads ZEGO serves (POST, JSON body).
pub const ZEGO_READS: [&str; 2] = ["FetchForbidGroupList", "QueryGroupInfo"];

#[derive(Debug, Default, Clone)]
struct ZegoGroup {
    /// Mute-all, until when.
    all: Option<End>,
    /// Muted roles, until when.
    roles: Option<(Vec<i64>, End)>,
    members: BTreeMap<String, End>,
}

/// One ZEGO app's mute state.
#[derive(Debug)]
pub struct ZegoHeld {
    groups: BTreeMap<String, ZegoGroup>,
    /// Groups per `FetchForbidGroupList` page ("10,000 by default").
    pub page_size: usize,
    /// End the listing with `FetchEnd: 0, NextFlag: 0` (the request table's
    /// rule) instead of the example's `FetchEnd: 1` with a `NextFlag`.
    pub end_with_zero_flag: bool,
}

impl Default for ZegoHeld {
    fn default() -> Self {
        ZegoHeld {
            groups: BTreeMap::new(),
            page_size: 10_000,
            end_with_zero_flag: false,
        }
    }
}

/// `Duration` as ZEGO reads it: -1 permanent, else seconds from now.
fn zego_end(duration: i64) -> End {
    (duration != -1).then(|| now_ms() + duration * 1000)
}

impl ZegoHeld {
    /// An accepted `MuteGroup`: `Duration=0` lifts every group-level mute;
    /// `IsAllMuted=true` mutes everyone; a role list replaces the roles.
    pub fn mute_group(&mut self, group: &str, all: Option<bool>, roles: Vec<i64>, duration: i64) {
        let g = self.groups.entry(group.to_owned()).or_default();
        if duration == 0 {
            g.all = None;
            g.roles = None;
            return;
        }
        if all == Some(true) {
            g.all = Some(zego_end(duration));
        } else if !roles.is_empty() {
            g.roles = Some((roles, zego_end(duration)));
        }
    }

    /// An accepted `MuteGroupMembers` for `users`: restarts each timer.
    pub fn mute_members(&mut self, group: &str, users: &[String], duration: i64) {
        let g = self.groups.entry(group.to_owned()).or_default();
        for u in users {
            if duration == 0 {
                g.members.remove(u);
            } else {
                g.members.insert(u.clone(), zego_end(duration));
            }
        }
    }

    /// The `ForbidType` bit sum of a group now (an ended mute counts no
    /// more: whether ZEGO clears the bit by itself is unconfirmed).
    pub fn bits(&self, group: &str) -> u32 {
        let now = now_ms();
        let Some(g) = self.groups.get(group) else {
            return 0;
        };
        let mut bits = 0;
        if g.all.as_ref().is_some_and(|e| active(e, now)) {
            bits |= 1;
        }
        if g.roles.as_ref().is_some_and(|(_, e)| active(e, now)) {
            bits |= 2;
        }
        if g.members.values().any(|e| active(e, now)) {
            bits |= 4;
        }
        bits
    }

    /// The members muted now (what a client SDK would see; the server API
    /// has no such read), with their ends.
    pub fn muted_members(&self, group: &str) -> BTreeMap<String, End> {
        let now = now_ms();
        self.groups
            .get(group)
            .map(|g| {
                g.members
                    .iter()
                    .filter(|(_, e)| active(e, now))
                    .map(|(u, e)| (u.clone(), *e))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the group's mute-all is on now, and until when.
    pub fn mute_all(&self, group: &str) -> Option<End> {
        let now = now_ms();
        self.groups
            .get(group)
            .and_then(|g| g.all)
            .filter(|e| active(e, now))
    }

    // Behind mutebridge's back (the console, an incident):

    pub fn console_unmute_all(&mut self, group: &str) {
        self.mute_group(group, None, Vec::new(), 0);
    }
    pub fn console_mute_all(&mut self, group: &str, duration: i64) {
        self.mute_group(group, Some(true), Vec::new(), duration);
    }
    pub fn console_mute_roles(&mut self, group: &str, roles: &[i64], duration: i64) {
        self.mute_group(group, Some(false), roles.to_vec(), duration);
    }
    pub fn console_unmute_member(&mut self, group: &str, user: &str) {
        self.mute_members(group, &[user.to_owned()], 0);
    }
    pub fn console_mute_member(&mut self, group: &str, user: &str, duration: i64) {
        self.mute_members(group, &[user.to_owned()], duration);
    }
    /// The app lost the group's state (a migration, a restore).
    pub fn lose(&mut self, group: &str) {
        self.groups.remove(group);
    }

    fn fetch_forbid_group_list(&self, start: u64) -> Value {
        let listed: Vec<(String, u32)> = self
            .groups
            .keys()
            .map(|g| (g.clone(), self.bits(g)))
            .filter(|(_, b)| *b != 0)
            .collect();
        let from = (start as usize).min(listed.len());
        let to = (from + self.page_size).min(listed.len());
        let last = to == listed.len();
        let page: Vec<Value> = listed[from..to]
            .iter()
            .map(|(g, b)| json!({"GroupId": g, "ForbidType": b}))
            .collect();
        let (fetch_end, next) = match (last, self.end_with_zero_flag) {
            (false, _) => (0, to as u64),
            // The documented example: FetchEnd 1 and a NextFlag anyway.
            (true, false) => (1, to as u64 + 100_000),
            (true, true) => (0, 0),
        };
        json!({"Code": 0, "Message": "success", "RequestId": "fake", "FetchEnd": fetch_end, "NextFlag": next, "GroupList": page})
    }

    fn query_group_info(&self, group: &str) -> Value {
        let now = now_ms();
        let g = self.groups.get(group).cloned().unwrap_or_default();
        let all = g.all.filter(|e| active(e, now));
        let roles = g.roles.filter(|(_, e)| active(e, now));
        // Documented never to come together, shown together: both are sent.
        let expire = all
            .or(roles.as_ref().map(|(_, e)| *e))
            .flatten()
            .unwrap_or(0);
        json!({
            "Code": 0, "Message": "success", "RequestId": "fake",
            "GroupInfo": {"GroupId": group},
            "IsAllForbid": all.is_some(),
            "ForbidList": roles.map(|(r, _)| r).unwrap_or_default(),
            "ForbidExpireTime": expire,
        })
    }
}

fn zego_error(code: i64, message: &str) -> Response {
    axum::Json(json!({"Code": code, "Message": message, "RequestId": "fake"})).into_response()
}

/// Serves a read `action` (already signed and admitted by the rate limit):
/// a POST with a JSON body naming `FromUserId` (and `GroupId`, `StartFlag`).
pub fn zego_read(
    held: &ZegoHeld,
    action: &str,
    post: bool,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, String> {
    if !post {
        return Err(format!("{action} is a POST"));
    }
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return Err(format!("{action} takes a JSON body"));
    }
    let Ok(b) = serde_json::from_slice::<Value>(body) else {
        return Err(format!("{action}: the body is not JSON"));
    };
    let from = b["FromUserId"].as_str().unwrap_or("");
    if from.is_empty() || from.len() > 32 {
        return Err("FromUserId is required, at most 32 characters".into());
    }
    Ok(match action {
        "FetchForbidGroupList" => match b["StartFlag"].as_u64() {
            Some(start) => axum::Json(held.fetch_forbid_group_list(start)).into_response(),
            None => return Err("StartFlag is required".into()),
        },
        _ => match b["GroupId"].as_str() {
            Some(g) if !g.is_empty() && g.len() <= 32 => {
                axum::Json(held.query_group_info(g)).into_response()
            }
            _ => return Err("GroupId is required, at most 32 characters".into()),
        },
    })
}

/// A rejected read, as ZEGO answers bad parameters.
pub fn zego_bad_params(why: &str) -> Response {
    zego_error(660000002, why)
}

// ----------------------------------------------------------- RongCloud

/// The reads RongCloud serves (form POSTs like the writes).
pub const RONG_READS: [&str; 5] = [
    "/group/ban/query.json",
    "/chatroom/ban/query.json",
    "/chatroom/ban/check.json",
    "/group/user/gag/list.json",
    "/chatroom/user/gag/list.json",
];

#[derive(Debug, Clone)]
struct Gag {
    start: i64,
    end: End,
}

/// One RongCloud app's mute state.
#[derive(Debug)]
pub struct RongHeld {
    groups_banned: BTreeSet<String>,
    rooms_banned: BTreeSet<String>,
    group_gags: BTreeMap<String, BTreeMap<String, Gag>>,
    room_gags: BTreeMap<String, BTreeMap<String, Gag>>,
    /// The data centre's clock, in which list times are written
    /// (seconds east of UTC: Beijing +8 h, the global data centres 0).
    pub utc_offset: i32,
}

impl Default for RongHeld {
    fn default() -> Self {
        RongHeld {
            groups_banned: BTreeSet::new(),
            rooms_banned: BTreeSet::new(),
            group_gags: BTreeMap::new(),
            room_gags: BTreeMap::new(),
            utc_offset: 8 * 3600,
        }
    }
}

fn form_one<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn form_all(form: &[(String, String)], key: &str) -> Vec<String> {
    form.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

impl RongHeld {
    /// An accepted write to `path` with its form.
    pub fn apply(&mut self, path: &str, form: &[(String, String)]) {
        let now = now_ms();
        let users = form_all(form, "userId");
        let minutes = form_one(form, "minute").and_then(|m| m.parse::<i64>().ok());
        let gag = |minute: Option<i64>| Gag {
            start: now,
            end: match minute {
                Some(0) | None => None,
                Some(m) => Some(now + m * 60_000),
            },
        };
        match path {
            "/group/ban/add.json" => self.groups_banned.extend(form_all(form, "groupId")),
            "/group/ban/rollback.json" => {
                for g in form_all(form, "groupId") {
                    self.groups_banned.remove(&g);
                }
            }
            "/chatroom/ban/add.json" => self.rooms_banned.extend(form_all(form, "chatroomId")),
            "/chatroom/ban/rollback.json" => {
                for r in form_all(form, "chatroomId") {
                    self.rooms_banned.remove(&r);
                }
            }
            "/group/user/gag/add.json" | "/chatroom/user/gag/add.json" => {
                let (key, gags) = if path.starts_with("/group") {
                    ("groupId", &mut self.group_gags)
                } else {
                    ("chatroomId", &mut self.room_gags)
                };
                let id = form_one(form, key).unwrap_or("").to_owned();
                let place = gags.entry(id).or_default();
                for u in users {
                    place.insert(u, gag(minutes));
                }
            }
            "/group/user/gag/rollback.json" | "/chatroom/user/gag/rollback.json" => {
                let (key, gags) = if path.starts_with("/group") {
                    ("groupId", &mut self.group_gags)
                } else {
                    ("chatroomId", &mut self.room_gags)
                };
                let id = form_one(form, key).unwrap_or("");
                if let Some(place) = gags.get_mut(id) {
                    for u in &users {
                        place.remove(u);
                    }
                }
            }
            _ => {}
        }
    }

    /// The users gagged in a group or chatroom now, with their ends.
    pub fn gagged(&self, chatroom: bool, id: &str) -> BTreeMap<String, End> {
        let now = now_ms();
        let gags = if chatroom {
            &self.room_gags
        } else {
            &self.group_gags
        };
        gags.get(id)
            .map(|p| {
                p.iter()
                    .filter(|(_, g)| active(&g.end, now))
                    .map(|(u, g)| (u.clone(), g.end))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn banned(&self, chatroom: bool, id: &str) -> bool {
        if chatroom {
            self.rooms_banned.contains(id)
        } else {
            self.groups_banned.contains(id)
        }
    }

    // Behind mutebridge's back:

    pub fn console_unban(&mut self, chatroom: bool, id: &str) {
        if chatroom {
            self.rooms_banned.remove(id);
        } else {
            self.groups_banned.remove(id);
        }
    }
    pub fn console_ungag(&mut self, chatroom: bool, id: &str, user: &str) {
        let gags = if chatroom {
            &mut self.room_gags
        } else {
            &mut self.group_gags
        };
        if let Some(p) = gags.get_mut(id) {
            p.remove(user);
        }
    }
    /// A gag of `minutes` (0: permanent, groups only).
    pub fn console_gag(&mut self, chatroom: bool, id: &str, user: &str, minutes: i64) {
        let now = now_ms();
        let gags = if chatroom {
            &mut self.room_gags
        } else {
            &mut self.group_gags
        };
        gags.entry(id.to_owned()).or_default().insert(
            user.to_owned(),
            Gag {
                start: now,
                end: (minutes != 0).then(|| now + minutes * 60_000),
            },
        );
    }
    /// The chatroom is destroyed and created again with the same ID: its
    /// mute-all and gags are gone (they do not survive a destroy).
    pub fn recreate_chatroom(&mut self, id: &str) {
        self.rooms_banned.remove(id);
        self.room_gags.remove(id);
    }

    /// `YYYY-MM-DD HH:MM:SS` in the data centre's clock.
    fn wall_clock(&self, ms: i64) -> String {
        let offset = time::UtcOffset::from_whole_seconds(self.utc_offset).unwrap();
        let format =
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
        time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
            .unwrap()
            .to_offset(offset)
            .format(format)
            .unwrap()
    }

    fn gag_list(&self, chatroom: bool, id: &str) -> Vec<Value> {
        let now = now_ms();
        let gags = if chatroom {
            &self.room_gags
        } else {
            &self.group_gags
        };
        let lists: Vec<&BTreeMap<String, Gag>> = if id.is_empty() {
            // No groupId: every group's gags, naming no group.
            gags.values().collect()
        } else {
            gags.get(id).into_iter().collect()
        };
        lists
            .into_iter()
            .flat_map(|p| p.iter())
            .filter(|(_, g)| active(&g.end, now))
            .map(|(u, g)| {
                // What a permanent gag shows is unconfirmed: an empty time.
                let end = g.end.map(|e| self.wall_clock(e)).unwrap_or_default();
                if chatroom {
                    json!({"userId": u, "time": end})
                } else {
                    json!({"userId": u, "startTime": self.wall_clock(g.start), "time": end})
                }
            })
            .collect()
    }

    /// Serves a read (signed and admitted already): `Ok(body)` or
    /// `Err(why)` for bad parameters (1002).
    pub fn read(&self, path: &str, form: &[(String, String)]) -> Result<Value, String> {
        let page_of = |default_size: usize, max: usize| -> Result<(usize, usize), String> {
            let size = match form_one(form, "size") {
                None => default_size,
                Some(s) => s.parse().map_err(|_| "size is a number".to_string())?,
            };
            if size == 0 || size > max {
                return Err(format!("size {size} is not between 1 and {max}"));
            }
            let page = match form_one(form, "page") {
                None => 1,
                Some(p) => p.parse().map_err(|_| "page is a number".to_string())?,
            };
            if page == 0 {
                return Err("page starts at 1".into());
            }
            Ok((page, size))
        };
        let slice = |all: Vec<String>, page: usize, size: usize| -> Vec<String> {
            all.into_iter().skip((page - 1) * size).take(size).collect()
        };
        match path {
            "/group/ban/query.json" => {
                let paged = form_one(form, "page").is_some() || form_one(form, "size").is_some();
                let ids = form_all(form, "groupId");
                // Page and size make groupId ignored.
                if paged || ids.is_empty() {
                    let (page, size) = page_of(50, 200)?;
                    let on = slice(self.groups_banned.iter().cloned().collect(), page, size);
                    let info: Vec<Value> = on
                        .iter()
                        .map(|g| json!({"groupId": g, "stat": 1}))
                        .collect();
                    return Ok(json!({"code": 200, "groupinfo": info}));
                }
                if ids.len() > 20 {
                    return Err("at most 20 groupId".into());
                }
                let info: Vec<Value> = ids
                    .iter()
                    .map(|g| json!({"groupId": g, "stat": i32::from(self.groups_banned.contains(g))}))
                    .collect();
                Ok(json!({"code": 200, "groupinfo": info}))
            }
            "/chatroom/ban/query.json" => {
                let (page, size) = page_of(50, 1000)?;
                let on = slice(self.rooms_banned.iter().cloned().collect(), page, size);
                Ok(json!({"code": 200, "chatroomIds": on}))
            }
            "/chatroom/ban/check.json" => match form_one(form, "chatroomId") {
                Some(id) if !id.is_empty() => {
                    Ok(json!({"code": 200, "status": i32::from(self.rooms_banned.contains(id))}))
                }
                _ => Err("chatroomId required".into()),
            },
            "/group/user/gag/list.json" => {
                let id = form_one(form, "groupId").unwrap_or("");
                Ok(json!({"code": 200, "users": self.gag_list(false, id)}))
            }
            "/chatroom/user/gag/list.json" => match form_one(form, "chatroomId") {
                Some(id) if !id.is_empty() => {
                    Ok(json!({"code": 200, "users": self.gag_list(true, id)}))
                }
                _ => Err("chatroomId required".into()),
            },
            other => Err(format!("{other} is not a read")),
        }
    }
}

/// A RongCloud answer of `body`, or a 400 with code 1002 for `why`.
pub fn rong_answer(answer: Result<Value, String>) -> Response {
    match answer {
        Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Err(why) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"code": 1002, "errorMessage": why})),
        )
            .into_response(),
    }
}
