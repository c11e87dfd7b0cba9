//! Reading a whole topic once, from the oldest record to the end as it was
//! when the scan started (records produced meanwhile are not waited for).
//! No consumer group: nothing is committed, nobody else is disturbed. The
//! command-line tools use it to look into the dead-letter and state topics,
//! and the worker to rebuild the mute state of partitions it is assigned.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::client_config;
use crate::kafka::config::KafkaConfig;
use crate::state::GroupState;

/// One record as the scan hands it out.
#[derive(Debug, Clone)]
pub struct ScannedRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
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
    let reader = Reader::new(cfg, bootstrap)?;
    let partitions = reader.partition_count(topic)?;
    for p in 0..partitions as i32 {
        reader.read(topic, &[p], &mut each, |_| {})?;
    }
    Ok(())
}

/// A consumer outside any group, for reading partitions to their end.
pub struct Reader {
    consumer: BaseConsumer,
    bootstrap: String,
    timeout: Duration,
}

impl Reader {
    pub fn new(cfg: &KafkaConfig, bootstrap: &str) -> anyhow::Result<Reader> {
        let consumer: BaseConsumer = client_config(cfg, bootstrap)
            // librdkafka wants a group id even for manual assignment; it is
            // never joined and nothing is committed.
            .set("group.id", "mutebridge-scan")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .context("cannot create a Kafka consumer (check the [kafka.client] properties)")?;
        Ok(Reader {
            consumer,
            bootstrap: bootstrap.to_owned(),
            timeout: Duration::from_secs(15),
        })
    }

    /// How many partitions `topic` has.
    pub fn partition_count(&self, topic: &str) -> anyhow::Result<usize> {
        super::partition_count(self.consumer.client(), topic, self.timeout)
            .with_context(|| format!("cannot read topic {topic} at {}", self.bootstrap))
    }

    /// The timestamp of the record at `offset` of `topic`/`partition`
    /// (`None` when there is none). Blocks.
    pub fn timestamp_at(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> anyhow::Result<Option<i64>> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        self.consumer.assign(&tpl)?;
        let found = match self.consumer.poll(self.timeout) {
            Some(Ok(m)) if m.partition() == partition => m.timestamp().to_millis(),
            Some(Err(e)) => {
                return Err(e).with_context(|| format!("cannot read {topic}/{partition}"))
            }
            _ => None,
        };
        self.consumer.unassign()?;
        Ok(found)
    }

    /// Reads `partitions` of `topic` from the oldest record to the end as
    /// it is now, together: `each` gets every record (in offset order
    /// within a partition), `done` each partition once its end is reached.
    /// Blocks: call it from a blocking thread.
    pub fn read(
        &self,
        topic: &str,
        partitions: &[i32],
        mut each: impl FnMut(ScannedRecord),
        mut done: impl FnMut(i32),
    ) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        // Per partition: the next offset to read and the end to reach.
        let mut open: HashMap<i32, (i64, i64)> = HashMap::new();
        for &p in partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, p, self.timeout)
                .with_context(|| format!("cannot read the offsets of {topic}/{p}"))?;
            if high <= low {
                done(p);
                continue;
            }
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            open.insert(p, (low, high));
        }
        if open.is_empty() {
            return Ok(());
        }
        self.consumer.assign(&tpl)?;
        while !open.is_empty() {
            let message = self
                .consumer
                .poll(self.timeout)
                .ok_or_else(|| {
                    let at: Vec<String> = open
                        .iter()
                        .map(|(p, (next, high))| format!("{topic}/{p} at {next} of {high}"))
                        .collect();
                    anyhow!("no record within {:?}: {}", self.timeout, at.join(", "))
                })?
                .with_context(|| format!("cannot read {topic}"))?;
            let p = message.partition();
            let Some((next, high)) = open.get_mut(&p) else {
                continue;
            };
            *next = message.offset() + 1;
            let finished = *next >= *high;
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
                key: message.key().map(<[u8]>::to_vec),
                headers,
                payload: message.payload().map(<[u8]>::to_vec),
            });
            if finished {
                open.remove(&p);
                done(p);
            }
        }
        self.consumer.unassign()?;
        Ok(())
    }
    /// The value of the record at `offset` of `topic`/`partition`; `None`
    /// when retention or compaction removed it. Blocks.
    pub fn read_one(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition, self.timeout)
            .with_context(|| format!("cannot read the offsets of {topic}/{partition}"))?;
        if offset < low || offset >= high {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        self.consumer.assign(&tpl)?;
        let found = loop {
            let message = self
                .consumer
                .poll(self.timeout)
                .ok_or_else(|| {
                    anyhow!("no record of {topic}/{partition} within {:?}", self.timeout)
                })?
                .with_context(|| format!("cannot read {topic}"))?;
            if message.partition() != partition || message.offset() < offset {
                continue;
            }
            // A compacted topic may have no record at `offset` any more.
            break (message.offset() == offset)
                .then(|| message.payload().map(<[u8]>::to_vec))
                .flatten();
        };
        self.consumer.unassign()?;
        Ok(found)
    }
}

/// Calls `each` with the newest group state of every key in the state
/// topic `topic` that `keep` selects, partition by partition (only one
/// partition's states are held); stops early when `each` returns false.
/// Returns how many were handed out and how many records were not states.
/// Blocks: call it from a blocking thread.
pub fn states(
    cfg: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
    keep: impl Fn(&GroupState) -> bool,
    mut each: impl FnMut(GroupState) -> bool,
) -> anyhow::Result<(usize, usize)> {
    let reader = Reader::new(cfg, bootstrap)?;
    let partitions: Vec<i32> = (0..reader.partition_count(topic)? as i32).collect();
    let (mut count, mut unreadable) = (0usize, 0usize);
    for p in partitions {
        // Newest record per key; compaction keeps only that one, but the
        // head of the log is not compacted yet.
        let mut newest: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        reader.read(
            topic,
            &[p],
            |r| match (r.key, r.payload) {
                // What a target applied, beside the group states.
                (Some(k), _) if k.first() == Some(&b'@') => {}
                (Some(k), Some(v)) => {
                    newest.insert(k, v);
                }
                // A tombstone: the group's state was deleted.
                (Some(k), None) => {
                    newest.remove(&k);
                }
                (None, _) => {}
            },
            |_| {},
        )?;
        let mut states: Vec<GroupState> = newest
            .into_values()
            .filter_map(|v| match serde_json::from_slice::<GroupState>(&v) {
                Ok(s) => Some(s),
                Err(_) => {
                    unreadable += 1;
                    None
                }
            })
            .filter(|s| keep(s))
            .collect();
        states.sort_by_cached_key(GroupState::key);
        for s in states {
            if !each(s) {
                return Ok((count, unreadable));
            }
            count += 1;
        }
    }
    Ok((count, unreadable))
}
