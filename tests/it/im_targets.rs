//! The Tencent Cloud Chat and Agora Chat targets end to end: callbacks
//! through the real ingest and the embedded Kafka cluster, applied by a
//! real worker to the stand-ins of `providers_tencent.rs` and
//! `providers_agora.rs`, which check UserSigs and app tokens, enforce the
//! documented limits and answer with the providers' real error codes.
//!
//! Both go through what the other targets go through: an outage opens the
//! breaker and catch-up sends only each group's newest state, a rate-limit
//! answer pauses the whole target, permanent answers are dead-lettered
//! without a credential in them. Neither caps a mute short of what Easemob
//! sets (Tencent holds 136 years, Agora has no documented cap), so neither
//! renews; instead their credentials are made again when refused.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::providers::{Call, Fault, Provider};
use crate::providers_agora::{FakeAgora, Kind};
use crate::providers_tencent::FakeTencent;
use crate::support::*;
use crate::worker::{member_mute, policy, post_ok, unmute_all, WAIT};
use serde_json::{json, Map, Value};

pub(crate) const TENCENT_APP: u64 = 1400000000;
pub(crate) const TENCENT_ADMIN: &str = "administrator";
/// The public sample key of Tencent's official READMEs.
pub(crate) const TENCENT_KEY: &str =
    "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
/// The sample App ID and Certificate of AgoraIO/Tools' tests.
pub(crate) const AGORA_APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
pub(crate) const AGORA_CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";

/// `[targets.NAME]` of kind tencent for these hosts (primary first).
pub(crate) fn tencent_target(hosts: &[&FakeTencent], name: &str) -> String {
    let urls: Vec<String> = hosts
        .iter()
        .map(|h| format!("\"{}\"", h.base_url()))
        .collect();
    format!(
        "[targets.{name}]\nkind = \"tencent\"\nbase_urls = [{}]\nsdk_app_id = {TENCENT_APP}\nidentifier = \"{TENCENT_ADMIN}\"\nsecret_key = \"{TENCENT_KEY}\"\n",
        urls.join(", ")
    )
}

/// `[targets.NAME]` of kind agora for the stand-in (prefix `org/app`).
pub(crate) fn agora_target(fake: &FakeAgora, name: &str) -> String {
    format!(
        "[targets.{name}]\nkind = \"agora\"\nbase_url = \"{}\"\npath_prefix = \"{}\"\napp_id = \"{AGORA_APP_ID}\"\napp_certificate = \"{AGORA_CERT}\"\n",
        fake.base_url(),
        fake.state.prefix
    )
}

const TENCENT_RULE: &str = r#"
[[policy.rules]]
name = "mirror mutes to Tencent"
when = { kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"] }
then = [{ target = "tencent", group = "{group_id}" }]
"#;

const AGORA_RULES: &str = r#"
[[policy.rules]]
name = "mirror group mutes to Agora"
when = { scope = "group", kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"] }
then = [{ target = "agora", group = "{group_id}" }]

[[policy.rules]]
name = "mirror chat room mutes to Agora"
when = { scope = "chatroom", kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"] }
then = [{ target = "agora", chatroom = "{group_id}" }]
"#;

pub(crate) async fn tencent_pair() -> (FakeTencent, FakeTencent) {
    FakeTencent::start_pair(TENCENT_APP, TENCENT_ADMIN, TENCENT_KEY, 200.0).await
}

async fn agora(rate: f64) -> FakeAgora {
    FakeAgora::start(AGORA_APP_ID, AGORA_CERT, "61717166/1069763", rate).await
}

fn chatroom(mut body: Map<String, Value>) -> Map<String, Value> {
    body.insert("type".into(), json!("CHATROOM"));
    resign(&mut body, SECRETS[0]);
    body
}

fn member_unmute(group: &str, members: &[&str]) -> Map<String, Value> {
    op_event(group, "MUTE", json!({"type": "REMOVE", "member": members}))
}

fn of<'a>(calls: &'a [Call], id: &str) -> Vec<&'a Call> {
    calls.iter().filter(|c| c.id == id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_mirrors_each_mute_and_splits_members_by_500() {
    let (primary, backup) = tencent_pair().await;
    let text = format!(
        "{}{TENCENT_RULE}",
        tencent_target(&[&primary, &backup], "tencent")
    );
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    let ten_minutes = now_ms() + 600_000;
    post_ok(&h, &mute_all("t-all")).await;
    post_ok(
        &h,
        &member_mute("t-mem", &["alice".into()], Some(ten_minutes)),
    )
    .await;
    post_ok(&h, &member_mute("t-mem", &["bob".into()], None)).await;
    let many: Vec<String> = (0..501).map(|i| format!("user-{i:03}")).collect();
    post_ok(&h, &member_mute("t-many", &many, None)).await;
    assert!(
        wait_until(WAIT, || primary.mute_all("t-all")
            && primary.muted("t-mem").len() == 2
            && primary.muted("t-many").len() == 501)
        .await,
        "{:?}",
        primary.calls()
    );
    // The undos once the mutes are in (sent together, the mutes would be
    // superseded by them).
    post_ok(&h, &unmute_all("t-all")).await;
    post_ok(&h, &member_unmute("t-mem", &["bob"])).await;
    assert!(
        wait_until(WAIT, || !primary.mute_all("t-all")
            && primary.muted("t-mem").len() == 1)
        .await,
        "{:?}",
        primary.calls()
    );
    let calls = primary.calls();
    let all: Vec<Option<bool>> = of(&calls, "t-all").iter().map(|c| c.all_muted).collect();
    assert_eq!(all, [Some(true), Some(false)]);
    let mem = of(&calls, "t-mem");
    let alice = mem.iter().find(|c| c.users == ["alice"]).unwrap();
    let left = alice.duration.unwrap();
    assert!(
        (590..=600).contains(&left),
        "MuteTime is the time left: {left}"
    );
    let bob: Vec<Option<i64>> = mem
        .iter()
        .filter(|c| c.users == ["bob"])
        .map(|c| c.duration)
        .collect();
    assert_eq!(
        bob,
        [Some(4_294_967_295), Some(0)],
        "permanent, then lifted"
    );
    let until = primary.muted("t-mem")["alice"];
    assert!(
        (until - ten_minutes / 1000).abs() <= 2,
        "held until Easemob's end"
    );
    let split: Vec<usize> = of(&calls, "t-many").iter().map(|c| c.users.len()).collect();
    assert_eq!(split, [500, 1]);
    assert!(primary.rejected().is_empty(), "{:?}", primary.rejected());
    assert_eq!(backup.requests(), 0, "the primary host answered");
    w.wait_for_events("tencent", "applied", 6.0).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agora_mirrors_each_mute_on_groups_and_chat_rooms() {
    let fake = agora(100.0).await;
    let text = format!("{}{AGORA_RULES}", agora_target(&fake, "agora"));
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    let ten_minutes = now_ms() + 600_000;
    post_ok(&h, &mute_all("a-grp")).await;
    post_ok(&h, &chatroom(mute_all("a-room"))).await;
    post_ok(
        &h,
        &member_mute("a-grp", &["alice".into()], Some(ten_minutes)),
    )
    .await;
    post_ok(
        &h,
        &chatroom(member_mute("a-room", &["bob".into(), "carol".into()], None)),
    )
    .await;
    let many: Vec<String> = (0..61).map(|i| format!("user-{i:02}")).collect();
    post_ok(&h, &chatroom(member_mute("a-many", &many, None))).await;
    assert!(
        wait_until(WAIT, || fake.mute_all(Kind::Group, "a-grp")
            && fake.mute_all(Kind::Room, "a-room")
            && fake.muted(Kind::Group, "a-grp").len() == 1
            && fake.muted(Kind::Room, "a-room").len() == 2
            && fake.muted(Kind::Room, "a-many").len() == 61)
        .await,
        "{:?}",
        fake.calls()
    );
    post_ok(&h, &chatroom(unmute_all("a-room"))).await;
    post_ok(&h, &chatroom(member_unmute("a-room", &["bob", "carol"]))).await;
    assert!(
        wait_until(WAIT, || !fake.mute_all(Kind::Room, "a-room")
            && fake.muted(Kind::Room, "a-room").is_empty())
        .await,
        "{:?}",
        fake.calls()
    );
    let calls = fake.calls();
    let alice = of(&calls, "a-grp")
        .into_iter()
        .find(|c| c.users == ["alice"])
        .unwrap();
    assert_eq!(alice.action, "chatgroups mute");
    let ms = alice.duration.unwrap();
    assert!(
        (590_000..=600_000).contains(&ms),
        "mute_duration is the time left: {ms}"
    );
    let expire = fake.muted(Kind::Group, "a-grp")["alice"];
    assert!(
        (expire - ten_minutes).abs() <= 2000,
        "held until Easemob's end"
    );
    let room: Vec<(String, Option<i64>)> = of(&calls, "a-room")
        .iter()
        .map(|c| (c.action.clone(), c.duration))
        .collect();
    assert_eq!(
        room,
        [
            ("chatrooms ban".into(), None),
            ("chatrooms mute".into(), Some(-1)),
            ("chatrooms unban".into(), None),
            ("chatrooms unmute".into(), Some(0)),
        ]
    );
    let split: Vec<usize> = of(&calls, "a-many").iter().map(|c| c.users.len()).collect();
    assert_eq!(split, [60, 1]);
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    w.stop().await;
}

/// One of the new targets, with its stand-in, for the scenarios both go
/// through.
enum Subject {
    /// Its hosts, primary first.
    Tencent(Vec<FakeTencent>),
    Agora(FakeAgora),
}

impl Subject {
    async fn tencent() -> Subject {
        let (p, b) = tencent_pair().await;
        Subject::Tencent(vec![p, b])
    }

    async fn agora() -> Subject {
        Subject::Agora(agora(100.0).await)
    }

    fn name(&self) -> &'static str {
        match self {
            Subject::Tencent(..) => "tencent",
            Subject::Agora(_) => "agora",
        }
    }

    /// The target (named after its kind) and rules for it, then `extra`
    /// lines in the target's table.
    fn config(&self, extra: &str) -> String {
        match self {
            Subject::Tencent(hosts) => {
                let hosts: Vec<&FakeTencent> = hosts.iter().collect();
                format!("{}{extra}{TENCENT_RULE}", tencent_target(&hosts, "tencent"))
            }
            Subject::Agora(a) => format!("{}{extra}{AGORA_RULES}", agora_target(a, "agora")),
        }
    }

    fn hosts(&self) -> Vec<&dyn Provider> {
        match self {
            Subject::Tencent(hosts) => hosts.iter().map(|h| h as &dyn Provider).collect(),
            Subject::Agora(a) => vec![a],
        }
    }

    fn set_down(&self, down: bool) {
        self.hosts().iter().for_each(|h| h.set_down(down));
    }

    fn requests(&self) -> u64 {
        self.hosts().iter().map(|h| h.requests()).sum()
    }

    /// What was applied, over every host, in arrival order.
    fn calls(&self) -> Vec<Call> {
        let mut calls: Vec<Call> = self.hosts().iter().flat_map(|h| h.calls()).collect();
        calls.sort_by_key(|c| c.at);
        calls
    }

    /// A rate-limit answer for the next request (Tencent 60007, Agora 429).
    fn rate_limit_once(&self) {
        let fault = match self {
            Subject::Tencent(..) => Fault::Code(60007),
            Subject::Agora(_) => Fault::Status(429),
        };
        self.hosts()[0].fault(fault);
    }

    fn refusals(&self) -> Vec<Instant> {
        let mut r: Vec<Instant> = self.hosts().iter().flat_map(|h| h.refusals()).collect();
        r.sort();
        r
    }

    fn arrivals(&self) -> Vec<Instant> {
        let mut r: Vec<Instant> = self.hosts().iter().flat_map(|h| h.arrivals()).collect();
        r.sort();
        r
    }

    fn rejected(&self) -> Vec<String> {
        self.hosts().iter().flat_map(|h| h.rejected()).collect()
    }
}

/// The provider is down from the start while five groups are muted and
/// unmuted three times each: its breaker opens, it sees one probe per
/// interval, nothing is dead-lettered, and once it is back each group
/// gets its newest state (unmuted) in one call.
async fn outage_opens_the_breaker_and_catch_up_sends_the_newest_state(s: Subject) {
    let name = s.name();
    let text = s.config("");
    let h = Harness::start_with(|c| {
        policy(c, &text);
        c.worker.circuit_breaker.probe_interval_seconds = 1;
        c.worker.circuit_breaker.max_probe_interval_seconds = 2;
    })
    .await;
    s.set_down(true);
    let down_at = Instant::now();
    let mut w = h.start_worker().await;
    for round in 0..6 {
        for g in 0..5 {
            let group = format!("order-{g}");
            let body = if round % 2 == 0 {
                mute_all(&group)
            } else {
                unmute_all(&group)
            };
            post_ok(&h, &body).await;
        }
    }
    let open = format!("mutebridge_target_circuit_state{{target=\"{name}\"}}");
    assert!(
        wait_until(WAIT, || w.metric(&open) >= 1.0).await,
        "breaker state {}",
        w.metric(&open)
    );
    // The open breaker probes on: two more requests (the probes, one per
    // interval) show it running before what it sent is counted.
    let at_open = s.requests();
    assert!(
        wait_until(WAIT, || s.requests() >= at_open + 2).await,
        "no probe after the breaker opened ({} requests)",
        s.requests()
    );
    let down_for = down_at.elapsed().as_secs_f64();
    let requests = s.requests() as f64;
    assert!(
        requests <= 5.0 + down_for + 2.0,
        "{requests} requests in {down_for:.1} s of outage"
    );
    assert!(s.calls().is_empty());
    assert_eq!(w.metric(&events_line(name, "dead_lettered")), 0.0);
    s.set_down(false);
    let caught_up = || {
        let calls = s.calls();
        (0..5).all(|g| {
            let wanted = [Some(false)];
            of(&calls, &format!("order-{g}"))
                .iter()
                .map(|c| c.all_muted)
                .eq(wanted)
        })
    };
    assert!(wait_until(WAIT, caught_up).await, "{:?}", s.calls());
    // Every event finished on the target: no older state can follow.
    w.wait_finished(&h, name).await;
    assert_eq!(s.calls().len(), 5, "one call per group: {:?}", s.calls());
    assert!(
        wait_until(WAIT, || w.metric(&open) == 0.0).await,
        "the breaker closes"
    );
    assert!(h.dead_letters(1, Duration::from_secs(1)).await.is_empty());
    assert!(s.rejected().is_empty(), "{:?}", s.rejected());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_outage_opens_the_breaker_and_catch_up_sends_the_newest_state() {
    outage_opens_the_breaker_and_catch_up_sends_the_newest_state(Subject::tencent().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agora_outage_opens_the_breaker_and_catch_up_sends_the_newest_state() {
    outage_opens_the_breaker_and_catch_up_sends_the_newest_state(Subject::agora().await).await;
}

/// One rate-limit answer (no `Retry-After`: Tencent answers HTTP 200 with
/// a code, Agora does not send one) pauses every call of the target for
/// the first pause, not only the refused one; nothing is dead-lettered.
async fn a_rate_limit_answer_pauses_the_whole_target(s: Subject) {
    let name = s.name();
    // Spaced 105 ms apart, so no call is in flight when the answer comes.
    let text = s.config("rate_per_second = 10\n");
    let h = Harness::start_with(|c| policy(c, &text)).await;
    s.rate_limit_once();
    for g in 0..20 {
        post_ok(&h, &mute_all(&format!("pause-{g}"))).await;
    }
    let mut w = h.start_worker().await;
    assert!(
        wait_until(Duration::from_secs(30), || s.calls().len() == 20).await,
        "{} applied",
        s.calls().len()
    );
    let refused = s.refusals();
    assert_eq!(refused.len(), 1);
    let next = s.arrivals().into_iter().find(|t| *t > refused[0]).unwrap();
    let gap = next.duration_since(refused[0]);
    assert!(
        gap >= Duration::from_millis(950),
        "the target's next call came {gap:?} after the rate-limit answer"
    );
    assert_eq!(
        w.metric(&format!(
            "mutebridge_target_rate_limited_total{{target=\"{name}\"}}"
        )),
        1.0
    );
    w.wait_for_events(name, "applied", 20.0).await;
    assert!(h.dead_letters(1, Duration::from_secs(1)).await.is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_rate_limit_answer_pauses_the_whole_target() {
    let alone = FakeTencent::start(TENCENT_APP, TENCENT_ADMIN, TENCENT_KEY, 1000.0).await;
    a_rate_limit_answer_pauses_the_whole_target(Subject::Tencent(vec![alone])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agora_rate_limit_answer_pauses_the_whole_target() {
    a_rate_limit_answer_pauses_the_whole_target(Subject::agora().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_keep_under_the_providers_own_limits_and_lose_nothing_past_them() {
    // Configured above what the stand-ins allow (5/s per API): the
    // providers' refusals pause each target, every mute arrives, none is
    // dead-lettered.
    let tencent = FakeTencent::start(TENCENT_APP, TENCENT_ADMIN, TENCENT_KEY, 5.0).await;
    let agora = FakeAgora::start(AGORA_APP_ID, AGORA_CERT, "61717166/1069763", 5.0).await;
    let text = format!(
        "{}rate_per_second = 20\n{}rate_per_second = 20\n
[[policy.rules]]
name = \"both\"
when = {{ kinds = [\"mute_all\"] }}
then = [{{ target = \"tencent\", group = \"{{group_id}}\" }}, {{ target = \"agora\", group = \"{{group_id}}\" }}]
",
        tencent_target(&[&tencent], "tencent"),
        agora_target(&agora, "agora")
    );
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    for g in 0..30 {
        post_ok(&h, &mute_all(&format!("limit-{g}"))).await;
    }
    assert!(
        wait_until(Duration::from_secs(60), || tencent.calls().len() == 30
            && agora.calls().len() == 30)
        .await,
        "tencent {} agora {}",
        tencent.calls().len(),
        agora.calls().len()
    );
    assert!(
        tencent.rate_limited() > 0 && agora.rate_limited() > 0,
        "the limits were reached"
    );
    for name in ["tencent", "agora"] {
        assert!(
            w.metric(&format!(
                "mutebridge_target_rate_limited_total{{target=\"{name}\"}}"
            )) >= 1.0
        );
    }
    assert!(h.dead_letters(1, Duration::from_secs(1)).await.is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_usersig_or_app_token_is_made_again_and_the_call_applied() {
    let tencent = FakeTencent::start(TENCENT_APP, TENCENT_ADMIN, TENCENT_KEY, 200.0).await;
    let agora = agora(100.0).await;
    let text = format!(
        "{}{}
[[policy.rules]]
name = \"both\"
when = {{ kinds = [\"mute_all\"] }}
then = [{{ target = \"tencent\", group = \"{{group_id}}\" }}, {{ target = \"agora\", group = \"{{group_id}}\" }}]
",
        tencent_target(&[&tencent], "tencent"),
        agora_target(&agora, "agora")
    );
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    post_ok(&h, &mute_all("cred-1")).await;
    assert!(
        wait_until(WAIT, || tencent.calls().len() == 1
            && agora.calls().len() == 1)
        .await
    );
    // Refuse what was made before this second (so a second from now): the
    // credentials carry whole seconds, so the clock itself must move on.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tencent.expire_usersigs();
    agora.expire_tokens();
    post_ok(&h, &mute_all("cred-2")).await;
    assert!(
        wait_until(WAIT, || tencent.calls().len() == 2
            && agora.calls().len() == 2)
        .await,
        "tencent {:?} agora {:?}",
        tencent.rejected(),
        agora.rejected()
    );
    assert_eq!(
        tencent.expired_answers(),
        1,
        "one 70001, then a new UserSig"
    );
    assert_eq!(agora.unauthorized(), 1, "one 401, then a new token");
    assert!(h.dead_letters(1, Duration::from_secs(1)).await.is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_fails_over_to_the_backup_host_and_stays_there() {
    let (primary, backup) = tencent_pair().await;
    primary.set_down(true);
    let text = format!(
        "{}{TENCENT_RULE}",
        tencent_target(&[&primary, &backup], "tencent")
    );
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    for g in 0..5 {
        post_ok(&h, &mute_all(&format!("fo-{g}"))).await;
        assert!(wait_until(WAIT, || backup.calls().len() > g).await);
    }
    assert_eq!(backup.calls().len(), 5);
    assert_eq!(primary.requests(), 1, "one 502, then the backup for good");
    assert!(primary.calls().is_empty());
    // Both hosts serve one app: the primary, back, reads what the backup applied.
    primary.set_down(false);
    assert!((0..5).all(|g| primary.mute_all(&format!("fo-{g}"))));
    assert_eq!(
        w.metric("mutebridge_target_circuit_state{target=\"tencent\"}"),
        0.0
    );
    assert!(h.dead_letters(1, Duration::from_secs(1)).await.is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_answers_are_dead_lettered_with_the_code_and_no_credential() {
    let (primary, backup) = tencent_pair().await;
    primary.only_groups(&["exists"]);
    let agora = agora(100.0).await;
    agora.only(&[(Kind::Group, "exists")]);
    agora.outsider(Kind::Group, "exists", "stranger");
    let text = format!(
        "{}{}
[[policy.rules]]
name = \"both\"
when = {{ kinds = [\"mute_all\", \"member_muted\"] }}
then = [{{ target = \"tencent\", group = \"{{group_id}}\" }}, {{ target = \"agora\", group = \"{{group_id}}\" }}]
",
        tencent_target(&[&primary, &backup], "tencent"),
        agora_target(&agora, "agora")
    );
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let mut w = h.start_worker().await;
    post_ok(&h, &mute_all("missing")).await;
    post_ok(&h, &member_mute("exists", &["stranger".into()], None)).await;
    // missing: Tencent 10010 and Agora 404; stranger: Agora 403 (Tencent
    // mutes any account).
    let letters = h.dead_letters(3, WAIT).await;
    assert_eq!(letters.len(), 3, "{letters:?}");
    let mut errors: HashMap<(String, String), String> = HashMap::new();
    for l in &letters {
        let v = &l.value;
        assert_eq!(v["reason"], "permanent_error", "{v}");
        let text = v.to_string();
        for secret in [TENCENT_KEY, AGORA_CERT, "usersig", "Bearer", "007eJ"] {
            assert!(!text.contains(secret), "{secret} in a dead letter: {text}");
        }
        errors.insert(
            (v["target"].as_str().unwrap().into(), l.key.clone()),
            v["error"].as_str().unwrap().into(),
        );
    }
    let error = |target: &str, group: &str| errors[&(target.to_owned(), group.to_owned())].clone();
    assert!(error("tencent", "missing").contains("10010"), "{errors:?}");
    assert!(
        error("agora", "missing").contains("404 resource_not_found"),
        "{errors:?}"
    );
    assert!(
        error("agora", "exists").contains("403 forbidden_op"),
        "{errors:?}"
    );
    assert!(primary.muted("exists").contains_key("stranger"));
    w.stop().await;
}

#[test]
fn config_mistakes_name_the_target_key_and_the_file() {
    let parse = |text: &str| {
        mutebridge::Config::parse(text, std::path::Path::new("bad.toml"))
            .map(|_| ())
            .map_err(|e| (e.key, e.message, e.file))
    };
    let tencent = "[targets.tc]\nkind = \"tencent\"\nsdk_app_id = 1400000000\nidentifier = \"admin\"\nsecret_key = \"k\"\n";
    assert_eq!(parse(tencent), Ok(()));
    let (key, message, file) = parse(&tencent.replace("identifier = \"admin\"\n", "")).unwrap_err();
    assert_eq!(
        (key.as_str(), file.to_str()),
        ("targets.tc", Some("bad.toml"))
    );
    assert!(message.contains("identifier"), "{message}");
    let (key, _, _) = parse(&format!("{tencent}base_urls = []\n")).unwrap_err();
    assert_eq!(key, "targets.tc.base_urls");
    let (key, _, _) = parse(&tencent.replace(
        "secret_key = \"k\"",
        "secret_key = \"env:MUTEBRIDGE_TEST_UNSET_TC_KEY\"",
    ))
    .unwrap_err();
    assert_eq!(key, "targets.tc.secret_key");

    let agora = format!(
        "[targets.ag]\nkind = \"agora\"\nbase_url = \"https://a41.chat.agora.io\"\npath_prefix = \"app-id/{{app_id}}\"\napp_id = \"{AGORA_APP_ID}\"\napp_certificate = \"{AGORA_CERT}\"\n"
    );
    assert_eq!(parse(&agora), Ok(()));
    let (key, message, _) = parse(&agora.replace("app-id/{app_id}", "{org}/{app}")).unwrap_err();
    assert_eq!(key, "targets.ag.path_prefix");
    assert!(message.contains("ORG/APP"), "{message}");
    let (key, _, _) = parse(&format!("{agora}token_lifetime_seconds = 172800\n")).unwrap_err();
    assert_eq!(key, "targets.ag.token_lifetime_seconds");
    let (key, _, _) = parse(&agora.replace(AGORA_APP_ID, "not-an-app-id")).unwrap_err();
    assert_eq!(key, "targets.ag.app_id");
    // Chat rooms exist at Agora, not at Tencent.
    let rule = |target: &str| {
        format!("[[policy.rules]]\nname = \"r\"\nthen = [{{ target = \"{target}\", chatroom = \"{{group_id}}\" }}]\n")
    };
    assert_eq!(parse(&format!("{agora}{}", rule("ag"))), Ok(()));
    let (key, message, _) = parse(&format!("{tencent}{}", rule("tc"))).unwrap_err();
    assert_eq!(key, "policy.rules[0].then[0].group");
    assert!(message.contains("tencent"), "{message}");
}
