//! Reconciliation end to end: callbacks through the real ingest, a real
//! worker applying them to the ZEGO and RongCloud stand-ins, and the
//! reconciler reading the Easemob REST stand-in (tests/it/easemob_rest.rs)
//! and publishing corrections through the same topic.

use std::time::{Duration, Instant};

use crate::easemob_rest::{ChatScope, FakeEasemobRest, MissingInBatch, RestFault};
use crate::providers::{FakeRongCloud, FakeZego, Provider};
use crate::support::*;
use crate::worker::{policy, post_ok, rc_target, zego_target, ZEGO_APP, ZEGO_SECRET};
use mutebridge::config::{Reach, RestConfig, Secret};
use mutebridge::reconcile::{Options, Summary};
use mutebridge::{Config, Reconciler};
use serde_json::{Map, Value};

const CLIENT_ID: &str = "YXA6-client";
const CLIENT_SECRET: &str = "YXA6-secret";

/// Group mutes to ZEGO (same id) and to RongCloud (`rc-` + id).
fn mirror(zego: &FakeZego, rc: &FakeRongCloud) -> String {
    format!(
        "{}rate_per_second = 100\n{}{}",
        zego_target(zego, "zego"),
        rc_target(&[rc], "rc"),
        r#"
[[policy.rules]]
name = "group mutes to ZEGO"
when = { scope = "group", kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"] }
then = [{ target = "zego", group = "{group_id}" }]

[[policy.rules]]
name = "group mutes to RongCloud"
when = { scope = "group", kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"] }
then = [{ target = "rc", group = "rc-{group_id}" }]
"#
    )
}

/// The test app's REST table, pointing at `easemob`.
fn rest(config: &mut Config, easemob: &FakeEasemobRest, rate: f64, reach: Reach) {
    let app = &mut config.easemob.apps[0];
    let text = format!(
        "base_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nrate_per_second = {rate}\n",
        easemob.base_url()
    );
    let table: RestConfig = toml::from_str(&text).unwrap();
    assert!(table.client_secret == Secret::new(CLIENT_SECRET));
    app.rest = Some(table);
    config.reconcile.scope = reach;
    config.reconcile.interval_seconds = 2;
}

struct Bed {
    zego: FakeZego,
    rc: FakeRongCloud,
    easemob: FakeEasemobRest,
    h: Harness,
    w: WorkerHandle,
}

impl Bed {
    async fn start(rate: f64, reach: Reach) -> Bed {
        let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 100.0).await;
        let rc = FakeRongCloud::start(crate::worker::RC_KEY, crate::worker::RC_SECRET, 100.0).await;
        let (org, app) = APPKEY.split_once('#').unwrap();
        let easemob = FakeEasemobRest::start(org, app, CLIENT_ID, CLIENT_SECRET, 100).await;
        let text = mirror(&zego, &rc);
        let h = Harness::start_with(|c| {
            policy(c, &text);
            rest(c, &easemob, rate, reach);
        })
        .await;
        let w = h.start_worker().await;
        Bed {
            zego,
            rc,
            easemob,
            h,
            w,
        }
    }

    async fn reconciler(&self) -> (Reconciler, mutebridge::Metrics) {
        let metrics = mutebridge::Metrics::new();
        let r = Reconciler::start(&checked(&self.h.config), &self.h.cluster, &metrics)
            .await
            .expect("the reconciler starts");
        (r, metrics)
    }

    /// Waits until the state keeper has written `n` state records.
    async fn states_written(&self, n: f64) {
        let line = "mutebridge_worker_state_writes_total{pipeline=\"state\"}";
        let done = wait_until(WAIT, || self.w.metric(line) >= n).await;
        assert!(done, "{line} is {}, expected {n}", self.w.metric(line));
    }

    /// ZEGO's and RongCloud's calls for `group`: (action, users, duration).
    fn zego_calls(&self, group: &str) -> Vec<(String, Vec<String>, Option<i64>)> {
        self.zego
            .calls()
            .into_iter()
            .filter(|c| c.id == group)
            .map(|c| (c.action, c.users, c.duration))
            .collect()
    }

    fn rc_paths(&self, group: &str) -> Vec<String> {
        let id = format!("rc-{group}");
        self.rc
            .calls()
            .into_iter()
            .filter(|c| c.id == id)
            .map(|c| c.action)
            .collect()
    }
}

const WAIT: Duration = Duration::from_secs(30);

fn member_muted(group: &str, member: &str, until: i64) -> Map<String, Value> {
    crate::worker::member_mute(group, &[member.to_owned()], Some(until))
}

async fn once(r: &Reconciler) -> Summary {
    r.pass(&Options::default()).await.expect("a pass runs").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_that_never_came_are_repaired_on_zego_and_rongcloud_within_one_interval() {
    let mut bed = Bed::start(100.0, Reach::Known).await;
    let e = &bed.easemob;
    let until = e.server_time_ms() + 3_600_000;
    // What the callbacks said, and Easemob agrees.
    e.add_group(ChatScope::Group, "g1", true);
    e.add_group(ChatScope::Group, "g2", false);
    e.mute_member(ChatScope::Group, "g2", "u1", until);
    post_ok(&bed.h, &mute_all("g1")).await;
    post_ok(&bed.h, &member_muted("g2", "u1", until)).await;
    bed.states_written(2.0).await;
    assert!(
        wait_until(WAIT, || bed.zego.calls().len() == 2
            && bed.rc.calls().len() == 2)
        .await
    );

    let (r, metrics) = bed.reconciler().await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let role = tokio::spawn(r.run(Options::default(), async move {
        let _ = stop_rx.await;
    }));
    let passes = "mutebridge_reconcile_passes_total{outcome=\"complete\"}";
    let seen = metric_of;
    assert!(wait_until(WAIT, || seen(&metrics, passes) >= 1.0).await);
    assert_eq!(
        seen(&metrics, "mutebridge_reconcile_last_pass_differences"),
        0.0
    );
    assert_eq!(
        seen(
            &metrics,
            "mutebridge_reconcile_groups_total{outcome=\"agreed\"}"
        ),
        2.0
    );

    // Three changes whose callbacks are lost (a ban, a 503 burst).
    e.set_mute_all(ChatScope::Group, "g1", false);
    e.unmute_member(ChatScope::Group, "g2", "u1");
    e.mute_member(ChatScope::Group, "g2", "u2", until);
    let changed = Instant::now();
    let repaired = || {
        let z1 = bed.zego_calls("g1");
        let z2 = bed.zego_calls("g2");
        z1.last()
            .is_some_and(|c| c.0 == "MuteGroup" && c.2 == Some(0))
            && z2
                .iter()
                .any(|c| c.1 == ["u2"] && c.2.is_some_and(|d| d > 0))
            && z2.iter().any(|c| c.1 == ["u1"] && c.2 == Some(0))
            && bed.rc_paths("g1").len() == 2
            && bed.rc_paths("g2").len() == 3
    };
    assert!(
        wait_until(WAIT, repaired).await,
        "zego {:?} / {:?}, rc {:?} / {:?}",
        bed.zego_calls("g1"),
        bed.zego_calls("g2"),
        bed.rc_paths("g1"),
        bed.rc_paths("g2")
    );
    // The next pass after the change (interval 2 s) found them.
    assert!(
        changed.elapsed() < Duration::from_secs(2 * 2 + 10),
        "{:?}",
        changed.elapsed()
    );
    assert_eq!(
        seen(
            &metrics,
            "mutebridge_reconcile_differences_total{difference=\"mute_all\"}"
        ),
        1.0
    );
    assert_eq!(
        seen(
            &metrics,
            "mutebridge_reconcile_differences_total{difference=\"member_muted\"}"
        ),
        1.0
    );
    assert_eq!(
        seen(
            &metrics,
            "mutebridge_reconcile_differences_total{difference=\"member_unmuted\"}"
        ),
        1.0
    );
    let rc_g1 = bed.rc_paths("g1");
    assert!(rc_g1[1].contains("rollback"), "{rc_g1:?}");
    // Then everything agrees: later passes publish nothing more.
    let corrections = "mutebridge_reconcile_corrections_total";
    let published = |m: &mutebridge::Metrics| -> f64 {
        m.render()
            .lines()
            .filter(|l| l.starts_with(corrections))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let after = seen(&metrics, passes);
    assert!(wait_until(WAIT, || seen(&metrics, passes) >= after + 2.0).await);
    assert_eq!(
        seen(&metrics, "mutebridge_reconcile_last_pass_differences"),
        0.0
    );
    assert_eq!(published(&metrics), 3.0);
    assert!(bed.zego.rejected().is_empty() && bed.rc.rejected().is_empty());
    let _ = stop_tx.send(());
    role.await.unwrap().unwrap();
    bed.w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_of_1000_groups_reaches_the_targets_under_the_read_rate() {
    let mut bed = Bed::start(100.0, Reach::All).await;
    let e = &bed.easemob;
    let until = e.server_time_ms() + 3_600_000;
    for i in 0..1000 {
        let id = format!("first-{i:04}");
        e.add_group(ChatScope::Group, &id, i % 10 == 0);
        if i % 20 == 5 {
            e.mute_member(ChatScope::Group, &id, "m1", until);
        }
    }
    let (r, _metrics) = bed.reconciler().await;
    let started = Instant::now();
    let (summary, events) = r.pass(&Options::default()).await.unwrap();
    let took = started.elapsed();
    // The figure benches/README.md quotes for a pass's pace.
    eprintln!("first sync: {} reads in {took:.2?}", e.reads());
    assert_eq!(
        (
            summary.groups,
            summary.listed,
            summary.differed,
            summary.unread
        ),
        (1000, 1000, 150, 0),
        "{summary:?}"
    );
    assert_eq!(summary.published, 150);
    assert_eq!(events.len(), 150);
    // 1 list page + 10 detail batches + 1000 mute lists, at 100 x 0.95/s.
    let reads = e.reads();
    assert_eq!(reads, 1011, "{summary:?}");
    assert!(
        took >= Duration::from_secs_f64(1010.0 / 95.0 - 0.5),
        "{took:?}"
    );
    assert!(
        e.max_requests_in_any_second() <= 96,
        "{}",
        e.max_requests_in_any_second()
    );
    assert_eq!(e.refused_for_rate(), 0);
    assert_eq!(e.token_requests(), 1);
    // Every muted group and member reaches both targets.
    let done = || {
        let z = bed.zego.calls();
        z.iter().filter(|c| c.action == "MuteGroup").count() == 100
            && z.iter().filter(|c| c.users == ["m1"]).count() == 50
            && bed.rc.calls().len() == 150
    };
    assert!(
        wait_until(Duration::from_secs(60), done).await,
        "zego {} rc {}",
        bed.zego.calls().len(),
        bed.rc.calls().len()
    );
    bed.states_written(150.0).await;
    // A second pass finds them in the state and agrees.
    let again = once(&r).await;
    assert_eq!((again.agreed, again.published), (1000, 0), "{again:?}");
    bed.w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_newer_than_the_read_wins_and_an_agreeing_state_publishes_nothing() {
    let mut bed = Bed::start(100.0, Reach::Known).await;
    let e = &bed.easemob;
    e.add_group(ChatScope::Group, "agree", true);
    e.add_group(ChatScope::Group, "newer", true);
    post_ok(&bed.h, &mute_all("agree")).await;
    post_ok(&bed.h, &mute_all("newer")).await;
    bed.states_written(2.0).await;
    let (r, _m) = bed.reconciler().await;
    let (s, events) = r.pass(&Options::default()).await.unwrap();
    assert_eq!((s.agreed, s.published, events.len()), (2, 0, 0), "{s:?}");

    // The unmute happened after Easemob's snapshot: the read (dated 60 s
    // ago by the server's clock) still says muted. Its correction is
    // published, and the guard holds it as stale.
    e.set_clock_offset_ms(-60_000);
    post_ok(&bed.h, &crate::worker::unmute_all("newer")).await;
    bed.states_written(3.0).await;
    assert!(wait_until(WAIT, || bed.zego_calls("newer").len() == 2).await);
    let (s, events) = r.pass(&Options::default()).await.unwrap();
    assert_eq!((s.differed, s.published), (1, 1), "{s:?}");
    assert_eq!(events[0].kind.as_str(), "mute_all");
    assert_eq!(events[0].format, mutebridge::event::Format::Reconciled);
    bed.w.wait_for_events("zego", "stale", 1.0).await;
    bed.w.wait_for_events("rc", "stale", 1.0).await;
    let durations: Vec<Option<i64>> = bed.zego_calls("newer").into_iter().map(|c| c.2).collect();
    assert_eq!(
        durations,
        [Some(-1), Some(0)],
        "the newer unmute stays last"
    );
    // The record is on the topic, as any consumer reads it.
    let records = bed.h.consume(4, WAIT).await;
    let last = &records[3].value;
    assert_eq!(last["format"], "reconciled");
    assert_eq!(last["source"], "easemob");
    assert_eq!(last["group_id"], "newer");
    bed.w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_renewed_once_after_a_401_and_429s_slow_the_reads_and_lose_nothing() {
    let mut bed = Bed::start(100.0, Reach::All).await;
    let e = bed.easemob.clone();
    e.set_missing_in_batch(MissingInBatch::NotFound);
    for i in 0..300 {
        e.add_group(ChatScope::Group, &format!("t-{i:03}"), i % 10 == 0);
    }
    // A group we hold a state for, deleted in Easemob since.
    post_ok(&bed.h, &mute_all("deleted")).await;
    bed.states_written(1.0).await;
    // The first reads draw 429s, with and without Retry-After.
    e.push_fault(RestFault::TooMany {
        retry_after: Some(1),
    });
    e.push_fault(RestFault::TooMany { retry_after: None });
    let (r, metrics) = bed.reconciler().await;
    // Halfway through, every token Easemob issued stops working.
    let expire = tokio::spawn({
        let e = e.clone();
        async move {
            while e.reads() < 150 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            e.expire_tokens();
        }
    });
    let (s, _) = r.pass(&Options::default()).await.unwrap();
    expire.await.unwrap();
    assert_eq!(
        (s.groups, s.unread, s.differed, s.gone, s.published),
        (301, 0, 30, 1, 31),
        "{s:?}"
    );
    assert_eq!(e.token_requests(), 2, "one token at start, one renewal");
    let text = metrics.render();
    assert!(text.contains("mutebridge_reconcile_token_renewals_total{reason=\"unauthorized\"} 1"));
    assert!(s.rest_errors.get("401").is_some_and(|n| *n >= 1), "{s:?}");
    assert_eq!(s.rest_errors.get("429"), Some(&2), "{s:?}");
    // Each 429 paused the app's reads: 1 s (Retry-After), then 2 s.
    let calls: Vec<_> = e
        .calls()
        .into_iter()
        .filter(|c| c.path != "/token")
        .collect();
    let refused: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i].status == 429)
        .collect();
    assert_eq!(refused.len(), 2);
    for (i, pause) in refused.iter().zip([1.0, 2.0]) {
        let gap = calls[i + 1].at.duration_since(calls[*i].at).as_secs_f64();
        assert!(gap >= pause - 0.05, "after 429 #{i}: {gap:.2} s");
    }
    // Nothing lost: every muted group reached both targets, the deleted
    // group's state is gone.
    let done = || {
        bed.zego
            .calls()
            .iter()
            .filter(|c| c.action == "MuteGroup")
            .count()
            == 31
            && bed.rc.calls().len() == 31
    };
    assert!(
        wait_until(WAIT, done).await,
        "zego {} rc {}",
        bed.zego.calls().len(),
        bed.rc.calls().len()
    );
    let line = "mutebridge_state_events_total{outcome=\"removed\"}";
    assert!(
        wait_until(WAIT, || bed.w.metric(line) == 1.0).await,
        "{}",
        bed.w.metric(line)
    );
    bed.w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_dry_runs_then_publishes_with_a_summary_and_reads_only_its_secrets() {
    let mut bed = Bed::start(100.0, Reach::All).await;
    let e = &bed.easemob;
    e.add_group(ChatScope::Group, "cli-1", true);
    e.add_group(ChatScope::Group, "cli-2", true);
    e.add_group(ChatScope::Group, "other", true);
    // The worker created the state topic; the command reads it from outside.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("reconcile.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{}\"\npartitions = {}\ncreate_topics = false\n[worker]\nstate_topic = \"{}\"\n[reconcile]\nscope = \"all\"\ninterval_seconds = 0\n[[easemob.apps]]\nappkey = \"{APPKEY}\"\nsecrets = [\"env:NOT_READ_BY_RECONCILE\"]\n[easemob.apps.rest]\nbase_url = \"{}\"\nclient_id = \"env:EM_CLIENT_ID\"\nclient_secret = \"env:EM_CLIENT_SECRET\"\n",
            bed.h.cluster.bootstrap_servers(),
            bed.h.config.kafka.topic,
            bed.h.config.kafka.partitions,
            bed.h.config.worker.state_topic,
            e.base_url()
        ),
    )
    .unwrap();
    let run = |args: &'static [&'static str], with_secrets: bool| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            command(&config, args, with_secrets.then_some(CLIENT_SECRET))
        })
    };
    // Without its secrets it names the one missing (and not ingest's).
    let (code, _, err) = run(&["--once"], false).await.unwrap();
    assert_eq!(code, Some(1));
    assert!(
        err.contains("easemob.apps[0].rest.client_id") && err.contains("EM_CLIENT_ID"),
        "{err}"
    );
    // interval_seconds = 0: the role runs only on demand.
    let (code, _, err) = run(&[], true).await.unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("--once"), "{err}");

    let (code, out, err) = run(&["--dry-run", "--groups", "cli-*"], true)
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("would publish mute_all test#app group cli-1"),
        "{out}"
    );
    assert!(err.contains("2 group(s) compared"), "{err}");
    assert!(
        err.contains("differences: mute_all 2, member_muted 0, member_unmuted 0, gone 0"),
        "{err}"
    );
    assert!(err.contains("dry run: nothing published"), "{err}");
    assert!(!err.contains(CLIENT_SECRET) && !out.contains(CLIENT_SECRET));

    let (code, _, err) = run(&["--once"], true).await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("3 group(s) compared"), "{err}");
    assert!(
        err.contains(&format!(
            "published 3 corrective event(s) to {}",
            bed.h.config.kafka.topic
        )),
        "{err}"
    );
    assert!(err.contains("REST errors: none"), "{err}");
    let records = bed.h.consume(3, WAIT).await;
    let groups: Vec<&str> = records
        .iter()
        .map(|r| r.value["group_id"].as_str().unwrap())
        .collect();
    assert_eq!(groups.len(), 3);
    assert!(records.iter().all(|r| r.value["format"] == "reconciled"));
    assert!(wait_until(WAIT, || bed.zego.calls().len() == 3).await);
    bed.w.stop().await;
}

/// Runs `mutebridge reconcile --config CONFIG ARGS`, with the REST
/// credentials (this Client Secret) in the environment when given.
fn command(
    config: &std::path::Path,
    args: &[&str],
    secret: Option<&str>,
) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mutebridge"));
    cmd.arg("reconcile").arg("--config").arg(config).args(args);
    if let Some(secret) = secret {
        cmd.env("EM_CLIENT_ID", CLIENT_ID)
            .env("EM_CLIENT_SECRET", secret);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
