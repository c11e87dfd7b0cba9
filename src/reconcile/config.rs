//! `[reconcile]` and each app's `[easemob.apps.rest]`: how often the
//! reconciler compares the mute state with Easemob's own, which groups it
//! reads, and how it reaches an app's REST API.

use serde::Deserialize;

use crate::config::error::{invalid, within, Invalid, DAY};
use crate::config::secret::Secret;
use crate::limit::config::MIN_RATE_PER_SECOND;
use crate::limit::RateLimitConfig;

/// The most calls per second Easemob allows an App Key for each read; the
/// client SDKs' calls count against it too.
pub const APP_KEY_READS_PER_SECOND: f64 = 100.0;

/// `[reconcile]`: the `mutebridge reconcile` role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Seconds from the end of one pass of the role to the start of the
    /// next; 0 = only on demand
    /// (`mutebridge reconcile --once`).
    pub interval_seconds: u64,
    /// Which groups a pass reads: `known` (those in the state topic) or
    /// `all` (also every group the app lists; chat rooms stay `known` only).
    pub scope: Reach,
    /// Per REST call; past it the call counts as failed and is retried.
    pub request_timeout_ms: u64,
    /// A pass that would unmute more than this share of a group's muted
    /// members reads the group's mute list a second time and unmutes only
    /// if both reads agree; otherwise the group is held back (nothing
    /// published) until the next pass. 0 = always confirm, 1 = never.
    pub confirm_unmute_share: f64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            interval_seconds: 3600,
            scope: Reach::Known,
            request_timeout_ms: 10_000,
            confirm_unmute_share: 0.5,
        }
    }
}

/// `reconcile.scope`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// The groups and chat rooms the state topic holds a state for.
    #[default]
    Known,
    /// Those, and every group `GET /chatgroups` lists (a first sync).
    All,
}

impl ReconcileConfig {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        within(
            "interval_seconds",
            self.interval_seconds,
            0..=7 * DAY,
            "seconds (0: only on demand)",
        )?;
        within(
            "request_timeout_ms",
            self.request_timeout_ms,
            100..=120_000,
            "milliseconds",
        )?;
        if !(0.0..=1.0).contains(&self.confirm_unmute_share) {
            return invalid(
                "confirm_unmute_share",
                format!(
                    "{} is not a share between 0 (always confirm) and 1 (never)",
                    self.confirm_unmute_share
                ),
            );
        }
        Ok(())
    }
}

/// `[easemob.apps.rest]`: the app's REST API, for reading the state the
/// callbacks describe. Only `mutebridge reconcile` uses it (and resolves
/// its secrets).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestConfig {
    /// The app's REST host, e.g. `https://a1.easemob.com` (the console shows
    /// it; it depends on the app's data centre). `https`: the Client Secret
    /// and the token go over it (`http` only to a loopback host).
    pub base_url: String,
    /// `{org_name}`; defaults to the part of the appkey before `#`.
    #[serde(default)]
    pub org: Option<String>,
    /// `{app_name}`; defaults to the part of the appkey after `#`.
    #[serde(default)]
    pub app: Option<String>,
    /// The app's Client ID (or `env:NAME`).
    pub client_id: Secret,
    /// The app's Client Secret (or `env:NAME`).
    pub client_secret: Secret,
    /// Reads per second: our share of the App Key's 100/s, which the client
    /// SDKs share (headroom applies, as for targets).
    #[serde(default = "default_rate")]
    pub rate_per_second: f64,
    /// How replicas share `rate_per_second` (`mode = "redis"` keeps it
    /// exactly); as `[targets.NAME.rate_limit]`.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
}

fn default_rate() -> f64 {
    20.0
}

/// Letters, digits, `_`, `-` and `.`: what Easemob allows in org and app
/// names, and what can go into a URL path unescaped.
pub(crate) fn is_name(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `localhost`, 127.0.0.0/8 or ::1: traffic that never leaves the machine.
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl RestConfig {
    /// `org` and `app`, from the appkey when not given.
    pub fn names<'a>(&'a self, appkey: &'a str) -> (&'a str, &'a str) {
        let (org, app) = appkey.split_once('#').unwrap_or((appkey, ""));
        (
            self.org.as_deref().unwrap_or(org),
            self.app.as_deref().unwrap_or(app),
        )
    }

    /// Keys relative to `rest`.
    pub(crate) fn validate(&self, appkey: &str) -> Result<(), Invalid> {
        let url = self.base_url.trim_end_matches('/');
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if u.query().is_some() || u.path() != "/" && !u.path().is_empty() {
                    return invalid(
                        "base_url",
                        "is the host only (https://a1.easemob.com); org and app are separate keys",
                    );
                }
                if u.scheme() == "http" && !is_loopback(&u) {
                    return invalid(
                        "base_url",
                        format!("{url:?} is plain http: the Client Secret and the app token would cross the network unencrypted; use https:// (http only reaches a loopback host)"),
                    );
                }
            }
            _ => {
                return invalid(
                    "base_url",
                    format!("{url:?} is not an http(s) URL, e.g. https://a1.easemob.com"),
                )
            }
        }
        let (org, app) = self.names(appkey);
        for (key, value) in [("org", org), ("app", app)] {
            if !is_name(value) {
                return invalid(
                    key,
                    format!("{value:?} is not an Easemob {key} name (letters, digits, _ - .)"),
                );
            }
        }
        for (key, secret) in [
            ("client_id", &self.client_id),
            ("client_secret", &self.client_secret),
        ] {
            if secret.is_resolved() && secret.expose().is_empty() {
                return invalid(key, "is empty");
            }
        }
        if !(self.rate_per_second >= MIN_RATE_PER_SECOND
            && self.rate_per_second <= APP_KEY_READS_PER_SECOND)
        {
            return invalid(
                "rate_per_second",
                format!(
                    "{} is not between {MIN_RATE_PER_SECOND} and {APP_KEY_READS_PER_SECOND} (Easemob's limit per App Key, shared with the client SDKs)",
                    self.rate_per_second
                ),
            );
        }
        self.rate_limit
            .validate()
            .map_err(|e| e.under("rate_limit"))
    }

    /// The secrets, for `env:` resolution, by key relative to `rest`.
    pub fn secrets_mut(&mut self) -> Vec<(String, &mut Secret)> {
        let mut all = vec![
            ("client_id".to_owned(), &mut self.client_id),
            ("client_secret".to_owned(), &mut self.client_secret),
        ];
        all.extend(self.rate_limit.secrets_mut());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(base_url: &str) -> RestConfig {
        toml::from_str(&format!(
            "base_url = \"{base_url}\"\nclient_id = \"i\"\nclient_secret = \"s\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn credentials_go_over_https_or_stay_on_the_machine() {
        for ok in [
            "https://a1.easemob.com",
            "https://10.0.0.1:8443/",
            "http://127.0.0.1:8080",
            "http://127.9.9.9",
            "http://localhost:1",
            "http://[::1]:80",
        ] {
            assert_eq!(rest(ok).validate("o#a"), Ok(()), "{ok}");
        }
        for bad in [
            "http://a1.easemob.com",
            "http://10.0.0.1",
            "http://[::2]",
            "http://localhost.example.com",
        ] {
            let e = rest(bad).validate("o#a").unwrap_err();
            assert_eq!(e.key, "base_url", "{bad}");
            assert!(e.message.contains("use https://"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn the_unmute_share_is_a_share() {
        let mut c = ReconcileConfig::default();
        for ok in [0.0, 0.5, 1.0] {
            c.confirm_unmute_share = ok;
            assert_eq!(c.validate(), Ok(()));
        }
        for bad in [-0.1, 1.5, f64::NAN] {
            c.confirm_unmute_share = bad;
            assert_eq!(c.validate().unwrap_err().key, "confirm_unmute_share");
        }
    }
}
