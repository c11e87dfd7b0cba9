//! What happens to one consumed record at one target: decode it, judge it
//! (mute targets: against what the target applied and the group's newest
//! state), plan its steps with the target's part of the policy, deliver
//! each, dead-letter what fails for good, and record what the target
//! applied. When [`TargetEngine::process`] returns, the record is finished
//! here and its offset may be committed once the record is in Kafka.
//!
//! The same engine re-applies a group's capped mutes before the provider
//! ends them ([`Work::Renew`]); [`super::renewal`] decides which and when.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::completion::{Handled, Lapse};
use super::deliver::{per_member, AlwaysCurrent, Currency, Deliverer, Superseded};
use super::dlq::{DeadLetter, DeadLetters, MissingDim, Reason, SourceRecord};
use super::metrics::TargetMetrics;
use super::outcome::{ActionId, ActionOutcome, EventOutcome, Failure};
use super::reader::Newest;
use super::scheduler::{Job, Work};
use super::store::{Partition, Store};
use crate::event::{Event, EventKind, ReplayScope, SCHEMA_V1};
use crate::policy::{Action, Op, Planned, Policy, Step};
use crate::state;
use crate::state::applied::{self, AppliedState};
use crate::state::guard::{self, Applied, Dim, Dimension, Hold, Results, Verdict};
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

/// What the steps of one event came to.
#[derive(Debug, Default)]
pub(super) struct Tally {
    ok: bool,
    dead: bool,
    /// A call was dropped because a newer state was known by then.
    superseded: bool,
    steps: usize,
    pub(super) results: Results,
    /// Dimensions an action failed for (not applied, whatever else did).
    failed: Vec<Dimension>,
}

impl Tally {
    /// What the target applied: the results, less every dimension an
    /// action failed for (one call of several may have failed).
    fn applied(&self) -> Results {
        let mut results = self.results.clone();
        results.members.retain(|m, _| {
            !self
                .failed
                .iter()
                .any(|f| f.as_dim() == Dim::Member(m.as_str()))
        });
        if self.failed.contains(&Dimension::MuteAll) {
            results.mute_all = None;
        }
        results
    }
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
    /// Carries out one job; what it left: the applied record to confirm
    /// before the offset is committed, and the group's next lapse.
    pub async fn process(&self, job: &Job) -> Handled<AppliedState> {
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
    ) -> Handled<AppliedState> {
        let Ok(event) = decode(payload) else {
            // The state keeper dead-letters it, once for every target.
            self.finish(EventOutcome::Skipped);
            return Handled::default();
        };
        if replay.is_some_and(|s| s.target.as_deref().is_some_and(|t| t != &*self.name)) {
            self.finish(EventOutcome::NoMatch);
            return Handled::default();
        }
        let part = match &self.state {
            None => None,
            // Revoked meanwhile: the new owner applies the event.
            Some(s) => match s.store.partition(job.partition).await {
                Some(p) => Some(p),
                None => return Handled::default(),
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
                    let write = s.store.stage_delete(part, &key).ok();
                    return Handled {
                        write,
                        lapse: Some(Lapse {
                            record: key,
                            at_ms: None,
                        }),
                    };
                }
            }
        }
        if !self.routes(&event, event.kind) {
            // No rule sends this event to this target: nothing to judge or
            // record either.
            self.finish(EventOutcome::NoMatch);
            return Handled::default();
        }
        // A mute event at a target that keeps records: judged, and its
        // group's record (by key) updated.
        let guarded = part
            .as_ref()
            .filter(|_| event.kind.is_mute())
            .map(|p| (p, key()));
        let applied = guarded.as_ref().and_then(|(p, key)| p.get(key));
        let verdict = guarded
            .as_ref()
            .map(|_| self.judge(job.partition, applied.as_ref(), &event, replay.is_some()));
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
        let mut handled = Handled::default();
        if let (Some((part, key)), Some(fresh), Some(s)) = (
            &guarded,
            verdict.as_ref().and_then(|v| v.fresh.as_deref()),
            &self.state,
        ) {
            s.store.member().await;
            handled = self.write(job.partition, part, applied, fresh, &tally, key);
        }
        let held = verdict.as_ref().and_then(Verdict::all_held);
        self.finish(outcome(&tally, held));
        handled
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
    pub(super) fn routes(&self, event: &Event, kind: EventKind) -> bool {
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
    ) -> Handled<AppliedState> {
        let state = self.state.as_ref().expect("written only with state");
        let results = tally.applied();
        let Some(next) = guard::record_applied(
            applied,
            &self.name,
            fresh,
            &results,
            now_ms(),
            state.store.horizon_ms(),
        ) else {
            return Handled::default();
        };
        let newest = state.newest.get(partition, &next.group_key());
        let at_ms = self.next_lapse(Some(&next), newest.as_ref());
        Handled {
            // Revoked: the new owner applies the event again.
            write: state.store.stage(part, next).ok(),
            lapse: Some(Lapse {
                record: key.to_owned(),
                at_ms,
            }),
        }
    }

    /// Runs the steps one after another; dead-letters what fails.
    pub(super) async fn carry_out(
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
                            tally.failed.push(Dimension::Member(u.member.clone()));
                        }
                    }
                    Some(c) if per_member(&c.op) => {
                        let members = c.users.iter().map(|u| Dimension::Member(u.member.clone()));
                        tally.failed.extend(members);
                    }
                    _ => tally.failed.push(Dimension::MuteAll),
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

    /// The group's newest state of the dimensions `failed` of `event`,
    /// which the target is left without: what a dead letter of a mute
    /// target names.
    fn missing(&self, partition: i32, event: &Event, failed: &[Dimension]) -> Vec<MissingDim> {
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
                .filter_map(|f| match f.as_dim() {
                    // A group-wide call's failure (or one no call was made
                    // for) leaves only a group-wide event's dimension.
                    Dim::MuteAll
                        if !matches!(event.kind, EventKind::MuteAll | EventKind::UnmuteAll) =>
                    {
                        None
                    }
                    Dim::MuteAll => {
                        let d = newest.mute_all.as_ref()?;
                        Some(MissingDim {
                            dimension: Dim::MuteAll.label(),
                            muted: d.muted,
                            until_ms: None,
                            set_by: d.event_id.clone(),
                            at_ms: d.at_ms,
                        })
                    }
                    Dim::Member(m) => {
                        let d = newest.members.get(m)?;
                        Some(MissingDim {
                            dimension: Dim::Member(m).label(),
                            muted: d.muted,
                            until_ms: d.until_ms,
                            set_by: d.event_id.clone(),
                            at_ms: d.at_ms,
                        })
                    }
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
    ) -> Handled<AppliedState> {
        let target = marker
            .attributes
            .get("target")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if target != &*self.name {
            self.finish(EventOutcome::NoMatch);
            return Handled::default();
        }
        let (Some(part), Some(state)) = (part, &self.state) else {
            tracing::warn!(group = %marker.group_id, target, "resync marker, but this target keeps no state (worker.track_state is off, or it forwards whole events): nothing to apply");
            self.finish(EventOutcome::NoMatch);
            return Handled::default();
        };
        let group_key = state::key(&marker.appkey, marker.scope, &marker.group_id);
        let Some(newest) = state.newest.get(job.partition, &group_key) else {
            tracing::info!(group = %marker.group_id, target, "resync: no mute state for the group; nothing to apply");
            self.finish(EventOutcome::NoMatch);
            return Handled::default();
        };
        let key = applied::key(&self.name, &marker.appkey, marker.scope, &marker.group_id);
        let mut applied = part.get(&key);
        let mut total = Tally::default();
        let mut write = None;
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
                if written.write.is_some() {
                    applied = part.get(&key);
                    write = written.write;
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
        let lapse = applied.as_ref().map(|a| Lapse {
            at_ms: self.next_lapse(Some(a), Some(&newest)),
            record: key,
        });
        Handled { write, lapse }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{GroupState, MemberState};
    use crate::worker::testing::{self, event, record_job, RongCloud, APPKEY, ROOM};
    use std::time::{Duration, Instant};

    /// RongCloud's longest gag, and the renewal lead of its default config.
    const CAP_SECONDS: u64 = 43_200 * 60;
    const AHEAD_SECONDS: u64 = 3_600;

    fn record_key() -> String {
        applied::key("rc", APPKEY, crate::event::Scope::Chatroom, ROOM)
    }

    fn count(engine: &TargetEngine, outcome: EventOutcome) -> u64 {
        engine.metrics.events[outcome as usize].get()
    }

    fn accepted(_: &str, _: &str) -> u32 {
        200
    }

    fn refused(_: &str, _: &str) -> u32 {
        1002
    }

    /// The engine's partition 0, read to its end (nothing in it).
    async fn loaded(engine: &TargetEngine) -> Arc<Partition<AppliedState>> {
        let state = engine.state.as_ref().unwrap();
        state.store.assign(&[0]);
        state.store.loaded(0);
        state.newest.assign(0);
        state.store.partition(0).await.unwrap()
    }

    #[tokio::test]
    async fn a_fresh_member_mute_is_sent_then_recorded_with_its_lapse() {
        let kafka = testing::kafka();
        let rc = RongCloud::start(accepted).await;
        let engine = testing::engine(&kafka, &rc.url, CAP_SECONDS, AHEAD_SECONDS);
        let part = loaded(&engine).await;
        let mute = event(EventKind::MemberMuted, "e1", 1_000, &["u1"]);
        let before = now_ms();
        let handled = engine.process(&record_job(&mute, 7)).await;
        let calls = rc.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].0, "/chatroom/user/gag/add.json");
        assert!(calls[0].1.contains("userId=u1"), "{calls:?}");
        assert_eq!(count(&engine, EventOutcome::Applied), 1);
        // Recorded here at once, before Kafka has it.
        let record = part.get(&record_key()).expect("the applied record");
        let u1 = record.members.get("u1").expect("u1 recorded");
        assert_eq!((u1.event_id.as_str(), u1.at_ms), ("e1", 1_000));
        assert!(u1.applied_at_ms.is_some_and(|t| t >= before));
        // A permanent chatroom gag is capped: it lapses after the cap.
        let lapse = u1.lapses_at_ms.expect("capped");
        let cap_ms = CAP_SECONDS as i64 * 1000;
        assert!(lapse >= before + cap_ms && lapse <= now_ms() + cap_ms);
        assert_eq!(
            handled.lapse,
            Some(Lapse {
                record: record_key(),
                at_ms: Some(lapse)
            })
        );
        let write = handled.write.expect("a record to confirm");
        assert!(write.confirm().await.is_ok(), "Kafka acknowledges it");
    }

    #[tokio::test]
    async fn after_a_stall_nothing_is_sent_until_the_group_confirms_the_partition() {
        let kafka = testing::kafka();
        let rc = RongCloud::start(accepted).await;
        let (lease, epoch) = crate::worker::lease::Lease::after_a_stall();
        let engine =
            testing::engine_with_lease(&kafka, &rc.url, CAP_SECONDS, AHEAD_SECONDS, lease.clone());
        loaded(&engine).await;
        let job = record_job(&event(EventKind::MuteAll, "e1", 1_000, &[]), 7);
        let running = tokio::spawn(async move {
            let handled = engine.process(&job).await;
            (engine, handled)
        });
        // The call is under way and held at the lease, not merely slow.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lease.waiting() == 0 {
            assert!(
                Instant::now() < deadline,
                "the call never reached the lease"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(rc.calls().is_empty(), "sent while in doubt");
        assert!(!running.is_finished());
        lease.confirm(epoch);
        let (engine, handled) = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("sent once confirmed")
            .unwrap();
        assert_eq!(rc.calls().len(), 1);
        assert_eq!(count(&engine, EventOutcome::Applied), 1);
        assert!(handled.write.is_some());
    }

    #[tokio::test]
    async fn a_redelivered_event_is_a_duplicate_and_not_sent_again() {
        let kafka = testing::kafka();
        let rc = RongCloud::start(accepted).await;
        let engine = testing::engine(&kafka, &rc.url, CAP_SECONDS, AHEAD_SECONDS);
        loaded(&engine).await;
        let mute = event(EventKind::MuteAll, "e1", 1_000, &[]);
        assert!(engine.process(&record_job(&mute, 7)).await.write.is_some());
        let again = engine.process(&record_job(&mute, 7)).await;
        assert_eq!(rc.calls().len(), 1, "sent once");
        assert!(again.write.is_none() && again.lapse.is_none());
        assert_eq!(count(&engine, EventOutcome::Duplicate), 1);
        // An older event of the same dimension is stale.
        let older = event(EventKind::UnmuteAll, "e0", 500, &[]);
        assert!(engine.process(&record_job(&older, 8)).await.write.is_none());
        assert_eq!(rc.calls().len(), 1, "a stale event is not sent");
        assert_eq!(count(&engine, EventOutcome::Stale), 1);
    }

    #[tokio::test]
    async fn a_member_a_newer_state_has_set_since_is_superseded() {
        let kafka = testing::kafka();
        let rc = RongCloud::start(accepted).await;
        let engine = testing::engine(&kafka, &rc.url, CAP_SECONDS, AHEAD_SECONDS);
        loaded(&engine).await;
        let mut newest = GroupState::new(APPKEY, crate::event::Scope::Chatroom, ROOM);
        let unmuted = |id: &str, at_ms| MemberState {
            muted: false,
            until_ms: None,
            at_ms,
            event_id: id.into(),
        };
        newest.members.insert("u1".into(), unmuted("later", 2_000));
        let state = engine.state.as_ref().unwrap();
        state.newest.put(0, &newest.key(), Some(newest));
        let mute = event(EventKind::MemberMuted, "e1", 1_000, &["u1", "u2"]);
        engine.process(&record_job(&mute, 7)).await;
        let calls = rc.calls();
        assert_eq!(calls.len(), 1);
        assert!(
            calls[0].1.contains("userId=u2") && !calls[0].1.contains("userId=u1"),
            "only u2 is sent: {calls:?}"
        );
        // All of it superseded: nothing sent, nothing recorded.
        let all = event(EventKind::MemberMuted, "e2", 1_500, &["u1"]);
        let handled = engine.process(&record_job(&all, 8)).await;
        assert_eq!(rc.calls().len(), 1);
        assert!(handled.write.is_none());
        assert_eq!(count(&engine, EventOutcome::Superseded), 1);
    }

    #[tokio::test]
    async fn a_member_the_provider_refuses_is_dead_lettered_and_recorded_as_not_applied() {
        let kafka = testing::kafka();
        let rc = RongCloud::start(refused).await;
        let engine = testing::engine(&kafka, &rc.url, CAP_SECONDS, AHEAD_SECONDS);
        let part = loaded(&engine).await;
        // A member whose ID is the group-wide mute's name.
        let mute = event(EventKind::MemberMuted, "e1", 1_000, &["mute_all"]);
        let handled = engine.process(&record_job(&mute, 7)).await;
        assert_eq!(rc.calls().len(), 1, "a permanent error is not retried");
        assert_eq!(count(&engine, EventOutcome::DeadLettered), 1);
        let letters = engine
            .metrics
            .dead_letters
            .with_label_values(&["rc", Reason::PermanentError.as_str()]);
        assert_eq!(letters.get(), 1);
        // Judged (a redelivery is a duplicate), but not applied.
        let record = part.get(&record_key()).expect("recorded");
        let m = record.members.get("mute_all").expect("the member");
        assert_eq!((m.applied_at_ms, m.lapses_at_ms), (None, None));
        assert_eq!(record.mute_all, None, "the group-wide mute is untouched");
        assert_eq!(
            handled.lapse.and_then(|l| l.at_ms),
            None,
            "nothing to renew"
        );
    }

    #[test]
    fn a_failed_member_called_mute_all_is_not_the_group_wide_mute() {
        let done = Applied {
            at_ms: 1,
            lapses_at_ms: None,
        };
        let mut tally = Tally::default();
        tally.results.mute_all = Some(done);
        tally.results.members.insert("mute_all".into(), done);
        tally.results.members.insert("u1".into(), done);
        tally.failed = vec![Dimension::Member("mute_all".into())];
        let applied = tally.applied();
        assert_eq!(applied.mute_all, Some(done), "the group-wide mute applied");
        assert_eq!(applied.members.keys().collect::<Vec<_>>(), ["u1"]);
        tally.failed = vec![Dimension::MuteAll];
        let applied = tally.applied();
        assert_eq!(applied.mute_all, None);
        assert_eq!(applied.members.len(), 2, "members untouched");
    }

    #[tokio::test]
    async fn a_dead_letter_names_the_newest_state_of_the_dimensions_it_misses() {
        let kafka = testing::kafka();
        let rc = RongCloud::start(accepted).await;
        let engine = testing::engine(&kafka, &rc.url, CAP_SECONDS, AHEAD_SECONDS);
        loaded(&engine).await;
        let mut newest = GroupState::new(APPKEY, crate::event::Scope::Chatroom, ROOM);
        newest.mute_all = Some(crate::state::MuteAllState {
            muted: true,
            at_ms: 3_000,
            event_id: "all".into(),
        });
        newest.members.insert(
            "mute_all".into(),
            MemberState {
                muted: true,
                until_ms: Some(9_000),
                at_ms: 2_000,
                event_id: "member".into(),
            },
        );
        let state = engine.state.as_ref().unwrap();
        state.newest.put(0, &newest.key(), Some(newest));
        let member = event(EventKind::MemberMuted, "e1", 1_000, &["mute_all"]);
        let missing = engine.missing(0, &member, &[Dimension::Member("mute_all".into())]);
        assert_eq!(
            missing,
            [MissingDim {
                dimension: "member:mute_all".into(),
                muted: true,
                until_ms: Some(9_000),
                set_by: "member".into(),
                at_ms: 2_000,
            }]
        );
        // A group-wide failure of a member event misses no member.
        assert!(engine.missing(0, &member, &[Dimension::MuteAll]).is_empty());
        let all = event(EventKind::MuteAll, "e2", 1_000, &[]);
        let missing = engine.missing(0, &all, &[Dimension::MuteAll]);
        assert_eq!(missing.len(), 1);
        assert_eq!(
            (missing[0].dimension.as_str(), missing[0].set_by.as_str()),
            ("mute_all", "all")
        );
    }

    #[test]
    fn an_events_outcome_is_its_worst_step() {
        let tally = |ok, dead, superseded, steps| Tally {
            ok,
            dead,
            superseded,
            steps,
            ..Tally::default()
        };
        let stale = Hold::Stale {
            newer_at_ms: 2,
            newer_event: "n".into(),
        };
        assert_eq!(
            outcome(&tally(true, true, false, 2), None),
            EventOutcome::DeadLettered
        );
        assert_eq!(
            outcome(&tally(true, false, true, 2), None),
            EventOutcome::Applied
        );
        assert_eq!(
            outcome(&tally(false, false, false, 0), Some(&stale)),
            EventOutcome::Stale
        );
        assert_eq!(
            outcome(&tally(false, false, false, 0), Some(&Hold::Duplicate)),
            EventOutcome::Duplicate
        );
        assert_eq!(
            outcome(&tally(false, false, false, 0), None),
            EventOutcome::NoMatch
        );
        assert_eq!(
            outcome(&tally(false, false, true, 1), None),
            EventOutcome::Superseded
        );
        assert_eq!(
            outcome(&tally(false, false, false, 1), None),
            EventOutcome::Skipped
        );
    }

    #[tokio::test]
    async fn an_event_no_rule_sends_here_is_neither_judged_nor_recorded() {
        let kafka = testing::kafka();
        let rc = RongCloud::start(accepted).await;
        let engine = testing::engine(&kafka, &rc.url, CAP_SECONDS, AHEAD_SECONDS);
        let part = loaded(&engine).await;
        let mut group = event(EventKind::MuteAll, "e1", 1_000, &[]);
        group.scope = crate::event::Scope::Group;
        let handled = engine.process(&record_job(&group, 7)).await;
        assert!(handled.write.is_none() && handled.lapse.is_none());
        assert!(rc.calls().is_empty());
        assert_eq!(count(&engine, EventOutcome::NoMatch), 1);
        assert!(part.get(&record_key()).is_none());
        let undecodable = Job {
            work: Work::Record {
                offset: 8,
                payload: Some(b"not json".to_vec()),
                replay: None,
            },
            ..record_job(&group, 8)
        };
        assert!(engine.process(&undecodable).await.write.is_none());
        assert_eq!(
            count(&engine, EventOutcome::Skipped),
            1,
            "the keeper dead-letters it, not each target"
        );
    }
}
