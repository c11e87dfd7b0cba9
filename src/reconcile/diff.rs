//! Comparing one group's mute state with what Easemob's REST API returned,
//! and the corrective events that make them agree. Pure.
//!
//! A correction is an ordinary normalized event (`format = "reconciled"`,
//! dated with the read's server `timestamp`), published keyed by the group
//! like every other: the worker's stale-event guard judges it, so a
//! callback newer than the read still wins, and each target gets it in the
//! group's order under its own rate limit and retries.
//!
//! What counts as a difference, per dimension:
//! - mute-all: Easemob's `mute` against ours (no mute-all seen = off);
//! - a member muted there but not here, or here until another time (by
//!   more than [`UNTIL_TOLERANCE_MS`]): `member_muted` with Easemob's end;
//! - a member muted here (and not past its end) but absent from Easemob's
//!   list: `member_unmuted` (the mute was lifted, or the member removed);
//!   when that is more than a share of the group's muted members,
//!   [`unmutes_need_confirmation`] asks for a second read first;
//! - a group Easemob says it no longer has (its own answer, read twice),
//!   with a state here: `group_destroyed`, which removes the state.

use super::metrics::Difference;
use super::rest::Read;
use crate::event::{Event, EventKind, Format, Mute, Scope, Source};
use crate::state::{guard, GroupState};

/// Two mute ends this close are the same end (the callback and the REST
/// API both carry Easemob's absolute `expire`; this only absorbs rounding).
pub const UNTIL_TOLERANCE_MS: i64 = 1000;
/// Members per corrective event: the size of one provider call at most.
pub const MEMBERS_PER_EVENT: usize = 100;
/// The `operation` of a corrective event.
pub const OPERATION: &str = "reconcile";

/// Muted members with the end of their mute (`None`: permanent).
pub type MuteList = Vec<(String, Option<i64>)>;

/// What a pass read of one group or chat room.
#[derive(Debug, Clone)]
pub enum Found {
    /// Easemob answered that it does not exist, twice, the last time at
    /// this server time.
    Gone { at_ms: i64 },
    /// Its dimensions; mute-all is `None` when the answer did not report
    /// it (then it is not compared).
    Read {
        mute_all: Option<Read<bool>>,
        muted: Read<MuteList>,
    },
}

/// A group's differences and the events that correct them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Corrections {
    /// One entry per differing dimension (mute-all, each member, gone).
    pub differences: Vec<Difference>,
    /// In the order to publish them.
    pub events: Vec<Event>,
}

/// The group `(appkey, scope, id)`.
pub type Group<'a> = (&'a str, Scope, &'a str);

/// Compares `state` (ours; `None` when we hold none) with `found`; `id`
/// makes a fresh event id, `now_ms` is the `received_at_ms` of the events.
pub fn compare(
    group: Group<'_>,
    state: Option<&GroupState>,
    found: &Found,
    now_ms: i64,
    id: &mut dyn FnMut() -> String,
) -> Corrections {
    let mut out = Corrections::default();
    let (mute_all, muted) = match found {
        Found::Gone { at_ms } => {
            if state.is_some() {
                out.differences.push(Difference::Gone);
                out.events.push(event(
                    group,
                    EventKind::GroupDestroyed,
                    *at_ms,
                    now_ms,
                    id(),
                ));
            }
            return out;
        }
        Found::Read { mute_all, muted } => (mute_all, muted),
    };
    if let Some(read) = mute_all {
        let ours = state
            .and_then(|s| s.mute_all.as_ref())
            .is_some_and(|m| m.muted);
        if ours != read.data {
            let kind = if read.data {
                EventKind::MuteAll
            } else {
                EventKind::UnmuteAll
            };
            let mut e = event(group, kind, read.at_ms, now_ms, id());
            e.mute = Some(Mute::All { all: read.data });
            out.differences.push(Difference::MuteAll);
            out.events.push(e);
        }
    }
    members(group, state, muted, now_ms, id, &mut out);
    out
}

impl Corrections {
    /// The members these corrections unmute.
    pub fn unmuted(&self) -> Vec<&str> {
        let mut users: Vec<&str> = self
            .events
            .iter()
            .filter(|e| e.kind == EventKind::MemberUnmuted)
            .flat_map(|e| e.members.iter().map(String::as_str))
            .collect();
        users.sort_unstable();
        users
    }
}

/// Whether `c`, found by one read of the mute list at `at_ms`, unmutes more
/// than `share` of the members `state` has muted then: a read that misses
/// many members at once is more likely a bad answer than a mass unmute,
/// so it waits for a second read that agrees.
pub fn unmutes_need_confirmation(
    state: Option<&GroupState>,
    at_ms: i64,
    c: &Corrections,
    share: f64,
) -> bool {
    let unmuted = c.unmuted().len();
    let muted_here = state.map_or(0, |s| {
        s.members
            .iter()
            .filter(|(_, m)| m.muted && m.until_ms.is_none_or(|u| u > at_ms))
            .count()
    });
    unmuted > 0 && unmuted as f64 > share * muted_here as f64
}

/// The member dimensions of [`compare`].
fn members(
    group: Group<'_>,
    state: Option<&GroupState>,
    read: &Read<MuteList>,
    now_ms: i64,
    id: &mut dyn FnMut() -> String,
    out: &mut Corrections,
) {
    let at = read.at_ms;
    // Ended mutes are not mutes, on either side.
    let running = |until: Option<i64>| until.is_none_or(|u| u > at);
    let theirs: Vec<&(String, Option<i64>)> = read
        .data
        .iter()
        .filter(|(_, until)| running(*until))
        .collect();
    // Muted there, not (or not so) here: grouped by end, one event each.
    let mut mutes: Vec<(Option<i64>, Vec<String>)> = Vec::new();
    for (user, until) in &theirs {
        let ours = state.and_then(|s| s.members.get(user));
        let agrees = ours.is_some_and(|m| {
            m.muted
                && running(m.until_ms)
                && match (m.until_ms, *until) {
                    (None, None) => true,
                    (Some(a), Some(b)) => (a - b).abs() <= UNTIL_TOLERANCE_MS,
                    _ => false,
                }
        });
        if !agrees {
            out.differences.push(Difference::MemberMuted);
            match mutes.iter_mut().find(|(u, _)| u == until) {
                Some((_, users)) => users.push(user.clone()),
                None => mutes.push((*until, vec![user.clone()])),
            }
        }
    }
    // Muted here, absent there.
    let mut unmutes: Vec<String> = Vec::new();
    if let Some(s) = state {
        for (user, m) in s.members.iter() {
            if m.muted && running(m.until_ms) && !theirs.iter().any(|(u, _)| u == user) {
                out.differences.push(Difference::MemberUnmuted);
                unmutes.push(user.to_owned());
            }
        }
    }
    for (until, users) in mutes {
        for chunk in users.chunks(MEMBERS_PER_EVENT) {
            let mut e = event(group, EventKind::MemberMuted, at, now_ms, id());
            e.members = chunk.to_vec();
            e.mute = Some(Mute::Until { until_ms: until });
            out.events.push(e);
        }
    }
    for chunk in unmutes.chunks(MEMBERS_PER_EVENT) {
        let mut e = event(group, EventKind::MemberUnmuted, at, now_ms, id());
        e.members = chunk.to_vec();
        out.events.push(e);
    }
}

/// A corrective event: Easemob's state (source `easemob`), read rather
/// than called back (`format = "reconciled"`), dated with the read.
fn event(group: Group<'_>, kind: EventKind, at_ms: i64, now_ms: i64, id: String) -> Event {
    let mut e = guard::about_group(group, kind, &id, at_ms, now_ms);
    e.source = Source::Easemob;
    e.format = Format::Reconciled;
    e.operation = OPERATION.into();
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MemberState, MuteAllState};

    const G: Group<'static> = ("o#a", Scope::Group, "g1");
    const AT: i64 = 1_700_000_000_000;

    fn state() -> GroupState {
        GroupState::new("o#a", Scope::Group, "g1")
    }

    fn member(muted: bool, until_ms: Option<i64>) -> MemberState {
        MemberState {
            muted,
            until_ms,
            at_ms: AT - 10_000,
            event_id: "cb".into(),
        }
    }

    fn read(mute_all: bool, muted: &[(&str, Option<i64>)]) -> Found {
        Found::Read {
            mute_all: Some(Read {
                data: mute_all,
                at_ms: AT,
            }),
            muted: Read {
                data: muted.iter().map(|(u, e)| (u.to_string(), *e)).collect(),
                at_ms: AT + 5,
            },
        }
    }

    fn run(state: Option<&GroupState>, found: &Found) -> Corrections {
        let mut n = 0;
        compare(G, state, found, AT + 100, &mut || {
            n += 1;
            format!("r{n}")
        })
    }

    #[test]
    fn nothing_when_both_agree_including_ended_mutes() {
        let mut s = state();
        s.mute_all = Some(MuteAllState {
            muted: true,
            at_ms: AT - 1,
            event_id: "cb".into(),
        });
        s.members
            .insert("u1".into(), member(true, Some(AT + 60_000)));
        s.members.insert("u2".into(), member(false, None));
        // Ended here; listed there with a past end (ended too).
        s.members.insert("u3".into(), member(true, Some(AT - 5)));
        let found = read(true, &[("u1", Some(AT + 60_400)), ("u4", Some(AT - 1))]);
        assert_eq!(run(Some(&s), &found), Corrections::default());
        // No state and nothing muted there: nothing either.
        assert_eq!(run(None, &read(false, &[])), Corrections::default());
    }

    #[test]
    fn each_differing_dimension_becomes_one_event_dated_by_its_read() {
        let mut s = state();
        s.members.insert("here".into(), member(true, None));
        s.members
            .insert("longer".into(), member(true, Some(AT + 60_000)));
        let found = read(
            true,
            &[
                ("new1", None),
                ("new2", None),
                ("longer", Some(AT + 900_000)),
            ],
        );
        let c = run(Some(&s), &found);
        assert_eq!(
            c.differences,
            [
                Difference::MuteAll,
                Difference::MemberMuted,
                Difference::MemberMuted,
                Difference::MemberMuted,
                Difference::MemberUnmuted
            ]
        );
        let kinds: Vec<_> = c.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::MuteAll,
                EventKind::MemberMuted,
                EventKind::MemberMuted,
                EventKind::MemberUnmuted
            ]
        );
        let all = &c.events[0];
        assert_eq!(
            (all.occurred_at_ms, all.mute),
            (AT, Some(Mute::All { all: true }))
        );
        assert_eq!(all.format, Format::Reconciled);
        assert_eq!(all.source, Source::Easemob);
        assert_eq!(all.group_id, "g1");
        assert_eq!(c.events[1].members, ["new1", "new2"]);
        assert_eq!(c.events[1].mute, Some(Mute::Until { until_ms: None }));
        assert_eq!(c.events[1].occurred_at_ms, AT + 5);
        assert_eq!(
            c.events[2].mute,
            Some(Mute::Until {
                until_ms: Some(AT + 900_000)
            })
        );
        assert_eq!(c.events[3].members, ["here"]);
        // Fresh ids, all different.
        let ids: std::collections::HashSet<_> = c.events.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn a_gone_group_with_a_state_is_destroyed_and_an_unreported_mute_all_is_not_compared() {
        let c = run(Some(&state()), &Found::Gone { at_ms: AT });
        assert_eq!(c.differences, [Difference::Gone]);
        assert_eq!(c.events[0].kind, EventKind::GroupDestroyed);
        assert_eq!(
            run(None, &Found::Gone { at_ms: AT }),
            Corrections::default()
        );
        let mut s = state();
        s.mute_all = Some(MuteAllState {
            muted: true,
            at_ms: AT - 1,
            event_id: "cb".into(),
        });
        s.members.insert("u1".into(), member(true, None));
        let partial = Found::Read {
            mute_all: None,
            muted: Read {
                data: vec![("u1".into(), None)],
                at_ms: AT,
            },
        };
        assert_eq!(run(Some(&s), &partial), Corrections::default());
    }

    #[test]
    fn unmuting_more_than_the_share_of_muted_members_needs_confirmation() {
        let mut s = state();
        for u in ["u1", "u2", "u3", "u4"] {
            s.members.insert(u.into(), member(true, None));
        }
        // Ended and unmuted members are not muted members.
        s.members.insert("ended".into(), member(true, Some(AT - 1)));
        s.members.insert("off".into(), member(false, None));
        let needs = |listed: &[(&str, Option<i64>)], share: f64| {
            let found = read(false, listed);
            let c = run(Some(&s), &found);
            unmutes_need_confirmation(Some(&s), AT + 5, &c, share)
        };
        // 2 of 4 is not more than half; 3 of 4 is.
        assert!(!needs(&[("u1", None), ("u2", None)], 0.5));
        assert!(needs(&[("u1", None)], 0.5));
        assert!(needs(&[], 0.5));
        // 0: any unmute is confirmed; 1: none is.
        assert!(needs(&[("u1", None), ("u2", None), ("u3", None)], 0.0));
        assert!(!needs(&[], 1.0));
        // Nothing to unmute: nothing to confirm, whatever the share.
        let all = [("u1", None), ("u2", None), ("u3", None), ("u4", None)];
        assert!(!needs(&all, 0.0));
        let c = run(Some(&s), &read(false, &[("u2", None)]));
        assert_eq!(c.unmuted(), ["u1", "u3", "u4"]);
    }

    #[test]
    fn many_members_are_split_into_provider_sized_events() {
        let users: Vec<(String, Option<i64>)> =
            (0..250).map(|i| (format!("u{i:03}"), None)).collect();
        let found = Found::Read {
            mute_all: None,
            muted: Read {
                data: users,
                at_ms: AT,
            },
        };
        let c = run(None, &found);
        assert_eq!(c.differences.len(), 250);
        let sizes: Vec<usize> = c.events.iter().map(|e| e.members.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    #[test]
    fn a_correction_older_than_a_callback_is_stale_to_the_guard() {
        // The state has an unmute from a callback newer than the read.
        let mut s = state();
        s.mute_all = Some(MuteAllState {
            muted: false,
            at_ms: AT + 1000,
            event_id: "newer-callback".into(),
        });
        let c = run(Some(&s), &read(true, &[]));
        assert_eq!(c.events.len(), 1);
        let verdict = guard::judge(Some(&s), &c.events[0], false);
        assert!(verdict.fresh.is_none(), "{verdict:?}");
        assert_eq!(verdict.all_held().map(|h| h.name()), Some("stale"));
    }
}
