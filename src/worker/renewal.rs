//! Renewal: a provider that caps mutes (RongCloud's chatroom gags at
//! 43,200 minutes, ZEGO's at 30 days) ends a longer mute by itself, so a
//! target re-applies it a little before (`renew_ahead_seconds`). This is
//! where that is decided (which mutes of a group lapse when, which are due,
//! what a renewal changes in the applied record) and scheduled ([`Renewals`],
//! the coordinator's timetable); the engine sends the calls like an
//! event's.
//!
//! A group's renewal runs as a job in the group's order
//! ([`super::scheduler::Work::Renew`]),
//! for the mutes its applied record says the target applied, and those of
//! the group's newest state it holds no record of (applied by a version
//! that kept none, or trimmed from an oversized record), whose provider-side
//! end is counted from when the state says they were set.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use super::completion::{Handled, Lapse};
use super::dlq::SourceRecord;
use super::engine::TargetEngine;
use super::scheduler::{GroupKey, Job};
use crate::event::{Event, EventKind, Mute};
use crate::policy::{Planned, Step};
use crate::state::applied::{self, AppliedState};
use crate::state::guard::{self, Applied, Dim, Results};
use crate::state::GroupState;
use crate::time::now_ms;

/// The coordinator's renewal timetable: each applied record with a capped
/// mute, by when its renewal is due (`ahead_ms` before the lapse).
pub struct Renewals {
    ahead_ms: i64,
    due: BTreeSet<(i64, String)>,
    by_record: HashMap<String, (i64, GroupKey)>,
}

impl Renewals {
    /// A timetable that renews `ahead_ms` before a lapse (0: a pipeline
    /// that renews nothing).
    pub fn new(ahead_ms: i64) -> Renewals {
        Renewals {
            ahead_ms,
            due: BTreeSet::new(),
            by_record: HashMap::new(),
        }
    }

    /// `lapse` is what a job of `group` reported (or a rebuild found):
    /// the record's renewal moves there, or is dropped.
    pub fn lapse(&mut self, lapse: Lapse, group: GroupKey) {
        let due = lapse.at_ms.map(|t| t - self.ahead_ms);
        self.set(lapse.record, group, due);
    }

    fn set(&mut self, record: String, group: GroupKey, due: Option<i64>) {
        if let Some((old, _)) = self.by_record.remove(&record) {
            self.due.remove(&(old, record.clone()));
        }
        if let Some(t) = due {
            self.due.insert((t, record.clone()));
            self.by_record.insert(record, (t, group));
        }
    }

    /// The renewals due by `now`, taken out of the timetable: each
    /// record's key and its group.
    pub fn take_due(&mut self, now: i64) -> Vec<(String, GroupKey)> {
        let mut out = Vec::new();
        while let Some((t, record)) = self.due.first().cloned() {
            if t > now {
                break;
            }
            self.due.pop_first();
            if let Some((_, group)) = self.by_record.remove(&record) {
                out.push((record, group));
            }
        }
        out
    }

    /// Drops the renewals of a revoked partition (its new owner schedules
    /// its own).
    pub fn revoke(&mut self, partition: i32) {
        let gone: Vec<String> = self
            .by_record
            .iter()
            .filter(|(_, (_, g))| g.0 == partition)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.set(k, (partition, Vec::new()), None);
        }
    }
}

impl TargetEngine {
    /// Re-applies the group's mutes that the provider ends within
    /// `renew_ahead` (its longest mute cut them short): those its record
    /// holds, unless a newer event has changed them since (it reaches the
    /// target by itself, or the policy does not send it: either way this
    /// one is not renewed again), and those of the group's newest state it
    /// holds no record of ([`TargetEngine::adopted`]).
    pub(super) async fn renew(&self, job: &Job, key: &str) -> Handled<AppliedState> {
        let Some(state) = &self.state else {
            return Handled::default();
        };
        let Some(part) = state.store.partition(job.partition).await else {
            return Handled::default();
        };
        let prefix = applied::key_prefix(&self.name);
        let group_key = key.strip_prefix(prefix.as_str()).unwrap_or(key);
        let newest = state.newest.get(job.partition, group_key);
        let recorded = part.get(key);
        let Some(mut applied) = recorded.clone().or_else(|| {
            let n = newest.as_ref()?;
            Some(AppliedState::new(
                &self.name,
                &n.appkey,
                n.scope,
                &n.group_id,
            ))
        }) else {
            return Handled::default();
        };
        let now = now_ms();
        let by = now + self.renew_ahead_ms;
        let snapshot = applied.clone();
        let (due, changed_since) = due_events(&snapshot, newest.as_ref(), by);
        for dim in &changed_since {
            stop_renewing(&mut applied, *dim);
        }
        let adopted: Vec<Event> = newest
            .as_ref()
            .map(|n| self.adopted(recorded.as_ref(), n))
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, lapse)| *lapse <= by)
            .map(|(e, _)| e)
            .collect();
        let source = SourceRecord {
            topic: self.topic.clone(),
            partition: job.partition,
            offset: -1,
        };
        for e in &due {
            let steps = self.policy.plan(e, None, None);
            let tally = self
                .carry_out(&job.key, &source, job.partition, steps)
                .await;
            renewed(&mut applied, e, &tally.results);
            self.count_renewals(&tally.results);
            tracing::info!(target = %self.name, group = %applied.group_id, members = e.members.len(), "capped mute re-applied before the provider ends it");
        }
        for e in &adopted {
            let steps = self.policy.plan(e, None, None);
            let tally = self
                .carry_out(&job.key, &source, job.partition, steps)
                .await;
            let horizon = state.store.horizon_ms();
            if let Some(next) = guard::record_applied(
                Some(applied.clone()),
                &self.name,
                e,
                &tally.results,
                now_ms(),
                horizon,
            ) {
                applied = next;
            }
            self.count_renewals(&tally.results);
            tracing::info!(target = %self.name, group = %applied.group_id, members = e.members.len(), "capped mute of the group's state re-applied before the provider ends it (applied before this target kept records of it, or trimmed from them)");
        }
        let lapse = Some(Lapse {
            record: key.to_owned(),
            at_ms: self.next_lapse(Some(&applied), newest.as_ref()),
        });
        if due.is_empty() && adopted.is_empty() && changed_since.is_empty() {
            return Handled { write: None, lapse };
        }
        applied.updated_at_ms = now;
        state.store.member().await;
        Handled {
            write: state.store.stage(&part, applied).ok(),
            lapse,
        }
    }

    fn count_renewals(&self, results: &Results) {
        let calls = results.members.len() + usize::from(results.mute_all.is_some());
        self.metrics.renewals.inc_by(calls as u64);
    }

    /// When this target next has to re-apply a capped mute of a group: the
    /// earliest lapse its record holds, or of a mute of the group's newest
    /// state it holds no record of.
    pub fn next_lapse(
        &self,
        applied: Option<&AppliedState>,
        newest: Option<&GroupState>,
    ) -> Option<i64> {
        let own = applied.and_then(AppliedState::next_lapse_ms);
        let adopted =
            newest.and_then(|n| self.adopted(applied, n).into_iter().map(|(_, l)| l).min());
        own.into_iter().chain(adopted).min()
    }

    /// The renewal schedule of a partition whose records were just read:
    /// each group's next lapse, with its group ID.
    pub fn renewal_schedule(&self, partition: i32) -> Vec<(Lapse, String)> {
        let Some(state) = &self.state else {
            return Vec::new();
        };
        let mut records: HashMap<String, AppliedState> = HashMap::new();
        state.store.for_each_in(partition, |a| {
            records.insert(a.key(), a.clone());
        });
        let mut out = Vec::new();
        state.newest.for_each_in(partition, |newest| {
            let key = applied::key(&self.name, &newest.appkey, newest.scope, &newest.group_id);
            let record = records.remove(&key);
            if let Some(at) = self.next_lapse(record.as_ref(), Some(newest)) {
                let lapse = Lapse {
                    record: key,
                    at_ms: Some(at),
                };
                out.push((lapse, newest.group_id.clone()));
            }
        });
        // Records of groups with no state (deleted by hand, say).
        for (key, record) in records {
            if let Some(at) = record.next_lapse_ms() {
                let lapse = Lapse {
                    record: key,
                    at_ms: Some(at),
                };
                out.push((lapse, record.group_id));
            }
        }
        out
    }

    /// The mutes of the group's newest state that `applied` holds no
    /// record of and this target caps: each as the event that set it (its
    /// members cut to those missing), with when the provider ends it,
    /// counted from when the state says it was set (it was sent then, or
    /// later: renewed early rather than late).
    fn adopted(&self, applied: Option<&AppliedState>, newest: &GroupState) -> Vec<(Event, i64)> {
        // Only a target whose provider caps mutes has anything to renew.
        if self.renew_ahead_ms == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for mut e in guard::snapshot(newest, now_ms()) {
            match e.kind {
                EventKind::MuteAll if applied.is_none_or(|a| a.mute_all.is_none()) => {}
                EventKind::MemberMuted => {
                    e.members
                        .retain(|m| applied.is_none_or(|a| a.members.get(m).is_none()));
                    if e.members.is_empty() {
                        continue;
                    }
                }
                _ => continue,
            }
            if !self.routes(&e, e.kind) {
                continue;
            }
            let set_at = UNIX_EPOCH + Duration::from_millis(e.occurred_at_ms.max(0) as u64);
            let target = &self.deliverer.target;
            let lapse = self
                .policy
                .plan(&e, None, None)
                .into_iter()
                .filter_map(|step| match step {
                    Step::Carry {
                        planned: Planned::Act(action),
                        ..
                    } => Some(action),
                    _ => None,
                })
                .flat_map(|action| target.split(action))
                .filter_map(|call| target.lapses(&call, set_at))
                .min();
            if let Some(lapse) = lapse {
                out.push((e, lapse));
            }
        }
        out
    }
}

/// The events that re-apply what of `applied` lapses by `by_ms`: each
/// dimension the target applied, still muted, whose provider-side end is
/// near, and that no newer event has changed since; and the dimensions due
/// that a newer event has changed (not renewed any more).
fn due_events<'a>(
    applied: &'a AppliedState,
    newest: Option<&GroupState>,
    by_ms: i64,
) -> (Vec<Event>, Vec<Dim<'a>>) {
    let group = (
        applied.appkey.as_str(),
        applied.scope,
        applied.group_id.as_str(),
    );
    let now = now_ms();
    let due = |d: &applied::AppliedDim| {
        d.muted && d.applied_at_ms.is_some() && d.lapses_at_ms.is_some_and(|t| t <= by_ms)
    };
    let unchanged = |dim: Dim<'_>, d: &applied::AppliedDim| {
        guard::mark(newest, dim).is_none_or(|m| m.event_id == d.event_id)
    };
    let mut out = Vec::new();
    let mut changed = Vec::new();
    if let Some(d) = applied.mute_all.as_ref().filter(|d| due(d)) {
        if unchanged(Dim::MuteAll, d) {
            let mut e = guard::about_group(group, EventKind::MuteAll, &d.event_id, d.at_ms, now);
            e.mute = Some(Mute::All { all: true });
            out.push(e);
        } else {
            changed.push(Dim::MuteAll);
        }
    }
    let mut by_event: BTreeMap<(i64, &str, Option<i64>), Vec<String>> = BTreeMap::new();
    for (member, d) in applied.members.iter().filter(|(_, d)| due(d)) {
        if unchanged(Dim::Member(member), d) {
            by_event
                .entry((d.at_ms, &d.event_id, d.until_ms))
                .or_default()
                .push(member.to_owned());
        } else {
            changed.push(Dim::Member(member));
        }
    }
    for ((at_ms, id, until_ms), members) in by_event {
        let mut e = guard::about_group(group, EventKind::MemberMuted, id, at_ms, now);
        e.members = members;
        e.mute = Some(Mute::Until { until_ms });
        out.push(e);
    }
    (out, changed)
}

/// A dimension a newer event changed: its renewal is dropped.
fn stop_renewing(applied: &mut AppliedState, dim: Dim<'_>) {
    let d = match dim {
        Dim::MuteAll => applied.mute_all.as_mut(),
        Dim::Member(m) => applied.members.get_mut(m),
    };
    if let Some(d) = d {
        d.lapses_at_ms = None;
    }
}

/// Updates `applied` with a renewal's results: renewed dimensions get
/// their new provider-side end; one whose renewal failed for good is not
/// renewed again (its dead letter says so).
fn renewed(applied: &mut AppliedState, e: &Event, results: &Results) {
    let apply = |d: &mut applied::AppliedDim, r: Option<Applied>| match r {
        Some(r) => {
            d.applied_at_ms = Some(r.at_ms);
            d.lapses_at_ms = r.lapses_at_ms;
        }
        None => d.lapses_at_ms = None,
    };
    if e.kind == EventKind::MuteAll {
        if let Some(d) = applied.mute_all.as_mut() {
            apply(d, results.mute_all);
        }
        return;
    }
    for m in &e.members {
        if let Some(d) = applied.members.get_mut(m) {
            apply(d, results.members.get(m).copied());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::applied::AppliedDim;
    use crate::worker::testing::{self, RongCloud, APPKEY, ROOM};

    fn lapse(record: &str, at_ms: Option<i64>) -> Lapse {
        Lapse {
            record: record.into(),
            at_ms,
        }
    }

    fn group(partition: i32, id: &str) -> GroupKey {
        (partition, id.as_bytes().to_vec())
    }

    #[test]
    fn a_renewal_is_due_ahead_of_its_lapse_and_moves_with_each_report() {
        let mut r = Renewals::new(1_000);
        r.lapse(lapse("@rc|a", Some(10_000)), group(0, "a"));
        r.lapse(lapse("@rc|b", Some(5_000)), group(1, "b"));
        assert!(r.take_due(3_999).is_empty(), "b is due at 4,000");
        assert_eq!(r.take_due(4_000), [("@rc|b".to_owned(), group(1, "b"))]);
        assert!(r.take_due(4_000).is_empty(), "taken out once");
        // A later report moves a's renewal; one without a lapse drops it.
        r.lapse(lapse("@rc|a", Some(20_000)), group(0, "a"));
        assert!(r.take_due(18_999).is_empty());
        r.lapse(lapse("@rc|a", None), group(0, "a"));
        assert!(r.take_due(i64::MAX).is_empty());
    }

    #[test]
    fn a_revoked_partitions_renewals_are_dropped() {
        let mut r = Renewals::new(0);
        r.lapse(lapse("@rc|a", Some(1)), group(0, "a"));
        r.lapse(lapse("@rc|b", Some(1)), group(1, "b"));
        r.revoke(0);
        assert_eq!(r.take_due(1), [("@rc|b".to_owned(), group(1, "b"))]);
    }

    fn accepted(_: &str, _: &str) -> u32 {
        200
    }

    /// A renewal: a target gag lapsing within `renew_ahead` is sent
    /// again, and the record's lapse moves on by the cap.
    #[tokio::test]
    async fn a_gag_lapsing_within_the_lead_is_sent_again_and_its_lapse_moves() {
        let kafka = testing::kafka();
        let rc = RongCloud::start(accepted).await;
        // Gags capped at 2 minutes, renewed 1 minute ahead.
        let engine = testing::engine(&kafka, &rc.url, 120, 60);
        let state = engine.state.as_ref().unwrap();
        state.store.assign(&[0]);
        state.store.loaded(0);
        state.newest.assign(0);
        let part = state.store.partition(0).await.unwrap();
        let now = now_ms();
        let mut record = AppliedState::new("rc", APPKEY, crate::event::Scope::Chatroom, ROOM);
        let gag = |lapses_at_ms| AppliedDim {
            muted: true,
            until_ms: None,
            at_ms: 1_000,
            event_id: "e1".into(),
            applied_at_ms: Some(now - 90_000),
            lapses_at_ms: Some(lapses_at_ms),
        };
        record.members.insert("due".into(), gag(now + 30_000));
        record.members.insert("later".into(), gag(now + 3_600_000));
        let key = record.key();
        state.store.stage(&part, record).unwrap();
        let job = Job {
            partition: 0,
            generation: 0,
            key: ROOM.as_bytes().to_vec(),
            work: crate::worker::scheduler::Work::Renew(key.clone()),
        };
        assert_eq!(job.offset(), None, "a renewal commits nothing");
        let handled = engine.process(&job).await;
        let calls = rc.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert!(calls[0].1.contains("userId=due") && !calls[0].1.contains("userId=later"));
        assert!(calls[0].1.contains("minute=2"), "for the cap: {calls:?}");
        assert_eq!(engine.metrics.renewals.get(), 1);
        let renewed = part.get(&key).unwrap();
        let due = renewed.members.get("due").unwrap();
        let next = due.lapses_at_ms.expect("capped again");
        assert!(next >= now + 120_000 && next <= now_ms() + 120_000);
        assert!(due.applied_at_ms.is_some_and(|t| t >= now));
        let later = renewed.members.get("later").unwrap();
        assert_eq!(later.lapses_at_ms, Some(now + 3_600_000), "not due yet");
        // The renewed gag is the next to lapse.
        assert_eq!(handled.lapse, Some(lapse(&key, Some(next))));
        assert!(handled.write.expect("written").confirm().await.is_ok());
    }
}
