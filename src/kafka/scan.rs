//! Reading a whole topic once, from the oldest record to the end as it was
//! when the scan started (records produced meanwhile are not waited for).
//! No consumer group: nothing is committed, nobody else is disturbed. The
//! command-line tools use it to look into the dead-letter topic.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::client_config;
use crate::config::KafkaConfig;

/// One record as the scan hands it out.
#[derive(Debug, Clone)]
pub struct ScannedRecord {
    pub partition: i32,
    pub offset: i64,
    pub headers: HashMap<String, String>,
    pub payload: Option<Vec<u8>>,
}

/// Calls `each` with every record of `topic`, partition by partition in
/// offset order. Blocks: call it from a blocking thread.
pub fn scan(
    cfg: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
    mut each: impl FnMut(ScannedRecord),
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(15);
    let consumer: BaseConsumer = client_config(cfg, bootstrap)
        // librdkafka wants a group id even for manual assignment; it is
        // never joined and nothing is committed.
        .set("group.id", "mutebridge-scan")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("cannot create a Kafka consumer (check the [kafka.client] properties)")?;
    let partitions = super::partition_count(consumer.client(), topic, timeout)
        .with_context(|| format!("cannot read topic {topic} at {bootstrap}"))?;
    for p in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .with_context(|| format!("cannot read the offsets of {topic}/{p}"))?;
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
        consumer.assign(&tpl)?;
        let mut next = low;
        while next < high {
            let message = consumer
                .poll(timeout)
                .ok_or_else(|| {
                    anyhow!("{topic}/{p}: no record within {timeout:?} at offset {next}")
                })?
                .with_context(|| format!("cannot read {topic}/{p}"))?;
            next = message.offset() + 1;
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                            (h.key.to_owned(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            each(ScannedRecord {
                partition: p,
                offset: message.offset(),
                headers,
                payload: message.payload().map(<[u8]>::to_vec),
            });
        }
    }
    Ok(())
}
