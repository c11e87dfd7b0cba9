//! The topics the worker checks at start: the dead-letter and state
//! topics created or checked (a state topic that is not compacted, or also
//! deletes, is refused), and the event topic's partition count, which the
//! targets' rate-limit shares are parts of.

use crate::config::{Checked, Config};
use crate::kafka::scan::Reader;
use crate::kafka::topics::{Plan, Role};
use crate::kafka::Cluster;

/// Creates or checks the worker's own topics; returns the event topic's
/// partition count.
pub async fn prepare(config: &Checked, cluster: &Cluster) -> anyhow::Result<usize> {
    let roles: &[Role] = if config.worker.track_state {
        &[Role::DeadLetters, Role::State]
    } else {
        &[Role::DeadLetters]
    };
    cluster
        .prepare(&config.kafka, |brokers| Plan::new(config, roles, brokers))
        .await?;
    event_partitions(config, cluster).await
}

/// The event topic's partition count (the whole that rate-limit shares
/// are parts of).
async fn event_partitions(config: &Config, cluster: &Cluster) -> anyhow::Result<usize> {
    let count = partition_count(config, cluster, &config.kafka.topic).await;
    let hint = "create it, or let mutebridge create it (kafka.create_topics = true)";
    match count {
        Ok(0) => anyhow::bail!(
            "the event topic {} (kafka.topic) has no partitions yet: {hint}",
            config.kafka.topic
        ),
        Ok(n) => Ok(n),
        Err(e) => Err(e.context(format!(
            "the event topic {} (kafka.topic) cannot be read, so the workers' rate-limit shares cannot be set: {hint}",
            config.kafka.topic
        ))),
    }
}

/// How many partitions `topic` has (a metadata request, off the runtime:
/// librdkafka's metadata call blocks).
async fn partition_count(config: &Config, cluster: &Cluster, topic: &str) -> anyhow::Result<usize> {
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let (kafka_cfg, topic) = (config.kafka.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        Reader::new(&kafka_cfg, &bootstrap)?.partition_count(&topic)
    })
    .await?
}
