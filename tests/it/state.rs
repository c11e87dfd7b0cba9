//! The mute state end to end: late callbacks (Easemob re-sends stored ones
//! up to 3 days late) never undo a newer change, the guard survives a
//! killed worker process and a rebalance, and `state get|dump` and
//! `resync` work against a running worker group.

use std::collections::HashMap;
use std::time::Duration;

use crate::providers::{FakeRongCloud, FakeZego, Fault, Provider};
use crate::support::*;
use crate::worker::{
    cli_config, member_mute, mutebridge, policy, post_ok, rc_target, start_with_policy, unmute_all,
    zego_target, zego_target_as, WAIT, ZEGO_APP, ZEGO_RULE, ZEGO_SECRET,
};
use mutebridge::Config;
use serde_json::{json, Map, Value};

/// `body` with its callback `timestamp` set to `ts`, signed again.
fn at(mut body: Map<String, Value>, ts: i64) -> Map<String, Value> {
    body.insert("timestamp".into(), json!(ts));
    resign(&mut body, SECRETS[0]);
    body
}

/// `body` about a chatroom instead of a group, signed again.
fn chatroom(mut body: Map<String, Value>) -> Map<String, Value> {
    body.insert("type".into(), json!("CHATROOM"));
    resign(&mut body, SECRETS[0]);
    body
}

fn member_unmute(group: &str, members: &[&str]) -> Map<String, Value> {
    op_event(group, "MUTE", json!({"type": "REMOVE", "member": members}))
}

fn users(members: &[&str]) -> Vec<String> {
    members.iter().map(|m| m.to_string()).collect()
}

/// Settings for tests that start and stop workers in one group: the mock
/// cluster's coordinator holds a join for the rebalance timeout
/// (max.poll.interval.ms) after a member leaves.
pub(crate) fn quick_rebalance(c: &mut Config) {
    for (key, value) in [
        ("max.poll.interval.ms", "7000"),
        ("session.timeout.ms", "6000"),
    ] {
        c.kafka
            .client
            .insert(key.into(), toml::Value::String(value.into()));
    }
}

/// Each group's group-wide ZEGO `Duration`s (-1 mute, 0 unmute) in call
/// order.
fn sequences(zego: &FakeZego) -> HashMap<String, Vec<i64>> {
    let mut per_group: HashMap<String, Vec<i64>> = HashMap::new();
    for c in zego.calls().into_iter().filter(|c| c.action == "MuteGroup") {
        per_group.entry(c.id).or_default().push(c.duration.unwrap());
    }
    per_group
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_mute_all_after_a_newer_unmute_all_is_never_applied_last() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 100.0).await;
    let rc = FakeRongCloud::start(crate::worker::RC_KEY, crate::worker::RC_SECRET, 100.0).await;
    let text = format!(
        "{}{}{ZEGO_RULE}
[[policy.rules]]
name = \"mirror chatroom mutes to RongCloud\"
when = {{ scope = \"chatroom\", kinds = [\"mute_all\", \"unmute_all\"] }}
then = [{{ target = \"rc\", chatroom = \"{{group_id}}\" }}]
",
        zego_target(&zego, "zego"),
        rc_target(&[&rc], "rc")
    );
    let (h, mut w) = start_with_policy(&text).await;
    let t = now_ms() - 60_000;
    // The unmute (T+1s) reaches us first, the older mute (T) later.
    post_ok(&h, &at(unmute_all("late-g"), t + 1000)).await;
    post_ok(&h, &at(mute_all("late-g"), t)).await;
    post_ok(&h, &chatroom(at(unmute_all("late-c"), t + 1000))).await;
    post_ok(&h, &chatroom(at(mute_all("late-c"), t))).await;
    for t in ["zego", "rc"] {
        w.wait_for_events(t, "applied", 1.0).await;
        w.wait_for_events(t, "stale", 1.0).await;
    }
    let durations: Vec<Option<i64>> = zego.calls().iter().map(|c| c.duration).collect();
    assert_eq!(durations, [Some(0)], "ZEGO got only the unmute");
    let paths: Vec<String> = rc.calls().into_iter().map(|c| c.action).collect();
    assert_eq!(
        paths,
        ["/chatroom/ban/rollback.json"],
        "RongCloud got only the unmute"
    );
    assert_eq!(
        w.metric("mutebridge_actions_total{action=\"mute_all\",outcome=\"stale\",target=\"zego\"}"),
        1.0
    );
    assert_eq!(
        w.metric("mutebridge_actions_total{action=\"mute_all\",outcome=\"stale\",target=\"rc\"}"),
        1.0
    );
    // A newer mute still goes through.
    post_ok(&h, &at(mute_all("late-g"), t + 2000)).await;
    assert!(wait_until(WAIT, || zego.calls().len() == 2).await);
    assert_eq!(zego.calls()[1].duration, Some(-1));
    assert!(zego.rejected().is_empty() && rc.rejected().is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_member_mutes_are_split_and_dimensions_stay_independent() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 100.0).await;
    let (h, mut w) = start_with_policy(&format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"))).await;
    let t = now_ms() - 60_000;
    post_ok(&h, &at(member_unmute("m-g", &["u1"]), t + 1000)).await;
    // Older than u1's unmute; u2 and u3 have no state yet.
    post_ok(
        &h,
        &at(member_mute("m-g", &users(&["u1", "u2", "u3"]), None), t),
    )
    .await;
    // Older than every member event, but the group-wide mute is its own
    // dimension.
    post_ok(&h, &at(mute_all("m-g"), t - 5000)).await;
    // Older than u2's mute: stale.
    post_ok(&h, &at(member_unmute("m-g", &["u2"]), t - 1)).await;
    w.wait_for_events("zego", "applied", 3.0).await;
    w.wait_for_events("zego", "stale", 1.0).await;
    let calls = zego.calls();
    let shape: Vec<(&str, Vec<&str>, Option<i64>)> = calls
        .iter()
        .map(|c| {
            (
                c.action.as_str(),
                c.users.iter().map(String::as_str).collect(),
                c.duration,
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("MuteGroupMembers", vec!["u1"], Some(0)),
            ("MuteGroupMembers", vec!["u2", "u3"], Some(-1)),
            ("MuteGroup", vec![], Some(-1)),
        ]
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_process_rebuilds_the_guard_and_loses_nothing() {
    let _turn = HEAVY.lock().await;
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = h.worker_process_config(&text, dir.path());
    // Every call takes 150 ms, so the kill lands mid-stream.
    for _ in 0..400 {
        zego.fault(Fault::Delay(Duration::from_millis(150)));
    }
    let groups: Vec<String> = (0..8).map(|g| format!("kill-{g}")).collect();
    let t = now_ms() - 600_000;
    let post_round = |round: i64| {
        let h = &h;
        let groups = &groups;
        async move {
            for g in groups {
                let body = if round % 2 == 0 {
                    mute_all(g)
                } else {
                    unmute_all(g)
                };
                post_ok(h, &at(body, t + round * 1000)).await;
            }
        }
    };
    // Rounds one at a time: posted together, a mute target would get only
    // each group's newest state.
    let distinct = |zego: &FakeZego| {
        let seqs = sequences(zego);
        groups
            .iter()
            .map(|g| {
                let mut s = seqs.get(g).cloned().unwrap_or_default();
                s.dedup();
                s.len()
            })
            .min()
            .unwrap_or(0)
    };
    let (first, _) = spawn_role("worker", &config, &dir.path().join("first.log"));
    for round in 0..3 {
        post_round(round).await;
        assert!(
            wait_until(Duration::from_secs(40), || distinct(&zego) > round as usize).await,
            "round {round}: {:?}\n{}",
            sequences(&zego),
            std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default()
        );
    }
    post_round(3).await;
    // Killed while round 3's calls are at ZEGO (each takes 150 ms there).
    assert!(wait_until(Duration::from_secs(20), || zego.requests() >= 32).await);
    drop(first); // SIGKILL mid-round: no commit, no flush, no goodbye
    let killed_at = zego.calls().len();
    assert!(killed_at < 32, "killed mid-round ({killed_at} of 32 calls)");
    let (_second, addr) = spawn_role("worker", &config, &dir.path().join("second.log"));
    assert!(
        wait_until(Duration::from_secs(60), || distinct(&zego) >= 4).await,
        "{:?}\n{}",
        sequences(&zego),
        std::fs::read_to_string(dir.path().join("second.log")).unwrap_or_default()
    );
    post_round(4).await;
    let complete = |seqs: &HashMap<String, Vec<i64>>| {
        groups.iter().all(|g| {
            let mut s = seqs.get(g).cloned().unwrap_or_default();
            s.dedup();
            s == [-1, 0, -1, 0, -1]
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), || complete(&sequences(&zego))).await,
        "{:?}\n{}",
        sequences(&zego),
        std::fs::read_to_string(dir.path().join("second.log")).unwrap_or_default()
    );
    // Late copies of the oldest unmute, after the restart: the rebuilt
    // guard refuses them, each of them (a copy it let through would not be
    // counted stale, and would be a call).
    let metric = |line: &str| process_metric(addr, line);
    let stale = &events_line("zego", "stale");
    let stale_before = metric(stale);
    for g in &groups {
        post_ok(&h, &at(unmute_all(g), t - 1000)).await;
    }
    assert!(
        wait_until(Duration::from_secs(30), || metric(stale)
            >= stale_before + 8.0)
        .await,
        "stale: {} (was {stale_before})",
        metric(stale)
    );
    // ZEGO's pipeline has finished every event: nothing else can come.
    h.wait_committed("mutebridge-workers.zego").await;
    let seqs = sequences(&zego);
    let mut repeats = 0;
    for g in &groups {
        let s = &seqs[g];
        assert_eq!(
            s.last(),
            Some(&-1),
            "{g} ends muted, its newest state: {s:?}"
        );
        let mut d = s.clone();
        d.dedup();
        assert_eq!(d, [-1, 0, -1, 0, -1], "{g}: nothing lost or reordered");
        repeats += s.len() - 5;
    }
    // At-least-once: only what ran at the kill, without a state record
    // yet, may be sent twice.
    assert!(repeats <= groups.len(), "{repeats} repeated calls");
    assert!(zego.rejected().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rebalance_the_new_owner_has_the_state_before_it_applies() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let h = Harness::start_with(|c| {
        policy(c, &text);
        quick_rebalance(c);
    })
    .await;
    let groups: Vec<String> = (0..40).map(|g| format!("rb-{g}")).collect();
    let t = now_ms() - 600_000;
    let mut a = h.start_worker().await;
    for g in &groups {
        post_ok(&h, &at(unmute_all(g), t + 1000)).await;
    }
    a.wait_for_events("zego", "applied", 40.0).await;

    // B joins: the partitions are split, each side reads their states.
    let mut b = h.start_worker().await;
    let held = |w: &WorkerHandle| w.metric("mutebridge_worker_state_groups{pipeline=\"zego\"}");
    assert!(
        wait_until(Duration::from_secs(30), || held(&b) > 0.0
            && held(&a) + held(&b) == 40.0)
        .await,
        "a holds {}, b holds {}",
        held(&a),
        held(&b)
    );
    // Incremental (cooperative-sticky) rebalancing: A gave partitions up
    // and never read its kept ones again.
    let rebuilds = |w: &WorkerHandle| {
        w.metric("mutebridge_worker_state_rebuild_seconds_count{pipeline=\"zego\"}")
    };
    assert_eq!(rebuilds(&a), 1.0, "A rebuilt its states again on B's join");
    let stale = |w: &WorkerHandle| w.metric(&events_line("zego", "stale"));
    for g in &groups {
        post_ok(&h, &at(mute_all(g), t)).await;
    }
    assert!(
        wait_until(WAIT, || stale(&a) + stale(&b) == 40.0).await,
        "stale: a {} b {}",
        stale(&a),
        stale(&b)
    );
    assert!(stale(&b) > 0.0, "B judged its share with A's state");

    // Newer mutes: each side applies and records its share; then B leaves
    // and A must judge B's groups by what B recorded.
    for g in &groups {
        post_ok(&h, &at(mute_all(g), t + 2000)).await;
    }
    let applied = |w: &WorkerHandle| w.metric(&events_line("zego", "applied"));
    assert!(wait_until(WAIT, || applied(&a) + applied(&b) >= 80.0).await);
    assert_eq!(rebuilds(&b), 1.0, "B read its share once");
    b.stop().await;
    assert!(
        wait_until(Duration::from_secs(30), || held(&a) == 40.0).await,
        "a holds {}",
        held(&a)
    );
    assert_eq!(rebuilds(&a), 2.0, "A read B's partitions only, once");
    let before = stale(&a);
    for g in &groups {
        post_ok(&h, &at(unmute_all(g), t + 1500)).await;
    }
    assert!(
        wait_until(WAIT, || stale(&a) == before + 40.0).await,
        "stale at a: {} (before {before})",
        stale(&a)
    );
    let seqs = sequences(&zego);
    for g in &groups {
        let mut s = seqs[g].clone();
        s.dedup();
        assert_eq!(s, [0, -1], "{g}: {:?}", seqs[g]);
    }
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_get_dump_and_resync_under_a_20_per_second_limit_with_workers_running() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    // The provider added later: strict 20 requests/s, its real error code.
    let fresh = FakeZego::start(ZEGO_APP + 1, "fresh-secret", 20.0).await;
    let fresh_target = format!(
        "{}rate_per_second = 20\n",
        zego_target_as(&fresh, "fresh", ZEGO_APP + 1, "fresh-secret")
    );
    let both_rule = r#"
[[policy.rules]]
name = "mirror group mutes"
when = { scope = "group", kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"] }
then = [{ target = "zego", group = "{group_id}" }, { target = "fresh", group = "{group_id}" }]
"#;
    let before = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let after = format!("{}{fresh_target}{both_rule}", zego_target(&zego, "zego"));
    let h = Harness::start_with(|c| {
        policy(c, &before);
        quick_rebalance(c);
    })
    .await;
    let groups: Vec<String> = (0..60).map(|g| format!("rs-{g}")).collect();
    let t = now_ms() - 600_000;
    let mut w = h.start_worker().await;
    for g in &groups {
        post_ok(&h, &at(mute_all(g), t)).await;
    }
    post_ok(
        &h,
        &at(member_mute("rs-0", &users(&["u1", "u2"]), None), t + 10),
    )
    .await;
    for g in &groups[..10] {
        post_ok(&h, &at(unmute_all(g), t + 1000)).await;
    }
    // 71 events; a mute still waiting for ZEGO when the worker has read
    // its group's unmute is superseded (only the newest state is sent).
    let settled = || {
        w.metric(&events_line("zego", "applied")) + w.metric(&events_line("zego", "superseded"))
            == 71.0
    };
    assert!(
        wait_until(Duration::from_secs(20), settled).await,
        "{:?}",
        zego.calls()
    );
    let before_resync = zego.calls().len();

    let file = cli_config(&h, &after);
    let path = file.path().to_str().unwrap();
    let out = mutebridge(&["state", "get", "--config", path, APPKEY, "group", "rs-0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "state get output:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let state = &doc["state"];
    assert_eq!(state["schema"], "mutebridge.state/v1");
    // Next to it, what the target applied: each dimension, when, and the
    // provider-side end (none here: ZEGO holds a permanent mute).
    let zego_applied = &doc["applied"]["zego"];
    assert_eq!(zego_applied["schema"], "mutebridge.applied/v1", "{doc}");
    assert_eq!(zego_applied["mute_all"]["muted"], false);
    assert!(zego_applied["mute_all"]["applied_at_ms"].as_i64().unwrap() > 0);
    assert_eq!(zego_applied["members"]["u1"]["lapses_at_ms"], Value::Null);
    assert_eq!(state["mute_all"]["muted"], false);
    assert_eq!(state["mute_all"]["at_ms"], t + 1000);
    assert_eq!(state["members"]["u1"]["muted"], true);
    assert_eq!(state["members"]["u2"]["at_ms"], t + 10);
    let out = mutebridge(&["state", "get", "--config", path, APPKEY, "group", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mute state"));
    let out = mutebridge(&["state", "get", "--config", path, APPKEY, "team", "rs-0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`group` or `chatroom`"));

    let out = mutebridge(&["state", "dump", "--config", path]);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 60);
    let out = mutebridge(&["state", "dump", "--config", path, "--groups", "rs-1*"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 11);

    // The new provider joins: the worker gets both targets, and resync
    // brings it in line while new events keep flowing. (One replica: a
    // limit shared by several is the deliverer's job, not resync's.)
    w.stop().await;
    let mut config = test_config();
    policy(&mut config, &after);
    quick_rebalance(&mut config);
    config.kafka = h.config.kafka.clone();
    let mut w = h.start_worker_with(&config).await;
    let out = mutebridge(&["resync", "--config", path, "--target", "fresh"]);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("resync output:\n{err}");
    assert!(out.status.success(), "{err}");
    assert!(err.contains("published 60 resync marker(s)"), "{err}");
    // Newer unmutes right behind the markers, for groups 20..30. At 20
    // calls a second the markers' 60 calls take three seconds, so a group
    // whose mute is still waiting when the worker reads its unmute gets the
    // unmute alone (the waiting call is superseded); one whose mute went
    // out first gets both. Either way the unmute is the last call.
    for g in &groups[20..30] {
        post_ok(&h, &at(unmute_all(g), t + 2000)).await;
    }
    let done = || {
        let seqs = sequences(&fresh);
        groups.iter().enumerate().all(|(i, g)| {
            let want: &[&[i64]] = match i {
                0..10 => &[&[0]],
                20..30 => &[&[-1, 0], &[0]],
                _ => &[&[-1]],
            };
            let mut s: Vec<i64> = seqs.get(g).cloned().unwrap_or_default();
            s.dedup();
            want.contains(&s.as_slice())
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), done).await,
        "{:?}",
        sequences(&fresh)
    );
    let member_calls: Vec<_> = fresh
        .calls()
        .into_iter()
        .filter(|c| c.action == "MuteGroupMembers")
        .collect();
    assert_eq!(member_calls.len(), 1, "{member_calls:?}");
    assert_eq!(member_calls[0].users, ["u1", "u2"]);
    assert!(
        fresh.rejected().is_empty(),
        "rate-limit rejections: {:?}",
        fresh.rejected()
    );
    // The original target is not resynced: after its first calls it only
    // gets the new unmutes.
    let later: Vec<Option<i64>> = zego.calls()[before_resync..]
        .iter()
        .map(|c| c.duration)
        .collect();
    assert_eq!(later, [Some(0); 10]);
    w.stop().await;
    // Stopped, nothing more arrives: no mute went out after its unmute.
    assert!(done(), "{:?}", sequences(&fresh));

    // A tombstone (a group's state deleted by hand, as compaction allows)
    // removes the group from what the commands read.
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer =
        mutebridge::producer_config(&h.config.kafka, h.cluster.bootstrap_servers())
            .create()
            .unwrap();
    let partition = mutebridge::key_partition(b"rs-59", h.config.kafka.partitions);
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&h.config.worker.state_topic)
                .partition(partition)
                .key(&format!("{APPKEY}|group|rs-59")),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let out = mutebridge(&["state", "get", "--config", path, APPKEY, "group", "rs-59"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["state"], Value::Null, "a deleted state is gone: {doc}");
    assert_eq!(
        doc["applied"]["zego"]["mute_all"]["muted"], true,
        "what ZEGO applied is still known"
    );
    let out = mutebridge(&["state", "dump", "--config", path]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 59);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_topic_partitioned_unlike_the_event_topic_is_refused_at_start() {
    let h = Harness::start().await;
    let mut config = h.config.clone();
    config.worker.state_topic = "im.group-events.state-3".into();
    h.cluster
        .embedded()
        .unwrap()
        .create_topic(&config.worker.state_topic, 3)
        .unwrap();
    let e =
        match mutebridge::Worker::start(&checked(&config), &h.cluster, &mutebridge::Metrics::new())
            .await
        {
            Ok(_) => panic!("a worker started with a mispartitioned state topic"),
            Err(e) => format!("{e:#}"),
        };
    assert!(
        e.contains("has 3 partitions") && e.contains("has 12") && e.contains("worker.state_topic"),
        "{e}"
    );
}

/// `mutebridge state get` of a group: the JSON document, or `None` when the
/// group has no state.
fn state_get(path: &str, group: &str) -> Option<Value> {
    let out = mutebridge(&["state", "get", "--config", path, APPKEY, "group", group]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no mute state"), "{err}");
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// Each pipeline's backlog in Kafka (events not committed), by
/// `mutebridge targets --json`.
fn backlogs(path: &str) -> Vec<(String, i64)> {
    let out = mutebridge(&["targets", "--config", path, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            (
                row["pipeline"].as_str().unwrap().to_owned(),
                row["backlog"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// SIGTERM, and how long the process takes to exit (at most 30 s).
pub(crate) fn terminate(child: &mut std::process::Child) -> Duration {
    let started = std::time::Instant::now();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_more_muted_members_than_a_record_holds_keeps_committing() {
    let _turn = HEAVY.lock().await;
    let rc = FakeRongCloud::start(crate::worker::RC_KEY, crate::worker::RC_SECRET, 2000.0).await;
    let text = format!(
        "{}rate_per_second = 1000
[[policy.rules]]
name = \"group member mutes to RongCloud\"
when = {{ scope = \"group\", kinds = [\"member_muted\", \"member_unmuted\"] }}
then = [{{ target = \"rc\", group = \"rc-{{group_id}}\" }}]
",
        rc_target(&[&rc], "rc")
    );
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = h.worker_process_config(&text, dir.path());
    let path = config.to_str().unwrap();
    let log = dir.path().join("worker.log");
    let (mut worker, addr) = spawn_role("worker", &config, &log);
    // 8,000 permanent mutes of 56-character member IDs: about 1.2 MB of
    // group state, past the 1,000,000 bytes of `message.max.bytes`.
    let t = now_ms() - 600_000;
    for batch in 0..80 {
        let members: Vec<String> = (0..100)
            .map(|i| format!("member-{:05}-{}", batch * 100 + i, "x".repeat(43)))
            .collect();
        post_ok(&h, &at(member_mute("big", &members, None), t + batch)).await;
    }
    // And a group after it, in the same partitions' order.
    post_ok(
        &h,
        &at(member_mute("small", &users(&["u1"]), None), t + 100),
    )
    .await;
    let metric = |line: &str| process_metric(addr, line);
    let dropped = |pipeline: &str| {
        metric(&format!(
            "mutebridge_worker_state_members_dropped_total{{pipeline=\"{pipeline}\"}}"
        ))
    };
    let caught_up = || backlogs(path).iter().all(|(_, b)| *b == 0);
    assert!(
        wait_until(Duration::from_secs(90), caught_up).await,
        "{:?}\n{}",
        backlogs(path),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Every member reached RongCloud; the records were cut to fit, and
    // written: no write was refused and retried.
    let gagged: usize = rc
        .calls()
        .iter()
        .filter(|c| c.id == "rc-big")
        .map(|c| c.users.len())
        .sum();
    assert_eq!(gagged, 8000);
    assert!(dropped("state") > 0.0 && dropped("rc") > 0.0);
    for pipeline in ["state", "rc"] {
        let errors = metric(&format!(
            "mutebridge_worker_state_write_errors_total{{pipeline=\"{pipeline}\"}}"
        ));
        assert_eq!(errors, 0.0, "{pipeline}");
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("would not fit in one Kafka message"),
        "{logged}"
    );
    // The records in the topic: the newest mutes, under the limit. (The
    // embedded cluster keeps only the last 5 MiB of a partition and never
    // compacts, so of the ~1 MB records only the last few are still there;
    // on a real broker compaction keeps each key's newest.)
    let doc = state_get(path, "big").expect("the group has records");
    let newest = format!("member-07999-{}", "x".repeat(43));
    let records: Vec<&Value> = [&doc["state"], &doc["applied"]["rc"]]
        .into_iter()
        .filter(|r| !r.is_null())
        .collect();
    assert!(!records.is_empty(), "{}", &doc.to_string()[..200]);
    for r in records {
        let members = r["members"].as_object().unwrap();
        assert!((3000..8000).contains(&members.len()), "{}", members.len());
        assert!(members.contains_key(&newest));
        assert!(serde_json::to_vec(r).unwrap().len() < 1_000_000);
    }
    // Nothing holds a stop up.
    let took = terminate(&mut worker.0);
    assert!(took < Duration::from_secs(4), "stopped in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroyed_groups_and_tombstones_written_while_running_remove_the_state() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let _turn = HEAVY.lock().await;
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = h.worker_process_config(&text, dir.path());
    let path = config.to_str().unwrap();
    let (_worker, addr) = spawn_role("worker", &config, &dir.path().join("worker.log"));
    let t = now_ms() - 600_000;
    for g in ["gone", "wiped"] {
        post_ok(&h, &at(mute_all(g), t)).await;
    }
    let applied = events_line("zego", "applied");
    assert!(wait_until(WAIT, || process_metric(addr, &applied) >= 2.0).await);
    assert!(
        wait_until(WAIT, || state_get(path, "gone")
            .is_some_and(|d| !d["applied"]["zego"].is_null()))
        .await
    );

    // A destroyed group: its state and what ZEGO applied are deleted.
    post_ok(&h, &at(op_event("gone", "DELETE", json!({})), t + 1000)).await;
    assert!(
        wait_until(WAIT, || state_get(path, "gone").is_none()).await,
        "{:?}",
        state_get(path, "gone")
    );

    // A tombstone written by hand while the worker runs: the next event
    // does not bring the deleted mute-all back.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", h.cluster.bootstrap_servers())
        .create()
        .unwrap();
    let key = format!("{APPKEY}|group|wiped");
    let partition = java_partition("wiped", h.config.kafka.partitions as i32);
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&h.config.worker.state_topic)
                .key(&key)
                .partition(partition),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        wait_until(WAIT, || state_get(path, "wiped")
            .is_some_and(|d| d["state"].is_null()))
        .await
    );
    post_ok(
        &h,
        &at(member_mute("wiped", &users(&["u1"]), None), t + 2000),
    )
    .await;
    assert!(
        wait_until(WAIT, || state_get(path, "wiped")
            .is_some_and(|d| !d["state"].is_null()))
        .await,
        "the member mute is recorded"
    );
    let doc = state_get(path, "wiped").unwrap();
    assert_eq!(doc["state"]["mute_all"], Value::Null, "{doc}");
    assert_eq!(doc["state"]["members"]["u1"]["muted"], true, "{doc}");
}
