//! What happens to one consumed record at one target: decode it, judge it
//! (mute targets: against what the target applied and the group's newest
//! state), plan its steps with the target's part of the policy, deliver
//! each, dead-letter what fails for good, and record what the target
//! applied. When [`TargetEngine::process`] returns, the record is finished
//! here and its offset may be committed once the record is in Kafka.
//!
//! The same engine re-applies a group's capped mutes before the provider
//! ends them ([`Work::Renew`]), in the group's order like its events: those
//! its records say it applied, and those of the group's newest state it
//! holds no record of (applied by a version that kept none, or trimmed
//! from an oversized record), whose provider-side end is counted from when
//! the state says they were set.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::deliver::{per_member, AlwaysCurrent, Currency, Deliverer, Superseded};
use super::dlq::{DeadLetter, DeadLetters, MissingDim, Reason, SourceRecord};
use super::metrics::TargetMetrics;
use super::outcome::{ActionId, ActionOutcome, EventOutcome, Failure};
use super::reader::Newest;
use super::scheduler::{Job, Work};
use super::store::{Partition, Staged, Store};
use crate::event::{Event, EventKind, Mute, ReplayScope, SCHEMA_V1};
use crate::policy::{Action, Op, Planned, Policy, Step};
use crate::state::applied::{self, AppliedState};
use crate::state::guard::{self, Applied, Dim, Hold, Results, Verdict};
use crate::state::{self, GroupState};
use crate::time::now_ms;

/// A mute target's records: what it applied, and the groups' newest state.
pub struct TargetState {
    pub store: Store<AppliedState>,
    pub newest: Arc<Newest>,
}

/// Everything one target's group tasks share.
pub struct TargetEngine {
    pub name: Arc<str>,
    /// The rules' `then` entries for this target only.
    pub policy: Policy,
    pub deliverer: Deliverer,
    pub dlq: DeadLetters,
    pub metrics: TargetMetrics,
    /// The event topic (for the dead letters' source).
    pub topic: String,
    /// A mute target's records, when `worker.track_state` is on.
    pub state: Option<TargetState>,
    /// How long before the provider ends a capped mute it is re-applied.
    pub renew_ahead_ms: i64,
}

/// What a group task hands back.
#[derive(Default)]
pub struct Processed {
    /// The applied record to confirm before the offset is committed.
    pub staged: Option<Staged<AppliedState>>,
    /// The group's record, and when a mute of it lapses next (`None`: no
    /// renewal due), for the renewal schedule.
    pub lapse: Option<(String, Option<i64>)>,
}

/// What the steps of one event came to.
#[derive(Default)]
struct Tally {
    ok: bool,
    dead: bool,
    /// A call was dropped because a newer state was known by then.
    superseded: bool,
    steps: usize,
    results: Results,
    /// Dimensions an action failed for (not applied, whatever else did).
    failed: Vec<String>,
}

/// The group's newest state, asked before each attempt of a call.
struct Newer<'a> {
    engine: &'a TargetEngine,
    partition: i32,
    event: &'a Event,
}

impl Currency for Newer<'_> {
    fn superseded(&self, call: &Action) -> Superseded {
        let Some(state) = &self.engine.state else {
            return Superseded::Nothing;
        };
        let e = self.event;
        let key = state::key(&e.appkey, e.scope, &e.group_id);
        let routed = |k| self.engine.routes(e, k);
        state.newest.with(self.partition, &key, |newest| {
            if !per_member(&call.op) {
                return match guard::superseded(newest, Dim::MuteAll, e, routed) {
                    true => Superseded::All,
                    false => Superseded::Nothing,
                };
            }
            let gone: Vec<String> = call
                .users
                .iter()
                .filter(|u| guard::superseded(newest, Dim::Member(&u.member), e, routed))
                .map(|u| u.member.clone())
                .collect();
            match gone.len() {
                0 => Superseded::Nothing,
                n if n == call.users.len() => Superseded::All,
                _ => Superseded::Members(gone),
            }
        })
    }
}

impl TargetEngine {
    /// Carries out one job; see [`Processed`].
    pub async fn process(&self, job: &Job) -> Processed {
        match &job.work {
            Work::Record {
                offset,
                payload,
                replay,
            } => {
                let source = SourceRecord {
                    topic: self.topic.clone(),
                    partition: job.partition,
                    offset: *offset,
                };
                self.record(job, source, payload.as_deref(), replay.as_ref())
                    .await
            }
            Work::Renew(key) => self.renew(job, key).await,
        }
    }

    async fn record(
        &self,
        job: &Job,
        source: SourceRecord,
        payload: Option<&[u8]>,
        replay: Option<&ReplayScope>,
    ) -> Processed {
        let Ok(event) = decode(payload) else {
            // The state keeper dead-letters it, once for every target.
            self.finish(EventOutcome::Skipped);
            return Processed::default();
        };
        if replay.is_some_and(|s| s.target.as_deref().is_some_and(|t| t != &*self.name)) {
            self.finish(EventOutcome::NoMatch);
            return Processed::default();
        }
        let part = match &self.state {
            None => None,
            // Revoked meanwhile: the new owner applies the event.
            Some(s) => match s.store.partition(job.partition).await {
                Some(p) => Some(p),
                None => return Processed::default(),
            },
        };
        if event.kind == EventKind::Resync {
            return self.resync(job, &source, &event, part.as_ref()).await;
        }
        let key = || applied::key(&self.name, &event.appkey, event.scope, &event.group_id);
        if event.kind == EventKind::GroupDestroyed {
            if let (Some(part), Some(s)) = (&part, &self.state) {
                let key = key();
                if part.get(&key).is_some() {
                    self.finish(EventOutcome::NoMatch);
                    s.store.member().await;
                    let staged = s.store.stage_delete(part, &key).ok();
                    return Processed {
                        staged,
                        lapse: Some((key, None)),
                    };
                }
            }
        }
        if !self.routes(&event, event.kind) {
            // No rule sends this event to this target: nothing to judge or
            // record either.
            self.finish(EventOutcome::NoMatch);
            return Processed::default();
        }
        let guarded = part.as_ref().filter(|_| event.kind.is_mute());
        let key = guarded.map(|_| key()).unwrap_or_default();
        let applied = guarded.and_then(|p| p.get(&key));
        let verdict =
            guarded.map(|_| self.judge(job.partition, applied.as_ref(), &event, replay.is_some()));
        if let Some(v) = &verdict {
            log_held(&self.name, &event, v);
        }
        let steps = self.policy.plan(&event, verdict.as_ref(), replay);
        if steps.is_empty() {
            if let Some(scope) = replay {
                // Renamed or removed since the dead letter was written: say
                // so, or the replay would vanish without a trace.
                tracing::warn!(event = %event.id, target = %self.name, rule = scope.rule.as_deref().unwrap_or("-"), "replayed event matches no configured rule of this target; nothing applied");
            }
        }
        let tally = self
            .carry_out(&job.key, &source, job.partition, steps)
            .await;
        // The record follows the actions it vouches for: a crash before
        // this line re-applies the event, never loses it.
        let mut processed = Processed::default();
        if let (Some(part), Some(fresh), Some(s)) = (
            guarded,
            verdict.as_ref().and_then(|v| v.fresh.as_deref()),
            &self.state,
        ) {
            s.store.member().await;
            processed = self.write(job.partition, part, applied, fresh, &tally, &key);
        }
        let held = verdict.as_ref().and_then(Verdict::all_held);
        self.finish(outcome(&tally, held));
        processed
    }

    /// Judges a mute event for this target.
    fn judge<'e>(
        &self,
        partition: i32,
        applied: Option<&AppliedState>,
        event: &'e Event,
        replay: bool,
    ) -> Verdict<'e> {
        let state = self.state.as_ref().expect("judged only with state");
        let key = state::key(&event.appkey, event.scope, &event.group_id);
        state.newest.with(partition, &key, |newest| {
            guard::judge_for_target(applied, newest, event, replay, |k| self.routes(event, k))
        })
    }

    /// Whether this target's rules send events of `kind` about `event`'s group.
    fn routes(&self, event: &Event, kind: EventKind) -> bool {
        self.policy
            .routes(kind, event.scope, &event.appkey, &event.group_id)
    }

    /// Records what the steps of `fresh` applied; the write to confirm.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        partition: i32,
        part: &Arc<Partition<AppliedState>>,
        applied: Option<AppliedState>,
        fresh: &Event,
        tally: &Tally,
        key: &str,
    ) -> Processed {
        let state = self.state.as_ref().expect("written only with state");
        let mut results = tally.results.clone();
        results
            .members
            .retain(|m, _| !tally.failed.iter().any(|f| f == m));
        if tally.failed.iter().any(|f| f == "mute_all") {
            results.mute_all = None;
        }
        let Some(next) = guard::record_applied(
            applied,
            &self.name,
            fresh,
            &results,
            now_ms(),
            state.store.horizon_ms(),
        ) else {
            return Processed::default();
        };
        let newest = state.newest.get(partition, &next.group_key());
        let lapse = self.next_lapse(Some(&next), newest.as_ref());
        Processed {
            // Revoked: the new owner applies the event again.
            staged: state.store.stage(part, next).ok(),
            lapse: Some((key.to_owned(), lapse)),
        }
    }

    /// Runs the steps one after another; dead-letters what fails.
    async fn carry_out(
        &self,
        key: &[u8],
        source: &SourceRecord,
        partition: i32,
        steps: Vec<Step<'_>>,
    ) -> Tally {
        let mut tally = Tally {
            steps: steps.len(),
            ..Tally::default()
        };
        for step in steps {
            let (planned, event) = match step {
                Step::Held {
                    rule,
                    target,
                    action,
                    hold,
                } => {
                    self.count(
                        &ActionId::new(rule, target, action),
                        &ActionOutcome::held(&hold),
                    );
                    continue;
                }
                Step::Carry { planned, event } => (planned, event),
            };
            let id = action_id(&planned);
            let action = match planned {
                Planned::Skip { why, .. } => {
                    self.count(&id, &ActionOutcome::Skipped(why.clone().into()));
                    tracing::debug!(rule = %id.rule, target = %id.target, %why, event = %event.id, "skipped");
                    continue;
                }
                Planned::Unmapped { why, .. } => {
                    let f = Failure::whole(Reason::Unmapped, why, 0);
                    self.settled(&mut tally, key, source, event, &id, f, None)
                        .await;
                    continue;
                }
                Planned::Act(action) => action,
            };
            let newer = Newer {
                engine: self,
                partition,
                event,
            };
            let current: &dyn Currency = if self.state.is_some() && event.kind.is_mute() {
                &newer
            } else {
                &AlwaysCurrent
            };
            for delivered in self.deliverer.apply(action, event, current).await {
                let call = &delivered.call;
                let applied = Applied {
                    at_ms: delivered.at_ms,
                    lapses_at_ms: delivered.lapses_at_ms,
                };
                let whole_ok = matches!(delivered.outcomes.last(), Some(ActionOutcome::Ok));
                for o in delivered.outcomes {
                    self.settled(&mut tally, key, source, event, &id, o, Some(call))
                        .await;
                }
                if per_member(&call.op) {
                    for u in &delivered.accepted {
                        tally.results.members.insert(u.member.clone(), applied);
                    }
                } else if whole_ok && matches!(call.op, Op::MuteAll { .. } | Op::UnmuteAll) {
                    tally.results.mute_all = Some(applied);
                }
            }
        }
        tally
    }

    /// Counts one outcome; dead-letters a failure.
    #[allow(clippy::too_many_arguments)]
    async fn settled(
        &self,
        tally: &mut Tally,
        key: &[u8],
        source: &SourceRecord,
        event: &Event,
        id: &ActionId,
        outcome: ActionOutcome,
        call: Option<&Action>,
    ) {
        self.count(id, &outcome);
        match outcome {
            ActionOutcome::Ok => tally.ok = true,
            ActionOutcome::Skipped(why) => {
                tracing::debug!(rule = %id.rule, target = %id.target, %why, event = %event.id, "skipped");
            }
            ActionOutcome::DeadLettered(failure) => {
                tally.dead = true;
                let failed_before = tally.failed.len();
                match call {
                    Some(c) if per_member(&c.op) && !failure.users.is_empty() => {
                        for u in c.users.iter().filter(|u| failure.users.contains(&u.id)) {
                            tally.failed.push(u.member.clone());
                        }
                    }
                    Some(c) if per_member(&c.op) => {
                        tally
                            .failed
                            .extend(c.users.iter().map(|u| u.member.clone()));
                    }
                    _ => tally.failed.push("mute_all".into()),
                }
                tracing::warn!(rule = %id.rule, target = %id.target, reason = failure.reason.as_str(), error = %failure.error, event = %event.id, "action failed; dead-lettered");
                let mut letter = DeadLetter::action(source.clone(), event, id, failure);
                letter.missing_state =
                    self.missing(source.partition, event, &tally.failed[failed_before..]);
                self.metrics
                    .dead_letters
                    .with_label_values(&[&*self.name, letter.reason.as_str()])
                    .inc();
                self.dlq.write(key, &letter).await;
            }
            ActionOutcome::Superseded => tally.superseded = true,
            ActionOutcome::Stale | ActionOutcome::Duplicate => {}
        }
    }

    /// The group's newest state of the dimensions `failed` (`mute_all`, or
    /// member IDs) of `event`, which the target is left without: what a
    /// dead letter of a mute target names.
    fn missing(&self, partition: i32, event: &Event, failed: &[String]) -> Vec<MissingDim> {
        let Some(state) = self.state.as_ref().filter(|_| event.kind.is_mute()) else {
            return Vec::new();
        };
        let key = state::key(&event.appkey, event.scope, &event.group_id);
        state.newest.with(partition, &key, |newest| {
            let Some(newest) = newest else {
                return Vec::new();
            };
            failed
                .iter()
                .filter_map(|f| {
                    if f == "mute_all"
                        && matches!(event.kind, EventKind::MuteAll | EventKind::UnmuteAll)
                    {
                        let d = newest.mute_all.as_ref()?;
                        return Some(MissingDim {
                            dimension: Dim::MuteAll.label(),
                            muted: d.muted,
                            until_ms: None,
                            set_by: d.event_id.clone(),
                            at_ms: d.at_ms,
                        });
                    }
                    let d = newest.members.get(f)?;
                    Some(MissingDim {
                        dimension: Dim::Member(f).label(),
                        muted: d.muted,
                        until_ms: d.until_ms,
                        set_by: d.event_id.clone(),
                        at_ms: d.at_ms,
                    })
                })
                .collect()
        })
    }

    /// A `resync` marker: applies the group's newest state to this target
    /// (when the marker names it), in the group's order.
    async fn resync(
        &self,
        job: &Job,
        source: &SourceRecord,
        marker: &Event,
        part: Option<&Arc<Partition<AppliedState>>>,
    ) -> Processed {
        let target = marker
            .attributes
            .get("target")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if target != &*self.name {
            self.finish(EventOutcome::NoMatch);
            return Processed::default();
        }
        let (Some(part), Some(state)) = (part, &self.state) else {
            tracing::warn!(group = %marker.group_id, target, "resync marker, but this target keeps no state (worker.track_state is off, or it forwards whole events): nothing to apply");
            self.finish(EventOutcome::NoMatch);
            return Processed::default();
        };
        let group_key = state::key(&marker.appkey, marker.scope, &marker.group_id);
        let Some(newest) = state.newest.get(job.partition, &group_key) else {
            tracing::info!(group = %marker.group_id, target, "resync: no mute state for the group; nothing to apply");
            self.finish(EventOutcome::NoMatch);
            return Processed::default();
        };
        let key = applied::key(&self.name, &marker.appkey, marker.scope, &marker.group_id);
        let mut applied = part.get(&key);
        let mut total = Tally::default();
        let mut staged = None;
        // The whole state, or the dimensions a `mutebridge verify` marker names.
        for e in crate::verify::repair::resync_events(marker, &newest, applied.as_ref(), now_ms()) {
            // Judged as a replay: the target gets each dimension's event
            // again even if it applied it (it may have lost it).
            let verdict = guard::judge(applied.as_ref(), &e, true);
            let steps = self.policy.plan(&e, Some(&verdict), None);
            let tally = self.carry_out(&job.key, source, job.partition, steps).await;
            if let Some(fresh) = verdict.fresh.as_deref() {
                state.store.member().await;
                let written = self.write(job.partition, part, applied.clone(), fresh, &tally, &key);
                if written.staged.is_some() {
                    applied = part.get(&key);
                    staged = written.staged;
                }
            }
            total.ok |= tally.ok;
            total.dead |= tally.dead;
            total.steps += tally.steps;
        }
        if total.steps == 0 {
            tracing::info!(group = %marker.group_id, target, "resync: no rule sends this group's mute state to the target");
        }
        self.finish(outcome(&total, None));
        let lapse = applied
            .as_ref()
            .map(|a| (key, self.next_lapse(Some(a), Some(&newest))));
        Processed { staged, lapse }
    }

    /// Re-applies the group's mutes that the provider ends within
    /// `renew_ahead` (its longest mute cut them short): those its record
    /// holds, unless a newer event has changed them since (it reaches the
    /// target by itself, or the policy does not send it: either way this
    /// one is not renewed again), and those of the group's newest state it
    /// holds no record of ([`TargetEngine::adopted`]).
    async fn renew(&self, job: &Job, key: &str) -> Processed {
        let Some(state) = &self.state else {
            return Processed::default();
        };
        let Some(part) = state.store.partition(job.partition).await else {
            return Processed::default();
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
            return Processed::default();
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
            renewed(&mut applied, e, &tally);
            self.count_renewals(&tally);
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
            self.count_renewals(&tally);
            tracing::info!(target = %self.name, group = %applied.group_id, members = e.members.len(), "capped mute of the group's state re-applied before the provider ends it (applied before this target kept records of it, or trimmed from them)");
        }
        let lapse = self.next_lapse(Some(&applied), newest.as_ref());
        if due.is_empty() && adopted.is_empty() && changed_since.is_empty() {
            return Processed {
                staged: None,
                lapse: Some((key.to_owned(), lapse)),
            };
        }
        applied.updated_at_ms = now;
        state.store.member().await;
        Processed {
            staged: state.store.stage(&part, applied).ok(),
            lapse: Some((key.to_owned(), lapse)),
        }
    }

    fn count_renewals(&self, tally: &Tally) {
        let calls = tally.results.members.len() + usize::from(tally.results.mute_all.is_some());
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
    /// each group's record key, group ID and next lapse.
    pub fn renewal_schedule(&self, partition: i32) -> Vec<(String, String, i64)> {
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
            if let Some(lapse) = self.next_lapse(record.as_ref(), Some(newest)) {
                out.push((key, newest.group_id.clone(), lapse));
            }
        });
        // Records of groups with no state (deleted by hand, say).
        for (key, record) in records {
            if let Some(lapse) = record.next_lapse_ms() {
                out.push((key, record.group_id, lapse));
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

    fn count(&self, id: &ActionId, outcome: &ActionOutcome) {
        self.metrics.action(id.action, outcome.label());
    }

    fn finish(&self, outcome: EventOutcome) {
        self.metrics.events[outcome as usize].inc();
    }
}

/// How an event ended at a target.
fn outcome(tally: &Tally, held: Option<&Hold>) -> EventOutcome {
    if tally.dead {
        EventOutcome::DeadLettered
    } else if tally.ok {
        EventOutcome::Applied
    } else if let Some(hold) = held {
        match hold {
            Hold::Stale { .. } => EventOutcome::Stale,
            Hold::Duplicate => EventOutcome::Duplicate,
            Hold::Superseded { .. } => EventOutcome::Superseded,
        }
    } else if tally.steps == 0 {
        EventOutcome::NoMatch
    } else if tally.superseded {
        EventOutcome::Superseded
    } else {
        EventOutcome::Skipped
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
fn renewed(applied: &mut AppliedState, e: &Event, tally: &Tally) {
    let apply = |d: &mut applied::AppliedDim, r: Option<Applied>| match r {
        Some(r) => {
            d.applied_at_ms = Some(r.at_ms);
            d.lapses_at_ms = r.lapses_at_ms;
        }
        None => d.lapses_at_ms = None,
    };
    if e.kind == EventKind::MuteAll {
        if let Some(d) = applied.mute_all.as_mut() {
            apply(d, tally.results.mute_all);
        }
        return;
    }
    for m in &e.members {
        if let Some(d) = applied.members.get_mut(m) {
            apply(d, tally.results.members.get(m).copied());
        }
    }
}

/// Says, in one line per reason, which parts of `event` the guard held.
fn log_held(target: &str, event: &Event, verdict: &Verdict) {
    let mut by: BTreeMap<&'static str, (Vec<&str>, i64, &str)> = BTreeMap::new();
    for h in &verdict.held {
        let (newer_at, newer_event) = match &h.hold {
            Hold::Stale {
                newer_at_ms,
                newer_event,
            }
            | Hold::Superseded {
                newer_at_ms,
                newer_event,
            } => (*newer_at_ms, newer_event.as_str()),
            Hold::Duplicate => (0, ""),
        };
        let entry = by
            .entry(h.hold.name())
            .or_insert((Vec::new(), i64::MIN, ""));
        entry.0.push(&h.dimension);
        if newer_at > entry.1 {
            (entry.1, entry.2) = (newer_at, newer_event);
        }
    }
    for (why, (dims, newer_at_ms, newer_event)) in by {
        let dimensions = dims.join(",");
        match why {
            "duplicate" => {
                tracing::info!(target, event = %event.id, kind = event.kind.as_str(), group = %event.group_id, dimensions, "duplicate: this event already set this here (a redelivery); not sent again")
            }
            "superseded" => {
                tracing::debug!(target, event = %event.id, kind = event.kind.as_str(), group = %event.group_id, newer_at_ms, newer_event, dimensions, "superseded: a newer event of the group set this since; only that one is sent")
            }
            _ => {
                tracing::info!(target, event = %event.id, kind = event.kind.as_str(), group = %event.group_id, at_ms = event.occurred_at_ms, newer_at_ms, newer_event, dimensions, "stale: a newer event already set this; not sent")
            }
        }
    }
}

/// The metric identity of a policy verdict.
fn action_id(plan: &Planned) -> ActionId {
    let (rule, target) = plan.rule_and_target();
    ActionId::new(Arc::from(rule), Arc::from(target), plan.action())
}

pub fn decode(payload: Option<&[u8]>) -> Result<Event, String> {
    let payload = payload.ok_or("the record has no value")?;
    let event: Event =
        serde_json::from_slice(payload).map_err(|e| format!("not a {SCHEMA_V1} event: {e}"))?;
    if event.schema != SCHEMA_V1 {
        return Err(format!("schema {:?} is not {SCHEMA_V1}", event.schema));
    }
    Ok(event)
}
