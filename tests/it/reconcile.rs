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
use mutebridge::event::Event;
use mutebridge::reconcile::metrics::AppFailure;
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
        Bed::start_with(rate, reach, |_| {}).await
    }

    /// As [`Bed::start`], with the config changed by `adjust` last.
    async fn start_with(rate: f64, reach: Reach, adjust: impl FnOnce(&mut Config)) -> Bed {
        let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 100.0).await;
        let rc = FakeRongCloud::start(crate::worker::RC_KEY, crate::worker::RC_SECRET, 100.0).await;
        let (org, app) = APPKEY.split_once('#').unwrap();
        let easemob = FakeEasemobRest::start(org, app, CLIENT_ID, CLIENT_SECRET, 100).await;
        let text = mirror(&zego, &rc);
        let h = Harness::start_with(|c| {
            policy(c, &text);
            rest(c, &easemob, rate, reach);
            adjust(c);
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
    r.pass(&Options::default()).await.expect("a pass runs")
}

/// A pass, and the corrective events it found.
async fn pass_events(r: &Reconciler, options: &Options) -> (Summary, Vec<Event>) {
    let events = std::sync::Mutex::new(Vec::new());
    let summary = r
        .pass_with(options, &|e| events.lock().unwrap().push(e.clone()))
        .await
        .expect("a pass runs");
    (summary, events.into_inner().unwrap())
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
    let (summary, events) = pass_events(&r, &Options::default()).await;
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
    let (s, events) = pass_events(&r, &Options::default()).await;
    assert_eq!((s.agreed, s.published, events.len()), (2, 0, 0), "{s:?}");

    // The unmute happened after Easemob's snapshot: the read (dated 60 s
    // ago by the server's clock) still says muted. Its correction is
    // published, and the guard holds it as stale.
    e.set_clock_offset_ms(-60_000);
    post_ok(&bed.h, &crate::worker::unmute_all("newer")).await;
    bed.states_written(3.0).await;
    assert!(wait_until(WAIT, || bed.zego_calls("newer").len() == 2).await);
    let (s, events) = pass_events(&r, &Options::default()).await;
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
    let s = once(&r).await;
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

/// `body`, a callback of [`APPKEY`], as app `appkey` sends it, signed with
/// `secret`.
fn from_app(mut body: Map<String, Value>, appkey: &str, secret: &str) -> Map<String, Value> {
    body.insert("appkey".into(), appkey.into());
    body.insert(
        "callId".into(),
        format!("{appkey}_{}", uuid::Uuid::new_v4()).into(),
    );
    resign(&mut body, secret);
    body
}

/// The REST calls for `path` (e.g. `/chatgroups/g1`) answered since call
/// number `from`, by status.
fn calls_to(e: &FakeEasemobRest, from: usize, path: &str) -> Vec<u16> {
    e.calls()[from..]
        .iter()
        .filter(|c| c.path == path)
        .map(|c| c.status)
        .collect()
}

fn only(group: &str) -> Options {
    Options {
        groups: Some(group.into()),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_takes_easemob_s_own_answer_twice_and_any_other_answer_changes_nothing() {
    let mut bed = Bed::start_with(100.0, Reach::Known, |c| {
        c.reconcile.request_timeout_ms = 500;
    })
    .await;
    let e = bed.easemob.clone();
    // Six groups with a state that Easemob no longer has, one it has.
    let deleted = [
        "ev-html",
        "ev-other",
        "ev-unnamed",
        "ev-down",
        "ev-slow",
        "ev-401",
    ];
    e.add_group(ChatScope::Group, "ev-back", true);
    for g in deleted.iter().chain(&["ev-back"]) {
        post_ok(&bed.h, &mute_all(g)).await;
    }
    bed.states_written(7.0).await;
    let (r, metrics) = bed.reconciler().await;
    let removed = "mutebridge_state_events_total{outcome=\"removed\"}";

    // Each answer that is not Easemob's word, for one group asked alone
    // (the first two: Easemob's "does not exist", then something else).
    let cases: Vec<(&str, Vec<RestFault>, &str)> = vec![
        ("ev-html", vec![RestFault::Html404], "an HTML page"),
        (
            "ev-html",
            vec![
                RestFault::NotFoundNaming("ev-html".into()),
                RestFault::Html404,
            ],
            "an HTML page",
        ),
        (
            "ev-other",
            vec![RestFault::Error404("service_resource_not_found")],
            "service_resource_not_found",
        ),
        (
            "ev-unnamed",
            vec![RestFault::NotFoundNaming("ev-unnamed2".into())],
            "naming another resource: grpID ev-unnamed2",
        ),
        (
            "ev-unnamed",
            vec![RestFault::Status(404)],
            "naming another resource: injected",
        ),
        ("ev-down", vec![RestFault::Status(503); 3], "HTTP 503"),
        (
            "ev-down",
            vec![
                RestFault::NotFoundNaming("ev-down".into()),
                RestFault::Status(503),
                RestFault::Status(503),
                RestFault::Status(503),
            ],
            "HTTP 503",
        ),
        (
            "ev-slow",
            vec![RestFault::Delay(Duration::from_secs(2)); 3],
            "timed out",
        ),
        ("ev-401", vec![RestFault::Status(401); 2], "401"),
    ];
    for (group, faults, why) in &cases {
        let tokens = e.token_requests();
        for f in faults {
            e.push_fault(f.clone());
        }
        let (s, events) = pass_events(&r, &only(group)).await;
        assert_eq!(
            (s.groups, s.unread, s.gone, s.published, events.len()),
            (1, 1, 0, 0, 0),
            "{group} {faults:?}: {s:?}"
        );
        assert!(!s.complete());
        let app = &s.apps[APPKEY];
        assert_eq!(app.unread_groups, [format!("group:{group}")]);
        assert!(
            app.unread_because.keys().any(|k| k.contains(why)),
            "{group} {faults:?}: {:?}",
            app.unread_because
        );
        assert_eq!(e.faults_left(), 0, "{group} {faults:?}");
        if *group == "ev-401" {
            assert_eq!(e.token_requests(), tokens + 1, "one renewal, then unread");
        }
    }
    let unread = "mutebridge_reconcile_groups_total{outcome=\"unread\"}";
    assert_eq!(metric_of(&metrics, unread), cases.len() as f64);
    assert_eq!(
        metric_of(
            &metrics,
            "mutebridge_reconcile_passes_total{outcome=\"incomplete\"}"
        ),
        cases.len() as f64
    );

    // Easemob's "does not exist" once, then the group after all: here.
    e.push_fault(RestFault::NotFoundNaming("ev-back".into()));
    let from = e.calls().len();
    let (s, events) = pass_events(&r, &only("ev-back")).await;
    assert_eq!((s.agreed, s.gone, events.len()), (1, 0, 0), "{s:?}");
    assert_eq!(calls_to(&e, from, "/chatgroups/ev-back"), [404, 200]);

    // Nothing was destroyed on any of those answers: with scope = "known"
    // every group is still there to compare, and the next pass, with
    // Easemob answering as itself, finds the six gone, each after two reads
    // of it alone.
    // The keeper has finished every event in the topic, so also anything
    // those passes could have published.
    bed.w.wait_finished(&bed.h, "state").await;
    assert_eq!(bed.w.metric(removed), 0.0);
    let from = e.calls().len();
    let (s, events) = pass_events(&r, &Options::default()).await;
    assert_eq!(
        (s.groups, s.gone, s.agreed, s.unread, s.published),
        (7, 6, 1, 0, 6),
        "{s:?}"
    );
    assert!(s.complete());
    assert!(events.iter().all(|e| e.kind.as_str() == "group_destroyed"));
    for g in deleted {
        assert_eq!(
            calls_to(&e, from, &format!("/chatgroups/{g}")),
            [404, 404],
            "{g}"
        );
    }
    assert!(
        wait_until(WAIT, || bed.w.metric(removed) == 6.0).await,
        "{}",
        bed.w.metric(removed)
    );
    // Gone for good: once the tombstones are in, passes do not read them.
    let deadline = Instant::now() + WAIT;
    loop {
        let s = once(&r).await;
        if (s.groups, s.agreed) == (1, 1) {
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bed.w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmuting_most_of_a_group_waits_for_a_second_read_that_agrees() {
    let mut bed = Bed::start(100.0, Reach::Known).await;
    let e = bed.easemob.clone();
    let until = e.server_time_ms() + 3_600_000;
    let six: Vec<String> = (1..=6).map(|i| format!("u{i}")).collect();
    let four: Vec<String> = (1..=4).map(|i| format!("v{i}")).collect();
    for (group, users) in [("many", &six), ("few", &four)] {
        e.add_group(ChatScope::Group, group, false);
        for u in users {
            e.mute_member(ChatScope::Group, group, u, until);
        }
        post_ok(
            &bed.h,
            &crate::worker::member_mute(group, users, Some(until)),
        )
        .await;
    }
    bed.states_written(2.0).await;
    let (r, metrics) = bed.reconciler().await;
    let s = once(&r).await;
    assert_eq!((s.agreed, s.published), (2, 0), "{s:?}");

    // One answer for "many" lists a single member (a bad answer): 5 of 6
    // is more than half, the second read lists all six: held back.
    e.push_fault(RestFault::Truncate(1));
    let from = e.calls().len();
    let (s, events) = pass_events(&r, &only("many")).await;
    assert_eq!(
        (s.held_back, s.differed, s.published, events.len()),
        (1, 0, 0, 0),
        "{s:?}"
    );
    assert!(!s.complete());
    assert_eq!(s.apps[APPKEY].held_back_groups, ["group:many"]);
    assert_eq!(calls_to(&e, from, "/chatgroups/many/mute"), [200, 200]);
    let line =
        format!("mutebridge_reconcile_last_pass_groups{{app=\"{APPKEY}\",outcome=\"held_back\"}}");
    assert_eq!(metric_of(&metrics, &line), 1.0);
    assert_eq!(
        metric_of(
            &metrics,
            "mutebridge_reconcile_groups_total{outcome=\"held_back\"}"
        ),
        1.0
    );
    let text = mutebridge::reconcile::describe(&s, false, "events").join("\n");
    assert!(text.contains("1 held back"), "{text}");
    assert!(
        text.contains(&format!("{APPKEY}: 1 group(s) held back")) && text.contains("group:many"),
        "{text}"
    );

    // Five of six really unmuted, one of four in "few": both reads of
    // "many" agree and the five are unmuted; "few" is read once.
    for u in &six[1..] {
        e.unmute_member(ChatScope::Group, "many", u);
    }
    e.unmute_member(ChatScope::Group, "few", "v1");
    let from = e.calls().len();
    let (s, events) = pass_events(&r, &Options::default()).await;
    assert_eq!((s.differed, s.held_back, s.published), (2, 0, 2), "{s:?}");
    assert!(s.complete());
    assert_eq!(calls_to(&e, from, "/chatgroups/many/mute"), [200, 200]);
    assert_eq!(calls_to(&e, from, "/chatgroups/few/mute"), [200]);
    let mut unmuted: Vec<Vec<String>> = events.iter().map(|e| e.members.clone()).collect();
    unmuted.sort();
    assert_eq!(unmuted, [six[1..].to_vec(), vec!["v1".to_owned()]]);
    assert!(
        wait_until(WAIT, || bed
            .zego_calls("many")
            .iter()
            .any(|c| c.2 == Some(0) && c.1 == six[1..]))
        .await,
        "{:?}",
        bed.zego_calls("many")
    );
    bed.w.stop().await;
}

/// `[easemob.apps.rest]` for `easemob`, with this Client Secret.
fn rest_table(easemob: &FakeEasemobRest, secret: &str) -> RestConfig {
    toml::from_str(&format!(
        "base_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret}\"\nrate_per_second = 100\n",
        easemob.base_url()
    ))
    .unwrap()
}

const THIRD_APPKEY: &str = "third#app";
const THIRD_SECRET: &str = "third-rule-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_app_s_failures_never_stop_another_s_and_the_summary_names_them() {
    // test#app: its listing's cursor comes back (A -> B -> A) after 3
    // pages; XXXX#XXXX: its token is refused; third#app: its listing
    // answers 503.
    let (org, app) = SEED_APPKEY.split_once('#').unwrap();
    let refused = FakeEasemobRest::start(org, app, CLIENT_ID, CLIENT_SECRET, 100).await;
    let (org, app) = THIRD_APPKEY.split_once('#').unwrap();
    let third = FakeEasemobRest::start(org, app, CLIENT_ID, CLIENT_SECRET, 100).await;
    let mut bed = Bed::start_with(100.0, Reach::All, |c| {
        c.easemob.apps[1].rest = Some(rest_table(&refused, "not-the-secret"));
        c.easemob.apps.push(mutebridge::config::EasemobApp {
            appkey: THIRD_APPKEY.into(),
            secrets: vec![Secret::new(THIRD_SECRET)],
            rest: Some(rest_table(&third, CLIENT_SECRET)),
        });
    })
    .await;
    let e = bed.easemob.clone();
    for g in ["iso-a1", "iso-a2", "iso-a3"] {
        e.add_group(ChatScope::Group, g, true);
    }
    // Listed on the pages before the loop, and never compared (--groups).
    for i in 0..2100 {
        e.add_group(ChatScope::Group, &format!("bulk-{i:04}"), false);
    }
    e.set_list_cycle_at(Some(3));
    third.add_group(ChatScope::Group, "iso-c1", true);
    third.set_list_status(Some(503));
    for g in ["iso-a1", "iso-a2"] {
        post_ok(&bed.h, &mute_all(g)).await;
    }
    for g in ["iso-b1", "iso-b2"] {
        post_ok(&bed.h, &from_app(mute_all(g), SEED_APPKEY, SEED_SECRET)).await;
    }
    post_ok(
        &bed.h,
        &from_app(mute_all("iso-c1"), THIRD_APPKEY, THIRD_SECRET),
    )
    .await;
    bed.states_written(5.0).await;

    let (r, metrics) = bed.reconciler().await;
    let s = tokio::time::timeout(WAIT, r.pass(&only("iso-*")))
        .await
        .expect("the looping listing ends")
        .unwrap();
    let (a, b, c) = (&s.apps[APPKEY], &s.apps[SEED_APPKEY], &s.apps[THIRD_APPKEY]);
    // test#app: its known groups and the listed one without a state.
    assert_eq!(
        (a.groups, a.agreed, a.differed, a.unread, a.listed),
        (3, 2, 1, 0, 2103),
        "{a:?}"
    );
    assert!(
        a.failures[&AppFailure::Listing].contains("a cursor it gave before"),
        "{a:?}"
    );
    assert_eq!(
        e.calls().iter().filter(|c| c.path == "/chatgroups").count(),
        3,
        "three pages, then the cursor came back"
    );
    // XXXX#XXXX: nothing read, each group named.
    assert_eq!((b.groups, b.unread), (2, 2), "{b:?}");
    let mut named = b.unread_groups.clone();
    named.sort();
    assert_eq!(named, ["group:iso-b1", "group:iso-b2"]);
    assert!(
        b.unread_because.keys().all(|k| k.contains("no token")),
        "{b:?}"
    );
    assert!(
        b.failures[&AppFailure::Listing].contains("no token"),
        "{b:?}"
    );
    assert_eq!(
        refused.token_requests(),
        1,
        "one refused fetch, not one per read"
    );
    // third#app: its known group read, its listing failed.
    assert_eq!((c.groups, c.agreed), (1, 1), "{c:?}");
    assert!(
        c.failures[&AppFailure::Listing].contains("HTTP 503"),
        "{c:?}"
    );
    assert!(!s.complete());
    assert_eq!(s.published, 1);
    // The listed group of test#app reaches the targets all the same.
    assert!(
        wait_until(WAIT, || bed.zego_calls("iso-a3").len() == 1).await,
        "{:?}",
        bed.zego.calls()
    );
    // The metrics say which apps, and how many of their groups.
    let gauge = |name: &str, labels: &str| metric_of(&metrics, &format!("{name}{{{labels}}}"));
    let failures = "mutebridge_reconcile_last_pass_failures";
    let groups = "mutebridge_reconcile_last_pass_groups";
    for app in [APPKEY, SEED_APPKEY, THIRD_APPKEY] {
        assert_eq!(
            gauge(failures, &format!("app=\"{app}\",stage=\"listing\"")),
            1.0,
            "{app}"
        );
        assert_eq!(
            gauge(failures, &format!("app=\"{app}\",stage=\"state_topic\"")),
            0.0
        );
    }
    assert_eq!(
        gauge(groups, &format!("app=\"{SEED_APPKEY}\",outcome=\"unread\"")),
        2.0
    );
    assert_eq!(
        gauge(groups, &format!("app=\"{APPKEY}\",outcome=\"corrected\"")),
        1.0
    );
    assert_eq!(
        gauge(groups, &format!("app=\"{APPKEY}\",outcome=\"differed\"")),
        0.0
    );
    assert_eq!(
        metric_of(
            &metrics,
            "mutebridge_reconcile_passes_total{outcome=\"incomplete\"}"
        ),
        1.0
    );

    // The command: the same in words, and exit 1.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("reconcile.toml");
    let app_table = |appkey: &str, secret: &str, easemob: &FakeEasemobRest, client_secret: &str| {
        format!(
            "[[easemob.apps]]\nappkey = \"{appkey}\"\nsecrets = [\"{secret}\"]\n[easemob.apps.rest]\nbase_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{client_secret}\"\nrate_per_second = 100\n",
            easemob.base_url()
        )
    };
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{}\"\npartitions = {}\ncreate_topics = false\n[worker]\nstate_topic = \"{}\"\n[reconcile]\nscope = \"all\"\ninterval_seconds = 0\n{}{}{}",
            bed.h.cluster.bootstrap_servers(),
            bed.h.config.kafka.topic,
            bed.h.config.kafka.partitions,
            bed.h.config.worker.state_topic,
            app_table(APPKEY, SECRETS[0], &e, CLIENT_SECRET),
            app_table(SEED_APPKEY, SEED_SECRET, &refused, "not-the-secret"),
            app_table(THIRD_APPKEY, THIRD_SECRET, &third, CLIENT_SECRET),
        ),
    )
    .unwrap();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        command(&config, &["--once", "--dry-run", "--groups", "iso-*"], None)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{err}");
    for line in [
        "test#app: not every group listed, the unlisted ones not compared: GET /chatgroups gave back, after 3 page(s), a cursor it gave before",
        "XXXX#XXXX: 2 group(s) not read: ",
        "because: details: no token: POST /token answered 401",
        "XXXX#XXXX: not every group listed, the unlisted ones not compared: GET /chatgroups failed after 0 page(s): no token",
        "third#app: not every group listed, the unlisted ones not compared: GET /chatgroups failed after 0 page(s): HTTP 503",
        "incomplete: 2 group(s) not read, 0 held back, 3 app(s) not read to the end (XXXX#XXXX, test#app, third#app)",
    ] {
        assert!(err.contains(line), "{line}\nin\n{err}");
    }
    assert!(
        err.contains("group:iso-b1") && err.contains("group:iso-b2"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-secret") && !err.contains(CLIENT_SECRET),
        "{err}"
    );
    bed.w.stop().await;
}

/// Another host, counting every connection made to it.
struct Elsewhere {
    url: String,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Elsewhere {
    async fn start() -> Elsewhere {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        Elsewhere { url, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_client_follows_no_redirect_and_sends_credentials_over_https_only() {
    let mut bed = Bed::start(100.0, Reach::Known).await;
    let e = bed.easemob.clone();
    e.add_group(ChatScope::Group, "rd-1", true);
    post_ok(&bed.h, &mute_all("rd-1")).await;
    bed.states_written(1.0).await;
    let elsewhere = Elsewhere::start().await;

    // The token request redirected: the Client Secret stays here.
    e.redirect_token_to(Some(elsewhere.url.clone()));
    let (r, _) = bed.reconciler().await;
    let s = once(&r).await;
    assert_eq!(s.unread, 1, "{s:?}");
    let why: Vec<&String> = s.apps[APPKEY].unread_because.keys().collect();
    assert!(
        why[0].contains("307") && why[0].contains("not followed"),
        "{why:?}"
    );
    assert_eq!(e.token_requests(), 1);

    // A read redirected: the token stays here.
    e.redirect_token_to(None);
    let (r, _) = bed.reconciler().await;
    e.push_fault(RestFault::Redirect(elsewhere.url.clone()));
    let s = once(&r).await;
    assert_eq!(s.unread, 1, "{s:?}");
    let why: Vec<&String> = s.apps[APPKEY].unread_because.keys().collect();
    assert!(
        why[0].contains("HTTP 307: a redirect, not followed"),
        "{why:?}"
    );
    assert_eq!(s.rest_errors.get("307"), Some(&1), "not retried: {s:?}");
    assert_eq!(elsewhere.connections(), 0);
    let s = once(&r).await;
    assert_eq!(s.agreed, 1, "{s:?}");

    // Plain http to another host is refused at load, naming file and key.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plain.toml");
    std::fs::write(
        &config,
        format!("[[easemob.apps]]\nappkey = \"{APPKEY}\"\nsecrets = [\"s\"]\n[easemob.apps.rest]\nbase_url = \"http://a1.easemob.com\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n"),
    )
    .unwrap();
    let (code, _, err) = command(&config, &["--once"], None);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "{}: easemob.apps[0].rest.base_url:",
            config.display()
        )) && err.contains("use https://"),
        "{err}"
    );
    assert!(!err.contains(CLIENT_SECRET), "{err}");
    bed.w.stop().await;
}

/// Runs `mutebridge reconcile --config CONFIG --once --dry-run --groups
/// PATTERN` and returns its exit code, its stderr and its peak resident
/// memory (KiB): the kernel's high-water mark of the process's own memory
/// (`VmHWM`), read until it exits. (Not `wait4`'s `ru_maxrss`: that keeps
/// the size of the process it was spawned from, this test's.)
fn peak_memory(
    config: &std::path::Path,
    pattern: &str,
    log: &std::path::Path,
) -> (i32, String, u64) {
    let stderr = std::fs::File::create(log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mutebridge"))
        .arg("reconcile")
        .arg("--config")
        .arg(config)
        .args(["--once", "--dry-run", "--groups", pattern])
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let code = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit.code().unwrap_or(-1);
        }
        // Gone once the process has exited (before it is reaped).
        if let Some(hwm) = std::fs::read_to_string(&status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            peak_kib = peak_kib.max(hwm);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(peak_kib > 0, "no memory figure read");
    (code, std::fs::read_to_string(log).unwrap(), peak_kib)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_holds_a_batch_of_states_however_many_groups_it_reads() {
    // Groups with 200 muted members each, in the state topic as the
    // workers write them and in Easemob alike; one pass reads 100 of them,
    // another 1,500 (of the same topic). A pass that held its states would
    // hold about 40 MB more in the second.
    const MEMBERS: usize = 200;
    let (small, large) = (100usize, 1500usize);
    let h = Harness::start().await;
    let embedded = h.cluster.embedded().unwrap();
    let state_topic = h.config.worker.state_topic.clone();
    embedded
        .create_topic(&state_topic, h.config.kafka.partitions)
        .unwrap();
    let (org, app) = APPKEY.split_once('#').unwrap();
    let e = FakeEasemobRest::start(org, app, CLIENT_ID, CLIENT_SECRET, 100).await;
    let until = e.server_time_ms() + 86_400_000;
    let producer: rdkafka::producer::FutureProducer =
        mutebridge::producer_config(&h.config.kafka, h.cluster.bootstrap_servers())
            .create()
            .unwrap();
    let mut state_bytes = 0;
    for (prefix, n) in [("small", small), ("large", large)] {
        let mut sent = Vec::new();
        for i in 0..n {
            let id = format!("{prefix}-{i:04}");
            e.add_group(ChatScope::Group, &id, false);
            let mut state =
                mutebridge::state::GroupState::new(APPKEY, mutebridge::event::Scope::Group, &id);
            for m in 0..MEMBERS {
                let user = format!("member-{m:03}");
                e.mute_member(ChatScope::Group, &id, &user, until);
                state.members.insert(
                    user,
                    mutebridge::state::MemberState {
                        muted: true,
                        until_ms: Some(until),
                        at_ms: until - 86_400_000,
                        event_id: uuid::Uuid::new_v4().to_string(),
                    },
                );
            }
            state.updated_at_ms = now_ms();
            let key = state.key();
            let value = serde_json::to_vec(&state).unwrap();
            if prefix == "large" {
                state_bytes += value.len();
            }
            let topic = state_topic.clone();
            let producer = producer.clone();
            sent.push(tokio::spawn(async move {
                let record = rdkafka::producer::FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&value);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            }));
        }
        for s in sent {
            s.await.unwrap().expect("the state record is stored");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("reconcile.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{}\"\npartitions = {}\ncreate_topics = false\n[worker]\nstate_topic = \"{state_topic}\"\n[reconcile]\ninterval_seconds = 0\n[[easemob.apps]]\nappkey = \"{APPKEY}\"\nsecrets = [\"s\"]\n[easemob.apps.rest]\nbase_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nrate_per_second = 100\n",
            h.cluster.bootstrap_servers(),
            h.config.kafka.topic,
            h.config.kafka.partitions,
            e.base_url()
        ),
    )
    .unwrap();
    let run = |pattern: &'static str, log: &'static str| {
        let (config, log) = (config.clone(), dir.path().join(log));
        tokio::task::spawn_blocking(move || peak_memory(&config, pattern, &log))
    };
    let (code, err, small_kib) = run("small-*", "small.log").await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("{small} group(s) compared"))
            && err.contains(&format!("{small} agreed")),
        "{err}"
    );
    let (code, err, large_kib) = run("large-*", "large.log").await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("{large} group(s) compared"))
            && err.contains(&format!("{large} agreed")),
        "{err}"
    );
    // The figures deploy/README.md quotes.
    eprintln!(
        "peak memory of a pass: {small} groups {:.1} MiB, {large} groups {:.1} MiB ({:.1} MiB of their state records)",
        small_kib as f64 / 1024.0,
        large_kib as f64 / 1024.0,
        state_bytes as f64 / 1048576.0
    );
    // A pass that kept what it read would grow by at least the records'
    // own 36 MiB. One that keeps a batch grows by what a batch and its
    // read-ahead hold once full, which the 100-group pass may not reach:
    // 3.7 to 9.3 MiB in the runs deploy/README.md quotes.
    let growth_kib = large_kib.saturating_sub(small_kib);
    assert!(
        growth_kib < state_bytes as u64 / 1024 / 2,
        "{large} groups took {growth_kib} KiB more than {small} ({} KiB of state records)",
        state_bytes / 1024
    );
}
