//! The worker's consumer groups on a real group coordinator: the
//! coordinator's broker killed while the workers commit, replicas killed
//! and added during a backlog, a worker frozen past its session timeout,
//! and the new consumer group protocol (KIP-848).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use mutebridge::Config;
use serde_json::Value;

use crate::cluster::{self, config, eventually, process_config, turn};
use crate::providers::{FakeWebhook, FakeZego, Fault, Provider};
use crate::support::*;

const ZEGO_APP: u32 = 12345;
const ZEGO_SECRET: &str = "9193cc662a4c0ec135ec71fb57194b38";

fn zego_target(z: &FakeZego) -> String {
    format!(
        "[targets.zego]\nkind = \"zego\"\nbase_url = \"{}\"\napp_id = {ZEGO_APP}\nserver_secret = \"{ZEGO_SECRET}\"\nfrom_user_id = \"moderation-bot\"\n",
        z.base_url()
    )
}

fn audit_target(h: &FakeWebhook) -> String {
    format!(
        "[targets.audit]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"audit-secret\"\n",
        h.url()
    )
}

const RULES: &str = r#"
[[policy.rules]]
name = "group mutes to ZEGO"
when = { scope = "group", kinds = ["mute_all", "unmute_all"] }
then = [{ target = "zego", group = "{group_id}" }]

[[policy.rules]]
name = "everything to the audit"
when = { scope = "group" }
then = [{ target = "audit" }]
"#;

const RULES_ZEGO: &str = r#"
[[policy.rules]]
name = "group mutes to ZEGO"
when = { scope = "group", kinds = ["mute_all", "unmute_all"] }
then = [{ target = "zego", group = "{group_id}" }]
"#;

fn with_policy(config: &mut Config, text: &str) {
    let parsed = Config::parse(text, std::path::Path::new("policy.toml")).unwrap();
    config.targets = parsed.targets;
    config.policy = parsed.policy;
}

/// The ids of `hook`'s deliveries, each group's in first-arrival order.
fn first_arrivals(hook: &FakeWebhook) -> (BTreeMap<String, Vec<String>>, usize) {
    let mut first: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = HashSet::new();
    let events = hook.events();
    for e in &events {
        let id = e["id"].as_str().unwrap().to_owned();
        if seen.insert(id.clone()) {
            first
                .entry(e["group_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(id);
        }
    }
    (first, events.len())
}

/// Each group's last mute-all at ZEGO (`true`: muted; ZEGO's unmute is a
/// `MuteGroup` without `IsAllMuted`, with `Duration=0`).
fn zego_final(z: &FakeZego) -> HashMap<String, bool> {
    z.calls()
        .into_iter()
        .filter(|c| c.action == "MuteGroup")
        .map(|c| (c.id, c.all_muted == Some(true)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_group_coordinator_killed_while_workers_commit_loses_nothing_and_commits_in_the_end() {
    let t = turn().await;
    let bootstrap = t.bootstrap();
    let hook = FakeWebhook::start("audit-secret").await;
    let mut base = config(&t, "coordinator");
    with_policy(
        &mut base,
        &format!("{}\n[[policy.rules]]\nname = \"all\"\nwhen = {{ scope = \"group\" }}\nthen = [{{ target = \"audit\" }}]\n", audit_target(&hook)),
    );
    let h = Harness::start_with(|c| *c = base.clone()).await;
    let mut w = h.start_worker_with(&h.config).await;
    let topic = h.config.kafka.topic.clone();
    let partitions = h.config.kafka.partitions;
    let group = format!("{}.audit", h.config.worker.group_id);

    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let post = |g: String, n: usize| {
        let body = op_event(
            &g,
            "MUTE",
            serde_json::json!({"type": "ADD", "member": [format!("seq-{n:04}")]}),
        );
        (g, body)
    };
    // Traffic before, during and after the coordinator's death.
    let mut killed = None;
    for round in 0..30 {
        for i in 0..20 {
            let (g, body) = post(format!("co-{i:02}"), round);
            loop {
                let r = h.post(&body).await;
                if r.status == 200 {
                    break;
                }
                assert_eq!(r.status, 503, "{:?}", r.body);
                // A sender's retry after a 503, not a wait.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            sent.entry(g)
                .or_default()
                .push(body["callId"].as_str().unwrap().to_owned());
        }
        if round == 10 {
            // The worker has committed by now: the coordinator is known.
            let node = cluster::coordinator(&bootstrap, &group);
            t.kafka.kill(node as u32).unwrap();
            eprintln!("killed node {node}, coordinator of {group}");
            killed = Some(node);
        }
        // The traffic's pacing (before, during and after), not a wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total: usize = sent.values().map(Vec::len).sum();
    assert!(
        eventually(Duration::from_secs(90), {
            let hook = hook.clone();
            move || {
                first_arrivals(&hook)
                    .0
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
                    >= total
            }
        })
        .await,
        "delivered {} of {total}",
        first_arrivals(&hook)
            .0
            .values()
            .map(Vec::len)
            .sum::<usize>()
    );
    let (first, deliveries) = first_arrivals(&hook);
    assert_eq!(first, sent, "every event, each group in order");
    let repeats = deliveries - total;
    assert!(repeats <= total / 5, "{repeats} repeats of {total}");
    // Every commit got through in the end: a failed one was issued again.
    let ends = cluster::ends(&bootstrap, &topic, partitions);
    let (b, tp, g) = (bootstrap.clone(), topic.clone(), group.clone());
    let e = ends.clone();
    assert!(
        eventually(Duration::from_secs(60), move || cluster::committed(
            &b, &g, &tp, partitions
        ) == e)
        .await,
        "committed {:?}, ends {ends:?}",
        cluster::committed(&bootstrap, &group, &topic, partitions)
    );
    let failures = w.metric("mutebridge_worker_commit_failures_total{pipeline=\"audit\"}");
    eprintln!("{total} events, {repeats} repeats, {failures} commit(s) refused and issued again");
    t.kafka.restart(killed.unwrap() as u32).unwrap();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_killed_and_added_during_a_backlog_lose_nothing_keep_order_and_memory_bounded() {
    let t = turn().await;
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 20.0).await;
    let hook = FakeWebhook::start("audit-secret").await;
    let base = config(&t, "rebalance");
    let h = Harness::start_with(|c| *c = base.clone()).await;
    let dir = cluster::Logs::new();
    let fragment = format!(
        "[worker.retry]\ninitial_backoff_ms = 100\nmax_backoff_ms = 1000\n\n{}{}\nrate_per_second = 20\n{RULES}",
        audit_target(&hook),
        zego_target(&zego).trim_end()
    );
    let file = process_config(&h.config, &fragment, dir.path(), "worker");
    let spawn = |n: usize| spawn_role("worker", &file, &dir.path().join(format!("worker-{n}.log")));
    let mut workers: Vec<(crate::support::Killed, std::net::SocketAddr)> =
        (0..3).map(spawn).collect();
    // Everyone has partitions before the backlog builds.
    for (_, ops) in &workers {
        let ops = *ops;
        assert!(
            eventually(Duration::from_secs(60), move || !cluster::owned(
                ops, "zego"
            )
            .is_empty())
            .await
        );
    }
    // A backlog: 60 groups, each muted and unmuted in turn 10 times, far
    // more calls than ZEGO's 20/s takes at once.
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last: HashMap<String, bool> = HashMap::new();
    for round in 0..10 {
        for i in 0..60 {
            let g = format!("rb-{i:02}");
            let muted = round % 2 == 0;
            let body = if muted {
                mute_all(&g)
            } else {
                op_event(
                    &g,
                    "UPDATE",
                    serde_json::json!({"type": "MUTE", "mute": false}),
                )
            };
            let r = h.post(&body).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            sent.entry(g.clone())
                .or_default()
                .push(body["callId"].as_str().unwrap().to_owned());
            last.insert(g, muted);
        }
        if round == 3 {
            // kill -9 one replica mid-backlog, and add another.
            drop(workers.remove(1));
            workers.push(spawn(3));
        }
        // The traffic's pacing (the replicas change mid-backlog), not a wait.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let total: usize = sent.values().map(Vec::len).sum();
    assert!(
        eventually(Duration::from_secs(180), {
            let hook = hook.clone();
            move || {
                first_arrivals(&hook)
                    .0
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
                    >= total
            }
        })
        .await,
        "the audit got {} of {total}",
        first_arrivals(&hook)
            .0
            .values()
            .map(Vec::len)
            .sum::<usize>()
    );
    let (first, deliveries) = first_arrivals(&hook);
    assert_eq!(first, sent, "every event at the audit, each group in order");
    // ZEGO ends in each group's newest state.
    assert!(
        eventually(Duration::from_secs(120), {
            let (zego, last) = (zego.clone(), last.clone());
            move || zego_final(&zego) == last
        })
        .await,
        "ZEGO's final states differ from the newest: {:?}",
        zego_final(&zego)
            .iter()
            .filter(|(g, m)| last.get(*g) != Some(m))
            .collect::<Vec<_>>()
    );
    let peaks: Vec<f64> = workers
        .iter()
        .map(|(k, _)| cluster::peak_rss_mib(k.0.id()))
        .collect();
    eprintln!(
        "{total} events; audit deliveries {deliveries} ({} repeats); ZEGO calls {}; worker peak RSS {peaks:?} MiB",
        deliveries - total,
        zego.calls().len()
    );
    for p in peaks {
        assert!(p > 0.0 && p < 200.0, "a worker peaked at {p} MiB");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_frozen_past_its_session_never_lands_an_older_state_after_the_new_owners() {
    let t = turn().await;
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 100.0).await;
    let hook = FakeWebhook::start("audit-secret").await;
    let base = config(&t, "frozen");
    let h = Harness::start_with(|c| *c = base.clone()).await;
    let dir = cluster::Logs::new();
    // Retries that sleep through the freeze: up to 3 s after a failure
    // (full jitter), far less than the freeze.
    let fragment = format!(
        "[worker.retry]\ninitial_backoff_ms = 3000\nmax_backoff_ms = 3000\n\n{}{}{RULES}",
        audit_target(&hook),
        zego_target(&zego)
    );
    let file = process_config(&h.config, &fragment, dir.path(), "worker");
    let (a, a_ops) = spawn_role("worker", &file, &dir.path().join("a.log"));
    let (_b, b_ops) = spawn_role("worker", &file, &dir.path().join("b.log"));
    assert!(
        eventually(Duration::from_secs(60), move || {
            !cluster::owned(a_ops, "zego").is_empty() && !cluster::owned(b_ops, "zego").is_empty()
        })
        .await,
        "both workers hold partitions"
    );
    // Groups whose partitions A holds.
    let held_by_a = cluster::owned(a_ops, "zego");
    let partitions = h.config.kafka.partitions;
    let groups: Vec<String> = (0..400)
        .map(|i| format!("fz-{i:03}"))
        .filter(|g| held_by_a.contains(&java_partition(g, partitions)))
        .take(5)
        .collect();
    assert_eq!(groups.len(), 5);
    // Mute them; ZEGO fails each group's first call, so A waits up to 3 s
    // before retrying, and A freezes (SIGSTOP) while most of them wait.
    for g in &groups {
        zego.group_fault(g, Fault::Status(503), 1);
        let r = h.post(&mute_all(g)).await;
        assert_eq!(r.status, 200);
    }
    let z = zego.clone();
    assert!(
        eventually(Duration::from_secs(20), move || z.requests() >= 5).await,
        "A tried each group once"
    );
    let pid = a.0.id() as i32;
    // SAFETY: a child process of this test.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let frozen = Instant::now();
    // B takes A's partitions after the 6 s session timeout, applies the
    // mutes again, then the unmutes that follow.
    let a_partitions = held_by_a.clone();
    assert!(
        eventually(Duration::from_secs(60), move || {
            let b = cluster::owned(b_ops, "zego");
            a_partitions.iter().all(|p| b.contains(p))
        })
        .await,
        "B took A's partitions"
    );
    eprintln!(
        "B took over {:.1} s after the freeze",
        frozen.elapsed().as_secs_f64()
    );
    let z = zego.clone();
    let gs = groups.clone();
    assert!(
        eventually(Duration::from_secs(30), move || {
            let f = zego_final(&z);
            gs.iter().all(|g| f.get(g) == Some(&true))
        })
        .await,
        "B applied the mutes"
    );
    for g in &groups {
        let r = h
            .post(&op_event(
                g,
                "UPDATE",
                serde_json::json!({"type": "MUTE", "mute": false}),
            ))
            .await;
        assert_eq!(r.status, 200);
    }
    let z = zego.clone();
    let gs = groups.clone();
    assert!(
        eventually(Duration::from_secs(30), move || {
            let f = zego_final(&z);
            gs.iter().all(|g| f.get(g) == Some(&false))
        })
        .await,
        "B applied the unmutes: {:?}",
        zego.calls()
            .iter()
            .map(|c| (c.id.clone(), c.all_muted))
            .collect::<Vec<_>>()
    );
    // A wakes up with its retries due at once. Which guard stops them is
    // a race: the lease (src/worker/lease.rs) holds them until the
    // coordinator answers; on this cluster the rebalance that revokes A's
    // partitions usually comes first, so this test proves the outcome, not
    // which of the two gave it; the lease alone is pinned by the unit test
    // `after_a_stall_nothing_is_sent_until_the_group_confirms_the_partition`
    // in src/worker/engine.rs.
    let calls_before = zego.calls().len();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let woken = Instant::now();
    // The window ends once A has run its check (the coordinator answered
    // its commit after the stall) and the group has settled again with A
    // in it: its due retries were dropped or held by then, never sent.
    let log_a = dir.path().join("a.log");
    let all = h.config.kafka.partitions;
    assert!(
        eventually(Duration::from_secs(90), move || {
            let checked = std::fs::read_to_string(&log_a).is_ok_and(|log| {
                log.lines()
                    .any(|l| l.contains("after the stall") && l.contains("zego"))
            });
            let (a, b) = (cluster::owned(a_ops, "zego"), cluster::owned(b_ops, "zego"));
            let mut both: Vec<i32> = a.iter().chain(&b).copied().collect();
            both.sort_unstable();
            checked && !a.is_empty() && both == (0..all).collect::<Vec<_>>()
        })
        .await,
        "A checked its membership and rejoined; B holds {:?}, A {:?}",
        cluster::owned(b_ops, "zego"),
        cluster::owned(a_ops, "zego")
    );
    eprintln!(
        "A checked its membership and the group settled {:.1} s after the wake",
        woken.elapsed().as_secs_f64()
    );
    let late: Vec<_> = zego.calls()[calls_before..]
        .iter()
        .filter(|c| groups.contains(&c.id))
        .cloned()
        .collect();
    assert!(
        late.is_empty(),
        "the woken worker sent stale calls: {late:?}"
    );
    let finals = zego_final(&zego);
    for g in &groups {
        assert_eq!(finals.get(g), Some(&false), "{g} must stay unmuted at ZEGO");
    }
    // And the state topic's newest state of each group is the unmute.
    let state = h.config.worker.state_topic.clone();
    let bootstrap = t.bootstrap();
    let newest = tokio::task::spawn_blocking(move || newest_states(&bootstrap, &state, partitions))
        .await
        .unwrap();
    for g in &groups {
        let key = format!("{}|group|{g}", APPKEY);
        let s = newest
            .get(&key)
            .unwrap_or_else(|| panic!("no state for {key}"));
        assert_eq!(s["mute_all"]["muted"], Value::Bool(false), "{key}: {s}");
    }
    let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
    assert!(log.contains("was stalled"), "A noticed its stall");
}

/// The newest record of each group-state key in the state topic.
fn newest_states(bootstrap: &str, topic: &str, partitions: i32) -> HashMap<String, Value> {
    let records = read_topic_raw(bootstrap, topic, partitions, Duration::from_secs(10));
    let mut newest = HashMap::new();
    for (key, value) in records {
        if key.starts_with('@') {
            continue;
        }
        match value {
            Some(v) => {
                newest.insert(key, serde_json::from_slice(&v).unwrap());
            }
            None => {
                newest.remove(&key);
            }
        }
    }
    newest
}

/// Every record of `topic` (key, value) in offset order per partition,
/// tombstones included, until nothing new arrives for a second.
fn read_topic_raw(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    limit: Duration,
) -> Vec<(String, Option<Vec<u8>>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tier-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + limit;
    let mut quiet_since = Instant::now();
    let mut out = Vec::new();
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_secs(2) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            quiet_since = Instant::now();
            out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(<[u8]>::to_vec),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_consumer_group_protocol_splits_partitions_and_commits() {
    let t = turn().await;
    let hook = FakeWebhook::start("audit-secret").await;
    let mut base = config(&t, "kip848");
    with_policy(
        &mut base,
        &format!("{}\n[[policy.rules]]\nname = \"all\"\nwhen = {{ scope = \"group\" }}\nthen = [{{ target = \"audit\" }}]\n", audit_target(&hook)),
    );
    base.kafka.client.insert(
        "group.protocol".into(),
        toml::Value::String("consumer".into()),
    );
    let h = Harness::start_with(|c| *c = base.clone()).await;
    let mut one = h.start_worker_with(&h.config).await;
    for i in 0..60 {
        assert_eq!(h.post(&mute_all(&format!("kip-{i:02}"))).await.status, 200);
    }
    let hk = hook.clone();
    assert!(eventually(Duration::from_secs(60), move || hk.events().len() >= 60).await);
    // A second member joins: the broker moves some partitions to it.
    let mut two = h.start_worker_with(&h.config).await;
    let line = events_line("audit", "applied");
    let (mut sent, mut two_applied) = (60, 0.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while two_applied == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the second member never got a partition"
        );
        for i in 0..12 {
            assert_eq!(
                h.post(&mute_all(&format!("kip-late-{sent}-{i}")))
                    .await
                    .status,
                200
            );
        }
        sent += 12;
        // The traffic's pacing while the loop waits for its condition.
        tokio::time::sleep(Duration::from_secs(1)).await;
        two_applied = two.metric(&line);
    }
    let hk = hook.clone();
    let all = sent;
    assert!(
        eventually(Duration::from_secs(60), move || {
            hk.events()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect::<HashSet<_>>()
                .len()
                >= all
        })
        .await
    );
    eprintln!(
        "group.protocol=consumer: {sent} events; the first member applied {}, the second {}",
        one.metric(&line),
        two.metric(&line)
    );
    assert!(one.metric(&line) > 0.0 && two.metric(&line) > 0.0);
    // Committed to the end, under the new protocol too.
    cluster::committed_to_end(
        &t.bootstrap(),
        &format!("{}.audit", h.config.worker.group_id),
        &h.config.kafka.topic,
        h.config.kafka.partitions,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    two.stop().await;
    one.stop().await;
}

/// The events a rewind's plan says it re-applies, summed over partitions.
fn reapplied(plan: &str) -> i64 {
    plan.lines()
        .filter_map(|l| l.split('(').nth(1)?.split(' ').next()?.parse::<i64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewind_looks_offsets_up_by_time_and_keeps_its_fence_across_a_worker_joining() {
    let t = turn().await;
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let base = config(&t, "rewind");
    let h = Harness::start_with(|c| *c = base.clone()).await;
    let dir = cluster::Logs::new();
    let fast = process_config(
        &h.config,
        &format!("{}{RULES_ZEGO}", zego_target(&zego)),
        dir.path(),
        "fast",
    );
    // Re-applying one call a second: slow enough that the second worker
    // joins while the first re-applies.
    let slow = process_config(
        &h.config,
        &format!("{}rate_per_second = 1\n{RULES_ZEGO}", zego_target(&zego)),
        dir.path(),
        "slow",
    );
    let rewind = |to: i64| {
        let started = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mutebridge"))
            .args([
                "rewind",
                "--config",
                fast.to_str().unwrap(),
                "--target",
                "zego",
                "--to",
                &to.to_string(),
            ])
            .output()
            .unwrap();
        (out, started.elapsed())
    };
    let (mut first, ops) = spawn_role("worker", &fast, &dir.path().join("first.log"));
    assert!(
        eventually(Duration::from_secs(60), move || !cluster::owned(
            ops, "zego"
        )
        .is_empty())
        .await
    );
    let before = now_ms() - 1000;
    for g in 0..20 {
        assert_eq!(h.post(&mute_all(&format!("early-{g}"))).await.status, 200);
    }
    let z = zego.clone();
    assert!(eventually(Duration::from_secs(30), move || z.calls().len() == 20).await);
    // Clock gaps, not waits: `mid` falls strictly between the early and the
    // late events' timestamps.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mid = now_ms();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for g in 0..20 {
        assert_eq!(h.post(&mute_all(&format!("late-{g}"))).await.status, 200);
    }
    let z = zego.clone();
    assert!(eventually(Duration::from_secs(30), move || z.calls().len() == 40).await);
    // Refused at once while a worker holds the group: the broker names
    // its members.
    let (out, took) = rewind(before);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("are running"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "refused after {took:?}");
    // After a clean stop, the broker's offsets-for-times places the rewind
    // (no scan of the partitions), in seconds.
    // SAFETY: a child process of this test.
    unsafe { libc::kill(first.0.id() as i32, libc::SIGTERM) };
    let _ = first.0.wait();
    let (out, took) = rewind(mid);
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("reading the partitions instead"), "{err}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(reapplied(&plan), 20, "{plan}");
    // A second, wider rewind keeps the first one's window: 40 in all.
    let (out, took2) = rewind(before);
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(reapplied(&plan), 40, "{plan}");
    eprintln!("rewinds on real Kafka took {took:?} and {took2:?}:\n{plan}");
    // Two slow workers, the second joining midway: the revoke's commit
    // carries the fence, so the new owner re-applies the rest.
    let (_a, _) = spawn_role("worker", &slow, &dir.path().join("a.log"));
    let z = zego.clone();
    assert!(eventually(Duration::from_secs(60), move || z.calls().len() >= 42).await);
    let (_b, _) = spawn_role("worker", &slow, &dir.path().join("b.log"));
    let per_group = |z: &FakeZego| {
        let mut per: HashMap<String, usize> = HashMap::new();
        for c in z.calls() {
            *per.entry(c.id).or_default() += 1;
        }
        per
    };
    let z = zego.clone();
    assert!(
        eventually(Duration::from_secs(120), move || {
            let per = per_group(&z);
            per.len() == 40 && per.values().all(|n| *n >= 2)
        })
        .await,
        "groups applied again: {} of 40",
        per_group(&zego).values().filter(|n| **n >= 2).count()
    );
    // Both workers committed to the end: every call the rewinds cause
    // has been made, so none can still be on its way.
    cluster::committed_to_end(
        &t.bootstrap(),
        &format!("{}.zego", h.config.worker.group_id),
        &h.config.kafka.topic,
        h.config.kafka.partitions,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let calls = zego.calls().len() - 40;
    eprintln!("re-applied with two workers, one joining midway: {calls} calls for the 40 events the rewinds printed");
    assert!((40..=44).contains(&calls), "{calls} calls");
}
