//! The state topic, streamed to a pass one app at a time in bounded memory.
//!
//! A pass may cover hundreds of thousands of groups, so it never holds
//! their states together: each partition is read twice, once to find the
//! newest record of each of the app's keys (a 16-byte digest of the key and
//! an offset each, not the state), then again to hand out those records
//! (or the next of the key, where compaction removed one meanwhile), parsed
//! one at a time, through a bounded channel that the pass
//! drains as it reads Easemob. The consumer's prefetch is capped as well
//! (librdkafka would otherwise queue up to 64 MiB of records ahead).
//! What stays per group is the digest of its key: for the partition being
//! read, and with `scope = "all"` for the app's known groups, so that a
//! listed group is compared once.
//!
//! No consumer group is joined and nothing is committed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use md5::{Digest, Md5};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::event::Scope;
use crate::kafka::config::KafkaConfig;
use crate::policy::glob;
use crate::state::GroupState;

/// States read ahead of the pass (which holds a batch of 100 besides):
/// Kafka is read far faster than Easemob, so a few are enough.
const CHANNEL: usize = 16;
/// The consumer's prefetch, in KiB (raised to fit the largest record).
const PREFETCH_KIB: usize = 4096;
/// A partition that yields nothing for this long is unreadable.
const POLL_TIMEOUT: Duration = Duration::from_secs(15);

/// A key's digest: what a pass keeps per group instead of its state.
pub type KeyDigest = u128;

/// The digest of a state key.
pub fn digest(key: &[u8]) -> KeyDigest {
    u128::from_be_bytes(Md5::digest(key).into())
}

/// What the stream hands out, in order.
#[derive(Debug)]
pub enum Item {
    /// One of the app's group states (the newest of its key).
    State(Box<GroupState>),
    /// A state record of the app that is not a `mutebridge.state/v1`
    /// group state: its group (scope and id, from the key) is not compared.
    Unreadable(Scope, String),
    /// `done` of the topic's `of` partitions have been handed out.
    Partition { done: usize, of: usize },
}

/// What the whole scan found, once the stream has ended.
#[derive(Debug, Default)]
pub struct Scanned {
    /// With `known_groups`: the digests of the app's group keys
    /// ([`crate::state::key`]) that hold a state.
    pub known_groups: HashSet<KeyDigest>,
}

/// Which of the topic's records a scan is about.
#[derive(Debug, Clone)]
pub struct Select {
    /// The app: its keys start with `{appkey}|`.
    pub appkey: String,
    /// Only groups whose ID matches this pattern.
    pub pattern: Option<String>,
    /// Keep the digests of its group keys ([`Scanned::known_groups`]).
    pub known_groups: bool,
}

/// The app's states, being read on a blocking thread.
pub struct Stream {
    pub items: mpsc::Receiver<Item>,
    /// The scan's end: what it found, or why it stopped.
    pub scan: tokio::task::JoinHandle<anyhow::Result<Scanned>>,
}

/// Starts reading the app's newest states of the state topic `topic`.
pub fn stream(cfg: &KafkaConfig, bootstrap: &str, topic: &str, select: Select) -> Stream {
    let (tx, items) = mpsc::channel(CHANNEL);
    let (cfg, bootstrap, topic) = (cfg.clone(), bootstrap.to_owned(), topic.to_owned());
    let scan = tokio::task::spawn_blocking(move || {
        let reader = Reader::new(&cfg, &bootstrap)?;
        reader
            .app(&topic, &select, &tx)
            .with_context(|| format!("cannot read the state topic {topic}"))
    });
    Stream { items, scan }
}

/// Counts the live group states in `topic` whose appkey is not one of
/// `appkeys` (apps a pass does not read) and whose ID `pattern` selects.
/// Blocks.
pub fn count_others(
    cfg: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
    appkeys: &[String],
    pattern: Option<&str>,
) -> anyhow::Result<usize> {
    let prefixes: Vec<Vec<u8>> = appkeys.iter().map(|a| format!("{a}|").into()).collect();
    let reader = Reader::new(cfg, bootstrap)?;
    let mut count = 0;
    for p in 0..reader.partitions(topic)? {
        let mut newest: HashMap<KeyDigest, bool> = HashMap::new();
        reader.read_records(topic, p, |_, key, value| {
            let other = !prefixes.iter().any(|pre| key.starts_with(pre));
            // `{appkey}|{scope}|{id}`: the ID is what follows the second `|`.
            let id = key
                .splitn(3, |b| *b == b'|')
                .nth(2)
                .map(String::from_utf8_lossy);
            if other && id.is_some_and(|id| pattern.is_none_or(|p| glob(p, &id))) {
                newest.insert(digest(key), value.is_some());
            }
            true
        })?;
        count += newest.values().filter(|live| **live).count();
    }
    Ok(count)
}

/// The scope and group ID of a state key `{appkey}|{scope}|{id}`, given
/// its `{appkey}|` prefix.
fn parse_key<'k>(key: &'k [u8], prefix: &[u8]) -> Option<(Scope, &'k str)> {
    let rest = std::str::from_utf8(key.strip_prefix(prefix)?).ok()?;
    let (scope, id) = rest.split_once('|')?;
    let scope = match scope {
        s if s == Scope::Group.as_str() => Scope::Group,
        s if s == Scope::Chatroom.as_str() => Scope::Chatroom,
        _ => return None,
    };
    Some((scope, id))
}

/// The scope and ID of a key of the app (`prefix`) whose ID `pattern`
/// selects.
fn selected<'k>(key: &'k [u8], prefix: &[u8], pattern: Option<&str>) -> Option<(Scope, &'k str)> {
    parse_key(key, prefix).filter(|(_, id)| pattern.is_none_or(|p| glob(p, id)))
}

/// A consumer outside any group with a small prefetch.
struct Reader {
    consumer: BaseConsumer,
    bootstrap: String,
}

impl Reader {
    fn new(cfg: &KafkaConfig, bootstrap: &str) -> anyhow::Result<Reader> {
        let prefetch = PREFETCH_KIB.max(crate::kafka::client::max_message_bytes(cfg) / 1024 * 2);
        let consumer: BaseConsumer = crate::kafka::client_config(cfg, bootstrap)
            // librdkafka wants a group id even for manual assignment; it is
            // never joined and nothing is committed.
            .set("group.id", "mutebridge-reconcile-scan")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("queued.max.messages.kbytes", prefetch.to_string())
            .create()
            .context("cannot create a Kafka consumer (check the [kafka.client] properties)")?;
        Ok(Reader {
            consumer,
            bootstrap: bootstrap.to_owned(),
        })
    }

    fn partitions(&self, topic: &str) -> anyhow::Result<i32> {
        let n = crate::kafka::partition_count(self.consumer.client(), topic, POLL_TIMEOUT)
            .with_context(|| format!("cannot read topic {topic} at {}", self.bootstrap))?;
        Ok(n as i32)
    }

    /// Hands the app's newest states to `tx`, partition by partition.
    fn app(
        &self,
        topic: &str,
        select: &Select,
        tx: &mpsc::Sender<Item>,
    ) -> anyhow::Result<Scanned> {
        let prefix = format!("{}|", select.appkey).into_bytes();
        let pattern = select.pattern.as_deref();
        let mut scanned = Scanned::default();
        let partitions = self.partitions(topic)?;
        for p in 0..partitions {
            // The offset of each key's newest record, while it holds a
            // state (a tombstone deletes it).
            let mut newest: HashMap<KeyDigest, i64> = HashMap::new();
            self.read_records(topic, p, |offset, key, value| {
                if let Some((scope, _)) = selected(key, &prefix, pattern) {
                    let d = digest(key);
                    let known = select.known_groups && scope == Scope::Group;
                    if value.is_some() {
                        newest.insert(d, offset);
                        if known {
                            scanned.known_groups.insert(d);
                        }
                    } else {
                        newest.remove(&d);
                        if known {
                            scanned.known_groups.remove(&d);
                        }
                    }
                }
                true
            })?;
            if !newest.is_empty() {
                let mut open = true;
                self.read_records(topic, p, |offset, key, payload| {
                    let Some((scope, id)) = selected(key, &prefix, pattern) else {
                        return true;
                    };
                    // The newest record of the first read, or (compaction
                    // may have removed it since) the first one after it.
                    let d = digest(key);
                    match newest.get(&d) {
                        Some(&newest_at) if offset >= newest_at => newest.remove(&d),
                        _ => return true,
                    };
                    let item = match payload.map(serde_json::from_slice::<GroupState>) {
                        Some(Ok(s)) => Item::State(Box::new(s)),
                        Some(Err(_)) => Item::Unreadable(scope, id.to_owned()),
                        // Deleted since the first read.
                        None => return true,
                    };
                    // The pass stopped listening: stop reading.
                    open = tx.blocking_send(item).is_ok();
                    open
                })?;
                if !open {
                    bail!("the pass ended before the scan");
                }
            }
            let done = Item::Partition {
                done: p as usize + 1,
                of: partitions as usize,
            };
            if tx.blocking_send(done).is_err() {
                bail!("the pass ended before the scan");
            }
        }
        Ok(scanned)
    }

    /// Calls `each(offset, key, value)` for every keyed record of
    /// `topic`/`partition` up to its end as it is now, but the targets'
    /// applied records (`@` keys); stops when `each` returns false.
    fn read_records(
        &self,
        topic: &str,
        partition: i32,
        mut each: impl FnMut(i64, &[u8], Option<&[u8]>) -> bool,
    ) -> anyhow::Result<()> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition, POLL_TIMEOUT)
            .with_context(|| format!("cannot read the offsets of {topic}/{partition}"))?;
        if high <= low {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(low))?;
        self.consumer.assign(&tpl)?;
        let mut next = low;
        let read = loop {
            let message = match self.consumer.poll(POLL_TIMEOUT) {
                None => {
                    break Err(anyhow!(
                        "no record within {POLL_TIMEOUT:?}: {topic}/{partition} at {next} of {high}"
                    ))
                }
                Some(Err(e)) => break Err(e).with_context(|| format!("cannot read {topic}")),
                Some(Ok(m)) => m,
            };
            if message.partition() != partition {
                continue;
            }
            next = message.offset() + 1;
            let go_on = match message.key() {
                Some(key) if key.first() != Some(&b'@') => {
                    each(message.offset(), key, message.payload())
                }
                _ => true,
            };
            if !go_on || next >= high {
                break Ok(());
            }
        };
        self.consumer.unassign()?;
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_parsed_for_their_app_only() {
        let prefix = b"o#a|";
        assert_eq!(
            parse_key(b"o#a|group|g|1", prefix),
            Some((Scope::Group, "g|1"))
        );
        assert_eq!(
            parse_key(b"o#a|chatroom|r1", prefix),
            Some((Scope::Chatroom, "r1"))
        );
        assert_eq!(parse_key(b"o#ab|group|g1", prefix), None);
        assert_eq!(parse_key(b"o#a|other|g1", prefix), None);
        assert_ne!(digest(b"o#a|group|g1"), digest(b"o#a|group|g2"));
    }
}
