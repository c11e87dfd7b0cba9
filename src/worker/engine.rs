//! What happens to one consumed record: decode it, let the policy decide,
//! deliver each action, dead-letter what fails for good, and count it all.
//! When [`Engine::process`] returns, the record is finished and its offset
//! may be committed.

use std::sync::Arc;

use super::deliver::Deliverer;
use super::dlq::{DeadLetter, DeadLetters, Reason, SourceRecord};
use super::outcome::{ActionId, ActionOutcome, EventOutcome, Failure};
use super::scheduler::Job;
use crate::event::{Event, SCHEMA_V1};
use crate::metrics::WorkerMetrics;
use crate::policy::{Planned, Policy};

/// Everything that handles one event, shared by the group tasks.
pub struct Engine {
    pub policy: Arc<Policy>,
    pub deliverer: Deliverer,
    pub dlq: DeadLetters,
    pub metrics: WorkerMetrics,
    /// The event topic (for the dead letters' source).
    pub topic: String,
}

impl Engine {
    /// Applies one event's actions; returns once each is done, skipped, or
    /// written to the dead-letter topic.
    pub async fn process(&self, job: &Job) -> EventOutcome {
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
                return self.finish(EventOutcome::DeadLettered);
            }
        };
        let mut planned = self.policy.decide(&event);
        if let Some(scope) = &job.replay {
            // A replayed dead letter re-drives its own action only.
            planned.retain(|p| {
                let (rule, target) = p.rule_and_target();
                scope.target.as_deref().is_none_or(|t| t == target)
                    && scope.rule.as_deref().is_none_or(|r| r == rule)
            });
            if planned.is_empty() {
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
        if planned.is_empty() {
            return self.finish(EventOutcome::NoMatch);
        }
        let (mut ok, mut dead) = (false, false);
        for plan in planned {
            for (id, outcome) in self.settle(plan, &event).await {
                self.count(&id, &outcome);
                match outcome {
                    ActionOutcome::Ok => ok = true,
                    ActionOutcome::Skipped(why) => {
                        tracing::debug!(rule = %id.rule, target = %id.target, %why, event = %event.id, "skipped");
                    }
                    ActionOutcome::DeadLettered(failure) => {
                        dead = true;
                        tracing::warn!(rule = %id.rule, target = %id.target, reason = failure.reason.as_str(), error = %failure.error, event = %event.id, "action failed; dead-lettered");
                        let letter = DeadLetter::action(source.clone(), &event, &id, failure);
                        self.dead_letter(&job.key, letter).await;
                    }
                }
            }
        }
        self.finish(if dead {
            EventOutcome::DeadLettered
        } else if ok {
            EventOutcome::Applied
        } else {
            EventOutcome::Skipped
        })
    }

    /// Carries out one verdict of the policy: the outcome of each call it
    /// took (a member list over the provider's limit is several calls).
    async fn settle(&self, plan: Planned, event: &Event) -> Vec<(ActionId, ActionOutcome)> {
        match plan {
            Planned::Skip {
                rule,
                target,
                action,
                why,
            } => vec![(
                ActionId::new(rule, target, action),
                ActionOutcome::Skipped(why.into()),
            )],
            Planned::Unmapped {
                rule,
                target,
                action,
                why,
            } => vec![(
                ActionId::new(rule, target, action),
                Failure::whole(Reason::Unmapped, why, 0),
            )],
            Planned::Act(action) => {
                let id =
                    ActionId::new(action.rule.clone(), action.target.clone(), action.op.name());
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

fn decode(payload: Option<&[u8]>) -> Result<Event, String> {
    let payload = payload.ok_or("the record has no value")?;
    let event: Event =
        serde_json::from_slice(payload).map_err(|e| format!("not a {SCHEMA_V1} event: {e}"))?;
    if event.schema != SCHEMA_V1 {
        return Err(format!("schema {:?} is not {SCHEMA_V1}", event.schema));
    }
    Ok(event)
}
