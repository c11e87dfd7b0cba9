//! Reading the state topic for a pass: the selected groups' newest states,
//! and what each verified target applied to them (its `@{target}|` records
//! beside them), partition by partition, the newest record of each key.
//! No consumer group: nothing is committed, the workers are not disturbed.

use std::collections::HashMap;

use anyhow::Context;

use crate::kafka::config::KafkaConfig;
use crate::kafka::scan::Reader;
use crate::policy::glob;
use crate::state::applied::{self, AppliedState};
use crate::state::GroupState;

/// Which groups a pass is about.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Group-ID pattern (`*` = any run of characters).
    pub groups: Option<String>,
    /// Only this appkey.
    pub appkey: Option<String>,
}

impl Selection {
    fn keeps(&self, appkey: &str, group_id: &str) -> bool {
        self.appkey.as_deref().is_none_or(|a| a == appkey)
            && self.groups.as_deref().is_none_or(|p| glob(p, group_id))
    }
}

/// What a pass compares from.
#[derive(Debug, Default)]
pub struct Read {
    pub states: Vec<GroupState>,
    /// The targets' records, by record key.
    pub applied: HashMap<String, AppliedState>,
    /// Records that are neither (another schema): skipped.
    pub unreadable: usize,
}

/// Reads `topic`. Blocks: call it from a blocking thread.
pub fn read(
    kafka: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
    targets: &[String],
    selection: &Selection,
) -> anyhow::Result<Read> {
    let reader = Reader::new(kafka, bootstrap)?;
    let partitions = reader.partition_count(topic)?;
    let prefixes: Vec<String> = targets.iter().map(|t| applied::key_prefix(t)).collect();
    let mut out = Read::default();
    for p in 0..partitions as i32 {
        let mut newest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        reader
            .read(
                topic,
                &[p],
                |r| {
                    let Some(key) = r.key else { return };
                    let wanted = key.first() != Some(&b'@')
                        || prefixes.iter().any(|x| key.starts_with(x.as_bytes()));
                    if wanted {
                        // A tombstone (`None`) deletes what came before.
                        newest.insert(key, r.payload);
                    }
                },
                |_| {},
            )
            .with_context(|| format!("cannot read the state topic {topic}"))?;
        for (key, value) in newest {
            let Some(value) = value else { continue };
            if key.first() == Some(&b'@') {
                match serde_json::from_slice::<AppliedState>(&value) {
                    Ok(a) if selection.keeps(&a.appkey, &a.group_id) => {
                        out.applied.insert(a.key(), a);
                    }
                    Ok(_) => {}
                    Err(_) => out.unreadable += 1,
                }
            } else {
                match serde_json::from_slice::<GroupState>(&value) {
                    Ok(s) if selection.keeps(&s.appkey, &s.group_id) => out.states.push(s),
                    Ok(_) => {}
                    Err(_) => out.unreadable += 1,
                }
            }
        }
    }
    out.states.sort_by_cached_key(GroupState::key);
    Ok(out)
}
