//! A pipeline's consumer context: what happens when Kafka assigns or
//! revokes partitions (the finished work of revoked ones is committed,
//! their records dropped; new ones have their records rebuilt, their
//! rate-limit share taken, and start paused while the pipeline is), and
//! librdkafka's statistics turned into the lag gauge.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntGaugeVec};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};

use super::offsets::Tracker;
use super::reader::{Sinks, StateReader};
use crate::limit::Shares;

/// A pipeline consumer's context: commits finished work of partitions
/// being taken away, rebuilds and drops their records, keeps new
/// partitions paused while the pipeline is, and turns librdkafka
/// statistics into the lag gauge.
pub struct WorkerContext {
    pub tracker: Arc<Mutex<Tracker>>,
    pub topic: String,
    /// The `pipeline` label of the lag gauge.
    pub pipeline: String,
    pub lag: IntGaugeVec,
    /// The pipeline's records and their reader, when `worker.track_state`
    /// is on (and the pipeline keeps records).
    pub state: Option<(Sinks, StateReader)>,
    /// The target's rate-limit share, which follows the assignment.
    pub shares: Option<Arc<Shares>>,
    /// True while the pipeline has paused fetching (a full backlog, an
    /// open circuit breaker): partitions assigned meanwhile start paused.
    pub paused: Arc<AtomicBool>,
    /// Events in the assigned partitions not consumed yet (librdkafka's
    /// statistics), for `mutebridge targets`.
    pub backlog: Arc<AtomicI64>,
    pub commit_failures: IntCounter,
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
    /// librdkafka's log, as every client's goes (through `log` to the
    /// subscriber); a reset of the event topic's position because the
    /// records there are gone is also noted, to count what was skipped.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "OFFSET" {
            if let Some((partition, from)) = offset_reset(&self.topic, log_message) {
                self.tracker
                    .lock()
                    .expect("tracker lock")
                    .reset_at(partition, from);
            }
        }
        rdkafka::client::DefaultClientContext.log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut backlog = 0;
        {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for (p, stats) in &topic.partitions {
                if *p >= 0 && stats.lo_offset >= 0 {
                    tracker.log_starts_at(*p, stats.lo_offset);
                }
            }
        }
        for (p, stats) in &topic.partitions {
            // -1 marks librdkafka's internal UA partition; lag -1 = unknown.
            if *p >= 0 && stats.consumer_lag >= 0 {
                self.lag
                    .with_label_values(&[&self.pipeline, &p.to_string()])
                    .set(stats.consumer_lag);
                backlog += stats.consumer_lag;
            }
        }
        self.backlog.store(backlog, Ordering::Relaxed);
    }
}

impl ConsumerContext for WorkerContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let partitions = self.partitions(assigned);
            if partitions.is_empty() {
                return;
            }
            // A pause holds across rebalances: what arrives while the
            // pipeline is paused waits in Kafka, not in memory.
            if self.paused.load(Ordering::SeqCst) {
                if let Err(e) = consumer.pause(assigned) {
                    tracing::warn!(pipeline = %self.pipeline, error = %e, "cannot pause newly assigned partitions");
                }
            }
            // Only once the partitions are ours does the share grow.
            if let Some(shares) = &self.shares {
                shares.assign(&partitions);
            }
            if let Some((sinks, reader)) = &self.state {
                reader.assign(sinks, &partitions);
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
        if let Some(shares) = &self.shares {
            shares.revoke(&partitions);
        }
        if let Some((sinks, reader)) = &self.state {
            reader.revoke(sinks, &partitions);
        }
        let mut tpl = TopicPartitionList::new();
        {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for elem in revoked.elements() {
                if let Some((position, metadata)) = tracker.revoke(elem.partition()) {
                    let _ = tpl.add_partition_offset(
                        elem.topic(),
                        elem.partition(),
                        Offset::Offset(position),
                    );
                    // A rewind's fence, so that the next owner re-applies
                    // the rest.
                    if let Some(mut e) = tpl.find_partition(elem.topic(), elem.partition()) {
                        e.set_metadata(metadata);
                    }
                }
                let _ = self
                    .lag
                    .remove_label_values(&[&self.pipeline, &elem.partition().to_string()]);
            }
        }
        if tpl.count() > 0 {
            match consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => tracing::info!(
                    pipeline = %self.pipeline,
                    partitions = tpl.count(),
                    "partitions revoked; finished work committed"
                ),
                Err(e) => {
                    tracing::warn!(pipeline = %self.pipeline, error = %e, "commit on revoke failed; the new owner re-applies from the last commit")
                }
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        answered(
            &self.tracker,
            &self.topic,
            &self.pipeline,
            &self.commit_failures,
            result,
            offsets,
        );
    }
}

/// Tells the tracker what Kafka answered to a commit of `offsets`: each
/// partition's position is committed only if acknowledged; a refused one
/// is issued again with the next commit.
pub fn answered(
    tracker: &Mutex<Tracker>,
    topic: &str,
    pipeline: &str,
    failures: &IntCounter,
    result: KafkaResult<()>,
    offsets: &TopicPartitionList,
) {
    let mut refused = 0;
    {
        let mut tracker = tracker.lock().expect("tracker lock");
        for e in offsets.elements().iter().filter(|e| e.topic() == topic) {
            let Offset::Offset(position) = e.offset() else {
                continue;
            };
            let ok = result.is_ok() && e.error().is_ok();
            refused += usize::from(!ok);
            tracker.commit_answered(e.partition(), position, ok);
        }
    }
    if let Err(e) = result {
        failures.inc();
        tracing::warn!(pipeline, error = %e, "offset commit failed; it is issued again with the next commit (nothing counts as committed until Kafka acknowledges it)");
    } else if refused > 0 {
        failures.inc();
        tracing::warn!(
            pipeline,
            partitions = refused,
            "offset commit refused for some partitions; issued again with the next commit"
        );
    }
}

/// `(partition, offset)` of librdkafka's warning that it reset `topic`'s
/// position after a fetch error, e.g. `[thrd:main]: im.group-events [3]:
/// offset reset (at offset 17 (leader epoch 0), broker 2) to offset
/// BEGINNING (leader epoch -1): fetch failed due to requested offset not
/// available on the broker: Broker: Offset out of range`.
fn offset_reset(topic: &str, message: &str) -> Option<(i32, i64)> {
    let message = match message.strip_prefix("[thrd:") {
        Some(rest) => rest.split_once("]: ")?.1,
        None => message,
    };
    let rest = message.strip_prefix(topic)?.strip_prefix(" [")?;
    let (partition, rest) = rest.split_once(']')?;
    let rest = rest.strip_prefix(": offset reset (at offset ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((partition.parse().ok()?, digits.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::offset_reset;

    #[test]
    fn librdkafkas_reset_warning_names_partition_and_offset() {
        let m = "[thrd:main]: im.group-events [3]: offset reset (at offset 17 (leader epoch 0), broker 2) to offset BEGINNING (leader epoch -1): fetch failed due to requested offset not available on the broker: Broker: Offset out of range";
        assert_eq!(offset_reset("im.group-events", m), Some((3, 17)));
        let bare = m.strip_prefix("[thrd:main]: ").unwrap();
        assert_eq!(offset_reset("im.group-events", bare), Some((3, 17)));
        assert_eq!(offset_reset("other", m), None);
        let logical = "im.group-events [0]: offset reset (at offset INVALID (leader epoch -1), broker -1) to offset BEGINNING (leader epoch -1): no previously committed offset available: Local: No offset stored";
        assert_eq!(
            offset_reset("im.group-events", logical),
            None,
            "a new group's start is no reset"
        );
    }
}
