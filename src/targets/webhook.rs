//! The `webhook` target: POSTs the normalized event as JSON, signed so the
//! receiver can check it came from mutebridge and was not replayed.
//!
//! `X-Mutebridge-Signature: sha256=<hex>` where the digest is
//! HMAC-SHA256(secret, `<X-Mutebridge-Timestamp>.<body>`), like Stripe's
//! scheme: binding the timestamp lets receivers refuse old deliveries.

use std::time::SystemTime;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{Method, Outcome, Reply, Request, Transient, Unsendable};
use crate::config::error::Invalid;
use crate::config::secret::Secret;
use crate::event::Event;
use crate::limit::RateLimitConfig;
use crate::policy::Action;
use crate::time::unix_ms;

/// `[targets.NAME]` with `kind = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// HMAC key; `env:NAME` reads it from the environment.
    pub secret: Secret,
    /// Unlimited when unset; for the whole consumer group when set.
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    /// How the worker replicas share `rate_per_second`.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
}

impl WebhookConfig {
    /// Keys relative to the target.
    pub fn validate(&self) -> Result<(), Invalid> {
        super::check_rate(self.rate_per_second)?;
        self.rate_limit
            .validate()
            .map_err(|e| e.under("rate_limit"))?;
        super::check_credential_url("url", &self.url)
    }
}

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A configured webhook target.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub config: WebhookConfig,
}

impl Webhook {
    pub fn new(config: WebhookConfig) -> Webhook {
        Webhook { config }
    }

    pub fn render(
        &self,
        call: &Action,
        event: &Event,
        now: SystemTime,
    ) -> Result<Request, Unsendable> {
        let body = serde_json::to_string(event).expect("events always serialize");
        let timestamp = (unix_ms(now) / 1000).to_string();
        let sig = signature(self.config.secret.expose(), &timestamp, body.as_bytes());
        Ok(Request {
            method: Method::Post,
            url: self.config.url.clone(),
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("X-Mutebridge-Event-Id", event.id.clone()),
                ("X-Mutebridge-Rule", call.rule.to_string()),
                ("X-Mutebridge-Timestamp", timestamp),
                ("X-Mutebridge-Signature", sig),
            ],
            body: Some(body),
        })
    }
}

/// Statuses a retry cannot change: the request itself is refused (bad
/// request, credentials, gone, too large, unprocessable).
const PERMANENT: [u16; 6] = [400, 401, 403, 410, 413, 422];

/// 2xx is success; 429 pauses the target (its limit); [`PERMANENT`]
/// statuses are dead-lettered. Anything else may succeed on retry (a 404 or
/// 503 while the receiver redeploys, 409, 425, 5xx): an outage answer,
/// retried within the budget and counted by the breaker.
pub fn read(reply: &Reply<'_>) -> Outcome {
    let s = reply.status;
    let body = || String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)]).into_owned();
    match s {
        200..=299 => Outcome::Done,
        429 => Outcome::Retry {
            error: format!("HTTP {s}"),
            kind: Transient::RateLimited,
            switch_host: false,
            after: reply.retry_after,
        },
        s if PERMANENT.contains(&s) => Outcome::Permanent {
            error: format!("HTTP {s}: {}", body()),
        },
        s => Outcome::Retry {
            error: format!("HTTP {s}: {}", body()),
            kind: Transient::Outage,
            switch_host: false,
            after: reply.retry_after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_a_retry_cannot_change_are_permanent() {
        let read_status = |status| {
            read(&Reply {
                status,
                retry_after: None,
                body: b"x",
            })
        };
        for s in [400, 401, 403, 410, 413, 422] {
            assert!(matches!(read_status(s), Outcome::Permanent { .. }), "{s}");
        }
        for s in [404, 408, 409, 425, 500, 502, 503, 504] {
            assert!(
                matches!(
                    read_status(s),
                    Outcome::Retry {
                        kind: Transient::Outage,
                        ..
                    }
                ),
                "{s}"
            );
        }
        assert!(matches!(
            read_status(429),
            Outcome::Retry {
                kind: Transient::RateLimited,
                ..
            }
        ));
        assert_eq!(read_status(204), Outcome::Done);
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Expected value from:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec-test
        assert_eq!(
            signature("whsec-test", "1700000000", br#"{"a":1}"#),
            "sha256=fed7a1a6c799a6367d73724d76bc70c16678908a32a879cd1ded6565ac05cece"
        );
    }
}
