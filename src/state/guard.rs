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

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::{GroupState, MemberState, MuteAllState};
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
    /// `Duplicate`. `None` when something is fresh.
    pub fn all_held(&self) -> Option<&Hold> {
        if self.fresh.is_some() {
            return None;
        }
        self.held
            .iter()
            .map(|h| &h.hold)
            .find(|h| matches!(h, Hold::Stale { .. }))
            .or_else(|| self.held.first().map(|h| &h.hold))
    }
}

/// Judges `event` against `state`; `replay` is true for a record that
/// `mutebridge dlq replay` published. Events of other than the four mute
/// kinds are fresh as they are.
pub fn judge<'e>(state: Option<&GroupState>, event: &'e Event, replay: bool) -> Verdict<'e> {
    let check = |at_ms: i64, event_id: &str| -> Option<Hold> {
        if event_id == event.id {
            return (!replay).then_some(Hold::Duplicate);
        }
        let older = event.occurred_at_ms < at_ms || (replay && event.occurred_at_ms == at_ms);
        older.then(|| Hold::Stale {
            newer_at_ms: at_ms,
            newer_event: event_id.to_owned(),
        })
    };
    match event.kind {
        EventKind::MuteAll | EventKind::UnmuteAll => {
            let hold = state
                .and_then(|s| s.mute_all.as_ref())
                .and_then(|d| check(d.at_ms, &d.event_id));
            match hold {
                Some(hold) => Verdict {
                    fresh: None,
                    held: vec![Held {
                        dimension: "mute_all".into(),
                        hold,
                    }],
                },
                None => Verdict {
                    fresh: Some(Cow::Borrowed(event)),
                    held: Vec::new(),
                },
            }
        }
        EventKind::MemberMuted | EventKind::MemberUnmuted => {
            let mut fresh = Vec::new();
            let mut held = Vec::new();
            for m in &event.members {
                let hold = state
                    .and_then(|s| s.members.get(m))
                    .and_then(|d| check(d.at_ms, &d.event_id));
                match hold {
                    Some(hold) => held.push(Held {
                        dimension: format!("member:{m}"),
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
    let cutoff = now_ms.saturating_sub(horizon_ms);
    let before = state.members.len();
    state.members.retain(|_, m| {
        let ended = if m.muted { m.until_ms } else { Some(m.at_ms) };
        ended.is_none_or(|t| t >= cutoff)
    });
    state.members.shrink_to_fit();
    before - state.members.len()
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
    Event {
        schema: crate::event::SCHEMA_V1.into(),
        id: id.to_owned(),
        source: Source::Mutebridge,
        format: Format::Resync,
        appkey: state.appkey.clone(),
        scope: state.scope,
        group_id: state.group_id.clone(),
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
