//! What the broker does to mutebridge's topics over time, which the mock
//! cluster never does: the state topic compacted for real (and rebuilt from
//! what is left), and the event topic's retention deleting records a
//! stalled target has not read (counted, never silent).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use mutebridge::Config;
use serde_json::{json, Map, Value};

use crate::cluster::{self, config, turn};
use crate::providers::{FakeWebhook, FakeZego, Provider};
use crate::support::*;

const ZEGO_APP: u32 = 12345;
const ZEGO_SECRET: &str = "9193cc662a4c0ec135ec71fb57194b38";

fn with_policy(config: &mut Config, text: &str) {
    let parsed = Config::parse(text, std::path::Path::new("policy.toml")).unwrap();
    config.targets = parsed.targets;
    config.policy = parsed.policy;
}

/// A callback dated `at_ms` instead of now.
fn dated(mut body: Map<String, Value>, at_ms: i64) -> Map<String, Value> {
    body.insert("timestamp".into(), json!(at_ms));
    resign(&mut body, SECRETS[0]);
    body
}

fn unmute_all(group: &str) -> Map<String, Value> {
    op_event(group, "UPDATE", json!({"type": "MUTE", "mute": false}))
}

/// The state topic as `mutebridge state dump` reads it: each group's
/// newest state (tombstones delete), by key.
async fn dump(config: &Config, dir: &std::path::Path) -> BTreeMap<String, Value> {
    let file = cluster::process_config(config, "", dir, "dump");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mutebridge"))
            .args(["state", "dump", "--config", file.to_str().unwrap()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let key = format!(
                "{}|{}|{}",
                v["appkey"].as_str().unwrap(),
                v["scope"].as_str().unwrap(),
                v["group_id"].as_str().unwrap()
            );
            (key, v)
        })
        .collect()
}

/// Records in `topic` and the offsets they span: fewer records than
/// offsets means compaction removed some.
fn records_and_span(bootstrap: &str, topic: &str, partitions: i32) -> (usize, i64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tier-span")
        .create()
        .unwrap();
    let span: i64 = (0..partitions)
        .map(|p| {
            let (low, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut records = 0;
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(2) {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            records += 1;
            quiet = Instant::now();
        }
    }
    (records, span)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_state_topic_compacted_by_the_broker_rebuilds_the_same_state_after_a_restart() {
    let t = turn().await;
    let bootstrap = t.bootstrap();
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 100.0).await;
    let mut base = config(&t, "compaction");
    with_policy(
        &mut base,
        &format!(
            "[targets.zego]\nkind = \"zego\"\nbase_url = \"{}\"\napp_id = {ZEGO_APP}\nserver_secret = \"{ZEGO_SECRET}\"\nfrom_user_id = \"bot\"\nrate_per_second = 100\n\n[[policy.rules]]\nname = \"mutes\"\nwhen = {{ scope = \"group\", kinds = [\"mute_all\", \"unmute_all\", \"member_muted\", \"member_unmuted\"] }}\nthen = [{{ target = \"zego\", group = \"{{group_id}}\" }}]\n",
            zego.base_url()
        ),
    );
    // The state topic compacts within a second or two: closed segments
    // every 100 ms, any dirt is enough, tombstones go after 100 ms.
    let state = base.worker.state_topic.clone();
    cluster::create_topic(
        &bootstrap,
        &state,
        base.kafka.partitions,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "100"),
            ("min.compaction.lag.ms", "0"),
        ],
    )
    .await;
    let h = Harness::start_with(|c| *c = base.clone()).await;
    let mut w = h.start_worker_with(&h.config).await;

    // 30 groups, each muted and unmuted 8 times and a member muted; then 5
    // of them destroyed (their states become tombstones).
    let groups: Vec<String> = (0..30).map(|i| format!("cp-{i:02}")).collect();
    let mut posted = 0;
    for round in 0..8 {
        for g in &groups {
            let body = if round % 2 == 0 {
                mute_all(g)
            } else {
                unmute_all(g)
            };
            assert_eq!(h.post(&body).await.status, 200);
            posted += 1;
        }
    }
    for g in &groups {
        let body = op_event(g, "MUTE", json!({"type": "ADD", "member": ["u-1"]}));
        assert_eq!(h.post(&body).await.status, 200);
        posted += 1;
    }
    for g in &groups[..5] {
        assert_eq!(h.post(&op_event(g, "DELETE", json!({}))).await.status, 200);
        posted += 1;
    }
    let line = "mutebridge_state_events_total{outcome=\"";
    let keeper_done = |w: &WorkerHandle| {
        [
            "recorded",
            "unchanged",
            "stale",
            "not_mute",
            "removed",
            "undecodable",
        ]
        .iter()
        .map(|o| w.metric(&format!("{line}{o}\"}}")))
        .sum::<f64>()
    };
    assert!(wait_until(Duration::from_secs(60), || keeper_done(&w) >= posted as f64).await);
    // Segments roll only when something is appended: a trickle of other
    // groups' changes while the cleaner works.
    let logs = cluster::Logs::new();
    let (b, st, p) = (bootstrap.clone(), state.clone(), base.kafka.partitions);
    let mut trickle = 0;
    let compacted = loop {
        for i in 0..6 {
            assert_eq!(
                h.post(&mute_all(&format!("trickle-{trickle}-{i}")))
                    .await
                    .status,
                200
            );
        }
        trickle += 1;
        // The trickle's pacing (segments roll on time), not a wait: the
        // loop's condition is the compaction.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (b, st) = (b.clone(), st.clone());
        let (records, span) = tokio::task::spawn_blocking(move || records_and_span(&b, &st, p))
            .await
            .unwrap();
        if (records as i64) < span / 2 || trickle > 60 {
            break (records, span);
        }
    };
    eprintln!(
        "state topic after compaction: {} records over {} offsets",
        compacted.0, compacted.1
    );
    assert!(
        (compacted.0 as i64) < compacted.1 / 2,
        "the broker did not compact the state topic: {compacted:?}"
    );
    let before = dump(&h.config, logs.path()).await;
    for g in &groups[..5] {
        let key = format!("{APPKEY}|group|{g}");
        assert!(!before.contains_key(&key), "{g} was destroyed");
    }
    for g in &groups[5..] {
        let s = &before[&format!("{APPKEY}|group|{g}")];
        assert_eq!(s["mute_all"]["muted"], json!(false), "{g}: {s}");
        assert_eq!(s["members"]["u-1"]["muted"], json!(true), "{g}: {s}");
    }

    // A restart rebuilds from the compacted topic (offset gaps and all) the
    // very state it had: the same dump, and every late callback is stale.
    w.stop().await;
    let mut w = h.start_worker_with(&h.config).await;
    let calls_before = zego.calls().len();
    let an_hour_ago = now_ms() - 3_600_000;
    for g in &groups[5..] {
        assert_eq!(h.post(&dated(mute_all(g), an_hour_ago)).await.status, 200);
    }
    let stale = "mutebridge_state_events_total{outcome=\"stale\"}";
    assert!(
        wait_until(Duration::from_secs(60), || w.metric(stale) >= 25.0).await,
        "the rebuilt keeper judged {} of 25 late callbacks stale",
        w.metric(stale)
    );
    // ZEGO's pipeline has finished every event, the late ones too.
    w.wait_finished(&h, "zego").await;
    assert_eq!(zego.calls().len(), calls_before, "ZEGO got a late callback");
    let after = dump(&h.config, logs.path()).await;
    let trickled: HashSet<&String> = after.keys().filter(|k| k.contains("|trickle-")).collect();
    let strip = |m: &BTreeMap<String, Value>| -> BTreeMap<String, Value> {
        m.iter()
            .filter(|(k, _)| !k.contains("|trickle-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(
        strip(&before),
        strip(&after),
        "the state changed across the restart"
    );
    assert!(!trickled.is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_retention_deletes_before_a_stalled_target_reads_them_are_counted_as_skipped() {
    let t = turn().await;
    let bootstrap = t.bootstrap();
    let hook = FakeWebhook::start("audit-secret").await;
    let mut base = config(&t, "retention");
    with_policy(
        &mut base,
        &format!(
            "[targets.audit]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"audit-secret\"\n\n[[policy.rules]]\nname = \"all\"\nwhen = {{ scope = \"group\" }}\nthen = [{{ target = \"audit\" }}]\n",
            hook.url()
        ),
    );
    // Records older than 3 s go, in segments closed every 300 ms.
    cluster::create_topic(
        &bootstrap,
        &base.kafka.topic,
        base.kafka.partitions,
        &[("retention.ms", "3000"), ("segment.ms", "300")],
    )
    .await;
    let h = Harness::start_with(|c| *c = base.clone()).await;
    let mut w = h.start_worker_with(&h.config).await;
    let mut posted = Vec::new();
    async fn post(h: &Harness, posted: &mut Vec<String>, g: String) {
        let body = mute_all(&g);
        posted.push(body["callId"].as_str().unwrap().to_owned());
        assert_eq!(h.post(&body).await.status, 200);
    }
    post(&h, &mut posted, "rt-first".into()).await;
    assert!(wait_until(Duration::from_secs(30), || !hook.events().is_empty()).await);
    // The receiver goes down: the breaker opens and the target's consumer
    // pauses while callbacks go on for 15 s, five times the retention.
    hook.set_down(true);
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(15) {
        post(&h, &mut posted, format!("rt-{n:04}")).await;
        n += 1;
        // The traffic's pacing over the 15 s, not a wait.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hook.set_down(false);
    // What the receiver gets once it is back, and what it never will.
    let skipped = "mutebridge_worker_offsets_skipped_total{pipeline=\"audit\"}";
    assert!(
        wait_until(Duration::from_secs(90), || w.metric(skipped) > 0.0).await,
        "retention deleted unread events and nothing counted them; the audit target's metrics:\n{}",
        w.metrics
            .render()
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("audit"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let total = posted.len();
    let delivered = |hook: &FakeWebhook| -> HashSet<String> {
        hook.events()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Settled: nothing new arrives for 3 s.
    let mut last = delivered(&hook).len();
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = delivered(&hook).len();
        if now == last {
            break;
        }
        last = now;
    }
    let got = delivered(&hook);
    let lost = posted.iter().filter(|id| !got.contains(*id)).count();
    eprintln!(
        "{total} events; the receiver got {}; {lost} deleted unread; skipped counted {}",
        got.len(),
        w.metric(skipped)
    );
    assert!(
        lost > 0,
        "the test must make retention delete unread events"
    );
    assert_eq!(
        w.metric(skipped),
        lost as f64,
        "every lost event counted, no more"
    );
    assert_eq!(
        w.metric("mutebridge_worker_offsets_skipped_total{pipeline=\"state\"}"),
        0.0,
        "the state keeper kept up"
    );
    w.stop().await;
}
