//! What a target should hold: each group's newest state, planned through
//! the target's part of the policy exactly as the worker plans it (the same
//! `then` templates, ID maps and mute lengths: [`Policy::decide`] on the
//! events [`guard::snapshot`] makes of the state), gathered by the place at
//! the provider each action goes to. Pure.
//!
//! Beside the newest state, two things shape the expectation: what the
//! target applied (`mutebridge.applied/v1`: when it applied a mute, so that
//! the provider-side end of a mute whose length comes from the rule can be
//! computed, and when the provider ends a capped one), and time (a mute
//! whose end has passed is expected lifted).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::event::{EventKind, Scope};
use crate::policy::{Action, Dest, MuteLength, Op, Planned, Policy};
use crate::state::applied::{self, AppliedDim, AppliedState};
use crate::state::{guard, GroupState};
use crate::targets::Target;

/// A group whose state changed this recently and that the target has no
/// record of yet is left out: its event may still be on its way to the
/// target (the state keeper and each target read the topic on their own).
pub const SETTLE_MS: i64 = 60_000;

/// Where at a provider a mute lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    Group(String),
    Chatroom(String),
}

impl Place {
    pub fn id(&self) -> &str {
        match self {
            Place::Group(id) | Place::Chatroom(id) => id,
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Group(id) => write!(f, "group {id}"),
            Place::Chatroom(id) => write!(f, "chatroom {id}"),
        }
    }
}

/// A group of the source, as the state topic keys it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Source {
    pub appkey: String,
    pub scope: Scope,
    pub group_id: String,
}

/// When a mute ends at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// Held until lifted.
    Permanent,
    /// At this instant (ms since the epoch).
    At(i64),
    /// Not known (a rule-length mute the target has not applied; a capped
    /// one applied before its end was recorded): ends are not compared.
    Unknown,
}

/// What a dimension should be at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Muted, until `End` (an `At` that has passed by the time the
    /// provider is read counts as [`Expect::Off`] since then).
    On(End),
    /// Not muted; `since`: when a mute the target applied ended (a
    /// provider that still shows it within the tolerance agrees).
    Off { since: Option<i64> },
}

/// Where the dimension's expectation comes from, which decides how a
/// difference is repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The dimension's newest state (a mute or an unmute): re-applying it
    /// repairs the provider.
    Newest,
    /// A member mute whose end has passed: it must be lifted.
    Ended,
    /// Nothing ever set it (no mute-all event, or a member never muted):
    /// anything the provider holds there is lifted.
    Absent,
}

/// One dimension of a place: its mute-all, or one member's mute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dim {
    pub expect: Expect,
    pub origin: Origin,
    /// The member's ID in the source (`None` for the mute-all).
    pub member: Option<String>,
    /// The event that set it (for the repair to match it).
    pub event_id: Option<String>,
    /// The end of a timed member mute, a rule's `mute_seconds` counted from
    /// the event included (the state holds no end for those): a repair
    /// sends what is left of it.
    pub until_hint: Option<i64>,
    /// Index of its group in [`Expected::sources`].
    pub source: usize,
}

/// What one place should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Want {
    /// The source groups the policy sends here (indexes into
    /// [`Expected::sources`]); usually one.
    pub sources: BTreeSet<usize>,
    pub mute_all: Option<Dim>,
    /// By the provider's user ID.
    pub members: BTreeMap<String, Dim>,
}

/// What a target should hold, by place.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub places: BTreeMap<Place, Want>,
    pub sources: Vec<Source>,
    /// Dimensions left out: the target has not applied the group's newest
    /// state yet (it lags, or the change is seconds old).
    pub pending: usize,
}

/// Plans what `target` should hold for `states`. `policy` is the target's
/// part of the policy ([`Policy::only`]); `applied` its records, by key;
/// `shape` the target, which says which mutes its provider cuts short.
pub fn expected(
    target: &str,
    policy: &Policy,
    shape: &Target,
    states: &[GroupState],
    applied: &HashMap<String, AppliedState>,
    now_ms: i64,
) -> Expected {
    let mut out = Expected::default();
    for state in states {
        let record = applied.get(&applied::key(
            target,
            &state.appkey,
            state.scope,
            &state.group_id,
        ));
        plan_group(&mut out, policy, shape, state, record, now_ms);
    }
    out
}

/// A group's events: its newest state (what a resync applies), and one
/// event for each dimension the state holds no mute for but a provider
/// might (so that the policy says where it would be).
fn events(state: &GroupState, now_ms: i64) -> Vec<(crate::event::Event, Origin, Option<i64>)> {
    let mut out: Vec<_> = guard::snapshot(state, now_ms)
        .into_iter()
        .map(|e| (e, Origin::Newest, None))
        .collect();
    if state.mute_all.is_none() {
        let e = guard::not_a_callback(state, EventKind::UnmuteAll, "absent", 0, now_ms);
        out.push((e, Origin::Absent, None));
    }
    // Ended mutes, one event each: they differ in their ends.
    for (member, m) in state.members.iter() {
        if m.muted && m.until_ms.is_some_and(|u| u <= now_ms) {
            let mut e = guard::not_a_callback(
                state,
                EventKind::MemberUnmuted,
                &m.event_id,
                m.at_ms,
                now_ms,
            );
            e.members = vec![member.to_owned()];
            out.push((e, Origin::Ended, m.until_ms));
        }
    }
    out
}

fn plan_group(
    out: &mut Expected,
    policy: &Policy,
    shape: &Target,
    state: &GroupState,
    record: Option<&AppliedState>,
    now_ms: i64,
) {
    let source = Source {
        appkey: state.appkey.clone(),
        scope: state.scope,
        group_id: state.group_id.clone(),
    };
    let mut index = None;
    // Changed within the settle time, and the target has no record of a
    // dimension yet: its event may be on its way.
    let fresh_state = state.updated_at_ms >= now_ms - SETTLE_MS;
    for (event, origin, ended_at) in events(state, now_ms) {
        for planned in policy.decide(&event) {
            let Planned::Act(action) = planned else {
                continue;
            };
            let place = match &action.dest {
                Dest::Group(g) => Place::Group(g.clone()),
                Dest::Chatroom(c) => Place::Chatroom(c.clone()),
                Dest::Event => continue,
            };
            let source_index = *index.get_or_insert_with(|| {
                out.sources.push(source.clone());
                out.sources.len() - 1
            });
            let ctx = DimContext {
                action: &action,
                origin,
                ended_at,
                event_id: &event.id,
                source: source_index,
                shape,
                now_ms,
            };
            let want = out.places.entry(place).or_default();
            want.sources.insert(source_index);
            match &action.op {
                Op::MuteAll { .. } | Op::UnmuteAll => {
                    let dim = record.and_then(|r| r.mute_all.as_ref());
                    let newest = state.mute_all.as_ref().map(|d| (d.at_ms, &d.event_id));
                    if pending(origin, dim, newest, fresh_state) {
                        out.pending += 1;
                        continue;
                    }
                    let d = ctx.dim(None, dim);
                    keep(&mut want.mute_all, d);
                }
                Op::MuteMembers { .. } | Op::UnmuteMembers => {
                    for user in &action.users {
                        let dim = record.and_then(|r| r.members.get(&user.member));
                        let newest = state
                            .members
                            .get(&user.member)
                            .map(|d| (d.at_ms, &d.event_id));
                        if pending(origin, dim, newest, fresh_state) {
                            out.pending += 1;
                            continue;
                        }
                        let d = ctx.dim(Some(&user.member), dim);
                        let slot = want.members.entry(user.id.clone());
                        match slot {
                            std::collections::btree_map::Entry::Vacant(v) => {
                                v.insert(d);
                            }
                            std::collections::btree_map::Entry::Occupied(mut o) => {
                                let mut current = Some(o.get().clone());
                                keep(&mut current, d);
                                *o.get_mut() = current.expect("kept");
                            }
                        }
                    }
                }
                Op::Forward => {}
            }
        }
    }
}

/// Two groups planned onto one place: a mute wins over an unmute, the
/// newest state over an absent or ended one (the provider holds the union
/// of what both sent).
fn keep(slot: &mut Option<Dim>, d: Dim) {
    let rank = |d: &Dim| match (d.expect, d.origin) {
        (Expect::On(_), _) => 3,
        (_, Origin::Newest) => 2,
        (_, Origin::Ended) => 1,
        (_, Origin::Absent) => 0,
    };
    if slot.as_ref().is_none_or(|s| rank(&d) > rank(s)) {
        *slot = Some(d);
    }
}

/// Whether a dimension of the newest state is not compared: what the
/// target applied there is older (it has not caught up), or it applied
/// nothing there yet and the state changed within [`SETTLE_MS`].
fn pending(
    origin: Origin,
    applied: Option<&AppliedDim>,
    newest: Option<(i64, &String)>,
    fresh_state: bool,
) -> bool {
    if origin != Origin::Newest {
        return false;
    }
    let Some((at_ms, event_id)) = newest else {
        return false;
    };
    match applied {
        Some(a) => &a.event_id != event_id && a.at_ms < at_ms,
        None => fresh_state,
    }
}

/// What one dimension's expectation is built from.
struct DimContext<'a> {
    action: &'a Action,
    origin: Origin,
    /// An ended mute's end at the source.
    ended_at: Option<i64>,
    event_id: &'a str,
    source: usize,
    shape: &'a Target,
    now_ms: i64,
}

impl DimContext<'_> {
    fn dim(&self, member: Option<&str>, applied: Option<&AppliedDim>) -> Dim {
        // When the target applied this very event (the provider's clock
        // for a length the rule gives starts then).
        let applied_at = applied
            .filter(|a| a.event_id == self.event_id)
            .and_then(|a| a.applied_at_ms);
        let lapses = applied
            .filter(|a| a.event_id == self.event_id)
            .and_then(|a| a.lapses_at_ms);
        let (expect, until_hint) = match (&self.action.op, self.origin) {
            // Cut short by the provider's cap, it ended there earlier.
            (_, Origin::Ended) => (
                Expect::Off {
                    since: match (lapses, self.ended_at) {
                        (Some(l), Some(u)) => Some(l.min(u)),
                        (l, u) => l.or(u),
                    },
                },
                None,
            ),
            (Op::MuteAll { seconds: Some(s) }, _) => {
                let end = applied_at.map(|a| a.saturating_add(*s as i64 * 1000));
                (Expect::On(end.map_or(End::Unknown, End::At)), end)
            }
            (Op::MuteAll { seconds: None }, _) => (Expect::On(End::Permanent), None),
            (Op::MuteMembers { length }, _) => {
                // A rule's length is an end already (counted from the
                // event: `MuteLength::UntilMs`).
                let by_rule = match length {
                    MuteLength::UntilMs(u) => Some(*u),
                    MuteLength::Permanent => None,
                };
                let end = match (lapses, length) {
                    (Some(l), _) if l > self.now_ms => End::At(l),
                    // A renewal is due or failed: what the provider holds
                    // now is not known here.
                    (Some(_), _) => End::Unknown,
                    (None, MuteLength::UntilMs(u)) => End::At(*u),
                    (None, MuteLength::Permanent) => {
                        // A provider that cannot hold it (a RongCloud
                        // chatroom gag) ends it at its cap from whenever
                        // it was applied.
                        let now = std::time::UNIX_EPOCH
                            + std::time::Duration::from_millis(self.now_ms.max(0) as u64);
                        match self.shape.lapses(self.action, now) {
                            Some(_) => End::Unknown,
                            None => End::Permanent,
                        }
                    }
                };
                (Expect::On(end), by_rule)
            }
            _ => (Expect::Off { since: None }, None),
        };
        Dim {
            expect,
            origin: self.origin,
            member: member.map(str::to_owned),
            event_id: (self.origin != Origin::Absent).then(|| self.event_id.to_owned()),
            until_hint,
            source: self.source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MemberState, Members, MuteAllState};
    use std::path::Path;

    const NOW: i64 = 1_800_000_000_000;

    fn setup(rules: &str) -> (Policy, Target) {
        let text = format!(
            r#"
            [targets.zego]
            kind = "zego"
            app_id = 1
            server_secret = "s"
            from_user_id = "bot"
            [targets.rc]
            kind = "rongcloud"
            app_key = "k"
            app_secret = "s"
            [maps.users]
            ids = {{ "m1" = "zu1" }}
            {rules}
            "#
        );
        let config = crate::Config::parse(&text, Path::new("t.toml")).unwrap();
        let checked = crate::config::Checked::new(config).unwrap();
        let target = checked.policy().only("zego");
        let shape = Target::new(&checked.targets["zego"]);
        (target, shape)
    }

    fn state(group: &str) -> GroupState {
        let mut s = GroupState::new("org#app", Scope::Group, group);
        s.updated_at_ms = NOW - 3_600_000;
        s
    }

    fn member(muted: bool, until: Option<i64>, id: &str) -> MemberState {
        MemberState {
            muted,
            until_ms: until,
            at_ms: NOW - 7_200_000,
            event_id: id.into(),
        }
    }

    #[test]
    fn the_plan_follows_the_rules_templates_maps_and_ends() {
        let (policy, shape) = setup(
            r#"
            [[policy.rules]]
            name = "z"
            when = { scope = "group", kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"] }
            then = [{ target = "zego", group = "zg-{group_id}", user_map = "users" }]
            on_unmapped = "skip"
            "#,
        );
        let mut s = state("g1");
        s.mute_all = Some(MuteAllState {
            muted: true,
            at_ms: NOW - 5000,
            event_id: "e-all".into(),
        });
        let mut members = Members::default();
        members.insert("m1".into(), member(true, Some(NOW + 60_000), "e-m1"));
        members.insert("m2".into(), member(true, Some(NOW + 60_000), "e-m2"));
        s.members = members;
        let mut other = state("g2");
        let mut members = Members::default();
        members.insert("m1".into(), member(true, Some(NOW - 1000), "e-old"));
        other.members = members;
        let e = expected("zego", &policy, &shape, &[s, other], &HashMap::new(), NOW);
        let g1 = &e.places[&Place::Group("zg-g1".into())];
        assert_eq!(
            g1.mute_all.as_ref().unwrap().expect,
            Expect::On(End::Permanent)
        );
        // m2 has no entry in the user map: skipped by the rule, not expected.
        assert_eq!(g1.members.keys().collect::<Vec<_>>(), ["zu1"]);
        let m1 = &g1.members["zu1"];
        assert_eq!(m1.expect, Expect::On(End::At(NOW + 60_000)));
        assert_eq!(m1.member.as_deref(), Some("m1"));
        // g2: never a mute-all (absent), m1's mute has ended.
        let g2 = &e.places[&Place::Group("zg-g2".into())];
        assert_eq!(g2.mute_all.as_ref().unwrap().origin, Origin::Absent);
        assert_eq!(g2.members["zu1"].origin, Origin::Ended);
        assert!(matches!(g2.members["zu1"].expect, Expect::Off { .. }));
        assert_eq!(e.sources.len(), 2);
    }

    #[test]
    fn a_rule_length_ends_counted_from_the_event_and_lagging_dimensions_wait() {
        let (policy, shape) = setup(
            r#"
            [[policy.rules]]
            name = "z"
            when = { scope = "group", kinds = ["member_muted", "member_unmuted"] }
            then = [{ target = "zego", group = "{group_id}", mute_seconds = 600 }]
            "#,
        );
        let mut s = state("g1");
        let mut members = Members::default();
        // a: muted 5 minutes ago for the rule's 10.
        members.insert(
            "a".into(),
            MemberState {
                at_ms: NOW - 300_000,
                ..member(true, None, "e1")
            },
        );
        members.insert("b".into(), member(false, None, "e2"));
        s.members = members;
        let mut record = AppliedState::new("zego", "org#app", Scope::Group, "g1");
        let applied_dim = |event: &str, at: i64, applied_at: Option<i64>| AppliedDim {
            muted: true,
            until_ms: None,
            at_ms: at,
            event_id: event.into(),
            applied_at_ms: applied_at,
            lapses_at_ms: None,
        };
        // Applied late: the rule's 10 minutes still count from the event.
        record.members.insert(
            "a".into(),
            applied_dim("e1", NOW - 300_000, Some(NOW - 100_000)),
        );
        // b: the target applied an older event; the unmute has not reached it.
        record.members.insert(
            "b".into(),
            applied_dim("e0", NOW - 9_000_000, Some(NOW - 9_000_000)),
        );
        let mut applied = HashMap::new();
        applied.insert(record.key(), record);
        let e = expected("zego", &policy, &shape, &[s], &applied, NOW);
        let g1 = &e.places[&Place::Group("g1".into())];
        let a = &g1.members["a"];
        assert_eq!(a.expect, Expect::On(End::At(NOW + 300_000)));
        assert_eq!(a.until_hint, Some(NOW + 300_000));
        assert!(!g1.members.contains_key("b"));
        assert_eq!(e.pending, 1);
    }
}
