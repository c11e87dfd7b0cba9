//! ZEGO ZIM server API: `MuteGroup` (everyone) and `MuteGroupMembers`.
//!
//! Every call is a GET with all parameters in the query string, signed with
//! `md5(AppId + SignatureNonce + ServerSecret + Timestamp)` in lowercase hex
//! (timestamp in seconds). Success is `Code == 0` whatever the HTTP status,
//! and `MuteGroupMembers` may succeed for some users only (`ErrorUsers`).

use std::time::SystemTime;

use md5::{Digest, Md5};
use serde::Deserialize;

use super::{cut_short, remaining_seconds, Outcome, Reply, Request, Transient, Unsendable};
use crate::config::error::Invalid;
use crate::config::secret::Secret;
use crate::limit::RateLimitConfig;
use crate::policy::{Action, Addressing, Capabilities, Dest, Op};
use crate::time::unix_ms;

/// Longest mute ZEGO accepts, in seconds (30 days).
pub const MAX_DURATION_SECONDS: u64 = 2_592_000;

/// `[targets.NAME]` with `kind = "zego"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZegoConfig {
    /// `https://zim-api.zego.im`, or the regional host nearest to you.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub app_id: u32,
    /// `env:NAME` reads it from the environment.
    pub server_secret: Secret,
    /// The user mutes are made as: must be the group's owner or an admin.
    pub from_user_id: String,
    /// ZEGO allows 20 calls per second per AppID, for everything that
    /// calls it: this is that limit for the whole consumer group.
    #[serde(default = "default_rate")]
    pub rate_per_second: f64,
    /// How the worker replicas share `rate_per_second`.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// The longest mute ZEGO holds (its limit, 30 days, by default): a
    /// longer member mute is sent for this long and re-applied before it
    /// ends. Lower only to try renewal out.
    #[serde(default = "default_max_mute")]
    pub max_mute_seconds: u64,
    /// How long before ZEGO would end a capped mute it is re-applied.
    #[serde(default = "default_renew_ahead")]
    pub renew_ahead_seconds: u64,
}

fn default_max_mute() -> u64 {
    MAX_DURATION_SECONDS
}

fn default_renew_ahead() -> u64 {
    super::DEFAULT_RENEW_AHEAD_SECONDS
}

/// What a ZEGO target can do: mute a group or its members, for up to 30 days.
pub const CAPABILITIES: Capabilities = Capabilities {
    kind: "zego",
    addressing: Addressing::Group,
    max_mute_seconds: MAX_DURATION_SECONDS,
    timed_mute_all: true,
    chatroom_notify: false,
};

impl ZegoConfig {
    /// Keys relative to the target.
    pub fn validate(&self) -> Result<(), Invalid> {
        super::check_rate(Some(self.rate_per_second))?;
        self.rate_limit
            .validate()
            .map_err(|e| e.under("rate_limit"))?;
        super::check_credential_url("base_url", &self.base_url)?;
        super::check_cap(
            self.max_mute_seconds,
            self.renew_ahead_seconds,
            MAX_DURATION_SECONDS,
        )?;
        if self.from_user_id.trim().is_empty() {
            return Err(Invalid::new(
                "from_user_id",
                "must name the user the mutes are made as (a group owner or admin)",
            ));
        }
        Ok(())
    }
}

fn default_base_url() -> String {
    "https://zim-api.zego.im".into()
}

fn default_rate() -> f64 {
    20.0
}

/// ZEGO's `Signature`.
pub fn signature(app_id: u32, nonce: &str, server_secret: &str, timestamp: u64) -> String {
    let mut md5 = Md5::new();
    md5.update(app_id.to_string());
    md5.update(nonce);
    md5.update(server_secret);
    md5.update(timestamp.to_string());
    hex::encode(md5.finalize())
}

/// ZEGO return codes mutebridge acts on (global and mute-specific).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZegoCode {
    Success,
    ServerBusy,
    BadInput,
    AuthenticationFailed,
    QpsExceeded,
    /// AppId, Timestamp, nonce, Signature or SignatureVersion missing or malformed.
    MalformedCommonParameter(i64),
    SignatureExpired,
    SignatureWrong,
    UnknownAction(i64),
    AppNotEnabled(i64),
    GeneralError,
    BadParameters,
    AppRateLimited,
    GroupRateLimited,
    RateLimited,
    NoSuchGroup,
    GroupInfoUnavailable,
    FromUserNotInGroup,
    FromUserLacksPermission,
    FailedForEveryUser,
    Other(i64),
}

impl ZegoCode {
    pub fn from_code(code: i64) -> ZegoCode {
        use ZegoCode::*;
        match code {
            0 => Success,
            1 => ServerBusy,
            2 => BadInput,
            3 => AuthenticationFailed,
            7 => QpsExceeded,
            100000001..=100000003 | 100000008 | 100000009 | 100000013 | 100000014 => {
                MalformedCommonParameter(code)
            }
            100000004 => SignatureExpired,
            100000005 => SignatureWrong,
            100000006 | 100000007 => UnknownAction(code),
            100000016 | 100000017 => AppNotEnabled(code),
            660000001 => GeneralError,
            660000002 => BadParameters,
            660300005 => AppRateLimited,
            660300006 => GroupRateLimited,
            660300007 => RateLimited,
            660600001 => NoSuchGroup,
            660600009 => GroupInfoUnavailable,
            660600024 => FromUserNotInGroup,
            660600032 => FromUserLacksPermission,
            660600033 => FailedForEveryUser,
            other => Other(other),
        }
    }

    /// The numeric code.
    pub fn code(self) -> i64 {
        use ZegoCode::*;
        match self {
            Success => 0,
            ServerBusy => 1,
            BadInput => 2,
            AuthenticationFailed => 3,
            QpsExceeded => 7,
            SignatureExpired => 100000004,
            SignatureWrong => 100000005,
            GeneralError => 660000001,
            BadParameters => 660000002,
            AppRateLimited => 660300005,
            GroupRateLimited => 660300006,
            RateLimited => 660300007,
            NoSuchGroup => 660600001,
            GroupInfoUnavailable => 660600009,
            FromUserNotInGroup => 660600024,
            FromUserLacksPermission => 660600032,
            FailedForEveryUser => 660600033,
            MalformedCommonParameter(c) | UnknownAction(c) | AppNotEnabled(c) | Other(c) => c,
        }
    }

    /// What kind of transient failure the code is; `None` for success and
    /// for codes another attempt would get again.
    pub fn transient(self) -> Option<Transient> {
        match self {
            ZegoCode::QpsExceeded | ZegoCode::AppRateLimited | ZegoCode::RateLimited => {
                Some(Transient::RateLimited)
            }
            // A frequency limit of one group: the others go on.
            ZegoCode::GroupRateLimited => Some(Transient::GroupLimited),
            ZegoCode::ServerBusy | ZegoCode::GeneralError => Some(Transient::Outage),
            _ => None,
        }
    }

    /// Worth retrying (busy, general error, rate limits).
    pub fn retryable(self) -> bool {
        self.transient().is_some()
    }

    /// What the code means, for logs and dead letters.
    pub fn describe(self) -> &'static str {
        use ZegoCode::*;
        match self {
            Success => "success",
            ServerBusy => "server busy",
            BadInput => "bad input",
            AuthenticationFailed => "authentication failed",
            QpsExceeded => "QPS exceeded",
            MalformedCommonParameter(_) => "malformed or missing AppId/Timestamp/nonce/Signature",
            SignatureExpired => "signature expired (check the clock)",
            SignatureWrong => "signature wrong (check app_id and server_secret)",
            UnknownAction(_) => "missing or unsupported Action",
            AppNotEnabled(_) => "app not in production or service not enabled",
            GeneralError => "general error",
            BadParameters => "bad parameters",
            AppRateLimited => "AppID rate limit",
            GroupRateLimited => "group rate limit",
            RateLimited => "rate limit",
            NoSuchGroup => "no such group",
            GroupInfoUnavailable => "could not read the group's info",
            FromUserNotInGroup => "from_user_id is not in the group",
            FromUserLacksPermission => "from_user_id is not the group's owner or an admin",
            FailedForEveryUser => "failed for every user",
            Other(_) => "unknown code",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Response {
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    error_users: Vec<ErrorUser>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorUser {
    user_id: String,
    sub_code: i64,
}

/// A configured ZEGO target.
#[derive(Debug, Clone)]
pub struct Zego {
    pub config: ZegoConfig,
}

impl Zego {
    pub fn new(config: ZegoConfig) -> Zego {
        Zego { config }
    }

    /// `GET ?Action=...`, signed for `now`.
    pub fn render(&self, call: &Action, now: SystemTime) -> Result<Request, Unsendable> {
        self.render_with(call, now, &super::nonce())
    }

    /// When ZEGO ends a member mute `call` sets before the group does: one
    /// longer than `max_mute_seconds` (a permanent one is `Duration=-1`,
    /// held until lifted; a timed mute-all is the rule's own length).
    pub fn lapses(&self, call: &Action, now: SystemTime) -> Option<i64> {
        match &call.op {
            Op::MuteMembers { length } => {
                let remaining = remaining_seconds(length, now).ok()?;
                cut_short(remaining, self.config.max_mute_seconds, true, now)
            }
            _ => None,
        }
    }

    fn render_with(
        &self,
        call: &Action,
        now: SystemTime,
        nonce: &str,
    ) -> Result<Request, Unsendable> {
        let Dest::Group(group) = &call.dest else {
            return Err(Unsendable::Invalid("a ZEGO call needs a group".into()));
        };
        if group.is_empty() {
            return Err(Unsendable::Invalid("the ZEGO GroupId is empty".into()));
        }
        let (action, duration) = match &call.op {
            Op::MuteAll { seconds } => (
                "MuteGroup",
                seconds.map_or(-1, |s| s.min(MAX_DURATION_SECONDS) as i64),
            ),
            Op::UnmuteAll => ("MuteGroup", 0),
            Op::MuteMembers { length } => (
                "MuteGroupMembers",
                remaining_seconds(length, now)?
                    .map_or(-1, |s| s.min(self.config.max_mute_seconds) as i64),
            ),
            Op::UnmuteMembers => ("MuteGroupMembers", 0),
            Op::Forward => return Err(Unsendable::Invalid("ZEGO cannot forward events".into())),
        };
        let timestamp = (unix_ms(now) / 1000) as u64;
        let c = &self.config;
        let sig = signature(c.app_id, nonce, c.server_secret.expose(), timestamp);
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("Action", action)
            .append_pair("AppId", &c.app_id.to_string())
            .append_pair("SignatureNonce", nonce)
            .append_pair("Timestamp", &timestamp.to_string())
            .append_pair("SignatureVersion", "2.0")
            .append_pair("Signature", &sig)
            .append_pair("FromUserId", &c.from_user_id)
            .append_pair("GroupId", group);
        match &call.op {
            Op::MuteAll { .. } => {
                q.append_pair("IsAllMuted", "true");
            }
            Op::MuteMembers { .. } | Op::UnmuteMembers => {
                if call.users.is_empty() {
                    return Err(Unsendable::Moot("no users to mute or unmute"));
                }
                for user in &call.users {
                    q.append_pair("UserIds[]", &user.id);
                }
            }
            _ => {}
        }
        q.append_pair("Duration", &duration.to_string());
        Ok(Request {
            method: super::Method::Get,
            url: format!("{}/?{}", c.base_url.trim_end_matches('/'), q.finish()),
            headers: Vec::new(),
            body: None,
        })
    }

    /// Reads `{Code, Message, ErrorUsers}`; `Code` decides, not the status.
    pub fn read(&self, _call: &Action, reply: &Reply<'_>) -> Outcome {
        let parsed: Option<Response> = serde_json::from_slice(reply.body).ok();
        let Some(r) = parsed else {
            return match reply.status {
                429 => Outcome::Retry {
                    error: "HTTP 429".into(),
                    kind: Transient::RateLimited,
                    switch_host: false,
                    after: reply.retry_after,
                },
                s if s >= 500 || (200..300).contains(&s) => {
                    Outcome::outage(format!("HTTP {s} without a ZEGO reply body"))
                }
                s => Outcome::Permanent {
                    error: format!("HTTP {s} without a ZEGO reply body"),
                },
            };
        };
        let code = ZegoCode::from_code(r.code);
        let error = |c: ZegoCode, message: &str| {
            format!("ZEGO code {} ({}): {}", c.code(), c.describe(), message)
        };
        if code == ZegoCode::Success {
            if r.error_users.is_empty() {
                return Outcome::Done;
            }
            let (retry, failed): (Vec<_>, Vec<_>) = r
                .error_users
                .into_iter()
                .partition(|u| ZegoCode::from_code(u.sub_code).retryable());
            return Outcome::Partial {
                retry: retry.into_iter().map(|u| u.user_id).collect(),
                failed: failed
                    .into_iter()
                    .map(|u| {
                        let c = ZegoCode::from_code(u.sub_code);
                        (
                            u.user_id,
                            format!("ZEGO sub-code {} ({})", c.code(), c.describe()),
                        )
                    })
                    .collect(),
            };
        }
        let kind = match (code.transient(), reply.status) {
            (Some(kind), _) => Some(kind),
            (None, 429) => Some(Transient::RateLimited),
            (None, s) if s >= 500 => Some(Transient::Outage),
            _ => None,
        };
        if let Some(kind) = kind {
            Outcome::Retry {
                error: error(code, &r.message),
                kind,
                switch_host: false,
                after: reply.retry_after,
            }
        } else {
            Outcome::Permanent {
                error: error(code, &r.message),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::MuteLength;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn signature_matches_the_published_test_vector() {
        assert_eq!(
            signature(
                12345,
                "4fd24687296dd9f3",
                "9193cc662a4c0ec135ec71fb57194b38",
                1615186943
            ),
            "43e5cfcca828314675f91b001390566a"
        );
    }

    fn zego() -> Zego {
        Zego::new(ZegoConfig {
            base_url: "https://zim-api.zego.im".into(),
            app_id: 12345,
            server_secret: Secret::new("9193cc662a4c0ec135ec71fb57194b38"),
            from_user_id: "bot".into(),
            rate_per_second: 20.0,
            rate_limit: Default::default(),
            max_mute_seconds: MAX_DURATION_SECONDS,
            renew_ahead_seconds: 86_400,
        })
    }

    fn call(op: Op, users: &[&str]) -> Action {
        Action {
            rule: Arc::from("r"),
            target: Arc::from("zego"),
            op,
            dest: Dest::Group("g1".into()),
            users: users.iter().map(|u| crate::policy::User::same(u)).collect(),
            need_notify: false,
            extra: None,
        }
    }

    #[test]
    fn mute_all_is_signed_and_permanent_by_default() {
        let now = UNIX_EPOCH + Duration::from_secs(1615186943);
        let r = zego()
            .render_with(
                &call(Op::MuteAll { seconds: None }, &[]),
                now,
                "4fd24687296dd9f3",
            )
            .unwrap();
        assert_eq!(
            r.url,
            "https://zim-api.zego.im/?Action=MuteGroup&AppId=12345&SignatureNonce=4fd24687296dd9f3\
             &Timestamp=1615186943&SignatureVersion=2.0&Signature=43e5cfcca828314675f91b001390566a\
             &FromUserId=bot&GroupId=g1&IsAllMuted=true&Duration=-1"
        );
    }

    #[test]
    fn member_durations_count_down_and_expired_mutes_are_moot() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let until = |ms| Op::MuteMembers {
            length: MuteLength::UntilMs(ms),
        };
        let r = zego()
            .render_with(
                &call(until(1_000_000_000 + 90_500), &["u1", "u2"]),
                now,
                "n",
            )
            .unwrap();
        assert!(
            r.url
                .contains("UserIds%5B%5D=u1&UserIds%5B%5D=u2&Duration=91"),
            "{}",
            r.url
        );
        assert_eq!(
            zego().render_with(&call(until(999_999_000), &["u1"]), now, "n"),
            Err(Unsendable::Moot("the mute has already expired"))
        );
        let r = zego()
            .render_with(&call(Op::UnmuteMembers, &["u1"]), now, "n")
            .unwrap();
        assert!(r.url.ends_with("Duration=0"));
    }

    #[test]
    fn replies_are_classified_by_code() {
        let z = zego();
        let c = call(Op::UnmuteMembers, &["a", "b", "c"]);
        let read = |status, body: &str| {
            z.read(
                &c,
                &Reply {
                    status,
                    retry_after: None,
                    body: body.as_bytes(),
                },
            )
        };
        assert_eq!(read(200, r#"{"Code":0,"Message":"ok"}"#), Outcome::Done);
        assert!(matches!(
            read(200, r#"{"Code":660300005,"Message":"limit"}"#),
            Outcome::Retry {
                kind: Transient::RateLimited,
                ..
            }
        ));
        assert!(
            matches!(
                read(200, r#"{"Code":660300006,"Message":"group limit"}"#),
                Outcome::Retry {
                    kind: Transient::GroupLimited,
                    ..
                }
            ),
            "a group's own limit backs off that group only"
        );
        assert!(matches!(
            read(200, r#"{"Code":1,"Message":"busy"}"#),
            Outcome::Retry {
                kind: Transient::Outage,
                ..
            }
        ));
        assert!(matches!(
            read(200, r#"{"Code":660600001,"Message":"no group"}"#),
            Outcome::Permanent { .. }
        ));
        assert!(matches!(read(502, "bad gateway"), Outcome::Retry { .. }));
        let partial = read(
            200,
            r#"{"Code":0,"ErrorUsers":[{"UserId":"a","SubCode":660000001},{"UserId":"b","SubCode":660000002}]}"#,
        );
        let Outcome::Partial { retry, failed } = partial else {
            panic!("{partial:?}")
        };
        assert_eq!(retry, vec!["a"]);
        assert_eq!(failed[0].0, "b");
    }
}
