//! Agora Chat REST API (the Easemob family): mute-all on and off
//! (`POST`/`DELETE …/ban`), member mutes (`POST …/mute`) and unmutes
//! (`DELETE …/mute/{users}`), on groups (`/chatgroups`) and chat rooms
//! (`/chatrooms`), and the reads `verify` makes (details with `mute`, and
//! the mute lists).
//!
//! Every path starts with the app's prefix (`{org}/{app}` on Agora Chat,
//! `app-id/{app_id}` on Shengwang: configured, as Agora's newer reference
//! does not show its form). Calls carry `Authorization: Bearer <app
//! token>`, an AccessToken2 made here from the App ID and App Certificate
//! (there is no token endpoint), kept, and made again before it ends or
//! once Agora answers 401 ([`super::credential`]). Errors are HTTP
//! statuses with `{error, error_description}`: 429 rate limit, 401 the
//! token, 404 no such group, 403 and 400 refusals of the call itself.
//!
//! Sources: the shared notes (providers-readback.md section 4,
//! providers.md section 5), AgoraIO/Docs-Source's group and chat room mute
//! pages, and AgoraIO/Tools' AccessToken2 and ChatTokenBuilder2 (Go and
//! Python), whose published test vector pins the token below.

use std::io::Write;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use super::credential::{Credential, Refusal};
use super::readback::{HeldMute, MuteEnd, Observed, Read};
use super::{Method, Outcome, Reply, Request, Transient, Unsendable};
use crate::config::error::Invalid;
use crate::config::secret::Secret;
use crate::limit::RateLimitConfig;
use crate::policy::{Action, Addressing, Capabilities, Dest, MuteLength, Op};
use crate::time::unix_ms;

/// Users per mute or unmute call: 60 for groups; chat rooms are documented
/// as 60 or 100 depending on the page, so 60 for both.
pub const MAX_MEMBERS_PER_CALL: usize = 60;
/// Ids per details read.
pub const MAX_IDS_PER_DETAILS: usize = 100;
/// The longest app token Agora accepts (24 h).
pub const MAX_TOKEN_SECONDS: u64 = 86_400;
/// `mute_duration` is a Long of milliseconds with no documented maximum.
pub const MAX_MUTE_SECONDS: u64 = (i64::MAX / 1000) as u64;
/// An `expire` at or past 2100-01-01 is a permanent mute (how a permanent
/// one shows is unconfirmed; -1 and 0 are read as permanent too).
const YEAR_2100_MS: i64 = 4_102_444_800_000;

/// `[targets.NAME]` with `kind = "agora"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgoraConfig {
    /// Your app's REST host, as the console shows it (e.g.
    /// `https://a41.chat.agora.io`).
    pub base_url: String,
    /// The path to your app under the host: `{org}/{app}` written out
    /// (Agora Chat: the two halves of the app key, e.g.
    /// `"61717166/1069763"`) or `"app-id/{app_id}"` (Shengwang), where
    /// `{app_id}` stands for `app_id`.
    pub path_prefix: String,
    /// The App ID (32 hex characters).
    pub app_id: String,
    /// The App Certificate (32 hex characters) app tokens are made from;
    /// `env:NAME` reads it from the environment.
    pub app_certificate: Secret,
    /// How long each app token is valid (at most 24 h); a new one is made
    /// when 90 % of this is spent.
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime_seconds: u64,
    /// Agora allows 100 calls per second per App ID for each of these
    /// APIs, shared with the client SDKs: this is mutebridge's share, for
    /// the whole consumer group.
    #[serde(default = "default_rate")]
    pub rate_per_second: f64,
    /// How the worker replicas share `rate_per_second`.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
}

fn default_token_lifetime() -> u64 {
    MAX_TOKEN_SECONDS
}

fn default_rate() -> f64 {
    50.0
}

/// What an Agora target can do: mute a group or a chat room, everyone or
/// members; a member mute is timed (ms) or permanent; a mute-all has no
/// length.
pub const CAPABILITIES: Capabilities = Capabilities {
    kind: "agora",
    addressing: Addressing::GroupOrChatroom,
    max_mute_seconds: MAX_MUTE_SECONDS,
    timed_mute_all: false,
    chatroom_notify: false,
};

/// 32 hexadecimal characters, what AccessToken2 requires of an App ID.
fn is_app_hex(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl AgoraConfig {
    /// Keys relative to the target.
    pub fn validate(&self) -> Result<(), Invalid> {
        super::check_rate(Some(self.rate_per_second))?;
        self.rate_limit
            .validate()
            .map_err(|e| e.under("rate_limit"))?;
        super::check_url("base_url", &self.base_url)?;
        if !is_app_hex(&self.app_id) {
            return Err(Invalid::new(
                "app_id",
                "must be the App ID: 32 hexadecimal characters",
            ));
        }
        // Only its presence: configs are checked with placeholder secrets
        // (a refused token says to check it).
        if self.app_certificate.is_resolved() && self.app_certificate.expose().is_empty() {
            return Err(Invalid::new(
                "app_certificate",
                "must be the App Certificate (32 hexadecimal characters)",
            ));
        }
        let prefix = self.prefix();
        let segments: Vec<&str> = prefix.split('/').collect();
        let bad = prefix.is_empty()
            || segments.iter().any(|s| s.is_empty())
            || prefix.contains(['{', '}', '?', '#', '%', ' ']);
        if bad {
            return Err(Invalid::new(
                "path_prefix",
                format!(
                    "{:?} is not a path to the app: write \"ORG/APP\" (the app key's two halves) or \"app-id/{{app_id}}\"",
                    self.path_prefix
                ),
            ));
        }
        if !(600..=MAX_TOKEN_SECONDS).contains(&self.token_lifetime_seconds) {
            return Err(Invalid::new(
                "token_lifetime_seconds",
                format!(
                    "{} is not between 600 and {MAX_TOKEN_SECONDS} (Agora's longest app token)",
                    self.token_lifetime_seconds
                ),
            ));
        }
        Ok(())
    }

    /// `path_prefix` with `{app_id}` filled in and no slashes around it.
    fn prefix(&self) -> String {
        self.path_prefix
            .replace("{app_id}", &self.app_id)
            .trim_matches('/')
            .to_owned()
    }
}

/// One service of an AccessToken2: its type, its privileges (sorted by
/// privilege on the wire) and what the service appends (Chat: the user ID).
#[derive(Debug, Clone)]
pub struct TokenService {
    pub kind: u16,
    pub privileges: Vec<(u16, u32)>,
    pub tail: Vec<u8>,
}

/// AccessToken2's Chat service type and its app privilege.
const SERVICE_CHAT: u16 = 5;
const PRIVILEGE_CHAT_APP: u16 = 2;

fn pack_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The bytes an AccessToken2 compresses: the packed signature, then what
/// it signs (App ID, issue time, lifetime in seconds from issue, salt, the
/// services in ascending type), all little-endian, strings prefixed with
/// their u16 length. The signing key is HMAC-SHA256(salt, HMAC-SHA256(
/// issue time, App Certificate)).
pub fn access_token2_content(
    app_id: &str,
    app_certificate: &str,
    issue_ts: u32,
    expire: u32,
    salt: u32,
    services: &[TokenService],
) -> Vec<u8> {
    let mut info = Vec::new();
    pack_string(&mut info, app_id.as_bytes());
    info.extend_from_slice(&issue_ts.to_le_bytes());
    info.extend_from_slice(&expire.to_le_bytes());
    info.extend_from_slice(&salt.to_le_bytes());
    info.extend_from_slice(&(services.len() as u16).to_le_bytes());
    let mut sorted: Vec<&TokenService> = services.iter().collect();
    sorted.sort_by_key(|s| s.kind);
    for s in sorted {
        info.extend_from_slice(&s.kind.to_le_bytes());
        let mut privileges = s.privileges.clone();
        privileges.sort();
        info.extend_from_slice(&(privileges.len() as u16).to_le_bytes());
        for (p, e) in privileges {
            info.extend_from_slice(&p.to_le_bytes());
            info.extend_from_slice(&e.to_le_bytes());
        }
        info.extend_from_slice(&s.tail);
    }
    let key = hmac_sha256(&issue_ts.to_le_bytes(), app_certificate.as_bytes());
    let key = hmac_sha256(&salt.to_le_bytes(), &key);
    let signature = hmac_sha256(&key, &info);
    let mut content = Vec::with_capacity(info.len() + 34);
    pack_string(&mut content, &signature);
    content.extend_from_slice(&info);
    content
}

/// An AccessToken2: `007` and the content as a zlib stream in standard
/// base64.
pub fn access_token2(
    app_id: &str,
    app_certificate: &str,
    issue_ts: u32,
    expire: u32,
    salt: u32,
    services: &[TokenService],
) -> String {
    let content = access_token2_content(app_id, app_certificate, issue_ts, expire, salt, services);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let compressed = z
        .write_all(&content)
        .and_then(|()| z.finish())
        .expect("compressing into memory cannot fail");
    format!(
        "007{}",
        base64::engine::general_purpose::STANDARD.encode(compressed)
    )
}

/// The Chat service with the app privilege (ChatTokenBuilder2's
/// `build_app_token`): what an app token grants, for `expire` seconds.
pub fn chat_app_service(expire: u32) -> TokenService {
    TokenService {
        kind: SERVICE_CHAT,
        privileges: vec![(PRIVILEGE_CHAT_APP, expire)],
        // The Chat service's user ID, empty for an app token.
        tail: vec![0, 0],
    }
}

/// An Agora Chat app token valid for `expire` seconds from `issue_ts`.
pub fn app_token(
    app_id: &str,
    app_certificate: &str,
    issue_ts: u32,
    expire: u32,
    salt: u32,
) -> String {
    access_token2(
        app_id,
        app_certificate,
        issue_ts,
        expire,
        salt,
        &[chat_app_service(expire)],
    )
}

/// The bytes an AccessToken2 carries, or `None` when it is not one.
#[cfg(test)]
pub fn decode_access_token2(token: &str) -> Option<Vec<u8>> {
    let b64 = token.strip_prefix("007")?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&bytes[..]), &mut out).ok()?;
    Some(out)
}

/// Percent-encodes one path segment (everything but RFC 3986's unreserved
/// characters).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An Agora error body.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// A configured Agora target; its app token is shared by its clones.
#[derive(Debug, Clone)]
pub struct Agora {
    pub config: AgoraConfig,
    token: Arc<Credential>,
}

impl Agora {
    pub fn new(config: AgoraConfig) -> Agora {
        Agora {
            config,
            token: Arc::default(),
        }
    }

    /// `chatgroups/ID` or `chatrooms/ID`.
    fn resource(dest: &Dest) -> Result<String, Unsendable> {
        match dest {
            Dest::Group(id) if !id.is_empty() => Ok(format!("chatgroups/{}", segment(id))),
            Dest::Chatroom(id) if !id.is_empty() => Ok(format!("chatrooms/{}", segment(id))),
            Dest::Group(_) | Dest::Chatroom(_) => Err(Unsendable::Invalid(
                "the Agora group/chat room ID is empty".into(),
            )),
            Dest::Event => Err(Unsendable::Invalid(
                "an Agora call needs a group or chat room".into(),
            )),
        }
    }

    /// The request for one attempt of `call`.
    pub fn render(&self, call: &Action, now: SystemTime) -> Result<Request, Unsendable> {
        let resource = Self::resource(&call.dest)?;
        let users = || -> Result<Vec<&str>, Unsendable> {
            if call.users.is_empty() {
                return Err(Unsendable::Moot("no users to mute or unmute"));
            }
            Ok(call.users.iter().map(|u| u.id.as_str()).collect())
        };
        let (method, path, body) = match &call.op {
            Op::MuteAll { .. } => (Method::Post, format!("{resource}/ban"), None),
            Op::UnmuteAll => (Method::Delete, format!("{resource}/ban"), None),
            Op::MuteMembers { length } => {
                let ms = match *length {
                    MuteLength::Permanent => -1,
                    MuteLength::UntilMs(until) => {
                        let left = until - unix_ms(now);
                        if left <= 0 {
                            return Err(Unsendable::Moot("the mute has already expired"));
                        }
                        left
                    }
                };
                let body = json!({"usernames": users()?, "mute_duration": ms});
                (
                    Method::Post,
                    format!("{resource}/mute"),
                    Some(body.to_string()),
                )
            }
            Op::UnmuteMembers => {
                // Groups separate the users with ',', chat rooms with an
                // escaped one (both as documented).
                let sep = if matches!(call.dest, Dest::Chatroom(_)) {
                    "%2C"
                } else {
                    ","
                };
                let list: Vec<String> = users()?.into_iter().map(segment).collect();
                (
                    Method::Delete,
                    format!("{resource}/mute/{}", list.join(sep)),
                    None,
                )
            }
            Op::Forward => return Err(Unsendable::Invalid("Agora cannot forward events".into())),
        };
        Ok(self.request(method, &path, body, now))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        now: SystemTime,
    ) -> Request {
        let c = &self.config;
        let life = c.token_lifetime_seconds;
        let token = self.token.get(now, life, |issued| {
            let salt = fastrand::u32(1..99_999_999);
            app_token(
                &c.app_id,
                c.app_certificate.expose(),
                issued as u32,
                life as u32,
                salt,
            )
        });
        let mut headers = vec![
            ("Authorization", format!("Bearer {token}")),
            ("Accept", "application/json".to_owned()),
        ];
        if body.is_some() {
            headers.push(("Content-Type", "application/json".to_owned()));
        }
        Request {
            method,
            url: format!("{}/{}/{path}", c.base_url.trim_end_matches('/'), c.prefix()),
            headers,
            body,
        }
    }

    /// Reads the answer to `call`.
    pub fn read(&self, call: &Action, reply: &Reply<'_>) -> Outcome {
        self.read_at(call, reply, SystemTime::now())
    }

    fn read_at(&self, call: &Action, reply: &Reply<'_>, now: SystemTime) -> Outcome {
        let body = match self.answer(reply, now) {
            Ok(body) => body,
            Err(o) => return o,
        };
        if !matches!(call.op, Op::MuteMembers { .. } | Op::UnmuteMembers) {
            return Outcome::Done;
        }
        // Member calls answer each user's `result`.
        #[derive(Deserialize)]
        struct Results {
            #[serde(default)]
            data: Vec<UserResult>,
        }
        #[derive(Deserialize)]
        struct UserResult {
            #[serde(default)]
            user: String,
            #[serde(default = "yes")]
            result: bool,
        }
        fn yes() -> bool {
            true
        }
        let failed: Vec<(String, String)> = serde_json::from_slice::<Results>(body)
            .map(|r| r.data)
            .unwrap_or_default()
            .into_iter()
            .filter(|u| !u.result)
            .map(|u| {
                (
                    u.user,
                    "Agora answered result: false for this user".to_owned(),
                )
            })
            .collect();
        if failed.is_empty() {
            Outcome::Done
        } else {
            Outcome::Partial {
                retry: Vec::new(),
                failed,
            }
        }
    }

    /// The body of a 2xx answer; otherwise what the failure means. A 401
    /// makes the token again once (see `credential`).
    fn answer<'r>(&self, reply: &Reply<'r>, now: SystemTime) -> Result<&'r [u8], Outcome> {
        let status = reply.status;
        if (200..300).contains(&status) {
            self.token.worked();
            return Ok(reply.body);
        }
        let e: ErrorBody = serde_json::from_slice(reply.body).unwrap_or_default();
        let description: String = e.error_description.chars().take(200).collect();
        let error = format!("Agora HTTP {status} {}: {description}", e.error);
        let retry = |kind| Outcome::Retry {
            error: error.clone(),
            kind,
            switch_host: false,
            after: reply.retry_after,
        };
        Err(match status {
            429 => retry(Transient::RateLimited),
            408 | 500..=599 => retry(Transient::Outage),
            401 => match self.token.refused(now) {
                Refusal::Renewed => {
                    tracing::info!("Agora answered 401; made a new app token");
                    retry(Transient::Outage)
                }
                Refusal::Recent => retry(Transient::Outage),
                Refusal::Final { age_seconds } => Outcome::Permanent {
                    error: format!("{error}; an app token made {age_seconds} s ago for an earlier 401 is refused too: check app_id, app_certificate, path_prefix and this machine's clock"),
                },
            },
            _ => Outcome::Permanent { error },
        })
    }
}

/// The reads `verify` makes.
impl Agora {
    /// The reads of one pass over `dests` (for `verify`): the mute-all
    /// flags from the details of up to 100 groups (or chat rooms) a read,
    /// then each one's mute list (Agora has no whole-app list of them).
    pub fn read_plan(dests: &[Dest]) -> Vec<Read> {
        let groups: Vec<&Dest> = dests
            .iter()
            .filter(|d| matches!(d, Dest::Group(g) if !g.is_empty()))
            .collect();
        let rooms: Vec<&Dest> = dests
            .iter()
            .filter(|d| matches!(d, Dest::Chatroom(c) if !c.is_empty()))
            .collect();
        let mut out = Vec::new();
        for of_kind in [&groups, &rooms] {
            for batch in of_kind.chunks(MAX_IDS_PER_DETAILS) {
                out.push(Read::MuteAll(batch.iter().map(|d| (*d).clone()).collect()));
            }
        }
        out.extend(
            groups
                .into_iter()
                .chain(rooms)
                .map(|d| Read::Members(d.clone())),
        );
        out
    }

    /// The GET of `read` at `now` (made afresh for each attempt, with the
    /// app token held then). A details batch names one kind: groups
    /// separated by `,`, chat rooms by an escaped one (as documented).
    pub fn read_request(&self, read: &Read, now: SystemTime) -> Request {
        let path = match read {
            Read::MuteAll(dests) => {
                let (kind, sep) = match dests.first() {
                    Some(Dest::Chatroom(_)) => ("chatrooms", "%2C"),
                    _ => ("chatgroups", ","),
                };
                let ids: Vec<String> = dests
                    .iter()
                    .filter_map(|d| match d {
                        Dest::Group(id) | Dest::Chatroom(id) => Some(segment(id)),
                        Dest::Event => None,
                    })
                    .collect();
                format!("{kind}/{}", ids.join(sep))
            }
            Read::Members(dest) => match Self::resource(dest) {
                Ok(resource) => format!("{resource}/mute"),
                // Not planned (`read_plan` leaves such places out); the
                // path names no resource and Agora answers 404.
                Err(_) => "chatgroups//mute".to_owned(),
            },
        };
        self.request(Method::Get, &path, None, now)
    }

    /// What the answer to `read` says Agora holds, or, when it failed,
    /// what the failure means (as for a call). A 404 for one group or
    /// chat room asked alone is [`Observed::Missing`]; an id left out of a
    /// details batch is [`Observed::MuteAll`] with `on: None`.
    pub fn parse_read(
        &self,
        read: &Read,
        reply: &Reply<'_>,
        now: SystemTime,
    ) -> Result<Vec<Observed>, Outcome> {
        let body = match self.answer(reply, now) {
            Ok(body) => body,
            Err(Outcome::Permanent { error }) if reply.status == 404 => {
                return match read {
                    Read::Members(dest) => Ok(vec![Observed::Missing { dest: dest.clone() }]),
                    Read::MuteAll(dests) if dests.len() == 1 => Ok(vec![Observed::Missing {
                        dest: dests[0].clone(),
                    }]),
                    Read::MuteAll(_) => Err(Outcome::Permanent {
                        error: format!("{error} (for a batch: read each alone to tell which)"),
                    }),
                };
            }
            Err(other) => return Err(other),
        };
        let unreadable = |why: String| Outcome::Permanent {
            error: format!("unreadable Agora answer: {why}"),
        };
        match read {
            Read::MuteAll(dests) => {
                #[derive(Deserialize)]
                struct Details {
                    #[serde(default)]
                    data: Vec<Detail>,
                }
                #[derive(Deserialize)]
                struct Detail {
                    id: String,
                    mute: Option<serde_json::Value>,
                }
                let details: Details =
                    serde_json::from_slice(body).map_err(|e| unreadable(e.to_string()))?;
                Ok(dests
                    .iter()
                    .map(|dest| {
                        let (Dest::Group(id) | Dest::Chatroom(id)) = dest else {
                            return Observed::MuteAll {
                                dest: dest.clone(),
                                on: None,
                            };
                        };
                        let on =
                            details
                                .data
                                .iter()
                                .find(|d| &d.id == id)
                                .and_then(|d| match &d.mute {
                                    Some(serde_json::Value::Bool(b)) => Some(*b),
                                    // Easemob writes some detail fields as strings.
                                    Some(serde_json::Value::String(s)) => s.parse().ok(),
                                    _ => None,
                                });
                        Observed::MuteAll {
                            dest: dest.clone(),
                            on,
                        }
                    })
                    .collect())
            }
            Read::Members(dest) => {
                #[derive(Deserialize)]
                struct List {
                    #[serde(default)]
                    data: Vec<Muted>,
                }
                #[derive(Deserialize)]
                struct Muted {
                    user: String,
                    expire: i64,
                }
                let list: List =
                    serde_json::from_slice(body).map_err(|e| unreadable(e.to_string()))?;
                Ok(vec![Observed::Members {
                    dest: dest.clone(),
                    muted: list
                        .data
                        .into_iter()
                        .map(|m| HeldMute {
                            user: m.user,
                            end: if m.expire <= 0 || m.expire >= YEAR_2100_MS {
                                MuteEnd::Permanent
                            } else {
                                MuteEnd::UntilMs(m.expire)
                            },
                        })
                        .collect(),
                }])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::User;
    use std::time::{Duration, UNIX_EPOCH};

    /// The sample App ID and Certificate of AgoraIO/Tools' tests.
    const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
    const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";

    #[test]
    fn access_token2_matches_the_official_test_vector() {
        // AgoraIO/Tools go/src/accesstoken2/accesstoken_test.go,
        // Test_AssessToken_ServiceRtm: issue 1111111, expire 600, salt 1,
        // an RTM service (type 2, login privilege 1) for "test_user". The
        // zlib bytes depend on the compressor, so the content is compared.
        let official = "007eJxSYOCdJftjyTM2zxW6Xhm/5T0j5LdcUt/xYVt48fb5Mp3PX9coMFiaGzg7GpumpJoZJJuYmJmYJiUlplokGhmaGpgZJhkbu38RYIhgYmBgZABhJgZGBkYwn5OhJLW4JL60OLUIEAAA//9ZVh6A";
        let mut tail = Vec::new();
        pack_string(&mut tail, b"test_user");
        let rtm = TokenService {
            kind: 2,
            privileges: vec![(1, 600)],
            tail,
        };
        let ours = access_token2(APP_ID, CERT, 1_111_111, 600, 1, std::slice::from_ref(&rtm));
        assert_eq!(decode_access_token2(&ours), decode_access_token2(official));
        assert_eq!(
            decode_access_token2(official).unwrap(),
            access_token2_content(APP_ID, CERT, 1_111_111, 600, 1, &[rtm])
        );
    }

    #[test]
    fn the_chat_app_token_is_the_chat_service_with_the_app_privilege() {
        // Derived with an independent Python implementation of AgoraIO/
        // Tools' AccessToken2.py that reproduces the official vector above
        // byte for byte, then built as ChatTokenBuilder2.build_app_token
        // does (service 5, privilege 2 = expire, empty user ID); no
        // official fixed-time Chat vector exists.
        let content =
            access_token2_content(APP_ID, CERT, 1_111_111, 600, 1, &[chat_app_service(600)]);
        assert_eq!(
            hex::encode(&content),
            "20002d6e85c3436f1811bc2c43173bf34eaa047d5e896abd4ef54c654110c0fade50\
             2000393730434133356465363063343436343562626165386132313530363162333347f4100058020000\
             010000000100050001000200580200000000"
        );
        let token = app_token(APP_ID, CERT, 1_111_111, 600, 1);
        assert!(token.starts_with("007"));
        assert_eq!(decode_access_token2(&token).unwrap(), content);
    }

    fn agora(prefix: &str) -> Agora {
        Agora::new(AgoraConfig {
            base_url: "https://a41.chat.agora.io".into(),
            path_prefix: prefix.into(),
            app_id: APP_ID.into(),
            app_certificate: Secret::new(CERT),
            token_lifetime_seconds: 86_400,
            rate_per_second: 50.0,
            rate_limit: Default::default(),
        })
    }

    fn call(op: Op, dest: Dest, users: &[&str]) -> Action {
        Action {
            rule: Arc::from("r"),
            target: Arc::from("agora"),
            op,
            dest,
            users: users.iter().map(|u| User::same(u)).collect(),
            need_notify: false,
            extra: None,
        }
    }

    #[test]
    fn each_operation_on_groups_and_chat_rooms() {
        let a = agora("61717166/1069763");
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let g = || Dest::Group("2001".into());
        let room = || Dest::Chatroom("r 1".into());
        let req =
            |op: Op, dest: Dest, users: &[&str]| a.render(&call(op, dest, users), now).unwrap();
        let base = "https://a41.chat.agora.io/61717166/1069763";
        let on = req(Op::MuteAll { seconds: None }, g(), &[]);
        assert_eq!(
            (on.method, on.url.as_str()),
            (Method::Post, &*format!("{base}/chatgroups/2001/ban"))
        );
        let off = req(Op::UnmuteAll, room(), &[]);
        assert_eq!(
            (off.method, off.url.as_str()),
            (Method::Delete, &*format!("{base}/chatrooms/r%201/ban"))
        );
        let timed = req(
            Op::MuteMembers {
                length: MuteLength::UntilMs(1_000_000_000 + 90_500),
            },
            g(),
            &["u1", "u2"],
        );
        assert_eq!(timed.url, format!("{base}/chatgroups/2001/mute"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(timed.body.as_deref().unwrap()).unwrap(),
            json!({"usernames": ["u1", "u2"], "mute_duration": 90_500})
        );
        let forever = req(
            Op::MuteMembers {
                length: MuteLength::Permanent,
            },
            room(),
            &["u1"],
        );
        assert!(forever.body.unwrap().contains(r#""mute_duration":-1"#));
        let unmute = req(Op::UnmuteMembers, g(), &["u1", "u/2"]);
        assert_eq!(
            (unmute.method, unmute.url.as_str()),
            (
                Method::Delete,
                &*format!("{base}/chatgroups/2001/mute/u1,u%2F2")
            )
        );
        let unmute_room = req(Op::UnmuteMembers, room(), &["u1", "u2"]);
        assert!(unmute_room.url.ends_with("/chatrooms/r%201/mute/u1%2Cu2"));
        // The bearer token is an app token for this app, kept between calls.
        let bearer = |r: &Request| {
            r.headers
                .iter()
                .find(|(k, _)| *k == "Authorization")
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(bearer(&on), bearer(&unmute));
        let content = decode_access_token2(bearer(&on).strip_prefix("Bearer ").unwrap()).unwrap();
        assert_eq!(&content[36..68], APP_ID.as_bytes());
        let shown = on.redacted().to_string();
        assert!(shown.contains("Authorization: <masked>"), "{shown}");
        assert!(!shown.contains(&bearer(&on)[8..]));
        // Shengwang's prefix.
        let sw = agora("app-id/{app_id}")
            .render(&call(Op::UnmuteAll, g(), &[]), now)
            .unwrap();
        assert_eq!(
            sw.url,
            format!("https://a41.chat.agora.io/app-id/{APP_ID}/chatgroups/2001/ban")
        );
        assert_eq!(
            a.render(
                &call(
                    Op::MuteMembers {
                        length: MuteLength::UntilMs(999_000)
                    },
                    g(),
                    &["u"]
                ),
                now
            ),
            Err(Unsendable::Moot("the mute has already expired"))
        );
    }

    fn reply(status: u16, body: &str) -> Reply<'_> {
        Reply {
            status,
            retry_after: None,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn answers_are_classified_by_status_and_per_user_result() {
        let a = agora("o/a");
        let now = SystemTime::now();
        let mute = call(
            Op::MuteMembers {
                length: MuteLength::Permanent,
            },
            Dest::Group("g".into()),
            &["u1", "u2"],
        );
        let read = |status, body: &str| a.read_at(&mute, &reply(status, body), now);
        assert_eq!(
            read(
                200,
                r#"{"action":"post","data":[{"result":true,"expire":-1,"user":"u1"},{"result":true,"expire":-1,"user":"u2"}]}"#
            ),
            Outcome::Done
        );
        assert_eq!(
            read(
                200,
                r#"{"data":[{"result":true,"user":"u1"},{"result":false,"user":"u2"}]}"#
            ),
            Outcome::Partial {
                retry: Vec::new(),
                failed: vec![(
                    "u2".into(),
                    "Agora answered result: false for this user".into()
                )],
            }
        );
        assert!(matches!(
            read(
                429,
                r#"{"error":"reach_limit","error_description":"This request has reached api limit"}"#
            ),
            Outcome::Retry {
                kind: Transient::RateLimited,
                ..
            }
        ));
        assert!(matches!(
            read(503, ""),
            Outcome::Retry {
                kind: Transient::Outage,
                ..
            }
        ));
        for (status, error) in [
            (404, "resource_not_found"),
            (403, "forbidden_op"),
            (400, "invalid_parameter"),
        ] {
            let o = read(
                status,
                &format!(r#"{{"error":"{error}","error_description":"no"}}"#),
            );
            let Outcome::Permanent { error: e } = o else {
                panic!("{status}: {o:?}")
            };
            assert!(e.contains(error), "{e}");
        }
    }

    #[test]
    fn a_401_makes_the_token_again_once() {
        let a = agora("o/a");
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        let c = call(Op::UnmuteAll, Dest::Group("g".into()), &[]);
        let token = |s| a.render(&c, at(s)).unwrap().headers[0].1.clone();
        let refused = r#"{"error":"unauthorized","error_description":"Unable to authenticate"}"#;
        let first = token(1_000);
        assert!(matches!(
            a.read_at(&c, &reply(401, refused), at(1_001)),
            Outcome::Retry { .. }
        ));
        assert_ne!(token(1_002), first);
        assert!(matches!(
            a.read_at(&c, &reply(401, refused), at(1_003)),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            a.read_at(&c, &reply(401, refused), at(1_062)),
            Outcome::Permanent { .. }
        ));
        // Renewed ahead of its end too: when 90 % of 86,400 s is spent.
        let b = agora("o/a");
        let token = |s| b.render(&c, at(s)).unwrap().headers[0].1.clone();
        let kept = token(1_000);
        assert_eq!(token(1_000 + 77_759), kept);
        assert_ne!(token(1_000 + 77_760), kept);
    }

    #[test]
    fn reads_are_batched_and_parsed_into_what_agora_holds() {
        let a = agora("o/a");
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut dests: Vec<Dest> = (0..101).map(|i| Dest::Group(format!("g{i}"))).collect();
        dests.push(Dest::Chatroom("r1".into()));
        dests.push(Dest::Chatroom("r2".into()));
        let reads: Vec<Request> = Agora::read_plan(&dests)
            .iter()
            .map(|r| a.read_request(r, now))
            .collect();
        assert_eq!(reads.len(), 3 + 103);
        assert!(reads[0].url.ends_with(&format!(
            "/chatgroups/{}",
            (0..100)
                .map(|i| format!("g{i}"))
                .collect::<Vec<_>>()
                .join(",")
        )));
        assert!(reads[1].url.ends_with("/chatgroups/g100"));
        assert!(reads[2].url.ends_with("/chatrooms/r1%2Cr2"));
        assert!(reads[3].url.ends_with("/chatgroups/g0/mute"));
        assert!(reads[105].url.ends_with("/chatrooms/r2/mute"));
        assert!(reads.iter().all(|r| r.method == Method::Get));

        let g = |id: &str| Dest::Group(id.into());
        let details = Read::MuteAll(vec![g("a"), g("b"), g("left-out")]);
        let answer = r#"{"action":"get","data":[{"id":"a","mute":true},{"id":"b","mute":false}],"timestamp":1700000000000}"#;
        assert_eq!(
            a.parse_read(&details, &reply(200, answer), now).unwrap(),
            vec![
                Observed::MuteAll {
                    dest: g("a"),
                    on: Some(true)
                },
                Observed::MuteAll {
                    dest: g("b"),
                    on: Some(false)
                },
                Observed::MuteAll {
                    dest: g("left-out"),
                    on: None
                },
            ]
        );
        let list = Read::Members(g("a"));
        let answer = r#"{"action":"get","data":[{"user":"t","expire":1700000600000},{"user":"p","expire":-1},{"user":"q","expire":9223372036854775807}]}"#;
        assert_eq!(
            a.parse_read(&list, &reply(200, answer), now).unwrap(),
            vec![Observed::Members {
                dest: g("a"),
                muted: vec![
                    HeldMute {
                        user: "t".into(),
                        end: MuteEnd::UntilMs(1_700_000_600_000)
                    },
                    HeldMute {
                        user: "p".into(),
                        end: MuteEnd::Permanent
                    },
                    HeldMute {
                        user: "q".into(),
                        end: MuteEnd::Permanent
                    },
                ],
            }]
        );
        let gone =
            r#"{"error":"resource_not_found","error_description":"grpID a does not exist!"}"#;
        assert_eq!(
            a.parse_read(&list, &reply(404, gone), now).unwrap(),
            vec![Observed::Missing { dest: g("a") }]
        );
        assert!(matches!(
            a.parse_read(&details, &reply(404, gone), now),
            Err(Outcome::Permanent { .. })
        ));
        assert!(matches!(
            a.parse_read(&list, &reply(429, "{}"), now),
            Err(Outcome::Retry {
                kind: Transient::RateLimited,
                ..
            })
        ));
    }

    #[test]
    fn config_mistakes_name_the_key() {
        let check = |f: &dyn Fn(&mut AgoraConfig)| {
            let mut c = agora("o/a").config;
            f(&mut c);
            c.validate().map_err(|e| e.key)
        };
        assert_eq!(check(&|_| ()), Ok(()));
        assert_eq!(check(&|c| c.app_id = "abc".into()), Err("app_id".into()));
        assert_eq!(
            check(&|c| c.app_certificate = Secret::new("")),
            Err("app_certificate".into())
        );
        assert_eq!(
            check(&|c| c.path_prefix = "{org}/{app}".into()),
            Err("path_prefix".into())
        );
        assert_eq!(
            check(&|c| c.path_prefix = "o//a".into()),
            Err("path_prefix".into())
        );
        assert_eq!(
            check(&|c| c.path_prefix = "/app-id/{app_id}/".into()),
            Ok(())
        );
        assert_eq!(
            check(&|c| c.token_lifetime_seconds = 90_000),
            Err("token_lifetime_seconds".into())
        );
        assert_eq!(
            check(&|c| c.base_url = "a41.chat.agora.io".into()),
            Err("base_url".into())
        );
    }
}
