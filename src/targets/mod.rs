//! Targets: the downstream APIs the worker applies actions to.
//!
//! A target turns one call (an [`Action`] with at most as many users as
//! the provider takes at once: [`Target::split`]) into the exact HTTP
//! [`Request`] the provider expects, signed afresh for every attempt, and
//! reads the provider's reply into an [`Outcome`] the retry loop in the
//! worker's deliverer acts on. Building and reading are pure (but for the
//! credential Tencent and Agora make and keep: [`credential`]), so
//! `policy explain` and the `log` target print what a real target would
//! send (signatures masked: [`Request::redacted`]). Each provider's file
//! also states what it can do ([`Capabilities`]), how long it holds a mute
//! ([`Target::lapses`]), and checks its own settings; those with read APIs
//! (Tencent, Agora) also build and parse the reads `verify` makes
//! ([`readback`]).

pub mod agora;
pub mod credential;
pub mod log;
pub mod readback;
pub mod rongcloud;
pub mod tencent;
pub mod webhook;
pub mod zego;

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::config::error::Invalid;

use crate::config::secret::Secret;
use crate::event::Event;
use crate::limit::{RateLimitConfig, Spec};
use crate::policy::{Action, Addressing, Capabilities, Dest, MuteLength, Op};
use crate::time::unix_ms;

/// A day, the default of `renew_ahead_seconds`.
pub const DEFAULT_RENEW_AHEAD_SECONDS: u64 = 86_400;
pub use log::{DiscardConfig, LogConfig};

/// `[targets.NAME]`: where actions go, chosen by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetConfig {
    /// ZEGO ZIM server API.
    Zego(zego::ZegoConfig),
    /// RongCloud (Nexconn) server API.
    Rongcloud(rongcloud::RongCloudConfig),
    /// Tencent Cloud Chat (IM) server API.
    Tencent(tencent::TencentConfig),
    /// Agora Chat REST API.
    Agora(agora::AgoraConfig),
    /// POST the normalized event to a URL, HMAC-SHA256 signed.
    Webhook(webhook::WebhookConfig),
    /// Print each request instead of sending it.
    Log(LogConfig),
    /// Accept every action and do nothing (benchmarks, dry runs).
    Discard(DiscardConfig),
}

impl TargetConfig {
    /// The `kind` as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            TargetConfig::Zego(_) => "zego",
            TargetConfig::Rongcloud(_) => "rongcloud",
            TargetConfig::Tencent(_) => "tencent",
            TargetConfig::Agora(_) => "agora",
            TargetConfig::Webhook(_) => "webhook",
            TargetConfig::Log(_) => "log",
            TargetConfig::Discard(_) => "discard",
        }
    }

    /// The config whose request shape this target uses (`log` looks through
    /// to its `as` table).
    pub fn shape(&self) -> &TargetConfig {
        match self {
            TargetConfig::Log(LogConfig {
                render_as: Some(inner),
            }) => inner.shape(),
            other => other,
        }
    }

    /// Every secret in this target, with its key relative to the target.
    pub fn secrets_mut(&mut self) -> Vec<(String, &mut Secret)> {
        let (key, own, rate_limit) = match self {
            TargetConfig::Zego(c) => ("server_secret", &mut c.server_secret, &mut c.rate_limit),
            TargetConfig::Rongcloud(c) => ("app_secret", &mut c.app_secret, &mut c.rate_limit),
            TargetConfig::Tencent(c) => ("secret_key", &mut c.secret_key, &mut c.rate_limit),
            TargetConfig::Agora(c) => {
                ("app_certificate", &mut c.app_certificate, &mut c.rate_limit)
            }
            TargetConfig::Webhook(c) => ("secret", &mut c.secret, &mut c.rate_limit),
            TargetConfig::Log(LogConfig {
                render_as: Some(inner),
            }) => {
                return inner
                    .secrets_mut()
                    .into_iter()
                    .map(|(k, s)| (format!("as.{k}"), s))
                    .collect()
            }
            TargetConfig::Log(_) | TargetConfig::Discard(_) => return Vec::new(),
        };
        let mut secrets = vec![(key.to_owned(), own)];
        secrets.extend(rate_limit.secrets_mut());
        secrets
    }

    /// `[targets.NAME.rate_limit]`; `None` for targets that send nothing.
    pub fn rate_limit(&self) -> Option<&RateLimitConfig> {
        match self {
            TargetConfig::Zego(c) => Some(&c.rate_limit),
            TargetConfig::Rongcloud(c) => Some(&c.rate_limit),
            TargetConfig::Tencent(c) => Some(&c.rate_limit),
            TargetConfig::Agora(c) => Some(&c.rate_limit),
            TargetConfig::Webhook(c) => Some(&c.rate_limit),
            TargetConfig::Log(_) | TargetConfig::Discard(_) => None,
        }
    }

    /// What the rate limiter of this target is built from; `None` for
    /// targets that send nothing (`log`, `discard`).
    pub fn limit_spec<'a>(&'a self, name: &'a str) -> Option<Spec<'a>> {
        let (app, rate_per_second, config) = match self {
            TargetConfig::Zego(c) => (c.app_id.to_string(), Some(c.rate_per_second), &c.rate_limit),
            TargetConfig::Rongcloud(c) => {
                (c.app_key.clone(), Some(c.rate_per_second), &c.rate_limit)
            }
            TargetConfig::Tencent(c) => (
                c.sdk_app_id.to_string(),
                Some(c.rate_per_second),
                &c.rate_limit,
            ),
            TargetConfig::Agora(c) => (c.app_id.clone(), Some(c.rate_per_second), &c.rate_limit),
            // A webhook's "app" is its host and port: callers of one
            // receiver share it, and no path or query (which may carry a
            // token) ends up in a Redis key or a log line.
            TargetConfig::Webhook(c) => (host_of(&c.url), c.rate_per_second, &c.rate_limit),
            TargetConfig::Log(_) | TargetConfig::Discard(_) => return None,
        };
        Some(Spec {
            name,
            kind: self.kind(),
            app,
            rate_per_second,
            config,
        })
    }

    /// What this target can do, for checking the policy against it.
    pub fn capabilities(&self) -> Capabilities {
        let own = match self.shape() {
            TargetConfig::Zego(_) => zego::CAPABILITIES,
            TargetConfig::Rongcloud(_) => rongcloud::CAPABILITIES,
            TargetConfig::Tencent(_) => tencent::CAPABILITIES,
            TargetConfig::Agora(_) => agora::CAPABILITIES,
            _ => Capabilities {
                kind: "",
                addressing: Addressing::Event,
                max_mute_seconds: 0,
                timed_mute_all: false,
                chatroom_notify: false,
            },
        };
        Capabilities {
            kind: self.kind(),
            ..own
        }
    }

    /// True for targets that take whole events (webhook, `log` without
    /// `as`, discard) rather than mute states.
    pub fn forwards(&self) -> bool {
        self.capabilities().addressing == Addressing::Event
    }

    /// `(max_mute_seconds, renew_ahead_seconds)` of a target whose
    /// provider caps mutes; `log` looks through to its `as` table. Tencent
    /// (136 years) and Agora (no documented cap) need no renewal.
    pub fn mute_cap(&self) -> Option<(u64, u64)> {
        match self.shape() {
            TargetConfig::Zego(c) => Some((c.max_mute_seconds, c.renew_ahead_seconds)),
            TargetConfig::Rongcloud(c) => Some((c.max_mute_seconds, c.renew_ahead_seconds)),
            _ => None,
        }
    }

    /// Checks settings that serde cannot; keys relative to the target.
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            TargetConfig::Zego(c) => c.validate(),
            TargetConfig::Rongcloud(c) => c.validate(),
            TargetConfig::Tencent(c) => c.validate(),
            TargetConfig::Agora(c) => c.validate(),
            TargetConfig::Webhook(c) => c.validate(),
            TargetConfig::Log(c) => c.validate(),
            TargetConfig::Discard(_) => Ok(()),
        }
    }
}

/// `rate_per_second` must be positive and sane.
fn check_rate(rate: Option<f64>) -> Result<(), Invalid> {
    use crate::limit::config::MIN_RATE_PER_SECOND;
    match rate {
        // The slowest pace a limiter can be given must still be a period a
        // timer can hold.
        Some(r) if !(MIN_RATE_PER_SECOND..=100_000.0).contains(&r) => Err(Invalid::new(
            "rate_per_second",
            format!("{r} is not between {MIN_RATE_PER_SECOND} (one call every 1000 s) and 100000"),
        )),
        _ => Ok(()),
    }
}

/// `max_mute_seconds` (at most the provider's `limit`) and
/// `renew_ahead_seconds` (shorter than it) must fit together.
fn check_cap(max_mute_seconds: u64, renew_ahead_seconds: u64, limit: u64) -> Result<(), Invalid> {
    if !(1..=limit).contains(&max_mute_seconds) {
        return Err(Invalid::new(
            "max_mute_seconds",
            format!(
                "{max_mute_seconds} is not between 1 and {limit} (the provider's longest mute)"
            ),
        ));
    }
    if renew_ahead_seconds == 0 || renew_ahead_seconds >= max_mute_seconds {
        return Err(Invalid::new(
            "renew_ahead_seconds",
            format!("{renew_ahead_seconds} is not between 1 and max_mute_seconds ({max_mute_seconds}) exclusive: a capped mute is re-applied this long before the provider ends it"),
        ));
    }
    Ok(())
}

/// `url` of a target whose requests carry a credential or a signature
/// made with one: an absolute `https` URL, so that they never cross a
/// network in clear text; `http` only to a loopback address (local
/// stand-ins, tests).
fn check_credential_url(key: &str, url: &str) -> Result<(), Invalid> {
    check_url(key, url)?;
    let u = reqwest::Url::parse(url).expect("checked just above");
    let host = u.host_str().unwrap_or_default();
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if u.scheme() == "https" || loopback {
        return Ok(());
    }
    Err(Invalid::new(
        key,
        format!("{url:?}: requests to this target are signed with its secret, so it must be https (http is accepted only for a loopback address, for local tests)"),
    ))
}

/// `url` must be an absolute http(s) URL.
fn check_url(key: &str, url: &str) -> Result<(), Invalid> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(Invalid::new(key, format!("{url:?} is not an http(s) URL"))),
        Err(e) => Err(Invalid::new(key, format!("{url:?} is not a URL: {e}"))),
    }
}

/// A request exactly as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    /// Agora's unmute-all and member unmute.
    Delete,
}

/// Words that make a query parameter or header name a credential, masked
/// wherever a request is shown: `Authorization`, and what a webhook URL may
/// carry (`?token=`, `access_key`, `api-secret`, `password`, ...).
const CREDENTIAL_WORDS: [&str; 4] = ["token", "secret", "key", "pass"];

/// Whether a query parameter or header named `name` is masked when shown:
/// a credential, or a signature (`Signature`, `X-Mutebridge-Signature`,
/// `sig`: valid for minutes, and not covering what the request does), but
/// not ZEGO's `SignatureNonce` and `SignatureVersion`.
fn is_credential(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with("signature")
        || lower.ends_with("sig")
        || lower.starts_with("auth")
        || CREDENTIAL_WORDS.iter().any(|w| lower.contains(w))
}

/// Shown in place of a signature.
const MASK: &str = "<masked>";

impl Request {
    /// `host:port` of the URL, the only part of it logs and dead letters
    /// name (a path or query may carry a token).
    pub fn host(&self) -> String {
        host_of(&self.url)
    }

    /// The request as `policy explain` and the `log` target print it: what
    /// would be sent, with every signature masked.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(self)
    }
}

/// `host:port` of `url`, or `(unparsable URL)`.
pub fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
        .unwrap_or_else(|| "(unparsable URL)".into())
}

/// A [`Request`] shown with its signatures masked.
pub struct Redacted<'a>(&'a Request);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        let method = match r.method {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        };
        let url = match r.url.split_once('?') {
            None => r.url.clone(),
            Some((base, query)) => {
                let mut q = form_urlencoded::Serializer::new(String::new());
                for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                    let v = if is_credential(&k) { MASK.into() } else { v };
                    q.append_pair(&k, &v);
                }
                format!("{base}?{}", q.finish())
            }
        };
        write!(f, "{method} {url}")?;
        for (name, value) in &r.headers {
            let value = if is_credential(name) { MASK } else { value };
            write!(f, "\n{name}: {value}")?;
        }
        if let Some(body) = &r.body {
            write!(f, "\n\n{body}")?;
        }
        Ok(())
    }
}

/// A provider's reply, as far as the targets need it.
pub struct Reply<'a> {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: &'a [u8],
}

/// What one attempt achieved.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done,
    /// Some users failed (ZEGO `ErrorUsers`): retry these, give up on those
    /// (provider IDs, with why).
    Partial {
        retry: Vec<String>,
        failed: Vec<(String, String)>,
    },
    /// Worth another attempt after a backoff.
    Retry {
        error: String,
        /// What kind of failure: it decides who waits.
        kind: Transient,
        /// Try the next host (timeouts, connection errors, 5xx).
        switch_host: bool,
        after: Option<Duration>,
    },
    /// Another attempt would fail the same way.
    Permanent {
        error: String,
    },
}

/// A failure that goes away by itself, by what it says about the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    /// The provider is unwell (connection refused or reset, timeout, 5xx,
    /// its system-error codes): counted by the target's circuit breaker.
    Outage,
    /// Over the provider's limit for the whole app: every call of the
    /// target pauses.
    RateLimited,
    /// Over a limit of one group (ZEGO 660300006): only that group's call
    /// backs off.
    GroupLimited,
}

impl Outcome {
    fn outage(error: String) -> Outcome {
        Outcome::Retry {
            error,
            kind: Transient::Outage,
            switch_host: false,
            after: None,
        }
    }
}

/// Why a call cannot be rendered into a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsendable {
    /// Nothing to do any more (a mute that has already expired).
    Moot(&'static str),
    /// The call would be wrong to send (it goes to the dead-letter topic).
    Invalid(String),
}

/// A configured target, ready to render and read.
#[derive(Debug, Clone)]
pub enum Target {
    Zego(zego::Zego),
    RongCloud(rongcloud::RongCloud),
    Tencent(tencent::Tencent),
    Agora(agora::Agora),
    Webhook(webhook::Webhook),
    /// Prints instead of sending; the inner target shapes the request.
    Log(Option<Box<Target>>),
    Discard,
}

/// Most users one ZEGO or RongCloud call may name (both cap at 20).
pub const MAX_USERS_PER_CALL: usize = 20;

impl Target {
    pub fn new(config: &TargetConfig) -> Target {
        match config {
            TargetConfig::Zego(c) => Target::Zego(zego::Zego::new(c.clone())),
            TargetConfig::Rongcloud(c) => Target::RongCloud(rongcloud::RongCloud::new(c.clone())),
            TargetConfig::Tencent(c) => Target::Tencent(tencent::Tencent::new(c.clone())),
            TargetConfig::Agora(c) => Target::Agora(agora::Agora::new(c.clone())),
            TargetConfig::Webhook(c) => Target::Webhook(webhook::Webhook::new(c.clone())),
            TargetConfig::Log(c) => {
                Target::Log(c.render_as.as_ref().map(|t| Box::new(Target::new(t))))
            }
            TargetConfig::Discard(_) => Target::Discard,
        }
    }

    /// Hosts to fail over between (RongCloud's and Tencent's primary and
    /// backup).
    pub fn hosts(&self) -> usize {
        match self {
            Target::RongCloud(r) => r.config.base_urls.len(),
            Target::Tencent(t) => t.config.base_urls.len(),
            _ => 1,
        }
    }

    /// When the provider will end the mute `call` sets by itself although
    /// the group's mute goes on (ms since the epoch): its longest mute, or
    /// the `max_mute_seconds` configured, cut it short. `None` when the
    /// provider holds it as long as the group does (or it is no mute).
    pub fn lapses(&self, call: &Action, now: SystemTime) -> Option<i64> {
        match self {
            Target::Zego(z) => z.lapses(call, now),
            Target::RongCloud(r) => r.lapses(call, now),
            Target::Tencent(t) => t.lapses(call, now),
            Target::Log(Some(inner)) => inner.lapses(call, now),
            _ => None,
        }
    }

    /// Most users one call of this target may name.
    pub fn max_users_per_call(&self) -> usize {
        match self {
            Target::Tencent(_) => tencent::MAX_MEMBERS_PER_CALL,
            Target::Agora(_) => agora::MAX_MEMBERS_PER_CALL,
            Target::Log(Some(inner)) => inner.max_users_per_call(),
            _ => MAX_USERS_PER_CALL,
        }
    }

    /// Splits an action into provider calls of at most
    /// [`Target::max_users_per_call`] users each.
    pub fn split(&self, action: Action) -> Vec<Action> {
        let per_user = matches!(action.op, Op::MuteMembers { .. } | Op::UnmuteMembers);
        let most = self.max_users_per_call();
        if !per_user || action.users.len() <= most {
            return vec![action];
        }
        action
            .users
            .chunks(most)
            .map(|chunk| Action {
                users: chunk.to_vec(),
                ..action.clone()
            })
            .collect()
    }

    /// The request for one attempt of `call`, signed for `now`; `None` when
    /// the target sends nothing (`discard`, or `log` without `as`).
    pub fn render(
        &self,
        call: &Action,
        event: &Event,
        host: usize,
        now: SystemTime,
    ) -> Result<Option<Request>, Unsendable> {
        match self {
            Target::Zego(z) => z.render(call, now).map(Some),
            Target::RongCloud(r) => r.render(call, host, now).map(Some),
            Target::Tencent(t) => t.render(call, host, now).map(Some),
            Target::Agora(a) => a.render(call, now).map(Some),
            Target::Webhook(w) => w.render(call, event, now).map(Some),
            Target::Log(Some(inner)) => inner.render(call, event, host, now),
            Target::Log(None) | Target::Discard => {
                if let Op::MuteMembers { length } = &call.op {
                    remaining_seconds(length, now)?;
                }
                Ok(None)
            }
        }
    }

    /// Reads the reply to `call`.
    pub fn read(&self, call: &Action, reply: &Reply<'_>) -> Outcome {
        match self {
            Target::Zego(z) => z.read(call, reply),
            Target::RongCloud(_) => rongcloud::read(reply),
            Target::Tencent(t) => t.read(reply),
            Target::Agora(a) => a.read(call, reply),
            Target::Webhook(_) => webhook::read(reply),
            Target::Log(_) | Target::Discard => Outcome::Done,
        }
    }

    /// The line the `log` target prints for a call it did not render.
    pub fn describe(call: &Action, event: &Event) -> String {
        serde_json::json!({
            "rule": &*call.rule,
            "target": &*call.target,
            "action": call.op.name(),
            "dest": match &call.dest {
                Dest::Group(g) => serde_json::json!({"group": g}),
                Dest::Chatroom(c) => serde_json::json!({"chatroom": c}),
                Dest::Event => serde_json::Value::Null,
            },
            "users": call.users.iter().map(|u| &u.id).collect::<Vec<_>>(),
            "event": event,
        })
        .to_string()
    }
}

/// When a mute of `remaining` seconds (`None`: permanent) that the
/// provider holds for at most `cap` seconds (`None`: it holds a permanent
/// one) ends at the provider before it ends at the source.
fn cut_short(remaining: Option<u64>, cap: u64, permanent_ok: bool, now: SystemTime) -> Option<i64> {
    let cut = match remaining {
        None => !permanent_ok,
        Some(s) => s > cap,
    };
    cut.then(|| unix_ms(now).saturating_add((cap as i64).saturating_mul(1000)))
}

/// How long a member mute still has to run, in whole seconds rounded up;
/// `None` = permanent. An expired mute is moot.
pub fn remaining_seconds(length: &MuteLength, now: SystemTime) -> Result<Option<u64>, Unsendable> {
    match *length {
        MuteLength::Permanent => Ok(None),
        MuteLength::UntilMs(until) => {
            let now_ms = unix_ms(now);
            if until <= now_ms {
                Err(Unsendable::Moot("the mute has already expired"))
            } else {
                Ok(Some(((until - now_ms) as u64).div_ceil(1000)))
            }
        }
    }
}

/// A fresh nonce: 16 lowercase hex characters, as the providers' samples use.
pub(crate) fn nonce() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Parses `Retry-After` given in seconds (the form APIs use).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_requests_need_https_except_to_loopback() {
        for ok in [
            "https://zim-api.zego.im",
            "http://127.0.0.1:8080/hook",
            "http://localhost/hook",
            "http://[::1]:9/x",
        ] {
            assert!(check_credential_url("url", ok).is_ok(), "{ok}");
        }
        for bad in ["http://zim-api.zego.im", "http://10.0.0.5/hook", "ftp://h/"] {
            assert_eq!(
                check_credential_url("url", bad).unwrap_err().key,
                "url",
                "{bad}"
            );
        }
    }

    #[test]
    fn shown_requests_mask_signatures_and_credentials_only() {
        let request = Request {
            method: Method::Post,
            url: "https://hooks.example/in?team=mods&token=t0p&Signature=abc&SignatureNonce=n&Access_Key=k".into(),
            headers: vec![
                ("X-Mutebridge-Signature", "sha256=ff".into()),
                ("Content-Type", "application/json".into()),
            ],
            body: Some("{}".into()),
        };
        let shown = request.redacted().to_string();
        assert_eq!(
            shown,
            "POST https://hooks.example/in?team=mods&token=%3Cmasked%3E&Signature=%3Cmasked%3E&SignatureNonce=n&Access_Key=%3Cmasked%3E\n\
             X-Mutebridge-Signature: <masked>\nContent-Type: application/json\n\n{}"
        );
        assert_eq!(request.host(), "hooks.example:443");
        // Tencent's UserSig and Agora's bearer token; not the account names.
        for name in ["usersig", "Authorization"] {
            assert!(is_credential(name), "{name}");
        }
        for name in ["sdkappid", "identifier", "random", "contenttype"] {
            assert!(!is_credential(name), "{name}");
        }
    }
}
