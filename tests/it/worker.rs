//! The worker end to end: callbacks POSTed to the real ingest, through the
//! embedded Kafka cluster, applied by a real worker to local ZEGO and
//! RongCloud servers (tests/it/providers.rs) that check signatures, parameters
//! and rate limits.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::providers::{FakeRongCloud, FakeWebhook, FakeZego, Fault, Provider};
use crate::support::*;
use mutebridge::Config;
use serde_json::{json, Map, Value};

pub(crate) const ZEGO_APP: u32 = 12345;
pub(crate) const ZEGO_SECRET: &str = "9193cc662a4c0ec135ec71fb57194b38";
pub(crate) const RC_KEY: &str = "uwd1c0sxdlx2";
pub(crate) const RC_SECRET: &str = "Y1W2MeFwwwRxa0";
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Copies targets, policy and maps from a TOML fragment into `config`.
pub(crate) fn policy(config: &mut Config, text: &str) {
    let parsed = Config::parse(text, Path::new("test-policy.toml")).expect("test policy parses");
    config.targets = parsed.targets;
    config.policy = parsed.policy;
    config.maps = parsed.maps;
    config.easemob.dedup_by_content = false;
    fast_worker(config);
}

pub(crate) fn zego_target(z: &FakeZego, name: &str) -> String {
    zego_target_as(z, name, ZEGO_APP, ZEGO_SECRET)
}

/// A `[targets.NAME]` of kind zego for the fake `z`, with its app and secret.
pub(crate) fn zego_target_as(z: &FakeZego, name: &str, app_id: u32, secret: &str) -> String {
    format!(
        "[targets.{name}]\nkind = \"zego\"\nbase_url = \"{}\"\napp_id = {app_id}\nserver_secret = \"{secret}\"\nfrom_user_id = \"moderation-bot\"\n",
        z.base_url()
    )
}

pub(crate) fn rc_target(hosts: &[&FakeRongCloud], name: &str) -> String {
    let urls: Vec<String> = hosts
        .iter()
        .map(|h| format!("\"{}\"", h.base_url()))
        .collect();
    format!(
        "[targets.{name}]\nkind = \"rongcloud\"\nbase_urls = [{}]\napp_key = \"{RC_KEY}\"\napp_secret = \"{RC_SECRET}\"\n",
        urls.join(", ")
    )
}

pub(crate) const ZEGO_RULE: &str = r#"
[[policy.rules]]
name = "mirror group mutes to ZEGO"
when = { scope = "group", kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"] }
then = [{ target = "zego", group = "{group_id}" }]
"#;

fn fixture(name: &str) -> Map<String, Value> {
    let text = std::fs::read_to_string(format!("tests/fixtures/seeds/{name}")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The legacy seed callback with this operation and chatroom flag.
fn legacy(operation: &str, chatroom: bool) -> Map<String, Value> {
    let mut names: Vec<_> = std::fs::read_dir("tests/fixtures/seeds")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for n in names {
        let f = fixture(&n);
        if f["payload"]["operation"] == operation && f["payload"]["is_chatroom"] == chatroom {
            return f;
        }
    }
    panic!("no seed callback for {operation} (chatroom: {chatroom})")
}

pub(crate) fn member_mute(
    group: &str,
    members: &[String],
    expire_ms: Option<i64>,
) -> Map<String, Value> {
    let mut payload = json!({"type": "ADD", "member": members});
    if let Some(t) = expire_ms {
        payload["expire_timestamp"] = json!(t);
    }
    op_event(group, "MUTE", payload)
}

pub(crate) fn unmute_all(group: &str) -> Map<String, Value> {
    op_event(group, "UPDATE", json!({"type": "MUTE", "mute": false}))
}

/// The ingest harness and a worker, both with the policy fragment `text`.
pub(crate) async fn start_with_policy(text: &str) -> (Harness, WorkerHandle) {
    let h = Harness::start_with(|c| policy(c, text)).await;
    let w = h.start_worker().await;
    (h, w)
}

pub(crate) async fn post_ok(h: &Harness, body: &Map<String, Value>) {
    let r = h.post(body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_mutes_the_mapped_zego_group_and_the_undo_unmutes_it() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 20.0).await;
    let text = format!(
        "{}\n[maps.zego_groups]\nids = {{ \"262246968131585\" = \"zego-room-42\" }}\n
[[policy.rules]]
name = \"mirror group mutes to ZEGO\"
when = {{ scope = \"group\", kinds = [\"mute_all\", \"unmute_all\"] }}
then = [{{ target = \"zego\", group = \"{{group_id}}\", group_map = \"zego_groups\" }}]
",
        zego_target(&zego, "zego")
    );
    let (h, mut w) = start_with_policy(&text).await;

    let mut seed = fixture("000-00.json");
    resign(&mut seed, SEED_SECRET);
    post_ok(&h, &seed).await;
    // The undo after the mute reached ZEGO: sent together, the mute would
    // be superseded by the newer unmute (only the newest state is sent).
    assert!(wait_until(WAIT, || zego.calls().len() == 1).await);
    let mut undo = seed.clone();
    undo["callId"] = json!("XXXX#XXXX_undo");
    undo["payload"] = json!({"type": "MUTE", "mute": false});
    undo["timestamp"] = json!(1729497065999i64);
    resign(&mut undo, SEED_SECRET);
    post_ok(&h, &undo).await;

    assert!(
        wait_until(WAIT, || zego.calls().len() >= 2).await,
        "calls: {:?}",
        zego.calls()
    );
    let calls = zego.calls();
    assert_eq!(calls[0].action, "MuteGroup");
    assert_eq!(calls[0].id, "zego-room-42");
    assert_eq!(calls[0].all_muted, Some(true));
    assert_eq!(calls[0].duration, Some(-1));
    assert_eq!(calls[1].action, "MuteGroup");
    assert_eq!(calls[1].duration, Some(0), "unmute_all lifts the mute");
    assert!(zego.rejected().is_empty(), "{:?}", zego.rejected());
    w.wait_for_events("zego", "applied", 2.0).await;
    assert_eq!(
        w.metric("mutebridge_actions_total{action=\"mute_all\",outcome=\"ok\",target=\"zego\"}"),
        1.0
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_chatroom_ban_group_goes_to_rongcloud_and_its_undo_rolls_back() {
    let rc = FakeRongCloud::start(RC_KEY, RC_SECRET, 100.0).await;
    let text = format!(
        "{}
[[policy.rules]]
name = \"mirror chatroom mutes to RongCloud\"
when = {{ scope = \"chatroom\", kinds = [\"mute_all\", \"unmute_all\"], appkeys = [\"XXXX#XXXX\"] }}
then = [{{ target = \"rc\", chatroom = \"{{group_id}}\", need_notify = true }}]
",
        rc_target(&[&rc], "rc")
    );
    let (h, mut w) = start_with_policy(&text).await;
    for (i, op) in ["ban_group", "remove_ban_group"].into_iter().enumerate() {
        let mut body = legacy(op, true);
        resign(&mut body, SEED_SECRET);
        post_ok(&h, &body).await;
        assert!(wait_until(WAIT, || rc.calls().len() > i).await);
    }
    // A group (not chatroom) ban_group matches no rule.
    let mut group = legacy("ban_group", false);
    resign(&mut group, SEED_SECRET);
    post_ok(&h, &group).await;

    assert!(wait_until(WAIT, || rc.calls().len() >= 2).await);
    let calls = rc.calls();
    assert_eq!(calls[0].action, "/chatroom/ban/add.json");
    assert_eq!(calls[0].id, "XXXX");
    assert_eq!(calls[0].need_notify, Some(true));
    assert_eq!(calls[1].action, "/chatroom/ban/rollback.json");
    w.wait_for_events("rc", "no_match", 1.0).await;
    assert_eq!(rc.calls().len(), 2);
    assert!(rc.rejected().is_empty(), "{:?}", rc.rejected());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_mutes_with_and_without_expiry_split_into_calls_of_twenty() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 20.0).await;
    let rc = FakeRongCloud::start(RC_KEY, RC_SECRET, 100.0).await;
    let text = format!(
        "{}{}{ZEGO_RULE}
[[policy.rules]]
name = \"group member mutes to RongCloud\"
when = {{ scope = \"group\", kinds = [\"member_muted\", \"member_unmuted\"] }}
then = [{{ target = \"rc\", group = \"rc-{{group_id}}\" }}]
",
        zego_target(&zego, "zego"),
        rc_target(&[&rc], "rc")
    );
    let (h, mut w) = start_with_policy(&text).await;

    let ten_minutes = now_ms() + 600_000;
    post_ok(
        &h,
        &member_mute("g-exp", &["alice".into()], Some(ten_minutes)),
    )
    .await;
    post_ok(&h, &member_mute("g-perm", &["bob".into()], None)).await;
    post_ok(
        &h,
        &member_mute("g-old", &["carol".into()], Some(now_ms() - 1000)),
    )
    .await;
    let many: Vec<String> = (0..45).map(|i| format!("user-{i:02}")).collect();
    post_ok(&h, &member_mute("g-many", &many, None)).await;
    // Bob's unmute once his mute is applied (sent together, the mute would
    // be superseded).
    let bob_muted =
        |calls: &[crate::providers::Call]| calls.iter().any(|c| c.id.ends_with("g-perm"));
    assert!(wait_until(WAIT, || bob_muted(&zego.calls()) && bob_muted(&rc.calls())).await);
    post_ok(
        &h,
        &op_event(
            "g-perm",
            "MUTE",
            json!({"type": "REMOVE", "member": ["bob"]}),
        ),
    )
    .await;

    assert!(
        wait_until(WAIT, || ["zego", "rc"]
            .iter()
            .all(|t| w.metric(&events_line(t, "applied"))
                + w.metric(&events_line(t, "skipped"))
                >= 5.0))
        .await
    );
    let by_group = |calls: &[crate::providers::Call], g: &str| -> Vec<crate::providers::Call> {
        calls.iter().filter(|c| c.id == g).cloned().collect()
    };
    let z = zego.calls();
    let exp = by_group(&z, "g-exp");
    assert_eq!(exp.len(), 1);
    assert_eq!(exp[0].action, "MuteGroupMembers");
    let d = exp[0].duration.unwrap();
    assert!((590..=600).contains(&d), "seconds remaining, got {d}");
    let perm = by_group(&z, "g-perm");
    assert_eq!(
        (perm[0].duration, perm[1].duration),
        (Some(-1), Some(0)),
        "permanent, then unmute"
    );
    assert!(
        by_group(&z, "g-old").is_empty(),
        "an expired mute is not sent"
    );
    let split = by_group(&z, "g-many");
    assert_eq!(
        split.iter().map(|c| c.users.len()).collect::<Vec<_>>(),
        vec![20, 20, 5]
    );
    assert_eq!(
        split
            .iter()
            .flat_map(|c| c.users.clone())
            .collect::<Vec<_>>(),
        many
    );

    let r = rc.calls();
    let exp = by_group(&r, "rc-g-exp");
    assert_eq!(
        (exp[0].action.as_str(), exp[0].duration),
        ("/group/user/gag/add.json", Some(10))
    );
    let perm = by_group(&r, "rc-g-perm");
    assert_eq!(perm[0].duration, Some(0), "0 = permanent on group gag");
    assert_eq!(perm[1].action, "/group/user/gag/rollback.json");
    assert_eq!(by_group(&r, "rc-g-many").len(), 3);
    assert!(r.iter().all(|c| !c.id.is_empty()), "never an empty groupId");
    assert!(zego.rejected().is_empty() && rc.rejected().is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_pauses_its_target_only_and_catch_up_sends_the_newest_state() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let hook = FakeWebhook::start("audit-secret").await;
    let text = format!(
        "{}[targets.audit]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"audit-secret\"\n{ZEGO_RULE}
[[policy.rules]]
name = \"audit everything\"
then = [{{ target = \"audit\" }}]
",
        zego_target(&zego, "zego"),
        hook.url()
    );
    let h = Harness::start_with(|c| {
        policy(c, &text);
        c.worker.circuit_breaker.probe_interval_seconds = 1;
        c.worker.circuit_breaker.max_probe_interval_seconds = 2;
    })
    .await;
    zego.set_down(true);
    let down_at = std::time::Instant::now();
    let mut w = h.start_worker().await;
    let mut sent: HashMap<String, Vec<&str>> = HashMap::new();
    for round in 0..6 {
        for g in 0..5 {
            let group = format!("order-{g}");
            let mute = round % 2 == 0;
            post_ok(
                &h,
                &if mute {
                    mute_all(&group)
                } else {
                    unmute_all(&group)
                },
            )
            .await;
            sent.entry(group)
                .or_default()
                .push(if mute { "mute_all" } else { "unmute_all" });
        }
    }
    // The audit webhook is not held up: it gets every event, in order per
    // group, while ZEGO is down.
    assert!(
        wait_until(WAIT, || hook.events().len() == 30).await,
        "{} delivered",
        hook.events().len()
    );
    let mut forwarded: HashMap<String, Vec<&str>> = HashMap::new();
    let events = hook.events();
    for e in &events {
        let kind = if e["kind"] == "mute_all" {
            "mute_all"
        } else {
            "unmute_all"
        };
        forwarded
            .entry(e["group_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(kind);
    }
    assert_eq!(
        forwarded, sent,
        "every event forwarded once, in order per group"
    );
    // ZEGO's breaker opens; the down provider only sees the calls that
    // failed before it opened, then one probe per interval.
    let open = "mutebridge_target_circuit_state{target=\"zego\"}";
    assert!(
        wait_until(WAIT, || w.metric(open) >= 1.0).await,
        "breaker state {}",
        w.metric(open)
    );
    // The open breaker probes on: two more requests (the probes, one per
    // interval) show it running before what it sent is counted.
    let at_open = zego.requests();
    assert!(
        wait_until(WAIT, || zego.requests() >= at_open + 2).await,
        "no probe after the breaker opened ({} requests)",
        zego.requests()
    );
    let down_for = down_at.elapsed().as_secs_f64();
    let requests = zego.requests() as f64;
    assert!(
        requests <= 5.0 + down_for + 2.0,
        "{requests} requests in {down_for:.1} s of outage"
    );
    assert!(zego.calls().is_empty());
    assert_eq!(w.metric(&events_line("zego", "dead_lettered")), 0.0);
    zego.set_down(false);
    // Back: each group gets its newest state, once; nothing older is sent.
    let caught_up = || {
        let calls = zego.calls();
        (0..5).all(|g| {
            let id = format!("order-{g}");
            calls
                .iter()
                .filter(|c| c.id == id)
                .map(|c| c.duration)
                .collect::<Vec<_>>()
                == [Some(0)]
        })
    };
    assert!(wait_until(WAIT, caught_up).await, "{:?}", zego.calls());
    // Every event finished on ZEGO: no older state can follow.
    w.wait_finished(&h, "zego").await;
    assert_eq!(
        zego.calls().len(),
        5,
        "one call per group: {:?}",
        zego.calls()
    );
    let superseded = w.metric(&events_line("zego", "superseded"))
        + w.metric("mutebridge_actions_total{action=\"mute_all\",outcome=\"superseded\",target=\"zego\"}")
        + w.metric("mutebridge_actions_total{action=\"unmute_all\",outcome=\"superseded\",target=\"zego\"}");
    assert!(superseded >= 25.0, "superseded: {superseded}");
    assert!(
        wait_until(WAIT, || w.metric(open) == 0.0).await,
        "the breaker closes"
    );
    assert!(h.dead_letters(1, Duration::from_secs(1)).await.is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_and_exhausted_retries_are_dead_lettered_with_the_reason() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    zego.group_fault("missing", Fault::Code(660600001), usize::MAX);
    zego.fail_user("outsider", 660600024);
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let (h, mut w) = start_with_policy(&text).await;

    post_ok(&h, &mute_all("missing")).await; // 660600001: no such group
    post_ok(
        &h,
        &member_mute("partial", &["ok-1".into(), "outsider".into()], None),
    )
    .await;
    assert!(
        wait_until(WAIT, || w.metric(&events_line("zego", "dead_lettered"))
            == 2.0)
        .await
    );
    // One group's calls fail (503 six times) while the target serves the
    // others: the breaker stays closed and the call's budget runs out.
    zego.group_fault("exists", Fault::Status(503), 6);
    post_ok(&h, &mute_all("exists")).await;
    let others = {
        let h_url = h.url("/webhooks/easemob");
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..100 {
                let body = serde_json::Value::Object(mute_all(&format!("busy-{i}"))).to_string();
                let _ = client
                    .post(&h_url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                // Pacing of this background traffic, not a wait.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    let letters = h.dead_letters(3, WAIT).await;
    others.abort();
    assert_eq!(
        w.metric("mutebridge_target_circuit_state{target=\"zego\"}"),
        0.0,
        "the breaker stayed closed"
    );
    // Applied after the dead letter.
    post_ok(&h, &unmute_all("exists")).await;

    assert_eq!(letters.len(), 3, "{letters:?}");
    let find = |group: &str| {
        letters
            .iter()
            .find(|l| l.key == group)
            .unwrap_or_else(|| panic!("{group}: {letters:?}"))
            .value
            .clone()
    };
    let missing = find("missing");
    assert_eq!(missing["reason"], "permanent_error");
    assert_eq!(missing["target"], "zego");
    assert_eq!(missing["rule"], "mirror group mutes to ZEGO");
    assert_eq!(missing["action"], "mute_all");
    assert!(
        missing["error"].as_str().unwrap().contains("660600001"),
        "{missing}"
    );
    assert_eq!(missing["event"]["group_id"], "missing");
    assert_eq!(missing["source"]["topic"], "im.group-events");
    assert!(missing["source"]["offset"].as_i64().unwrap() >= 0);
    let partial = find("partial");
    assert_eq!(partial["users"], json!(["outsider"]));
    assert!(partial["error"].as_str().unwrap().contains("660600024"));
    let exhausted = find("exists");
    assert_eq!(exhausted["reason"], "retries_exhausted");
    assert_eq!(exhausted["attempts"], 6);

    assert!(wait_until(WAIT, || zego.calls().iter().any(|c| c.id == "exists")).await);
    let calls = zego.calls();
    assert_eq!(
        calls.iter().filter(|c| c.id == "exists").count(),
        1,
        "only the unmute"
    );
    assert_eq!(
        calls.iter().find(|c| c.id == "partial").unwrap().users,
        vec!["ok-1"]
    );
    assert_eq!(
        w.metric("mutebridge_dead_letters_total{reason=\"permanent_error\",target=\"zego\"}"),
        2.0
    );
    assert_eq!(
        w.metric("mutebridge_dead_letters_total{reason=\"retries_exhausted\",target=\"zego\"}"),
        1.0
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_respected_and_provider_rate_errors_are_retried() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 20.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let h = Harness::start_with(|c| policy(c, &text)).await;
    // Injected: the provider's own rate-limit code once, then a 429.
    zego.fault(Fault::Code(660300005));
    zego.fault(Fault::Status(429));
    for g in 0..40 {
        post_ok(&h, &mute_all(&format!("rl-{g}"))).await;
    }
    let mut w = h.start_worker().await;
    assert!(wait_until(Duration::from_secs(30), || zego.calls().len() >= 40).await);
    assert_eq!(
        zego.rate_limited(),
        0,
        "the worker's own limiter kept under 20/s"
    );
    let calls = zego.calls();
    let span = calls[39].at.duration_since(calls[0].at).as_secs_f64();
    assert!(
        span >= 39.0 / 20.0 * 0.95,
        "40 calls at <= 20/s take ~1.95 s, took {span:.2}"
    );
    assert_eq!(
        w.metric("mutebridge_action_retries_total{target=\"zego\"}"),
        2.0
    );
    assert!(w.metric("mutebridge_rate_limit_wait_seconds_total{target=\"zego\"}") > 1.0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rongcloud_fails_over_to_the_backup_host() {
    let primary = FakeRongCloud::start(RC_KEY, RC_SECRET, 100.0).await;
    let backup = FakeRongCloud::start(RC_KEY, RC_SECRET, 100.0).await;
    primary.set_down(true);
    let text = format!(
        "{}
[[policy.rules]]
name = \"rc\"
then = [{{ target = \"rc\", chatroom = \"{{group_id}}\" }}]
when = {{ kinds = [\"mute_all\"] }}
",
        rc_target(&[&primary, &backup], "rc")
    );
    let (h, mut w) = start_with_policy(&text).await;
    post_ok(&h, &mute_all("room-1")).await;
    assert!(wait_until(WAIT, || backup.calls().len() == 1).await);
    assert_eq!(primary.requests(), 1, "one failed attempt on the primary");
    assert_eq!(backup.calls()[0].action, "/chatroom/ban/add.json");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_target_posts_the_signed_event() {
    use axum::http::HeaderMap;
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(HeaderMap, String)>::new()));
    let r2 = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let r = r2.clone();
            async move {
                r.lock().unwrap().push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let text = format!(
        "[targets.audit]\nkind = \"webhook\"\nurl = \"http://{addr}/hook\"\nsecret = \"audit-secret\"\n
[[policy.rules]]
name = \"audit everything\"
then = [{{ target = \"audit\" }}]
"
    );
    let (h, mut w) = start_with_policy(&text).await;
    post_ok(
        &h,
        &op_event(
            "g-audit",
            "MEMBER",
            json!({"type": "KICK", "member": ["x"]}),
        ),
    )
    .await;
    assert!(wait_until(WAIT, || received.lock().unwrap().len() == 1).await);
    let (headers, body) = received.lock().unwrap()[0].clone();
    let ts = headers["x-mutebridge-timestamp"].to_str().unwrap();
    let expected = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"audit-secret").unwrap();
        mac.update(format!("{ts}.{body}").as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    assert_eq!(
        headers["x-mutebridge-signature"].to_str().unwrap(),
        expected
    );
    let event: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["group_id"], "g-audit");
    assert_eq!(event["schema"], "mutebridge.event/v1");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_skips_nothing_and_repeats_only_the_unfinished_tail() {
    // A webhook target forwards every event in order, so what it received
    // shows exactly what was applied (a mute target would get only each
    // group's newest state).
    let hook = FakeWebhook::start("audit-secret").await;
    let text = format!(
        "[targets.audit]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"audit-secret\"\n
[[policy.rules]]
name = \"audit everything\"
then = [{{ target = \"audit\" }}]
",
        hook.url()
    );
    let h = Harness::start_with(|c| {
        policy(c, &text);
        c.worker.shutdown_grace_seconds = 0;
        c.worker.request_timeout_ms = 5000;
        // The mock cluster's coordinator holds a join for the rebalance
        // timeout (max.poll.interval.ms) after a member leaves.
        c.kafka.client.insert(
            "max.poll.interval.ms".into(),
            toml::Value::String("7000".into()),
        );
        c.kafka.client.insert(
            "session.timeout.ms".into(),
            toml::Value::String("6000".into()),
        );
    })
    .await;
    // Every delivery takes 150 ms, so the stop lands mid-stream.
    for _ in 0..400 {
        hook.fault(Fault::Delay(Duration::from_millis(150)));
    }
    let groups: Vec<String> = (0..8).map(|g| format!("restart-{g}")).collect();
    for round in 0..5 {
        for g in &groups {
            post_ok(
                &h,
                &if round % 2 == 0 {
                    mute_all(g)
                } else {
                    unmute_all(g)
                },
            )
            .await;
        }
    }
    let sequences = || {
        let mut per_group: HashMap<String, Vec<String>> = HashMap::new();
        for e in hook.events() {
            per_group
                .entry(e["group_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(e["kind"].as_str().unwrap().to_owned());
        }
        per_group
    };
    let mut first = h.start_worker().await;
    assert!(wait_until(WAIT, || hook.events().len() >= 10).await);
    first.stop().await; // grace 0: running deliveries are abandoned
    let before = hook.events().len();
    assert!(before < 40, "stopped mid-stream ({before} of 40 delivered)");
    let mut second = h.start_worker().await;
    let want = [
        "mute_all",
        "unmute_all",
        "mute_all",
        "unmute_all",
        "mute_all",
    ];
    assert!(
        wait_until(Duration::from_secs(40), || {
            // Delivered counts include repeats; wait on what each group got.
            let seqs = sequences();
            groups.iter().all(|g| {
                let mut seq = seqs.get(g).cloned().unwrap_or_default();
                seq.dedup();
                seq.len() >= 5
            })
        })
        .await,
        "{:?}",
        sequences()
    );
    let seqs = sequences();
    let mut repeats = 0;
    for g in &groups {
        let seq = &seqs[g];
        // Sent: mute, unmute, mute, unmute, mute. Delivered: the same, with
        // at most the event in flight at the stop delivered twice in a row.
        let mut dedup = seq.clone();
        dedup.dedup();
        assert_eq!(dedup, want, "{g}: {seq:?}");
        repeats += seq.len() - 5;
    }
    assert!(
        repeats <= groups.len(),
        "only the unfinished tail repeats ({repeats})"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_in_one_group_share_the_partitions() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let h = Harness::start_with(|c| {
        policy(c, &text);
        c.kafka.client.insert(
            "max.poll.interval.ms".into(),
            toml::Value::String("7000".into()),
        );
        c.kafka.client.insert(
            "session.timeout.ms".into(),
            toml::Value::String("6000".into()),
        );
    })
    .await;
    let mut a = h.start_worker().await;
    let mut b = h.start_worker().await;
    // Both joined before events flow, so the rebalance does not race them.
    h.wait_joined(&[&a, &b]).await;
    for g in 0..60 {
        post_ok(&h, &mute_all(&format!("shared-{g}"))).await;
    }
    let applied = |w: &WorkerHandle| w.metric(&events_line("zego", "applied"));
    let distinct = || {
        let mut ids: Vec<String> = zego.calls().into_iter().map(|c| c.id).collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    // At-least-once: a rebalance may repeat an event, never lose one.
    assert!(
        wait_until(Duration::from_secs(30), || distinct() == 60).await,
        "{} of 60 groups; a={} b={}",
        distinct(),
        applied(&a),
        applied(&b)
    );
    assert!(
        applied(&a) > 0.0 && applied(&b) > 0.0,
        "both got partitions: a={} b={}",
        applied(&a),
        applied(&b)
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_are_dead_lettered_and_do_not_block_the_partition() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", h.cluster.bootstrap_servers())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to("im.group-events")
                .key("bad-group")
                .payload("not json"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    post_ok(&h, &mute_all("bad-group")).await;
    let mut w = h.start_worker().await;
    let letters = h.dead_letters(1, WAIT).await;
    assert_eq!(letters[0].value["reason"], "undecodable");
    assert_eq!(letters[0].value["payload"], "not json");
    assert!(wait_until(WAIT, || zego.calls().len() == 1).await);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_is_exported_per_partition() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let (h, mut w) = start_with_policy(&text).await;
    post_ok(&h, &mute_all("lag-1")).await;
    assert!(wait_until(WAIT, || zego.calls().len() == 1).await);
    // One consumer group per target, and the state keeper's.
    for pipeline in ["zego", "state"] {
        let series = format!(",pipeline=\"{pipeline}\"}}");
        let exported = || {
            w.metrics
                .render()
                .lines()
                .any(|l| l.starts_with("mutebridge_consumer_lag{partition=") && l.contains(&series))
        };
        assert!(
            wait_until(WAIT, exported).await,
            "no lag of {pipeline} in\n{}",
            w.metrics.render()
        );
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digit_string_expiry_keeps_its_time_limit_end_to_end() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 20.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let (h, mut w) = start_with_policy(&text).await;
    let until = now_ms() + 600_000;
    post_ok(
        &h,
        &op_event(
            "g-digits",
            "MUTE",
            json!({"type": "ADD", "member": ["dave"], "expire_timestamp": until.to_string()}),
        ),
    )
    .await;
    assert!(wait_until(WAIT, || !zego.calls().is_empty()).await);
    let call = &zego.calls()[0];
    assert_eq!(call.users, ["dave"]);
    let seconds = call.duration.expect("a timed mute has a Duration");
    assert!(
        (590..=600).contains(&seconds),
        "Duration {seconds}: the mute must end when Easemob's does, not be permanent (-1)"
    );
    w.stop().await;
}

/// A mutebridge config file naming the harness's cluster, for the CLI.
pub(crate) fn cli_config(h: &Harness, extra: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    use std::io::Write;
    write!(
        file,
        "[kafka]\nbrokers = \"{}\"\ntopic = \"{}\"\npartitions = {}\n[worker]\ndlq_topic = \"{}\"\n{extra}",
        h.cluster.bootstrap_servers(),
        h.config.kafka.topic,
        h.config.kafka.partitions,
        h.config.worker.dlq_topic
    )
    .unwrap();
    file
}

pub(crate) fn mutebridge(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mutebridge"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_once_after_the_fix() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 100.0).await;
    let other = FakeZego::start(ZEGO_APP + 1, "other-secret", 100.0).await;
    // The ZEGO target has a wrong secret: every call is refused (100000005)
    // and dead-lettered. A second target works, so a replay must re-drive
    // only the failed target's action.
    let other_target = zego_target_as(&other, "audit", ZEGO_APP + 1, "other-secret");
    let rules = r#"
[[policy.rules]]
name = "mirror group mutes to ZEGO"
when = { scope = "group", kinds = ["mute_all", "unmute_all"] }
then = [{ target = "zego", group = "{group_id}" }, { target = "audit", group = "{group_id}" }]
"#;
    let broken = format!("{}{other_target}{rules}", zego_target(&zego, "zego"))
        .replace(ZEGO_SECRET, "wrong-secret");
    let h = Harness::start_with(|c| {
        policy(c, &broken);
        // The mock cluster's coordinator holds a join for the rebalance
        // timeout (max.poll.interval.ms) after a member leaves.
        for (key, value) in [
            ("max.poll.interval.ms", "7000"),
            ("session.timeout.ms", "6000"),
        ] {
            c.kafka
                .client
                .insert(key.into(), toml::Value::String(value.into()));
        }
    })
    .await;
    let mut w = h.start_worker().await;
    // One at a time: sent together, the older two would be superseded by
    // the newest before any call.
    for (i, body) in [mute_all("g-dlq"), unmute_all("g-dlq"), mute_all("g-dlq")]
        .iter()
        .enumerate()
    {
        post_ok(&h, body).await;
        w.wait_for_events("zego", "dead_lettered", (i + 1) as f64)
            .await;
        assert!(wait_until(WAIT, || other.calls().len() > i).await);
    }
    w.stop().await;
    assert!(zego.calls().is_empty());
    assert_eq!(other.calls().len(), 3);

    let config = cli_config(&h, "");
    let path = config.path().to_str().unwrap();
    let out = mutebridge(&["dlq", "list", "--config", path, "--target", "zego"]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("dlq list output:\n{text}");
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3 dead letter(s)"), "{text}");
    assert!(
        text.contains("zego") && text.contains("permanent_error"),
        "{text}"
    );
    assert!(text.contains("100000005"), "the error is shown: {text}");
    let out = mutebridge(&[
        "dlq", "list", "--config", path, "--json", "--reason", "unmapped",
    ]);
    assert!(out.stdout.is_empty(), "no unmapped dead letters");
    let out = mutebridge(&["dlq", "list", "--config", path, "--reason", "nonsense"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("permanent_error"));

    // The credential is fixed: a worker with the right secret runs again.
    let fixed = format!("{}{other_target}{rules}", zego_target(&zego, "zego"));
    let mut config_fixed = test_config();
    policy(&mut config_fixed, &fixed);
    config_fixed.kafka = h.config.kafka.clone();
    let mut w = h.start_worker_with(&config_fixed).await;

    let dry = mutebridge(&["dlq", "replay", "--config", path, "--dry-run"]);
    assert!(dry.status.success());
    assert_eq!(
        String::from_utf8_lossy(&dry.stdout)
            .matches("would replay")
            .count(),
        3
    );
    // The running worker has finished everything in the event topic, so
    // also anything the dry run could have written there.
    w.wait_finished(&h, "zego").await;
    assert!(zego.calls().is_empty(), "a dry run sends nothing");

    let out = mutebridge(&["dlq", "replay", "--config", path, "--target", "zego"]);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("dlq replay output:\n{err}");
    assert!(out.status.success(), "{err}");
    assert!(err.contains("replayed 3 dead letter(s)"), "{err}");
    // Replays pass the stale-event guard: the first mute and the unmute
    // were overtaken by the last mute, so only that one is sent (Duration
    // -1 = until lifted), which is the group's state at the source.
    w.wait_for_events("zego", "stale", 2.0).await;
    w.wait_for_events("zego", "applied", 1.0).await;
    let order: Vec<Option<i64>> = zego.calls().iter().map(|c| c.duration).collect();
    assert_eq!(order, [Some(-1)], "only the newest state is sent");
    assert_eq!(
        other.calls().len(),
        3,
        "the target that worked is not called again"
    );

    let again = mutebridge(&["dlq", "replay", "--config", path]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(
        err.contains("0 dead letter(s) to replay; 3 replayed before"),
        "{err}"
    );
    let listed = mutebridge(&["dlq", "list", "--config", path]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("(replayed 1x)"));
    w.wait_finished(&h, "zego").await;
    assert_eq!(zego.calls().len(), 1, "replaying again sends nothing");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_written_without_its_event_is_replayed_from_the_source_offset() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let h = Harness::start().await;
    post_ok(&h, &mute_all("g-big-letter")).await;
    let source = h.consume(1, WAIT).await.remove(0);
    // What the worker writes for a letter that would not fit in a message:
    // reason, target and source position only.
    let letter = json!({
        "schema": "mutebridge.dead_letter/v1",
        "reason": "permanent_error",
        "error": "ZEGO 660000002: bad parameters",
        "target": "zego",
        "rule": "mirror",
        "action": "mute_all",
        "users": [],
        "attempts": 1,
        "source": {"topic": h.config.kafka.topic, "partition": source.partition, "offset": source.offset},
        "failed_at_ms": now_ms(),
        "event": null,
        "payload": null,
        "omitted": ["users", "event", "payload"],
    });
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", h.cluster.bootstrap_servers())
        .create()
        .unwrap();
    let payload = letter.to_string();
    producer
        .send(
            FutureRecord::to(&h.config.worker.dlq_topic)
                .key("g-big-letter")
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "schema",
                    value: Some("mutebridge.dead_letter/v1"),
                })),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let file = cli_config(&h, "");
    let path = file.path().to_str().unwrap();
    let out = mutebridge(&["dlq", "replay", "--config", path, "--dry-run"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let id = source.value["id"].as_str().unwrap();
    assert!(
        stdout.contains(&format!("{id} mute_all group g-big-letter -> target zego")),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("0 undecodable"), "{stderr}");
}

/// Writes `letter` to the dead-letter topic under `key`, as a worker does.
async fn write_letter(h: &Harness, key: &str, letter: &Value) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", h.cluster.bootstrap_servers())
        .create()
        .unwrap();
    let payload = letter.to_string();
    producer
        .send(
            FutureRecord::to(&h.config.worker.dlq_topic)
                .key(key)
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "schema",
                    value: Some("mutebridge.dead_letter/v1"),
                })),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_letters_are_replayed_once_the_workers_can_read_them() {
    // During an upgrade, an older worker dead-lettered as `undecodable` an
    // event it could not read (here one this version reads); and a record
    // no version reads.
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let (h, mut w) = start_with_policy(&text).await;
    let now = now_ms();
    let event = json!({
        "schema": "mutebridge.event/v1", "id": "newer-role-correction-1",
        "source": "easemob", "format": "group_op_event", "appkey": APPKEY,
        "scope": "group", "group_id": "g-upgrade", "kind": "mute_all",
        "operation": "UPDATE", "subtype": "MUTE", "operator": "@ppAdmin",
        "members": [], "mute": {"all": true},
        "occurred_at_ms": now, "received_at_ms": now, "attributes": {},
    });
    let letter = |payload: String, offset: i64| {
        json!({
            "schema": "mutebridge.dead_letter/v1", "reason": "undecodable",
            "error": "not a mutebridge.event/v1 event: unknown field", "target": null,
            "rule": null, "action": null, "users": [], "attempts": 0,
            "source": {"topic": h.config.kafka.topic, "partition": 0, "offset": offset},
            "failed_at_ms": now, "event": null, "payload": payload,
        })
    };
    write_letter(&h, "g-upgrade", &letter(event.to_string(), 100)).await;
    write_letter(&h, "g-junk", &letter("not json at all".into(), 101)).await;
    let file = cli_config(&h, "");
    let path = file.path().to_str().unwrap();
    let out = mutebridge(&["dlq", "replay", "--config", path, "--reason", "undecodable"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("1 dead letter(s) to replay; 0 replayed before")
            && err.contains("1 undecodable"),
        "{err}"
    );
    // Every target applies it, like the original record.
    assert!(
        wait_until(WAIT, || zego.calls().iter().any(|c| c.id == "g-upgrade")).await,
        "{:?}",
        zego.calls()
    );
    assert_eq!(zego.calls()[0].duration, Some(-1));
    let again = mutebridge(&["dlq", "replay", "--config", path]);
    assert!(String::from_utf8_lossy(&again.stderr)
        .contains("0 dead letter(s) to replay; 1 replayed before"));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_of_a_superseding_event_names_the_state_the_target_misses() {
    // ZEGO is down while a group is muted then unmuted: the mute is
    // superseded (never sent); the unmute then fails for good. Neither
    // reached ZEGO; the dead letter says what ZEGO misses, and replaying it
    // brings ZEGO to the group's newest state.
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let h = Harness::start_with(|c| {
        policy(c, &text);
        c.worker.circuit_breaker.probe_interval_seconds = 1;
        c.worker.circuit_breaker.max_probe_interval_seconds = 2;
    })
    .await;
    let mut w = h.start_worker().await;
    post_ok(&h, &mute_all("warm-up")).await;
    assert!(wait_until(WAIT, || zego.calls().len() == 1).await);
    zego.set_down(true);
    post_ok(&h, &mute_all("g-sup")).await;
    post_ok(&h, &unmute_all("g-sup")).await;
    // The state keeper has recorded the unmute before ZEGO is back.
    let file = cli_config(&h, "");
    let path = file.path().to_str().unwrap();
    let unmuted = || {
        let out = mutebridge(&["state", "get", "--config", path, APPKEY, "group", "g-sup"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .is_ok_and(|d| d["state"]["mute_all"]["muted"] == false)
    };
    let deadline = std::time::Instant::now() + WAIT;
    while !unmuted() {
        assert!(
            std::time::Instant::now() < deadline,
            "the unmute is recorded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The mute waits in the open breaker, and the target has read the
    // newest state by the time it may go again.
    let open = "mutebridge_target_circuit_state{target=\"zego\"}";
    assert!(
        wait_until(WAIT, || w.metric(open) > 0.0).await,
        "the breaker opens"
    );
    // A margin, not a condition: the target's copy of the newest states
    // (a reader tailing the state topic) shows nothing of how far it has
    // read; one probe interval lets it take the recorded unmute.
    tokio::time::sleep(Duration::from_secs(1)).await;
    zego.group_fault("g-sup", Fault::Code(660600001), 1);
    zego.set_down(false);
    let letters = h.dead_letters(1, WAIT).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = &letters[0].value;
    assert_eq!(l["event"]["kind"], "unmute_all", "{l}");
    assert_eq!(l["missing_state"][0]["dimension"], "mute_all", "{l}");
    assert_eq!(l["missing_state"][0]["muted"], false, "{l}");
    assert_eq!(l["missing_state"][0]["set_by"], l["event"]["id"], "{l}");
    assert!(
        zego.calls().iter().all(|c| c.id != "g-sup"),
        "the mute was superseded, the unmute failed: {:?}",
        zego.calls()
    );
    let listed = mutebridge(&["dlq", "list", "--config", path]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("the target misses mute_all unmuted"),
        "{text}"
    );
    let out = mutebridge(&["dlq", "replay", "--config", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(WAIT, || zego.calls().iter().any(|c| c.id == "g-sup")).await,
        "replayed"
    );
    let sent: Vec<Option<i64>> = zego
        .calls()
        .iter()
        .filter(|c| c.id == "g-sup")
        .map(|c| c.duration)
        .collect();
    assert_eq!(sent, [Some(0)], "the group's newest state: unmuted");
    w.stop().await;
}

/// Runs `mutebridge ARGS` (output discarded) and returns its peak resident
/// memory in KiB (`VmHWM`, read while it runs).
fn peak_kib(args: &[&str]) -> u64 {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_mutebridge"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Ok(text) = std::fs::read_to_string(&status) {
            if let Some(kib) = text.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            }) {
                peak = peak.max(kib);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_and_replay_stream_the_topic() {
    let _turn = HEAVY.lock().await;
    let h = Harness::start().await;
    let file = cli_config(&h, "");
    let path = file.path().to_str().unwrap().to_owned();
    let empty = tokio::task::spawn_blocking({
        let path = path.clone();
        move || peak_kib(&["dlq", "list", "--config", &path, "--json"])
    })
    .await
    .unwrap();
    // 3,000 letters of 10 kB: 30 MB in the topic.
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", h.cluster.bootstrap_servers())
        .create()
        .unwrap();
    let pad = "x".repeat(10_000);
    let letters: Vec<(String, String)> = (0..3000)
        .map(|i| {
            let letter = json!({
                "schema": "mutebridge.dead_letter/v1", "reason": "permanent_error",
                "error": format!("error {i}: {pad}"), "target": "zego", "rule": "r",
                "action": "mute_all", "users": [], "attempts": 1,
                "source": {"topic": h.config.kafka.topic, "partition": 0, "offset": i},
                "failed_at_ms": now_ms(), "event": null, "payload": null,
            });
            (format!("g-{i}"), letter.to_string())
        })
        .collect();
    let sends = letters.iter().map(|(key, payload)| {
        producer.send(
            FutureRecord::to(&h.config.worker.dlq_topic)
                .key(key)
                .payload(payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "schema",
                    value: Some("mutebridge.dead_letter/v1"),
                })),
            Duration::from_secs(30),
        )
    });
    for sent in futures_util::future::join_all(sends).await {
        sent.map_err(|(e, _)| e).unwrap();
    }
    let (list, replay) = tokio::task::spawn_blocking(move || {
        (
            peak_kib(&["dlq", "list", "--config", &path, "--json"]),
            peak_kib(&["dlq", "replay", "--config", &path, "--dry-run"]),
        )
    })
    .await
    .unwrap();
    eprintln!("peak RSS: {empty} KiB on an empty topic; with 30 MB of dead letters: list {list} KiB, replay {replay} KiB");
    for (command, peak) in [("list", list), ("replay", replay)] {
        assert!(
            peak < empty + 20_000,
            "dlq {command} grew by {} KiB reading 30 MB of letters",
            peak - empty
        );
    }
}
