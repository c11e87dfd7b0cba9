//! Each target on its own: one consumer group per target, a circuit
//! breaker, catch-up with the newest state, renewal of capped mutes, the
//! upgrade from one consumer group, and the commands that show and rewind
//! a target. Against the provider stand-ins of tests/it/providers.rs.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::providers::{Call, FakeRongCloud, FakeWebhook, FakeZego, Fault, Provider};
use crate::support::*;
use crate::worker::{
    cli_config, member_mute, mutebridge, policy, post_ok, rc_target, unmute_all, zego_target,
    RC_KEY, RC_SECRET, WAIT, ZEGO_APP, ZEGO_RULE, ZEGO_SECRET,
};
use mutebridge::Config;
use serde_json::{json, Map, Value};

/// Targets and rules from `text`, with every worker setting at its default.
fn policy_with_defaults(config: &mut Config, text: &str) {
    let parsed = Config::parse(text, Path::new("test-policy.toml")).expect("test policy parses");
    config.targets = parsed.targets;
    config.policy = parsed.policy;
    config.easemob.dedup_by_content = false;
}

fn webhook_target(hook: &FakeWebhook, name: &str) -> String {
    format!(
        "[targets.{name}]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"audit-secret\"\n",
        hook.url()
    )
}

fn chatroom(mut body: Map<String, Value>) -> Map<String, Value> {
    body.insert("type".into(), json!("CHATROOM"));
    resign(&mut body, SECRETS[0]);
    body
}

/// Requests the stand-in got within `from..to` (by arrival).
fn arrivals_between(p: &impl Provider, from: Instant, to: Instant) -> Vec<Instant> {
    p.arrivals()
        .into_iter()
        .filter(|t| *t >= from && *t < to)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_long_outage_of_two_targets_delays_nothing_else_and_converges_by_itself() {
    // The issue's scenario, with the default [worker] and [worker.retry]:
    // ZEGO healthy all along; RongCloud and an audit webhook answer 5xx for
    // 60 s while 300 chatrooms get a mute-all (odd ones an unmute-all 1 s
    // later) and 4 group mutes per second go to ZEGO and the audit.
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 20.0).await;
    let rc = FakeRongCloud::start(RC_KEY, RC_SECRET, 100.0).await;
    let audit = FakeWebhook::start("audit-secret").await;
    let text = format!(
        "{}{}{}
[[policy.rules]]
name = \"group mutes to ZEGO\"
when = {{ scope = \"group\", kinds = [\"mute_all\", \"unmute_all\"] }}
then = [{{ target = \"zego\", group = \"{{group_id}}\" }}, {{ target = \"audit\" }}]

[[policy.rules]]
name = \"chatroom mutes to RongCloud\"
when = {{ scope = \"chatroom\", kinds = [\"mute_all\", \"unmute_all\"] }}
then = [{{ target = \"rc\", chatroom = \"{{group_id}}\" }}]
",
        zego_target(&zego, "zego"),
        rc_target(&[&rc], "rc"),
        webhook_target(&audit, "audit")
    );
    let h = Harness::start_with(|c| policy_with_defaults(c, &text)).await;
    let mut w = h.start_worker().await;
    // Every consumer group joined before the outage starts.
    h.wait_joined(&[&w]).await;
    rc.set_down(true);
    audit.set_down(true);
    let outage = Instant::now();
    let minute = Duration::from_secs(60);
    // Group g's events, in order: (posted at, muted).
    let mut group_events: HashMap<String, Vec<(Instant, bool)>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let (mut rooms, mut visits, mut unmutes) = (0usize, 0usize, Vec::<(Instant, usize)>::new());
    let mut step = 0u64;
    while outage.elapsed() < minute {
        tick.tick().await;
        step += 1;
        // 5 rooms a second; odd ones unmuted 1 s later.
        if step.is_multiple_of(4) && rooms < 300 {
            post_ok(&h, &chatroom(mute_all(&format!("room-{rooms}")))).await;
            if rooms % 2 == 1 {
                unmutes.push((Instant::now() + Duration::from_secs(1), rooms));
            }
            rooms += 1;
        }
        while unmutes.first().is_some_and(|(t, _)| *t <= Instant::now()) {
            let (_, r) = unmutes.remove(0);
            post_ok(&h, &chatroom(unmute_all(&format!("room-{r}")))).await;
        }
        // 4 group mutes a second, over 60 groups, each alternating.
        if step.is_multiple_of(5) {
            let g = format!("grp-{}", visits % 60);
            let muted = (visits / 60) % 2 == 0;
            post_ok(&h, &if muted { mute_all(&g) } else { unmute_all(&g) }).await;
            group_events
                .entry(g)
                .or_default()
                .push((Instant::now(), muted));
            visits += 1;
        }
    }
    for (_, r) in unmutes.drain(..) {
        post_ok(&h, &chatroom(unmute_all(&format!("room-{r}")))).await;
    }
    assert_eq!(rooms, 300, "the minute posted every room");
    // ZEGO never waited for the others: each group event reached it within
    // 2 s of its callback's 200.
    assert!(
        wait_until(WAIT, || zego.calls().len() >= visits).await,
        "{} of {visits} ZEGO calls",
        zego.calls().len()
    );
    let mut zego_calls: HashMap<String, Vec<Call>> = HashMap::new();
    for c in zego.calls() {
        zego_calls.entry(c.id.clone()).or_default().push(c);
    }
    let mut worst = Duration::ZERO;
    for (g, events) in &group_events {
        let calls = &zego_calls[g];
        assert_eq!(calls.len(), events.len(), "{g}: one call per event");
        for ((posted, muted), call) in events.iter().zip(calls) {
            assert_eq!(call.duration, Some(if *muted { -1 } else { 0 }), "{g}");
            worst = worst.max(call.at.saturating_duration_since(*posted));
        }
    }
    assert!(
        worst <= Duration::from_secs(2),
        "a ZEGO call came {worst:?} after its callback"
    );
    // The down targets saw the calls that failed before their breakers
    // opened, then at most one probe per interval (5 s, backing off).
    let recovered = Instant::now();
    for (name, arrivals) in [
        ("rc", arrivals_between(&rc, outage, recovered)),
        ("audit", arrivals_between(&audit, outage, recovered)),
    ] {
        assert!(
            arrivals.len() <= 25,
            "{name} got {} requests while down",
            arrivals.len()
        );
        let late: Vec<Instant> = arrivals
            .into_iter()
            .filter(|t| t.duration_since(outage) > Duration::from_secs(10))
            .collect();
        for pair in late.windows(2) {
            let gap = pair[1].duration_since(pair[0]);
            assert!(
                gap >= Duration::from_millis(4500),
                "{name}: two requests {gap:?} apart while open"
            );
        }
    }
    assert!(
        h.dead_letters(1, Duration::from_secs(1)).await.is_empty(),
        "an outage dead-letters nothing"
    );
    rc.set_down(false);
    audit.set_down(false);
    // Within 30 s every room is in its final state, with one call each.
    let rooms_right = || {
        let mut last: HashMap<String, (String, usize)> = HashMap::new();
        for c in rc.calls() {
            let e = last.entry(c.id.clone()).or_insert((String::new(), 0));
            *e = (c.action.clone(), e.1 + 1);
        }
        (0..300).all(|r| {
            let want = if r % 2 == 1 {
                "/chatroom/ban/rollback.json"
            } else {
                "/chatroom/ban/add.json"
            };
            last.get(&format!("room-{r}"))
                .is_some_and(|(a, _)| a == want)
        })
    };
    let audited = || audit.events().len() >= visits;
    assert!(
        wait_until(Duration::from_secs(30), || rooms_right() && audited()).await,
        "after 30 s: {} RongCloud calls, {} of {visits} audit events",
        rc.calls().len(),
        audit.events().len()
    );
    // Every event finished on RongCloud: no other call can follow.
    w.wait_finished(&h, "rc").await;
    let mut per_room: HashMap<String, usize> = HashMap::new();
    for c in rc.calls() {
        *per_room.entry(c.id).or_default() += 1;
    }
    assert!(
        per_room.values().all(|n| *n == 1),
        "at most one RongCloud call per room: {per_room:?}"
    );
    // Every audit event arrived, in per-group order.
    let mut audited: HashMap<String, Vec<bool>> = HashMap::new();
    for e in audit.events() {
        audited
            .entry(e["group_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["kind"] == "mute_all");
    }
    for (g, events) in &group_events {
        let want: Vec<bool> = events.iter().map(|(_, m)| *m).collect();
        assert_eq!(audited.get(g), Some(&want), "{g}: every event, in order");
    }
    assert!(h.dead_letters(1, Duration::from_secs(1)).await.is_empty());
    assert_eq!(
        w.metric("mutebridge_target_circuit_state{target=\"rc\"}"),
        0.0
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_over_its_own_limit_backs_off_alone() {
    // ZEGO's 660300006 is a frequency limit of one group: that group's call
    // waits and goes again, the target's other calls do not.
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    zego.group_fault("hot", Fault::Code(660300006), 2);
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    // Consuming already, so that what follows measures only the back-off.
    post_ok(&h, &mute_all("warm-up")).await;
    assert!(wait_until(WAIT, || !zego.calls().is_empty()).await);
    post_ok(&h, &mute_all("hot")).await;
    let posted = Instant::now();
    for g in 0..5 {
        post_ok(&h, &mute_all(&format!("calm-{g}"))).await;
    }
    assert!(wait_until(WAIT, || zego.calls().iter().any(|c| c.id == "hot")).await);
    let calls = zego.calls();
    let at = |id: &str| {
        calls
            .iter()
            .find(|c| c.id == id)
            .unwrap()
            .at
            .duration_since(posted)
    };
    for g in 0..5 {
        assert!(
            at(&format!("calm-{g}")) < Duration::from_millis(900),
            "calm-{g} waited {:?}",
            at(&format!("calm-{g}"))
        );
    }
    // Two back-offs of a second each.
    assert!(
        at("hot") >= Duration::from_millis(1900),
        "hot went again after {:?}",
        at("hot")
    );
    assert_eq!(
        w.metric("mutebridge_target_rate_limited_total{target=\"zego\"}"),
        0.0,
        "not a pause of the whole target"
    );
    assert_eq!(
        w.metric("mutebridge_target_circuit_state{target=\"zego\"}"),
        0.0
    );
    assert!(h.dead_letters(1, Duration::from_secs(1)).await.is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_mutes_are_renewed_before_they_lapse_across_a_restart() {
    // A RongCloud chatroom gag cannot be permanent: it is sent for the
    // longest the provider holds (here a cap of 6 s, renewed 3 s ahead) and
    // re-applied before it ends, until the member is unmuted.
    let rc = FakeRongCloud::start(RC_KEY, RC_SECRET, 100.0).await;
    let text = format!(
        "{}max_mute_seconds = 6\nrenew_ahead_seconds = 3\n
[[policy.rules]]
name = \"chatroom member mutes to RongCloud\"
when = {{ scope = \"chatroom\", kinds = [\"member_muted\", \"member_unmuted\"] }}
then = [{{ target = \"rc\", chatroom = \"{{group_id}}\" }}]
",
        rc_target(&[&rc], "rc")
    );
    let h = Harness::start_with(|c| {
        policy(c, &text);
        crate::state::quick_rebalance(c);
    })
    .await;
    let gags = |rc: &FakeRongCloud| {
        rc.calls()
            .into_iter()
            .filter(|c| c.action == "/chatroom/user/gag/add.json")
            .count()
    };
    let mut w = h.start_worker().await;
    post_ok(&h, &chatroom(member_mute("room-r", &["u1".into()], None))).await;
    assert!(wait_until(WAIT, || gags(&rc) == 1).await);
    assert_eq!(
        rc.calls()[0].duration,
        Some(1),
        "a 6 s cap is one minute, RongCloud's unit"
    );
    // Renewed every ~3 s (due 3 s before the 6 s cap runs out).
    assert!(
        wait_until(Duration::from_secs(10), || gags(&rc) >= 3).await,
        "{} gags",
        gags(&rc)
    );
    assert!(w.metric("mutebridge_target_renewals_total{target=\"rc\"}") >= 2.0);
    let file = cli_config(&h, "");
    let out = mutebridge(&[
        "state",
        "get",
        "--config",
        file.path().to_str().unwrap(),
        APPKEY,
        "chatroom",
        "room-r",
    ]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let u1 = &doc["applied"]["rc"]["members"]["u1"];
    assert!(
        u1["lapses_at_ms"].as_i64().unwrap() > now_ms(),
        "when RongCloud ends it: {doc}"
    );
    // A restart reads when it lapses from the state topic, and renews on.
    w.stop().await;
    let before = gags(&rc);
    let mut w = h.start_worker().await;
    assert!(
        wait_until(Duration::from_secs(20), || gags(&rc) >= before + 2).await,
        "{} gags after the restart (had {before})",
        gags(&rc)
    );
    // Unmuted: rolled back, and no renewal after.
    post_ok(
        &h,
        &chatroom(op_event(
            "room-r",
            "MUTE",
            json!({"type": "REMOVE", "member": ["u1"]}),
        )),
    )
    .await;
    assert!(
        wait_until(WAIT, || rc
            .calls()
            .iter()
            .any(|c| c.action == "/chatroom/user/gag/rollback.json"))
        .await
    );
    let after = gags_of(&rc, "room-r").len();
    // Another member gagged after the unmute: renewals go out in the order
    // they fall due, so by its second renewal (~6 s) room-r's next one
    // (due within 3 s of its last gag) has had its turn.
    post_ok(&h, &chatroom(member_mute("room-c", &["u2".into()], None))).await;
    assert!(
        wait_until(Duration::from_secs(30), || gags_of(&rc, "room-c").len()
            >= 3)
        .await,
        "the other member's gag was renewed {} times",
        gags_of(&rc, "room-c").len().saturating_sub(1)
    );
    assert_eq!(
        gags_of(&rc, "room-r").len(),
        after,
        "an unmuted member is not renewed"
    );
    assert!(rc.rejected().is_empty(), "{:?}", rc.rejected());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_assigned_while_a_target_is_paused_stay_paused() {
    let _turn = HEAVY.lock().await;
    // Two replicas, ZEGO down: both breakers open and pause. One replica
    // leaves; the survivor gets its partitions, paused too, so their
    // backlog stays in Kafka instead of in the survivor's memory.
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    zego.set_down(true);
    let text = format!(
        "{}rate_per_second = 1000\n{ZEGO_RULE}",
        zego_target(&zego, "zego")
    );
    let h = Harness::start_with(|c| {
        policy(c, &text);
        crate::state::quick_rebalance(c);
        c.worker.circuit_breaker.probe_interval_seconds = 1;
        c.worker.circuit_breaker.max_probe_interval_seconds = 2;
    })
    .await;
    let mut a = h.start_worker().await;
    let mut b = h.start_worker().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let open =
        |w: &WorkerHandle| w.metric("mutebridge_target_circuit_state{target=\"zego\"}") > 0.0;
    for g in 0..40 {
        post_ok(&h, &mute_all(&format!("first-{g}"))).await;
    }
    assert!(
        wait_until(WAIT, || open(&a) && open(&b)).await,
        "both breakers open"
    );
    // A backlog for both replicas' partitions, while they are paused.
    for g in 0..400 {
        post_ok(&h, &mute_all(&format!("backlog-{g}"))).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let buffered =
        |w: &WorkerHandle| w.metric("mutebridge_worker_buffered_events{pipeline=\"zego\"}");
    let held_before = buffered(&a);
    assert!(
        held_before <= 40.0,
        "a paused target fetched its backlog: {held_before}"
    );
    b.stop().await;
    // The survivor takes B's partitions, paused: it reads their records
    // (a second rebuild) but not their events.
    let rebuilds = || a.metric("mutebridge_worker_state_rebuild_seconds_count{pipeline=\"zego\"}");
    assert!(
        wait_until(Duration::from_secs(30), || rebuilds() == 2.0).await,
        "A rebuilt {} times",
        rebuilds()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        buffered(&a) <= held_before + 40.0,
        "A buffered {} after the rebalance (had {held_before})",
        buffered(&a)
    );
    // Back: everything is applied, nothing lost.
    zego.set_down(false);
    let distinct = || {
        let mut ids: Vec<String> = zego.calls().into_iter().map(|c| c.id).collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    assert!(
        wait_until(Duration::from_secs(60), || distinct() == 440).await,
        "{} of 440",
        distinct()
    );
    assert!(h.dead_letters(1, Duration::from_secs(1)).await.is_empty());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_continues_from_the_single_consumer_group_of_earlier_versions() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let hook = FakeWebhook::start("audit-secret").await;
    let text = format!(
        "{}{}{ZEGO_RULE}
[[policy.rules]]
name = \"audit everything\"
then = [{{ target = \"audit\" }}]
",
        zego_target(&zego, "zego"),
        webhook_target(&hook, "audit")
    );
    let h = Harness::start_with(|c| policy(c, &text)).await;
    // What the single consumer group of an earlier version had finished.
    for g in 0..10 {
        post_ok(&h, &mute_all(&format!("old-{g}"))).await;
    }
    let records = h.consume(10, WAIT).await;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for r in &records {
        let e = ends.entry(r.partition).or_default();
        *e = (*e).max(r.offset + 1);
    }
    let legacy: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", h.cluster.bootstrap_servers())
        .set("group.id", &h.config.worker.group_id)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (p, o) in &ends {
        tpl.add_partition_offset(&h.config.kafka.topic, *p, rdkafka::Offset::Offset(*o))
            .unwrap();
    }
    legacy.commit(&tpl, CommitMode::Sync).unwrap();
    drop(legacy);
    for g in 0..5 {
        post_ok(&h, &mute_all(&format!("new-{g}"))).await;
    }
    let mut w = h.start_worker().await;
    assert!(wait_until(WAIT, || zego.calls().len() == 5 && hook.events().len() == 5).await);
    // Both targets finished every event: nothing else can come.
    w.wait_finished(&h, "zego").await;
    w.wait_finished(&h, "audit").await;
    let ids: Vec<String> = zego.calls().into_iter().map(|c| c.id).collect();
    assert!(
        ids.iter().all(|i| i.starts_with("new-")),
        "nothing applied twice: {ids:?}"
    );
    assert_eq!(zego.calls().len(), 5, "nothing skipped, nothing twice");
    assert!(hook
        .events()
        .iter()
        .all(|e| e["group_id"].as_str().unwrap().starts_with("new-")));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_shows_each_target_and_rewind_reapplies_one_target_only() {
    let _turn = HEAVY.lock().await;
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let hook = FakeWebhook::start("audit-secret").await;
    let text = format!(
        "{}{}{ZEGO_RULE}
[[policy.rules]]
name = \"audit everything\"
then = [{{ target = \"audit\" }}]
",
        zego_target(&zego, "zego"),
        webhook_target(&hook, "audit")
    );
    let h = Harness::start_with(|c| {
        policy(c, &text);
        crate::state::quick_rebalance(c);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = h.worker_process_config(&text, dir.path());
    let path = config.to_str().unwrap();
    let (worker, addr) = spawn_role("worker", &config, &dir.path().join("worker.log"));
    assert!(wait_for_200(addr, "/readyz", Duration::from_secs(20)));
    let before = now_ms() - 1000;
    for g in 0..6 {
        post_ok(&h, &mute_all(&format!("rw-{g}"))).await;
    }
    assert!(wait_until(WAIT, || zego.calls().len() == 6 && hook.events().len() == 6).await);
    // From the running worker: each target's breaker, lag and backlog.
    let url = format!("http://{addr}");
    let out = mutebridge(&["targets", "--url", &url]);
    let text_out = String::from_utf8_lossy(&out.stdout);
    eprintln!("targets --url output:\n{text_out}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, group) in [
        ("zego", "mutebridge-workers.zego"),
        ("audit", "mutebridge-workers.audit"),
        ("(state keeper)", "mutebridge-workers "),
    ] {
        assert!(
            text_out
                .lines()
                .any(|l| l.starts_with(name) && l.contains(group)),
            "{name} / {group} in:\n{text_out}"
        );
    }
    assert!(text_out.contains("closed"), "{text_out}");
    // Rewinding while the worker runs is refused, and changes nothing.
    let out = mutebridge(&[
        "rewind",
        "--config",
        path,
        "--target",
        "zego",
        "--to",
        &before.to_string(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("are running"),
        "{err}"
    );
    // The calls are made before their offsets are committed: killed any
    // sooner, the worker may leave the last one uncommitted (a backlog of 1).
    for group in [
        "mutebridge-workers",
        "mutebridge-workers.zego",
        "mutebridge-workers.audit",
    ] {
        h.wait_committed(group).await;
    }
    drop(worker);
    // From Kafka, with no worker: committed offsets against the ends. The
    // killed member's session (6 s) has to run out: the behaviour's own
    // clock, not a condition.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let out = mutebridge(&["targets", "--config", path, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter().all(|r| r["backlog"] == 0),
        "caught up: {rows:?}"
    );
    // Rewind ZEGO only: it applies the groups' mutes again, the audit
    // webhook is untouched.
    let dry = mutebridge(&[
        "rewind",
        "--config",
        path,
        "--target",
        "zego",
        "--to",
        &before.to_string(),
        "--dry-run",
    ]);
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let moved: i64 = plan
        .lines()
        .filter_map(|l| l.split('(').nth(1)?.split(' ').next()?.parse::<i64>().ok())
        .sum();
    assert_eq!(moved, 6, "{plan}");
    let out = mutebridge(&[
        "rewind",
        "--config",
        path,
        "--target",
        "zego",
        "--to",
        &before.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_worker, _) = spawn_role("worker", &config, &dir.path().join("again.log"));
    assert!(
        wait_until(Duration::from_secs(40), || zego.calls().len() == 12).await,
        "{} ZEGO calls\n{}",
        zego.calls().len(),
        std::fs::read_to_string(dir.path().join("again.log")).unwrap_or_default()
    );
    // The worker finished every event (the rewound ones again) on both
    // targets: nothing else can come.
    h.wait_committed("mutebridge-workers.zego").await;
    h.wait_committed("mutebridge-workers.audit").await;
    assert_eq!(zego.calls().len(), 12, "each group once more");
    assert_eq!(hook.events().len(), 6, "the audit webhook is not rewound");
}

/// The audit webhook `hook` as the only target, every event sent to it,
/// every worker setting at its default.
fn audit_only(hook: &FakeWebhook) -> String {
    format!(
        "{}
[[policy.rules]]
name = \"audit everything\"
then = [{{ target = \"audit\" }}]
",
        webhook_target(hook, "audit")
    )
}

/// The groups whose events `hook` accepted, in arrival order.
fn delivered(hook: &FakeWebhook) -> Vec<String> {
    hook.events()
        .iter()
        .map(|e| e["group_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Posts a mute-all (`muted`) or unmute-all of `group`, noted in `sent`.
async fn post_mute(h: &Harness, sent: &mut HashMap<String, Vec<bool>>, group: String, muted: bool) {
    let body = if muted {
        mute_all(&group)
    } else {
        unmute_all(&group)
    };
    post_ok(h, &body).await;
    sent.entry(group).or_default().push(muted);
}

/// The dead letters in the topic now.
async fn letters(h: &Harness) -> Vec<Record> {
    h.dead_letters(usize::MAX, Duration::from_secs(2)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_the_receiver_keeps_refusing_never_holds_its_target() {
    // The issue's scenario, with the default [worker] settings: a webhook
    // receiver answers 500 to one group's event and 200 to all others; 20
    // other groups are posted 12 s after it.
    let hook = FakeWebhook::start("audit-secret").await;
    hook.group_fault("bad", 500, usize::MAX);
    hook.group_fault("bad-2", 500, usize::MAX);
    let text = audit_only(&hook);
    let h = Harness::start_with(|c| {
        policy_with_defaults(c, &text);
        crate::state::quick_rebalance(c);
    })
    .await;
    let mut w = h.start_worker().await;
    post_ok(&h, &mute_all("warm-up")).await;
    assert!(wait_until(WAIT, || hook.events().len() == 1).await);
    let circuit = "mutebridge_target_circuit_state{target=\"audit\"}";
    post_ok(&h, &mute_all("bad")).await;
    let posted = Instant::now();
    assert!(
        wait_until(WAIT, || w.metric(circuit) > 0.0).await,
        "the breaker opens on the bad event alone"
    );
    // The scenario's timing (the others come 12 s later), not a wait.
    tokio::time::sleep_until((posted + Duration::from_secs(12)).into()).await;
    for g in 0..20 {
        post_ok(&h, &mute_all(&format!("other-{g}"))).await;
    }
    let others = |hook: &FakeWebhook, prefix: &str| {
        delivered(hook)
            .iter()
            .filter(|g| g.starts_with(prefix))
            .count()
    };
    // They arrive with the first probe after they came (probes rotate away
    // from the bad event, which failed the earlier ones).
    let mut first_at = None;
    let arrived = wait_until(Duration::from_secs(60), || {
        let n = others(&hook, "other-");
        if n > 0 && first_at.is_none() {
            first_at = Some(Instant::now());
        }
        n == 20
    })
    .await;
    assert!(arrived, "{} of 20 arrived", others(&hook, "other-"));
    let spread = first_at.unwrap().elapsed();
    eprintln!(
        "the 20 other groups: first {:?} after the bad event was posted, all within {spread:?} of the first",
        first_at.unwrap() - posted
    );
    assert!(
        spread <= Duration::from_secs(5),
        "the others came {spread:?} apart after the breaker closed"
    );
    // The bad event spends its own budget and is dead-lettered.
    let mut found = None;
    let deadline = posted + Duration::from_secs(150);
    while found.is_none() && Instant::now() < deadline {
        found = letters(&h).await.into_iter().find(|l| l.key == "bad");
    }
    let letter = found
        .expect("the bad event is dead-lettered within its budget")
        .value;
    eprintln!(
        "bad event dead-lettered {:?} after it was posted",
        posted.elapsed()
    );
    assert_eq!(letter["reason"], "retries_exhausted", "{letter}");
    assert_eq!(letter["attempts"], 8, "worker.retry.max_attempts: {letter}");
    assert!(
        letter["error"].as_str().unwrap().contains("HTTP 500"),
        "{letter}"
    );
    assert_eq!(w.metric(circuit), 0.0, "closed again");
    // A restart while a bad event holds the breaker open does not bring
    // the stall back.
    post_ok(&h, &mute_all("bad-2")).await;
    assert!(wait_until(WAIT, || w.metric(circuit) > 0.0).await);
    w.stop().await;
    let mut w = h.start_worker().await;
    assert!(
        wait_until(Duration::from_secs(40), || w.metric(circuit) > 0.0).await,
        "the restarted worker opens its breaker on bad-2 again"
    );
    let restarted = Instant::now();
    for g in 0..20 {
        post_ok(&h, &mute_all(&format!("after-{g}"))).await;
    }
    assert!(
        wait_until(Duration::from_secs(60), || others(&hook, "after-") == 20).await,
        "{} of 20 arrived after the restart",
        others(&hook, "after-")
    );
    eprintln!(
        "after the restart: the 20 arrived {:?} after they were posted",
        restarted.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut found = None;
    while found.is_none() && Instant::now() < deadline {
        found = letters(&h).await.into_iter().find(|l| l.key == "bad-2");
    }
    assert_eq!(
        found.expect("bad-2 is dead-lettered").value["reason"],
        "retries_exhausted"
    );
    assert_eq!(letters(&h).await.len(), 2, "nothing else dead-lettered");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brownout_after_an_outage_ends_with_nothing_dead_lettered() {
    // Default [worker] settings. The receiver is down for 30 s while 200
    // events come, then for two minutes serves two requests at a time (a
    // second each) and answers 503 to the rest, while an event a second
    // keeps coming.
    let hook = FakeWebhook::start("audit-secret").await;
    let text = audit_only(&hook);
    let h = Harness::start_with(|c| policy_with_defaults(c, &text)).await;
    let mut w = h.start_worker().await;
    post_ok(&h, &mute_all("warm-up")).await;
    assert!(wait_until(WAIT, || hook.events().len() == 1).await);
    let mut sent: HashMap<String, Vec<bool>> = HashMap::new();
    hook.set_down(true);
    let outage = Instant::now();
    for i in 0..200 {
        let g = format!("g-{}", i % 100);
        post_mute(&h, &mut sent, g, i < 100).await;
        // The scenario's pacing (200 events over the outage), not a wait.
        tokio::time::sleep(Duration::from_millis(140)).await;
    }
    // The outage lasts 30 s: the scenario's own clock.
    tokio::time::sleep_until((outage + Duration::from_secs(30)).into()).await;
    assert_eq!(
        hook.events().len(),
        1,
        "nothing delivered while the receiver was down"
    );
    hook.set_down(false);
    hook.set_capacity(Some((2, Duration::from_secs(1))));
    let brownout = Instant::now();
    let mut i = 0;
    while brownout.elapsed() < Duration::from_secs(120) {
        post_mute(&h, &mut sent, format!("late-{i}"), true).await;
        i += 1;
        // The scenario's pacing (an event a second), not a wait.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let during = hook.events().len() - 1;
    hook.set_capacity(None);
    let total: usize = sent.values().map(Vec::len).sum();
    assert!(
        wait_until(Duration::from_secs(60), || hook.events().len() == total + 1).await,
        "{} of {total} delivered",
        hook.events().len() - 1
    );
    eprintln!(
        "brownout: {during} of {total} delivered during the two minutes, {} answered 503 for want of capacity",
        hook.busy()
    );
    let mut got: HashMap<String, Vec<bool>> = HashMap::new();
    for e in hook.events().iter().skip(1) {
        got.entry(e["group_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["kind"] == "mute_all");
    }
    assert_eq!(got, sent, "every event once, in order per group");
    assert!(letters(&h).await.is_empty(), "nothing dead-lettered");
    assert_eq!(
        w.metric("mutebridge_target_circuit_state{target=\"audit\"}"),
        0.0
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_404_while_it_redeploys_loses_nothing() {
    let hook = FakeWebhook::start("audit-secret").await;
    let text = audit_only(&hook);
    let h = Harness::start_with(|c| policy_with_defaults(c, &text)).await;
    let mut w = h.start_worker().await;
    post_ok(&h, &mute_all("warm-up")).await;
    assert!(wait_until(WAIT, || hook.events().len() == 1).await);
    hook.answer_all(Some(404));
    for g in 0..30 {
        post_ok(&h, &mute_all(&format!("redeploy-{g}"))).await;
    }
    // The receiver redeploys for 8 s (retries run into its 404s
    // meanwhile): the scenario's own clock.
    tokio::time::sleep(Duration::from_secs(8)).await;
    hook.answer_all(None);
    assert!(
        wait_until(Duration::from_secs(60), || hook.events().len() == 31).await,
        "{} of 30 delivered",
        hook.events().len() - 1
    );
    assert!(
        letters(&h).await.is_empty(),
        "a 404 is retried, not permanent"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_is_dead_lettered_naming_the_host() {
    // A receiver that answers every delivery with a redirect to another
    // (recording) receiver: the signed request must not go there.
    let elsewhere = FakeWebhook::start("audit-secret").await;
    let target = elsewhere.url();
    let router = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, target)],
                "moved",
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let text = format!(
        "[targets.audit]\nkind = \"webhook\"\nurl = \"http://{addr}/hook\"\nsecret = \"audit-secret\"\n
[[policy.rules]]
name = \"audit everything\"
then = [{{ target = \"audit\" }}]
"
    );
    let (h, mut w) = crate::worker::start_with_policy(&text).await;
    post_ok(&h, &mute_all("moved")).await;
    let letters = h.dead_letters(1, WAIT).await;
    assert_eq!(letters.len(), 1);
    let l = &letters[0].value;
    assert_eq!(l["reason"], "permanent_error", "{l}");
    let error = l["error"].as_str().unwrap();
    assert!(
        error.contains("HTTP 307") && error.contains(&addr.to_string()),
        "{error}"
    );
    assert!(
        !error.contains("/hook"),
        "no URL path in a dead letter: {error}"
    );
    assert_eq!(elsewhere.requests(), 0, "the redirect was not followed");
    w.stop().await;
}

/// The events `mutebridge rewind` printed it re-applies, summed over the
/// partitions (`partition P: FROM -> TO (N events...)`).
fn reapplied(plan: &str) -> i64 {
    plan.lines()
        .filter_map(|l| l.split('(').nth(1)?.split(' ').next()?.parse::<i64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_keeps_its_fence_across_a_second_rewind_and_a_worker_joining_midway() {
    let _turn = HEAVY.lock().await;
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let h = Harness::start_with(|c| {
        policy(c, &text);
        crate::state::quick_rebalance(c);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = h.worker_process_config(&text, dir.path());
    let path = config.to_str().unwrap();
    // The same workers, re-applying one call a second: slow enough that
    // the second one joins (a worker process takes about 15 s to join on
    // the mock cluster) while the first re-applies.
    let slow_dir = tempfile::tempdir().unwrap();
    let slow = h.worker_process_config(
        &format!(
            "{}rate_per_second = 1\n{ZEGO_RULE}",
            zego_target(&zego, "zego")
        ),
        slow_dir.path(),
    );
    let rewind = |to: i64| {
        let started = Instant::now();
        let out = mutebridge(&[
            "rewind",
            "--config",
            path,
            "--target",
            "zego",
            "--to",
            &to.to_string(),
        ]);
        (out, started.elapsed())
    };
    let (mut first, addr) = spawn_role("worker", &config, &dir.path().join("first.log"));
    assert!(wait_for_200(addr, "/readyz", Duration::from_secs(20)));
    let before = now_ms() - 1000;
    for g in 0..20 {
        post_ok(&h, &mute_all(&format!("early-{g}"))).await;
    }
    assert!(wait_until(WAIT, || zego.calls().len() == 20).await);
    // Clock gaps, not waits: `mid` falls strictly between the early and the
    // late events' timestamps (a rewind's `--to` is in milliseconds, the
    // broker's index by record time).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mid = now_ms();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for g in 0..20 {
        post_ok(&h, &mute_all(&format!("late-{g}"))).await;
    }
    assert!(wait_until(WAIT, || zego.calls().len() == 40).await);
    // Refused while a worker runs: before any scan, and changing nothing.
    let (out, took) = rewind(before);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("are running"),
        "{err}"
    );
    eprintln!("rewind refused in {took:?} while a worker ran");
    assert!(took < Duration::from_secs(15), "refused after {took:?}");
    // A worker that stopped cleanly has left the group: a rewind right
    // after is not refused.
    crate::state::terminate(&mut first.0);
    let (out, took) = rewind(mid);
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("rewind right after a clean stop took {took:?}:\n{plan}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(reapplied(&plan), 20, "{plan}");
    // A second, wider rewind keeps the first one's window: 40 in all.
    let (out, _) = rewind(before);
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(reapplied(&plan), 40, "{plan}");
    assert!(plan.contains("left from an earlier rewind"), "{plan}");
    // Two workers, the second joining midway: the revoke's commit carries
    // the fence, so the new owner re-applies the rest.
    let (_a, _) = spawn_role("worker", &slow, &dir.path().join("a.log"));
    assert!(
        wait_until(Duration::from_secs(30), || zego.calls().len() >= 42).await,
        "{} calls",
        zego.calls().len()
    );
    let (_b, _) = spawn_role("worker", &slow, &dir.path().join("b.log"));
    let again = || {
        let mut per: HashMap<String, usize> = HashMap::new();
        for c in zego.calls() {
            *per.entry(c.id).or_default() += 1;
        }
        per
    };
    let all_twice = || again().len() == 40 && again().values().all(|n| *n >= 2);
    assert!(
        wait_until(Duration::from_secs(90), all_twice).await,
        "groups applied again: {} of 40; {} calls",
        again().values().filter(|n| **n >= 2).count(),
        zego.calls().len()
    );
    // The workers finished every event, below the fence too: nothing else
    // can come.
    h.wait_committed("mutebridge-workers.zego").await;
    let calls = zego.calls().len() - 40;
    eprintln!("re-applied with two workers, one joining midway: {calls} calls for the 40 events the rewinds printed");
    assert!((40..=44).contains(&calls), "{calls} calls");
    assert!(zego.rejected().is_empty(), "{:?}", zego.rejected());
    // The joining worker took over partitions still below their fence.
    let joined = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
    assert!(
        joined.contains("rewound: events below this offset are applied again"),
        "{joined}"
    );
}

/// Writes `value` under `key` to the state topic, in the partition of
/// `group`'s events (what a worker of an earlier version left there).
async fn put_record(h: &Harness, group: &str, key: &str, value: &Value) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", h.cluster.bootstrap_servers())
        .create()
        .unwrap();
    let payload = value.to_string();
    let partition = java_partition(group, h.config.kafka.partitions);
    producer
        .send(
            FutureRecord::to(&h.config.worker.state_topic)
                .partition(partition)
                .key(key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// The RongCloud chatroom gags of `room`, each call's users.
fn gags_of(rc: &FakeRongCloud, room: &str) -> Vec<Vec<String>> {
    rc.calls()
        .into_iter()
        .filter(|c| c.action == "/chatroom/user/gag/add.json" && c.id == room)
        .map(|c| c.users)
        .collect()
}

/// RongCloud `rc` gagging chatroom members (never unmuting them), capped at
/// 6 s and renewed 3 s ahead.
fn capped_gags(rc: &FakeRongCloud, kinds: &str) -> String {
    format!(
        "{}max_mute_seconds = 6\nrenew_ahead_seconds = 3\n
[[policy.rules]]
name = \"chatroom member mutes to RongCloud\"
when = {{ scope = \"chatroom\", kinds = [{kinds}] }}
then = [{{ target = \"rc\", chatroom = \"{{group_id}}\" }}]
",
        rc_target(&[rc], "rc")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_mutes_applied_before_records_were_kept_are_renewed_from_the_state() {
    // An upgrade: the state keeper's group states are in the state topic,
    // but the target kept no record of what it applied (old-room), or its
    // record lost a member to trimming (trimmed-room, u2).
    let rc = FakeRongCloud::start(RC_KEY, RC_SECRET, 100.0).await;
    let text = capped_gags(&rc, "\"member_muted\", \"member_unmuted\"");
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let embedded = h.cluster.embedded().unwrap();
    embedded
        .create_topic(&h.config.worker.state_topic, h.config.kafka.partitions)
        .unwrap();
    let set_at = now_ms() - 2000;
    let member =
        |id: &str| json!({"muted": true, "until_ms": null, "at_ms": set_at, "event_id": id});
    for (room, members) in [
        ("old-room", json!({"u1": member("old-mute")})),
        (
            "trimmed-room",
            json!({"u1": member("two-mutes"), "u2": member("two-mutes")}),
        ),
    ] {
        let state = json!({
            "schema": "mutebridge.state/v1", "appkey": APPKEY, "scope": "chatroom",
            "group_id": room, "mute_all": null, "members": members, "updated_at_ms": set_at,
        });
        put_record(&h, room, &format!("{APPKEY}|chatroom|{room}"), &state).await;
    }
    let far = now_ms() + 3_600_000;
    let record = json!({
        "schema": "mutebridge.applied/v1", "target": "rc", "appkey": APPKEY, "scope": "chatroom",
        "group_id": "trimmed-room", "mute_all": null, "updated_at_ms": set_at,
        "members": {"u1": {"muted": true, "until_ms": null, "at_ms": set_at, "event_id": "two-mutes",
                           "applied_at_ms": set_at, "lapses_at_ms": far}},
    });
    put_record(
        &h,
        "trimmed-room",
        &format!("@rc|{APPKEY}|chatroom|trimmed-room"),
        &record,
    )
    .await;
    let mut w = h.start_worker().await;
    // Set 2 s ago and capped at 6 s: due at once, then every ~3 s.
    let renewed = || gags_of(&rc, "old-room").len() >= 2 && gags_of(&rc, "trimmed-room").len() >= 2;
    assert!(
        wait_until(Duration::from_secs(20), renewed).await,
        "old-room: {:?}, trimmed-room: {:?}",
        gags_of(&rc, "old-room"),
        gags_of(&rc, "trimmed-room")
    );
    assert_eq!(gags_of(&rc, "old-room")[0], ["u1"]);
    assert!(
        gags_of(&rc, "trimmed-room").iter().all(|u| u == &["u2"]),
        "only the member the record lost: {:?}",
        gags_of(&rc, "trimmed-room")
    );
    // From now on the target's record holds them.
    let file = cli_config(&h, "");
    let out = mutebridge(&[
        "state",
        "get",
        "--config",
        file.path().to_str().unwrap(),
        APPKEY,
        "chatroom",
        "old-room",
    ]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let u1 = &doc["applied"]["rc"]["members"]["u1"];
    assert_eq!(u1["event_id"], "old-mute", "{doc}");
    assert!(u1["lapses_at_ms"].as_i64().unwrap() > now_ms(), "{doc}");
    assert!(rc.rejected().is_empty(), "{:?}", rc.rejected());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_a_newer_event_changed_is_dropped_not_requeued() {
    // The policy sends member mutes to RongCloud but not unmutes: once the
    // member is unmuted, its gag is not renewed, and nothing is re-queued
    // or written again.
    let rc = FakeRongCloud::start(RC_KEY, RC_SECRET, 100.0).await;
    let text = capped_gags(&rc, "\"member_muted\"");
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    post_ok(&h, &chatroom(member_mute("room-u", &["u1".into()], None))).await;
    assert!(wait_until(WAIT, || gags_of(&rc, "room-u").len() == 2).await);
    post_ok(
        &h,
        &chatroom(op_event(
            "room-u",
            "MUTE",
            json!({"type": "REMOVE", "member": ["u1"]}),
        )),
    )
    .await;
    // The keeper has recorded the unmute, and the target has read it.
    w.wait_finished(&h, "state").await;
    w.wait_finished(&h, "rc").await;
    let writes_line = "mutebridge_worker_state_writes_total{pipeline=\"rc\"}";
    let (gags, writes) = (gags_of(&rc, "room-u").len(), w.metric(writes_line));
    // Another member gagged now: renewals go out in the order they fall
    // due, so by its second renewal (~6 s) room-u's next one (due within
    // 3 s of its last gag) has had its turn, and been dropped.
    post_ok(&h, &chatroom(member_mute("room-c", &["u2".into()], None))).await;
    assert!(
        wait_until(Duration::from_secs(30), || gags_of(&rc, "room-c").len()
            >= 3)
        .await,
        "the other member's gag was renewed {} times",
        gags_of(&rc, "room-c").len().saturating_sub(1)
    );
    assert_eq!(
        gags_of(&rc, "room-u").len(),
        gags,
        "not renewed after the unmute"
    );
    // The other member's record is written once per gag.
    let others = gags_of(&rc, "room-c").len() as f64;
    let more = w.metric(writes_line) - writes - others;
    assert!(
        more <= 1.0,
        "{more} state writes for room-u after the unmute"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_mute_ends_when_its_rule_says_whatever_the_cap() {
    // A rule mutes for 10 s; ZEGO is capped at 4 s (renewed 2 s ahead): the
    // mute is renewed with what is left of the 10 s, then no more.
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let text = format!(
        "{}max_mute_seconds = 4\nrenew_ahead_seconds = 2\n
[[policy.rules]]
name = \"member mutes for ten seconds\"
when = {{ scope = \"group\", kinds = [\"member_muted\"] }}
then = [{{ target = \"zego\", group = \"{{group_id}}\", mute_seconds = 10 }}]
",
        zego_target(&zego, "zego")
    );
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    post_ok(
        &h,
        &member_mute("warm-up", &["u0".into()], Some(now_ms() + 60_000)),
    )
    .await;
    assert!(wait_until(WAIT, || !zego.calls().is_empty()).await);
    let posted = Instant::now();
    post_ok(&h, &member_mute("g-rel", &["u1".into()], None)).await;
    // The mute's whole life (10 s) and the time a renewal past its end
    // would take: the behaviour's own clock. (No other mute can show the
    // renewals running past it: the rule ends every member mute at 10 s.)
    tokio::time::sleep(Duration::from_secs(16)).await;
    let calls: Vec<Call> = zego
        .calls()
        .into_iter()
        .filter(|c| c.id == "g-rel")
        .collect();
    let durations: Vec<i64> = calls.iter().map(|c| c.duration.unwrap()).collect();
    eprintln!("ZEGO durations for a 10 s mute capped at 4 s: {durations:?}");
    assert!(calls.len() >= 2, "renewed while it lasts: {durations:?}");
    assert!(
        durations.iter().all(|d| (1..=4).contains(d)),
        "{durations:?}"
    );
    let last = calls.last().unwrap();
    let ends =
        last.at.duration_since(posted) + Duration::from_secs(*durations.last().unwrap() as u64);
    assert!(
        ends <= Duration::from_secs(12),
        "the last call holds the mute until {ends:?} after the event"
    );
    assert!(
        last.at.duration_since(posted) <= Duration::from_secs(10),
        "a call after the rule's end: {durations:?}"
    );
    w.stop().await;
}
