//! A new target consumer group's starting offsets: where the single
//! consumer group of earlier versions stopped (an upgrade), or where the
//! state keeper is (a target added since). Run once per target group at
//! start, before anything of this process consumes.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka;
use crate::kafka::config::KafkaConfig;

/// Gives the consumer group `to` (a target's) the committed offsets of
/// `from` (the state keeper's) when `to` has none: the first start of a
/// target group continues where the single consumer group of earlier
/// versions stopped (nothing applied twice or skipped), and a target added
/// later starts with new events (`mutebridge resync` brings it in line
/// with older state). With no offsets anywhere, `auto.offset.reset`
/// decides (the oldest retained event).
pub fn inherit_offsets(
    kafka_cfg: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
    partitions: usize,
    from: &str,
    to: &str,
) -> anyhow::Result<()> {
    let all = || {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition(topic, p);
        }
        tpl
    };
    let group = |id: &str| -> anyhow::Result<BaseConsumer> {
        kafka::consumer_config(kafka_cfg, bootstrap, id)
            .create()
            .context("cannot create a Kafka consumer (check the [kafka.client] properties)")
    };
    let target = group(to)?;
    let own = committed(&target, all(), to)?;
    if own
        .elements()
        .iter()
        .any(|e| matches!(e.offset(), Offset::Offset(_)))
    {
        return Ok(());
    }
    let theirs = committed(&group(from)?, all(), from)?;
    let mut start = TopicPartitionList::new();
    for e in theirs.elements() {
        if let Offset::Offset(o) = e.offset() {
            start.add_partition_offset(topic, e.partition(), Offset::Offset(o))?;
        }
    }
    if start.count() == 0 {
        tracing::info!(
            group = to,
            "new consumer group; it starts at the oldest retained event (no offsets to inherit)"
        );
        return Ok(());
    }
    target
        .commit(&start, CommitMode::Sync)
        .with_context(|| format!("cannot commit the starting offsets of consumer group {to}"))?;
    tracing::info!(group = to, from, partitions = start.count(), "new consumer group starts where {from} is (an upgrade from one consumer group, or a target added since)");
    Ok(())
}

/// The offsets consumer group `group` committed for `partitions`. A new
/// cluster has no group coordinator until the first group asks for one
/// (its offsets topic is created then): that is waited for, up to a minute.
fn committed(
    consumer: &BaseConsumer,
    partitions: TopicPartitionList,
    group: &str,
) -> anyhow::Result<TopicPartitionList> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.committed_offsets(partitions.clone(), Duration::from_secs(15)) {
            Ok(tpl) => return Ok(tpl),
            Err(e)
                if std::time::Instant::now() < deadline
                    && matches!(
                        e.rdkafka_error_code(),
                        Some(
                            Code::CoordinatorNotAvailable
                                | Code::NotCoordinator
                                | Code::CoordinatorLoadInProgress
                                | Code::OperationTimedOut
                                | Code::RequestTimedOut
                        )
                    ) =>
            {
                tracing::info!(group, error = %e, "the group coordinator is not ready yet; asking again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)).with_context(|| {
                    format!("cannot read the committed offsets of consumer group {group}")
                })
            }
        }
    }
}
