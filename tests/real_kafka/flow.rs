//! The deployment as deploy/ describes it, on real Kafka: the compose
//! stack's config (deploy/compose/mutebridge.toml) with its brokers and
//! listeners pointed here, its topics made by `mutebridge topics create`
//! (what the stack's init job runs), one ingest and two workers as
//! separate processes, and ZEGO and RongCloud stand-ins behind the policy.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::cluster::{self, eventually, turn, unique, Logs};
use crate::providers::{FakeRongCloud, FakeZego, Provider};
use crate::support::*;

const ZEGO_APP: u32 = 12345;
const ZEGO_SECRET: &str = "9193cc662a4c0ec135ec71fb57194b38";
const RC_KEY: &str = "uwd1c0sxdlx2";
const RC_SECRET: &str = "Y1W2MeFwwwRxa0";
const RULE_SECRET: &str = "compose-rule-secret";

fn mutebridge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mutebridge"))
        .args(args)
        .env("EASEMOB_RULE_SECRET", RULE_SECRET)
        .env("ZEGO_SERVER_SECRET", ZEGO_SECRET)
        .output()
        .unwrap()
}

/// The compose stack's config, pointed at this cluster and these
/// stand-ins; its own topics and groups so no other test shares them.
fn compose_config(bootstrap: &str, zego: &FakeZego, rc: &FakeRongCloud) -> (String, String) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/compose/mutebridge.toml"
    ))
    .unwrap();
    let topic = unique("compose");
    let text = text
        .replace("\"kafka:9092\"", &format!("\"{bootstrap}\""))
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("0.0.0.0:8090", "127.0.0.1:0")
        .replace("im.group-events", &topic)
        .replace("mutebridge-workers", &format!("{topic}-workers"));
    let targets = format!(
        r#"
[targets.zego]
kind = "zego"
base_url = "{}"
app_id = {ZEGO_APP}
server_secret = "env:ZEGO_SERVER_SECRET"
from_user_id = "moderation-bot"
rate_per_second = 20

[targets.rc]
kind = "rongcloud"
base_urls = ["{}"]
app_key = "{RC_KEY}"
app_secret = "{RC_SECRET}"
rate_per_second = 100

[[policy.rules]]
name = "group mutes to ZEGO"
when = {{ scope = "group", kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"] }}
then = [{{ target = "zego", group = "{{group_id}}" }}]

[[policy.rules]]
name = "chatroom mutes to RongCloud"
when = {{ scope = "chatroom", kinds = ["mute_all", "unmute_all"] }}
then = [{{ target = "rc", chatroom = "{{group_id}}" }}]
"#,
        zego.base_url(),
        rc.base_url()
    );
    (text + &targets, topic)
}

/// A callback of the compose config's app, signed with its secret.
fn compose_callback(
    group: &str,
    chatroom: bool,
    mute: bool,
) -> serde_json::Map<String, serde_json::Value> {
    let appkey = "1100000000000000#moderation";
    let mut body = json!({
        "callId": format!("{appkey}_{}", uuid::Uuid::new_v4()),
        "appkey": appkey,
        "id": group,
        "type": if chatroom { "CHATROOM" } else { "GROUP" },
        "event": "group_op_event",
        "operation": "UPDATE",
        "operator": "@ppAdmin",
        "timestamp": now_ms(),
        "payload": {"type": "MUTE", "mute": mute},
    });
    let map = body.as_object_mut().unwrap();
    let ts = map["timestamp"].to_string();
    let call_id = map["callId"].as_str().unwrap().to_owned();
    map.insert(
        "security".into(),
        mutebridge::sign(&call_id, RULE_SECRET, &ts).into(),
    );
    map.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_compose_deployment_runs_end_to_end_with_topics_made_by_mutebridge() {
    let t = turn().await;
    let bootstrap = t.bootstrap();
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 20.0).await;
    let rc = FakeRongCloud::start(RC_KEY, RC_SECRET, 100.0).await;
    let logs = Logs::new();
    let (text, topic) = compose_config(&bootstrap, &zego, &rc);
    let file = logs.path().join("mutebridge.toml");
    std::fs::write(&file, text).unwrap();
    let f = file.to_str().unwrap();

    // What the stack's init job runs: before it, the roles refuse to start.
    let check = mutebridge(&["topics", "check", "--config", f]);
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("does not exist"));
    let create = mutebridge(&["topics", "create", "--config", f]);
    let out = String::from_utf8_lossy(&create.stdout).into_owned();
    assert!(
        create.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&create.stderr)
    );
    assert!(
        out.contains("3 broker(s)") && out.contains("replication factor 3, min.insync.replicas 2"),
        "{out}"
    );
    assert_eq!(out.matches(": created, ").count(), 3, "{out}");
    let check = mutebridge(&["topics", "check", "--config", f]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // The roles as the stack runs them, each a process of its own.
    let env = [
        ("EASEMOB_RULE_SECRET", RULE_SECRET),
        ("ZEGO_SERVER_SECRET", ZEGO_SECRET),
    ];
    let spawn =
        |role: &str, log: &str| spawn_role_with_env(role, &file, &logs.path().join(log), &env);
    let (_ingest, ingest_addr) = spawn("ingest", "ingest.log");
    let (_w1, w1) = spawn("worker", "worker-1.log");
    let (_w2, w2) = spawn("worker", "worker-2.log");
    assert!(wait_for_200(
        ingest_addr,
        "/readyz",
        Duration::from_secs(30)
    ));
    for ops in [w1, w2] {
        assert!(wait_for_200(ops, "/readyz", Duration::from_secs(30)));
        assert!(
            eventually(Duration::from_secs(60), move || !cluster::owned(
                ops, "zego"
            )
            .is_empty())
            .await
        );
    }

    // Ten groups muted and five unmuted again; four chatrooms muted.
    let client = reqwest::Client::new();
    let url = format!("http://{ingest_addr}/webhooks/easemob");
    let post = |body: serde_json::Map<String, serde_json::Value>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client.post(&url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    };
    for i in 0..10 {
        post(compose_callback(&format!("dg-{i}"), false, true)).await;
    }
    for i in 0..4 {
        post(compose_callback(&format!("dr-{i}"), true, true)).await;
    }
    // The undo follows the applied mutes (not their coalesced newest
    // state), so ZEGO sees both calls.
    let z = zego.clone();
    assert!(
        eventually(Duration::from_secs(60), move || {
            let muted: HashSet<String> = z
                .calls()
                .iter()
                .filter(|c| c.action == "MuteGroup" && c.all_muted == Some(true))
                .map(|c| c.id.clone())
                .collect();
            (0..10).all(|i| muted.contains(&format!("dg-{i}")))
        })
        .await,
        "ZEGO muted dg-0..dg-9: {:?}",
        zego.calls()
            .iter()
            .map(|c| (c.id.clone(), c.all_muted))
            .collect::<Vec<_>>()
    );
    for i in 0..5 {
        post(compose_callback(&format!("dg-{i}"), false, false)).await;
    }
    let (z, r) = (zego.clone(), rc.clone());
    assert!(
        eventually(Duration::from_secs(60), move || {
            let muted: usize = z
                .calls()
                .iter()
                .filter(|c| c.action == "MuteGroup" && c.all_muted == Some(true))
                .count();
            let unmuted = z
                .calls()
                .iter()
                .filter(|c| c.action == "MuteGroup" && c.all_muted.is_none())
                .count();
            muted >= 5 && unmuted >= 5 && r.calls().len() >= 4
        })
        .await,
        "ZEGO {:?}, RongCloud {:?}",
        zego.calls()
            .iter()
            .map(|c| (c.id.clone(), c.all_muted))
            .collect::<Vec<_>>(),
        rc.calls().iter().map(|c| c.id.clone()).collect::<Vec<_>>()
    );
    assert!(zego.rejected().is_empty() && rc.rejected().is_empty());

    // What operators look at: every target caught up, from Kafka.
    let f2 = f.to_owned();
    let caught_up = eventually(Duration::from_secs(30), move || {
        let out = mutebridge(&["targets", "--config", &f2, "--json"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
            && text.lines().count() >= 3
            && text.lines().all(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["backlog"] == 0)
            })
    })
    .await;
    let out = mutebridge(&["targets", "--config", f, "--json"]);
    assert!(
        caught_up,
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = mutebridge(&["state", "dump", "--config", f]);
    let states = String::from_utf8_lossy(&dump.stdout).lines().count();
    assert_eq!(states, 14, "{}", String::from_utf8_lossy(&dump.stderr));

    // A state topic that would also delete is refused by the check and by
    // a worker that starts on it.
    alter(
        &bootstrap,
        &format!("{topic}.state"),
        "cleanup.policy",
        "compact,delete",
    )
    .await;
    let check = mutebridge(&["topics", "check", "--config", f]);
    let out = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(!check.status.success());
    assert!(
        out.contains("cleanup.policy=compact,delete") && out.contains("PROBLEM"),
        "{out}"
    );
    let refused = Command::new(env!("CARGO_BIN_EXE_mutebridge"))
        .args(["worker", "--config", f])
        .env("ZEGO_SERVER_SECRET", ZEGO_SECRET)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("compact,delete") && err.contains("worker.state_topic"),
        "{err}"
    );
}

/// Sets one topic setting (AlterConfigs), as an operator with
/// kafka-configs.sh would.
async fn alter(bootstrap: &str, topic: &str, key: &str, value: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value);
    for r in admin
        .alter_configs([&change], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}
