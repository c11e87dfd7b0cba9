//! RongCloud (Nexconn) server API: chatroom and group mute-all, member gag,
//! and their rollbacks.
//!
//! Every call is a form POST signed in headers with
//! `sha1(AppSecret + Nonce + Timestamp)` in lowercase hex. Success is
//! `code == 200`. Hosts come in primary/backup pairs; on timeouts,
//! connection errors and 5xx the next attempt goes to the other host.

use std::time::SystemTime;

use serde::Deserialize;
use sha1::{Digest, Sha1};

use super::{cut_short, remaining_seconds, Method, Outcome, Reply, Request, Transient, Unsendable};
use crate::config::error::Invalid;
use crate::config::secret::Secret;
use crate::limit::RateLimitConfig;
use crate::policy::{Action, Addressing, Capabilities, Dest, Op};
use crate::time::unix_ms;

/// Longest chatroom or group gag RongCloud accepts, in minutes (30 days).
pub const MAX_GAG_MINUTES: u64 = 43_200;

/// `[targets.NAME]` with `kind = "rongcloud"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RongCloudConfig {
    /// Your data center's primary host, then its backup.
    #[serde(default = "default_base_urls")]
    pub base_urls: Vec<String>,
    pub app_key: String,
    /// `env:NAME` reads it from the environment.
    pub app_secret: Secret,
    /// Unit of the `Timestamp` header. The docs say milliseconds; the
    /// official Go, Java and Ruby SDKs send seconds, so that is the default.
    #[serde(default)]
    pub timestamp_unit: TimestampUnit,
    /// RongCloud allows 100 calls per second per app key, for everything
    /// that calls it: this is that limit for the whole consumer group.
    #[serde(default = "default_rate")]
    pub rate_per_second: f64,
    /// How the worker replicas share `rate_per_second`.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// The longest gag RongCloud holds (its limit, 43,200 minutes, by
    /// default), in seconds: a chatroom gag (which cannot be permanent) or
    /// a longer timed gag is sent for this long and re-applied before it
    /// ends. Lower only to try renewal out (RongCloud counts in minutes).
    #[serde(default = "default_max_mute")]
    pub max_mute_seconds: u64,
    /// How long before RongCloud would end a capped gag it is re-applied.
    #[serde(default = "default_renew_ahead")]
    pub renew_ahead_seconds: u64,
    /// The clock of the end times RongCloud lists (`mutebridge verify`
    /// reads them): `beijing` (UTC+8, the Beijing data centre) or `utc`
    /// (the global data centres). Unset: from the first of `base_urls`
    /// (`*.rong-api.com`: beijing; `*-light-api.com`: utc).
    #[serde(default)]
    pub time_zone: Option<TimeZone>,
}

/// The zone of the wall-clock times RongCloud's lists show: its data
/// centre's ("Beijing time" for the Beijing data centre, UTC for the
/// global ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeZone {
    Beijing,
    Utc,
}

impl TimeZone {
    /// Seconds east of UTC.
    pub fn utc_offset_seconds(self) -> i32 {
        match self {
            TimeZone::Beijing => 8 * 3600,
            TimeZone::Utc => 0,
        }
    }
}

fn default_max_mute() -> u64 {
    MAX_GAG_MINUTES * 60
}

fn default_renew_ahead() -> u64 {
    super::DEFAULT_RENEW_AHEAD_SECONDS
}

/// Unit of RongCloud's `Timestamp` header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampUnit {
    #[default]
    Seconds,
    Milliseconds,
}

/// What a RongCloud target can do: mute a group or a chatroom (everyone
/// or members), members for up to 30 days; a mute-all has no length.
pub const CAPABILITIES: Capabilities = Capabilities {
    kind: "rongcloud",
    addressing: Addressing::GroupOrChatroom,
    max_mute_seconds: MAX_GAG_MINUTES * 60,
    timed_mute_all: false,
    chatroom_notify: true,
};

impl RongCloudConfig {
    /// Keys relative to the target.
    pub fn validate(&self) -> Result<(), Invalid> {
        super::check_rate(Some(self.rate_per_second))?;
        self.rate_limit
            .validate()
            .map_err(|e| e.under("rate_limit"))?;
        if self.base_urls.is_empty() {
            return Err(Invalid::new("base_urls", "needs at least one host"));
        }
        for (i, u) in self.base_urls.iter().enumerate() {
            super::check_credential_url(&format!("base_urls[{i}]"), u)?;
        }
        if self.app_key.trim().is_empty() {
            return Err(Invalid::new("app_key", "must not be empty"));
        }
        super::check_cap(
            self.max_mute_seconds,
            self.renew_ahead_seconds,
            MAX_GAG_MINUTES * 60,
        )
    }
}

impl RongCloudConfig {
    /// `time_zone`, or the data centre's zone told by the first host;
    /// `None` when neither says.
    pub fn list_time_zone(&self) -> Option<TimeZone> {
        if self.time_zone.is_some() {
            return self.time_zone;
        }
        let url = reqwest::Url::parse(self.base_urls.first()?).ok()?;
        let host = url.host_str()?;
        if host.ends_with(".rong-api.com") || host.ends_with(".ronghub.com") {
            Some(TimeZone::Beijing)
        } else if host.ends_with("-light-api.com") {
            Some(TimeZone::Utc)
        } else {
            None
        }
    }
}

fn default_base_urls() -> Vec<String> {
    vec![
        "https://api.rong-api.com".into(),
        "https://api-b.rong-api.com".into(),
    ]
}

fn default_rate() -> f64 {
    100.0
}

/// RongCloud's `Signature` header.
pub fn signature(app_secret: &str, nonce: &str, timestamp: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(app_secret);
    sha.update(nonce);
    sha.update(timestamp);
    hex::encode(sha.finalize())
}

/// RongCloud result codes mutebridge acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RongCloudCode {
    Success,
    InternalError,
    KeySecretMismatch,
    BadParameter,
    SignatureError,
    ParameterTooLong,
    AppLocked,
    MethodRestricted,
    RateLimited,
    ServiceNotEnabled,
    InternalTimeout,
    Other(i64),
}

impl RongCloudCode {
    pub fn from_code(code: i64) -> RongCloudCode {
        use RongCloudCode::*;
        match code {
            200 => Success,
            1000 => InternalError,
            1001 => KeySecretMismatch,
            1002 => BadParameter,
            1004 => SignatureError,
            1005 => ParameterTooLong,
            1006 => AppLocked,
            1007 => MethodRestricted,
            1008 => RateLimited,
            1009 => ServiceNotEnabled,
            1050 => InternalTimeout,
            other => Other(other),
        }
    }

    pub fn code(self) -> i64 {
        use RongCloudCode::*;
        match self {
            Success => 200,
            InternalError => 1000,
            KeySecretMismatch => 1001,
            BadParameter => 1002,
            SignatureError => 1004,
            ParameterTooLong => 1005,
            AppLocked => 1006,
            MethodRestricted => 1007,
            RateLimited => 1008,
            ServiceNotEnabled => 1009,
            InternalTimeout => 1050,
            Other(c) => c,
        }
    }

    /// The documented retryable codes: 1000, 1008, 1050.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            RongCloudCode::InternalError
                | RongCloudCode::RateLimited
                | RongCloudCode::InternalTimeout
        )
    }

    pub fn describe(self) -> &'static str {
        use RongCloudCode::*;
        match self {
            Success => "success",
            InternalError => "internal error",
            KeySecretMismatch => "app_key and app_secret do not match",
            BadParameter => "bad parameter",
            SignatureError => "signature error (check app_secret and the clock)",
            ParameterTooLong => "parameter too long",
            AppLocked => "app locked",
            MethodRestricted => "method restricted",
            RateLimited => "rate limit",
            ServiceNotEnabled => "service not enabled",
            InternalTimeout => "internal timeout",
            Other(_) => "unknown code",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    code: i64,
    #[serde(default)]
    error_message: String,
}

/// A configured RongCloud target.
#[derive(Debug, Clone)]
pub struct RongCloud {
    pub config: RongCloudConfig,
}

impl RongCloud {
    pub fn new(config: RongCloudConfig) -> RongCloud {
        RongCloud { config }
    }

    /// When RongCloud ends a gag `call` sets before the group does: a
    /// chatroom gag always has an end (there is no permanent one), a timed
    /// gag longer than `max_mute_seconds` is cut to it; a permanent group
    /// gag (`minute=0`) and a mute-all are held until lifted.
    pub fn lapses(&self, call: &Action, now: SystemTime) -> Option<i64> {
        let Op::MuteMembers { length } = &call.op else {
            return None;
        };
        let remaining = remaining_seconds(length, now).ok()?;
        let chatroom = matches!(call.dest, Dest::Chatroom(_));
        cut_short(remaining, self.config.max_mute_seconds, !chatroom, now)
    }

    /// The longest gag, in RongCloud's minutes.
    fn max_minutes(&self) -> u64 {
        self.config
            .max_mute_seconds
            .div_ceil(60)
            .clamp(1, MAX_GAG_MINUTES)
    }

    /// The form POST for one attempt on host `host`.
    pub fn render(
        &self,
        call: &Action,
        host: usize,
        now: SystemTime,
    ) -> Result<Request, Unsendable> {
        self.render_with(call, host, now, &super::nonce())
    }

    fn render_with(
        &self,
        call: &Action,
        host: usize,
        now: SystemTime,
        nonce: &str,
    ) -> Result<Request, Unsendable> {
        let (chatroom, id) = match &call.dest {
            Dest::Chatroom(id) => (true, id),
            Dest::Group(id) => (false, id),
            Dest::Event => {
                return Err(Unsendable::Invalid(
                    "a RongCloud call needs a group or chatroom".into(),
                ))
            }
        };
        if id.is_empty() {
            // An empty groupId on /group/user/gag/add.json mutes the user in
            // every group they are in.
            return Err(Unsendable::Invalid(
                "the RongCloud group/chatroom ID is empty".into(),
            ));
        }
        let id_key = if chatroom { "chatroomId" } else { "groupId" };
        let mut form = form_urlencoded::Serializer::new(String::new());
        let path = match (&call.op, chatroom) {
            (Op::MuteAll { .. }, true) => "/chatroom/ban/add.json",
            (Op::UnmuteAll, true) => "/chatroom/ban/rollback.json",
            (Op::MuteAll { .. }, false) => "/group/ban/add.json",
            (Op::UnmuteAll, false) => "/group/ban/rollback.json",
            (Op::MuteMembers { .. }, true) => "/chatroom/user/gag/add.json",
            (Op::UnmuteMembers, true) => "/chatroom/user/gag/rollback.json",
            (Op::MuteMembers { .. }, false) => "/group/user/gag/add.json",
            (Op::UnmuteMembers, false) => "/group/user/gag/rollback.json",
            (Op::Forward, _) => {
                return Err(Unsendable::Invalid(
                    "RongCloud cannot forward events".into(),
                ))
            }
        };
        if let Op::MuteMembers { .. } | Op::UnmuteMembers = call.op {
            if call.users.is_empty() {
                return Err(Unsendable::Moot("no users to mute or unmute"));
            }
            for user in &call.users {
                form.append_pair("userId", &user.id);
            }
        }
        form.append_pair(id_key, id);
        if let Op::MuteMembers { length } = &call.op {
            let minutes = match remaining_seconds(length, now)? {
                Some(s) => s.div_ceil(60).clamp(1, self.max_minutes()),
                // Group gags can be permanent (0); chatroom gags cannot, so
                // they get the longest allowed (and are renewed).
                None if chatroom => self.max_minutes(),
                None => 0,
            };
            form.append_pair("minute", &minutes.to_string());
        }
        if chatroom {
            if let Some(extra) = &call.extra {
                form.append_pair("extra", extra);
            }
            if call.need_notify {
                form.append_pair("needNotify", "true");
            }
        }
        let c = &self.config;
        let ms = unix_ms(now);
        let timestamp = match c.timestamp_unit {
            TimestampUnit::Seconds => (ms / 1000).to_string(),
            TimestampUnit::Milliseconds => ms.to_string(),
        };
        let sig = signature(c.app_secret.expose(), nonce, &timestamp);
        let base = &c.base_urls[host % c.base_urls.len()];
        Ok(Request {
            method: Method::Post,
            url: format!("{}{path}", base.trim_end_matches('/')),
            headers: vec![
                ("App-Key", c.app_key.clone()),
                ("Nonce", nonce.to_owned()),
                ("Timestamp", timestamp),
                ("Signature", sig),
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded".to_owned(),
                ),
            ],
            body: Some(form.finish()),
        })
    }
}

/// Reads `{code, errorMessage}`: 200 is success, 1000/1008/1050, 429 and
/// 5xx are retried (5xx on the other host), the rest are permanent.
pub fn read(reply: &Reply<'_>) -> Outcome {
    let server_side = reply.status >= 500;
    let parsed: Option<Response> = serde_json::from_slice(reply.body).ok();
    let Some(r) = parsed else {
        return if reply.status == 429 || server_side || (200..300).contains(&reply.status) {
            Outcome::Retry {
                error: format!("HTTP {} without a RongCloud reply body", reply.status),
                kind: if reply.status == 429 {
                    Transient::RateLimited
                } else {
                    Transient::Outage
                },
                switch_host: server_side,
                after: reply.retry_after,
            }
        } else {
            Outcome::Permanent {
                error: format!("HTTP {} without a RongCloud reply body", reply.status),
            }
        };
    };
    let code = RongCloudCode::from_code(r.code);
    if code == RongCloudCode::Success {
        return Outcome::Done;
    }
    let error = format!(
        "RongCloud code {} ({}): {}",
        code.code(),
        code.describe(),
        r.error_message
    );
    if code.retryable() || server_side || reply.status == 429 {
        let rate_limited = code == RongCloudCode::RateLimited || reply.status == 429;
        Outcome::Retry {
            error,
            // 1000 (internal error) and 1050 (internal timeout) are the
            // provider's own trouble; RongCloud documents no code about a
            // single chatroom or group being over a limit.
            kind: if rate_limited {
                Transient::RateLimited
            } else {
                Transient::Outage
            },
            switch_host: server_side,
            after: reply.retry_after,
        }
    } else {
        Outcome::Permanent { error }
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
            signature("Y1W2MeFwwwRxa0", "14314", "1408710653000"),
            "30be0bbca9c9b2e27578701e9fda2358a814c88f"
        );
    }

    fn rc() -> RongCloud {
        RongCloud::new(RongCloudConfig {
            base_urls: default_base_urls(),
            app_key: "uwd1c0sxdlx2".into(),
            app_secret: Secret::new("Y1W2MeFwwwRxa0"),
            timestamp_unit: TimestampUnit::Milliseconds,
            rate_per_second: 100.0,
            rate_limit: Default::default(),
            max_mute_seconds: MAX_GAG_MINUTES * 60,
            renew_ahead_seconds: 86_400,
            time_zone: None,
        })
    }

    fn call(op: Op, dest: Dest, users: &[&str]) -> Action {
        Action {
            rule: Arc::from("r"),
            target: Arc::from("rc"),
            op,
            dest,
            users: users.iter().map(|u| crate::policy::User::same(u)).collect(),
            need_notify: true,
            extra: None,
        }
    }

    #[test]
    fn chatroom_mute_all_matches_the_documented_request() {
        let now = UNIX_EPOCH + Duration::from_millis(1408710653000);
        let r = rc()
            .render_with(
                &call(
                    Op::MuteAll { seconds: None },
                    Dest::Chatroom("123".into()),
                    &[],
                ),
                0,
                now,
                "14314",
            )
            .unwrap();
        assert_eq!(r.url, "https://api.rong-api.com/chatroom/ban/add.json");
        assert_eq!(r.body.as_deref(), Some("chatroomId=123&needNotify=true"));
        assert!(r.headers.contains(&(
            "Signature",
            "30be0bbca9c9b2e27578701e9fda2358a814c88f".into()
        )));
        let backup = rc()
            .render_with(
                &call(Op::UnmuteAll, Dest::Chatroom("123".into()), &[]),
                1,
                now,
                "1",
            )
            .unwrap();
        assert_eq!(
            backup.url,
            "https://api-b.rong-api.com/chatroom/ban/rollback.json"
        );
    }

    #[test]
    fn gag_minutes_follow_each_endpoint_rules() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let permanent = Op::MuteMembers {
            length: MuteLength::Permanent,
        };
        let body = |op: Op, dest: Dest| {
            rc().render_with(&call(op, dest, &["a", "b"]), 0, now, "n")
                .unwrap()
                .body
                .unwrap()
        };
        assert_eq!(
            body(permanent.clone(), Dest::Group("g".into())),
            "userId=a&userId=b&groupId=g&minute=0"
        );
        assert_eq!(
            body(permanent, Dest::Chatroom("c".into())),
            "userId=a&userId=b&chatroomId=c&minute=43200&needNotify=true"
        );
        let ninety_seconds = Op::MuteMembers {
            length: MuteLength::UntilMs(1_090_000),
        };
        assert!(body(ninety_seconds, Dest::Group("g".into())).ends_with("minute=2"));
        assert!(matches!(
            rc().render_with(
                &call(Op::UnmuteMembers, Dest::Group(String::new()), &["a"]),
                0,
                now,
                "n"
            ),
            Err(Unsendable::Invalid(_))
        ));
    }

    #[test]
    fn replies_are_classified_by_code_and_status() {
        let read_ = |status, body: &str| {
            read(&Reply {
                status,
                retry_after: None,
                body: body.as_bytes(),
            })
        };
        assert_eq!(read_(200, r#"{"code":200}"#), Outcome::Done);
        assert!(matches!(
            read_(429, r#"{"code":1008,"errorMessage":"too many"}"#),
            Outcome::Retry {
                kind: Transient::RateLimited,
                switch_host: false,
                ..
            }
        ));
        assert!(matches!(
            read_(500, r#"{"code":1000}"#),
            Outcome::Retry {
                kind: Transient::Outage,
                switch_host: true,
                ..
            }
        ));
        assert!(matches!(
            read_(401, r#"{"code":1004}"#),
            Outcome::Permanent { .. }
        ));
        assert!(matches!(
            read_(400, r#"{"code":1002}"#),
            Outcome::Permanent { .. }
        ));
    }
}
