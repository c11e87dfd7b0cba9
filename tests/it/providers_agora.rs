//! A local stand-in for the Agora Chat REST API (the Easemob family),
//! written from the documented contract (Agora Chat's RESTful API pages,
//! <https://docs.agora.io/en/agora-chat/restful-api/>: group and chat
//! room mute lists, token generation), for the parts mutebridge uses, all under the app's path prefix (`org/app` or
//! `app-id/{app_id}`, as configured):
//!
//! - writes on groups (`chatgroups`) and chat rooms (`chatrooms`):
//!   `POST`/`DELETE …/{id}/ban` (mute-all on/off, answering `data.mute`),
//!   `POST …/{id}/mute` (`usernames`, at most 60 for a group and 100 for a
//!   room, `mute_duration` ms, -1 permanent, 0 lifts; `data[]` of
//!   `{result, expire, user}`) and `DELETE …/{id}/mute/{u1,u2}` (groups `,`,
//!   rooms `%2C`);
//! - reads: details `GET …/{id,id,…}` (at most 100, each with `mute`; a
//!   missing id alone is a 404, inside a batch it is left out) and the mute
//!   lists `GET …/{id}/mute` (`data[]` of `{user, expire}`, absolute ms, -1
//!   for a permanent mute: an assumption, the real form is unconfirmed);
//! - `Authorization: Bearer` with an AccessToken2 app token, checked on its
//!   own (`007`, base64, zlib, the packed fields, the two-step HMAC-SHA256
//!   signing key, the Chat service's app privilege, issue time + lifetime
//!   against the clock): 401 `unauthorized` otherwise, or once
//!   [`FakeAgora::expire_tokens`] revoked the tokens made before;
//! - 100 calls per second per API (a token bucket each), refused with 429
//!   `reach_limit` and no `Retry-After`; 404 `resource_not_found` for a
//!   group or room that does not exist, 403 `forbidden_op` for a user not
//!   in it, 400 `invalid_parameter` over the batch limit.
//!
//! Tests change the state behind mutebridge's back (lift a mute, re-create
//! a room empty, add a mute) to give `verify` drift to find.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};

use crate::providers::{common_gate, now_s, serve, Bucket, Call, Common, Fault, Provider};

/// Groups or chat rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Group,
    Room,
}

impl Kind {
    fn segment(self) -> &'static str {
        match self {
            Kind::Group => "chatgroups",
            Kind::Room => "chatrooms",
        }
    }

    fn batch_limit(self) -> usize {
        match self {
            Kind::Group => 60,
            Kind::Room => 100,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Room {
    mute_all: bool,
    /// Muted members: `expire`, ms since the epoch, -1 permanent.
    muted: BTreeMap<String, i64>,
}

pub struct AgoraState {
    pub app_id: String,
    pub certificate: String,
    /// The path prefix the app lives under (`org/app`, `app-id/<id>`).
    pub prefix: String,
    common: Common,
    rate_per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
    rooms: Mutex<BTreeMap<(Kind, String), Room>>,
    /// `None`: a group or room exists once anything names it.
    only: Mutex<Option<HashSet<(Kind, String)>>>,
    /// Users that are not members of the group or room.
    outsiders: Mutex<HashSet<(Kind, String, String)>>,
    /// Tokens issued before this (s) are refused.
    tokens_from: AtomicI64,
    unauthorized: AtomicU64,
    reads: AtomicU64,
}

/// An Agora Chat app on loopback.
#[derive(Clone)]
pub struct FakeAgora {
    pub addr: SocketAddr,
    pub state: Arc<AgoraState>,
}

impl FakeAgora {
    pub async fn start(
        app_id: &str,
        certificate: &str,
        prefix: &str,
        rate_per_second: f64,
    ) -> FakeAgora {
        let state = Arc::new(AgoraState {
            app_id: app_id.into(),
            certificate: certificate.into(),
            prefix: prefix.trim_matches('/').into(),
            common: Common::default(),
            rate_per_second,
            buckets: Mutex::new(HashMap::new()),
            rooms: Mutex::new(BTreeMap::new()),
            only: Mutex::new(None),
            outsiders: Mutex::new(HashSet::new()),
            tokens_from: AtomicI64::new(0),
            unauthorized: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        });
        let router = Router::new().fallback(handler).with_state(state.clone());
        FakeAgora {
            addr: serve(router).await,
            state,
        }
    }

    /// Only these exist; others answer 404.
    pub fn only(&self, existing: &[(Kind, &str)]) {
        *self.state.only.lock().unwrap() = Some(
            existing
                .iter()
                .map(|(k, id)| (*k, id.to_string()))
                .collect(),
        );
    }

    /// `user` is not a member of the group or room (403 `forbidden_op`).
    pub fn outsider(&self, kind: Kind, id: &str, user: &str) {
        self.state
            .outsiders
            .lock()
            .unwrap()
            .insert((kind, id.into(), user.into()));
    }

    pub fn mute_all(&self, kind: Kind, id: &str) -> bool {
        self.state
            .rooms
            .lock()
            .unwrap()
            .get(&(kind, id.to_owned()))
            .is_some_and(|r| r.mute_all)
    }

    /// The members muted now, with `expire` (ms; -1 permanent).
    pub fn muted(&self, kind: Kind, id: &str) -> BTreeMap<String, i64> {
        let now = now_ms();
        self.state
            .rooms
            .lock()
            .unwrap()
            .get(&(kind, id.to_owned()))
            .map(|r| {
                r.muted
                    .iter()
                    .filter(|(_, e)| **e == -1 || **e > now)
                    .map(|(u, e)| (u.clone(), *e))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Behind mutebridge's back: a moderator lifts one member's mute.
    pub fn lift(&self, kind: Kind, id: &str, user: &str) {
        if let Some(r) = self
            .state
            .rooms
            .lock()
            .unwrap()
            .get_mut(&(kind, id.to_owned()))
        {
            r.muted.remove(user);
        }
    }

    /// Behind mutebridge's back: mute a member until `expire_ms` (-1: permanent).
    pub fn add_mute(&self, kind: Kind, id: &str, user: &str, expire_ms: i64) {
        self.state
            .rooms
            .lock()
            .unwrap()
            .entry((kind, id.to_owned()))
            .or_default()
            .muted
            .insert(user.into(), expire_ms);
    }

    /// Behind mutebridge's back: switch mute-all.
    pub fn set_mute_all(&self, kind: Kind, id: &str, on: bool) {
        self.state
            .rooms
            .lock()
            .unwrap()
            .entry((kind, id.to_owned()))
            .or_default()
            .mute_all = on;
    }

    /// Behind mutebridge's back: destroyed and created again with the same
    /// ID, nobody muted.
    pub fn recreate(&self, kind: Kind, id: &str) {
        self.state
            .rooms
            .lock()
            .unwrap()
            .insert((kind, id.to_owned()), Room::default());
    }

    /// Every token issued before this second is refused (401).
    pub fn expire_tokens(&self) {
        self.state.tokens_from.store(now_s(), Ordering::SeqCst);
    }

    /// 401 answers so far.
    pub fn unauthorized(&self) -> u64 {
        self.state.unauthorized.load(Ordering::SeqCst)
    }

    /// Reads answered so far.
    pub fn reads(&self) -> u64 {
        self.state.reads.load(Ordering::SeqCst)
    }
}

impl Provider for FakeAgora {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn common(&self) -> &Common {
        &self.state.common
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn ok(action: &str, data: Value) -> Response {
    axum::Json(json!({
        "action": action, "application": "fake", "data": data,
        "timestamp": now_ms(), "duration": 0,
    }))
    .into_response()
}

fn error(status: u16, error: &str, description: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({
            "error": error, "exception": "fake", "timestamp": now_ms(),
            "duration": 0, "error_description": description,
        })),
    )
        .into_response()
}

fn hmac256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// A little-endian reader of a token's packed fields.
struct Unpack<'a>(&'a [u8]);

impl<'a> Unpack<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        (self.0.len() >= n).then(|| {
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            a
        })
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

/// An app token as AgoraIO/Tools' ChatTokenBuilder2 makes one, for the
/// stand-in's own tests (wrong certificates, other apps).
pub fn make_app_token(app_id: &str, certificate: &str, issue_ts: u32, expire: u32) -> String {
    let s = |b: &[u8]| [&(b.len() as u16).to_le_bytes()[..], b].concat();
    let mut info = s(app_id.as_bytes());
    info.extend(issue_ts.to_le_bytes());
    info.extend(expire.to_le_bytes());
    info.extend(7u32.to_le_bytes()); // salt
    info.extend(1u16.to_le_bytes());
    info.extend(5u16.to_le_bytes());
    info.extend(1u16.to_le_bytes());
    info.extend(2u16.to_le_bytes());
    info.extend(expire.to_le_bytes());
    info.extend(s(b""));
    let key = hmac256(
        &7u32.to_le_bytes(),
        &hmac256(&issue_ts.to_le_bytes(), certificate.as_bytes()),
    );
    let mut content = s(&hmac256(&key, &info));
    content.extend(info);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut z, &content).unwrap();
    format!(
        "007{}",
        base64::engine::general_purpose::STANDARD.encode(z.finish().unwrap())
    )
}

/// Checks an app token: `Err(why)` for a 401.
fn check_token(s: &AgoraState, headers: &HeaderMap) -> Result<(), String> {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = header.strip_prefix("Bearer ").ok_or("no bearer token")?;
    let b64 = token.strip_prefix("007").ok_or("not an AccessToken2")?;
    let zipped = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "not base64")?;
    let mut content = Vec::new();
    flate2::read::ZlibDecoder::new(&zipped[..])
        .read_to_end(&mut content)
        .map_err(|_| "not zlib")?;
    let bad = || "malformed token".to_owned();
    let mut r = Unpack(&content);
    let signature = r.string().ok_or_else(bad)?.to_vec();
    let signed = r.0;
    let app_id = r.string().ok_or_else(bad)?;
    let (issue, expire, salt) = (
        r.u32().ok_or_else(bad)?,
        r.u32().ok_or_else(bad)?,
        r.u32().ok_or_else(bad)?,
    );
    let services = r.u16().ok_or_else(bad)?;
    let mut app_privilege = false;
    for _ in 0..services {
        let kind = r.u16().ok_or_else(bad)?;
        let privileges = r.u16().ok_or_else(bad)?;
        for _ in 0..privileges {
            let (p, _) = (r.u16().ok_or_else(bad)?, r.u32().ok_or_else(bad)?);
            app_privilege |= kind == 5 && p == 2;
        }
        // Chat (5) and RTM (2) append a user ID.
        if matches!(kind, 2 | 5) {
            r.string().ok_or_else(bad)?;
        }
    }
    if app_id != s.app_id.as_bytes() {
        return Err("the token is for another app".into());
    }
    let key = hmac256(
        &salt.to_le_bytes(),
        &hmac256(&issue.to_le_bytes(), s.certificate.as_bytes()),
    );
    if hmac256(&key, signed) != signature {
        return Err("signature mismatch".into());
    }
    if !app_privilege {
        return Err("not an app token".into());
    }
    let now = now_s();
    if now > issue as i64 + expire as i64 || (issue as i64) < s.tokens_from.load(Ordering::SeqCst) {
        return Err("token expired".into());
    }
    Ok(())
}

/// Percent-decodes a path segment.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn injected(common: &Common, arrived: Instant, status: u16) -> Response {
    if status == 429 {
        common.refusal_at(arrived);
        return error(429, "reach_limit", "This request has reached api limit");
    }
    error(status, "injected", "injected")
}

async fn handler(
    State(s): State<Arc<AgoraState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = s.common.arrived();
    if s.common.down.load(Ordering::SeqCst) {
        return error(503, "service_unavailable", "down for maintenance");
    }
    match common_gate(&s.common).await {
        // Agora's errors are HTTP statuses: a code is one too.
        Some(Fault::Status(st)) => return injected(&s.common, arrived, st),
        Some(Fault::Code(c)) => return injected(&s.common, arrived, c as u16),
        Some(Fault::RetryAfter(secs)) => {
            s.common.refusal_at(arrived);
            let mut r = error(429, "reach_limit", "This request has reached api limit");
            r.headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
            return r;
        }
        _ => {}
    }
    let reject = |status: u16, err: &str, why: String| {
        s.common.rejected.lock().unwrap().push(why.clone());
        error(status, err, &why)
    };
    let path = uri.path().trim_start_matches('/');
    let Some(rest) = path
        .strip_prefix(s.prefix.as_str())
        .and_then(|r| r.strip_prefix('/'))
    else {
        return reject(404, "resource_not_found", format!("no app at {path}"));
    };
    if let Err(why) = check_token(&s, &headers) {
        s.unauthorized.fetch_add(1, Ordering::SeqCst);
        return reject(
            401,
            "unauthorized",
            format!("Unable to authenticate ({why})"),
        );
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let kind = match parts.first() {
        Some(&"chatgroups") => Kind::Group,
        Some(&"chatrooms") => Kind::Room,
        _ => return reject(404, "resource_not_found", format!("no such API {rest}")),
    };
    // Each API has its own budget: details, ban, mute, mute list, unmute.
    let api = format!(
        "{method} {} {}",
        kind.segment(),
        parts.get(2).unwrap_or(&"details")
    );
    let admitted = s
        .buckets
        .lock()
        .unwrap()
        .entry(api)
        .or_insert_with(|| Bucket::new(s.rate_per_second))
        .take();
    if !admitted {
        s.common.refused_for_rate(arrived);
        return error(429, "reach_limit", "This request has reached api limit");
    }
    let exists = |id: &str| {
        s.only
            .lock()
            .unwrap()
            .as_ref()
            .is_none_or(|only| only.contains(&(kind, id.to_owned())))
    };
    let missing = |id: &str| {
        let what = if kind == Kind::Group {
            "grpID"
        } else {
            "roomID"
        };
        error(
            404,
            "resource_not_found",
            &format!("{what} {id} does not exist!"),
        )
    };
    match (&method, parts.as_slice()) {
        (&Method::GET, [_, ids]) => {
            let sep = if kind == Kind::Room { "%2C" } else { "," };
            let ids: Vec<String> = ids.split(sep).map(decode).collect();
            if ids.len() > 100 {
                return reject(
                    400,
                    "invalid_parameter",
                    format!("{} ids (at most 100)", ids.len()),
                );
            }
            s.reads.fetch_add(1, Ordering::SeqCst);
            if ids.len() == 1 && !exists(&ids[0]) {
                return missing(&ids[0]);
            }
            let rooms = s.rooms.lock().unwrap();
            let data: Vec<Value> = ids
                .iter()
                .filter(|id| exists(id))
                .map(|id| {
                    let on = rooms.get(&(kind, id.clone())).is_some_and(|r| r.mute_all);
                    json!({"id": id, "name": id, "mute": on, "disabled": false})
                })
                .collect();
            ok("get", json!(data))
        }
        (_, [_, id, ..]) if !exists(&decode(id)) => missing(&decode(id)),
        (&Method::GET, [_, id, "mute"]) => {
            s.reads.fetch_add(1, Ordering::SeqCst);
            let now = now_ms();
            let data: Vec<Value> = s
                .rooms
                .lock()
                .unwrap()
                .get(&(kind, decode(id)))
                .map(|r| {
                    r.muted
                        .iter()
                        .filter(|(_, e)| **e == -1 || **e > now)
                        .map(|(u, e)| json!({"user": u, "expire": e}))
                        .collect()
                })
                .unwrap_or_default();
            ok("get", json!(data))
        }
        (m @ (&Method::POST | &Method::DELETE), [_, id, "ban"]) => {
            let id = decode(id);
            let on = *m == Method::POST;
            s.rooms
                .lock()
                .unwrap()
                .entry((kind, id.clone()))
                .or_default()
                .mute_all = on;
            s.common.calls.lock().unwrap().push(Call {
                action: format!("{} {}", kind.segment(), if on { "ban" } else { "unban" }),
                id: id.clone(),
                users: Vec::new(),
                duration: None,
                all_muted: Some(on),
                need_notify: None,
                at: Instant::now(),
            });
            ok(if on { "post" } else { "delete" }, json!({"mute": on}))
        }
        (&Method::POST, [_, id, "mute"]) => {
            let id = decode(id);
            let Ok(req) = serde_json::from_slice::<Value>(&body) else {
                return reject(400, "invalid_parameter", "the body is not JSON".into());
            };
            let users: Vec<String> = req["usernames"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if users.is_empty() || users.len() > kind.batch_limit() {
                return reject(
                    400,
                    "invalid_parameter",
                    format!("{} usernames (1 to {})", users.len(), kind.batch_limit()),
                );
            }
            let Some(duration) = req["mute_duration"].as_i64().filter(|d| *d >= -1) else {
                return reject(
                    400,
                    "invalid_parameter",
                    format!("mute_duration {}", req["mute_duration"]),
                );
            };
            apply_mutes(&s, kind, &id, &users, duration, true)
        }
        (&Method::DELETE, [_, id, "mute", users]) => {
            let id = decode(id);
            let sep = if kind == Kind::Room { "%2C" } else { "," };
            let users: Vec<String> = users.split(sep).map(decode).collect();
            if users.is_empty() || users.len() > kind.batch_limit() {
                return reject(
                    400,
                    "invalid_parameter",
                    format!("{} users (1 to {})", users.len(), kind.batch_limit()),
                );
            }
            apply_mutes(&s, kind, &id, &users, 0, false)
        }
        _ => reject(
            404,
            "resource_not_found",
            format!("no such API {method} {rest}"),
        ),
    }
}

/// Mutes (`duration` ms, -1 permanent) or unmutes (0) `users`.
fn apply_mutes(
    s: &AgoraState,
    kind: Kind,
    id: &str,
    users: &[String],
    duration: i64,
    post: bool,
) -> Response {
    let outsiders = s.outsiders.lock().unwrap();
    if let Some(u) = users
        .iter()
        .find(|u| outsiders.contains(&(kind, id.to_owned(), (*u).clone())))
    {
        s.common
            .rejected
            .lock()
            .unwrap()
            .push(format!("{u} is not a member"));
        return error(
            403,
            "forbidden_op",
            &format!("user {u} is not a member of {id}"),
        );
    }
    drop(outsiders);
    let expire = match duration {
        -1 => -1,
        0 => 0,
        ms => now_ms() + ms,
    };
    let mut rooms = s.rooms.lock().unwrap();
    let room = rooms.entry((kind, id.to_owned())).or_default();
    let data: Vec<Value> = users
        .iter()
        .map(|u| {
            if duration == 0 {
                room.muted.remove(u);
                json!({"result": true, "user": u})
            } else {
                room.muted.insert(u.clone(), expire);
                json!({"result": true, "expire": expire, "user": u})
            }
        })
        .collect();
    drop(rooms);
    let action = if duration == 0 { "unmute" } else { "mute" };
    s.common.calls.lock().unwrap().push(Call {
        action: format!("{} {action}", kind.segment()),
        id: id.into(),
        users: users.to_vec(),
        duration: Some(duration),
        all_muted: None,
        need_notify: None,
        at: Instant::now(),
    });
    ok(if post { "post" } else { "delete" }, json!(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
    const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";

    async fn send(
        fake: &FakeAgora,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = reqwest::Client::new()
            .request(method, format!("{}/org/app/{path}", fake.base_url()))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn app_tokens_are_checked() {
        let fake = FakeAgora::start(APP_ID, CERT, "org/app", 100.0).await;
        let now = now_s() as u32;
        let good = make_app_token(APP_ID, CERT, now - 1, 600);
        assert_eq!(
            send(
                &fake,
                reqwest::Method::POST,
                "chatgroups/g/ban",
                &good,
                None
            )
            .await
            .0,
            200
        );
        for bad in [
            "garbage".to_owned(),
            make_app_token(APP_ID, "5CFd2fd1755d40ecb72977518be15d3c", now, 600),
            make_app_token("970CA35de60c44645bbae8a215061b34", CERT, now, 600),
            make_app_token(APP_ID, CERT, now - 700, 600),
        ] {
            let (status, body) =
                send(&fake, reqwest::Method::POST, "chatgroups/g/ban", &bad, None).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (401, Some("unauthorized")),
                "{body}"
            );
        }
        fake.expire_tokens();
        assert_eq!(
            send(
                &fake,
                reqwest::Method::POST,
                "chatgroups/g/ban",
                &good,
                None
            )
            .await
            .0,
            401
        );
        assert_eq!(fake.unauthorized(), 5);
        assert!(fake.mute_all(Kind::Group, "g"));
    }

    #[tokio::test]
    async fn writes_and_reads_back_with_the_documented_shapes() {
        let fake = FakeAgora::start(APP_ID, CERT, "org/app", 100.0).await;
        fake.only(&[(Kind::Group, "g"), (Kind::Room, "r")]);
        fake.outsider(Kind::Group, "g", "stranger");
        let t = make_app_token(APP_ID, CERT, now_s() as u32, 600);
        use reqwest::Method as M;
        let (st, body) = send(
            &fake,
            M::POST,
            "chatgroups/g/mute",
            &t,
            Some(json!({"usernames": ["a", "b", "c"], "mute_duration": 60_000})),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["data"][0]["result"], true);
        send(
            &fake,
            M::POST,
            "chatrooms/r/mute",
            &t,
            Some(json!({"usernames": ["p"], "mute_duration": -1})),
        )
        .await;
        assert_eq!(
            send(&fake, M::DELETE, "chatgroups/g/mute/a,b", &t, None)
                .await
                .0,
            200
        );
        assert_eq!(
            send(&fake, M::POST, "chatrooms/r/ban", &t, None).await.0,
            200
        );
        let (st, body) = send(
            &fake,
            M::POST,
            "chatgroups/g/mute",
            &t,
            Some(json!({"usernames": ["stranger"], "mute_duration": 1})),
        )
        .await;
        assert_eq!((st, body["error"].as_str()), (403, Some("forbidden_op")));
        let (st, body) = send(&fake, M::POST, "chatgroups/nope/ban", &t, None).await;
        assert_eq!(
            (st, body["error"].as_str()),
            (404, Some("resource_not_found"))
        );
        let many: Vec<String> = (0..61).map(|i| format!("u{i}")).collect();
        let (st, _) = send(
            &fake,
            M::POST,
            "chatgroups/g/mute",
            &t,
            Some(json!({"usernames": many, "mute_duration": 1})),
        )
        .await;
        assert_eq!(st, 400);

        let (_, list) = send(&fake, M::GET, "chatgroups/g/mute", &t, None).await;
        assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
        assert_eq!(list["data"][0]["user"], "c");
        let (_, list) = send(&fake, M::GET, "chatrooms/r/mute", &t, None).await;
        assert_eq!(list["data"][0]["expire"], -1);
        let (_, details) = send(&fake, M::GET, "chatrooms/r%2Cnope", &t, None).await;
        assert_eq!(
            details["data"].as_array().unwrap().len(),
            1,
            "a missing id in a batch is left out"
        );
        assert_eq!(details["data"][0]["mute"], true);
        assert_eq!(
            send(&fake, M::GET, "chatgroups/nope", &t, None).await.0,
            404
        );
        // Behind mutebridge's back.
        fake.recreate(Kind::Room, "r");
        fake.add_mute(Kind::Group, "g", "extra", -1);
        fake.lift(Kind::Group, "g", "c");
        assert!(!fake.mute_all(Kind::Room, "r") && fake.muted(Kind::Room, "r").is_empty());
        assert_eq!(
            fake.muted(Kind::Group, "g").keys().collect::<Vec<_>>(),
            ["extra"]
        );
        assert_eq!(fake.reads(), 4);
    }

    #[tokio::test]
    async fn each_api_allows_its_rate_then_answers_429_without_retry_after() {
        let fake = FakeAgora::start(APP_ID, CERT, "org/app", 3.0).await;
        let t = make_app_token(APP_ID, CERT, now_s() as u32, 600);
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(
                send(&fake, reqwest::Method::POST, "chatgroups/g/ban", &t, None)
                    .await
                    .0,
            );
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429]);
        assert_eq!(
            send(&fake, reqwest::Method::GET, "chatgroups/g/mute", &t, None)
                .await
                .0,
            200
        );
        assert_eq!(fake.rate_limited(), 2);
    }
}
