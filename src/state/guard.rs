//! The stale-event guard: which parts of a mute event still change the
//! state, and the state once they are applied. Pure; the worker's store
//! (`worker::store`) keeps the states and writes them to Kafka.
//!
//! Easemob does not deliver in order and re-sends stored callbacks up to 3
//! days late, so an event is judged per dimension (the group-wide mute;
//! each member) against the `at_ms` of whatever set that dimension last:
//!
//! - older than it: **stale**, not sent (a late mute must not undo a newer
//!   unmute);
//! - the very event that set it: **duplicate**, not sent again (a
//!   redelivery after a crash or a rebalance);
//! - otherwise **fresh**: sent, and it becomes the dimension's state. A tie
//!   (same `at_ms`, another event) is fresh: ties apply in offset order.
//!
//! A dead-letter replay is judged the same way, except that its own event
//! is fresh (it is replayed because the provider never got it) and a tie
//! is stale (its first pass lost the tie already).
//!
//! A mute target is judged twice over ([`judge_for_target`]): against what
//! it applied itself (stale and duplicate as above), and against the
//! group's newest state, which the state keeper has usually recorded long
//! before a lagging target gets there: a dimension a newer event has set
//! since is **superseded**, not sent, because that newer event reaches the
//! target too (later in the log, or it did already). That is what makes a
//! target that was down catch up with one call per dimension.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::applied::{AppliedDim, AppliedState};
use super::{GroupState, Mark, Marks, MemberDim, MemberState, Members, MuteAllState, Scope};
use crate::event::{Event, EventKind, Format, Mute, Source};

/// Why a dimension of an event is not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// A newer event already set the dimension.
    Stale {
        newer_at_ms: i64,
        newer_event: String,
    },
    /// This event already set the dimension (a redelivery).
    Duplicate,
    /// A newer event of the group has set the dimension since (the group's
    /// newest state says so); it reaches the target too, so this one is
    /// not sent.
    Superseded {
        newer_at_ms: i64,
        newer_event: String,
    },
}

impl Hold {
    /// The outcome label of an event or action held for this reason.
    pub fn name(&self) -> &'static str {
        match self {
            Hold::Stale { .. } => "stale",
            Hold::Duplicate => "duplicate",
            Hold::Superseded { .. } => "superseded",
        }
    }
}

/// One dimension an event does not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// `mute_all`, or `member:{id}`.
    pub dimension: String,
    pub hold: Hold,
}

/// The guard's decision on one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict<'e> {
    /// The event restricted to its fresh dimensions (a member list keeps
    /// only fresh members; borrowed when all of it is fresh, the common
    /// case); `None` when nothing of it is fresh.
    pub fresh: Option<Cow<'e, Event>>,
    /// The dimensions it does not change, and why.
    pub held: Vec<Held>,
}

impl Verdict<'_> {
    /// When nothing is fresh: `Stale` if any dimension is stale, else
    /// `Superseded` if any is, else `Duplicate`. `None` when something is
    /// fresh.
    pub fn all_held(&self) -> Option<&Hold> {
        if self.fresh.is_some() {
            return None;
        }
        let holds = || self.held.iter().map(|h| &h.hold);
        holds()
            .find(|h| matches!(h, Hold::Stale { .. }))
            .or_else(|| holds().find(|h| matches!(h, Hold::Superseded { .. })))
            .or_else(|| self.held.first().map(|h| &h.hold))
    }
}

/// A dimension of a group's mute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim<'a> {
    MuteAll,
    Member(&'a str),
}

impl Dim<'_> {
    /// The kind of event that sets this dimension to `muted`.
    pub fn kind(self, muted: bool) -> EventKind {
        match (self, muted) {
            (Dim::MuteAll, true) => EventKind::MuteAll,
            (Dim::MuteAll, false) => EventKind::UnmuteAll,
            (Dim::Member(_), true) => EventKind::MemberMuted,
            (Dim::Member(_), false) => EventKind::MemberUnmuted,
        }
    }

    /// `mute_all`, or `member:{id}`: how logs and `policy explain` name it.
    pub fn label(self) -> String {
        match self {
            Dim::MuteAll => "mute_all".into(),
            Dim::Member(m) => format!("member:{m}"),
        }
    }
}

/// A [`Dim`] that owns its member ID, for lists that outlive the call or
/// event it came from (the dimensions an action failed for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dimension {
    MuteAll,
    Member(String),
}

impl Dimension {
    pub fn as_dim(&self) -> Dim<'_> {
        match self {
            Dimension::MuteAll => Dim::MuteAll,
            Dimension::Member(m) => Dim::Member(m),
        }
    }
}

/// The mark `state` holds for `dim`.
pub fn mark<'a, S: Marks>(state: Option<&'a S>, dim: Dim<'_>) -> Option<Mark<'a>> {
    let state = state?;
    match dim {
        Dim::MuteAll => state.mute_all_mark(),
        Dim::Member(m) => state.member_mark(m),
    }
}

/// Judges `event` against `state`; `replay` is true for a record that
/// `mutebridge dlq replay` published. Events of other than the four mute
/// kinds are fresh as they are.
pub fn judge<'e, S: Marks>(state: Option<&S>, event: &'e Event, replay: bool) -> Verdict<'e> {
    judge_each(event, |dim| own(mark(state, dim), event, replay))
}

/// Judges `event` for one mute target: against what the target applied
/// (`applied`: stale, duplicate), then against the group's `newest` state
/// (superseded). `routed` says whether the target's rules send it events
/// of a kind (for this group): only a newer event that reaches the target
/// supersedes.
pub fn judge_for_target<'e>(
    applied: Option<&AppliedState>,
    newest: Option<&GroupState>,
    event: &'e Event,
    replay: bool,
    routed: impl Fn(EventKind) -> bool,
) -> Verdict<'e> {
    judge_each(event, |dim| {
        own(mark(applied, dim), event, replay)
            .or_else(|| newer(mark(newest, dim), dim, event, replay, &routed))
    })
}

/// Whether the newest state says a newer event than `event` set `dim`
/// (for a call about to go out, long after `event` was judged).
pub fn superseded(
    newest: Option<&GroupState>,
    dim: Dim<'_>,
    event: &Event,
    routed: impl Fn(EventKind) -> bool,
) -> bool {
    newer(mark(newest, dim), dim, event, false, &routed).is_some()
}

/// The hold of the target's (or the keeper's) own history.
fn own(mark: Option<Mark<'_>>, event: &Event, replay: bool) -> Option<Hold> {
    let mark = mark?;
    if mark.event_id == event.id {
        return (!replay).then_some(Hold::Duplicate);
    }
    let older = event.occurred_at_ms < mark.at_ms || (replay && event.occurred_at_ms == mark.at_ms);
    older.then(|| Hold::Stale {
        newer_at_ms: mark.at_ms,
        newer_event: mark.event_id.to_owned(),
    })
}

/// The hold of the group's newest state. A tie with another event is not
/// a supersession: the keeper may not have judged this one yet, and ties
/// apply in offset order (a replay lost its tie already).
fn newer(
    mark: Option<Mark<'_>>,
    dim: Dim<'_>,
    event: &Event,
    replay: bool,
    routed: &impl Fn(EventKind) -> bool,
) -> Option<Hold> {
    let mark = mark?;
    if mark.event_id == event.id {
        return None;
    }
    let newer = mark.at_ms > event.occurred_at_ms || (replay && mark.at_ms == event.occurred_at_ms);
    (newer && routed(dim.kind(mark.muted))).then(|| Hold::Superseded {
        newer_at_ms: mark.at_ms,
        newer_event: mark.event_id.to_owned(),
    })
}

/// Splits `event` into its fresh part and its held dimensions, asking
/// `check` about each dimension.
fn judge_each<'e>(event: &'e Event, check: impl Fn(Dim<'_>) -> Option<Hold>) -> Verdict<'e> {
    match event.kind {
        EventKind::MuteAll | EventKind::UnmuteAll => match check(Dim::MuteAll) {
            Some(hold) => Verdict {
                fresh: None,
                held: vec![Held {
                    dimension: Dim::MuteAll.label(),
                    hold,
                }],
            },
            None => Verdict {
                fresh: Some(Cow::Borrowed(event)),
                held: Vec::new(),
            },
        },
        EventKind::MemberMuted | EventKind::MemberUnmuted => {
            let mut fresh = Vec::new();
            let mut held = Vec::new();
            for m in &event.members {
                match check(Dim::Member(m)) {
                    Some(hold) => held.push(Held {
                        dimension: Dim::Member(m).label(),
                        hold,
                    }),
                    None => fresh.push(m.clone()),
                }
            }
            if held.is_empty() {
                return Verdict {
                    fresh: Some(Cow::Borrowed(event)),
                    held,
                };
            }
            if fresh.is_empty() {
                return Verdict { fresh: None, held };
            }
            let mut e = event.clone();
            e.members = fresh;
            Verdict {
                fresh: Some(Cow::Owned(e)),
                held,
            }
        }
        _ => Verdict {
            fresh: Some(Cow::Borrowed(event)),
            held: Vec::new(),
        },
    }
}

/// The state after `fresh` (what [`judge`] let through) is applied to
/// `state`, pruned at `now_ms`; `None` when nothing changed (nothing to
/// write).
pub fn record(
    state: Option<GroupState>,
    fresh: &Event,
    now_ms: i64,
    horizon_ms: i64,
) -> Option<GroupState> {
    let mut next =
        state.unwrap_or_else(|| GroupState::new(&fresh.appkey, fresh.scope, &fresh.group_id));
    let mut changed = false;
    match fresh.kind {
        EventKind::MuteAll | EventKind::UnmuteAll => {
            let dim = MuteAllState {
                muted: fresh.kind == EventKind::MuteAll,
                at_ms: fresh.occurred_at_ms,
                event_id: fresh.id.clone(),
            };
            changed |= next.mute_all.as_ref() != Some(&dim);
            next.mute_all = Some(dim);
        }
        EventKind::MemberMuted | EventKind::MemberUnmuted => {
            let muted = fresh.kind == EventKind::MemberMuted;
            let until_ms = match fresh.mute {
                Some(Mute::Until { until_ms }) if muted => until_ms,
                _ => None,
            };
            for m in &fresh.members {
                let dim = MemberState {
                    muted,
                    until_ms,
                    at_ms: fresh.occurred_at_ms,
                    event_id: fresh.id.clone(),
                };
                changed |= next.members.get(m) != Some(&dim);
                next.members.insert(m.clone(), dim);
            }
        }
        _ => return None,
    }
    changed |= prune(&mut next, now_ms, horizon_ms) > 0;
    if !changed {
        return None;
    }
    next.updated_at_ms = now_ms;
    Some(next)
}

/// Drops members that no longer mute anyone and have not for longer than
/// `horizon_ms`: unmuted since before the horizon, or a timed mute that
/// ended before it. Returns how many were dropped.
pub fn prune(state: &mut GroupState, now_ms: i64, horizon_ms: i64) -> usize {
    prune_members(&mut state.members, now_ms, horizon_ms)
}

/// [`prune`] for any member dimensions (a target's applied record too).
pub fn prune_members<D: MemberDim>(
    members: &mut Members<D>,
    now_ms: i64,
    horizon_ms: i64,
) -> usize {
    let cutoff = now_ms.saturating_sub(horizon_ms);
    let before = members.len();
    members.retain(|_, m| {
        let ended = if m.muted() {
            m.until_ms()
        } else {
            Some(m.at_ms())
        };
        ended.is_none_or(|t| t >= cutoff)
    });
    members.shrink_to_fit();
    before - members.len()
}

/// Drops member dimensions until at least `bytes` of their JSON are gone,
/// the ones that matter least first: unmuted members and mutes past their
/// end (oldest `at_ms` first), then running mutes (oldest first). Returns
/// how many. For a record that would not fit in one Kafka message: a group
/// that saw mutes of thousands of members. What is dropped loses its
/// stale-event guard (a late callback for that member is applied again).
pub fn shed_members<D: MemberDim + serde::Serialize>(
    members: &mut Members<D>,
    bytes: usize,
    now_ms: i64,
) -> usize {
    let running = |d: &D| d.muted() && d.until_ms().is_none_or(|t| t > now_ms);
    let mut order: Vec<(bool, i64, &str, usize)> = members
        .iter()
        .map(|(m, d)| (running(d), d.at_ms(), m, entry_bytes(m, d)))
        .collect();
    order.sort_unstable();
    let mut freed = 0;
    let mut drop = std::collections::HashSet::new();
    for (_, _, member, size) in order {
        if freed >= bytes {
            break;
        }
        freed += size;
        drop.insert(member.to_owned());
    }
    members.retain(|m, _| !drop.contains(m));
    members.shrink_to_fit();
    drop.len()
}

/// What one member takes in the record's JSON: `"id":{...},`.
fn entry_bytes<D: serde::Serialize>(member: &str, dim: &D) -> usize {
    let key = serde_json::to_string(member).map_or(member.len() + 2, |k| k.len());
    let value = serde_json::to_vec(dim).map_or(0, |v| v.len());
    key + value + 2
}

/// What became of a dimension a target judged fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// When the provider accepted it.
    pub at_ms: i64,
    /// When the provider ends it by itself before the group does.
    pub lapses_at_ms: Option<i64>,
}

/// What the target's calls for the fresh part of an event achieved, by
/// dimension; dimensions not named were not applied (skipped, superseded,
/// dead-lettered).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Results {
    pub mute_all: Option<Applied>,
    pub members: BTreeMap<String, Applied>,
}

impl Results {
    pub fn get(&self, dim: Dim<'_>) -> Option<Applied> {
        match dim {
            Dim::MuteAll => self.mute_all,
            Dim::Member(m) => self.members.get(m).copied(),
        }
    }
}

/// The target's record after `fresh` (what [`judge_for_target`] let
/// through) was carried out with `results`; `None` when nothing changed.
pub fn record_applied(
    applied: Option<AppliedState>,
    target: &str,
    fresh: &Event,
    results: &Results,
    now_ms: i64,
    horizon_ms: i64,
) -> Option<AppliedState> {
    let mut next = applied
        .unwrap_or_else(|| AppliedState::new(target, &fresh.appkey, fresh.scope, &fresh.group_id));
    let dim = |d: Dim<'_>, muted: bool, until_ms: Option<i64>| {
        let done = results.get(d);
        AppliedDim {
            muted,
            until_ms,
            at_ms: fresh.occurred_at_ms,
            event_id: fresh.id.clone(),
            applied_at_ms: done.map(|a| a.at_ms),
            lapses_at_ms: done.and_then(|a| a.lapses_at_ms),
        }
    };
    let mut changed = false;
    match fresh.kind {
        EventKind::MuteAll | EventKind::UnmuteAll => {
            let d = dim(Dim::MuteAll, fresh.kind == EventKind::MuteAll, None);
            changed |= next.mute_all.as_ref() != Some(&d);
            next.mute_all = Some(d);
        }
        EventKind::MemberMuted | EventKind::MemberUnmuted => {
            let muted = fresh.kind == EventKind::MemberMuted;
            let until_ms = match fresh.mute {
                Some(Mute::Until { until_ms }) if muted => until_ms,
                _ => None,
            };
            for m in &fresh.members {
                let d = dim(Dim::Member(m), muted, until_ms);
                changed |= next.members.get(m) != Some(&d);
                next.members.insert(m.clone(), d);
            }
        }
        _ => return None,
    }
    changed |= prune_members(&mut next.members, now_ms, horizon_ms) > 0;
    if !changed {
        return None;
    }
    next.updated_at_ms = now_ms;
    Some(next)
}

/// An event about `state`'s group that mutebridge made itself (a resync
/// marker, or a state re-applied for one): source `mutebridge`, format
/// and operation `resync`.
pub fn not_a_callback(
    state: &GroupState,
    kind: EventKind,
    id: &str,
    at_ms: i64,
    now_ms: i64,
) -> Event {
    about_group(
        (&state.appkey, state.scope, &state.group_id),
        kind,
        id,
        at_ms,
        now_ms,
    )
}

/// [`not_a_callback`] for a group named by appkey, scope and ID.
pub fn about_group(
    (appkey, scope, group_id): (&str, Scope, &str),
    kind: EventKind,
    id: &str,
    at_ms: i64,
    now_ms: i64,
) -> Event {
    Event {
        schema: crate::event::SCHEMA_V1.into(),
        id: id.to_owned(),
        source: Source::Mutebridge,
        format: Format::Resync,
        appkey: appkey.to_owned(),
        scope,
        group_id: group_id.to_owned(),
        kind,
        operation: "resync".into(),
        subtype: None,
        operator: None,
        members: Vec::new(),
        mute: None,
        occurred_at_ms: at_ms,
        received_at_ms: now_ms,
        attributes: Default::default(),
    }
}

/// The events that bring a target in line with `state` at `now_ms`: the
/// group-wide mute or unmute, and the member mutes and unmutes, one event
/// per original event that set them (same id and time, so a dead letter of
/// one replays under the guard like the original). Timed mutes that have
/// ended are left out: the provider was given the end too.
pub fn snapshot(state: &GroupState, now_ms: i64) -> Vec<Event> {
    let base = |kind, id: &str, at_ms| not_a_callback(state, kind, id, at_ms, now_ms);
    let mut out = Vec::new();
    if let Some(d) = &state.mute_all {
        let kind = if d.muted {
            EventKind::MuteAll
        } else {
            EventKind::UnmuteAll
        };
        let mut e = base(kind, &d.event_id, d.at_ms);
        e.mute = Some(Mute::All { all: d.muted });
        out.push(e);
    }
    // Members set by one event share its id, time and end: one event each.
    let mut by_event: BTreeMap<(i64, &str, bool, Option<i64>), Vec<String>> = BTreeMap::new();
    for (member, m) in state.members.iter() {
        if m.muted && m.until_ms.is_some_and(|u| u <= now_ms) {
            continue;
        }
        by_event
            .entry((m.at_ms, &m.event_id, m.muted, m.until_ms))
            .or_default()
            .push(member.to_owned());
    }
    for ((at_ms, id, muted, until_ms), members) in by_event {
        let kind = if muted {
            EventKind::MemberMuted
        } else {
            EventKind::MemberUnmuted
        };
        let mut e = base(kind, id, at_ms);
        e.members = members;
        if muted {
            e.mute = Some(Mute::Until { until_ms });
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Scope;

    const DAY: i64 = 86_400_000;

    fn event(kind: EventKind, id: &str, at: i64, members: &[&str]) -> Event {
        Event {
            schema: crate::event::SCHEMA_V1.into(),
            id: id.into(),
            source: Source::Easemob,
            format: Format::GroupOpEvent,
            appkey: "org#app".into(),
            scope: Scope::Group,
            group_id: "g1".into(),
            kind,
            operation: "x".into(),
            subtype: None,
            operator: None,
            members: members.iter().map(|m| m.to_string()).collect(),
            mute: match kind {
                EventKind::MuteAll => Some(Mute::All { all: true }),
                EventKind::UnmuteAll => Some(Mute::All { all: false }),
                EventKind::MemberMuted => Some(Mute::Until { until_ms: None }),
                _ => None,
            },
            occurred_at_ms: at,
            received_at_ms: at,
            attributes: Default::default(),
        }
    }

    /// Runs events through judge + record in order; returns the state and
    /// what each event let through.
    fn run(events: &[Event]) -> (Option<GroupState>, Vec<Verdict<'static>>) {
        let mut state: Option<GroupState> = None;
        let mut verdicts = Vec::new();
        for e in events {
            let v = judge(state.as_ref(), e, false);
            if let Some(fresh) = &v.fresh {
                if let Some(next) = record(state.clone(), fresh, 5000, 7 * DAY) {
                    state = Some(next);
                }
            }
            verdicts.push(Verdict {
                fresh: v.fresh.map(|f| Cow::Owned(f.into_owned())),
                held: v.held,
            });
        }
        (state, verdicts)
    }

    #[test]
    fn a_late_mute_all_after_a_newer_unmute_all_is_stale() {
        let (state, v) = run(&[
            event(EventKind::UnmuteAll, "b", 2000, &[]),
            event(EventKind::MuteAll, "a", 1000, &[]),
        ]);
        assert!(v[0].fresh.is_some());
        assert_eq!(v[1].fresh, None);
        assert_eq!(
            v[1].all_held(),
            Some(&Hold::Stale {
                newer_at_ms: 2000,
                newer_event: "b".into()
            })
        );
        let d = state.unwrap().mute_all.unwrap();
        assert!(!d.muted);
        assert_eq!((d.at_ms, d.event_id.as_str()), (2000, "b"));
    }

    #[test]
    fn member_lists_are_split_and_dimensions_are_independent() {
        let (state, v) = run(&[
            event(EventKind::MemberUnmuted, "r", 2000, &["u1"]),
            event(EventKind::MuteAll, "all", 500, &[]),
            // Older than u1's unmute, newer than nothing for u2 and u3.
            event(EventKind::MemberMuted, "m", 1000, &["u1", "u2", "u3"]),
        ]);
        assert!(v[1].fresh.is_some(), "mute_all has its own dimension");
        let fresh = v[2].fresh.as_ref().unwrap();
        assert_eq!(fresh.members, ["u2", "u3"]);
        assert_eq!(v[2].held.len(), 1);
        assert_eq!(v[2].held[0].dimension, "member:u1");
        let s = state.unwrap();
        assert!(!s.members["u1"].muted);
        assert!(s.members["u2"].muted && s.members["u3"].muted);
        assert!(s.mute_all.unwrap().muted);
    }

    #[test]
    fn a_redelivery_is_a_duplicate_and_a_tie_applies_in_offset_order() {
        let mute = event(EventKind::MuteAll, "a", 1000, &[]);
        let tie = event(EventKind::UnmuteAll, "b", 1000, &[]);
        let (state, v) = run(&[mute.clone(), mute.clone(), tie.clone()]);
        assert_eq!(v[1].all_held(), Some(&Hold::Duplicate));
        assert!(v[2].fresh.is_some(), "a tie with another event applies");
        assert!(!state.as_ref().unwrap().mute_all.as_ref().unwrap().muted);
        // Replays: the event that set the state is sent again; the one that
        // lost the tie is not.
        let s = state.as_ref();
        assert!(judge(s, &tie, true).fresh.is_some());
        assert!(matches!(
            judge(s, &mute, true).all_held(),
            Some(Hold::Stale { .. })
        ));
        // A redelivery changes nothing, so nothing is written.
        assert_eq!(record(s.cloned(), &tie, 10 * DAY, 7 * DAY), None);
    }

    #[test]
    fn other_kinds_and_memberless_events_pass() {
        let (_, v) = run(&[
            event(EventKind::MemberKicked, "k", 1, &["u1"]),
            event(EventKind::MemberMuted, "m", 1, &[]),
        ]);
        assert!(v.iter().all(|v| v.fresh.is_some() && v.held.is_empty()));
    }

    #[test]
    fn prune_keeps_guards_inside_the_horizon() {
        let mut s = GroupState::new("org#app", Scope::Group, "g1");
        let m = |muted, until_ms, at_ms| MemberState {
            muted,
            until_ms,
            at_ms,
            event_id: "e".into(),
        };
        let now = 100 * DAY;
        s.members
            .insert("old-unmute".into(), m(false, None, now - 8 * DAY));
        s.members
            .insert("new-unmute".into(), m(false, None, now - 6 * DAY));
        s.members
            .insert("ended-long-ago".into(), m(true, Some(now - 8 * DAY), 0));
        s.members
            .insert("ended-lately".into(), m(true, Some(now - DAY), 0));
        s.members.insert("permanent".into(), m(true, None, 0));
        assert_eq!(prune(&mut s, now, 7 * DAY), 2);
        let left: Vec<&str> = s.members.iter().map(|(m, _)| m).collect();
        assert_eq!(left, ["ended-lately", "new-unmute", "permanent"]);
    }

    #[test]
    fn shedding_drops_what_matters_least_first() {
        let mut s = GroupState::new("org#app", Scope::Group, "g1");
        let m = |muted, until_ms, at_ms| MemberState {
            muted,
            until_ms,
            at_ms,
            event_id: "e".into(),
        };
        let now = 100 * DAY;
        s.members.insert("muted-old".into(), m(true, None, 1));
        s.members.insert("muted-new".into(), m(true, None, 5));
        s.members.insert("unmuted-new".into(), m(false, None, 4));
        s.members.insert("unmuted-old".into(), m(false, None, 2));
        s.members.insert("ended".into(), m(true, Some(now - 1), 3));
        let size = |s: &GroupState| serde_json::to_vec(s).unwrap().len();
        let full = size(&s);
        // One byte: the oldest inactive member goes, and only it.
        assert_eq!(shed_members(&mut s.members, 1, now), 1);
        assert!(s.members.get("unmuted-old").is_none());
        let one = full - size(&s);
        // The entry estimate is exact (the record's JSON lost that much).
        let probe = m(false, None, 2);
        assert_eq!(one, entry_bytes("unmuted-old", &probe));
        // Enough for three more: the other inactive ones, then the oldest mute.
        assert_eq!(shed_members(&mut s.members, 2 * one + 1, now), 3);
        let left: Vec<&str> = s.members.iter().map(|(m, _)| m).collect();
        assert_eq!(left, ["muted-new"]);
        assert_eq!(shed_members(&mut s.members, 0, now), 0);
    }

    #[test]
    fn snapshot_rebuilds_one_event_per_setting_event() {
        let mut until = event(EventKind::MemberMuted, "timed", 3000, &["u3"]);
        until.mute = Some(Mute::Until {
            until_ms: Some(50 * DAY),
        });
        let (state, _) = run(&[
            event(EventKind::MuteAll, "all", 1000, &[]),
            event(EventKind::MemberMuted, "m", 2000, &["u1", "u2"]),
            event(EventKind::MemberUnmuted, "r", 2500, &["u2"]),
            until,
        ]);
        let state = state.unwrap();
        let snap = snapshot(&state, 10 * DAY);
        let shape: Vec<(EventKind, &str, Vec<&str>)> = snap
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.id.as_str(),
                    e.members.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (EventKind::MuteAll, "all", vec![]),
                (EventKind::MemberMuted, "m", vec!["u1"]),
                (EventKind::MemberUnmuted, "r", vec!["u2"]),
                (EventKind::MemberMuted, "timed", vec!["u3"]),
            ]
        );
        assert_eq!(
            snap[3].mute,
            Some(Mute::Until {
                until_ms: Some(50 * DAY)
            })
        );
        // Past its end, the timed mute is left out.
        assert_eq!(snapshot(&state, 60 * DAY).len(), 3);
        // Each snapshot event, replayed, passes the guard of the state.
        for e in &snap {
            assert!(judge(Some(&state), e, true).fresh.is_some(), "{e:?}");
        }
    }
}
