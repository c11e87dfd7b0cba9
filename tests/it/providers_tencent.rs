//! A local stand-in for the Tencent Cloud Chat (IM) server API, written
//! from the documented contract (Tencent Cloud Chat's RESTful API,
//! <https://www.tencentcloud.com/document/product/1047/34620>, and its
//! group-management and error-code pages), for the parts mutebridge uses:
//!
//! - `POST /v4/group_open_http_svc/{command}?sdkappid=&identifier=&usersig=&random=&contenttype=json`,
//!   answered HTTP 200 with `{ActionStatus, ErrorCode, ErrorInfo}` whatever
//!   happened, unless the host is down (502, as a network error would be);
//! - the UserSig is checked on its own (base64 variant, zlib, the JSON
//!   document, HMAC-SHA256 of the content lines with the secret key):
//!   70003 unparsable, 70009 wrong key, 70013/70014 another identifier or
//!   SDKAppID, 70001 expired (or made before [`FakeTencent::expire_usersigs`]),
//!   60010 when the identifier is not the app admin;
//! - 200 calls per second per API (a token bucket each), refused with
//!   60007; the groups' errors 10010 (no such group, or dismissed) and
//!   10004 (over 500 accounts, a bad `MuteTime` or `MuteAllMember`);
//! - writes `modify_group_base_info` (`MuteAllMember`) and
//!   `forbid_send_msg` (`MuteTime`: 0 lifts, 4294967295 is permanent,
//!   otherwise seconds from now), and the reads `get_group_info` (at most
//!   50 groups, `MuteAllMember` per group, 10010 per missing group) and
//!   `get_group_muted_account` (`MutedAccountList` of `Member_Account`,
//!   `MutedUntil` in seconds; a permanent mute shows 2^32 - 1 seconds
//!   after it was set, an assumption: the real form is unconfirmed).
//!
//! A primary and a backup host ([`FakeTencent::start_pair`]) serve one app:
//! what one host applied the other reads back. Tests change the state
//! behind mutebridge's back (lift a mute, dismiss and re-create a group
//! empty, add a mute) to give `verify` drift to find.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};

use crate::providers::{common_gate, now_s, serve, Bucket, Call, Common, Fault, Provider};

/// `MuteTime` of a permanent mute.
pub const PERMANENT: u64 = u32::MAX as u64;

/// Tencent's rate-limit codes.
pub fn is_rate_code(code: i64) -> bool {
    matches!(code, 60007 | 60011 | 60018 | 60019)
}

/// One group of the app.
#[derive(Debug, Clone, Default)]
struct Group {
    mute_all: bool,
    /// Muted members: `MutedUntil`, seconds since the epoch.
    muted: BTreeMap<String, i64>,
}

/// The app both hosts serve.
pub struct TencentApp {
    pub sdk_app_id: u64,
    pub admin: String,
    pub key: String,
    rate_per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
    groups: Mutex<BTreeMap<String, Group>>,
    /// `None`: a group exists once anything names it.
    only: Mutex<Option<HashSet<String>>>,
    /// UserSigs made (`TLS.time`) before this are refused as expired.
    usersigs_from: AtomicI64,
    /// Every 70001 answered.
    expired_answers: AtomicU64,
    /// Reads answered (`get_group_info`, `get_group_muted_account`).
    reads: AtomicU64,
}

/// One host of a Tencent app on loopback.
#[derive(Clone)]
pub struct FakeTencent {
    pub addr: SocketAddr,
    pub app: Arc<TencentApp>,
    host: Arc<Common>,
}

#[derive(Clone)]
struct HostState {
    app: Arc<TencentApp>,
    host: Arc<Common>,
}

impl FakeTencent {
    /// One host of a new app whose APIs allow `rate_per_second` each.
    pub async fn start(
        sdk_app_id: u64,
        admin: &str,
        key: &str,
        rate_per_second: f64,
    ) -> FakeTencent {
        let app = Arc::new(TencentApp {
            sdk_app_id,
            admin: admin.into(),
            key: key.into(),
            rate_per_second,
            buckets: Mutex::new(HashMap::new()),
            groups: Mutex::new(BTreeMap::new()),
            only: Mutex::new(None),
            usersigs_from: AtomicI64::new(0),
            expired_answers: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        });
        FakeTencent::host_of(app).await
    }

    /// The primary and the backup host of one new app.
    pub async fn start_pair(
        sdk_app_id: u64,
        admin: &str,
        key: &str,
        rate_per_second: f64,
    ) -> (FakeTencent, FakeTencent) {
        let primary = FakeTencent::start(sdk_app_id, admin, key, rate_per_second).await;
        let backup = FakeTencent::host_of(primary.app.clone()).await;
        (primary, backup)
    }

    async fn host_of(app: Arc<TencentApp>) -> FakeTencent {
        let host = Arc::new(Common::default());
        let router = Router::new().fallback(handler).with_state(HostState {
            app: app.clone(),
            host: host.clone(),
        });
        FakeTencent {
            addr: serve(router).await,
            app,
            host,
        }
    }

    /// Only these groups exist; others answer 10010.
    pub fn only_groups(&self, groups: &[&str]) {
        *self.app.only.lock().unwrap() = Some(groups.iter().map(|g| g.to_string()).collect());
    }

    /// Whether the group is muted as a whole.
    pub fn mute_all(&self, group: &str) -> bool {
        self.app
            .groups
            .lock()
            .unwrap()
            .get(group)
            .is_some_and(|g| g.mute_all)
    }

    /// The members muted now, with `MutedUntil` (seconds).
    pub fn muted(&self, group: &str) -> BTreeMap<String, i64> {
        let now = now_s();
        self.app
            .groups
            .lock()
            .unwrap()
            .get(group)
            .map(|g| {
                g.muted
                    .iter()
                    .filter(|(_, u)| **u > now)
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Behind mutebridge's back: a moderator lifts one member's mute.
    pub fn lift(&self, group: &str, user: &str) {
        if let Some(g) = self.app.groups.lock().unwrap().get_mut(group) {
            g.muted.remove(user);
        }
    }

    /// Behind mutebridge's back: mute a member until `until_s`.
    pub fn add_mute(&self, group: &str, user: &str, until_s: i64) {
        self.app
            .groups
            .lock()
            .unwrap()
            .entry(group.into())
            .or_default()
            .muted
            .insert(user.into(), until_s);
    }

    /// Behind mutebridge's back: switch mute-all.
    pub fn set_mute_all(&self, group: &str, on: bool) {
        self.app
            .groups
            .lock()
            .unwrap()
            .entry(group.into())
            .or_default()
            .mute_all = on;
    }

    /// Behind mutebridge's back: the group is dismissed and created again
    /// with the same ID, with nobody muted.
    pub fn recreate(&self, group: &str) {
        self.app
            .groups
            .lock()
            .unwrap()
            .insert(group.into(), Group::default());
    }

    /// Every UserSig made before this second is refused as expired (70001).
    pub fn expire_usersigs(&self) {
        self.app.usersigs_from.store(now_s(), Ordering::SeqCst);
    }

    /// 70001 answers so far.
    pub fn expired_answers(&self) -> u64 {
        self.app.expired_answers.load(Ordering::SeqCst)
    }

    /// Reads answered so far (both hosts).
    pub fn reads(&self) -> u64 {
        self.app.reads.load(Ordering::SeqCst)
    }
}

impl Provider for FakeTencent {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn common(&self) -> &Common {
        &self.host
    }
}

fn answer(code: i64, info: &str, mut extra: Value) -> Response {
    let mut body = json!({
        "ActionStatus": if code == 0 { "OK" } else { "FAIL" },
        "ErrorCode": code,
        "ErrorInfo": info,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object_mut()) {
        b.append(e);
    }
    axum::Json(body).into_response()
}

/// Tencent's base64: `*` `-` `_` for `+` `/` `=`.
fn tencent_b64_decode(text: &str) -> Option<Vec<u8>> {
    let std: String = text
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::STANDARD.decode(std).ok()
}

/// A UserSig as Tencent's official signers make it, for the stand-in's
/// own tests (wrong keys, other identifiers).
pub fn make_usersig(
    key: &str,
    sdk_app_id: u64,
    identifier: &str,
    time: i64,
    expire: i64,
) -> String {
    let doc = json!({
        "TLS.ver": "2.0", "TLS.identifier": identifier, "TLS.sdkappid": sdk_app_id,
        "TLS.expire": expire, "TLS.time": time,
        "TLS.sig": sig_of(key, sdk_app_id, identifier, time, expire),
    });
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(doc.to_string().as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD
        .encode(z.finish().unwrap())
        .replace('+', "*")
        .replace('/', "-")
        .replace('=', "_")
}

fn sig_of(key: &str, sdk_app_id: u64, identifier: &str, time: i64, expire: i64) -> String {
    use hmac::Mac;
    let content = format!(
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdk_app_id}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(content.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks a UserSig: `Err((code, why))` with the account error code.
fn check_usersig(
    app: &TencentApp,
    sig: &str,
    identifier: &str,
    sdk_app_id: u64,
) -> Result<(), (i64, String)> {
    let unparsable = || (70003, "UserSig unparsable".to_owned());
    let zipped = tencent_b64_decode(sig).ok_or_else(unparsable)?;
    let mut text = Vec::new();
    flate2::read::ZlibDecoder::new(&zipped[..])
        .read_to_end(&mut text)
        .map_err(|_| unparsable())?;
    let doc: Value = serde_json::from_slice(&text).map_err(|_| unparsable())?;
    let (Some(id), Some(app_id), Some(time), Some(expire), Some(given)) = (
        doc["TLS.identifier"].as_str(),
        doc["TLS.sdkappid"].as_u64(),
        doc["TLS.time"].as_i64(),
        doc["TLS.expire"].as_i64(),
        doc["TLS.sig"].as_str(),
    ) else {
        return Err(unparsable());
    };
    if doc["TLS.ver"] != "2.0" {
        return Err(unparsable());
    }
    if id != identifier {
        return Err((70013, "identifier differs from the UserSig's".into()));
    }
    if app_id != sdk_app_id {
        return Err((70014, "sdkappid differs from the UserSig's".into()));
    }
    if given != sig_of(&app.key, app_id, id, time, expire) {
        return Err((70009, "UserSig verification failed".into()));
    }
    if now_s() > time + expire || time < app.usersigs_from.load(Ordering::SeqCst) {
        app.expired_answers.fetch_add(1, Ordering::SeqCst);
        return Err((70001, "UserSig expired".into()));
    }
    Ok(())
}

async fn handler(State(s): State<HostState>, method: Method, uri: Uri, body: Bytes) -> Response {
    let (app, host) = (&s.app, &s.host);
    let arrived = host.arrived();
    if host.down.load(Ordering::SeqCst) {
        return (StatusCode::BAD_GATEWAY, "502 Bad Gateway").into_response();
    }
    match common_gate(host).await {
        Some(Fault::Status(st)) => {
            return (StatusCode::from_u16(st).unwrap(), "injected").into_response()
        }
        Some(Fault::Code(c)) => {
            if is_rate_code(c) {
                host.refusal_at(arrived);
            }
            return answer(c, "injected", json!({}));
        }
        Some(Fault::RetryAfter(_)) => {
            host.refusal_at(arrived);
            return answer(60007, "injected", json!({}));
        }
        _ => {}
    }
    let reject = |code: i64, why: String| {
        host.rejected.lock().unwrap().push(why.clone());
        answer(code, &why, json!({}))
    };
    if method != Method::POST {
        return reject(60002, "the request method is POST".into());
    }
    let Some(command) = uri.path().strip_prefix("/v4/group_open_http_svc/") else {
        return reject(60009, format!("no such API {}", uri.path()));
    };
    let q: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(sdk_app_id) = param("sdkappid").and_then(|v| v.parse::<u64>().ok()) else {
        return reject(60012, "sdkappid missing".into());
    };
    if sdk_app_id != app.sdk_app_id {
        return reject(60006, "SDKAppID invalid".into());
    }
    if param("contenttype") != Some("json") {
        return reject(60002, "contenttype must be json".into());
    }
    if param("random")
        .and_then(|r| r.parse::<u32>().ok())
        .is_none()
    {
        return reject(60002, "random must be a 32-bit unsigned integer".into());
    }
    let identifier = param("identifier").unwrap_or("");
    if let Err((code, why)) =
        check_usersig(app, param("usersig").unwrap_or(""), identifier, sdk_app_id)
    {
        return reject(code, why);
    }
    if identifier != app.admin {
        return reject(60010, "the identifier must be the app admin".into());
    }
    let admitted = app
        .buckets
        .lock()
        .unwrap()
        .entry(command.to_owned())
        .or_insert_with(|| Bucket::new(app.rate_per_second))
        .take();
    if !admitted {
        host.refused_for_rate(arrived);
        return answer(60007, "REST API frequency limit", json!({}));
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return reject(60003, "JSON parse error".into());
    };
    let exists = |group: &str| {
        app.only
            .lock()
            .unwrap()
            .as_ref()
            .is_none_or(|only| only.contains(group))
    };
    let group_id = req["GroupId"].as_str().unwrap_or("").to_owned();
    match command {
        "modify_group_base_info" | "forbid_send_msg" | "get_group_muted_account"
            if group_id.is_empty() =>
        {
            reject(10004, "GroupId is required".into())
        }
        "modify_group_base_info" | "forbid_send_msg" | "get_group_muted_account"
            if !exists(&group_id) =>
        {
            answer(10010, "group does not exist or was dismissed", json!({}))
        }
        "modify_group_base_info" => {
            let on = match req["MuteAllMember"].as_str() {
                Some("On") => true,
                Some("Off") => false,
                other => return reject(10004, format!("MuteAllMember {other:?}")),
            };
            app.groups
                .lock()
                .unwrap()
                .entry(group_id.clone())
                .or_default()
                .mute_all = on;
            host.calls.lock().unwrap().push(Call {
                action: command.into(),
                id: group_id,
                users: Vec::new(),
                duration: None,
                all_muted: Some(on),
                need_notify: None,
                at: Instant::now(),
            });
            answer(0, "", json!({}))
        }
        "forbid_send_msg" => {
            let users: Vec<String> = req["Members_Account"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if users.is_empty() || users.len() > 500 {
                return reject(10004, format!("{} Members_Account (1 to 500)", users.len()));
            }
            let Some(mute_time) = req["MuteTime"].as_u64().filter(|t| *t <= PERMANENT) else {
                return reject(10004, format!("MuteTime {}", req["MuteTime"]));
            };
            let mut groups = app.groups.lock().unwrap();
            let group = groups.entry(group_id.clone()).or_default();
            for u in &users {
                if mute_time == 0 {
                    group.muted.remove(u);
                } else {
                    group.muted.insert(u.clone(), now_s() + mute_time as i64);
                }
            }
            drop(groups);
            host.calls.lock().unwrap().push(Call {
                action: command.into(),
                id: group_id,
                users,
                duration: Some(mute_time as i64),
                all_muted: None,
                need_notify: None,
                at: Instant::now(),
            });
            answer(0, "", json!({}))
        }
        "get_group_info" => {
            let ids: Vec<String> = req["GroupIdList"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|g| g.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if ids.is_empty() || ids.len() > 50 {
                return reject(
                    10004,
                    format!("{} groups in GroupIdList (1 to 50)", ids.len()),
                );
            }
            app.reads.fetch_add(1, Ordering::SeqCst);
            let groups = app.groups.lock().unwrap();
            let info: Vec<Value> = ids
                .iter()
                .map(|id| {
                    if !exists(id) {
                        return json!({"GroupId": id, "ErrorCode": 10010, "ErrorInfo": "group does not exist"});
                    }
                    let on = groups.get(id).is_some_and(|g| g.mute_all);
                    json!({"GroupId": id, "ErrorCode": 0, "ErrorInfo": "",
                           "MuteAllMember": if on { "On" } else { "Off" }})
                })
                .collect();
            answer(0, "", json!({"GroupInfo": info}))
        }
        "get_group_muted_account" => {
            app.reads.fetch_add(1, Ordering::SeqCst);
            let now = now_s();
            let list: Vec<Value> = app
                .groups
                .lock()
                .unwrap()
                .get(&group_id)
                .map(|g| {
                    g.muted
                        .iter()
                        .filter(|(_, until)| **until > now)
                        .map(|(u, until)| json!({"Member_Account": u, "MutedUntil": until}))
                        .collect()
                })
                .unwrap_or_default();
            answer(
                0,
                "",
                json!({"GroupId": group_id, "MutedAccountList": list}),
            )
        }
        other => reject(60009, format!("no such API {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: u64 = 1400000000;
    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

    async fn post(
        fake: &FakeTencent,
        command: &str,
        identifier: &str,
        sig: &str,
        body: Value,
    ) -> Value {
        let url = format!(
            "{}/v4/group_open_http_svc/{command}?sdkappid={APP}&identifier={identifier}&usersig={sig}&random=7&contenttype=json",
            fake.base_url()
        );
        let r = reqwest::Client::new()
            .post(url)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "Tencent answers 200 unless the network fails"
        );
        r.json().await.unwrap()
    }

    #[tokio::test]
    async fn usersigs_are_checked_with_the_account_error_codes() {
        let fake = FakeTencent::start(APP, "admin", KEY, 200.0).await;
        let now = now_s();
        // Made a second ago, so that expiring what was made before this
        // second refuses it.
        let good = make_usersig(KEY, APP, "admin", now - 1, 3600);
        let body = json!({"GroupId": "g", "MuteAllMember": "On"});
        let code = |v: Value| v["ErrorCode"].as_i64().unwrap();
        assert_eq!(
            code(
                post(
                    &fake,
                    "modify_group_base_info",
                    "admin",
                    &good,
                    body.clone()
                )
                .await
            ),
            0
        );
        let cases = [
            ("admin", "not-a-usersig".to_owned(), 70003),
            (
                "admin",
                make_usersig("another key", APP, "admin", now, 3600),
                70009,
            ),
            ("someone", good.clone(), 70013),
            (
                "admin",
                make_usersig(KEY, APP + 1, "admin", now, 3600),
                70014,
            ),
            (
                "admin",
                make_usersig(KEY, APP, "admin", now - 7200, 3600),
                70001,
            ),
            ("user", make_usersig(KEY, APP, "user", now, 3600), 60010),
        ];
        for (identifier, sig, want) in cases {
            let v = post(
                &fake,
                "modify_group_base_info",
                identifier,
                &sig,
                body.clone(),
            )
            .await;
            assert_eq!(
                (code(v.clone()), v["ActionStatus"].as_str()),
                (want, Some("FAIL")),
                "{v}"
            );
        }
        fake.expire_usersigs();
        assert_eq!(
            code(post(&fake, "modify_group_base_info", "admin", &good, body).await),
            70001
        );
        assert_eq!(fake.expired_answers(), 2);
        assert_eq!(fake.calls().len(), 1, "only the first was applied");
    }

    #[tokio::test]
    async fn reads_answer_what_was_applied_and_what_changed_behind_its_back() {
        let (primary, backup) = FakeTencent::start_pair(APP, "admin", KEY, 200.0).await;
        primary.only_groups(&["g", "h"]);
        let sig = make_usersig(KEY, APP, "admin", now_s(), 3600);
        let write = |fake: FakeTencent, body: Value| {
            let sig = sig.clone();
            async move { post(&fake, "forbid_send_msg", "admin", &sig, body).await["ErrorCode"].clone() }
        };
        assert_eq!(
            write(
                primary.clone(),
                json!({"GroupId": "g", "Members_Account": ["a", "b"], "MuteTime": 600})
            )
            .await,
            0
        );
        assert_eq!(
            write(
                backup.clone(),
                json!({"GroupId": "g", "Members_Account": ["c"], "MuteTime": PERMANENT})
            )
            .await,
            0
        );
        assert_eq!(
            write(
                primary.clone(),
                json!({"GroupId": "nope", "Members_Account": ["a"], "MuteTime": 1})
            )
            .await,
            10010
        );
        let many: Vec<String> = (0..501).map(|i| format!("u{i}")).collect();
        assert_eq!(
            write(
                primary.clone(),
                json!({"GroupId": "g", "Members_Account": many, "MuteTime": 1})
            )
            .await,
            10004
        );
        primary.lift("g", "b");
        primary.set_mute_all("h", true);
        let muted = post(
            &backup,
            "get_group_muted_account",
            "admin",
            &sig,
            json!({"GroupId": "g"}),
        )
        .await;
        let list = muted["MutedAccountList"].as_array().unwrap();
        assert_eq!(list.len(), 2, "{muted}");
        assert_eq!(list[0]["Member_Account"], "a");
        let until = list[0]["MutedUntil"].as_i64().unwrap();
        assert!((now_s() + 598..=now_s() + 600).contains(&until), "{until}");
        assert_eq!(
            list[1]["MutedUntil"].as_i64().unwrap(),
            now_s() + PERMANENT as i64
        );
        let info = post(
            &primary,
            "get_group_info",
            "admin",
            &sig,
            json!({"GroupIdList": ["g", "h", "nope"], "ResponseFilter": {"GroupBaseInfoFilter": ["MuteAllMember"]}}),
        )
        .await;
        assert_eq!(info["GroupInfo"][0]["MuteAllMember"], "Off");
        assert_eq!(info["GroupInfo"][1]["MuteAllMember"], "On");
        assert_eq!(info["GroupInfo"][2]["ErrorCode"], 10010);
        primary.recreate("g");
        assert!(primary.muted("g").is_empty());
        assert_eq!(primary.reads(), 2);
    }

    #[tokio::test]
    async fn each_api_allows_its_own_rate_and_answers_60007_past_it() {
        let fake = FakeTencent::start(APP, "admin", KEY, 5.0).await;
        let sig = make_usersig(KEY, APP, "admin", now_s(), 3600);
        let mut codes = Vec::new();
        for _ in 0..7 {
            let v = post(
                &fake,
                "modify_group_base_info",
                "admin",
                &sig,
                json!({"GroupId": "g", "MuteAllMember": "On"}),
            )
            .await;
            codes.push(v["ErrorCode"].as_i64().unwrap());
        }
        assert_eq!(
            codes.iter().filter(|c| **c == 60007).count(),
            2,
            "{codes:?}"
        );
        let other = post(
            &fake,
            "get_group_muted_account",
            "admin",
            &sig,
            json!({"GroupId": "g"}),
        )
        .await;
        assert_eq!(other["ErrorCode"], 0, "another API has its own budget");
        assert_eq!(fake.rate_limited(), 2);
    }
}
