//! `mutebridge verify` end to end: callbacks through the real ingest, a
//! real worker applying them to the ZEGO, RongCloud, Tencent and Agora
//! stand-ins, drift made in the stand-ins behind mutebridge's back, found
//! by reading them back through their documented read APIs, and repaired
//! through the worker with the remaining time of each timed mute.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::fixtures::RedisServer;
use crate::im_targets::{
    agora_target, tencent_pair, tencent_target, AGORA_APP_ID, AGORA_CERT, TENCENT_ADMIN,
    TENCENT_APP, TENCENT_KEY,
};
use crate::providers::{Call, FakeRongCloud, FakeZego, Provider};
use crate::providers_agora::{FakeAgora, Kind};
use crate::providers_tencent::FakeTencent;
use crate::support::*;
use crate::worker::{
    cli_config, member_mute, mutebridge, policy, post_ok, rc_target, unmute_all, zego_target,
    RC_KEY, RC_SECRET, ZEGO_APP, ZEGO_SECRET,
};
use mutebridge::verify::diff::{Difference, Dimension};
use mutebridge::verify::expect::Place;
use mutebridge::verify::repair::Plan;
use mutebridge::verify::{Options, Summary, TargetReport, Verifier};
use mutebridge::{Config, Metrics};
use serde_json::{json, Map, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Group mutes to ZEGO (same ID) and to RongCloud (`rc-` + ID); chatroom
/// mutes to RongCloud chatrooms (same ID).
fn mirror(zego: &FakeZego, rc: &FakeRongCloud, extra: &str) -> String {
    format!(
        "{}rate_per_second = 100\n{extra}{}time_zone = \"beijing\"\n{}",
        zego_target(zego, "zego"),
        rc_target(&[rc], "rc"),
        r#"
[[policy.rules]]
name = "group mutes to ZEGO and RongCloud"
when = { scope = "group", kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"] }
then = [{ target = "zego", group = "{group_id}" }, { target = "rc", group = "rc-{group_id}" }]

[[policy.rules]]
name = "chatroom mutes to RongCloud"
when = { scope = "chatroom", kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"] }
then = [{ target = "rc", chatroom = "{group_id}" }]
"#
    )
}

fn chatroom(mut body: Map<String, Value>) -> Map<String, Value> {
    body.insert("type".into(), json!("CHATROOM"));
    resign(&mut body, SECRETS[0]);
    body
}

fn users(u: &[&str]) -> Vec<String> {
    u.iter().map(|s| s.to_string()).collect()
}

/// A verifier of every target of `config`, on the harness's cluster.
async fn verifier(h: &Harness, config: &Config) -> (Verifier, Metrics) {
    let metrics = Metrics::new();
    let v = Verifier::start(&checked(config), &h.cluster, &metrics, None, false)
        .await
        .expect("the verifier starts");
    (v, metrics)
}

/// Passes until one compares `places` places (over every target) and
/// leaves no dimension pending: the group states and the targets' records
/// of what they applied are written a moment after the calls.
async fn settled(v: &Verifier, options: &Options, places: usize) -> Summary {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = v.pass(options).await.expect("a pass runs");
        let compared: usize = s.targets.iter().map(|t| t.places).sum();
        let done = compared == places && s.targets.iter().all(|t| t.pending == 0);
        if done || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `(target, place, dimension, user, difference)` of every finding.
fn found(s: &Summary) -> Vec<(String, String, Dimension, Option<String>, Difference)> {
    let mut out: Vec<_> = s
        .targets
        .iter()
        .flat_map(|t| {
            t.compared.findings.iter().map(move |f| {
                (
                    t.target.clone(),
                    f.place.to_string(),
                    f.dimension,
                    f.user.clone(),
                    f.difference,
                )
            })
        })
        .collect();
    out.sort();
    out
}

fn group(id: &str) -> String {
    Place::Group(id.into()).to_string()
}

/// ms since the epoch, as a ZEGO or RongCloud end.
fn ends_near(end: Option<i64>, want: i64, within_ms: i64) -> bool {
    end.is_some_and(|e| (e - want).abs() <= within_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_made_behind_mutebridge_s_back_is_found_and_repaired_with_the_remaining_time() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 100.0).await;
    let rc = FakeRongCloud::start(RC_KEY, RC_SECRET, 100.0).await;
    let text = mirror(&zego, &rc, "");
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    let until = now_ms() + 3_600_000;
    post_ok(&h, &mute_all("g1")).await;
    post_ok(&h, &member_mute("g1", &users(&["u1"]), Some(until))).await;
    post_ok(&h, &member_mute("g2", &users(&["u2"]), Some(until))).await;
    post_ok(&h, &mute_all("g3")).await;
    post_ok(&h, &unmute_all("g3")).await;
    post_ok(&h, &mute_all("g4")).await;
    post_ok(&h, &chatroom(mute_all("room1"))).await;
    post_ok(
        &h,
        &chatroom(member_mute("room1", &users(&["u3"]), Some(until))),
    )
    .await;
    let applied = || {
        zego.held().muted_members("g2").contains_key("u2")
            && zego.held().mute_all("g4").is_some()
            && zego
                .calls()
                .iter()
                .rfind(|c| c.id == "g3")
                .is_some_and(|c| c.duration == Some(0))
            && rc.held().gagged(true, "room1").contains_key("u3")
            && rc.held().banned(true, "room1")
            && rc.held().gagged(false, "rc-g2").contains_key("u2")
            && rc
                .calls()
                .iter()
                .rfind(|c| c.id == "rc-g3")
                .is_some_and(|c| c.action.contains("rollback"))
    };
    assert!(
        wait_until(WAIT, applied).await,
        "zego {:?}\nrc {:?}",
        zego.calls(),
        rc.calls()
    );
    let first_u2 = zego
        .calls()
        .into_iter()
        .find(|c| c.users == ["u2"])
        .expect("u2 muted on ZEGO");

    // Nothing has drifted: a pass that repairs finds nothing and sends
    // nothing (no marker, so no call; its reads are the only requests).
    let (v, metrics) = verifier(&h, &h.config).await;
    let (zego_writes, rc_writes) = (zego.calls().len(), rc.calls().len());
    let clean = settled(
        &v,
        &Options {
            repair: true,
            ..Options::default()
        },
        9,
    )
    .await;
    assert_eq!(found(&clean), []);
    assert!(clean.ok());
    assert!(clean
        .targets
        .iter()
        .all(|t| t.published == 0 && t.repairs.is_empty()));
    assert_eq!(
        (zego.calls().len(), rc.calls().len()),
        (zego_writes, rc_writes)
    );
    let z = &clean.targets[1];
    assert_eq!(z.target, "zego");
    // ZEGO: one list page for the whole app, no per-group read needed.
    assert_eq!(
        z.reads,
        BTreeMap::from([("FetchForbidGroupList", 1)]),
        "{:?}",
        z.reads
    );
    assert_eq!(
        z.compared.unverified, 2,
        "u1 and u2 are checked by ZEGO's flag only"
    );
    assert!(z
        .blind
        .unwrap()
        .contains("no server API that lists muted members"));
    // RongCloud: the group and chatroom ban lists, a gag list per place.
    let r = &clean.targets[0];
    assert_eq!(r.places, 5);
    assert_eq!(r.reads["/group/user/gag/list.json"], 4);
    assert_eq!(r.reads["/chatroom/user/gag/list.json"], 1);

    // The time shows in what a repair sends: a restarted mute would end
    // this much later than the callback said.
    assert!(wait_until(WAIT, || first_u2.at.elapsed() >= Duration::from_secs(3)).await);
    // Behind mutebridge's back: a moderator lifts mutes, mutes someone
    // else, a chatroom is destroyed and created again empty.
    zego.held().console_unmute_all("g1");
    zego.held().console_unmute_member("g2", "u2");
    zego.held().console_mute_all("g3", -1);
    zego.held().console_mute_member("g4", "stranger", 600);
    rc.held().console_ungag(false, "rc-g1", "u1");
    rc.held().console_gag(false, "rc-g2", "intruder", 60);
    rc.held().recreate_chatroom("room1");
    let repair = Options {
        repair: true,
        ..Options::default()
    };
    let s = v.pass(&repair).await.expect("a pass runs");
    let m = |t: &str, p: &str, d, u: Option<&str>, k| {
        (t.to_owned(), p.to_owned(), d, u.map(str::to_owned), k)
    };
    use Difference::*;
    use Dimension::*;
    let room = Place::Chatroom("room1".into()).to_string();
    assert_eq!(
        found(&s),
        [
            m("rc", &room, MuteAll, None, Missing),
            m("rc", &room, Member, Some("u3"), Missing),
            m("rc", &group("rc-g1"), Member, Some("u1"), Missing),
            m("rc", &group("rc-g2"), Member, Some("intruder"), Extra),
            m("zego", &group("g1"), MuteAll, None, Missing),
            m("zego", &group("g2"), Member, Some("u2"), Missing),
            m("zego", &group("g3"), MuteAll, None, Extra),
            m("zego", &group("g4"), Member, None, Extra),
        ],
    );
    // Who is muted on g4 ZEGO cannot say: reported, not guessed at.
    let z = s.targets.iter().find(|t| t.target == "zego").unwrap();
    let g4 = z
        .compared
        .findings
        .iter()
        .position(|f| f.place == Place::Group("g4".into()))
        .unwrap();
    assert!(matches!(&z.plans[g4], Plan::Cannot(why) if why.contains("lists no muted members")));
    assert!(!s.ok(), "an unrepairable difference fails the pass");
    // ZEGO confirmed the two mute-all differences with the group's own read.
    assert_eq!(z.reads.get("QueryGroupInfo"), Some(&2), "{:?}", z.reads);
    assert_eq!(z.published, 3);
    assert_eq!(
        s.targets
            .iter()
            .find(|t| t.target == "rc")
            .unwrap()
            .published,
        3
    );
    assert_eq!(
        metric_of(&metrics, "mutebridge_verify_last_pass_differences"),
        8.0
    );
    assert_eq!(
        metric_of(&metrics, "mutebridge_verify_differences_total{difference=\"missing\",dimension=\"member\",target=\"rc\"}"),
        2.0
    );

    // The worker applies the repairs in each group's order.
    let repaired = || {
        zego.held().mute_all("g1").is_some()
            && zego.held().muted_members("g2").contains_key("u2")
            && zego.held().mute_all("g3").is_none()
            && rc.held().gagged(false, "rc-g1").contains_key("u1")
            && !rc.held().gagged(false, "rc-g2").contains_key("intruder")
            && rc.held().banned(true, "room1")
            && rc.held().gagged(true, "room1").contains_key("u3")
    };
    assert!(
        wait_until(WAIT, repaired).await,
        "zego {:?}\nrc {:?}",
        zego.calls(),
        rc.calls()
    );
    // The remaining time, not the original length: the ends are the
    // callback's, and the repair's duration is shorter than the first.
    let again_u2 = zego
        .calls()
        .into_iter()
        .rfind(|c| c.users == ["u2"])
        .unwrap();
    assert!(
        again_u2.duration.unwrap() <= first_u2.duration.unwrap() - 3,
        "first {:?}, repair {:?}",
        first_u2.duration,
        again_u2.duration
    );
    assert!(ends_near(
        zego.held().muted_members("g2")["u2"],
        until,
        1500
    ));
    // RongCloud counts minutes, rounded up: within a minute of the end.
    assert!(ends_near(
        rc.held().gagged(false, "rc-g1")["u1"],
        until,
        60_000
    ));
    assert!(ends_near(
        rc.held().gagged(true, "room1")["u3"],
        until,
        60_000
    ));
    // Nothing else was sent: one call per repaired dimension.
    let after = |calls: Vec<crate::providers::Call>, n: usize| {
        calls[n..]
            .iter()
            .map(|c| (c.action.clone(), c.id.clone(), c.users.clone()))
            .collect::<Vec<_>>()
    };
    let zego_repairs = after(zego.calls(), zego_writes);
    assert_eq!(zego_repairs.len(), 3, "{zego_repairs:?}");
    let rc_repairs = after(rc.calls(), rc_writes);
    assert_eq!(rc_repairs.len(), 4, "{rc_repairs:?}");
    assert!(rc_repairs.contains(&(
        "/group/user/gag/rollback.json".into(),
        "rc-g2".into(),
        users(&["intruder"])
    )));
    assert!(
        zego.rejected().is_empty() && rc.rejected().is_empty(),
        "{:?} {:?}",
        zego.rejected(),
        rc.rejected()
    );

    // Repaired: the next pass finds only what cannot be repaired.
    let s = settled(&v, &Options::default(), 9).await;
    assert_eq!(found(&s), [m("zego", &group("g4"), Member, None, Extra)]);
    w.stop().await;
}

/// A rule's own length (`mute_seconds`: the callback says no end): the
/// provider ends it that long after the target applied it, and a repair
/// sends what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mute_whose_length_the_rule_gives_is_repaired_with_what_is_left_of_it() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 100.0).await;
    let text = format!(
        "{}rate_per_second = 100\n{}",
        zego_target(&zego, "zego"),
        r#"
[[policy.rules]]
name = "timed mute-all"
when = { scope = "group", kinds = ["mute_all", "unmute_all"] }
then = [{ target = "zego", group = "{group_id}", mute_seconds = 600 }]

[[policy.rules]]
name = "timed member mutes"
when = { scope = "group", kinds = ["member_muted", "member_unmuted"] }
then = [{ target = "zego", group = "{group_id}", mute_seconds = 900 }]
"#
    );
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    post_ok(&h, &mute_all("t1")).await;
    post_ok(&h, &member_mute("t2", &users(&["m"]), None)).await;
    let applied = || {
        zego.held().mute_all("t1").is_some() && zego.held().muted_members("t2").contains_key("m")
    };
    assert!(wait_until(WAIT, applied).await, "{:?}", zego.calls());
    let end_all = zego.held().mute_all("t1").unwrap().unwrap();
    let end_m = zego.held().muted_members("t2")["m"].unwrap();
    let first = zego.calls();
    // The rules' lengths, counted from the events: a call made a few
    // seconds after its callback (a loaded machine) sends what is left.
    let mut lengths: Vec<i64> = first.iter().map(|c| c.duration.unwrap()).collect();
    lengths.sort();
    assert!(
        (590..=600).contains(&lengths[0]) && (890..=900).contains(&lengths[1]),
        "{lengths:?}"
    );

    let (v, _) = verifier(&h, &h.config).await;
    let clean = settled(&v, &Options::default(), 2).await;
    assert_eq!(found(&clean), []);
    assert!(wait_until(WAIT, || first[0].at.elapsed() >= Duration::from_secs(3)).await);
    // The mute-all now ends a minute from now, not when the rule said;
    // the member's mute is lifted.
    zego.held().console_mute_all("t1", 60);
    zego.held().console_unmute_member("t2", "m");
    let s = v
        .pass(&Options {
            repair: true,
            ..Options::default()
        })
        .await
        .unwrap();
    assert_eq!(
        found(&s),
        [
            (
                "zego".into(),
                group("t1"),
                Dimension::MuteAll,
                None,
                Difference::WrongEnd
            ),
            (
                "zego".into(),
                group("t2"),
                Dimension::Member,
                Some("m".into()),
                Difference::Missing
            ),
        ]
    );
    let repaired = || zego.calls().len() == 4;
    assert!(wait_until(WAIT, repaired).await, "{:?}", zego.calls());
    let calls = zego.calls();
    let all = calls[2..].iter().find(|c| c.action == "MuteGroup").unwrap();
    let member = calls[2..]
        .iter()
        .find(|c| c.action == "MuteGroupMembers")
        .unwrap();
    assert!(all.duration.unwrap() <= 597, "{all:?}");
    assert!(member.duration.unwrap() <= 897, "{member:?}");
    // Where the rule's length put them when first applied.
    assert!(ends_near(
        zego.held().mute_all("t1").unwrap(),
        end_all,
        1500
    ));
    assert!(ends_near(zego.held().muted_members("t2")["m"], end_m, 1500));
    w.stop().await;
}

/// A provider answers reads from the same per-app budget as writes: with
/// the exact limit (Redis) the verifier's reads and the worker's writes
/// take slots of one schedule, and a sliding-window 20/s ZEGO refuses none
/// while both run; the listing pages as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_share_the_target_s_rate_limit_with_the_worker() {
    let _heavy = HEAVY.lock().await;
    let redis = RedisServer::start();
    let zego = FakeZego::start_sliding(ZEGO_APP, ZEGO_SECRET, 20).await;
    zego.held().page_size = 5;
    let limited = format!(
        "{}[targets.zego.rate_limit]\nmode = \"redis\"\nurl = \"{}\"\n{}",
        zego_target(&zego, "zego"),
        redis.url(),
        crate::worker::ZEGO_RULE
    );
    let h = Harness::start_with(|c| policy(c, &limited)).await;
    let mut w = h.start_worker().await;
    let groups: Vec<String> = (0..40).map(|i| format!("rl-{i}")).collect();
    for g in &groups {
        post_ok(&h, &mute_all(g)).await;
    }
    assert!(wait_until(Duration::from_secs(60), || zego.calls().len() == 40).await);
    let (v, _) = verifier(&h, &h.config).await;
    let clean = settled(&v, &Options::default(), 40).await;
    assert_eq!(found(&clean), []);
    // 40 muted groups at 5 a page: 8 pages, the last one saying FetchEnd 1
    // (with a NextFlag all the same, as the documented example does).
    assert_eq!(
        clean.targets[0].reads,
        BTreeMap::from([("FetchForbidGroupList", 8)])
    );
    // Every mute-all lifted behind our back: each is confirmed with the
    // group's own read while the worker applies 40 new mutes.
    for g in &groups {
        zego.held().console_unmute_all(g);
    }
    let started = Instant::now();
    let busy: Vec<String> = (0..40).map(|i| format!("busy-{i}")).collect();
    for g in &busy {
        post_ok(&h, &mute_all(g)).await;
    }
    let s = v.pass(&Options::default()).await.unwrap();
    let z = &s.targets[0];
    assert_eq!(z.compared.findings.len(), 40, "{:?}", found(&s));
    assert_eq!(z.reads["QueryGroupInfo"], 40);
    assert!(wait_until(Duration::from_secs(60), || zego.calls().len() == 80).await);
    // Not one refusal, and no second with more than 20 requests.
    assert_eq!(zego.rate_limited(), 0, "refused while reading and writing");
    let arrivals: Vec<Instant> = zego
        .arrivals()
        .into_iter()
        .filter(|a| *a >= started)
        .collect();
    let busiest = arrivals
        .iter()
        .map(|a| {
            arrivals
                .iter()
                .filter(|b| **b >= *a && b.duration_since(*a) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(busiest <= 20, "{busiest} requests within a second");
    eprintln!(
        "reads and writes together: {} requests in {:.1?}, at most {busiest} in a second",
        arrivals.len(),
        started.elapsed()
    );
    w.stop().await;
}

/// The command: a line per difference, JSON lines, a dry run that says
/// what it would repair, the exit status, then the repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_reports_plans_and_repairs() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 100.0).await;
    let rc = FakeRongCloud::start(RC_KEY, RC_SECRET, 100.0).await;
    let text = mirror(&zego, &rc, "");
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    post_ok(&h, &mute_all("c1")).await;
    assert!(
        wait_until(WAIT, || zego.held().mute_all("c1").is_some()
            && rc.held().banned(false, "rc-c1"))
        .await
    );
    let file = cli_config(&h, &text);
    let path = file.path().to_str().unwrap();
    // Until the targets' records are written, the group is pending.
    let run = |args: &[&str]| {
        let mut all = vec!["verify", "--config", path];
        all.extend_from_slice(args);
        mutebridge(&all)
    };
    let clean = || {
        let out = run(&["--target", "zego"]);
        out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains(" 1 place(s) compared")
    };
    assert!(wait_until(WAIT, clean).await);
    zego.held().console_unmute_all("c1");
    let out = run(&["--dry-run"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("verify --dry-run:\n{stdout}{stderr}");
    assert!(
        !out.status.success(),
        "drift found and not repaired exits 1"
    );
    assert!(stdout.contains("zego: group c1 (test#app group c1): mute_all missing: expected muted permanently, held not muted; would be repaired"), "{stdout}");
    assert!(
        stdout.contains(
            "would publish a repair marker for test#app group c1 -> zego: mute_all apply"
        ),
        "{stdout}"
    );
    assert!(
        stderr.contains("cannot see: ZEGO has no server API"),
        "{stderr}"
    );
    assert!(
        stderr.contains("dry run: 1 repair marker(s) would be published"),
        "{stderr}"
    );
    let out = run(&["--json", "--target", "zego"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["difference"], "missing");
    assert_eq!(lines[0]["dimension"], "mute_all");
    assert_eq!(lines[0]["place"], json!({"group": "c1"}));
    assert_eq!(lines[0]["source"]["group_id"], "c1");
    assert_eq!(
        lines[0]["expected"],
        json!({"muted": true, "end": "permanent"})
    );
    assert_eq!(lines[1]["summary"]["differences"]["mute_all.missing"], 1);
    assert_eq!(lines[1]["summary"]["reads"]["QueryGroupInfo"], 1);
    let zego_writes = zego.calls().len();
    let out = run(&["--repair", "--target", "zego"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(WAIT, || zego.held().mute_all("c1").is_some()).await);
    assert_eq!(zego.calls().len(), zego_writes + 1);
    assert_eq!(rc.calls().len(), 1, "the other target is not touched");
    let out = run(&["--target", "webhook-less"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [targets.webhook-less]"));
    w.stop().await;
}

/// What a pass costs, measured: 1,000 groups mirrored to ZEGO and
/// RongCloud, read back at the default rates (`rate_per_second` 20 and
/// 100, headroom 0.95, `read_share` 0.5), once in agreement and once with
/// 100 of ZEGO's mute-alls lifted. Prints the reads per group and the
/// time (README, Verify; benches/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_over_1000_groups_at_the_default_rates() {
    let _heavy = HEAVY.lock().await;
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 2000.0).await;
    let rc = FakeRongCloud::start(RC_KEY, RC_SECRET, 2000.0).await;
    // The worker applies the setup quickly; the verifier reads at the
    // defaults (its config has no rate_per_second).
    let fast = mirror(&zego, &rc, "")
        .replace("rate_per_second = 100\n", "rate_per_second = 1000\n")
        .replace("time_zone", "rate_per_second = 1000\ntime_zone");
    let defaults = mirror(&zego, &rc, "").replace("rate_per_second = 100\n", "");
    let h = Harness::start_with(|c| policy(c, &fast)).await;
    let mut w = h.start_worker().await;
    let groups: Vec<String> = (0..1000).map(|i| format!("m-{i:04}")).collect();
    for g in &groups {
        post_ok(&h, &mute_all(g)).await;
    }
    let all_applied = || zego.calls().len() == 1000 && rc.calls().len() == 1000;
    assert!(wait_until(Duration::from_secs(120), all_applied).await);
    let mut config = h.config.clone();
    policy(&mut config, &defaults);
    let (v, _) = verifier(&h, &config).await;
    let report = |label: &str, s: &Summary| {
        for t in &s.targets {
            let reads: usize = t.reads.values().sum();
            eprintln!(
                "verify {label}: {}: {} places, {} reads ({:.3} per place) in {:.1} s ({:?}), {} differences",
                t.target,
                t.places,
                reads,
                reads as f64 / t.places as f64,
                t.seconds,
                t.reads,
                t.compared.findings.len()
            );
        }
    };
    let clean = settled(&v, &Options::default(), 2000).await;
    report("in agreement", &clean);
    assert_eq!(found(&clean), []);
    let (r, z) = (&clean.targets[0], &clean.targets[1]);
    assert_eq!((r.places, z.places), (1000, 1000));
    assert_eq!(z.reads, BTreeMap::from([("FetchForbidGroupList", 1)]));
    // One gag list per group, and the muted groups 200 a page.
    assert_eq!(r.reads["/group/user/gag/list.json"], 1000);
    assert_eq!(r.reads["/group/ban/query.json"], 6);
    // At 47.5 reads/s, 1,006 reads take at least 21 s.
    assert!(r.seconds >= 1005.0 / 47.5, "{:.1} s", r.seconds);
    for g in &groups[..100] {
        zego.held().console_unmute_all(g);
    }
    let drift = v.pass(&Options::default()).await.unwrap();
    report("with 100 of ZEGO's mute-alls lifted", &drift);
    let z = &drift.targets[1];
    assert_eq!(z.compared.findings.len(), 100);
    assert_eq!(z.reads["QueryGroupInfo"], 100);
    assert_eq!(zego.rate_limited() + rc.rate_limited(), 0);
    w.stop().await;
}

/// `[verify] interval_seconds` in the reconcile role (here without any
/// Easemob REST API: verify passes only), repairing as it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_role_verifies_and_repairs_on_a_schedule() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 100.0).await;
    let text = format!(
        "{}rate_per_second = 100\n{}",
        zego_target(&zego, "zego"),
        crate::worker::ZEGO_RULE
    );
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    post_ok(&h, &mute_all("s1")).await;
    assert!(wait_until(WAIT, || zego.held().mute_all("s1").is_some()).await);
    let file = cli_config(
        &h,
        &format!("{text}[http]\nlisten = \"127.0.0.1:0\"\n[verify]\ninterval_seconds = 1\nrepair = true\n"),
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("reconcile.log");
    let (_role, addr) = spawn_role("reconcile", file.path(), &log);
    let passes = || process_metric(addr, "mutebridge_verify_last_pass_timestamp_seconds") > 0.0;
    assert!(wait_until(WAIT, passes).await);
    assert_eq!(
        process_metric(addr, "mutebridge_verify_interval_seconds"),
        1.0
    );
    zego.held().console_unmute_all("s1");
    let repaired = || zego.held().mute_all("s1").is_some();
    assert!(
        wait_until(WAIT, repaired).await,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let line = "mutebridge_verify_repairs_total{target=\"zego\"}";
    assert!(wait_until(WAIT, || process_metric(addr, line) >= 1.0).await);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("the provider does not hold what the target should"),
        "{logged}"
    );
    w.stop().await;
}

/// Agora's path prefix in these tests (`{org}/{app}`).
const AGORA_PREFIX: &str = "61717166/1069763";

const MUTE_KINDS: &str = r#"kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"]"#;

/// Group mutes to Tencent and Agora (same IDs), chatroom mutes to Agora's
/// chat rooms; `extra(NAME)` is added to each target's table.
fn mirror_im(
    tencent: &[&FakeTencent],
    agora: &FakeAgora,
    extra: impl Fn(&str) -> String,
) -> String {
    format!(
        "{}{}{}{}
[[policy.rules]]
name = \"group mutes to Tencent and Agora\"
when = {{ scope = \"group\", {MUTE_KINDS} }}
then = [{{ target = \"tencent\", group = \"{{group_id}}\" }}, {{ target = \"agora\", group = \"{{group_id}}\" }}]

[[policy.rules]]
name = \"chatroom mutes to Agora\"
when = {{ scope = \"chatroom\", {MUTE_KINDS} }}
then = [{{ target = \"agora\", chatroom = \"{{group_id}}\" }}]
",
        tencent_target(tencent, "tencent"),
        extra("tencent"),
        agora_target(agora, "agora"),
        extra("agora"),
    )
}

async fn agora_app(rate: f64) -> FakeAgora {
    FakeAgora::start(AGORA_APP_ID, AGORA_CERT, AGORA_PREFIX, rate).await
}

fn target<'a>(s: &'a Summary, name: &str) -> &'a TargetReport {
    s.targets
        .iter()
        .find(|t| t.target == name)
        .unwrap_or_else(|| panic!("no report of {name}"))
}

/// The mute-all the last mute-all call to `id` set.
fn last_all(calls: &[Call], id: &str) -> Option<bool> {
    calls
        .iter()
        .rfind(|c| c.id == id && c.all_muted.is_some())
        .and_then(|c| c.all_muted)
}

/// What the stand-ins refused, other than the credentials they were told
/// to expire.
fn refused_other_than_expiry(p: &dyn Provider) -> Vec<String> {
    p.rejected()
        .into_iter()
        .filter(|r| !r.contains("expired"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_and_agora_drift_is_found_and_repaired_with_the_remaining_time() {
    let (tencent, backup) = tencent_pair().await;
    let agora = agora_app(100.0).await;
    let text = mirror_im(&[&tencent, &backup], &agora, |_| {
        "rate_per_second = 100\n".into()
    });
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    let until = now_ms() + 3_600_000;
    post_ok(&h, &mute_all("g1")).await;
    post_ok(&h, &member_mute("g1", &users(&["u1"]), Some(until))).await;
    post_ok(&h, &member_mute("g2", &users(&["u2"]), Some(until))).await;
    post_ok(&h, &mute_all("g3")).await;
    post_ok(&h, &unmute_all("g3")).await;
    post_ok(&h, &mute_all("g4")).await;
    post_ok(&h, &mute_all("g5")).await;
    post_ok(&h, &chatroom(mute_all("room1"))).await;
    post_ok(
        &h,
        &chatroom(member_mute("room1", &users(&["u3"]), Some(until))),
    )
    .await;
    let grp = Kind::Group;
    let applied = || {
        tencent.mute_all("g1")
            && tencent.muted("g1").contains_key("u1")
            && tencent.muted("g2").contains_key("u2")
            && tencent.mute_all("g4")
            && tencent.mute_all("g5")
            && last_all(&tencent.calls(), "g3") == Some(false)
            && agora.mute_all(grp, "g1")
            && agora.muted(grp, "g1").contains_key("u1")
            && agora.muted(grp, "g2").contains_key("u2")
            && agora.mute_all(grp, "g4")
            && agora.mute_all(grp, "g5")
            && last_all(&agora.calls(), "g3") == Some(false)
            && agora.mute_all(Kind::Room, "room1")
            && agora.muted(Kind::Room, "room1").contains_key("u3")
    };
    assert!(
        wait_until(WAIT, applied).await,
        "tencent {:?}\nagora {:?}",
        tencent.calls(),
        agora.calls()
    );
    let first_u2 = |calls: Vec<Call>| calls.into_iter().find(|c| c.users == ["u2"]).unwrap();
    let (t_first, a_first) = (first_u2(tencent.calls()), first_u2(agora.calls()));

    // In agreement: a repairing pass finds nothing and sends nothing.
    let (v, metrics) = verifier(&h, &h.config).await;
    let (t_writes, a_writes) = (tencent.calls().len(), agora.calls().len());
    let repair = Options {
        repair: true,
        ..Options::default()
    };
    let clean = settled(&v, &repair, 11).await;
    assert_eq!(found(&clean), []);
    assert!(clean.ok());
    for t in &clean.targets {
        assert!(t.published == 0 && t.repairs.is_empty(), "{}", t.target);
        assert_eq!(t.blind, None, "{} sees every dimension", t.target);
    }
    assert_eq!(
        (tencent.calls().len(), agora.calls().len()),
        (t_writes, a_writes)
    );
    // The flags in batches (Tencent 50 groups a read, Agora 100 of a
    // kind), then a member list per place.
    assert_eq!(
        target(&clean, "tencent").reads,
        BTreeMap::from([("get_group_info", 1), ("get_group_muted_account", 5)])
    );
    assert_eq!(
        target(&clean, "agora").reads,
        BTreeMap::from([
            ("GET chatgroups/{id}/mute", 5),
            ("GET chatgroups/{ids}", 1),
            ("GET chatrooms/{id}/mute", 1),
            ("GET chatrooms/{ids}", 1),
        ])
    );

    assert!(wait_until(WAIT, || t_first.at.elapsed() >= Duration::from_secs(3)).await);
    // The stand-ins refuse credentials made before the second they are
    // told to: let the second of the verifier's pass end.
    let read_in = now_ms() / 1000;
    assert!(wait_until(WAIT, || now_ms() / 1000 > read_in).await);
    // Behind mutebridge's back: a group re-created empty, a mute lifted, a
    // mute-all switched on, a stranger muted, a chat room re-created
    // empty, a group dismissed; and both credentials expire.
    tencent.recreate("g1");
    tencent.lift("g2", "u2");
    tencent.set_mute_all("g3", true);
    tencent.add_mute("g4", "stranger", now_ms() / 1000 + 600);
    tencent.only_groups(&["g1", "g2", "g3", "g4"]);
    agora.lift(grp, "g2", "u2");
    agora.set_mute_all(grp, "g3", true);
    agora.add_mute(grp, "g4", "stranger", now_ms() + 600_000);
    agora.recreate(Kind::Room, "room1");
    let still_there = [
        (grp, "g1"),
        (grp, "g2"),
        (grp, "g3"),
        (grp, "g4"),
        (Kind::Room, "room1"),
    ];
    agora.only(&still_there);
    tencent.expire_usersigs();
    agora.expire_tokens();
    let s = v.pass(&repair).await.expect("a pass runs");
    let m = |t: &str, p: &str, d, u: Option<&str>, k| {
        (t.to_owned(), p.to_owned(), d, u.map(str::to_owned), k)
    };
    use Difference::*;
    use Dimension::*;
    let room = Place::Chatroom("room1".into()).to_string();
    assert_eq!(
        found(&s),
        [
            m("agora", &room, MuteAll, None, Missing),
            m("agora", &room, Member, Some("u3"), Missing),
            m("agora", &group("g2"), Member, Some("u2"), Missing),
            m("agora", &group("g3"), MuteAll, None, Extra),
            m("agora", &group("g4"), Member, Some("stranger"), Extra),
            m("tencent", &group("g1"), MuteAll, None, Missing),
            m("tencent", &group("g1"), Member, Some("u1"), Missing),
            m("tencent", &group("g2"), Member, Some("u2"), Missing),
            m("tencent", &group("g3"), MuteAll, None, Extra),
            m("tencent", &group("g4"), Member, Some("stranger"), Extra),
        ],
    );
    // The renewed UserSig and app token read everything.
    assert!(tencent.expired_answers() >= 1, "Tencent refused no UserSig");
    assert!(agora.unauthorized() >= 1, "Agora refused no app token");
    // A dismissed group with a mute to hold is said, not repaired; the
    // rest is.
    for name in ["tencent", "agora"] {
        let t = target(&s, name);
        assert_eq!(t.compared.unread.len(), 1, "{:?}", t.compared.unread);
        let (place, why) = &t.compared.unread[0];
        assert_eq!(place, &Place::Group("g5".into()));
        assert!(why.contains("has no group g5"), "{why}");
        assert!(t.plans.iter().all(|p| matches!(p, Plan::Fix(_))));
        assert_eq!(t.published, 4, "{name}: a marker per drifted group");
    }
    assert!(!s.ok(), "an unread place fails the pass");
    // No member list of a group the provider does not have; Agora's
    // details left g5 out, so it was asked alone (404).
    let (t, a) = (target(&s, "tencent"), target(&s, "agora"));
    assert_eq!(t.reads["get_group_muted_account"], 4, "{:?}", t.reads);
    assert_eq!(a.reads["GET chatgroups/{id}/mute"], 4, "{:?}", a.reads);
    assert_eq!(a.reads["GET chatrooms/{id}/mute"], 1, "{:?}", a.reads);
    assert!(a.reads["GET chatgroups/{ids}"] >= 2, "{:?}", a.reads);
    assert_eq!(
        metric_of(&metrics, "mutebridge_verify_last_pass_differences"),
        10.0
    );

    // The worker applies the repairs, with what is left of each mute.
    let repaired = || {
        tencent.mute_all("g1")
            && tencent.muted("g1").contains_key("u1")
            && tencent.muted("g2").contains_key("u2")
            && !tencent.mute_all("g3")
            && !tencent.muted("g4").contains_key("stranger")
            && agora.muted(grp, "g2").contains_key("u2")
            && !agora.mute_all(grp, "g3")
            && !agora.muted(grp, "g4").contains_key("stranger")
            && agora.mute_all(Kind::Room, "room1")
            && agora.muted(Kind::Room, "room1").contains_key("u3")
    };
    assert!(
        wait_until(WAIT, repaired).await,
        "tencent {:?}\nagora {:?}",
        tencent.calls(),
        agora.calls()
    );
    let again_u2 = |calls: Vec<Call>| calls.into_iter().rfind(|c| c.users == ["u2"]).unwrap();
    let (t_again, a_again) = (again_u2(tencent.calls()), again_u2(agora.calls()));
    // Tencent's MuteTime is seconds, Agora's mute_duration ms.
    assert!(
        t_again.duration.unwrap() <= t_first.duration.unwrap() - 3,
        "first {t_first:?}, repair {t_again:?}"
    );
    assert!(
        a_again.duration.unwrap() <= a_first.duration.unwrap() - 3000,
        "first {a_first:?}, repair {a_again:?}"
    );
    assert!((tencent.muted("g2")["u2"] - until / 1000).abs() <= 2);
    assert!((tencent.muted("g1")["u1"] - until / 1000).abs() <= 2);
    assert!((agora.muted(grp, "g2")["u2"] - until).abs() <= 1500);
    assert!((agora.muted(Kind::Room, "room1")["u3"] - until).abs() <= 1500);
    // One call per repaired dimension, nothing else.
    assert_eq!(tencent.calls().len(), t_writes + 5, "{:?}", tencent.calls());
    assert_eq!(agora.calls().len(), a_writes + 5, "{:?}", agora.calls());
    assert_eq!(refused_other_than_expiry(&tencent), Vec::<String>::new());
    assert_eq!(refused_other_than_expiry(&agora), Vec::<String>::new());

    // The group is back: the next pass finds nothing.
    tencent.only_groups(&["g1", "g2", "g3", "g4", "g5"]);
    agora.only(&[still_there.as_slice(), &[(grp, "g5")]].concat());
    let s = settled(&v, &Options::default(), 11).await;
    assert_eq!(found(&s), []);
    assert!(
        s.ok(),
        "{:?}",
        s.targets
            .iter()
            .map(|t| &t.compared.unread)
            .collect::<Vec<_>>()
    );
    w.stop().await;
}

/// Reads spend the provider's budget too: with the exact limit (Redis)
/// each target's reads take slots of its one schedule with the worker's
/// writes, and stand-ins that allow 10 calls per second per API refuse
/// none of either while both run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_and_agora_reads_stay_under_the_rate_limit_with_the_worker() {
    let _heavy = HEAVY.lock().await;
    let redis = RedisServer::start();
    let tencent = FakeTencent::start(TENCENT_APP, TENCENT_ADMIN, TENCENT_KEY, 10.0).await;
    let agora = agora_app(10.0).await;
    let text = mirror_im(&[&tencent], &agora, |name| {
        format!(
            "rate_per_second = 10\n[targets.{name}.rate_limit]\nmode = \"redis\"\nurl = \"{}\"\n",
            redis.url()
        )
    });
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    let groups: Vec<String> = (0..30).map(|i| format!("rl-{i}")).collect();
    for g in &groups {
        post_ok(&h, &mute_all(g)).await;
    }
    let both = |n: usize| tencent.calls().len() == n && agora.calls().len() == n;
    assert!(wait_until(Duration::from_secs(60), || both(30)).await);
    let (v, _) = verifier(&h, &h.config).await;
    let clean = settled(&v, &Options::default(), 60).await;
    assert_eq!(found(&clean), []);
    // A pass while the worker applies 30 new mutes to each.
    let started = Instant::now();
    for i in 0..30 {
        post_ok(&h, &mute_all(&format!("busy-{i}"))).await;
    }
    let s = v.pass(&Options::default()).await.unwrap();
    assert_eq!(found(&s), []);
    assert!(target(&s, "tencent").reads["get_group_muted_account"] >= 30);
    assert!(target(&s, "agora").reads["GET chatgroups/{id}/mute"] >= 30);
    assert!(wait_until(Duration::from_secs(60), || both(60)).await);
    for (name, p) in [
        ("tencent", &tencent as &dyn Provider),
        ("agora", &agora as &dyn Provider),
    ] {
        assert_eq!(
            p.rate_limited(),
            0,
            "{name} refused while reading and writing"
        );
        let arrivals: Vec<Instant> = p.arrivals().into_iter().filter(|a| *a >= started).collect();
        let busiest = arrivals
            .iter()
            .map(|a| {
                arrivals
                    .iter()
                    .filter(|b| **b >= *a && b.duration_since(*a) < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap();
        assert!(busiest <= 10, "{name}: {busiest} requests within a second");
        eprintln!(
            "{name}: reads and writes together: {} requests in {:.1?}, at most {busiest} in a second",
            arrivals.len(),
            started.elapsed()
        );
    }
    w.stop().await;
}

/// What a pass costs, measured: 1,000 groups mirrored to Tencent and
/// Agora, read back at the default rates (`rate_per_second` 50 each,
/// headroom 0.95, `read_share` 0.5: 23.75 reads/s), once in agreement and
/// once with 100 mutes lifted on each. Prints the reads per group and the
/// time (README, Verify; benches/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_and_agora_passes_over_1000_groups_at_the_default_rates() {
    let _heavy = HEAVY.lock().await;
    let tencent = FakeTencent::start(TENCENT_APP, TENCENT_ADMIN, TENCENT_KEY, 2000.0).await;
    let agora = agora_app(2000.0).await;
    // The worker applies the setup quickly; the verifier reads at the
    // defaults (its config has no rate_per_second).
    let fast = mirror_im(&[&tencent], &agora, |_| "rate_per_second = 1000\n".into());
    let defaults = mirror_im(&[&tencent], &agora, |_| String::new());
    let h = Harness::start_with(|c| policy(c, &fast)).await;
    let mut w = h.start_worker().await;
    let groups: Vec<String> = (0..1000).map(|i| format!("m-{i:04}")).collect();
    let until = now_ms() + 3_600_000;
    for (i, g) in groups.iter().enumerate() {
        post_ok(&h, &mute_all(g)).await;
        if i % 10 == 0 {
            post_ok(&h, &member_mute(g, &users(&["u"]), Some(until))).await;
        }
    }
    let all_applied = || tencent.calls().len() == 1100 && agora.calls().len() == 1100;
    assert!(
        wait_until(Duration::from_secs(180), all_applied).await,
        "{} {}",
        tencent.calls().len(),
        agora.calls().len()
    );
    let mut config = h.config.clone();
    policy(&mut config, &defaults);
    let (v, _) = verifier(&h, &config).await;
    let report = |label: &str, s: &Summary| {
        for t in &s.targets {
            let reads: usize = t.reads.values().sum();
            eprintln!(
                "verify {label}: {}: {} places, {} reads ({:.3} per place) in {:.1} s ({:?}), {} differences",
                t.target,
                t.places,
                reads,
                reads as f64 / t.places as f64,
                t.seconds,
                t.reads,
                t.compared.findings.len()
            );
        }
    };
    let clean = settled(&v, &Options::default(), 2000).await;
    report("in agreement", &clean);
    assert_eq!(found(&clean), []);
    let (t, a) = (target(&clean, "tencent"), target(&clean, "agora"));
    assert_eq!((t.places, a.places), (1000, 1000));
    assert_eq!(
        t.reads,
        BTreeMap::from([("get_group_info", 20), ("get_group_muted_account", 1000)])
    );
    assert_eq!(
        a.reads,
        BTreeMap::from([
            ("GET chatgroups/{id}/mute", 1000),
            ("GET chatgroups/{ids}", 10)
        ])
    );
    // At 23.75 reads/s, 1,020 and 1,010 reads take at least 42 s.
    assert!(t.seconds >= 1019.0 / 23.75, "{:.1} s", t.seconds);
    assert!(a.seconds >= 1009.0 / 23.75, "{:.1} s", a.seconds);
    // Drift costs no extra read: every flag and every list is read anyway.
    for g in groups.iter().step_by(10) {
        tencent.set_mute_all(g, false);
        agora.lift(Kind::Group, g, "u");
    }
    let drift = v.pass(&Options::default()).await.unwrap();
    report(
        "with 100 mute-alls lifted on Tencent, 100 member mutes on Agora",
        &drift,
    );
    let (dt, da) = (target(&drift, "tencent"), target(&drift, "agora"));
    assert_eq!(
        (dt.compared.findings.len(), da.compared.findings.len()),
        (100, 100)
    );
    assert_eq!((&dt.reads, &da.reads), (&t.reads, &a.reads));
    assert_eq!(tencent.rate_limited() + agora.rate_limited(), 0);
    w.stop().await;
}

/// Issue 28's "done when": one Easemob app mirrored onto ZEGO, RongCloud,
/// Tencent and Agora by one worker process started from one config file
/// (`mutebridge worker --config F`), drift made on each provider,
/// `mutebridge verify --config F --repair` finds and repairs it all, and
/// the next `mutebridge verify` finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_app_mirrored_onto_four_providers_and_verify_repairs_drift_on_each() {
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 100.0).await;
    let rc = FakeRongCloud::start(RC_KEY, RC_SECRET, 100.0).await;
    let (tencent, backup) = tencent_pair().await;
    let agora = agora_app(100.0).await;
    let targets = format!(
        "{}{}time_zone = \"beijing\"\n{}{}
[[policy.rules]]
name = \"group mutes to every provider\"
when = {{ scope = \"group\", {MUTE_KINDS} }}
then = [{{ target = \"zego\", group = \"{{group_id}}\" }}, {{ target = \"rc\", group = \"{{group_id}}\" }}, {{ target = \"tencent\", group = \"{{group_id}}\" }}, {{ target = \"agora\", group = \"{{group_id}}\" }}]

[[policy.rules]]
name = \"chatroom mutes to RongCloud and Agora\"
when = {{ scope = \"chatroom\", {MUTE_KINDS} }}
then = [{{ target = \"rc\", chatroom = \"{{group_id}}\" }}, {{ target = \"agora\", chatroom = \"{{group_id}}\" }}]
",
        zego_target(&zego, "zego"),
        rc_target(&[&rc], "rc"),
        tencent_target(&[&tencent, &backup], "tencent"),
        agora_target(&agora, "agora"),
    );
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = h.worker_process_config(&targets, dir.path());
    let log = dir.path().join("worker.log");
    let (_worker, _) = spawn_role("worker", &config, &log);
    let worker_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let until = now_ms() + 3_600_000;
    post_ok(&h, &mute_all("d1")).await;
    post_ok(&h, &member_mute("d1", &users(&["u1"]), Some(until))).await;
    post_ok(&h, &chatroom(mute_all("r1"))).await;
    post_ok(
        &h,
        &chatroom(member_mute("r1", &users(&["u2"]), Some(until))),
    )
    .await;
    let mirrored = || {
        zego.held().mute_all("d1").is_some()
            && zego.held().muted_members("d1").contains_key("u1")
            && rc.held().banned(false, "d1")
            && rc.held().gagged(false, "d1").contains_key("u1")
            && rc.held().banned(true, "r1")
            && rc.held().gagged(true, "r1").contains_key("u2")
            && tencent.mute_all("d1")
            && tencent.muted("d1").contains_key("u1")
            && agora.mute_all(Kind::Group, "d1")
            && agora.muted(Kind::Group, "d1").contains_key("u1")
            && agora.mute_all(Kind::Room, "r1")
            && agora.muted(Kind::Room, "r1").contains_key("u2")
    };
    assert!(wait_until(WAIT, mirrored).await, "{}", worker_log());

    let path = config.to_str().unwrap();
    let verify = |args: &[&str]| {
        let mut all = vec!["verify", "--config", path];
        all.extend_from_slice(args);
        let out = mutebridge(&all);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    // In agreement once the worker's records are written (a pass leaves
    // out what the targets have not applied yet).
    let agrees = || {
        let (ok, stdout, stderr) = verify(&[]);
        ok && stdout.is_empty() && stderr.matches(" 0 dimension(s) pending").count() == 4
    };
    assert!(wait_until(WAIT, agrees).await, "{:?}", verify(&[]));

    // Behind mutebridge's back, on each provider.
    zego.held().console_unmute_all("d1");
    rc.held().console_ungag(false, "d1", "u1");
    tencent.lift("d1", "u1");
    agora.recreate(Kind::Room, "r1");
    let (ok, stdout, stderr) = verify(&["--repair"]);
    eprintln!("verify --repair:\n{stdout}{stderr}");
    assert!(ok, "every difference is repairable");
    for line in [
        "zego: group d1 (test#app group d1): mute_all missing",
        "rc: group d1 (test#app group d1): member u1 missing",
        "tencent: group d1 (test#app group d1): member u1 missing",
        "agora: chatroom r1 (test#app chatroom r1): mute_all missing",
        "agora: chatroom r1 (test#app chatroom r1): member u2 missing",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    assert!(stdout.lines().all(|l| l.ends_with("repair published")));
    assert!(wait_until(WAIT, mirrored).await, "{}", worker_log());
    // The next pass finds nothing.
    assert!(wait_until(WAIT, agrees).await, "{:?}", verify(&[]));
    for p in [&zego as &dyn Provider, &rc, &tencent, &agora] {
        assert_eq!(p.rejected(), Vec::<String>::new());
    }
}
