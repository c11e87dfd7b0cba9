//! `mutebridge state get` and `mutebridge state dump`: read the groups'
//! mute states from the state topic, the way the worker keeps them, and
//! (`get`) what each target applied. No consumer group: nothing is
//! committed, the workers are not disturbed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::event::Scope;
use crate::kafka::{key_partition, scan::Reader};
use crate::policy::glob;
use crate::state::applied::AppliedState;
use crate::state::{self, GroupState};

/// `mutebridge state get | dump`.
#[derive(Debug, Args)]
pub struct StateArgs {
    #[command(subcommand)]
    command: StateCommand,
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Print one group's mute state (JSON), reading only its partition.
    Get {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// `org#app`.
        appkey: String,
        /// `group` or `chatroom`.
        scope: String,
        group_id: String,
    },
    /// Print every group's newest mute state, one JSON line each.
    Dump {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        selection: Selection,
    },
}

/// Runs `mutebridge state ...`; `get` exits 1 when the group has no state.
pub async fn run(args: StateArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        StateCommand::Get {
            config,
            appkey,
            scope,
            group_id,
        } => {
            let found = get(config.as_deref(), &appkey, &scope, &group_id).await?;
            Ok(super::exit_code(found))
        }
        StateCommand::Dump { config, selection } => {
            dump(config.as_deref(), &selection).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Which groups a command is about.
#[derive(Args, Debug, Clone, Default)]
pub struct Selection {
    /// Only groups whose ID matches this pattern (`*` matches any run of
    /// characters).
    #[arg(long = "groups")]
    pub groups: Option<String>,
    /// Only groups of this appkey (`org#app`).
    #[arg(long)]
    pub appkey: Option<String>,
}

impl Selection {
    pub(crate) fn matches(&self, s: &GroupState) -> bool {
        self.appkey.as_deref().is_none_or(|a| a == s.appkey)
            && self.groups.as_deref().is_none_or(|p| glob(p, &s.group_id))
    }
}

/// `mutebridge state get`: prints one group's newest state and what each
/// target applied, as one JSON document (`{"state": ..., "applied":
/// {TARGET: ...}}`), reading only the partition it lives in. Returns false
/// when there is neither.
async fn get(
    config_file: Option<&Path>,
    appkey: &str,
    scope: &str,
    group_id: &str,
) -> anyhow::Result<bool> {
    let (config, bootstrap) = super::connect(config_file)?;
    let scope = Scope::from_name(scope)
        .with_context(|| format!("scope {scope:?}: use `group` or `chatroom`"))?;
    let key = state::key(appkey, scope, group_id);
    let (kafka, topic, event_topic) = (
        config.kafka.clone(),
        config.worker.state_topic.clone(),
        config.kafka.topic.clone(),
    );
    let (group, wanted) = (group_id.to_owned(), key.clone());
    let (partition, mut found) = tokio::task::spawn_blocking(move || {
        let reader = Reader::new(&kafka, &bootstrap)?;
        // Placed like the group's events: the event topic's partitioner.
        let partitions = reader.partition_count(&event_topic)?;
        let partition = key_partition(group.as_bytes(), partitions as i32);
        // The newest record of the group's state key and of each
        // `@{target}|` key of it.
        let suffix = format!("|{wanted}");
        let mut found: HashMap<String, Vec<u8>> = HashMap::new();
        reader.read(
            &topic,
            &[partition],
            |r| {
                let Some(k) = r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else {
                    return;
                };
                if k == wanted || (k.starts_with('@') && k.ends_with(&suffix)) {
                    match r.payload {
                        Some(p) => found.insert(k.to_owned(), p),
                        None => found.remove(k),
                    };
                }
            },
            |_| {},
        )?;
        anyhow::Ok((partition, found))
    })
    .await??;
    let topic = &config.worker.state_topic;
    if found.is_empty() {
        eprintln!("no mute state for {key} in {topic} (partition {partition}): no mute event of this group was processed, or its members' guards were pruned");
        return Ok(false);
    }
    let unreadable = |k: &str, schema: &str| {
        format!("the record of {k} in {topic}/{partition} is not a {schema}")
    };
    let state: Option<GroupState> = match found.remove(&key) {
        Some(p) => Some(
            serde_json::from_slice(&p).with_context(|| unreadable(&key, state::STATE_SCHEMA_V1))?,
        ),
        None => None,
    };
    let mut applied = serde_json::Map::new();
    let mut keys: Vec<String> = found.keys().cloned().collect();
    keys.sort();
    for k in keys {
        let record: AppliedState = serde_json::from_slice(&found[&k])
            .with_context(|| unreadable(&k, state::applied::APPLIED_SCHEMA_V1))?;
        applied.insert(record.target.clone(), serde_json::to_value(&record)?);
    }
    let out = serde_json::json!({ "state": state, "applied": applied });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).expect("states serialize")
    );
    Ok(true)
}

/// `mutebridge state dump`: every selected group's newest state, one JSON
/// line each, a partition at a time (only one partition's states are held).
async fn dump(config_file: Option<&Path>, selection: &Selection) -> anyhow::Result<()> {
    let (config, bootstrap) = super::connect(config_file)?;
    let mut out = std::io::stdout().lock();
    let total = for_each_state(&config, &bootstrap, selection, |s| {
        use std::io::Write;
        let line = serde_json::to_string(&s).expect("states serialize");
        // A reader that went away (`| head`) ends the dump quietly.
        writeln!(out, "{line}").is_ok()
    })
    .await?;
    eprintln!("{total} state(s) in {}", config.worker.state_topic);
    Ok(())
}

/// Calls `each` with the newest state of every selected group, partition
/// by partition; stops early when `each` returns false. Returns how many
/// were handed out.
pub(crate) async fn for_each_state(
    config: &Config,
    bootstrap: &str,
    selection: &Selection,
    each: impl FnMut(GroupState) -> bool,
) -> anyhow::Result<usize> {
    let topic = &config.worker.state_topic;
    let (count, unreadable) = tokio::task::block_in_place(|| {
        crate::kafka::scan::states(
            &config.kafka,
            bootstrap,
            topic,
            |s| selection.matches(s),
            each,
        )
    })?;
    if unreadable > 0 {
        eprintln!(
            "note: {unreadable} record(s) in {topic} are not {} states; skipped",
            state::STATE_SCHEMA_V1
        );
    }
    Ok(count)
}
