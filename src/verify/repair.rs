//! Repairing drift through the target's own path: a `resync` marker per
//! drifted group, published into the event topic keyed by the group like
//! its events, naming the target and exactly the dimensions to fix
//! (attribute `verify`). The worker that owns the group reaches it in the
//! group's order and turns it into events ([`resync_events`]) that it
//! judges, plans, rate-limits, delivers and records like any other: the
//! target's limiter, breaker, retries, dead letters and applied records.
//!
//! A dimension is fixed with its newest state *as the worker holds it
//! then* (a change since the pass wins), and a timed mute with what is left
//! of it: a member mute that says until when is rendered by the target as
//! the remaining time, and a mute whose length comes from the rule
//! (`mute_seconds`) carries its provider-side end ([`Fix::Apply`]'s
//! `until_ms`) so that it is not restarted at full length. What no state
//! holds (a mute nobody set, one that ended) is lifted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::diff::{Difference, Dimension, Finding};
use super::expect::{Expected, Origin, Place, Source};
use crate::event::{Event, EventKind, Mute};
use crate::policy::{Dest, Planned, Policy};
use crate::state::applied::AppliedState;
use crate::state::{guard, GroupState};

/// The marker attribute naming the dimensions to fix.
pub const ATTRIBUTE: &str = "verify";

/// How to fix one dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fix {
    /// Apply the dimension's newest state again. `event_id`: the event the
    /// pass saw set it; `until_ms`: the provider-side end of a mute whose
    /// length the rule gives, used while that event is still the newest.
    Apply {
        event_id: Option<String>,
        until_ms: Option<i64>,
    },
    /// Lift it (no state holds a mute there).
    Lift,
}

/// The dimensions of one group to fix at one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mute_all: Option<Fix>,
    /// By the member's ID in the source.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, Fix>,
}

impl Repair {
    pub fn is_empty(&self) -> bool {
        self.mute_all.is_none() && self.members.is_empty()
    }
}

/// What a finding's repair came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Part of the repair of this source group.
    Fix(Source),
    /// It cannot be repaired this way, and why.
    Cannot(String),
}

/// The repairs `findings` call for, by source group, and for each finding
/// what became of it. `policy` is the target's part of the policy (to find
/// which member an extra provider user stands for).
pub fn plan(
    expected: &Expected,
    policy: &Policy,
    findings: &[Finding],
) -> (BTreeMap<Source, Repair>, Vec<Plan>) {
    let mut repairs: BTreeMap<Source, Repair> = BTreeMap::new();
    let mut plans = Vec::with_capacity(findings.len());
    for f in findings {
        let fix = fix_of(expected, policy, f);
        plans.push(match fix {
            Err(why) => Plan::Cannot(why),
            Ok((source, member, fix)) => {
                let source = expected.sources[source].clone();
                let repair = repairs.entry(source.clone()).or_default();
                match member {
                    None => repair.mute_all = Some(fix),
                    Some(m) => {
                        repair.members.insert(m, fix);
                    }
                }
                Plan::Fix(source)
            }
        });
    }
    (repairs, plans)
}

/// The fix of one finding: its source group, member (`None`: the
/// mute-all) and how.
fn fix_of(
    expected: &Expected,
    policy: &Policy,
    f: &Finding,
) -> Result<(usize, Option<String>, Fix), String> {
    if f.dimension == Dimension::Roles {
        // ZEGO lifts every group-level mute with the mute-all's unmute
        // (MuteGroup Duration=0); re-applying a mute-all leaves roles be.
        return match &f.dim {
            Some(d) if matches!(d.expect, super::expect::Expect::Off { .. }) => {
                Ok((d.source, None, by_origin(d, Difference::Extra)))
            }
            Some(_) => Err("the group's mute-all is on, and re-applying it does not lift a role mute; lift it in the provider's console".into()),
            None => Err("the policy sends this group no mute-all, which is what lifts a role mute".into()),
        };
    }
    if let Some(d) = &f.dim {
        return Ok((d.source, d.member.clone(), by_origin(d, f.difference)));
    }
    // Muted there, nothing expected of that user.
    let Some(user) = &f.user else {
        return Err("ZEGO lists no muted members, so which member to unmute is not known".into());
    };
    let want = &expected.places[&f.place];
    for &source in &want.sources {
        if let Some(member) = member_for(policy, &expected.sources[source], &f.place, user) {
            return Ok((source, Some(member), Fix::Lift));
        }
    }
    Err(format!(
        "no member of the group is sent to the provider as {user} (the rule's user map has none), so the worker cannot lift it"
    ))
}

/// Missing or at the wrong end: apply the newest state; extra: apply it
/// when it is an unmute, lift what no state holds.
fn by_origin(d: &super::expect::Dim, difference: Difference) -> Fix {
    match (difference, d.origin) {
        (Difference::Extra, Origin::Ended | Origin::Absent) => Fix::Lift,
        _ => Fix::Apply {
            event_id: d.event_id.clone(),
            until_ms: d.until_hint,
        },
    }
}

/// The member of `source` the policy sends to `place` as `user`, by
/// planning that member's unmute (identity when the rule has no user map).
fn member_for(policy: &Policy, source: &Source, place: &Place, user: &str) -> Option<String> {
    let state = GroupState::new(&source.appkey, source.scope, &source.group_id);
    let mut e = guard::not_a_callback(&state, EventKind::MemberUnmuted, "verify", 0, 0);
    e.members = vec![user.to_owned()];
    policy.decide(&e).into_iter().find_map(|p| match p {
        Planned::Act(a) if dest_is(&a.dest, place) && a.users.iter().any(|u| u.id == user) => {
            Some(user.to_owned())
        }
        _ => None,
    })
}

fn dest_is(dest: &Dest, place: &Place) -> bool {
    match (dest, place) {
        (Dest::Group(a), Place::Group(b)) | (Dest::Chatroom(a), Place::Chatroom(b)) => a == b,
        _ => false,
    }
}

/// The marker that carries `repair` for `source` to `target`.
pub fn marker(source: &Source, target: &str, repair: &Repair, id: &str, now_ms: i64) -> Event {
    let state = GroupState::new(&source.appkey, source.scope, &source.group_id);
    let mut e = guard::not_a_callback(&state, EventKind::Resync, id, now_ms, now_ms);
    e.attributes.insert("target".into(), target.into());
    e.attributes.insert(
        ATTRIBUTE.into(),
        serde_json::to_value(repair).expect("a repair serializes"),
    );
    e
}

/// The events a `resync` marker applies to a target, from the group's
/// newest state and the target's record of it: every dimension (a plain
/// `mutebridge resync`: [`guard::snapshot`]), or, for a marker of
/// `mutebridge verify`, only the dimensions it names. The worker judges
/// each against the target's record as a replay, as for any resync.
pub fn resync_events(
    marker: &Event,
    newest: &GroupState,
    applied: Option<&AppliedState>,
    now_ms: i64,
) -> Vec<Event> {
    let Some(value) = marker.attributes.get(ATTRIBUTE) else {
        return guard::snapshot(newest, now_ms);
    };
    let repair: Repair = match serde_json::from_value(value.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(group = %marker.group_id, error = %e, "a verify marker whose dimensions cannot be read; the group's whole state is applied instead");
            return guard::snapshot(newest, now_ms);
        }
    };
    let base = |kind, id: &str, at_ms| guard::not_a_callback(newest, kind, id, at_ms, now_ms);
    let mut out = Vec::new();
    match (&repair.mute_all, &newest.mute_all) {
        (Some(Fix::Apply { event_id, until_ms }), Some(d)) => {
            let kind = if d.muted {
                EventKind::MuteAll
            } else {
                EventKind::UnmuteAll
            };
            let mut e = base(kind, &d.event_id, d.at_ms);
            e.mute = Some(match (d.muted, until_ms) {
                (true, Some(u)) if event_id.as_deref() == Some(&d.event_id) => {
                    Mute::Until { until_ms: Some(*u) }
                }
                (muted, _) => Mute::All { all: muted },
            });
            out.push(e);
        }
        (Some(Fix::Lift), d) if d.as_ref().is_none_or(|d| !d.muted) => {
            // The mark the target holds (or the state's), so that its own
            // record takes the lift as a replay of it, not a stale event.
            let (id, at) = applied
                .and_then(|a| a.mute_all.as_ref())
                .map(|m| (m.event_id.as_str(), m.at_ms))
                .or(d.as_ref().map(|d| (d.event_id.as_str(), d.at_ms)))
                .unwrap_or((&marker.id, 0));
            let mut e = base(EventKind::UnmuteAll, id, at);
            e.mute = Some(Mute::All { all: false });
            out.push(e);
        }
        _ => {}
    }
    // Members set by one event, with one end, go in one event.
    // Keyed by (muted, event, time, end).
    let mut by: BTreeMap<(bool, String, i64, Option<i64>), Vec<String>> = BTreeMap::new();
    for (member, fix) in &repair.members {
        let d = newest.members.get(member);
        let running = d.is_some_and(|d| d.muted && d.until_ms.is_none_or(|u| u > now_ms));
        match (fix, d) {
            (Fix::Apply { event_id, until_ms }, Some(d)) if d.muted => {
                if !running {
                    continue;
                }
                let hint = until_ms.filter(|_| event_id.as_deref() == Some(&d.event_id));
                let until = d.until_ms.or(hint);
                by.entry((true, d.event_id.clone(), d.at_ms, until))
                    .or_default()
                    .push(member.clone());
            }
            (Fix::Apply { .. }, Some(d)) => {
                by.entry((false, d.event_id.clone(), d.at_ms, None))
                    .or_default()
                    .push(member.clone());
            }
            (Fix::Lift, _) if !running => {
                let (id, at) = applied
                    .and_then(|a| a.members.get(member))
                    .map(|m| (m.event_id.clone(), m.at_ms))
                    .or(d.map(|d| (d.event_id.clone(), d.at_ms)))
                    .unwrap_or((marker.id.clone(), 0));
                by.entry((false, id, at, None))
                    .or_default()
                    .push(member.clone());
            }
            _ => {}
        }
    }
    for ((muted, id, at_ms, until), members) in by {
        let kind = if muted {
            EventKind::MemberMuted
        } else {
            EventKind::MemberUnmuted
        };
        let mut e = base(kind, &id, at_ms);
        e.members = members;
        if muted {
            e.mute = Some(Mute::Until { until_ms: until });
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Scope;
    use crate::state::applied::AppliedDim;
    use crate::state::{MemberState, Members, MuteAllState};

    const NOW: i64 = 1_800_000_000_000;

    fn newest() -> GroupState {
        let mut s = GroupState::new("org#app", Scope::Group, "g1");
        s.mute_all = Some(MuteAllState {
            muted: true,
            at_ms: NOW - 9000,
            event_id: "all".into(),
        });
        let mut m = Members::default();
        let member = |muted, until, id: &str| MemberState {
            muted,
            until_ms: until,
            at_ms: NOW - 8000,
            event_id: id.into(),
        };
        m.insert("a".into(), member(true, Some(NOW + 600_000), "ev-a"));
        m.insert("b".into(), member(true, None, "ev-b"));
        m.insert("c".into(), member(false, None, "ev-c"));
        m.insert("old".into(), member(true, Some(NOW - 1), "ev-old"));
        m.insert("d".into(), member(true, None, "ev-d"));
        s.members = m;
        s
    }

    fn marker_with(repair: &Repair) -> Event {
        let source = Source {
            appkey: "org#app".into(),
            scope: Scope::Group,
            group_id: "g1".into(),
        };
        marker(&source, "zego", repair, "verify-1-0", NOW)
    }

    #[test]
    fn a_plain_resync_marker_applies_the_whole_state() {
        let mut plain = marker_with(&Repair::default());
        plain.attributes.remove(ATTRIBUTE);
        assert_eq!(
            resync_events(&plain, &newest(), None, NOW),
            guard::snapshot(&newest(), NOW)
        );
    }

    #[test]
    fn a_verify_marker_applies_only_its_dimensions_with_what_is_left() {
        let mut repair = Repair::default();
        let apply = |id: &str, until| Fix::Apply {
            event_id: Some(id.into()),
            until_ms: until,
        };
        repair.mute_all = Some(apply("all", Some(NOW + 60_000)));
        repair.members.insert("a".into(), apply("ev-a", None));
        // b's length comes from the rule: its provider-side end rides along.
        repair
            .members
            .insert("b".into(), apply("ev-b", Some(NOW + 300_000)));
        repair.members.insert("c".into(), apply("ev-c", None));
        repair.members.insert("old".into(), Fix::Lift);
        repair.members.insert("stranger".into(), Fix::Lift);
        // A lift of a member the newest state mutes is not sent.
        repair.members.insert("d".into(), Fix::Lift);
        let mut applied = AppliedState::new("zego", "org#app", Scope::Group, "g1");
        applied.members.insert(
            "old".into(),
            AppliedDim {
                muted: true,
                until_ms: Some(NOW - 1),
                at_ms: NOW - 8000,
                event_id: "ev-old".into(),
                applied_at_ms: Some(NOW - 7000),
                lapses_at_ms: None,
            },
        );
        let events = resync_events(&marker_with(&repair), &newest(), Some(&applied), NOW);
        let shape: Vec<(EventKind, String, Vec<String>, Option<Mute>)> = events
            .iter()
            .map(|e| (e.kind, e.id.clone(), e.members.clone(), e.mute))
            .collect();
        let v = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shape,
            [
                (
                    EventKind::MuteAll,
                    "all".into(),
                    v(&[]),
                    Some(Mute::Until {
                        until_ms: Some(NOW + 60_000)
                    })
                ),
                (EventKind::MemberUnmuted, "ev-c".into(), v(&["c"]), None),
                (EventKind::MemberUnmuted, "ev-old".into(), v(&["old"]), None),
                (
                    EventKind::MemberUnmuted,
                    "verify-1-0".into(),
                    v(&["stranger"]),
                    None
                ),
                (
                    EventKind::MemberMuted,
                    "ev-a".into(),
                    v(&["a"]),
                    Some(Mute::Until {
                        until_ms: Some(NOW + 600_000)
                    })
                ),
                (
                    EventKind::MemberMuted,
                    "ev-b".into(),
                    v(&["b"]),
                    Some(Mute::Until {
                        until_ms: Some(NOW + 300_000)
                    })
                ),
            ]
        );
        assert_eq!(
            events[3].occurred_at_ms, 0,
            "any real callback is newer than a lift of nothing"
        );
        // The state moved on since the pass: the newest event is applied,
        // without the old event's end.
        let mut moved = newest();
        moved.members.get_mut("b").unwrap().event_id = "ev-b2".into();
        let events = resync_events(&marker_with(&repair), &moved, None, NOW);
        let b = events.iter().find(|e| e.members == ["b"]).unwrap();
        assert_eq!(b.mute, Some(Mute::Until { until_ms: None }));
    }
}
