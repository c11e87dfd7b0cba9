//! A local stand-in for the Easemob / Agora Chat server REST API, faithful to
//! the reads reconciliation makes (Easemob's server-side documentation,
//! <https://doc.easemob.com/document/server-side/>: app token, group
//! details, mute lists), all under `/{org}/{app}`:
//!
//! - `POST /token` (`client_credentials`, optional `ttl`): the app token,
//!   which every other route needs as `Authorization: Bearer`; 401
//!   `unauthorized` without one, or once it expired (its ttl, or
//!   [`FakeEasemobRest::expire_tokens`]).
//! - `GET /chatgroups/{id,id,...}` and `GET /chatrooms/{id,id,...}`: details
//!   incl. `mute` (mute-all), up to 100 ids separated by `,` or `%2C`, in the
//!   order asked; a missing id alone is a 404 `resource_not_found`, inside a
//!   batch it is left out or fails the batch ([`MissingInBatch`]; the real
//!   behaviour is unconfirmed).
//! - `GET /chatgroups/{id}/mute` and `GET /chatrooms/{id}/mute`: the muted
//!   members with their absolute `expire` (ms; -1 = permanent), ended
//!   mutes left out.
//! - `GET /chatgroups?limit=N&cursor=C`: every group sorted by id, paged with
//!   an opaque cursor (the chat room list is not implemented).
//!
//! Every envelope's `timestamp` is the server's clock, which a test can set
//! off from the real one. Each read endpoint (per scope: group details, room
//! details, group mute list, room mute list, group list) has its own sliding
//! one-second window of `per_second` calls, refused with 429 `reach_limit`
//! and no `Retry-After`, as documented; the token endpoint is not limited.
//! A test can also script the next reads to fail (429 with or without
//! `Retry-After`, a given status with Easemob's error body, a 404 naming
//! another group, what a proxy or a maintenance window answers instead of
//! Easemob (an HTML 404 page, a redirect), a mute list missing members, a
//! slow reply), make every group listing fail or its cursor come back
//! (A -> B -> A), redirect the token request, and read back every call with
//! its status, how many went through, the busiest second and the refusals.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

/// Groups (`/chatgroups`) or chat rooms (`/chatrooms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatScope {
    Group,
    Chatroom,
}

impl ChatScope {
    fn from_segment(segment: &str) -> Option<ChatScope> {
        match segment {
            "chatgroups" => Some(ChatScope::Group),
            "chatrooms" => Some(ChatScope::Chatroom),
            _ => None,
        }
    }
}

/// How a details batch of several ids answers when one of them does not
/// exist (unconfirmed in the real API, so both are tested).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingInBatch {
    /// 200, the missing item left out of `data`.
    #[default]
    Omit,
    /// The whole batch answers 404 `resource_not_found` for the first
    /// missing id.
    NotFound,
}

/// A scripted misbehaviour for the next read (token requests never take
/// one); consumed one per request, in the order pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestFault {
    /// 429 `reach_limit`, with `Retry-After: <secs>` when given.
    TooMany { retry_after: Option<u64> },
    /// This HTTP status, with an Easemob error body (a 404 is
    /// `resource_not_found` described as "injected": it names no group).
    Status(u16),
    /// 404 `resource_not_found` for this group id ("grpID ID does not
    /// exist!"), whatever was asked.
    NotFoundNaming(String),
    /// 404 with another Easemob error (e.g. `service_resource_not_found`).
    Error404(&'static str),
    /// 404 with an HTML page, as a load balancer or a maintenance window
    /// answers, not Easemob.
    Html404,
    /// 307 to this URL (the path and query are appended).
    Redirect(String),
    /// The next mute list answered with only its first `n` members (other
    /// reads pass it by and take the faults behind it).
    Truncate(usize),
    /// Wait this long, then answer as usual.
    Delay(Duration),
}

/// The page an HTML 404 carries.
pub const HTML_404: &str = "<!DOCTYPE html><html><head><title>404 Not Found</title></head><body><h1>Not Found</h1><p>The service is under maintenance.</p></body></html>";

/// One request the stand-in answered (token requests included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestCall {
    pub method: String,
    /// The decoded path after `/{org}/{app}`, e.g. `/chatgroups/g1,g2`,
    /// `/chatgroups/g1/mute`, `/chatgroups` or `/token` (the whole decoded
    /// path when it is not under the app).
    pub path: String,
    /// The raw query string.
    pub query: Option<String>,
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
    /// How many ids a details call named; 1 for a mute list, 0 otherwise.
    pub ids: usize,
}

/// The rate-limited read endpoints, each with its own window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Endpoint {
    Details(ChatScope),
    Mute(ChatScope),
    List,
}

enum Route {
    Token,
    Details(ChatScope, Vec<String>),
    Mute(ChatScope, String),
    List,
    Unknown,
}

impl Route {
    fn endpoint(&self) -> Option<Endpoint> {
        match self {
            Route::Details(scope, _) => Some(Endpoint::Details(*scope)),
            Route::Mute(scope, _) => Some(Endpoint::Mute(*scope)),
            Route::List => Some(Endpoint::List),
            Route::Token | Route::Unknown => None,
        }
    }

    fn ids(&self) -> usize {
        match self {
            Route::Details(_, ids) => ids.len(),
            Route::Mute(..) => 1,
            _ => 0,
        }
    }
}

/// A group or chat room.
#[derive(Debug, Clone)]
struct Group {
    /// Server ms.
    created: i64,
    /// Server ms of the last change (mute-all or the mute list).
    last_modified: i64,
    mute_all: bool,
    /// User -> absolute end of the mute in epoch ms, -1 = permanent.
    muted: BTreeMap<String, i64>,
}

struct Inner {
    token_ttl: u64,
    /// Token -> when it expires (`None`: ttl 0, never).
    tokens: HashMap<String, Option<Instant>>,
    clock_offset_ms: i64,
    missing: MissingInBatch,
    faults: VecDeque<RestFault>,
    /// Every `GET /chatgroups` answers this status.
    list_status: Option<u16>,
    /// From this page on (1 = the first), the list gives back the first
    /// cursor it gave: a cycle.
    list_cycle_at: Option<usize>,
    /// `POST /token` answers 307 to this URL.
    token_redirect: Option<String>,
    groups: BTreeMap<String, Group>,
    rooms: BTreeMap<String, Group>,
    /// When each endpoint admitted its calls in the last second.
    windows: HashMap<Endpoint, VecDeque<Instant>>,
    calls: Vec<RestCall>,
    /// When each non-token request arrived.
    arrivals: Vec<Instant>,
    refused_for_rate: usize,
}

impl Inner {
    fn server_ms(&self) -> i64 {
        real_ms() + self.clock_offset_ms
    }

    fn table(&mut self, scope: ChatScope) -> &mut BTreeMap<String, Group> {
        match scope {
            ChatScope::Group => &mut self.groups,
            ChatScope::Chatroom => &mut self.rooms,
        }
    }

    fn group(&mut self, scope: ChatScope, id: &str, who: &str) -> &mut Group {
        self.table(scope)
            .get_mut(id)
            .unwrap_or_else(|| panic!("{who}: no {scope:?} {id:?} (add_group first)"))
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        match self.tokens.get(token.trim()) {
            Some(None) => true,
            Some(Some(until)) => Instant::now() < *until,
            None => false,
        }
    }

    /// The strictest reading of "N per second": refuse a call when
    /// `per_second` were admitted in the second before it.
    fn admit(&mut self, endpoint: Endpoint, per_second: usize) -> bool {
        let now = Instant::now();
        let window = self.windows.entry(endpoint).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        if window.len() >= per_second {
            false
        } else {
            window.push_back(now);
            true
        }
    }
}

struct Shared {
    org: String,
    app: String,
    client_id: String,
    client_secret: String,
    per_second: usize,
    /// The `application` answered with each token.
    application: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }
}

/// An Easemob REST API for one app (`/{org}/{app}`) on loopback.
#[derive(Clone)]
pub struct FakeEasemobRest {
    pub addr: SocketAddr,
    state: Arc<Shared>,
}

impl std::fmt::Debug for FakeEasemobRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeEasemobRest")
            .field("addr", &self.addr)
            .field("org", &self.state.org)
            .field("app", &self.state.app)
            .finish_non_exhaustive()
    }
}

impl FakeEasemobRest {
    /// Serves app `org`/`app`, whose token is granted for `client_id` and
    /// `client_secret`; each read endpoint admits `per_second` calls in any
    /// one second.
    pub async fn start(
        org: &str,
        app: &str,
        client_id: &str,
        client_secret: &str,
        per_second: usize,
    ) -> FakeEasemobRest {
        let state = Arc::new(Shared {
            org: org.into(),
            app: app.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            per_second,
            application: uuid::Uuid::new_v4().to_string(),
            inner: Mutex::new(Inner {
                token_ttl: 3600,
                tokens: HashMap::new(),
                clock_offset_ms: 0,
                missing: MissingInBatch::default(),
                faults: VecDeque::new(),
                list_status: None,
                list_cycle_at: None,
                token_redirect: None,
                groups: BTreeMap::new(),
                rooms: BTreeMap::new(),
                windows: HashMap::new(),
                calls: Vec::new(),
                arrivals: Vec::new(),
                refused_for_rate: 0,
            }),
        });
        let router = Router::new().fallback(handler).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        FakeEasemobRest { addr, state }
    }

    /// `http://127.0.0.1:PORT` (the paths add `/{org}/{app}`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The ttl of tokens requested without one (default 3600 s; 0 = never
    /// expires).
    pub fn set_token_ttl(&self, secs: u64) {
        self.state.lock().token_ttl = secs;
    }

    /// Every token issued so far stops working (401); new ones work.
    pub fn expire_tokens(&self) {
        self.state.lock().tokens.clear();
    }

    /// The server's clock (`timestamp`, and when a member mute has ended)
    /// is the real one plus `offset` ms.
    pub fn set_clock_offset_ms(&self, offset: i64) {
        self.state.lock().clock_offset_ms = offset;
    }

    pub fn set_missing_in_batch(&self, how: MissingInBatch) {
        self.state.lock().missing = how;
    }

    /// Queues a misbehaviour for the next read.
    pub fn push_fault(&self, fault: RestFault) {
        self.state.lock().faults.push_back(fault);
    }

    /// Every group listing answers `status` (with Easemob's error body),
    /// or as usual again with `None`.
    pub fn set_list_status(&self, status: Option<u16>) {
        self.state.lock().list_status = status;
    }

    /// From page `page` on (1 = the first), the group list answers with the
    /// cursor its first page gave, even on its last page (A -> B -> A with
    /// 3); `None`: as usual.
    pub fn set_list_cycle_at(&self, page: Option<usize>) {
        self.state.lock().list_cycle_at = page;
    }

    /// `POST /token` answers 307 to `url` (`None`: a token as usual).
    pub fn redirect_token_to(&self, url: Option<String>) {
        self.state.lock().token_redirect = url;
    }

    /// Faults pushed and not yet taken by a read.
    pub fn faults_left(&self) -> usize {
        self.state.lock().faults.len()
    }

    /// Creates a group or chat room (no muted members), or sets the
    /// mute-all of an existing one.
    pub fn add_group(&self, scope: ChatScope, id: &str, mute_all: bool) {
        let mut inner = self.state.lock();
        let now = inner.server_ms();
        let group = inner
            .table(scope)
            .entry(id.to_owned())
            .or_insert_with(|| Group {
                created: now,
                last_modified: now,
                mute_all,
                muted: BTreeMap::new(),
            });
        group.mute_all = mute_all;
        group.last_modified = now;
    }

    /// Panics if the group does not exist.
    pub fn set_mute_all(&self, scope: ChatScope, id: &str, mute_all: bool) {
        let mut inner = self.state.lock();
        let now = inner.server_ms();
        let group = inner.group(scope, id, "set_mute_all");
        group.mute_all = mute_all;
        group.last_modified = now;
    }

    /// Mutes `user` until `expire_ms` (epoch ms on the server's clock; -1 =
    /// permanent). Panics if the group does not exist.
    pub fn mute_member(&self, scope: ChatScope, id: &str, user: &str, expire_ms: i64) {
        let mut inner = self.state.lock();
        let now = inner.server_ms();
        let group = inner.group(scope, id, "mute_member");
        group.muted.insert(user.to_owned(), expire_ms);
        group.last_modified = now;
    }

    /// Does nothing if the group or the mute does not exist.
    pub fn unmute_member(&self, scope: ChatScope, id: &str, user: &str) {
        let mut inner = self.state.lock();
        let now = inner.server_ms();
        if let Some(group) = inner.table(scope).get_mut(id) {
            group.muted.remove(user);
            group.last_modified = now;
        }
    }

    pub fn delete_group(&self, scope: ChatScope, id: &str) {
        self.state.lock().table(scope).remove(id);
    }

    /// What `timestamp` would say now.
    pub fn server_time_ms(&self) -> i64 {
        self.state.lock().server_ms()
    }

    /// Every request answered, in the order answered.
    pub fn calls(&self) -> Vec<RestCall> {
        self.state.lock().calls.clone()
    }

    /// Requests to `/token`, whatever their answer.
    pub fn token_requests(&self) -> usize {
        self.count(|c| c.path == "/token")
    }

    /// Non-token calls answered 200.
    pub fn reads(&self) -> usize {
        self.count(|c| c.path != "/token" && c.status == 200)
    }

    /// Most non-token requests that arrived within any one-second window
    /// (all statuses).
    pub fn max_requests_in_any_second(&self) -> usize {
        let mut arrivals = self.state.lock().arrivals.clone();
        arrivals.sort();
        let mut most = 0;
        let mut first = 0;
        for (last, at) in arrivals.iter().enumerate() {
            while at.duration_since(arrivals[first]) >= Duration::from_secs(1) {
                first += 1;
            }
            most = most.max(last - first + 1);
        }
        most
    }

    /// 429s answered: by a window, or scripted.
    pub fn refused_for_rate(&self) -> usize {
        self.state.lock().refused_for_rate
    }

    fn count(&self, f: impl Fn(&RestCall) -> bool) -> usize {
        self.state.lock().calls.iter().filter(|c| f(c)).count()
    }
}

fn real_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `%XX` escapes decoded (a path segment: `+` stays a plus).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = if bytes[i] == b'%' {
            text.get(i + 1..i + 3)
                .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        } else {
            None
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

/// An Easemob error body.
fn error(now_ms: i64, status: u16, error: &str, description: &str) -> Response {
    let exception = match error {
        "invalid_grant" => "EasemobSecurityException",
        "unauthorized" => "EasemobUnauthorizedException",
        "illegal_argument" => "java.lang.IllegalArgumentException",
        "json_parse" => "JsonParseException",
        "resource_not_found" => "EasemobResourceNotFoundException",
        "service_resource_not_found" => "ServiceResourceNotFoundException",
        "forbidden_op" => "EasemobForbiddenOpException",
        "reach_limit" => "EasemobRateLimitException",
        _ => "EasemobServiceException",
    };
    reply(
        status,
        json!({
            "error": error,
            "exception": exception,
            "timestamp": now_ms,
            "duration": 0,
            "error_description": description,
        }),
    )
}

fn not_found(now_ms: i64, id: &str) -> Response {
    error(
        now_ms,
        404,
        "resource_not_found",
        &format!("grpID {id} does not exist!"),
    )
}

fn rate_limited(now_ms: i64) -> Response {
    error(
        now_ms,
        429,
        "reach_limit",
        "This request has reached api limit",
    )
}

/// The error body a scripted status answers with.
fn injected(now_ms: i64, status: u16) -> Response {
    let name = match status {
        400 => "illegal_argument",
        401 => "unauthorized",
        403 => "forbidden_op",
        404 => "resource_not_found",
        413 => "request_entity_too_large",
        429 => "reach_limit",
        503 => "service_unavailable",
        _ => "internal_server_error",
    };
    error(now_ms, status, name, "injected")
}

async fn handler(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let segments: Vec<String> = uri.path().split('/').skip(1).map(percent_decode).collect();
    let under_app = segments.len() >= 2 && segments[0] == s.org && segments[1] == s.app;
    let rest: Vec<&str> = if under_app {
        segments[2..].iter().map(String::as_str).collect()
    } else {
        Vec::new()
    };
    let path = format!(
        "/{}",
        if under_app {
            rest.join("/")
        } else {
            segments.join("/")
        }
    );
    let route = match (&method, rest.as_slice()) {
        (&Method::POST, ["token"]) => Route::Token,
        (&Method::GET, ["chatgroups"]) => Route::List,
        (&Method::GET, [scope, ids]) if ChatScope::from_segment(scope).is_some() => Route::Details(
            ChatScope::from_segment(scope).unwrap(),
            ids.split(',')
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        (&Method::GET, [scope, id, "mute"]) if ChatScope::from_segment(scope).is_some() => {
            Route::Mute(ChatScope::from_segment(scope).unwrap(), (*id).to_owned())
        }
        _ => Route::Unknown,
    };
    let ids = route.ids();
    let redirect = s.lock().token_redirect.clone();
    let response = match (route, redirect) {
        (Route::Token, Some(url)) => redirect_to(&url, &uri),
        (Route::Token, None) => token(&s, &body),
        (route, _) => read(&s, route, &headers, &uri, at).await,
    };
    s.lock().calls.push(RestCall {
        method: method.to_string(),
        path,
        query: uri.query().map(str::to_owned),
        status: response.status().as_u16(),
        at,
        ids,
    });
    response
}

fn token(s: &Shared, body: &[u8]) -> Response {
    let mut inner = s.lock();
    let now_ms = inner.server_ms();
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error(
            now_ms,
            400,
            "json_parse",
            "Unexpected character in the body",
        );
    };
    let text = |key: &str| request.get(key).and_then(Value::as_str);
    if text("grant_type") != Some("client_credentials")
        || text("client_id") != Some(s.client_id.as_str())
        || text("client_secret") != Some(s.client_secret.as_str())
    {
        return error(
            now_ms,
            401,
            "invalid_grant",
            "invalid client_id or client_secret",
        );
    }
    let ttl = match request.get("ttl") {
        None | Some(Value::Null) => Some(inner.token_ttl),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(t)) => t.parse().ok(),
        Some(_) => None,
    };
    let Some(ttl) = ttl else {
        return error(
            now_ms,
            400,
            "illegal_argument",
            "ttl must be a whole number of seconds",
        );
    };
    let access_token = format!("YWMt{}", uuid::Uuid::new_v4().simple());
    let expires = (ttl > 0).then(|| Instant::now() + Duration::from_secs(ttl));
    inner.tokens.insert(access_token.clone(), expires);
    reply(
        200,
        json!({
            "access_token": access_token,
            "expires_in": ttl,
            "application": s.application,
        }),
    )
}

/// 307 to `base` with the request's path and query: a redirect keeps the
/// method and the body (the Client Secret of a token request).
fn redirect_to(base: &str, uri: &Uri) -> Response {
    let location = format!(
        "{}{}",
        base.trim_end_matches('/'),
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    (
        StatusCode::TEMPORARY_REDIRECT,
        [("location", location)],
        "Temporary Redirect",
    )
        .into_response()
}

async fn read(s: &Shared, route: Route, headers: &HeaderMap, uri: &Uri, at: Instant) -> Response {
    let query = uri.query();
    let (delay, truncate) = {
        let mut inner = s.lock();
        inner.arrivals.push(at);
        let now_ms = inner.server_ms();
        if route.endpoint().is_none() {
            return error(
                now_ms,
                404,
                "service_resource_not_found",
                "Service resource not found",
            );
        }
        let waits_for_a_mute_list = matches!(inner.faults.front(), Some(RestFault::Truncate(_)))
            && !matches!(route, Route::Mute(..));
        let fault = if waits_for_a_mute_list {
            None
        } else {
            inner.faults.pop_front()
        };
        let mut truncate = None;
        let delay = match fault {
            Some(RestFault::TooMany { retry_after }) => {
                inner.refused_for_rate += 1;
                let mut response = rate_limited(now_ms);
                if let Some(secs) = retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", secs.to_string().parse().unwrap());
                }
                return response;
            }
            Some(RestFault::Status(status)) => {
                if status == 429 {
                    inner.refused_for_rate += 1;
                }
                return injected(now_ms, status);
            }
            Some(RestFault::NotFoundNaming(id)) => return not_found(now_ms, &id),
            Some(RestFault::Error404(name)) => {
                return error(now_ms, 404, name, "Service resource not found")
            }
            Some(RestFault::Html404) => {
                return (
                    StatusCode::NOT_FOUND,
                    [("content-type", "text/html; charset=utf-8")],
                    HTML_404,
                )
                    .into_response()
            }
            Some(RestFault::Redirect(url)) => return redirect_to(&url, uri),
            Some(RestFault::Truncate(n)) => {
                truncate = Some(n);
                None
            }
            Some(RestFault::Delay(d)) => Some(d),
            None => None,
        };
        (delay, truncate)
    };
    if let Some(delay) = delay {
        // The stand-in's simulated latency: the fault under test.
        tokio::time::sleep(delay).await;
    }
    let mut inner = s.lock();
    let now_ms = inner.server_ms();
    if !inner.authorized(headers) {
        return error(
            now_ms,
            401,
            "unauthorized",
            "Unable to authenticate due to expired access token",
        );
    }
    let endpoint = route.endpoint().expect("a read");
    if !inner.admit(endpoint, s.per_second) {
        inner.refused_for_rate += 1;
        return rate_limited(now_ms);
    }
    match route {
        Route::Details(scope, ids) => details(&mut inner, now_ms, scope, &ids),
        Route::Mute(scope, id) => mute_list(&mut inner, now_ms, scope, &id, truncate),
        Route::List => match inner.list_status {
            Some(status) => injected(now_ms, status),
            None => list(&inner, now_ms, query),
        },
        Route::Token | Route::Unknown => unreachable!("not a read"),
    }
}

fn details(inner: &mut Inner, now_ms: i64, scope: ChatScope, ids: &[String]) -> Response {
    if ids.is_empty() {
        return error(now_ms, 400, "illegal_argument", "no group id given");
    }
    if ids.len() > 100 {
        return error(
            now_ms,
            400,
            "illegal_argument",
            &format!("at most 100 ids per request, {} given", ids.len()),
        );
    }
    let missing = inner.missing;
    let table = inner.table(scope);
    let mut data = Vec::new();
    for id in ids {
        match table.get(id) {
            Some(g) => data.push(json!({
                "id": id,
                "name": id,
                "description": "",
                "membersonly": false,
                "allowinvites": false,
                "maxusers": 200,
                "owner": "owner1",
                "created": g.created,
                "custom": "",
                "mute": g.mute_all,
                "disabled": false,
                "affiliations_count": 1,
                "public": true,
            })),
            None if ids.len() == 1 || missing == MissingInBatch::NotFound => {
                return not_found(now_ms, id)
            }
            None => {}
        }
    }
    let count = data.len();
    reply(
        200,
        json!({"action": "get", "data": data, "timestamp": now_ms, "duration": 0, "count": count}),
    )
}

fn mute_list(
    inner: &mut Inner,
    now_ms: i64,
    scope: ChatScope,
    id: &str,
    truncate: Option<usize>,
) -> Response {
    let Some(group) = inner.table(scope).get(id) else {
        return not_found(now_ms, id);
    };
    let data: Vec<Value> = group
        .muted
        .iter()
        .filter(|(_, expire)| **expire == -1 || **expire > now_ms)
        .map(|(user, expire)| json!({"user": user, "expire": expire}))
        .take(truncate.unwrap_or(usize::MAX))
        .collect();
    reply(
        200,
        json!({"action": "get", "data": data, "timestamp": now_ms, "duration": 0}),
    )
}

fn list(inner: &Inner, now_ms: i64, query: Option<&str>) -> Response {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let param = |key: &str| {
        pairs
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    let limit = match param("limit").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return error(
                now_ms,
                400,
                "illegal_argument",
                "limit must be between 1 and 1000",
            )
        }
    };
    // The cursor is the hex of the next group id to answer.
    let start = match param("cursor") {
        None => String::new(),
        Some(cursor) => match hex::decode(cursor)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        {
            Some(next) => next,
            None => return error(now_ms, 400, "illegal_argument", "cursor is invalid"),
        },
    };
    let page: Vec<(&String, &Group)> = inner
        .groups
        .range(start.clone()..)
        .take(limit + 1)
        .collect();
    let data: Vec<Value> = page
        .iter()
        .take(limit)
        .map(|(id, g)| {
            json!({
                "owner": "owner1",
                "groupid": id,
                "affiliations": 1,
                "type": "group",
                "lastModified": g.last_modified.to_string(),
                "groupname": id,
            })
        })
        .collect();
    let mut body = json!({
        "action": "get",
        "entities": [],
        "data": data,
        "timestamp": now_ms,
        "duration": 0,
        "count": data.len(),
    });
    let number = inner.groups.range(..start).count() / limit + 1;
    let next = match (inner.list_cycle_at, inner.groups.keys().nth(limit)) {
        // A broken cursor: back to the second page, even from the last.
        (Some(at), Some(second)) if number >= at => Some(second),
        _ => page.get(limit).map(|(next, _)| *next),
    };
    if let Some(next) = next {
        body["cursor"] = json!(hex::encode(next.as_bytes()));
    }
    reply(200, body)
}

mod tests {
    use super::*;

    const ORG: &str = "org1";
    const APP: &str = "app1";
    const ID: &str = "YXA6client";
    const SECRET: &str = "YXA6secret";

    async fn fake(per_second: usize) -> FakeEasemobRest {
        FakeEasemobRest::start(ORG, APP, ID, SECRET, per_second).await
    }

    fn url(fake: &FakeEasemobRest, path: &str) -> String {
        format!("{}/{ORG}/{APP}{path}", fake.base_url())
    }

    async fn post_token(fake: &FakeEasemobRest, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(url(fake, "/token"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn token(fake: &FakeEasemobRest) -> String {
        let body =
            json!({"grant_type": "client_credentials", "client_id": ID, "client_secret": SECRET});
        let reply = post_token(fake, body).await;
        assert_eq!(reply.status(), 200);
        let body: Value = reply.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn get(fake: &FakeEasemobRest, token: &str, path: &str) -> (u16, HeaderMap, Value) {
        let reply = reqwest::Client::new()
            .get(url(fake, path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        let headers = reply.headers().clone();
        (status, headers, reply.json().await.unwrap())
    }

    fn ids_of(body: &Value, key: &str) -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item[key].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn token_then_401_after_expire_tokens() {
        let fake = fake(100).await;
        fake.add_group(ChatScope::Group, "g1", false);
        let wrong =
            json!({"grant_type": "client_credentials", "client_id": ID, "client_secret": "nope"});
        let reply = post_token(&fake, wrong).await;
        assert_eq!(reply.status(), 401);
        let body: Value = reply.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant");
        let grant = json!({"grant_type": "password", "client_id": ID, "client_secret": SECRET});
        assert_eq!(post_token(&fake, grant).await.status(), 401);

        let body = json!({"grant_type": "client_credentials", "client_id": ID, "client_secret": SECRET, "ttl": 120});
        let body: Value = post_token(&fake, body).await.json().await.unwrap();
        assert_eq!(body["expires_in"], 120);
        assert!(!body["application"].as_str().unwrap().is_empty());

        let old = token(&fake).await;
        let (status, _, _) = get(&fake, &old, "/chatgroups/g1").await;
        assert_eq!(status, 200);
        fake.expire_tokens();
        let (status, _, body) = get(&fake, &old, "/chatgroups/g1").await;
        assert_eq!(status, 401);
        assert_eq!(body["error"], "unauthorized");
        let (status, _, _) = get(&fake, "not-a-token", "/chatgroups/g1").await;
        assert_eq!(status, 401);
        let reply = reqwest::get(url(&fake, "/chatgroups/g1")).await.unwrap();
        assert_eq!(reply.status(), 401);

        let new = token(&fake).await;
        let (status, _, _) = get(&fake, &new, "/chatgroups/g1").await;
        assert_eq!(status, 200);
        assert_eq!(fake.token_requests(), 5);
        assert_eq!(fake.reads(), 2);
        let calls = fake.calls();
        assert_eq!(calls[0].path, "/token");
        assert_eq!(calls[0].method, "POST");
        assert_eq!(calls[0].status, 401);
        assert_eq!(calls.last().unwrap().path, "/chatgroups/g1");
        assert_eq!(calls.last().unwrap().ids, 1);
    }

    #[tokio::test]
    async fn details_in_the_order_asked_and_missing_ids_both_ways() {
        let fake = fake(100).await;
        fake.add_group(ChatScope::Group, "g1", true);
        fake.add_group(ChatScope::Group, "g2", false);
        fake.add_group(ChatScope::Chatroom, "r1", true);
        fake.set_clock_offset_ms(-60_000);
        let t = token(&fake).await;

        let (status, _, body) = get(&fake, &t, "/chatgroups/g2%2Cg1").await;
        assert_eq!(status, 200);
        assert_eq!(ids_of(&body, "id"), ["g2", "g1"]);
        assert_eq!(body["data"][0]["mute"], false);
        assert_eq!(body["data"][1]["mute"], true);
        assert_eq!(body["count"], 2);
        assert!(body["timestamp"].as_i64().unwrap() < real_ms() - 50_000);
        let call = fake.calls().pop().unwrap();
        assert_eq!((call.path.as_str(), call.ids), ("/chatgroups/g2,g1", 2));

        let (status, _, body) = get(&fake, &t, "/chatrooms/r1").await;
        assert_eq!(status, 200);
        assert_eq!(body["data"][0]["mute"], true);
        let (status, _, _) = get(&fake, &t, "/chatgroups/r1").await;
        assert_eq!(status, 404, "a room is not a group");

        let (status, _, body) = get(&fake, &t, "/chatgroups/gX").await;
        assert_eq!(status, 404);
        assert_eq!(body["error"], "resource_not_found");
        assert_eq!(body["error_description"], "grpID gX does not exist!");

        let (status, _, body) = get(&fake, &t, "/chatgroups/g1,gX").await;
        assert_eq!(status, 200);
        assert_eq!(ids_of(&body, "id"), ["g1"]);
        fake.set_missing_in_batch(MissingInBatch::NotFound);
        let (status, _, body) = get(&fake, &t, "/chatgroups/g1,gX,g2").await;
        assert_eq!(status, 404);
        assert_eq!(body["error_description"], "grpID gX does not exist!");

        fake.delete_group(ChatScope::Group, "g1");
        let (status, _, _) = get(&fake, &t, "/chatgroups/g1").await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn more_than_100_ids_is_illegal() {
        let fake = fake(100).await;
        let t = token(&fake).await;
        let ids: Vec<String> = (0..101).map(|i| format!("g{i}")).collect();
        let (status, _, body) = get(&fake, &t, &format!("/chatgroups/{}", ids.join(","))).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "illegal_argument");
        assert_eq!(fake.calls().pop().unwrap().ids, 101);
        let (status, _, body) =
            get(&fake, &t, &format!("/chatgroups/{}", ids[1..].join(","))).await;
        assert_eq!(status, 200);
        assert_eq!(body["count"], 0);
    }

    #[tokio::test]
    async fn mute_list_leaves_out_ended_mutes() {
        let fake = fake(100).await;
        fake.add_group(ChatScope::Group, "g1", false);
        fake.add_group(ChatScope::Chatroom, "r1", false);
        let now = fake.server_time_ms();
        fake.mute_member(ChatScope::Group, "g1", "u1", now + 60_000);
        fake.mute_member(ChatScope::Group, "g1", "u2", now - 1_000);
        fake.mute_member(ChatScope::Group, "g1", "u3", -1);
        fake.mute_member(ChatScope::Group, "g1", "u4", now + 60_000);
        fake.unmute_member(ChatScope::Group, "g1", "u4");
        fake.mute_member(ChatScope::Chatroom, "r1", "u9", now + 5_000);
        let t = token(&fake).await;

        let (status, _, body) = get(&fake, &t, "/chatgroups/g1/mute").await;
        assert_eq!(status, 200);
        assert_eq!(ids_of(&body, "user"), ["u1", "u3"]);
        assert_eq!(body["data"][0]["expire"], now + 60_000);
        assert_eq!(body["data"][1]["expire"], -1);
        let (_, _, body) = get(&fake, &t, "/chatrooms/r1/mute").await;
        assert_eq!(ids_of(&body, "user"), ["u9"]);
        let (status, _, body) = get(&fake, &t, "/chatgroups/gX/mute").await;
        assert_eq!(status, 404);
        assert_eq!(body["error_description"], "grpID gX does not exist!");
        assert_eq!(fake.calls().pop().unwrap().path, "/chatgroups/gX/mute");
    }

    #[tokio::test]
    async fn window_refuses_beyond_per_second_without_retry_after() {
        let fake = fake(5).await;
        fake.add_group(ChatScope::Group, "g1", false);
        let body = json!({"grant_type": "client_credentials", "client_id": ID, "client_secret": SECRET, "ttl": 1});
        let body: Value = post_token(&fake, body).await.json().await.unwrap();
        let short = body["access_token"].as_str().unwrap().to_owned();
        let t = token(&fake).await;
        for _ in 0..10 {
            token(&fake).await;
        }
        let mut statuses = Vec::new();
        for _ in 0..7 {
            let (status, headers, body) = get(&fake, &t, "/chatgroups/g1").await;
            if status == 429 {
                assert_eq!(body["error"], "reach_limit");
                assert!(headers.get("retry-after").is_none());
            }
            statuses.push(status);
        }
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
        let (status, _, _) = get(&fake, &t, "/chatgroups/g1/mute").await;
        assert_eq!(status, 200, "each endpoint has its own window");
        assert_eq!(fake.refused_for_rate(), 2);
        assert_eq!(fake.max_requests_in_any_second(), 8);

        // Past the 1 s rate window and the 1 s token: the clock under test.
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let (status, _, _) = get(&fake, &t, "/chatgroups/g1").await;
        assert_eq!(status, 200);
        let (status, _, _) = get(&fake, &short, "/chatgroups/g1").await;
        assert_eq!(status, 401, "a ttl of 1 s has run out");
        assert_eq!(fake.reads(), 7);
    }

    #[tokio::test]
    async fn scripted_faults_in_order_for_reads_only() {
        let fake = fake(100).await;
        fake.add_group(ChatScope::Group, "g1", false);
        fake.push_fault(RestFault::TooMany {
            retry_after: Some(7),
        });
        fake.push_fault(RestFault::TooMany { retry_after: None });
        fake.push_fault(RestFault::Status(503));
        fake.push_fault(RestFault::Delay(Duration::from_millis(200)));
        let t = token(&fake).await;

        let (status, headers, body) = get(&fake, &t, "/chatgroups/g1").await;
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "7");
        assert_eq!(body["error"], "reach_limit");
        let (status, headers, _) = get(&fake, &t, "/chatgroups/g1/mute").await;
        assert_eq!(status, 429);
        assert!(headers.get("retry-after").is_none());
        let (status, _, _) = get(&fake, &t, "/chatgroups?limit=5").await;
        assert_eq!(status, 503);
        let started = Instant::now();
        let (status, _, _) = get(&fake, &t, "/chatgroups/g1").await;
        assert_eq!(status, 200);
        assert!(started.elapsed() >= Duration::from_millis(200));
        let (status, _, _) = get(&fake, &t, "/chatgroups/g1").await;
        assert_eq!(status, 200);
        assert_eq!(fake.refused_for_rate(), 2);
        assert_eq!(fake.reads(), 2);
    }

    #[tokio::test]
    async fn group_list_pages_with_a_cursor() {
        let fake = fake(100).await;
        for id in ["g3", "g1", "g2"] {
            fake.add_group(ChatScope::Group, id, false);
        }
        fake.add_group(ChatScope::Chatroom, "r1", false);
        let t = token(&fake).await;

        let (status, _, body) = get(&fake, &t, "/chatgroups?limit=2").await;
        assert_eq!(status, 200);
        assert_eq!(ids_of(&body, "groupid"), ["g1", "g2"]);
        assert_eq!(body["count"], 2);
        assert_eq!(body["data"][0]["type"], "group");
        assert!(body["data"][0]["lastModified"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .is_ok());
        let cursor = body["cursor"].as_str().unwrap().to_owned();
        let (status, _, body) =
            get(&fake, &t, &format!("/chatgroups?limit=2&cursor={cursor}")).await;
        assert_eq!(status, 200);
        assert_eq!(ids_of(&body, "groupid"), ["g3"]);
        assert!(body.get("cursor").is_none());
        let call = fake.calls().pop().unwrap();
        assert_eq!(call.path, "/chatgroups");
        assert_eq!(call.query.unwrap(), format!("limit=2&cursor={cursor}"));
        assert_eq!(call.ids, 0);

        for bad in ["limit=0", "limit=1001", "limit=x", "limit=2&cursor=zz"] {
            let (status, _, body) = get(&fake, &t, &format!("/chatgroups?{bad}")).await;
            assert_eq!(status, 400, "{bad}");
            assert_eq!(body["error"], "illegal_argument");
        }
    }

    #[tokio::test]
    async fn what_a_proxy_answers_instead_and_broken_listings() {
        let fake = fake(100).await;
        for id in ["g1", "g2", "g3", "g4", "g5"] {
            fake.add_group(ChatScope::Group, id, false);
        }
        for u in ["u1", "u2", "u3"] {
            fake.mute_member(ChatScope::Group, "g1", u, -1);
        }
        let t = token(&fake).await;
        let no_redirects = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        fake.push_fault(RestFault::Html404);
        fake.push_fault(RestFault::NotFoundNaming("g9".into()));
        fake.push_fault(RestFault::Error404("service_resource_not_found"));
        fake.push_fault(RestFault::Status(404));
        fake.push_fault(RestFault::Truncate(1));
        fake.push_fault(RestFault::Redirect("http://127.0.0.2:9".into()));

        let reply = no_redirects
            .get(url(&fake, "/chatgroups/g1"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 404);
        assert!(reply.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert_eq!(reply.text().await.unwrap(), HTML_404);
        let (status, _, body) = get(&fake, &t, "/chatgroups/g1").await;
        assert_eq!(status, 404);
        assert_eq!(body["error"], "resource_not_found");
        assert_eq!(body["error_description"], "grpID g9 does not exist!");
        let (status, _, body) = get(&fake, &t, "/chatgroups/g1").await;
        assert_eq!(status, 404);
        assert_eq!(body["error"], "service_resource_not_found");
        let (status, _, body) = get(&fake, &t, "/chatgroups/g1").await;
        assert_eq!(status, 404);
        assert_eq!(
            (&body["error"], &body["error_description"]),
            (&json!("resource_not_found"), &json!("injected"))
        );
        let (status, _, body) = get(&fake, &t, "/chatgroups/g1/mute").await;
        assert_eq!(status, 200);
        assert_eq!(ids_of(&body, "user"), ["u1"]);
        let reply = no_redirects
            .get(url(&fake, "/chatgroups/g1/mute?x=1"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 307);
        assert_eq!(
            reply.headers()["location"],
            format!("http://127.0.0.2:9/{ORG}/{APP}/chatgroups/g1/mute?x=1")
        );
        assert_eq!(fake.faults_left(), 0);
        let (_, _, body) = get(&fake, &t, "/chatgroups/g1/mute").await;
        assert_eq!(ids_of(&body, "user"), ["u1", "u2", "u3"]);

        // A cursor that comes back: A -> B -> A, from the last page too.
        fake.set_list_cycle_at(Some(3));
        let (_, _, page1) = get(&fake, &t, "/chatgroups?limit=2").await;
        let a = page1["cursor"].as_str().unwrap().to_owned();
        let (_, _, page2) = get(&fake, &t, &format!("/chatgroups?limit=2&cursor={a}")).await;
        assert_eq!(ids_of(&page2, "groupid"), ["g3", "g4"]);
        let b = page2["cursor"].as_str().unwrap().to_owned();
        assert_ne!(a, b);
        let (_, _, page3) = get(&fake, &t, &format!("/chatgroups?limit=2&cursor={b}")).await;
        assert_eq!(ids_of(&page3, "groupid"), ["g5"]);
        assert_eq!(page3["cursor"].as_str().unwrap(), a);
        fake.set_list_cycle_at(None);
        let (_, _, page3) = get(&fake, &t, &format!("/chatgroups?limit=2&cursor={b}")).await;
        assert!(page3.get("cursor").is_none());
        fake.set_list_status(Some(503));
        let (status, _, body) = get(&fake, &t, "/chatgroups?limit=2").await;
        assert_eq!(status, 503);
        assert_eq!(body["error"], "service_unavailable");
        let (status, _, _) = get(&fake, &t, "/chatgroups/g1").await;
        assert_eq!(status, 200, "only the listing fails");

        // The token request redirected keeps its method and its secret.
        fake.redirect_token_to(Some("http://127.0.0.2:9".into()));
        let body =
            json!({"grant_type": "client_credentials", "client_id": ID, "client_secret": SECRET});
        let reply = no_redirects
            .post(url(&fake, "/token"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 307);
        assert_eq!(
            reply.headers()["location"],
            format!("http://127.0.0.2:9/{ORG}/{APP}/token")
        );
    }
}
