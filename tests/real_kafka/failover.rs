//! Ingest and the worker while brokers fail: a partition leader killed
//! mid-flow, one broker down, two of three down, and a producer that fails
//! fatally. What the mock cluster cannot show: `acks=all` against replicas
//! that can be missing, the idempotent producer's retries across a leader
//! change, and a leader that actually moves.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mutebridge::Config;
use serde_json::{json, Value};

use crate::cluster::{self, config, eventually, turn};
use crate::providers::FakeWebhook;
use crate::support::*;

/// Every event of the group scope to a webhook receiver (it gets each
/// event, in order, with no stale-event guard in between).
fn audit(config: &mut Config, hook: &FakeWebhook) {
    let text = format!(
        "[targets.audit]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"audit-secret\"\n\n[[policy.rules]]\nname = \"everything to the audit\"\nwhen = {{ scope = \"group\" }}\nthen = [{{ target = \"audit\" }}]\n",
        hook.url()
    );
    let parsed = Config::parse(&text, std::path::Path::new("audit.toml")).unwrap();
    config.targets = parsed.targets;
    config.policy = parsed.policy;
}

/// A member mute whose member names the group's sequence number, so the
/// order can be read back from the topic and from the receiver.
fn numbered(group: &str, n: usize) -> serde_json::Map<String, Value> {
    op_event(
        group,
        "MUTE",
        json!({"type": "ADD", "member": [format!("seq-{n:04}")]}),
    )
}

/// Posts `body` until it is answered 200 (published or duplicate), as a
/// sender that retries a 503 with the same callId would; returns the
/// statuses seen.
async fn post_until_taken(h: &Harness, body: &serde_json::Map<String, Value>) -> Vec<u16> {
    let mut seen = Vec::new();
    for _ in 0..60 {
        let r = h.post(body).await;
        seen.push(r.status);
        match r.status {
            200 => return seen,
            503 => {
                let after = r
                    .headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                assert!(after.is_some(), "a 503 without Retry-After: {:?}", r.body);
                // A sender's retry after a 503, not a wait.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    panic!("never taken: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_mid_flow_loses_nothing_answered_200_duplicates_nothing_and_keeps_order() {
    let t = turn().await;
    let bootstrap = t.bootstrap();
    let hook = FakeWebhook::start("audit-secret").await;
    let mut base = config(&t, "leader-kill");
    audit(&mut base, &hook);
    let h = Harness::start_with(|c| *c = base.clone()).await;
    let mut w = h.start_worker_with(&h.config).await;
    let topic = h.config.kafka.topic.clone();
    let partitions = h.config.kafka.partitions;

    // 24 groups, each sending 30 callbacks one after another (a sender
    // waits for its answer), all groups at once.
    let groups: Vec<String> = (0..24).map(|i| format!("lk-{i:02}")).collect();
    let h = Arc::new(h);
    let sent: Arc<Mutex<HashMap<String, Vec<String>>>> = Default::default();
    let statuses: Arc<Mutex<Vec<u16>>> = Default::default();
    // Per callback: when it was first sent and when it was taken (200).
    let timings: Arc<Mutex<HashMap<String, (Instant, Instant)>>> = Default::default();
    let victim_group = groups[0].clone();
    let victim_partition = java_partition(&victim_group, partitions);
    let mut senders = Vec::new();
    for g in groups.clone() {
        let (h, sent, statuses) = (h.clone(), sent.clone(), statuses.clone());
        let timings = timings.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..30 {
                let body = numbered(&g, n);
                let first_sent = Instant::now();
                let seen = post_until_taken(&h, &body).await;
                statuses.lock().unwrap().extend(seen);
                let id = body["callId"].as_str().unwrap().to_owned();
                timings
                    .lock()
                    .unwrap()
                    .insert(id.clone(), (first_sent, Instant::now()));
                sent.lock().unwrap().entry(g.clone()).or_default().push(id);
                // The sender's pacing, not a wait.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // A third of the way in, kill -9 the broker leading a group's partition.
    assert!(
        cluster::eventually(Duration::from_secs(60), {
            let sent = sent.clone();
            move || sent.lock().unwrap().values().map(Vec::len).sum::<usize>() >= 240
        })
        .await
    );
    let victim = cluster::leader(&bootstrap, &topic, victim_partition);
    let killed_at = Instant::now();
    t.kafka.kill(victim as u32).unwrap();
    eprintln!("killed node {victim}, leader of {topic}/{victim_partition}");
    for s in senders {
        s.await.unwrap();
    }
    let sending_took = killed_at.elapsed();
    let sent = sent.lock().unwrap().clone();
    let total: usize = sent.values().map(Vec::len).sum();
    assert_eq!(total, 24 * 30);
    let answered: Vec<u16> = statuses.lock().unwrap().clone();
    let unavailable = answered.iter().filter(|s| **s == 503).count();
    // How long a sender waited for its callback to be taken, retries of a
    // 503 included: the failover as Easemob sees it.
    let longest_wait = timings
        .lock()
        .unwrap()
        .values()
        .map(|(first, taken)| taken.duration_since(*first))
        .max()
        .unwrap_or_default();
    eprintln!(
        "{total} callbacks taken; {unavailable} answers were 503 during the failover; the longest a callback waited to be taken: {:.1} s; the rest of the flow took {:.1} s after the kill",
        longest_wait.as_secs_f64(),
        sending_took.as_secs_f64()
    );

    // In the topic: each callback exactly once, each group in send order.
    let records = h.consume(total + 50, Duration::from_secs(30)).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut order: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for r in &records {
        let id = r.value["id"].as_str().unwrap().to_owned();
        *count.entry(id.clone()).or_default() += 1;
        order.entry(r.key.clone()).or_default().push((r.offset, id));
    }
    let duplicated: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "duplicates in the topic: {duplicated:?}"
    );
    for (g, ids) in &sent {
        for id in ids {
            assert_eq!(
                count.get(id),
                Some(&1),
                "{g}: {id} answered 200 but not in the topic"
            );
        }
        let mut in_topic = order.remove(g).unwrap();
        in_topic.sort();
        let in_topic: Vec<String> = in_topic.into_iter().map(|(_, id)| id).collect();
        assert_eq!(
            &in_topic, ids,
            "{g}: the topic's order is not the send order"
        );
    }

    // The worker went on without a restart: every event reached the
    // receiver, each group's first arrivals in order.
    let expected = total;
    assert!(
        eventually(Duration::from_secs(90), {
            let hook = hook.clone();
            move || {
                let ids: std::collections::HashSet<String> = hook
                    .events()
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_owned())
                    .collect();
                ids.len() >= expected
            }
        })
        .await,
        "the worker delivered {} distinct events of {expected}",
        hook.events().len()
    );
    let delivered_at = Instant::now();
    let mut first: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for e in hook.events() {
        let id = e["id"].as_str().unwrap().to_owned();
        if seen.insert(id.clone()) {
            first
                .entry(e["group_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(id);
        }
    }
    for (g, ids) in &sent {
        assert_eq!(
            first.get(g),
            Some(ids),
            "{g}: the receiver's order is not the send order"
        );
    }
    let repeats = hook.events().len() - expected;
    eprintln!(
        "the receiver got {} deliveries for {expected} events ({repeats} repeats), the last {:.1} s after the kill",
        hook.events().len(),
        delivered_at.duration_since(killed_at).as_secs_f64()
    );

    // The node comes back: every partition fully in sync again, and the
    // worker's groups have committed everything.
    t.kafka.restart(victim as u32).unwrap();
    let topics = [topic.clone(), h.config.worker.state_topic.clone()];
    for tp in topics {
        let b = bootstrap.clone();
        assert!(
            eventually(Duration::from_secs(60), move || cluster::fully_in_sync(
                &b, &tp
            ))
            .await,
            "a partition stayed under-replicated after the node came back"
        );
    }
    let groups = [
        h.config.worker.group_id.clone(),
        format!("{}.audit", h.config.worker.group_id),
    ];
    for g in groups {
        let ends = cluster::ends(&bootstrap, &topic, partitions);
        let (b, tp, g2, e2) = (bootstrap.clone(), topic.clone(), g.clone(), ends.clone());
        let all_committed = eventually(Duration::from_secs(30), move || {
            cluster::committed(&b, &g2, &tp, partitions) == e2
        })
        .await;
        assert!(
            all_committed,
            "consumer group {g} left events uncommitted: committed {:?}, ends {ends:?}",
            cluster::committed(&bootstrap, &g, &topic, partitions)
        );
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_broker_down_is_business_as_usual_two_down_is_503_within_the_deadline_never_200() {
    let t = turn().await;
    let bootstrap = t.bootstrap();
    let base = config(&t, "quorum");
    let h = Harness::start_with(|c| *c = base.clone()).await;
    let topic = h.config.kafka.topic.clone();
    let deadline = Duration::from_millis(h.config.http.ack_timeout_ms);

    // One broker down: once its partitions have new leaders, callbacks are
    // answered 200 as usual (two in-sync replicas remain).
    t.kafka.kill(3).unwrap();
    let b = bootstrap.clone();
    let tp = topic.clone();
    assert!(
        eventually(Duration::from_secs(60), move || cluster::leads_nothing(
            &b, &tp, 3
        ))
        .await,
        "leaders never moved off the killed node"
    );
    for i in 0..30 {
        let r = h.post(&mute_all(&format!("one-down-{i}"))).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(h.get("/readyz").await.0, 200);

    // Two down: no write can reach two in-sync replicas. Every callback is
    // answered 503 with Retry-After within the deadline, never 200.
    t.kafka.kill(2).unwrap();
    let mut refused = 0;
    for i in 0..10 {
        let started = Instant::now();
        let r = h.post(&mute_all(&format!("two-down-{i}"))).await;
        let took = started.elapsed();
        assert_eq!(
            r.status, 503,
            "with two of three brokers down: {:?}",
            r.body
        );
        assert!(r.headers.get("retry-after").is_some());
        assert!(
            took < deadline + Duration::from_millis(1500),
            "answered after {took:?}, deadline {deadline:?}"
        );
        refused += 1;
    }
    let (status, body) = h.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("acknowledged no record") || body.contains("not reachable"),
        "/readyz should say why: {body}"
    );
    eprintln!("two of three down: {refused} callbacks answered 503; /readyz: {body}");

    // Back to full strength: callbacks are taken again, and nothing that
    // was answered 503 was lost or doubled by the retries to come.
    t.kafka.restart(2).unwrap();
    t.kafka.restart(3).unwrap();
    let h = Arc::new(h);
    let taken = {
        let h = h.clone();
        async move {
            for i in 0..10 {
                post_until_taken(&h, &mute_all(&format!("after-{i}"))).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), taken)
        .await
        .expect("callbacks are taken again once the brokers are back");
    let mut ready = false;
    for _ in 0..100 {
        if h.get("/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(ready, "ready again: {:?}", h.get("/readyz").await);
    let records = h.consume(100, Duration::from_secs(20)).await;
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r.value["group_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.iter().filter(|g| g.starts_with("one-down-")).count(),
        30
    );
    assert_eq!(ids.iter().filter(|g| g.starts_with("after-")).count(), 10);
    // A 503 promises nothing either way: each may have landed once at most.
    for i in 0..10 {
        let g = format!("two-down-{i}");
        assert!(ids.iter().filter(|x| **x == g).count() <= 1, "{g} twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fatal_producer_error_makes_ingest_unready_and_stop_with_an_error() {
    let t = turn().await;
    let base = config(&t, "fatal");
    let mut h = Harness::start_with(|c| *c = base.clone()).await;
    assert_eq!(h.post(&mute_all("before-fatal")).await.status, 200);
    h.publisher().inject_fatal_error("test: producer fenced");
    // Not ready, saying why, for as long as the process is still up.
    let mut why = String::new();
    for _ in 0..50 {
        let (status, body) = h.get("/readyz").await;
        if status == 503 {
            why = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(why.contains("failed fatally"), "/readyz: {why}");
    // And ingest stops with the reason instead of answering 503 for ever.
    let error = h.server_error(Duration::from_secs(20)).await;
    assert!(
        error.contains("failed fatally") && error.contains("test: producer fenced"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fatal_producer_error_makes_the_worker_unready_and_stop_with_an_error() {
    let t = turn().await;
    let base = config(&t, "fatal-worker");
    let h = Harness::start_with(|c| *c = base.clone()).await;
    let metrics = mutebridge::Metrics::new();
    let worker = mutebridge::Worker::start(&checked(&h.config), &h.cluster, &metrics)
        .await
        .unwrap();
    let ready = worker.ready_flag();
    worker.inject_fatal_error("test: state producer fenced");
    let stopped = tokio::time::timeout(Duration::from_secs(30), worker.run(std::future::pending()))
        .await
        .expect("the worker stops by itself");
    let error = format!("{:#}", stopped.expect_err("it stops with an error"));
    assert!(
        error.contains("state producer failed fatally")
            && error.contains("test: state producer fenced"),
        "{error}"
    );
    let why = ready.why_not().expect("not ready");
    assert!(why.contains("failed fatally"), "{why}");
}
