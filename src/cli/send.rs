//! `mutebridge send`: sign callback payloads the way Easemob does and post
//! them, to test a deployment end to end.
//!
//! Payloads come from files or from the built-in [`EXAMPLES`]. Each is
//! re-signed with a fresh `callId` and `timestamp` unless `--keep-ids` is
//! given (then the original ones are signed again, which is how a retry of
//! the same callback looks).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::{Map, Value};

use crate::ingest::verify::sign;
use crate::time::now_ms;

/// Built-in sample callbacks: `(name, description, payload)`. Signature
/// fields are filled in by [`resign`].
pub const EXAMPLES: &[(&str, &str, &str)] = &[
    (
        "mute-all",
        "group mute-all (group_op_event UPDATE/MUTE, seed 000)",
        r#"{"payload":{"mute":true,"type":"MUTE"},"id":"262246968131585","type":"GROUP","event":"group_op_event","operation":"UPDATE","operator":"@ppAdmin"}"#,
    ),
    (
        "unmute-all",
        "group unmute-all (group_op_event UPDATE/MUTE mute=false)",
        r#"{"payload":{"mute":false,"type":"MUTE"},"id":"262246968131585","type":"GROUP","event":"group_op_event","operation":"UPDATE","operator":"@ppAdmin"}"#,
    ),
    (
        "member-muted",
        "two group members muted for 10 minutes (group_op_event MUTE/ADD)",
        r#"{"payload":{"type":"ADD","member":["alice","bob"],"expire_timestamp":0},"id":"262246968131585","type":"GROUP","event":"group_op_event","operation":"MUTE","operator":"owner1"}"#,
    ),
    (
        "member-unmuted",
        "two group members unmuted (group_op_event MUTE/REMOVE)",
        r#"{"payload":{"type":"REMOVE","member":["alice","bob"]},"id":"262246968131585","type":"GROUP","event":"group_op_event","operation":"MUTE","operator":"owner1"}"#,
    ),
    (
        "chatroom-mute-all",
        "chatroom mute-all in the legacy format (chat_type muc, ban_group)",
        r#"{"chat_type":"muc","payload":{"muc_id":"APPKEY_262246968131586@conference.easemob.com","is_chatroom":true,"operation":"ban_group","status":{"description":"","error_code":"ok"}},"group_id":"262246968131586","host":"msync","from":"APPKEY_owner1@easemob.com","to":"262246968131586","eventType":"chat","msg_id":"1"}"#,
    ),
    (
        "chatroom-unmute-all",
        "chatroom unmute-all in the legacy format (remove_ban_group)",
        r#"{"chat_type":"muc","payload":{"muc_id":"APPKEY_262246968131586@conference.easemob.com","is_chatroom":true,"operation":"remove_ban_group","status":{"description":"","error_code":"ok"}},"group_id":"262246968131586","host":"msync","from":"APPKEY_owner1@easemob.com","to":"262246968131586","eventType":"chat","msg_id":"2"}"#,
    ),
];

/// The payload of a built-in example, or an error listing the names.
pub fn example(name: &str) -> anyhow::Result<Map<String, Value>> {
    let (_, _, text) = EXAMPLES
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| {
            let names: Vec<_> = EXAMPLES.iter().map(|(n, _, _)| *n).collect();
            anyhow!(
                "no built-in example {name:?}; try one of: {}",
                names.join(", ")
            )
        })?;
    match serde_json::from_str(text)? {
        Value::Object(map) => Ok(map),
        _ => unreachable!("examples are objects"),
    }
}

/// Sets `appkey`, `callId`, `timestamp` (fresh unless `keep_ids`) and the
/// matching `security` on a payload.
pub fn resign(
    body: &mut Map<String, Value>,
    appkey: &str,
    secret: &str,
    keep_ids: bool,
) -> anyhow::Result<()> {
    body.insert("appkey".into(), Value::String(appkey.to_owned()));
    if !keep_ids || !body.contains_key("callId") {
        let id = format!("{appkey}_{}", uuid::Uuid::new_v4());
        body.insert("callId".into(), Value::String(id));
    }
    if !keep_ids || !body.contains_key("timestamp") {
        let now = now_ms();
        body.insert("timestamp".into(), now.into());
        // Example mutes last ten minutes from now.
        if let Some(Value::Object(p)) = body.get_mut("payload") {
            if p.get("expire_timestamp").and_then(Value::as_i64) == Some(0) {
                p.insert("expire_timestamp".into(), (now + 600_000).into());
            }
        }
    }
    let call_id = body
        .get("callId")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("`callId` must be a string"))?;
    let digits = match body.get("timestamp") {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => bail!("`timestamp` must be an integer"),
    };
    let security = sign(call_id, secret, &digits);
    body.insert("security".into(), Value::String(security));
    // Legacy examples carry the appkey inside JIDs.
    if let Some(Value::String(s)) = body.get_mut("from") {
        *s = s.replace("APPKEY", appkey);
    }
    if let Some(Value::Object(p)) = body.get_mut("payload") {
        if let Some(Value::String(s)) = p.get_mut("muc_id") {
            *s = s.replace("APPKEY", appkey);
        }
    }
    Ok(())
}

/// `mutebridge send`: what to send and where. (Not `Debug`: it holds the
/// secret.)
#[derive(Args)]
pub struct SendArgs {
    /// The callback endpoint, e.g. http://127.0.0.1:8080/webhooks/easemob
    #[arg(long)]
    url: String,
    #[arg(long)]
    appkey: String,
    /// The callback rule's secret.
    #[arg(long, env = "MUTEBRIDGE_SEND_SECRET")]
    secret: String,
    /// A built-in payload (repeatable): mute-all, unmute-all, member-muted,
    /// member-unmuted, chatroom-mute-all, chatroom-unmute-all.
    #[arg(long = "example")]
    examples: Vec<String>,
    /// Keep the payloads' callId and timestamp instead of fresh ones.
    #[arg(long)]
    keep_ids: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// JSON payload files.
    files: Vec<PathBuf>,
}

/// Sends every payload in order; exits 1 if one was not answered 200.
pub async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let failures = send(args).await?;
    Ok(super::exit_code(failures == 0))
}

/// Returns how many payloads were not answered 200.
async fn send(args: SendArgs) -> anyhow::Result<usize> {
    let mut payloads = Vec::new();
    for name in &args.examples {
        payloads.push((format!("example {name}"), example(name)?));
    }
    for file in &args.files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", file.display()))?;
        let Value::Object(map) = value else {
            bail!("{} must hold one JSON object", file.display());
        };
        payloads.push((file.display().to_string(), map));
    }
    if payloads.is_empty() {
        bail!("nothing to send: give payload files or --example NAME");
    }
    let timeout = Duration::from_secs(args.timeout);
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    let mut failures = 0;
    for (name, mut body) in payloads {
        resign(&mut body, &args.appkey, &args.secret, args.keep_ids)?;
        let call_id = body["callId"].as_str().unwrap_or_default().to_owned();
        match client.post(&args.url).json(&body).send().await {
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if status != reqwest::StatusCode::OK {
                    failures += 1;
                }
                println!("{name}: {} {text} (callId {call_id})", status.as_u16());
            }
            Err(e) => {
                failures += 1;
                println!("{name}: request failed: {e}");
            }
        }
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_resigns() {
        for (name, _, _) in EXAMPLES {
            let mut body = example(name).unwrap();
            resign(&mut body, "org#app", "s", false).unwrap();
            let call_id = body["callId"].as_str().unwrap();
            assert!(call_id.starts_with("org#app_"));
            let ts = body["timestamp"].as_i64().unwrap().to_string();
            assert_eq!(body["security"], sign(call_id, "s", &ts));
        }
        assert!(example("nope")
            .unwrap_err()
            .to_string()
            .contains("mute-all"));
    }

    #[test]
    fn keep_ids_keeps_call_id_and_timestamp() {
        let mut body = example("mute-all").unwrap();
        body.insert("callId".into(), "org#app_fixed".into());
        body.insert("timestamp".into(), 42.into());
        resign(&mut body, "org#app", "s", true).unwrap();
        assert_eq!(body["callId"], "org#app_fixed");
        assert_eq!(body["timestamp"], 42);
        assert_eq!(body["security"], sign("org#app_fixed", "s", "42"));
    }
}
