//! `mutebridge verify` end to end: callbacks through the real ingest, a
//! real worker applying them to the ZEGO and RongCloud stand-ins, drift
//! made in the stand-ins behind mutebridge's back, found by reading them
//! back through their documented read APIs, and repaired through the
//! worker with the remaining time of each timed mute.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::fixtures::RedisServer;
use crate::providers::{FakeRongCloud, FakeZego, Provider};
use crate::support::*;
use crate::worker::{
    cli_config, member_mute, mutebridge, policy, post_ok, rc_target, unmute_all, zego_target,
    RC_KEY, RC_SECRET, ZEGO_APP, ZEGO_SECRET,
};
use mutebridge::verify::diff::{Difference, Dimension};
use mutebridge::verify::expect::Place;
use mutebridge::verify::repair::Plan;
use mutebridge::verify::{Options, Summary, Verifier};
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
    let mut lengths: Vec<_> = first.iter().map(|c| c.duration).collect();
    lengths.sort();
    assert_eq!(lengths, [Some(600), Some(900)]);

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
