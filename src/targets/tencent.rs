//! Tencent Cloud Chat (IM) server API: mute-all on and off
//! (`modify_group_base_info`, `MuteAllMember`), member mutes and unmutes
//! (`forbid_send_msg`, `MuteTime`), and the reads `verify` makes
//! (`get_group_info`, `get_group_muted_account`).
//!
//! Every call is a JSON POST to `https://{host}/v4/{service}/{command}`
//! with `sdkappid`, the admin `identifier`, its UserSig, a fresh `random`
//! and `contenttype=json` in the query. The UserSig (TLSSigAPIv2) is made
//! here from the app's secret key, kept, and made again before it ends or
//! once Tencent says it expired ([`super::credential`]). Tencent answers
//! HTTP 200 with `ActionStatus`/`ErrorCode` unless the network fails; hosts
//! come in primary/backup pairs per data centre, and a 5xx or a connection
//! error moves the next attempt to the other host.
//!
//! Sources: the shared notes (providers-readback.md, section 3), Tencent's
//! RESTful API overview (tencentcloud.com/document/product/1047/34620), the
//! group API pages 34951, 34962, 34961, 34964, and the REST common error
//! codes (cloud.tencent.com/document/product/679/131708).

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
use super::{cut_short, remaining_seconds, Method, Outcome, Reply, Request, Transient, Unsendable};
use crate::config::error::Invalid;
use crate::config::secret::Secret;
use crate::limit::RateLimitConfig;
use crate::policy::{Action, Addressing, Capabilities, Dest, Op};

/// `MuteTime` of a permanent mute (`0xFFFFFFFF`).
pub const PERMANENT_MUTE_TIME: u64 = u32::MAX as u64;
/// The longest timed mute: one second short of permanent (136 years).
pub const MAX_TIMED_MUTE_SECONDS: u64 = PERMANENT_MUTE_TIME - 1;
/// `forbid_send_msg` takes up to 500 accounts per call.
pub const MAX_MEMBERS_PER_CALL: usize = 500;
/// `get_group_info` takes up to 50 groups per call.
pub const MAX_GROUPS_PER_INFO: usize = 50;
/// A `MutedUntil` further ahead than this is a permanent mute (how one
/// shows is unconfirmed: `now + 2^32 - 1` overflows a u32).
const PERMANENT_AHEAD_SECONDS: i64 = 10 * 365 * 86_400;

const MODIFY_GROUP: &str = "v4/group_open_http_svc/modify_group_base_info";
const FORBID_SEND: &str = "v4/group_open_http_svc/forbid_send_msg";
const GROUP_INFO: &str = "v4/group_open_http_svc/get_group_info";
const MUTED_ACCOUNTS: &str = "v4/group_open_http_svc/get_group_muted_account";

/// `[targets.NAME]` with `kind = "tencent"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TencentConfig {
    /// Your data centre's primary host, then its backup (China:
    /// `console.tim.qq.com`, `adminapi.my-imcloud.com`; the others are
    /// listed in deploy/config/mutebridge.toml).
    #[serde(default = "default_base_urls")]
    pub base_urls: Vec<String>,
    /// The app's SDKAppID.
    pub sdk_app_id: u64,
    /// The app admin account the calls are made as (`identifier`).
    pub identifier: String,
    /// The app's secret key, which UserSigs are made from; `env:NAME`
    /// reads it from the environment.
    pub secret_key: Secret,
    /// How long each UserSig is valid; a new one is made when 90 % of
    /// this is spent.
    #[serde(default = "default_usersig_lifetime")]
    pub usersig_lifetime_seconds: u64,
    /// Tencent allows 200 calls per second per API, and an undocumented
    /// limit per SDKAppID: this is mutebridge's share, for the whole
    /// consumer group.
    #[serde(default = "default_rate")]
    pub rate_per_second: f64,
    /// How the worker replicas share `rate_per_second`.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
}

fn default_base_urls() -> Vec<String> {
    vec![
        "https://console.tim.qq.com".into(),
        "https://adminapi.my-imcloud.com".into(),
    ]
}

fn default_usersig_lifetime() -> u64 {
    86_400
}

fn default_rate() -> f64 {
    50.0
}

/// What a Tencent target can do: mute a group (every group type, live
/// rooms included, is a group there), everyone or members; a member mute
/// is timed (up to 136 years) or permanent; a mute-all has no length.
pub const CAPABILITIES: Capabilities = Capabilities {
    kind: "tencent",
    addressing: Addressing::Group,
    max_mute_seconds: MAX_TIMED_MUTE_SECONDS,
    timed_mute_all: false,
    chatroom_notify: false,
};

impl TencentConfig {
    /// Keys relative to the target.
    pub fn validate(&self) -> Result<(), Invalid> {
        super::check_rate(Some(self.rate_per_second))?;
        self.rate_limit
            .validate()
            .map_err(|e| e.under("rate_limit"))?;
        if self.base_urls.is_empty() {
            return Err(Invalid::new(
                "base_urls",
                "needs your data centre's primary host and its backup",
            ));
        }
        for (i, u) in self.base_urls.iter().enumerate() {
            super::check_url(&format!("base_urls[{i}]"), u)?;
        }
        if !(1..=u64::from(u32::MAX)).contains(&self.sdk_app_id) {
            return Err(Invalid::new(
                "sdk_app_id",
                format!(
                    "{} is not an SDKAppID (a number like 1400000000)",
                    self.sdk_app_id
                ),
            ));
        }
        let id = &self.identifier;
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(Invalid::new(
                "identifier",
                "must name the app admin account (1 to 32 printable ASCII characters)",
            ));
        }
        if !(300..=15_552_000).contains(&self.usersig_lifetime_seconds) {
            return Err(Invalid::new(
                "usersig_lifetime_seconds",
                format!(
                    "{} is not between 300 and 15552000 (180 days)",
                    self.usersig_lifetime_seconds
                ),
            ));
        }
        Ok(())
    }
}

/// The `TLS.sig` of TLSSigAPIv2: base64 (standard, padded) of
/// HMAC-SHA256(secret key as UTF-8 bytes, the content lines).
pub fn user_sig_digest(
    secret_key: &str,
    sdk_app_id: u64,
    identifier: &str,
    time: i64,
    expire: u64,
) -> String {
    let content = format!(
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdk_app_id}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    );
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret_key.as_bytes()).expect("HMAC takes any key length");
    mac.update(content.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A UserSig (TLSSigAPIv2): the JSON document with its `TLS.sig`, as a
/// zlib stream, in Tencent's base64 variant (`+` `/` `=` written `*` `-`
/// `_`, all safe in a query string). Valid while `now <= time + expire`.
pub fn user_sig(
    secret_key: &str,
    sdk_app_id: u64,
    identifier: &str,
    time: i64,
    expire: u64,
) -> String {
    let doc = json!({
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdk_app_id,
        "TLS.expire": expire,
        "TLS.time": time,
        "TLS.sig": user_sig_digest(secret_key, sdk_app_id, identifier, time, expire),
    });
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(doc.to_string().as_bytes())
        .and_then(|()| z.finish())
        .map(|bytes| {
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .chars()
                .map(|c| match c {
                    '+' => '*',
                    '/' => '-',
                    '=' => '_',
                    c => c,
                })
                .collect()
        })
        .expect("compressing into memory cannot fail")
}

/// The JSON document inside a UserSig, or `None` when it is not one.
#[cfg(test)]
pub fn decode_user_sig(sig: &str) -> Option<serde_json::Value> {
    let b64: String = sig
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&bytes[..]), &mut json).ok()?;
    serde_json::from_slice(&json).ok()
}

/// How mutebridge acts on a Tencent `ErrorCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Over a frequency limit: the whole target pauses.
    RateLimited,
    /// Tencent's own trouble: retried, counted by the breaker.
    Outage,
    /// The UserSig was refused as expired or wrong: made again once.
    Credential,
    /// Another attempt would fail the same way.
    Permanent,
}

/// The class of a non-zero `ErrorCode`.
pub fn class(code: i64) -> Class {
    match code {
        60007 | 60011 | 60018 | 60019 => Class::RateLimited,
        60008 | 10002 => Class::Outage,
        70001 | 60004 | 60005 => Class::Credential,
        _ => Class::Permanent,
    }
}

/// What a code means, for logs and dead letters.
pub fn describe(code: i64) -> &'static str {
    match code {
        60002 => "HTTP parse error",
        60003 => "JSON parse error",
        60004 | 60005 => "account or signature error in the URL or body",
        60006 => "SDKAppID invalid",
        60007 => "REST API frequency limit",
        60008 => "request timed out or malformed",
        60009 => "resource error (check the URL)",
        60010 => "identifier is not an app admin",
        60011 => "SDKAppID frequency limit",
        60012 => "sdkappid missing",
        60015 => "account type error",
        60016 => "SDKAppID disabled",
        60017 => "request disabled",
        60018 | 60019 => "too frequent",
        60020 => "plan expired",
        60021 => "caller IP not allowed",
        70001 => "UserSig expired",
        70003 => "UserSig unparsable",
        70009 => "UserSig verification failed (check secret_key and sdk_app_id)",
        70013 => "identifier does not match the UserSig",
        70014 => "sdk_app_id does not match the UserSig",
        70016 | 70020 => "key or SDKAppID unknown here (check the data centre in base_urls)",
        70050 => "UserSig verification failed too often; wait a minute",
        10002 => "internal error",
        10003 => "invalid command",
        10004 => "invalid parameter",
        10007 => "no permission",
        10010 => "group does not exist or was dismissed",
        10015 => "invalid group ID",
        _ => "unknown code",
    }
}

/// The common envelope of every answer.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    #[serde(default)]
    action_status: String,
    #[serde(default)]
    error_code: i64,
    #[serde(default)]
    error_info: String,
}

/// A configured Tencent target; its UserSig is shared by its clones.
#[derive(Debug, Clone)]
pub struct Tencent {
    pub config: TencentConfig,
    usersig: Arc<Credential>,
}

impl Tencent {
    pub fn new(config: TencentConfig) -> Tencent {
        Tencent {
            config,
            usersig: Arc::default(),
        }
    }

    /// When Tencent ends a member mute `call` sets before the group does:
    /// only one longer than 136 years; a permanent one is held until lifted.
    pub fn lapses(&self, call: &Action, now: SystemTime) -> Option<i64> {
        let Op::MuteMembers { length } = &call.op else {
            return None;
        };
        let remaining = remaining_seconds(length, now).ok()?;
        cut_short(remaining, MAX_TIMED_MUTE_SECONDS, true, now)
    }

    /// The POST for one attempt of `call` on host `host`.
    pub fn render(
        &self,
        call: &Action,
        host: usize,
        now: SystemTime,
    ) -> Result<Request, Unsendable> {
        let group = match &call.dest {
            Dest::Group(g) if !g.is_empty() => g,
            Dest::Group(_) => {
                return Err(Unsendable::Invalid("the Tencent GroupId is empty".into()))
            }
            _ => return Err(Unsendable::Invalid("a Tencent call needs a group".into())),
        };
        let (command, body) = match &call.op {
            Op::MuteAll { .. } => (
                MODIFY_GROUP,
                json!({"GroupId": group, "MuteAllMember": "On"}),
            ),
            Op::UnmuteAll => (
                MODIFY_GROUP,
                json!({"GroupId": group, "MuteAllMember": "Off"}),
            ),
            Op::MuteMembers { length } => {
                let mute_time = match remaining_seconds(length, now)? {
                    Some(s) => s.clamp(1, MAX_TIMED_MUTE_SECONDS),
                    None => PERMANENT_MUTE_TIME,
                };
                (FORBID_SEND, self.members_body(call, group, mute_time)?)
            }
            Op::UnmuteMembers => (FORBID_SEND, self.members_body(call, group, 0)?),
            Op::Forward => return Err(Unsendable::Invalid("Tencent cannot forward events".into())),
        };
        Ok(self.post(command, &body, host, now))
    }

    fn members_body(
        &self,
        call: &Action,
        group: &str,
        mute_time: u64,
    ) -> Result<serde_json::Value, Unsendable> {
        if call.users.is_empty() {
            return Err(Unsendable::Moot("no users to mute or unmute"));
        }
        let accounts: Vec<&str> = call.users.iter().map(|u| u.id.as_str()).collect();
        Ok(json!({"GroupId": group, "Members_Account": accounts, "MuteTime": mute_time}))
    }

    /// A signed POST of `body` to `command` on host `host`.
    fn post(
        &self,
        command: &str,
        body: &serde_json::Value,
        host: usize,
        now: SystemTime,
    ) -> Request {
        let c = &self.config;
        let life = c.usersig_lifetime_seconds;
        let sig = self.usersig.get(now, life, |time| {
            user_sig(
                c.secret_key.expose(),
                c.sdk_app_id,
                &c.identifier,
                time,
                life,
            )
        });
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("sdkappid", &c.sdk_app_id.to_string())
            .append_pair("identifier", &c.identifier)
            .append_pair("usersig", &sig)
            .append_pair("random", &fastrand::u32(..).to_string())
            .append_pair("contenttype", "json");
        let base = &c.base_urls[host % c.base_urls.len()];
        Request {
            method: Method::Post,
            url: format!("{}/{command}?{}", base.trim_end_matches('/'), q.finish()),
            headers: vec![("Content-Type", "application/json".to_owned())],
            body: Some(body.to_string()),
        }
    }

    /// Reads the answer to a call.
    pub fn read(&self, reply: &Reply<'_>) -> Outcome {
        self.read_at(reply, SystemTime::now())
    }

    fn read_at(&self, reply: &Reply<'_>, now: SystemTime) -> Outcome {
        match self.envelope(reply, now) {
            Ok(_) => Outcome::Done,
            Err(o) => o,
        }
    }

    /// The answer's body when Tencent says OK; otherwise what the failure
    /// means. A refused UserSig is made again once (see `credential`).
    fn envelope<'r>(&self, reply: &Reply<'r>, now: SystemTime) -> Result<&'r [u8], Outcome> {
        let status = reply.status;
        let parsed: Option<Envelope> = serde_json::from_slice(reply.body).ok();
        let Some(e) = parsed.filter(|_| (200..300).contains(&status)) else {
            let error = format!("HTTP {status} without a Tencent answer");
            return Err(match status {
                429 => Outcome::Retry {
                    error,
                    kind: Transient::RateLimited,
                    switch_host: false,
                    after: reply.retry_after,
                },
                // Tencent answers 200 unless the network fails: a 5xx or
                // an unreadable 200 is the path's trouble.
                s if s >= 500 || (200..300).contains(&s) => Outcome::Retry {
                    error,
                    kind: Transient::Outage,
                    switch_host: s >= 500,
                    after: reply.retry_after,
                },
                _ => Outcome::Permanent { error },
            });
        };
        if e.error_code == 0 && (e.action_status.is_empty() || e.action_status == "OK") {
            self.usersig.worked();
            return Ok(reply.body);
        }
        let code = e.error_code;
        let info: String = e.error_info.chars().take(200).collect();
        let error = format!("Tencent ErrorCode {code} ({}): {info}", describe(code));
        let retry = |kind| Outcome::Retry {
            error: error.clone(),
            kind,
            switch_host: false,
            after: reply.retry_after,
        };
        Err(match class(code) {
            Class::RateLimited => retry(Transient::RateLimited),
            Class::Outage => retry(Transient::Outage),
            Class::Permanent => Outcome::Permanent { error },
            Class::Credential => match self.usersig.refused(now) {
                Refusal::Renewed => {
                    tracing::info!(code, "Tencent refused the UserSig; made a new one");
                    retry(Transient::Outage)
                }
                Refusal::Recent => retry(Transient::Outage),
                Refusal::Final { age_seconds } => Outcome::Permanent {
                    error: format!("{error}; a UserSig made {age_seconds} s ago for an earlier refusal is refused too: check this machine's clock, secret_key and sdk_app_id"),
                },
            },
        })
    }
}

/// The reads `verify` makes.
impl Tencent {
    /// The reads of one pass over `dests` (for `verify`): the mute-all
    /// flags by `get_group_info`, 50 groups a read, then each group's muted
    /// members by `get_group_muted_account` (Tencent has no whole-app list
    /// of them). Only [`Dest::Group`]s are read; Tencent has no other kind.
    pub fn read_plan(dests: &[Dest]) -> Vec<Read> {
        let groups: Vec<&Dest> = dests
            .iter()
            .filter(|d| matches!(d, Dest::Group(g) if !g.is_empty()))
            .collect();
        let mut out: Vec<Read> = groups
            .chunks(MAX_GROUPS_PER_INFO)
            .map(|batch| Read::MuteAll(batch.iter().map(|d| (*d).clone()).collect()))
            .collect();
        out.extend(groups.into_iter().map(|d| Read::Members(d.clone())));
        out
    }

    /// The signed POST of `read` on host `host` at `now` (made afresh for
    /// each attempt, with the UserSig held then).
    pub fn read_request(&self, read: &Read, host: usize, now: SystemTime) -> Request {
        let id = |d: &Dest| match d {
            Dest::Group(g) | Dest::Chatroom(g) => g.clone(),
            Dest::Event => String::new(),
        };
        match read {
            Read::MuteAll(dests) => {
                let ids: Vec<String> = dests.iter().map(id).collect();
                let body = json!({
                    "GroupIdList": ids,
                    "ResponseFilter": {"GroupBaseInfoFilter": ["MuteAllMember"]},
                });
                self.post(GROUP_INFO, &body, host, now)
            }
            Read::Members(dest) => {
                self.post(MUTED_ACCOUNTS, &json!({"GroupId": id(dest)}), host, now)
            }
        }
    }

    /// What the answer to `read` says Tencent holds, or, when it failed,
    /// what the failure means (as for a call). `now` decides what counts
    /// as permanent (`MutedUntil` over 10 years ahead). A group Tencent
    /// does not know (10010, 10015) is [`Observed::Missing`].
    pub fn parse_read(
        &self,
        read: &Read,
        reply: &Reply<'_>,
        now: SystemTime,
    ) -> Result<Vec<Observed>, Outcome> {
        let missing = |dest: &Dest| vec![Observed::Missing { dest: dest.clone() }];
        let body = match self.envelope(reply, now) {
            Ok(body) => body,
            Err(Outcome::Permanent { error }) => {
                let code = serde_json::from_slice::<Envelope>(reply.body)
                    .map(|e| e.error_code)
                    .unwrap_or_default();
                return match (read, code) {
                    (Read::Members(dest), 10010 | 10015) => Ok(missing(dest)),
                    _ => Err(Outcome::Permanent { error }),
                };
            }
            Err(other) => return Err(other),
        };
        let unreadable = |why: String| Outcome::Permanent {
            error: format!("unreadable Tencent answer: {why}"),
        };
        match read {
            Read::MuteAll(dests) => {
                #[derive(Deserialize)]
                #[serde(rename_all = "PascalCase")]
                struct Info {
                    #[serde(default)]
                    group_info: Vec<Item>,
                }
                #[derive(Deserialize)]
                #[serde(rename_all = "PascalCase")]
                struct Item {
                    group_id: String,
                    #[serde(default)]
                    error_code: i64,
                    mute_all_member: Option<String>,
                }
                let info: Info =
                    serde_json::from_slice(body).map_err(|e| unreadable(e.to_string()))?;
                Ok(dests
                    .iter()
                    .map(|dest| {
                        let Dest::Group(id) = dest else {
                            return Observed::MuteAll {
                                dest: dest.clone(),
                                on: None,
                            };
                        };
                        match info.group_info.iter().find(|i| &i.group_id == id) {
                            Some(i) if matches!(i.error_code, 10010 | 10015) => {
                                Observed::Missing { dest: dest.clone() }
                            }
                            Some(i) if i.error_code == 0 => Observed::MuteAll {
                                dest: dest.clone(),
                                on: match i.mute_all_member.as_deref() {
                                    Some("On") => Some(true),
                                    Some("Off") => Some(false),
                                    _ => None,
                                },
                            },
                            _ => Observed::MuteAll {
                                dest: dest.clone(),
                                on: None,
                            },
                        }
                    })
                    .collect())
            }
            Read::Members(dest) => {
                #[derive(Deserialize)]
                #[serde(rename_all = "PascalCase")]
                struct Muted {
                    #[serde(default)]
                    muted_account_list: Vec<Account>,
                }
                #[derive(Deserialize)]
                struct Account {
                    #[serde(rename = "Member_Account")]
                    member_account: String,
                    #[serde(rename = "MutedUntil")]
                    muted_until: i64,
                }
                let muted: Muted =
                    serde_json::from_slice(body).map_err(|e| unreadable(e.to_string()))?;
                let now_s = crate::time::unix_ms(now) / 1000;
                Ok(vec![Observed::Members {
                    dest: dest.clone(),
                    muted: muted
                        .muted_account_list
                        .into_iter()
                        .map(|a| HeldMute {
                            user: a.member_account,
                            end: if a.muted_until > now_s.saturating_add(PERMANENT_AHEAD_SECONDS) {
                                MuteEnd::Permanent
                            } else {
                                MuteEnd::UntilMs(a.muted_until.saturating_mul(1000))
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
    use crate::policy::{MuteLength, User};
    use std::time::{Duration, UNIX_EPOCH};

    /// The public sample credentials of Tencent's official READMEs.
    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

    #[test]
    fn user_sig_matches_the_official_signer() {
        // Computed with the official TLSSigAPIv2.py, time pinned
        // (shared notes, providers-readback.md section 3.2).
        assert_eq!(
            user_sig_digest(KEY, 1400000000, "xiaojun", 1700000000, 15552000),
            "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4="
        );
        assert_eq!(
            user_sig_digest(KEY, 1400000000, "administrator", 1715000000, 86400),
            "JKsaVv8b4oLcichyVB0rzEcLpnWbnhbtxsojcL88kg8="
        );
        // The compressed bytes depend on the zlib level, so the whole
        // UserSig is compared as the document it decodes to.
        let official = "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkKjIT87NK82CSxSnZiQUFmSlAKUMTAyiAyqVWFGQWpYJkTE1NjRDiJZm5YFFzNPXFmekgG3zKHM1T9D3LzdODi-OKs8vCqpxcAvydnV2SSv2cy03cPcpDnA2SMgu0nUxslWoBHdYzUg__";
        let ours = user_sig(KEY, 1400000000, "xiaojun", 1700000000, 15552000);
        assert_eq!(decode_user_sig(&ours), decode_user_sig(official));
        assert_eq!(
            decode_user_sig(official).unwrap(),
            json!({"TLS.ver": "2.0", "TLS.identifier": "xiaojun", "TLS.sdkappid": 1400000000u64,
                   "TLS.expire": 15552000, "TLS.time": 1700000000,
                   "TLS.sig": "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4="})
        );
        assert!(
            ours.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"*-_".contains(&b)),
            "query-safe: {ours}"
        );
    }

    fn tencent() -> Tencent {
        Tencent::new(TencentConfig {
            base_urls: default_base_urls(),
            sdk_app_id: 1400000000,
            identifier: "administrator".into(),
            secret_key: Secret::new(KEY),
            usersig_lifetime_seconds: 86_400,
            rate_per_second: 50.0,
            rate_limit: Default::default(),
        })
    }

    fn call(op: Op, users: &[&str]) -> Action {
        Action {
            rule: Arc::from("r"),
            target: Arc::from("tencent"),
            op,
            dest: Dest::Group("@TGS#g1".into()),
            users: users.iter().map(|u| User::same(u)).collect(),
            need_notify: false,
            extra: None,
        }
    }

    fn query(r: &Request) -> Vec<(String, String)> {
        let (_, q) = r.url.split_once('?').unwrap();
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    #[test]
    fn requests_are_json_posts_signed_in_the_query() {
        let t = tencent();
        let now = UNIX_EPOCH + Duration::from_secs(1_715_000_000);
        let r = t
            .render(&call(Op::MuteAll { seconds: None }, &[]), 0, now)
            .unwrap();
        assert_eq!(r.method, Method::Post);
        assert!(r
            .url
            .starts_with("https://console.tim.qq.com/v4/group_open_http_svc/modify_group_base_info?sdkappid=1400000000&identifier=administrator&usersig="));
        let q = query(&r);
        let keys: Vec<&str> = q.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["sdkappid", "identifier", "usersig", "random", "contenttype"]
        );
        assert_eq!(q[4].1, "json");
        let doc = decode_user_sig(&q[2].1).unwrap();
        assert_eq!(doc["TLS.time"], 1_715_000_000);
        assert_eq!(doc["TLS.expire"], 86_400);
        assert_eq!(
            doc["TLS.sig"],
            "JKsaVv8b4oLcichyVB0rzEcLpnWbnhbtxsojcL88kg8="
        );
        let body: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        assert_eq!(body, json!({"GroupId": "@TGS#g1", "MuteAllMember": "On"}));
        // The backup host, the same UserSig (kept, not made per call).
        let off = t.render(&call(Op::UnmuteAll, &[]), 1, now).unwrap();
        assert!(off.url.starts_with("https://adminapi.my-imcloud.com/v4/"));
        assert_eq!(query(&off)[2], q[2]);
        assert!(off.body.unwrap().contains(r#""MuteAllMember":"Off""#));
        // Shown by `policy explain` and the log target with it masked.
        let shown = r.redacted().to_string();
        assert!(shown.contains("usersig=%3Cmasked%3E"), "{shown}");
        assert!(!shown.contains(&q[2].1));
    }

    #[test]
    fn mute_time_counts_down_is_permanent_as_all_ones_and_zero_unmutes() {
        let t = tencent();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let body = |op: Op| -> serde_json::Value {
            let r = t.render(&call(op, &["a", "b"]), 0, now).unwrap();
            assert!(r.url.contains("/forbid_send_msg?"), "{}", r.url);
            serde_json::from_str(r.body.as_deref().unwrap()).unwrap()
        };
        let timed = body(Op::MuteMembers {
            length: MuteLength::UntilMs(1_000_000_000 + 90_500),
        });
        assert_eq!(
            timed,
            json!({"GroupId": "@TGS#g1", "Members_Account": ["a", "b"], "MuteTime": 91})
        );
        let permanent = body(Op::MuteMembers {
            length: MuteLength::Permanent,
        });
        assert_eq!(permanent["MuteTime"], 4_294_967_295u64);
        assert_eq!(body(Op::UnmuteMembers)["MuteTime"], 0);
        assert_eq!(
            t.render(
                &call(
                    Op::MuteMembers {
                        length: MuteLength::UntilMs(999_999_000)
                    },
                    &["a"]
                ),
                0,
                now
            ),
            Err(Unsendable::Moot("the mute has already expired"))
        );
        let far = Op::MuteMembers {
            length: MuteLength::UntilMs(
                1_000_000_000 + (MAX_TIMED_MUTE_SECONDS as i64 + 10) * 1000,
            ),
        };
        assert!(t.lapses(&call(far, &["a"]), now).is_some());
        let year = Op::MuteMembers {
            length: MuteLength::UntilMs(1_000_000_000 + 31_536_000_000),
        };
        assert_eq!(t.lapses(&call(year, &["a"]), now), None, "no cap to renew");
    }

    fn reply(status: u16, body: &str) -> Reply<'_> {
        Reply {
            status,
            retry_after: None,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn answers_are_classified_by_error_code() {
        let t = tencent();
        let now = SystemTime::now();
        let read = |status, body: &str| t.read_at(&reply(status, body), now);
        assert_eq!(
            read(200, r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#),
            Outcome::Done
        );
        for code in [60007, 60011, 60018, 60019] {
            assert!(
                matches!(
                    read(
                        200,
                        &format!(r#"{{"ActionStatus":"FAIL","ErrorCode":{code},"ErrorInfo":"x"}}"#)
                    ),
                    Outcome::Retry {
                        kind: Transient::RateLimited,
                        switch_host: false,
                        ..
                    }
                ),
                "{code} pauses the target"
            );
        }
        assert!(matches!(
            read(
                200,
                r#"{"ActionStatus":"FAIL","ErrorCode":10002,"ErrorInfo":"internal"}"#
            ),
            Outcome::Retry {
                kind: Transient::Outage,
                switch_host: false,
                ..
            }
        ));
        assert!(matches!(
            read(502, "Bad Gateway"),
            Outcome::Retry {
                kind: Transient::Outage,
                switch_host: true,
                ..
            }
        ));
        assert!(matches!(
            read(200, "<html>"),
            Outcome::Retry {
                kind: Transient::Outage,
                switch_host: false,
                ..
            }
        ));
        for code in [10010, 10015, 10004, 10007, 60010, 70009, 70016] {
            let o = read(
                200,
                &format!(r#"{{"ActionStatus":"FAIL","ErrorCode":{code},"ErrorInfo":"no"}}"#),
            );
            let Outcome::Permanent { error } = o else {
                panic!("{code}: {o:?}")
            };
            assert!(error.contains(&code.to_string()), "{error}");
        }
    }

    #[test]
    fn an_expired_usersig_is_made_again_once_then_the_call_fails() {
        let t = tencent();
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        let sig_at = |s| {
            query(&t.render(&call(Op::UnmuteAll, &[]), 0, at(s)).unwrap())[2]
                .1
                .clone()
        };
        let expired = r#"{"ActionStatus":"FAIL","ErrorCode":70001,"ErrorInfo":"usersig expired"}"#;
        let first = sig_at(1_000);
        assert!(matches!(
            t.read_at(&reply(200, expired), at(2_000)),
            Outcome::Retry {
                kind: Transient::Outage,
                ..
            }
        ));
        let second = sig_at(2_001);
        assert_ne!(first, second, "made again");
        assert_eq!(decode_user_sig(&second).unwrap()["TLS.time"], 2_001);
        // Refused again within a minute: maybe a call signed before; retried.
        assert!(matches!(
            t.read_at(&reply(200, expired), at(2_002)),
            Outcome::Retry { .. }
        ));
        // The new one is refused a minute on: the clock or the key is wrong.
        let Outcome::Permanent { error } = t.read_at(&reply(200, expired), at(2_061)) else {
            panic!()
        };
        assert!(
            error.contains("70001") && error.contains("clock"),
            "{error}"
        );
        assert_eq!(sig_at(2_062), second, "not made in a loop");
    }

    #[test]
    fn reads_are_batched_and_parsed_into_what_tencent_holds() {
        let t = tencent();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let dests: Vec<Dest> = (0..51).map(|i| Dest::Group(format!("g{i}"))).collect();
        let reads = Tencent::read_plan(&dests);
        assert_eq!(
            reads.len(),
            2 + 51,
            "two info batches, a member read per group"
        );
        assert!(matches!(&reads[0], Read::MuteAll(d) if d.len() == 50));
        assert!(matches!(&reads[1], Read::MuteAll(d) if d.len() == 1));
        assert!(t
            .read_request(&reads[0], 0, now)
            .url
            .contains("/get_group_info?"));
        let second = t.read_request(&reads[1], 1, now);
        assert!(second.url.starts_with("https://adminapi.my-imcloud.com/"));
        let body: serde_json::Value =
            serde_json::from_str(second.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"GroupIdList": ["g50"], "ResponseFilter": {"GroupBaseInfoFilter": ["MuteAllMember"]}})
        );
        assert!(t
            .read_request(&reads[2], 0, now)
            .url
            .contains("/get_group_muted_account?"));
        assert_eq!(reads[2], Read::Members(Dest::Group("g0".into())));

        let g = |id: &str| Dest::Group(id.into());
        let info = Read::MuteAll(vec![g("on"), g("off"), g("gone"), g("silent")]);
        let answer = r#"{"ActionStatus":"OK","ErrorCode":0,"GroupInfo":[
            {"GroupId":"on","ErrorCode":0,"MuteAllMember":"On"},
            {"GroupId":"off","ErrorCode":0,"MuteAllMember":"Off"},
            {"GroupId":"gone","ErrorCode":10010,"ErrorInfo":"dismissed"}]}"#;
        assert_eq!(
            t.parse_read(&info, &reply(200, answer), now).unwrap(),
            vec![
                Observed::MuteAll {
                    dest: g("on"),
                    on: Some(true)
                },
                Observed::MuteAll {
                    dest: g("off"),
                    on: Some(false)
                },
                Observed::Missing { dest: g("gone") },
                Observed::MuteAll {
                    dest: g("silent"),
                    on: None
                },
            ]
        );
        let members = Read::Members(g("g0"));
        let answer = r#"{"ActionStatus":"OK","ErrorCode":0,"GroupId":"g0","MutedAccountList":[
            {"Member_Account":"timed","MutedUntil":1700000600},
            {"Member_Account":"forever","MutedUntil":5994967295}]}"#;
        assert_eq!(
            t.parse_read(&members, &reply(200, answer), now).unwrap(),
            vec![Observed::Members {
                dest: g("g0"),
                muted: vec![
                    HeldMute {
                        user: "timed".into(),
                        end: MuteEnd::UntilMs(1_700_000_600_000)
                    },
                    HeldMute {
                        user: "forever".into(),
                        end: MuteEnd::Permanent
                    },
                ],
            }]
        );
        let gone = r#"{"ActionStatus":"FAIL","ErrorCode":10010,"ErrorInfo":"group dismissed"}"#;
        assert_eq!(
            t.parse_read(&members, &reply(200, gone), now).unwrap(),
            vec![Observed::Missing { dest: g("g0") }]
        );
        let limited = r#"{"ActionStatus":"FAIL","ErrorCode":60007,"ErrorInfo":"limit"}"#;
        assert!(matches!(
            t.parse_read(&members, &reply(200, limited), now),
            Err(Outcome::Retry {
                kind: Transient::RateLimited,
                ..
            })
        ));
    }

    #[test]
    fn config_mistakes_name_the_key() {
        let mut c = tencent().config;
        c.identifier = String::new();
        assert_eq!(c.validate().unwrap_err().key, "identifier");
        let mut c = tencent().config;
        c.sdk_app_id = 0;
        assert_eq!(c.validate().unwrap_err().key, "sdk_app_id");
        let mut c = tencent().config;
        c.base_urls = vec!["console.tim.qq.com".into()];
        assert_eq!(c.validate().unwrap_err().key, "base_urls[0]");
        let mut c = tencent().config;
        c.usersig_lifetime_seconds = 10;
        assert_eq!(c.validate().unwrap_err().key, "usersig_lifetime_seconds");
        assert!(tencent().config.validate().is_ok());
    }
}
