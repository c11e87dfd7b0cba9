//! Reading the event topic as a consumer group, and deciding which offsets
//! may be committed.
//!
//! Events of different groups finish out of order, so a partition's commit
//! position is the lowest offset still in progress (or one past the last
//! received when none is). Committing only up to there is what makes "a
//! committed offset means the actions ran or were dead-lettered" true; a
//! crash re-delivers from there and never skips.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use prometheus::IntGaugeVec;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};

use super::store::Store;
use crate::limit::Shares;

/// Per-partition progress.
#[derive(Debug, Default)]
pub struct Tracker {
    parts: HashMap<i32, Part>,
    next_generation: u64,
    revoked: Vec<(i32, u64)>,
}

#[derive(Debug)]
struct Part {
    /// Changes when the partition is revoked and assigned again, so results
    /// of work started under an old assignment are not counted.
    generation: u64,
    pending: BTreeSet<i64>,
    next: i64,
    committed: i64,
}

impl Part {
    fn position(&self) -> i64 {
        self.pending.first().copied().unwrap_or(self.next)
    }
}

impl Tracker {
    /// Records that `offset` was received; returns its partition's generation.
    pub fn received(&mut self, partition: i32, offset: i64) -> u64 {
        let next_generation = &mut self.next_generation;
        let part = self.parts.entry(partition).or_insert_with(|| {
            *next_generation += 1;
            Part {
                generation: *next_generation,
                pending: BTreeSet::new(),
                next: offset,
                committed: -1,
            }
        });
        part.pending.insert(offset);
        part.next = part.next.max(offset + 1);
        part.generation
    }

    /// Records that `offset` is finished (applied, skipped or dead-lettered).
    pub fn finished(&mut self, partition: i32, offset: i64, generation: u64) {
        if let Some(part) = self.parts.get_mut(&partition) {
            if part.generation == generation {
                part.pending.remove(&offset);
            }
        }
    }

    /// The offset to commit for `partition`: everything before it is finished.
    #[cfg(test)]
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.parts.get(&partition).map(Part::position)
    }

    /// Positions that moved since the last call, for committing.
    pub fn take_commits(&mut self, topic: &str) -> Option<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for (p, part) in self.parts.iter_mut() {
            let position = part.position();
            if position > part.committed {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(position));
                part.committed = position;
            }
        }
        (tpl.count() > 0).then_some(tpl)
    }

    /// Forgets a revoked partition; returns its final position when that
    /// is past what was already committed (else there is nothing to commit).
    pub fn revoke(&mut self, partition: i32) -> Option<i64> {
        let part = self.parts.remove(&partition)?;
        self.revoked.push((partition, part.generation));
        let position = part.position();
        (position > part.committed).then_some(position)
    }

    /// Partitions revoked since the last call, with their old generation:
    /// their queued and running work must be dropped.
    pub fn take_revoked(&mut self) -> Vec<(i32, u64)> {
        std::mem::take(&mut self.revoked)
    }
}

/// The consumer's context: commits finished work of partitions being taken
/// away, rebuilds and drops their mute states, and turns librdkafka
/// statistics into the lag gauge.
pub struct WorkerContext {
    pub tracker: Arc<Mutex<Tracker>>,
    pub topic: String,
    pub lag: IntGaugeVec,
    /// The mute states, when `worker.track_state` is on.
    pub state: Option<Store>,
    /// The targets' rate-limit shares, which follow the assignment.
    pub shares: Arc<Shares>,
}

impl WorkerContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (p, stats) in &topic.partitions {
            // -1 marks librdkafka's internal UA partition; lag -1 = unknown.
            if *p >= 0 && stats.consumer_lag >= 0 {
                self.lag
                    .with_label_values(&[&p.to_string()])
                    .set(stats.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let partitions = self.partitions(assigned);
            // Only once the partitions are ours does the share grow.
            self.shares.assign(&partitions);
            if let Some(state) = &self.state {
                state.assign(&partitions);
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        // Before the partitions go: the next owner's share grows only after
        // this one's shrank, so the shares never add up to more than the limit.
        let partitions = self.partitions(revoked);
        self.shares.revoke(&partitions);
        if let Some(state) = &self.state {
            state.revoke(&partitions);
        }
        let mut tpl = TopicPartitionList::new();
        {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for elem in revoked.elements() {
                if let Some(position) = tracker.revoke(elem.partition()) {
                    let _ = tpl.add_partition_offset(
                        elem.topic(),
                        elem.partition(),
                        Offset::Offset(position),
                    );
                }
                let _ = self
                    .lag
                    .remove_label_values(&[&elem.partition().to_string()]);
            }
        }
        if tpl.count() > 0 {
            match consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => tracing::info!(
                    partitions = tpl.count(),
                    "partitions revoked; finished work committed"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "commit on revoke failed; the new owner re-applies from the last commit")
                }
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed; it is retried with the next commit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_waits_for_the_lowest_unfinished_offset() {
        let mut t = Tracker::default();
        let g = t.received(0, 10);
        t.received(0, 11);
        t.received(0, 12);
        t.finished(0, 11, g);
        t.finished(0, 12, g);
        assert_eq!(t.position(0), Some(10), "10 is still running");
        t.finished(0, 10, g);
        assert_eq!(t.position(0), Some(13));
        let tpl = t.take_commits("t").unwrap();
        assert_eq!(
            tpl.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(13)
        );
        assert!(t.take_commits("t").is_none(), "nothing moved");
    }

    #[test]
    fn revoked_work_does_not_count_after_reassignment() {
        let mut t = Tracker::default();
        let old = t.received(3, 5);
        assert_eq!(t.revoke(3), Some(5));
        assert_eq!(t.take_revoked(), vec![(3, old)]);
        let new = t.received(3, 5);
        assert_ne!(old, new);
        t.finished(3, 5, old);
        assert_eq!(t.position(3), Some(5), "a stale finish is ignored");
        t.finished(3, 5, new);
        assert_eq!(t.position(3), Some(6));
    }

    #[test]
    fn a_revoke_after_the_last_commit_has_nothing_to_commit() {
        let mut t = Tracker::default();
        let g = t.received(2, 7);
        t.finished(2, 7, g);
        assert!(t.take_commits("t").is_some());
        // At shutdown the final commit ran before the unsubscribe: the
        // revoke must not block on committing the same position again.
        assert_eq!(t.revoke(2), None);
        assert_eq!(t.take_revoked(), vec![(2, g)]);
    }
}
