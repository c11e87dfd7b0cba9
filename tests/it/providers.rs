//! Local stand-ins for the ZEGO and RongCloud server APIs, faithful to the
//! parts of their contracts mutebridge uses: they check the signature and
//! the parameters, enforce the documented rate limits with the real error
//! codes, and can be told to fail (5xx, slow replies, given codes, outage).
//! Each holds the mute state its accepted writes made and serves the read
//! APIs over it (`held.rs`). Shared by the integration tests and the worker
//! benchmark; the Tencent and Agora stand-ins (`providers_tencent.rs`,
//! `providers_agora.rs`) build on the parts here.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;

use crate::held::{self, RongHeld, ZegoHeld};

/// A scripted misbehaviour, applied to the next request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Reply with this HTTP status (and an error body).
    Status(u16),
    /// Reply with this provider code (ZEGO: HTTP 200; RongCloud: its status).
    Code(i64),
    /// Wait this long before handling the request (client timeouts).
    Delay(Duration),
    /// Refuse for rate with a `Retry-After` of this many seconds
    /// (RongCloud: HTTP 429, code 1008; whether it sends the header is
    /// unconfirmed, so both are tested).
    RetryAfter(u64),
}

/// A provider's per-second limit.
pub(crate) enum Bucket {
    /// A token bucket: `rate` tokens per second, at most `rate` stored.
    Tokens { rate: f64, tokens: f64, at: Instant },
    /// The strictest reading of "N per second": a sliding window, refusing
    /// a request when N were admitted in the second before it.
    Window {
        limit: usize,
        admitted: VecDeque<Instant>,
    },
}

impl Bucket {
    pub(crate) fn new(rate: f64) -> Bucket {
        Bucket::Tokens {
            rate,
            tokens: rate,
            at: Instant::now(),
        }
    }

    pub(crate) fn sliding(limit: usize) -> Bucket {
        Bucket::Window {
            limit,
            admitted: VecDeque::new(),
        }
    }

    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        match self {
            Bucket::Tokens { rate, tokens, at } => {
                *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * *rate).min(*rate);
                *at = now;
                if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    true
                } else {
                    false
                }
            }
            Bucket::Window { limit, admitted } => {
                while admitted
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
                {
                    admitted.pop_front();
                }
                if admitted.len() >= *limit {
                    false
                } else {
                    admitted.push_back(now);
                    true
                }
            }
        }
    }
}

/// One request a fake accepted and applied.
#[derive(Debug, Clone)]
pub struct Call {
    /// ZEGO `Action`, or the RongCloud path.
    pub action: String,
    /// GroupId / groupId / chatroomId.
    pub id: String,
    pub users: Vec<String>,
    /// ZEGO `Duration`, RongCloud `minute`.
    pub duration: Option<i64>,
    pub all_muted: Option<bool>,
    pub need_notify: Option<bool>,
    pub at: Instant,
}

/// What both fakes record and how they can be told to fail.
#[derive(Default)]
pub struct Common {
    pub(crate) calls: Mutex<Vec<Call>>,
    pub(crate) faults: Mutex<VecDeque<Fault>>,
    pub(crate) down: AtomicBool,
    requests: AtomicU64,
    /// When each request arrived.
    arrivals: Mutex<Vec<Instant>>,
    /// When each request refused for rate arrived.
    refusals: Mutex<Vec<Instant>>,
    rate_limited: AtomicU64,
    pub(crate) rejected: Mutex<Vec<String>>,
    /// Reads answered (the action or path), in arrival order.
    reads: Mutex<Vec<String>>,
}

impl Common {
    pub(crate) fn arrived(&self) -> Instant {
        let now = Instant::now();
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.arrivals.lock().unwrap().push(now);
        now
    }

    /// Refused by the stand-in's own limit.
    pub(crate) fn refused_for_rate(&self, arrived: Instant) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
        self.refusal_at(arrived);
    }

    /// Answered with a rate-limit code (the limit's, or an injected one).
    pub(crate) fn refusal_at(&self, arrived: Instant) {
        self.refusals.lock().unwrap().push(arrived);
    }
}

/// The accessors tests use on either fake.
pub trait Provider {
    fn addr(&self) -> SocketAddr;
    fn common(&self) -> &Common;

    fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }
    /// Requests accepted and applied, in arrival order.
    fn calls(&self) -> Vec<Call> {
        self.common().calls.lock().unwrap().clone()
    }
    /// Queues a misbehaviour for the next request.
    fn fault(&self, f: Fault) {
        self.common().faults.lock().unwrap().push_back(f);
    }
    /// While down, every request gets a 5xx (ZEGO 503, RongCloud 502).
    fn set_down(&self, down: bool) {
        self.common().down.store(down, Ordering::SeqCst);
    }
    /// Every request that reached the server.
    fn requests(&self) -> u64 {
        self.common().requests.load(Ordering::Relaxed)
    }
    /// When every request arrived, in order.
    fn arrivals(&self) -> Vec<Instant> {
        self.common().arrivals.lock().unwrap().clone()
    }
    /// When the requests answered with a rate-limit code (by the limit or
    /// by an injected fault) arrived.
    fn refusals(&self) -> Vec<Instant> {
        self.common().refusals.lock().unwrap().clone()
    }
    /// Requests refused by the rate limit.
    fn rate_limited(&self) -> u64 {
        self.common().rate_limited.load(Ordering::Relaxed)
    }
    /// Requests refused for a bad signature or bad parameters, with why.
    fn rejected(&self) -> Vec<String> {
        self.common().rejected.lock().unwrap().clone()
    }
}

pub(crate) async fn common_gate(c: &Common) -> Option<Fault> {
    let fault = c.faults.lock().unwrap().pop_front();
    if let Some(Fault::Delay(d)) = fault {
        // The stand-in's simulated latency: the fault under test.
        tokio::time::sleep(d).await;
        return None;
    }
    fault
}

pub(crate) fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn pairs(text: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn all(pairs: &[(String, String)], key: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

pub(crate) async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

// ---------------------------------------------------------------- ZEGO

pub struct ZegoState {
    pub app_id: u32,
    pub secret: String,
    common: Common,
    bucket: Mutex<Bucket>,
    /// `None`: every group exists.
    groups: Mutex<Option<HashSet<String>>>,
    /// Users that fail inside `MuteGroupMembers` with this sub-code.
    failing_users: Mutex<HashMap<String, i64>>,
    /// Groups whose requests misbehave, and how many more times.
    group_faults: Mutex<HashMap<String, (Fault, usize)>>,
    /// The mute state the accepted writes made.
    held: Mutex<ZegoHeld>,
}

/// A ZEGO ZIM server API on loopback: GET `/?Action=MuteGroup|MuteGroupMembers`.
#[derive(Clone)]
pub struct FakeZego {
    pub addr: SocketAddr,
    pub state: Arc<ZegoState>,
}

impl FakeZego {
    /// A ZEGO whose AppID limit is a token bucket of `rate_per_second`.
    pub async fn start(app_id: u32, secret: &str, rate_per_second: f64) -> FakeZego {
        FakeZego::start_limited(app_id, secret, Bucket::new(rate_per_second)).await
    }

    /// A ZEGO whose AppID limit is a sliding window: no more than
    /// `per_second` requests admitted in any second.
    pub async fn start_sliding(app_id: u32, secret: &str, per_second: usize) -> FakeZego {
        FakeZego::start_limited(app_id, secret, Bucket::sliding(per_second)).await
    }

    async fn start_limited(app_id: u32, secret: &str, bucket: Bucket) -> FakeZego {
        let state = Arc::new(ZegoState {
            app_id,
            secret: secret.into(),
            common: Common::default(),
            bucket: Mutex::new(bucket),
            groups: Mutex::new(None),
            failing_users: Mutex::new(HashMap::new()),
            group_faults: Mutex::new(HashMap::new()),
            held: Mutex::new(ZegoHeld::default()),
        });
        let router = Router::new()
            .fallback(zego_handler)
            .with_state(state.clone());
        FakeZego {
            addr: serve(router).await,
            state,
        }
    }

    pub fn only_groups(&self, groups: &[&str]) {
        *self.state.groups.lock().unwrap() = Some(groups.iter().map(|g| g.to_string()).collect());
    }
    /// The next `times` requests about `group` get `fault` (a status or a
    /// code); requests about other groups are served as usual.
    pub fn group_fault(&self, group: &str, fault: Fault, times: usize) {
        self.state
            .group_faults
            .lock()
            .unwrap()
            .insert(group.into(), (fault, times));
    }
    pub fn fail_user(&self, user: &str, sub_code: i64) {
        self.state
            .failing_users
            .lock()
            .unwrap()
            .insert(user.into(), sub_code);
    }
    /// The mute state it holds: to read, or to change behind
    /// mutebridge's back.
    pub fn held(&self) -> MutexGuard<'_, ZegoHeld> {
        self.state.held.lock().unwrap()
    }
    /// Read requests accepted (`FetchForbidGroupList`, `QueryGroupInfo`),
    /// in arrival order.
    pub fn reads(&self) -> Vec<String> {
        self.state.common.reads.lock().unwrap().clone()
    }
}

impl Provider for FakeZego {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn common(&self) -> &Common {
        &self.state.common
    }
}

fn zego_reply(code: i64, message: &str) -> Response {
    axum::Json(json!({"Code": code, "Message": message, "RequestId": "fake"})).into_response()
}

async fn zego_handler(
    State(s): State<Arc<ZegoState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = s.common.arrived();
    if s.common.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response();
    }
    match common_gate(&s.common).await {
        Some(Fault::Status(st)) => {
            return (StatusCode::from_u16(st).unwrap(), "injected").into_response()
        }
        Some(Fault::Code(c)) => {
            if matches!(c, 7 | 660300005..=660300007) {
                s.common.refusal_at(arrived);
            }
            return zego_reply(c, "injected");
        }
        _ => {}
    }
    let q = pairs(uri.query().unwrap_or(""));
    let group_fault = {
        let mut faults = s.group_faults.lock().unwrap();
        let group = one(&q, "GroupId").unwrap_or("");
        match faults.get_mut(group) {
            Some((fault, left)) if *left > 0 => {
                *left -= 1;
                Some(fault.clone())
            }
            _ => None,
        }
    };
    match group_fault {
        Some(Fault::Status(st)) => {
            return (StatusCode::from_u16(st).unwrap(), "injected").into_response()
        }
        Some(Fault::Code(c)) => {
            if matches!(c, 7 | 660300005..=660300007) {
                s.common.refusal_at(arrived);
            }
            return zego_reply(c, "injected");
        }
        _ => {}
    }
    let reject = |code: i64, why: String| {
        s.common.rejected.lock().unwrap().push(why.clone());
        zego_reply(code, &why)
    };
    let Some(app_id) = one(&q, "AppId").and_then(|v| v.parse::<u32>().ok()) else {
        return reject(100000001, "AppId missing".into());
    };
    if app_id != s.app_id {
        return reject(100000001, format!("unknown AppId {app_id}"));
    }
    if one(&q, "SignatureVersion") != Some("2.0") {
        return reject(100000014, "SignatureVersion must be 2.0".into());
    }
    let nonce = one(&q, "SignatureNonce").unwrap_or("");
    if nonce.is_empty() {
        return reject(100000003, "SignatureNonce missing".into());
    }
    let Some(ts) = one(&q, "Timestamp").and_then(|v| v.parse::<i64>().ok()) else {
        return reject(100000002, "Timestamp missing".into());
    };
    if (ts - now_s()).abs() > 600 {
        return reject(100000004, "signature expired".into());
    }
    let expected = mutebridge::zego_signature(app_id, nonce, &s.secret, ts as u64);
    // Independent check of the rule, not via the code under test.
    let independent = {
        use md5::Digest;
        hex::encode(md5::Md5::digest(format!("{app_id}{nonce}{}{ts}", s.secret)))
    };
    assert_eq!(expected, independent);
    if one(&q, "Signature") != Some(independent.as_str()) {
        return reject(100000005, "signature wrong".into());
    }
    if !s.bucket.lock().unwrap().take() {
        s.common.refused_for_rate(arrived);
        return zego_reply(660300005, "AppID rate limit");
    }
    let action = one(&q, "Action").unwrap_or("").to_owned();
    if held::ZEGO_READS.contains(&action.as_str()) {
        let read = held::zego_read(
            &s.held.lock().unwrap(),
            &action,
            method == Method::POST,
            &headers,
            &body,
        );
        return match read {
            Ok(reply) => {
                s.common.reads.lock().unwrap().push(action);
                reply
            }
            Err(why) => {
                s.common.rejected.lock().unwrap().push(why.clone());
                held::zego_bad_params(&why)
            }
        };
    }
    let (Some(from), Some(group)) = (one(&q, "FromUserId"), one(&q, "GroupId")) else {
        return reject(660000002, "FromUserId and GroupId are required".into());
    };
    if from.is_empty() || group.is_empty() {
        return reject(660000002, "empty FromUserId or GroupId".into());
    }
    let duration = match one(&q, "Duration").map(|d| d.parse::<i64>()) {
        None => 0,
        Some(Ok(d)) if (-1..=2_592_000).contains(&d) => d,
        _ => return reject(660000002, "Duration out of range".into()),
    };
    if let Some(groups) = &*s.groups.lock().unwrap() {
        if !groups.contains(group) {
            return zego_reply(660600001, "group does not exist");
        }
    }
    let mut call = Call {
        action: action.clone(),
        id: group.into(),
        users: Vec::new(),
        duration: Some(duration),
        all_muted: None,
        need_notify: None,
        at: Instant::now(),
    };
    match action.as_str() {
        "MuteGroup" => {
            call.all_muted = match one(&q, "IsAllMuted") {
                None => None,
                Some("true") => Some(true),
                Some("false") => Some(false),
                Some(other) => return reject(660000002, format!("IsAllMuted={other}")),
            };
            let roles = all(&q, "MuteRoleList[]")
                .iter()
                .filter_map(|r| r.parse().ok())
                .collect();
            s.held
                .lock()
                .unwrap()
                .mute_group(group, call.all_muted, roles, duration);
            s.common.calls.lock().unwrap().push(call);
            zego_reply(0, "success")
        }
        "MuteGroupMembers" => {
            let users = all(&q, "UserIds[]");
            if users.is_empty() || users.len() > 20 {
                return reject(
                    660000002,
                    format!("{} UserIds (1 to 20 allowed)", users.len()),
                );
            }
            let failing = s.failing_users.lock().unwrap().clone();
            let errors: Vec<_> = users
                .iter()
                .filter_map(|u| failing.get(u).map(|c| json!({"UserId": u, "SubCode": c})))
                .collect();
            call.users = users
                .into_iter()
                .filter(|u| !failing.contains_key(u))
                .collect();
            if call.users.is_empty() {
                return axum::Json(json!({"Code": 660600033, "Message": "failed for every user", "ErrorUsers": errors})).into_response();
            }
            s.held
                .lock()
                .unwrap()
                .mute_members(group, &call.users, duration);
            s.common.calls.lock().unwrap().push(call);
            axum::Json(
                json!({"Code": 0, "Message": "success", "RequestId": "fake", "ErrorUsers": errors}),
            )
            .into_response()
        }
        other => reject(100000006, format!("unsupported Action {other:?}")),
    }
}

// ----------------------------------------------------------- RongCloud

pub struct RongState {
    pub app_key: String,
    pub secret: String,
    common: Common,
    bucket: Mutex<Bucket>,
    /// The mute state the accepted writes made (this host's).
    held: Mutex<RongHeld>,
}

/// One RongCloud host (primary or backup) on loopback.
#[derive(Clone)]
pub struct FakeRongCloud {
    pub addr: SocketAddr,
    pub state: Arc<RongState>,
}

const RONG_PATHS: [&str; 8] = [
    "/chatroom/ban/add.json",
    "/chatroom/ban/rollback.json",
    "/group/ban/add.json",
    "/group/ban/rollback.json",
    "/chatroom/user/gag/add.json",
    "/chatroom/user/gag/rollback.json",
    "/group/user/gag/add.json",
    "/group/user/gag/rollback.json",
];

impl FakeRongCloud {
    pub async fn start(app_key: &str, secret: &str, rate_per_second: f64) -> FakeRongCloud {
        let state = Arc::new(RongState {
            app_key: app_key.into(),
            secret: secret.into(),
            common: Common::default(),
            bucket: Mutex::new(Bucket::new(rate_per_second)),
            held: Mutex::new(RongHeld::default()),
        });
        let router = Router::new()
            .fallback(rong_handler)
            .with_state(state.clone());
        FakeRongCloud {
            addr: serve(router).await,
            state,
        }
    }
}

impl FakeRongCloud {
    /// The mute state it holds: to read, or to change behind
    /// mutebridge's back.
    pub fn held(&self) -> MutexGuard<'_, RongHeld> {
        self.state.held.lock().unwrap()
    }
    /// Read requests accepted (the paths), in arrival order.
    pub fn reads(&self) -> Vec<String> {
        self.state.common.reads.lock().unwrap().clone()
    }
}

impl Provider for FakeRongCloud {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn common(&self) -> &Common {
        &self.state.common
    }
}

fn rong_reply(status: u16, code: i64, message: &str) -> Response {
    let mut body = json!({"code": code});
    if code != 200 {
        body["errorMessage"] = json!(message);
    }
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn rong_handler(
    State(s): State<Arc<RongState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = s.common.arrived();
    if s.common.down.load(Ordering::SeqCst) {
        return (StatusCode::BAD_GATEWAY, "host down").into_response();
    }
    match common_gate(&s.common).await {
        Some(Fault::Status(st)) => {
            return (StatusCode::from_u16(st).unwrap(), "injected").into_response()
        }
        Some(Fault::RetryAfter(secs)) => {
            s.common.refusal_at(arrived);
            let mut reply = rong_reply(429, 1008, "injected");
            reply
                .headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
            return reply;
        }
        Some(Fault::Code(c)) => {
            if c == 1008 {
                s.common.refusal_at(arrived);
            }
            let status = match c {
                1000 => 500,
                1008 => 429,
                1050 => 504,
                1001 | 1004 | 1006 | 1007 => 401,
                1009 => 430,
                _ => 400,
            };
            return rong_reply(status, c, "injected");
        }
        _ => {}
    }
    let reject = |status: u16, code: i64, why: String| {
        s.common.rejected.lock().unwrap().push(why.clone());
        rong_reply(status, code, &why)
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    if header("App-Key") != s.app_key {
        return reject(401, 1001, "unknown App-Key".into());
    }
    let (nonce, ts, sig) = (header("Nonce"), header("Timestamp"), header("Signature"));
    if nonce.is_empty() || nonce.len() > 18 {
        return reject(401, 1004, "Nonce missing or longer than 18".into());
    }
    let Ok(ts_value) = ts.parse::<i64>() else {
        return reject(401, 1004, "Timestamp missing".into());
    };
    // The docs say milliseconds, the SDKs send seconds: accept both.
    let ts_s = if ts_value > 100_000_000_000 {
        ts_value / 1000
    } else {
        ts_value
    };
    if (ts_s - now_s()).abs() > 300 {
        return reject(401, 1004, "Timestamp too far from now".into());
    }
    let independent = {
        use sha1::Digest;
        hex::encode(sha1::Sha1::digest(format!("{}{nonce}{ts}", s.secret)))
    };
    if sig != independent {
        return reject(401, 1004, "signature error".into());
    }
    if header("Content-Type") != "application/x-www-form-urlencoded" {
        return reject(400, 1002, "body must be a form".into());
    }
    if !s.bucket.lock().unwrap().take() {
        s.common.refused_for_rate(arrived);
        return rong_reply(429, 1008, "Too Many Requests");
    }
    let path = uri.path();
    let form = pairs(std::str::from_utf8(&body).unwrap_or(""));
    if held::RONG_READS.contains(&path) {
        let answer = s.held.lock().unwrap().read(path, &form);
        match &answer {
            Ok(_) => s.common.reads.lock().unwrap().push(path.to_owned()),
            Err(why) => s.common.rejected.lock().unwrap().push(why.clone()),
        }
        return held::rong_answer(answer);
    }
    if !RONG_PATHS.contains(&path) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let chatroom = path.starts_with("/chatroom/");
    let id_key = if chatroom { "chatroomId" } else { "groupId" };
    let ids = all(&form, id_key);
    let gag = path.contains("/user/gag/");
    // Group gag with no groupId mutes the user in every group; the real API
    // accepts it, so the fake records it as such for tests to catch.
    let global_gag = gag && !chatroom;
    if ids.len() != 1 || (ids[0].is_empty() && !global_gag) {
        return reject(400, 1002, format!("{id_key} required"));
    }
    let users = all(&form, "userId");
    if gag && (users.is_empty() || users.len() > 20) {
        return reject(
            400,
            1002,
            format!("{} userId (1 to 20 allowed)", users.len()),
        );
    }
    let minute = one(&form, "minute").map(|m| m.parse::<i64>());
    let duration = match (path, minute) {
        ("/chatroom/user/gag/add.json", Some(Ok(m))) if (1..=43200).contains(&m) => Some(m),
        ("/chatroom/user/gag/add.json", _) => {
            return reject(400, 1002, "minute required, 1..=43200".into())
        }
        ("/group/user/gag/add.json", Some(Ok(m))) if (0..=43200).contains(&m) => Some(m),
        ("/group/user/gag/add.json", _) => {
            return reject(400, 1002, "minute required, 0..=43200".into())
        }
        (_, None) => None,
        (_, Some(_)) => return reject(400, 1002, "unexpected minute".into()),
    };
    s.held.lock().unwrap().apply(path, &form);
    s.common.calls.lock().unwrap().push(Call {
        action: path.to_owned(),
        id: ids[0].clone(),
        users,
        duration,
        all_muted: None,
        need_notify: one(&form, "needNotify").map(|v| v == "true"),
        at: Instant::now(),
    });
    rong_reply(200, 200, "")
}

// ------------------------------------------------------------- webhook

pub struct HookState {
    pub secret: String,
    common: Common,
    /// Each delivery accepted: the event's JSON, in arrival order.
    bodies: Mutex<Vec<serde_json::Value>>,
    /// Groups whose deliveries get a status, and how many more times.
    group_faults: Mutex<HashMap<String, (u16, usize)>>,
    /// A brownout: at most this many requests served at once, each taking
    /// this long; the others are answered 503 at once.
    capacity: Mutex<Option<(usize, Duration)>>,
    in_service: AtomicU64,
    /// Requests answered 503 for want of capacity.
    busy: AtomicU64,
    /// While set, every request is answered with this status (a receiver
    /// that redeploys answers 404 for a while).
    answer_all: Mutex<Option<u16>>,
}

/// A receiver of the `webhook` target on loopback: checks the
/// `X-Mutebridge-Signature` (HMAC-SHA256 of `<timestamp>.<body>`), answers
/// 2xx, and can be told to fail like the providers (5xx while down, faults).
#[derive(Clone)]
pub struct FakeWebhook {
    pub addr: SocketAddr,
    pub state: Arc<HookState>,
}

impl FakeWebhook {
    pub async fn start(secret: &str) -> FakeWebhook {
        let state = Arc::new(HookState {
            secret: secret.into(),
            common: Common::default(),
            bodies: Mutex::new(Vec::new()),
            group_faults: Mutex::new(HashMap::new()),
            capacity: Mutex::new(None),
            in_service: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            answer_all: Mutex::new(None),
        });
        let router = Router::new()
            .fallback(hook_handler)
            .with_state(state.clone());
        FakeWebhook {
            addr: serve(router).await,
            state,
        }
    }

    /// The URL to configure: `http://ADDR/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The events delivered and accepted, in arrival order.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.state.bodies.lock().unwrap().clone()
    }

    /// The next `times` deliveries of an event of `group` are answered
    /// `status`; other groups' are served as usual.
    pub fn group_fault(&self, group: &str, status: u16, times: usize) {
        self.state
            .group_faults
            .lock()
            .unwrap()
            .insert(group.into(), (status, times));
    }

    /// A brownout (`Some`): at most `at_once` requests are served at a
    /// time, each taking `service`; the rest are answered 503 at once.
    /// `None` serves everything again.
    pub fn set_capacity(&self, capacity: Option<(usize, Duration)>) {
        *self.state.capacity.lock().unwrap() = capacity;
    }

    /// While `Some`, every request is answered with that status.
    pub fn answer_all(&self, status: Option<u16>) {
        *self.state.answer_all.lock().unwrap() = status;
    }

    /// Requests answered 503 for want of capacity.
    pub fn busy(&self) -> u64 {
        self.state.busy.load(Ordering::Relaxed)
    }
}

/// Counts a request in service until dropped.
struct InService<'a>(&'a AtomicU64);

impl Drop for InService<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Provider for FakeWebhook {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn common(&self) -> &Common {
        &self.state.common
    }
}

async fn hook_handler(
    State(s): State<Arc<HookState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.common.arrived();
    if s.common.down.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    if let Some(Fault::Status(st)) = common_gate(&s.common).await {
        return (StatusCode::from_u16(st).unwrap(), "injected").into_response();
    }
    if let Some(st) = *s.answer_all.lock().unwrap() {
        return (StatusCode::from_u16(st).unwrap(), "redeploying").into_response();
    }
    let capacity = *s.capacity.lock().unwrap();
    let _serving = match capacity {
        None => None,
        Some((at_once, service)) => {
            if s.in_service.fetch_add(1, Ordering::SeqCst) >= at_once as u64 {
                s.in_service.fetch_sub(1, Ordering::SeqCst);
                s.busy.fetch_add(1, Ordering::Relaxed);
                return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
            }
            let serving = InService(&s.in_service);
            // The stand-in's simulated service time: the capacity under test.
            tokio::time::sleep(service).await;
            Some(serving)
        }
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let ts = header("x-mutebridge-timestamp");
    let expected = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(s.secret.as_bytes()).unwrap();
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(&body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    if header("x-mutebridge-signature") != expected {
        s.common
            .rejected
            .lock()
            .unwrap()
            .push("bad signature".into());
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        s.common.rejected.lock().unwrap().push("not JSON".into());
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let group = event["group_id"].as_str().unwrap_or_default();
    if let Some((status, left)) = s.group_faults.lock().unwrap().get_mut(group) {
        if *left > 0 {
            *left -= 1;
            return (StatusCode::from_u16(*status).unwrap(), "injected").into_response();
        }
    }
    s.bodies.lock().unwrap().push(event);
    (StatusCode::OK, "ok").into_response()
}
