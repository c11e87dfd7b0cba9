//! Signature verification: the only way from raw bytes to a [`Verified`]
//! callback.
//!
//! The type-state is the point: [`Unverified::parse`] reads just the envelope
//! (`callId`, `security`, `timestamp`, `appkey`), and only
//! [`Verifier::verify`] can produce a [`Verified`], whose fields are private.
//! [`crate::ingest::normalize`] accepts nothing else, and the publisher accepts only
//! what normalize returns, so unverified data cannot reach Kafka.

use std::collections::HashMap;

use md5::{Digest, Md5};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::ingest::config::EasemobApp;

use crate::config::secret::Secret;

/// Why a body could not be read as a callback (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

impl BadRequest {
    pub fn new(msg: impl Into<String>) -> Self {
        BadRequest(msg.into())
    }
}

/// Why a well-formed callback was not accepted (answered 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("unknown appkey")]
    UnknownAppkey,
    #[error("signature does not match any secret of this appkey")]
    BadSignature,
    #[error("timestamp is outside the replay window")]
    Stale,
    /// Answered 400, not 401: the sender is who it says, its field is wrong.
    #[error("field `timestamp` is {ahead_s} s ahead of the receiver's clock; at most {skew_s} s (easemob.max_future_skew_seconds) is accepted")]
    Future { ahead_s: i64, skew_s: i64 },
}

/// A parsed callback whose signature has not been checked yet.
#[derive(Debug)]
pub struct Unverified {
    body: Map<String, Value>,
    call_id: String,
    /// The signature's 16 bytes; `None` when it is not 32 hex characters
    /// (then it cannot match, and is rejected like any wrong signature).
    security: Option<[u8; 16]>,
    timestamp: i64,
    timestamp_digits: String,
    appkey: String,
}

/// A callback whose `security` matched one of its app's secrets (compared
/// as digests, so upper- and lowercase hex are both accepted).
#[derive(Debug)]
pub struct Verified {
    body: Map<String, Value>,
    call_id: String,
    timestamp: i64,
    appkey: String,
}

/// `md5(callId + secret + timestamp)` as 32 lowercase hex characters: the
/// Easemob callback signature.
pub fn sign(call_id: &str, secret: &str, timestamp_digits: &str) -> String {
    hex::encode(digest(call_id, secret, timestamp_digits))
}

fn digest(call_id: &str, secret: &str, timestamp_digits: &str) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(call_id.as_bytes());
    md5.update(secret.as_bytes());
    md5.update(timestamp_digits.as_bytes());
    md5.finalize().into()
}

/// Longest `callId` and group or chatroom ID accepted, in bytes. Easemob's
/// are far shorter (`{appkey}_{uuid}`, numeric IDs); the cap keeps record
/// keys and dedup entries small whatever a client sends.
pub const MAX_ID_BYTES: usize = 256;

/// Checks an identifier the rest of the pipeline keys on: not blank, at
/// most [`MAX_ID_BYTES`], no control characters.
pub fn check_id(key: &str, what: &str, id: &str) -> Result<(), BadRequest> {
    if id.trim().is_empty() {
        return Err(BadRequest(format!(
            "field `{key}` ({what}) is empty or blank"
        )));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(BadRequest(format!(
            "field `{key}` ({what}) is {} bytes long; at most {MAX_ID_BYTES} are accepted",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(BadRequest(format!(
            "field `{key}` ({what}) contains a control character"
        )));
    }
    Ok(())
}

/// A time in milliseconds since the epoch as Easemob writes them: a JSON
/// integer or a string of digits. Returns the value and its digits as sent
/// (never a float round-trip, which would change large values and break
/// signatures); `None` for anything else (floats, signs in strings,
/// values beyond i64).
pub fn millis(value: &Value) -> Option<(i64, String)> {
    match value {
        Value::Number(n) => n.as_i64().map(|ms| (ms, ms.to_string())),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<i64>().ok().map(|ms| (ms, s.clone()))
        }
        _ => None,
    }
}

fn required_str<'a>(body: &'a Map<String, Value>, key: &str) -> Result<&'a str, BadRequest> {
    match body.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(BadRequest(format!("field `{key}` is empty"))),
        Some(_) => Err(BadRequest(format!("field `{key}` must be a string"))),
        None => Err(BadRequest(format!("field `{key}` is missing"))),
    }
}

/// The timestamp as the sender rendered it (see [`millis`]); positive.
fn timestamp_of(body: &Map<String, Value>) -> Result<(i64, String), BadRequest> {
    let value = body
        .get("timestamp")
        .ok_or_else(|| BadRequest::new("field `timestamp` is missing"))?;
    match millis(value) {
        Some((ts, digits)) if ts > 0 => Ok((ts, digits)),
        Some(_) => Err(BadRequest::new(
            "field `timestamp` must be a positive number of milliseconds since the epoch",
        )),
        None => Err(BadRequest::new(
            "field `timestamp` must be an integer number of milliseconds (a JSON integer or a string of digits)",
        )),
    }
}

impl Unverified {
    /// Parses a body as JSON and reads the signed envelope fields.
    pub fn parse(bytes: &[u8]) -> Result<Unverified, BadRequest> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| BadRequest(format!("body is not JSON: {e}")))?;
        let Value::Object(body) = value else {
            return Err(BadRequest::new("body must be a JSON object"));
        };
        let call_id = required_str(&body, "callId")?.to_owned();
        check_id("callId", "the callback's ID", &call_id)?;
        let mut security = [0u8; 16];
        let security = hex::decode_to_slice(required_str(&body, "security")?, &mut security)
            .ok()
            .map(|()| security);
        let appkey = required_str(&body, "appkey")?.to_owned();
        let (timestamp, timestamp_digits) = timestamp_of(&body)?;
        Ok(Unverified {
            body,
            call_id,
            security,
            timestamp,
            timestamp_digits,
            appkey,
        })
    }
}

impl Verified {
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn appkey(&self) -> &str {
        &self.appkey
    }

    /// The callback's `timestamp` in milliseconds.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The whole verified JSON body.
    pub fn body(&self) -> &Map<String, Value> {
        &self.body
    }
}

/// Checks callbacks against the configured apps' secrets.
#[derive(Debug, Clone)]
pub struct Verifier {
    apps: HashMap<String, Vec<Secret>>,
    replay_window_ms: Option<i64>,
    max_future_skew_ms: i64,
}

impl Verifier {
    /// `replay_window_seconds == 0` accepts any past timestamp; none more
    /// than `max_future_skew_seconds` ahead is accepted.
    pub fn new(
        apps: &[EasemobApp],
        replay_window_seconds: u64,
        max_future_skew_seconds: u64,
    ) -> Verifier {
        Verifier {
            apps: apps
                .iter()
                .map(|a| (a.appkey.clone(), a.secrets.clone()))
                .collect(),
            replay_window_ms: (replay_window_seconds > 0)
                .then(|| (replay_window_seconds as i64).saturating_mul(1000)),
            max_future_skew_ms: i64::try_from(max_future_skew_seconds)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
        }
    }

    /// Accepts the callback if its `security` equals `md5(callId + secret +
    /// timestamp)` for any secret of its appkey. Every secret is compared, in
    /// constant time, so timing does not reveal which rule nearly matched.
    pub fn verify(&self, u: Unverified, now_ms: i64) -> Result<Verified, Rejected> {
        let secrets = self.apps.get(&u.appkey).ok_or(Rejected::UnknownAppkey)?;
        let provided = u.security.ok_or(Rejected::BadSignature)?;
        let mut matched = subtle::Choice::from(0);
        for secret in secrets {
            let expected = digest(&u.call_id, secret.expose(), &u.timestamp_digits);
            matched |= expected.ct_eq(&provided);
        }
        if !bool::from(matched) {
            return Err(Rejected::BadSignature);
        }
        if let Some(window) = self.replay_window_ms {
            if now_ms.saturating_sub(u.timestamp) > window {
                return Err(Rejected::Stale);
            }
        }
        // A future-dated event would make every real change after it look
        // older, and the worker's guard would refuse those as stale.
        let ahead = u.timestamp.saturating_sub(now_ms);
        if ahead > self.max_future_skew_ms {
            return Err(Rejected::Future {
                ahead_s: ahead / 1000,
                skew_s: self.max_future_skew_ms / 1000,
            });
        }
        Ok(Verified {
            body: u.body,
            call_id: u.call_id,
            timestamp: u.timestamp,
            appkey: u.appkey,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(window: u64) -> Verifier {
        Verifier::new(
            &[EasemobApp {
                appkey: "org#app".into(),
                secrets: vec![Secret::new("rule-1"), Secret::new("rule-2")],
                rest: None,
            }],
            window,
            // Some timestamps here are far ahead of the `now` passed.
            u64::MAX,
        )
    }

    fn body(call_id: &str, secret: &str, ts: &str) -> String {
        let security = sign(call_id, secret, ts);
        format!(
            r#"{{"callId":"{call_id}","security":"{security}","appkey":"org#app","timestamp":{ts},"id":"1"}}"#
        )
    }

    #[test]
    fn sign_matches_md5sum() {
        // printf 'org#app_1s1729497065641' | md5sum
        assert_eq!(
            sign("org#app_1", "s", "1729497065641"),
            "879f1416d7c4f4d2dea11015631e5e2e"
        );
    }

    #[test]
    fn every_rule_secret_is_accepted() {
        let v = verifier(0);
        for secret in ["rule-1", "rule-2"] {
            let u =
                Unverified::parse(body("org#app_x", secret, "1729497065641").as_bytes()).unwrap();
            assert!(v.verify(u, 0).is_ok(), "{secret}");
        }
    }

    #[test]
    fn wrong_secret_and_unknown_app_are_rejected() {
        let v = verifier(0);
        let u = Unverified::parse(body("org#app_x", "other", "1").as_bytes()).unwrap();
        assert_eq!(v.verify(u, 0).unwrap_err(), Rejected::BadSignature);
        let raw = body("org#app_x", "rule-1", "1").replace("org#app\"", "org#other\"");
        let u = Unverified::parse(raw.as_bytes()).unwrap();
        assert_eq!(v.verify(u, 0).unwrap_err(), Rejected::UnknownAppkey);
    }

    #[test]
    fn uppercase_security_is_accepted() {
        let v = verifier(0);
        let sig = sign("c", "rule-1", "5");
        let raw = format!(
            r#"{{"callId":"c","security":"{}","appkey":"org#app","timestamp":5}}"#,
            sig.to_uppercase()
        );
        assert!(v
            .verify(Unverified::parse(raw.as_bytes()).unwrap(), 0)
            .is_ok());
    }

    #[test]
    fn malformed_security_is_a_wrong_signature() {
        let v = verifier(0);
        for sec in ["", "zz", "0123", &"g".repeat(32), &"ab".repeat(17)] {
            let raw =
                format!(r#"{{"callId":"c","security":"{sec}","appkey":"org#app","timestamp":5}}"#);
            match Unverified::parse(raw.as_bytes()) {
                Ok(u) => assert_eq!(v.verify(u, 0).unwrap_err(), Rejected::BadSignature, "{sec}"),
                Err(e) => assert!(sec.is_empty() && e.0.contains("security"), "{sec}: {e}"),
            }
        }
    }

    #[test]
    fn timestamp_digits_are_used_verbatim() {
        // Above 2^53: a float round-trip would change the digits.
        let ts = "9007199254740993";
        let v = verifier(0);
        let u = Unverified::parse(body("c", "rule-1", ts).as_bytes()).unwrap();
        assert!(v.verify(u, 0).is_ok());
        // A string timestamp is signed as its own digits.
        let sig = sign("c", "rule-1", ts);
        let raw =
            format!(r#"{{"callId":"c","security":"{sig}","appkey":"org#app","timestamp":"{ts}"}}"#);
        assert!(v
            .verify(Unverified::parse(raw.as_bytes()).unwrap(), 0)
            .is_ok());
        // Floats and exponents are not timestamps.
        for bad in ["1.5", "1e3", "-", "\"12a\""] {
            let raw =
                format!(r#"{{"callId":"c","security":"x","appkey":"org#app","timestamp":{bad}}}"#);
            assert!(Unverified::parse(raw.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_fields_are_named() {
        let cases = [
            (r#"{"security":"x","appkey":"a#b","timestamp":1}"#, "callId"),
            (r#"{"callId":"c","appkey":"a#b","timestamp":1}"#, "security"),
            (r#"{"callId":"c","security":"x","timestamp":1}"#, "appkey"),
            (
                r#"{"callId":"c","security":"x","appkey":"a#b"}"#,
                "timestamp",
            ),
            (
                r#"{"callId":5,"security":"x","appkey":"a#b","timestamp":1}"#,
                "callId",
            ),
        ];
        for (raw, field) in cases {
            let e = Unverified::parse(raw.as_bytes()).unwrap_err();
            assert!(e.0.contains(field), "{raw}: {e}");
        }
        assert!(Unverified::parse(b"[]").unwrap_err().0.contains("object"));
        assert!(Unverified::parse(b"{").unwrap_err().0.contains("not JSON"));
    }

    #[test]
    fn future_timestamps_past_the_skew_are_refused() {
        let apps = [EasemobApp {
            appkey: "org#app".into(),
            secrets: vec![Secret::new("rule-1")],
            rest: None,
        }];
        let v = Verifier::new(&apps, 0, 300);
        let now = 1_800_000_000_000i64;
        let at = |ts: i64| Unverified::parse(body("c", "rule-1", &ts.to_string()).as_bytes());
        assert!(v.verify(at(now + 299_000).unwrap(), now).is_ok());
        let e = v.verify(at(now + 301_000).unwrap(), now).unwrap_err();
        assert_eq!(
            e,
            Rejected::Future {
                ahead_s: 301,
                skew_s: 300
            }
        );
        assert!(e.to_string().contains("`timestamp`"), "{e}");
    }

    #[test]
    fn replay_window_rejects_old_callbacks() {
        let v = verifier(60);
        let u = Unverified::parse(body("c", "rule-1", "1000").as_bytes()).unwrap();
        assert_eq!(v.verify(u, 1000 + 61_000).unwrap_err(), Rejected::Stale);
        let u = Unverified::parse(body("c", "rule-1", "1000").as_bytes()).unwrap();
        assert!(v.verify(u, 1000 + 59_000).is_ok());
    }
}
