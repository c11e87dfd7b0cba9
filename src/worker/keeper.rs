//! The state keeper: the pipeline (consumer group `worker.group_id`) that
//! keeps each group's newest mute state and calls no provider.
//!
//! It judges every mute event against the group's state and records what
//! is fresh, so the state topic always holds the groups' newest state, even
//! while every target is down: `mutebridge state get|dump`, `resync` and
//! the targets' catch-up read it. It also dead-letters records that are not
//! events (once, for all targets), deletes a destroyed group's state, and
//! its committed offsets are where a target added later starts.

use super::completion::Handled;
use super::dlq::{DeadLetter, DeadLetters, SourceRecord};
use super::metrics::KeeperMetrics;
use super::outcome::KeeperOutcome;
use super::scheduler::{Job, Work};
use super::store::{PendingWrite, Store};
use crate::event::{Event, EventKind};
use crate::state::guard::{self, Hold};
use crate::state::{self, GroupState};
use crate::time::now_ms;

/// Everything the keeper's group tasks share.
pub struct Keeper {
    pub dlq: DeadLetters,
    pub metrics: KeeperMetrics,
    /// The event topic (for the dead letters' source).
    pub topic: String,
    /// The group states, when `worker.track_state` is on.
    pub state: Option<Store<GroupState>>,
}

impl Keeper {
    /// Judges and records one record; what it left is the state write to
    /// confirm before its offset may be committed.
    pub async fn process(&self, job: &Job) -> Handled<GroupState> {
        Handled {
            write: self.record(job).await,
            lapse: None,
        }
    }

    async fn record(&self, job: &Job) -> Option<PendingWrite<GroupState>> {
        let Work::Record {
            offset,
            payload,
            replay,
        } = &job.work
        else {
            return None;
        };
        let event = match super::engine::decode(payload.as_deref()) {
            Ok(e) => e,
            Err(why) => {
                tracing::error!(partition = job.partition, offset, %why, "undecodable record; dead-lettered");
                let source = SourceRecord {
                    topic: self.topic.clone(),
                    partition: job.partition,
                    offset: *offset,
                };
                let letter = DeadLetter::undecodable(source, payload.as_deref(), why);
                self.metrics.dead_letters.inc();
                self.dlq.write(&job.key, &letter).await;
                self.count(KeeperOutcome::Undecodable);
                return None;
            }
        };
        let Some(store) = &self.state else {
            self.count(KeeperOutcome::NotMute);
            return None;
        };
        // Revoked meanwhile: its new owner records the event.
        let part = store.partition(job.partition).await?;
        let key = state::key(&event.appkey, event.scope, &event.group_id);
        if event.kind == EventKind::GroupDestroyed {
            if part.get(&key).is_none() {
                self.count(KeeperOutcome::NotMute);
                return None;
            }
            tracing::info!(group = %event.group_id, scope = event.scope.as_str(), "group destroyed: its mute state is deleted");
            self.count(KeeperOutcome::Removed);
            store.member().await;
            return store.stage_delete(&part, &key).ok();
        }
        if !event.kind.is_mute() {
            self.count(KeeperOutcome::NotMute);
            return None;
        }
        let current = part.get(&key);
        let verdict = guard::judge(current.as_ref(), &event, replay.is_some());
        let Some(fresh) = verdict.fresh.as_deref() else {
            let stale = matches!(verdict.all_held(), Some(Hold::Stale { .. }));
            log_stale(&event, stale);
            self.count(if stale {
                KeeperOutcome::Stale
            } else {
                KeeperOutcome::Unchanged
            });
            return None;
        };
        match guard::record(current, fresh, now_ms(), store.horizon_ms()) {
            Some(next) => {
                self.count(KeeperOutcome::Recorded);
                store.member().await;
                // Revoked: the new owner records the event again.
                store.stage(&part, next).ok()
            }
            None => {
                self.count(KeeperOutcome::Unchanged);
                None
            }
        }
    }

    fn count(&self, outcome: KeeperOutcome) {
        self.metrics.events[outcome as usize].inc();
    }
}

fn log_stale(event: &Event, stale: bool) {
    if stale {
        tracing::debug!(event = %event.id, kind = event.kind.as_str(), group = %event.group_id, "state keeper: a newer event already set this");
    }
}
