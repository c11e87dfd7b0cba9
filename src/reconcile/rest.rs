//! Easemob's REST API, as far as reading the mirrored state needs it: an app
//! token, group and chat-room details (mute-all), their mute lists, and the
//! list of the app's groups.
//!
//! Every read goes through the app's [`Limiter`] at `rate_per_second` (the
//! App Key's 100/s is shared with the client SDKs); a 429 pauses every read
//! of the app, for `Retry-After` when sent, else doubling from 1 s. The app
//! token is fetched once and kept until shortly before `expires_in`; a 401
//! renews it once for all the reads that drew it, and a token that is
//! refused before it ever worked is not renewed again for a while: Easemob
//! bans accounts that fetch tokens too often. Errors name the app and the
//! call, never the URL, the token or the credentials.
//!
//! Redirects are never followed: the token request carries the Client
//! Secret and every read the token, and a redirect to another host would
//! hand them over. A 404 means "does not exist" only with Easemob's own
//! error body ([`Missing`]); a maintenance page or a proxy's 404 is an
//! answer like any other failure.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use tokio::time::Instant;

use super::config::RestConfig;
use super::metrics::{Call, ReconcileMetrics, Renewal};
use crate::config::Secret;
use crate::event::Scope;
use crate::limit::Limiter;

/// Ids per details call, Easemob's maximum.
pub const DETAILS_BATCH: usize = 100;
/// Groups per page of `GET /chatgroups` (Easemob allows up to 1000).
pub const LIST_PAGE: usize = 1000;
/// A token is renewed this long before `expires_in` says it ends.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// At most one renewal a 401 causes, and one fetch after a failed one, in
/// this long: whatever Easemob answers, tokens are never fetched in a loop.
const MIN_RENEWAL_GAP: Duration = Duration::from_secs(60);
/// Rate-limited answers one read may draw before it counts as failed.
const MAX_RATE_LIMITED: u32 = 10;
/// Attempts of a read that fails with a 5xx or on the network.
const MAX_ATTEMPTS: u32 = 3;

/// Why a read has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// 404 with Easemob's `resource_not_found` body: what its description
    /// names does not exist ([`Missing::names`] says whether that is the
    /// group asked for).
    #[error("404 resource_not_found ({})", .0.description)]
    NotFound(Missing),
    /// A 404 without Easemob's `resource_not_found` body (an HTML page, a
    /// proxy's answer, another error): says nothing about the group.
    #[error("HTTP 404 that is not Easemob's answer for a missing group ({0})")]
    Undocumented404(String),
    /// A redirect (3xx), not followed.
    #[error("HTTP {0}: a redirect, not followed (calls go to base_url only)")]
    Redirected(u16),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("the token is refused (401) and was renewed too recently to renew again; check client_id and client_secret")]
    Unauthorized,
    #[error("no token: {0}")]
    Token(String),
    #[error("{0}")]
    Transport(String),
    #[error("the answer is not the documented JSON: {0}")]
    Body(String),
}

impl RestError {
    /// The `status` label of a failed call.
    pub fn label(&self) -> String {
        match self {
            RestError::NotFound(_) | RestError::Undocumented404(_) => "404".into(),
            RestError::Redirected(s) | RestError::Status(s) => s.to_string(),
            RestError::Unauthorized => "401".into(),
            RestError::Token(_) => "token".into(),
            RestError::Transport(_) => "transport".into(),
            RestError::Body(_) => "body".into(),
        }
    }
}

/// Easemob's answer that something does not exist: a 404 whose body is
/// `{"error": "resource_not_found", "error_description": "grpID 42 does
/// not exist!", "timestamp": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub description: String,
    /// The answer's server time, when it has one.
    pub at_ms: Option<i64>,
}

impl Missing {
    /// Whether the description names `id`: in Easemob's documented
    /// "grpID {id} does not exist!" the word before "does not exist", in
    /// any other wording (unconfirmed, e.g. for chat rooms) a whole word
    /// (`g1` is not named by "g10"). An answer naming none, or another, is
    /// no evidence about `id`.
    pub fn names(&self, id: &str) -> bool {
        let words: Vec<&str> = self
            .description
            .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
            .map(|w| w.trim_end_matches(['!', '.', ',', ':', ';', '?']))
            .filter(|w| !w.is_empty())
            .collect();
        match words.windows(3).position(|w| w == ["does", "not", "exist"]) {
            Some(at) => at > 0 && words[at - 1] == id,
            None => words.contains(&id),
        }
    }

    /// A 404's body, if it is Easemob's `resource_not_found`; otherwise
    /// what it is instead, in a few words.
    fn from_body(body: &[u8]) -> Result<Missing, String> {
        #[derive(Deserialize)]
        struct ErrorBody {
            error: String,
            #[serde(default)]
            error_description: String,
            #[serde(default)]
            timestamp: Option<i64>,
        }
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) if e.error == "resource_not_found" => Ok(Missing {
                description: e.error_description,
                at_ms: e.timestamp,
            }),
            Ok(e) => Err(format!("error {:?}", e.error)),
            Err(_) if body.trim_ascii_start().starts_with(b"<") => Err("an HTML page".into()),
            Err(_) if body.is_empty() => Err("no body".into()),
            Err(_) => Err("not Easemob's JSON error".into()),
        }
    }
}

/// The envelope of every answer: `data` and the server's clock.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    data: T,
    /// Server time (ms): the only clock on a read.
    timestamp: i64,
    #[serde(default)]
    cursor: Option<String>,
}

/// One group's or chat room's details, as far as the mute goes.
#[derive(Debug, Clone, Deserialize)]
pub struct Details {
    pub id: String,
    /// Mute-all is on; `None` when the answer has no `mute` field (it is
    /// then not compared, never taken as off).
    #[serde(default)]
    pub mute: Option<bool>,
}

/// A muted member: `expire` is the end in epoch ms (-1, 0 or a far-future
/// value for a permanent mute).
#[derive(Debug, Clone, Deserialize)]
pub struct MutedMember {
    pub user: String,
    pub expire: i64,
}

/// A group as `GET /chatgroups` lists it.
#[derive(Debug, Clone, Deserialize)]
struct Listed {
    groupid: String,
}

/// A read's result with the server time it was taken at.
#[derive(Debug, Clone)]
pub struct Read<T> {
    pub data: T,
    pub at_ms: i64,
}

/// The app token and what the renewal rules need to know about it.
#[derive(Default)]
struct TokenSlot {
    token: Option<String>,
    renew_at: Option<Instant>,
    /// Bumped by every fetch: a 401 on an older token is already handled.
    generation: u64,
    /// The last renewal a 401 caused: at most one per [`MIN_RENEWAL_GAP`].
    renewed_for_401: Option<Instant>,
    /// The last fetch failed, when and why: no other is tried before
    /// [`MIN_RENEWAL_GAP`] has passed.
    failed: Option<(Instant, String)>,
}

/// One app's REST client.
pub struct Rest {
    appkey: String,
    /// `{base_url}/{org}/{app}`.
    root: String,
    client_id: Secret,
    client_secret: Secret,
    http: reqwest::Client,
    limiter: Limiter,
    token: tokio::sync::Mutex<TokenSlot>,
    /// Answers other than success since the last [`Rest::take_errors`].
    errors: std::sync::Mutex<BTreeMap<String, usize>>,
    metrics: ReconcileMetrics,
}

impl Rest {
    pub fn new(
        appkey: &str,
        config: &RestConfig,
        timeout: Duration,
        limiter: Limiter,
        metrics: ReconcileMetrics,
    ) -> anyhow::Result<Rest> {
        let (org, app) = config.names(appkey);
        let http = reqwest::Client::builder()
            // A redirect would carry the token (or the Client Secret) to
            // wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()?;
        // One caller: the whole limit is ours (Redis mode shares it exactly).
        limiter.set_share(1, 1);
        Ok(Rest {
            appkey: appkey.to_owned(),
            root: format!("{}/{org}/{app}", config.base_url.trim_end_matches('/')),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            http,
            limiter,
            token: tokio::sync::Mutex::new(TokenSlot::default()),
            errors: Default::default(),
            metrics,
        })
    }

    pub fn appkey(&self) -> &str {
        &self.appkey
    }

    /// The answers other than success (by status, or `transport`) since
    /// the last call, retried ones included.
    pub fn take_errors(&self) -> BTreeMap<String, usize> {
        std::mem::take(&mut *self.errors.lock().expect("errors lock"))
    }

    /// Counts one call, and one error unless it succeeded (a 404 is
    /// counted by [`Rest::not_found`], which reads its body).
    fn answered(&self, call: Call, status: &str) {
        self.metrics.call(call, status);
        if !status.starts_with('2') && status != "404" {
            self.error(status);
        }
    }

    fn error(&self, what: &str) {
        *self
            .errors
            .lock()
            .expect("errors lock")
            .entry(what.to_owned())
            .or_default() += 1;
    }

    /// A 404: Easemob's answer that something does not exist (not an
    /// error), or anything else (an error).
    fn not_found(&self, body: &[u8]) -> RestError {
        match Missing::from_body(body) {
            Ok(missing) => RestError::NotFound(missing),
            Err(what) => {
                self.error("404 (not Easemob's error body)");
                RestError::Undocumented404(what)
            }
        }
    }

    /// Mute-all of up to [`DETAILS_BATCH`] groups or chat rooms. Ids the
    /// answer leaves out are not in `data`; Easemob's 404 is
    /// [`RestError::NotFound`].
    pub async fn details(
        &self,
        scope: Scope,
        ids: &[&str],
    ) -> Result<Read<Vec<Details>>, RestError> {
        let (path, sep) = match scope {
            Scope::Group => ("chatgroups", ","),
            // The chat-room page asks for the commas escaped.
            Scope::Chatroom => ("chatrooms", "%2C"),
        };
        let joined: Vec<String> = ids.iter().map(|id| escape(id)).collect();
        let page: Envelope<Vec<Details>> = self
            .get(
                Call::Details,
                &format!("/{path}/{}", joined.join(sep)),
                None,
            )
            .await?;
        Ok(Read {
            data: page.data,
            at_ms: page.timestamp,
        })
    }

    /// The muted members of one group or chat room.
    pub async fn mute_list(
        &self,
        scope: Scope,
        id: &str,
    ) -> Result<Read<Vec<MutedMember>>, RestError> {
        let path = match scope {
            Scope::Group => "chatgroups",
            Scope::Chatroom => "chatrooms",
        };
        let page: Envelope<Vec<MutedMember>> = self
            .get(
                Call::MuteList,
                &format!("/{path}/{}/mute", escape(id)),
                None,
            )
            .await?;
        Ok(Read {
            data: page.data,
            at_ms: page.timestamp,
        })
    }

    /// One page of the app's groups: their ids and the cursor of the next
    /// page (`None` at the end).
    pub async fn list_groups(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), RestError> {
        let mut query = vec![("limit", LIST_PAGE.to_string())];
        if let Some(c) = cursor {
            query.push(("cursor", c.to_owned()));
        }
        let page: Envelope<Vec<Listed>> = self.get(Call::List, "/chatgroups", Some(&query)).await?;
        let next = page.cursor.filter(|c| !c.is_empty());
        Ok((page.data.into_iter().map(|g| g.groupid).collect(), next))
    }

    /// A GET under the app, through the limiter, with the token; retried on
    /// 429 (after the app-wide pause), once after a 401 renewal, and on 5xx
    /// or network errors a few times.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        call: Call,
        path: &str,
        query: Option<&[(&str, String)]>,
    ) -> Result<T, RestError> {
        let (mut rate_limited, mut failures, mut renewed) = (0u32, 0u32, false);
        loop {
            // The token first: without one, fail before taking a slot.
            let (token, generation) = self.token().await?;
            self.limiter.acquire().await;
            let sent = Instant::now();
            let mut request = self
                .http
                .get(format!("{}{path}", self.root))
                .bearer_auth(&token);
            if let Some(q) = query {
                request = request.query(q);
            }
            let answer = request.send().await;
            let response = match answer {
                Ok(r) => r,
                Err(e) => {
                    self.answered(call, "transport");
                    failures += 1;
                    if failures >= MAX_ATTEMPTS {
                        return Err(RestError::Transport(transport(e)));
                    }
                    tokio::time::sleep(backoff(failures)).await;
                    continue;
                }
            };
            let status = response.status();
            self.answered(call, status.as_str());
            match status {
                s if s.is_success() => {
                    self.limiter.admitted();
                    let body = response
                        .bytes()
                        .await
                        .map_err(|e| RestError::Transport(transport(e)))?;
                    return serde_json::from_slice(&body)
                        .map_err(|e| RestError::Body(e.to_string()));
                }
                // One renewal per read: a second 401 is the answer.
                StatusCode::UNAUTHORIZED => {
                    if renewed || !self.unauthorized(generation).await? {
                        return Err(RestError::Unauthorized);
                    }
                    renewed = true;
                }
                StatusCode::NOT_FOUND => {
                    let body = response.bytes().await.unwrap_or_default();
                    return Err(self.not_found(&body));
                }
                s if s.is_redirection() => return Err(RestError::Redirected(s.as_u16())),
                StatusCode::TOO_MANY_REQUESTS => {
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    self.limiter.rate_limited(sent, retry_after).await;
                    rate_limited += 1;
                    if rate_limited >= MAX_RATE_LIMITED {
                        return Err(RestError::Status(429));
                    }
                }
                s if s.is_server_error() => {
                    failures += 1;
                    if failures >= MAX_ATTEMPTS {
                        return Err(RestError::Status(s.as_u16()));
                    }
                    tokio::time::sleep(backoff(failures)).await;
                }
                s => return Err(RestError::Status(s.as_u16())),
            }
        }
    }

    /// The current token and its generation; fetches one when there is
    /// none or it is about to expire.
    async fn token(&self) -> Result<(String, u64), RestError> {
        let mut slot = self.token.lock().await;
        if let Some((at, why)) = &slot.failed {
            if at.elapsed() < MIN_RENEWAL_GAP {
                return Err(RestError::Token(why.clone()));
            }
        }
        let fresh = slot.renew_at.is_some_and(|at| Instant::now() < at);
        match (&slot.token, fresh) {
            (Some(t), true) => Ok((t.clone(), slot.generation)),
            (Some(_), false) => self.fetch(&mut slot, Renewal::Expiry).await,
            (None, _) => self.fetch(&mut slot, Renewal::Start).await,
        }
    }

    /// A read with the token of `generation` drew a 401: whether to try
    /// again (a newer token exists, or one was fetched now).
    async fn unauthorized(&self, generation: u64) -> Result<bool, RestError> {
        let mut slot = self.token.lock().await;
        if slot.generation != generation {
            return Ok(true);
        }
        if slot
            .renewed_for_401
            .is_some_and(|at| at.elapsed() < MIN_RENEWAL_GAP)
        {
            tracing::warn!(app = %self.appkey, "Easemob refuses a token renewed after a 401 less than a minute ago; not fetching another (check client_id and client_secret)");
            return Ok(false);
        }
        tracing::info!(app = %self.appkey, "Easemob answered 401: renewing the app token");
        slot.renewed_for_401 = Some(Instant::now());
        self.fetch(&mut slot, Renewal::Unauthorized).await?;
        Ok(true)
    }

    /// Whether reads cannot go now because the last token fetch failed
    /// (a pass stops reading the app then, instead of trying every group).
    pub async fn token_failure(&self) -> Option<String> {
        let slot = self.token.lock().await;
        slot.failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < MIN_RENEWAL_GAP)
            .map(|(_, why)| why.clone())
    }

    /// `POST /token` with the client credentials; a failure is remembered.
    async fn fetch(&self, slot: &mut TokenSlot, why: Renewal) -> Result<(String, u64), RestError> {
        let fetched = self.fetch_once(slot, why).await;
        slot.failed = match &fetched {
            Err(RestError::Token(e)) => Some((Instant::now(), e.clone())),
            _ => None,
        };
        fetched
    }

    async fn fetch_once(
        &self,
        slot: &mut TokenSlot,
        why: Renewal,
    ) -> Result<(String, u64), RestError> {
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            #[serde(default)]
            expires_in: u64,
        }
        self.metrics.renewed(why);
        let body = serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": self.client_id.expose(),
            "client_secret": self.client_secret.expose(),
        });
        let answer = self
            .http
            .post(format!("{}/token", self.root))
            .json(&body)
            .send()
            .await
            .map_err(|e| RestError::Token(transport(e)))?;
        let status = answer.status();
        self.answered(Call::Token, status.as_str());
        if status.is_redirection() {
            return Err(RestError::Token(format!(
                "POST /token answered {status}, a redirect: not followed (the Client Secret goes to base_url only); check base_url"
            )));
        }
        if !status.is_success() {
            return Err(RestError::Token(format!(
                "POST /token answered {status}; check client_id and client_secret"
            )));
        }
        let token: Token = answer
            .json()
            .await
            .map_err(|e| RestError::Token(format!("not a token: {}", e.without_url())))?;
        let now = Instant::now();
        // 0 = no expiry; otherwise renew ahead of the end (at half the
        // lifetime for short-lived tokens).
        const YEAR: u64 = 365 * 86_400;
        let life = Duration::from_secs(if token.expires_in == 0 {
            YEAR
        } else {
            token.expires_in.min(YEAR)
        });
        let ahead = RENEW_BEFORE.min(life / 2);
        slot.token = Some(token.access_token.clone());
        slot.renew_at = Some(now + life - ahead);
        slot.generation += 1;
        Ok((token.access_token, slot.generation))
    }
}

/// A failed request in words, with its causes and without its URL.
fn transport(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out (reconcile.request_timeout_ms)".into();
    }
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The pause before the `n`th retry of a failed read.
fn backoff(n: u32) -> Duration {
    Duration::from_millis(500 << n.min(5))
}

/// An id as one URL path segment: everything but unreserved characters
/// percent-encoded (ids with `,` or `/` must not split the path).
fn escape(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The end of a member mute as the state keeps it: `None` for permanent
/// (-1, 0, or anything past the year 2100, `i64::MAX` included).
pub fn until(expire: i64) -> Option<i64> {
    const YEAR_2100_MS: i64 = 4_102_444_800_000;
    (expire > 0 && expire < YEAR_2100_MS).then_some(expire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_single_path_segments() {
        assert_eq!(escape("123456"), "123456");
        assert_eq!(escape("a,b/c d"), "a%2Cb%2Fc%20d");
    }

    #[test]
    fn a_details_item_without_mute_says_nothing_about_mute_all() {
        let d: Details = serde_json::from_str(r#"{"id":"g1","name":"n"}"#).unwrap();
        assert_eq!(d.mute, None);
        let d: Details = serde_json::from_str(r#"{"id":"g1","mute":true}"#).unwrap();
        assert_eq!(d.mute, Some(true));
    }

    #[test]
    fn only_easemob_s_own_not_found_naming_the_id_is_about_the_id() {
        let body = br#"{"error":"resource_not_found","exception":"EasemobResourceNotFoundException","timestamp":1700000000000,"duration":0,"error_description":"grpID 262246968131585 does not exist!"}"#;
        let m = Missing::from_body(body).unwrap();
        assert_eq!(m.at_ms, Some(1_700_000_000_000));
        assert!(m.names("262246968131585"));
        // Not a prefix, a suffix or another word of it.
        for other in [
            "26224696813158",
            "62246968131585",
            "grpID",
            "",
            "does",
            "exist",
        ] {
            assert!(!m.names(other), "{other:?}");
        }
        let quoted = Missing {
            description: "chatroom 'r-1' does not exist.".into(),
            at_ms: None,
        };
        assert!(quoted.names("r-1"));
        let reworded = Missing {
            description: "The chat room r-2 was not found".into(),
            at_ms: None,
        };
        assert!(reworded.names("r-2") && !reworded.names("r-1"));
        let html = b"<!DOCTYPE html><html><body>404 Not Found</body></html>";
        assert_eq!(Missing::from_body(html), Err("an HTML page".into()));
        assert_eq!(
            Missing::from_body(br#"{"error":"service_resource_not_found"}"#),
            Err("error \"service_resource_not_found\"".into())
        );
        assert_eq!(Missing::from_body(b""), Err("no body".into()));
        assert_eq!(
            Missing::from_body(b"Not Found"),
            Err("not Easemob's JSON error".into())
        );
    }

    #[test]
    fn permanent_mutes_have_no_end() {
        for permanent in [-1, 0, i64::MAX, 4_102_444_800_000] {
            assert_eq!(until(permanent), None, "{permanent}");
        }
        assert_eq!(until(1_700_000_000_000), Some(1_700_000_000_000));
    }
}
