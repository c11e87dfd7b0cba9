//! One provider rate limit across worker replicas: worker *processes* in
//! one consumer group against a ZEGO stand-in that enforces 20/s with a
//! sliding window, in both modes (partition share, and the exact GCRA in a
//! real `redis-server`), through a replica's death and a Redis outage; the
//! GCRA script itself against Redis; and the target-wide pause a provider's
//! rate-limit answer causes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::fixtures::{spread_groups, RedisServer};
use crate::providers::{FakeRongCloud, FakeZego, Fault, Provider};
use crate::support::*;
use crate::worker::{
    policy, post_ok, rc_target, zego_target, RC_KEY, RC_SECRET, ZEGO_APP, ZEGO_RULE, ZEGO_SECRET,
};
use mutebridge::limit::redis::Gcra;

/// ZEGO's documented limit, which the stand-in enforces.
const LIMIT: usize = 20;

/// Calls per second between the first and the last accepted `MuteGroup`
/// of `groups`.
fn achieved_rate(zego: &FakeZego, groups: &HashSet<String>) -> f64 {
    let calls: Vec<_> = zego
        .calls()
        .into_iter()
        .filter(|c| groups.contains(&c.id))
        .collect();
    let span = calls
        .last()
        .unwrap()
        .at
        .duration_since(calls[0].at)
        .as_secs_f64();
    (calls.len() - 1) as f64 / span
}

fn called(zego: &FakeZego, groups: &HashSet<String>) -> usize {
    zego.calls()
        .iter()
        .filter(|c| groups.contains(&c.id))
        .map(|c| c.id.clone())
        .collect::<HashSet<_>>()
        .len()
}

const SHARE: &str = "mutebridge_rate_limit_share_per_second{target=\"zego\"}";
const EXACT: &str = "mutebridge_rate_limit_exact{target=\"zego\"}";
const FALLBACKS: &str = "mutebridge_rate_limit_fallbacks_total{target=\"zego\"}";

/// A harness for worker processes: the topics they cannot create on the
/// embedded cluster exist, and `worker.toml` points them at it.
struct Processes {
    h: Harness,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Processes {
    async fn start(targets: &str) -> Processes {
        let h = Harness::start_with(|c| policy(c, targets)).await;
        let dir = tempfile::tempdir().unwrap();
        let config = h.worker_process_config(targets, dir.path());
        Processes { h, dir, config }
    }

    fn worker(&self, name: &str) -> (Killed, SocketAddr) {
        spawn_role("worker", &self.config, &self.log(name))
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn logs(&self, names: &[&str]) -> String {
        names
            .iter()
            .map(|n| {
                format!(
                    "--- {n}\n{}",
                    std::fs::read_to_string(self.log(n)).unwrap_or_default()
                )
            })
            .collect()
    }

    async fn post_mute_alls(&self, groups: &[String]) {
        for g in groups {
            post_ok(&self.h, &mute_all(g)).await;
        }
    }

    /// Posts a mute-all for each of `groups`, waits until every group
    /// reached ZEGO, checks that none was refused for rate, and returns the
    /// calls per second achieved.
    async fn deliver_all(&self, zego: &FakeZego, groups: Vec<String>) -> f64 {
        self.post_mute_alls(&groups).await;
        let groups: HashSet<String> = groups.into_iter().collect();
        self.all_reached(zego, &groups).await;
        let rate = achieved_rate(zego, &groups);
        assert_eq!(zego.rate_limited(), 0, "rate-limit answers at {rate:.2}/s");
        rate
    }

    /// Waits (up to 60 s) until every one of `groups` reached ZEGO.
    async fn all_reached(&self, zego: &FakeZego, groups: &HashSet<String>) {
        assert!(
            wait_until(Duration::from_secs(60), || called(zego, groups)
                == groups.len())
            .await,
            "{} of {} groups reached ZEGO\n{}",
            called(zego, groups),
            groups.len(),
            self.logs(&["a", "b"])
        );
    }

    /// Posts 300 more mute-alls (evenly spread) and returns once 60 of
    /// them reached ZEGO: the moment to break something mid-run.
    async fn mid_run(&self, zego: &FakeZego, prefix: &str) -> HashSet<String> {
        let groups = spread_groups(300, self.h.config.kafka.partitions, |i| {
            format!("{prefix}-{i}")
        });
        self.post_mute_alls(&groups).await;
        let groups: HashSet<String> = groups.into_iter().collect();
        assert!(wait_until(Duration::from_secs(30), || called(zego, &groups) >= 60).await);
        groups
    }

    async fn no_dead_letters(&self) {
        let letters = self.h.dead_letters(1, Duration::from_secs(2)).await;
        assert!(letters.is_empty(), "dead-lettered: {:?}", letters[0].value);
    }

    /// After something broke mid-run: every one of `groups` reached ZEGO,
    /// none was refused (for rate or otherwise), nothing was dead-lettered.
    async fn all_reached_unrefused(&self, zego: &FakeZego, groups: &HashSet<String>, when: &str) {
        self.all_reached(zego, groups).await;
        assert_eq!(zego.rate_limited(), 0, "rate-limit answers {when}");
        assert!(zego.rejected().is_empty(), "{:?}", zego.rejected());
        self.no_dead_letters().await;
    }
}

/// Waits until both workers hold half of the partitions each.
async fn wait_for_even_split(a: SocketAddr, b: SocketAddr, half: f64, p: &Processes) {
    assert!(
        wait_until(Duration::from_secs(40), || {
            (process_metric(a, SHARE) - half).abs() < 0.01
                && (process_metric(b, SHARE) - half).abs() < 0.01
        })
        .await,
        "shares: a {} b {}\n{}",
        process_metric(a, SHARE),
        process_metric(b, SHARE),
        p.logs(&["a", "b"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_share_the_limit_by_partition_and_a_survivor_takes_it_all() {
    let _turn = HEAVY.lock().await;
    let zego = FakeZego::start_sliding(ZEGO_APP, ZEGO_SECRET, LIMIT).await;
    let targets = format!(
        "{}rate_per_second = {LIMIT}\n{ZEGO_RULE}",
        zego_target(&zego, "zego")
    );
    let p = Processes::start(&targets).await;
    let partitions = p.h.config.kafka.partitions;
    let (a, a_addr) = p.worker("a");
    let (b, b_addr) = p.worker("b");
    // 20/s × headroom 0.95, half of the partitions each.
    wait_for_even_split(a_addr, b_addr, 9.5, &p).await;

    let rate = p
        .deliver_all(
            &zego,
            spread_groups(300, partitions, |i| format!("share-{i}")),
        )
        .await;
    println!("partition share, 2 processes: {rate:.2} calls/s of {LIMIT}/s");
    assert!(
        rate >= 0.85 * LIMIT as f64,
        "aggregate {rate:.2}/s is under 85 % of {LIMIT}/s"
    );

    // B dies mid-run: its partitions come to A after the session timeout,
    // and with them B's share.
    let second = p.mid_run(&zego, "survivor").await;
    drop(b); // SIGKILL
    assert!(
        wait_until(Duration::from_secs(40), || (process_metric(a_addr, SHARE)
            - 19.0)
            .abs()
            < 0.01)
        .await,
        "the survivor's share is {}\n{}",
        process_metric(a_addr, SHARE),
        p.logs(&["a"])
    );
    p.all_reached_unrefused(&zego, &second, "after the kill")
        .await;
    let log = std::fs::read_to_string(p.log("a")).unwrap();
    assert!(
        log.contains("rate-limit share set") && log.contains("\"19.00\""),
        "the new share is logged at info:\n{log}"
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_limit_is_exact_across_processes_and_survives_a_redis_outage() {
    let _turn = HEAVY.lock().await;
    let mut redis = RedisServer::start();
    let zego = FakeZego::start_sliding(ZEGO_APP, ZEGO_SECRET, LIMIT).await;
    let targets = format!(
        "{}rate_per_second = {LIMIT}\n[targets.zego.rate_limit]\nmode = \"redis\"\nurl = \"{}\"\n{ZEGO_RULE}",
        zego_target(&zego, "zego"),
        redis.url()
    );
    let p = Processes::start(&targets).await;
    let (a, a_addr) = p.worker("a");
    let (b, b_addr) = p.worker("b");
    wait_for_even_split(a_addr, b_addr, 9.5, &p).await;
    assert_eq!(
        process_metric(a_addr, EXACT) + process_metric(b_addr, EXACT),
        2.0
    );

    // Uneven on purpose: in exact mode a replica with more work uses the
    // limit the other leaves idle.
    let groups: Vec<String> = (0..300).map(|i| format!("exact-{i}")).collect();
    let rate = p.deliver_all(&zego, groups).await;
    println!("redis, 2 processes: {rate:.2} calls/s of {LIMIT}/s");
    assert!(
        rate >= 0.90 * LIMIT as f64,
        "aggregate {rate:.2}/s is under 90 % of {LIMIT}/s"
    );

    // Redis goes away mid-run: both fall back to their shares.
    let second = p.mid_run(&zego, "outage").await;
    redis.stop();
    assert!(
        wait_until(Duration::from_secs(20), || process_metric(
            a_addr, FALLBACKS
        ) >= 1.0
            && process_metric(b_addr, FALLBACKS) >= 1.0
            && process_metric(a_addr, EXACT) + process_metric(b_addr, EXACT)
                == 0.0)
        .await,
        "fallbacks: a {} b {}\n{}",
        process_metric(a_addr, FALLBACKS),
        process_metric(b_addr, FALLBACKS),
        p.logs(&["a", "b"])
    );
    // /readyz stays 200: the worker still applies events.
    assert_eq!(http_get(a_addr, "/readyz").map(|r| r.0), Some(200));
    assert!(wait_until(Duration::from_secs(30), || called(&zego, &second) >= 200).await);
    // Redis is back: exact mode again, and the rest goes through it.
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(20), || process_metric(a_addr, EXACT)
            + process_metric(b_addr, EXACT)
            == 2.0)
        .await,
        "exact: a {} b {}",
        process_metric(a_addr, EXACT),
        process_metric(b_addr, EXACT)
    );
    p.all_reached_unrefused(&zego, &second, "through the outage")
        .await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gcra_script_bursts_spaces_and_says_how_long_to_wait() {
    let mut redis = RedisServer::start();
    let gcra = Gcra::new(
        &redis.url(),
        mutebridge::limit::redis::key("zego", "gcra-test"),
        Duration::from_millis(500),
    )
    .unwrap();
    let t = Duration::from_millis(100);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // Bounds below come from local clocks read around each call, so a slow
    // scheduler widens them instead of failing the test: Redis evaluated
    // call k somewhere between `before[k]` and `after[k]`.
    //
    // Burst 3: three calls at once, then one per interval, each told its
    // place in the schedule (slot of call k = first call + (k - 2) × T).
    let origin = Instant::now();
    let (mut waits, mut before, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..6 {
        before.push(ms(origin.elapsed()));
        waits.push(ms(gcra.reserve(t, 3).await.unwrap()));
        after.push(ms(origin.elapsed()));
    }
    for (i, w) in waits.iter().enumerate().take(3) {
        assert!(*w < 1.0, "call {i} of the burst waits {w} ms");
    }
    for (i, w) in waits.iter().enumerate().skip(3) {
        let slot = (i as f64 - 2.0) * 100.0;
        let (lo, hi) = (slot - (after[i] - before[0]), slot - (before[i] - after[0]));
        assert!(
            *w >= lo - 1.0 && *w <= hi + 1.0,
            "call {i}: waits {w} ms, its slot implies {lo:.1}..{hi:.1} ms"
        );
    }
    // Spacing, burst 1 (another app's key): a caller that sleeps the
    // returned waits never runs ahead of the schedule (call k not before
    // k × T), and never waits longer than one interval per call.
    let spaced = Gcra::new(
        &redis.url(),
        mutebridge::limit::redis::key("zego", "gcra-spacing"),
        Duration::from_millis(500),
    )
    .unwrap();
    let step = Duration::from_millis(50);
    let start = Instant::now();
    for k in 0..10 {
        let w = spaced.reserve(step, 1).await.unwrap();
        assert!(ms(w) <= 50.0 + 1.0, "call {k} told to wait {w:?}");
        // Sleeping the returned wait is the caller under test.
        tokio::time::sleep(w).await;
        let at = ms(start.elapsed());
        assert!(
            at >= k as f64 * 50.0 - 1.0,
            "call {k} went at {at} ms, ahead of its slot at {} ms",
            k * 50
        );
    }
    // A pause holds everybody's next slot back.
    let paused = Instant::now();
    let held = spaced.pause(Duration::from_millis(400)).await.unwrap();
    assert!(
        (400.0..=451.0).contains(&ms(held)),
        "held {held:?} (400 ms, or the schedule's own end if later)"
    );
    let next = ms(spaced.reserve(step, 1).await.unwrap());
    let since = ms(paused.elapsed());
    assert!(
        next >= 400.0 - since - 1.0,
        "the next slot is after the pause: {next} ms, {since} ms after it"
    );
    // The schedule is one key per provider app, with an expiry.
    let key = mutebridge::limit::redis::key("zego", "gcra-spacing");
    assert_eq!(key, "mutebridge:rl:zego:gcra-spacing");
    // Redis gone: an error, quickly (the caller falls back).
    redis.stop();
    let started = Instant::now();
    assert!(spaced.reserve(t, 1).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
    // Back: it reconnects by itself.
    redis.restart();
    assert!(spaced.reserve(t, 1).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_rate_limit_answer_pauses_the_whole_target() {
    // RongCloud answers 429 / 1008 with Retry-After: 2 once; the other
    // calls of the target wait it out too, not only the refused one.
    let rc = FakeRongCloud::start(RC_KEY, RC_SECRET, 1000.0).await;
    // Spaced ~105 ms apart, so no call is in flight when the 429 arrives.
    let text = format!(
        "{}rate_per_second = 10\n[[policy.rules]]\nname = \"rc\"\nwhen = {{ scope = \"chatroom\", kinds = [\"mute_all\"] }}\nthen = [{{ target = \"rc\", chatroom = \"{{group_id}}\" }}]\n",
        rc_target(&[&rc], "rc")
    );
    let h = Harness::start_with(|c| policy(c, &text)).await;
    rc.fault(Fault::RetryAfter(2));
    for g in 0..20 {
        let mut body = mute_all(&format!("pause-{g}"));
        body.insert("type".into(), serde_json::json!("CHATROOM"));
        resign(&mut body, SECRETS[0]);
        post_ok(&h, &body).await;
    }
    let mut w = h.start_worker().await;
    assert!(wait_until(Duration::from_secs(30), || rc.calls().len() == 20).await);
    let refused = rc.refusals();
    assert_eq!(refused.len(), 1);
    let after: Vec<Instant> = rc
        .arrivals()
        .into_iter()
        .filter(|t| *t > refused[0])
        .collect();
    assert!(!after.is_empty());
    let gap = after[0].duration_since(refused[0]);
    assert!(
        gap >= Duration::from_millis(1950),
        "the next call of the target came {gap:?} after the 429 with Retry-After: 2"
    );
    assert_eq!(
        w.metric("mutebridge_target_rate_limited_total{target=\"rc\"}"),
        1.0
    );
    w.wait_for_events("rc", "applied", 20.0).await;
    w.stop().await;

    // ZEGO's code 660300005 (no Retry-After: HTTP 200 with a code) ten
    // times in a row, more than max_attempts: still applied, never
    // dead-lettered, and each pause at least the first one long.
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let h = Harness::start_with(|c| policy(c, &text)).await;
    assert!(h.config.worker.retry.max_attempts < 10);
    for _ in 0..10 {
        zego.fault(Fault::Code(660300005));
    }
    post_ok(&h, &mute_all("patient")).await;
    let mut w = h.start_worker().await;
    // Pauses of 1 s (they double up to max_backoff_ms, which the fast
    // test settings keep under the first pause).
    assert!(
        wait_until(Duration::from_secs(40), || zego.calls().len() == 1).await,
        "refused {} times",
        zego.refusals().len()
    );
    let refused = zego.refusals();
    assert_eq!(refused.len(), 10);
    for pair in refused.windows(2) {
        assert!(pair[1].duration_since(pair[0]) >= Duration::from_millis(950));
    }
    w.wait_for_events("zego", "applied", 1.0).await;
    assert!(h.dead_letters(1, Duration::from_secs(1)).await.is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_rate_limit_horizon_dead_letters_a_rate_limited_call() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let text = format!("{}{ZEGO_RULE}", zego_target(&zego, "zego"));
    let h = Harness::start_with(|c| {
        policy(c, &text);
        c.worker.retry.rate_limited_horizon_seconds = 2;
    })
    .await;
    for _ in 0..50 {
        zego.fault(Fault::Code(660300005));
    }
    post_ok(&h, &mute_all("hopeless")).await;
    let mut w = h.start_worker().await;
    let letters = h.dead_letters(1, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 1);
    let v = &letters[0].value;
    assert_eq!(v["reason"], "rate_limited", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("rate_limited_horizon_seconds"),
        "{v}"
    );
    assert_eq!(
        w.metric("mutebridge_dead_letters_total{reason=\"rate_limited\",target=\"zego\"}"),
        1.0
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_its_event_topic_says_what_to_do() {
    // The shares are parts of the event topic's partitions: a worker that
    // cannot count them refuses to start rather than never send.
    let h = Harness::start().await;
    let mut config = h.config.clone();
    config.kafka.topic = "im.group-events.never-created".into();
    config.worker.track_state = false;
    let e =
        match mutebridge::Worker::start(&checked(&config), &h.cluster, &mutebridge::Metrics::new())
            .await
        {
            Ok(_) => panic!("a worker started without its event topic"),
            Err(e) => format!("{e:#}"),
        };
    assert!(
        e.contains("im.group-events.never-created (kafka.topic)")
            && e.contains("kafka.create_topics = true"),
        "{e}"
    );
}
