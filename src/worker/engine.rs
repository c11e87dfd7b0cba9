//! What happens to one consumed record: decode it, judge it against the
//! group's mute state (the stale-event guard), let the policy decide,
//! deliver each action, dead-letter what fails for good, record the new
//! state, and count it all. When [`Engine::process`] returns, the record
//! is finished and its offset may be committed.

use std::sync::Arc;

use super::deliver::Deliverer;
use super::dlq::{DeadLetter, DeadLetters, Reason, SourceRecord};
use super::outcome::{ActionId, ActionOutcome, EventOutcome, Failure};
use super::scheduler::{Job, ReplayScope};
use super::store::{Partition, Staged, Store};
use crate::event::{Event, EventKind, SCHEMA_V1};
use crate::metrics::WorkerMetrics;
use crate::policy::{Op, Planned, Policy};
use crate::state::guard::{self, Hold, Verdict};
use crate::state::{self, GroupState};
use crate::time::now_ms;

/// Everything that handles one event, shared by the group tasks.
pub struct Engine {
    pub policy: Arc<Policy>,
    pub deliverer: Deliverer,
    pub dlq: DeadLetters,
    pub metrics: WorkerMetrics,
    /// The event topic (for the dead letters' source).
    pub topic: String,
    /// The mute states, when `worker.track_state` is on.
    pub state: Option<Store>,
}

/// One thing to do for an event: a policy verdict to carry out on an
/// event (the guarded one for mute actions), or an outcome already known.
enum Step<'e> {
    Carry(Planned, &'e Event),
    Known(ActionId, ActionOutcome),
}

/// What the steps of one event came to.
#[derive(Default)]
struct Tally {
    ok: bool,
    dead: bool,
    steps: usize,
}

impl Engine {
    /// Applies one event's actions; returns once each is done, skipped, or
    /// written to the dead-letter topic, with the group's new mute state
    /// when there is one: its offset may be committed once
    /// [`Store::confirm`] says the state is in Kafka.
    pub async fn process(&self, job: &Job) -> Option<Staged> {
        let source = SourceRecord {
            topic: self.topic.clone(),
            partition: job.partition,
            offset: job.offset,
        };
        let event = match decode(job.payload.as_deref()) {
            Ok(e) => e,
            Err(why) => {
                tracing::error!(partition = job.partition, offset = job.offset, %why, "undecodable record; dead-lettered");
                let letter = DeadLetter::undecodable(source, job.payload.as_deref(), why);
                self.dead_letter(&job.key, letter).await;
                self.finish(EventOutcome::DeadLettered);
                return None;
            }
        };
        let part = match &self.state {
            None => None,
            // Waits until the partition's states are rebuilt. `None`: it
            // was revoked meanwhile and its new owner applies the event.
            Some(store) => Some(store.partition(job.partition).await?),
        };
        if event.kind == EventKind::Resync {
            self.resync(job, source, &event, part.as_deref()).await;
            return None;
        }
        // Only mute kinds are judged; other kinds never touch the state.
        let guarded = part.as_ref().filter(|_| event.kind.is_mute());
        let current =
            guarded.and_then(|p| p.get(&state::key(&event.appkey, event.scope, &event.group_id)));
        let verdict = guarded.map(|_| guard::judge(current.as_ref(), &event, job.replay.is_some()));
        if let Some(v) = &verdict {
            log_held(&event, v);
        }
        let steps = self.plan(&event, verdict.as_ref(), job.replay.as_ref());
        let tally = self.carry_out(job, &source, steps).await;
        // The state follows the actions it vouches for: a crash before
        // this line re-applies the event, never loses it.
        let mut staged = None;
        if let (Some(part), Some(store), Some(fresh)) = (
            guarded,
            &self.state,
            verdict.as_ref().and_then(|v| v.fresh.as_deref()),
        ) {
            if let Some(next) = guard::record(current, fresh, now_ms(), store.horizon_ms()) {
                // Revoked: the new owner applies the event again.
                staged = Some(store.stage(part, next).ok()?);
            }
        }
        let held = verdict.as_ref().and_then(Verdict::all_held);
        self.finish(if tally.dead {
            EventOutcome::DeadLettered
        } else if tally.ok {
            EventOutcome::Applied
        } else if let Some(hold) = held {
            match hold {
                Hold::Stale { .. } => EventOutcome::Stale,
                Hold::Duplicate => EventOutcome::Duplicate,
            }
        } else if tally.steps == 0 {
            EventOutcome::NoMatch
        } else {
            EventOutcome::Skipped
        });
        staged
    }

    /// The policy's verdicts for `event`, each on the event it is carried
    /// out with: mute actions on what the guard let through (or held, when
    /// nothing was), forwarding targets on the whole event.
    fn plan<'e>(
        &self,
        event: &'e Event,
        verdict: Option<&'e Verdict<'e>>,
        replay: Option<&ReplayScope>,
    ) -> Vec<Step<'e>> {
        // Nothing held: the event is judged fresh as it is.
        let verdict = verdict.filter(|v| !v.held.is_empty());
        let fresh = verdict.and_then(|v| v.fresh.as_deref());
        // Same rules, same kind and group: one verdict per `then` entry in
        // both lists, in the same order.
        let mut guarded = fresh.map(|e| self.policy.decide(e).into_iter());
        let mut steps = Vec::new();
        for plan in self.policy.decide(event) {
            let guarded_plan = guarded.as_mut().and_then(Iterator::next);
            if let Some(scope) = replay {
                // A replayed dead letter re-drives its own action only.
                let (rule, target) = plan.rule_and_target();
                let wanted = scope.target.as_deref().is_none_or(|t| t == target)
                    && scope.rule.as_deref().is_none_or(|r| r == rule);
                if !wanted {
                    continue;
                }
            }
            let forwards = matches!(&plan, Planned::Act(a) if a.op == Op::Forward);
            steps.push(match (verdict, forwards) {
                (None, _) | (_, true) => Step::Carry(plan, event),
                (Some(v), false) => match (guarded_plan, fresh) {
                    (Some(g), Some(fresh)) => Step::Carry(g, fresh),
                    _ => Step::Known(
                        action_id(&plan),
                        match v.all_held() {
                            Some(Hold::Duplicate) => ActionOutcome::Duplicate,
                            _ => ActionOutcome::Stale,
                        },
                    ),
                },
            });
        }
        if steps.is_empty() {
            if let Some(scope) = replay {
                // Renamed or removed since the dead letter was written: say
                // so, or the replay would vanish without a trace.
                tracing::warn!(
                    event = %event.id,
                    target = scope.target.as_deref().unwrap_or("-"),
                    rule = scope.rule.as_deref().unwrap_or("-"),
                    "replayed event matches no configured rule and target; nothing applied"
                );
            }
        }
        steps
    }

    /// Runs the steps one after another; dead-letters what fails.
    async fn carry_out(&self, job: &Job, source: &SourceRecord, steps: Vec<Step<'_>>) -> Tally {
        let mut tally = Tally {
            steps: steps.len(),
            ..Tally::default()
        };
        for step in steps {
            let (outcomes, event) = match step {
                Step::Carry(plan, event) => (self.settle(plan, event).await, event),
                Step::Known(id, outcome) => {
                    self.count(&id, &outcome);
                    continue;
                }
            };
            for (id, outcome) in outcomes {
                self.count(&id, &outcome);
                match outcome {
                    ActionOutcome::Ok => tally.ok = true,
                    ActionOutcome::Skipped(why) => {
                        tracing::debug!(rule = %id.rule, target = %id.target, %why, event = %event.id, "skipped");
                    }
                    ActionOutcome::DeadLettered(failure) => {
                        tally.dead = true;
                        tracing::warn!(rule = %id.rule, target = %id.target, reason = failure.reason.as_str(), error = %failure.error, event = %event.id, "action failed; dead-lettered");
                        let letter = DeadLetter::action(source.clone(), event, &id, failure);
                        self.dead_letter(&job.key, letter).await;
                    }
                    ActionOutcome::Stale | ActionOutcome::Duplicate => {}
                }
            }
        }
        tally
    }

    /// A `resync` marker: applies the group's current mute state to the
    /// marker's target, through the rules that send mute kinds there.
    async fn resync(
        &self,
        job: &Job,
        source: SourceRecord,
        marker: &Event,
        part: Option<&Partition>,
    ) {
        let target = marker
            .attributes
            .get("target")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let Some(part) = part else {
            tracing::warn!(group = %marker.group_id, target, "resync marker, but worker.track_state is off: no state to apply");
            self.finish(EventOutcome::NoMatch);
            return;
        };
        let key = state::key(&marker.appkey, marker.scope, &marker.group_id);
        let state: Option<GroupState> = part.get(&key);
        let Some(state) = state else {
            tracing::info!(group = %marker.group_id, target, "resync: no mute state for the group; nothing to apply");
            self.finish(EventOutcome::NoMatch);
            return;
        };
        let events = guard::snapshot(&state, now_ms());
        let mut steps = Vec::new();
        for e in &events {
            for plan in self.policy.decide(e) {
                if plan.rule_and_target().1 == target {
                    steps.push(Step::Carry(plan, e));
                }
            }
        }
        if steps.is_empty() {
            tracing::info!(group = %marker.group_id, target, "resync: no rule sends this group's mute state to the target");
        }
        let tally = self.carry_out(job, &source, steps).await;
        self.finish(if tally.dead {
            EventOutcome::DeadLettered
        } else if tally.ok {
            EventOutcome::Applied
        } else if tally.steps == 0 {
            EventOutcome::NoMatch
        } else {
            EventOutcome::Skipped
        });
    }

    /// Carries out one verdict of the policy: the outcome of each call it
    /// took (a member list over the provider's limit is several calls).
    async fn settle(&self, plan: Planned, event: &Event) -> Vec<(ActionId, ActionOutcome)> {
        let id = action_id(&plan);
        match plan {
            Planned::Skip { why, .. } => vec![(id, ActionOutcome::Skipped(why.into()))],
            Planned::Unmapped { why, .. } => vec![(id, Failure::whole(Reason::Unmapped, why, 0))],
            Planned::Act(action) => {
                let outcomes = self.deliverer.apply(action, event).await;
                outcomes.into_iter().map(|o| (id.clone(), o)).collect()
            }
        }
    }

    fn count(&self, id: &ActionId, outcome: &ActionOutcome) {
        self.metrics
            .actions
            .with_label_values(&[&*id.target, id.action, outcome.as_str()])
            .inc();
    }

    fn finish(&self, outcome: EventOutcome) -> EventOutcome {
        self.metrics
            .events
            .with_label_values(&[outcome.as_str()])
            .inc();
        outcome
    }

    async fn dead_letter(&self, key: &[u8], letter: DeadLetter) {
        self.metrics
            .dead_letters
            .with_label_values(&[
                letter.target.as_deref().unwrap_or("none"),
                letter.reason.as_str(),
            ])
            .inc();
        self.dlq.write(key, &letter).await;
    }
}

/// Says, in one line per reason, which parts of `event` the guard held.
fn log_held(event: &Event, verdict: &Verdict) {
    let mut stale: Vec<&str> = Vec::new();
    let mut newest = (i64::MIN, "");
    let mut duplicate: Vec<&str> = Vec::new();
    for h in &verdict.held {
        match &h.hold {
            Hold::Stale {
                newer_at_ms,
                newer_event,
            } => {
                stale.push(&h.dimension);
                if *newer_at_ms > newest.0 {
                    newest = (*newer_at_ms, newer_event);
                }
            }
            Hold::Duplicate => duplicate.push(&h.dimension),
        }
    }
    if !stale.is_empty() {
        tracing::info!(
            event = %event.id,
            kind = event.kind.as_str(),
            group = %event.group_id,
            at_ms = event.occurred_at_ms,
            newer_at_ms = newest.0,
            newer_event = newest.1,
            dimensions = %stale.join(","),
            "stale: a newer event already set this; not sent"
        );
    }
    if !duplicate.is_empty() {
        tracing::info!(
            event = %event.id,
            kind = event.kind.as_str(),
            group = %event.group_id,
            dimensions = %duplicate.join(","),
            "duplicate: this event already set this (a redelivery); not sent again"
        );
    }
}

/// The metric identity of a policy verdict.
fn action_id(plan: &Planned) -> ActionId {
    match plan {
        Planned::Act(a) => ActionId::new(a.rule.clone(), a.target.clone(), a.op.name()),
        Planned::Skip {
            rule,
            target,
            action,
            ..
        }
        | Planned::Unmapped {
            rule,
            target,
            action,
            ..
        } => ActionId::new(rule.clone(), target.clone(), action),
    }
}

fn decode(payload: Option<&[u8]>) -> Result<Event, String> {
    let payload = payload.ok_or("the record has no value")?;
    let event: Event =
        serde_json::from_slice(payload).map_err(|e| format!("not a {SCHEMA_V1} event: {e}"))?;
    if event.schema != SCHEMA_V1 {
        return Err(format!("schema {:?} is not {SCHEMA_V1}", event.schema));
    }
    Ok(event)
}
