//! `mutebridge rewind --target X --to TIME`: moves only X's consumer group
//! back to a time, so that X applies again what happened since (a provider
//! that lost data, restored from a backup), the other targets untouched.
//!
//! The offsets come from Kafka's offsets-for-times (or, on a cluster that
//! does not answer it, librdkafka's mock, from reading the partitions).
//! Each moved partition's commit carries a fence, the offset it was at:
//! events below it are judged as replays, so that what the target applied
//! before is sent again (each group's newest state per dimension, not every
//! step), and the fence goes with the target's commits until it is passed.
//!
//! Kafka moves a group's offsets only while no member holds them, so the
//! command refuses while X's workers run, and says which.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::{self, scan::Reader};
use crate::worker::offsets::FENCE;
use crate::worker::target_group;

/// One partition's move.
struct Move {
    partition: i32,
    from: i64,
    to: i64,
}

/// Rewinds target `target` to `to` (a duration ago or milliseconds since
/// the epoch); prints the plan, and with `dry_run` only that.
pub async fn run(
    config_file: Option<&Path>,
    target: &str,
    to: &str,
    dry_run: bool,
) -> anyhow::Result<()> {
    let (config, bootstrap) = super::connect(config_file)?;
    if !config.targets.contains_key(target) {
        let known: Vec<&str> = config.targets.keys().map(String::as_str).collect();
        bail!(
            "--target {target}: no [targets.{target}] in the config; defined: {}",
            known.join(", ")
        );
    }
    let at_ms = super::dlq::parse_since(to).map_err(|e| anyhow::anyhow!("--to {to}: {e:#}"))?;
    let group = target_group(&config.worker, target);
    let (plan, kept) = tokio::task::spawn_blocking({
        let (config, bootstrap, group) = (config.clone(), bootstrap.clone(), group.clone());
        move || plan(&config, &bootstrap, &group, at_ms)
    })
    .await??;
    let events: i64 = plan.iter().map(|m| m.from - m.to).sum();
    eprintln!(
        "target {target} (consumer group {group}): {} partition(s) move back, {events} event(s) are applied again; {kept} partition(s) already at or before the time",
        plan.len()
    );
    for m in &plan {
        println!(
            "partition {}: {} -> {} ({} events)",
            m.partition,
            m.from,
            m.to,
            m.from - m.to
        );
    }
    if dry_run || plan.is_empty() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || commit(&config, &bootstrap, &group, &plan)).await??;
    eprintln!("rewound; start {target}'s workers: they apply again from there (the other targets are untouched)");
    Ok(())
}

/// Each partition whose committed offset is past the first record at or
/// after `at_ms`; and how many are not.
fn plan(
    config: &Config,
    bootstrap: &str,
    group: &str,
    at_ms: i64,
) -> anyhow::Result<(Vec<Move>, usize)> {
    let topic = &config.kafka.topic;
    let reader = Reader::new(&config.kafka, bootstrap)?;
    let partitions = reader.partition_count(topic)? as i32;
    let consumer = member(config, bootstrap, group)?;
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(all, Duration::from_secs(15))
        .with_context(|| format!("cannot read the committed offsets of {group}"))?;
    let mut times = TopicPartitionList::new();
    for p in 0..partitions {
        times.add_partition_offset(topic, p, Offset::Offset(at_ms))?;
    }
    let found = consumer
        .offsets_for_times(times, Duration::from_secs(15))
        .context("cannot ask Kafka for the offsets at that time")?;
    let answers = offsets_for_times_works(&consumer, topic)?;
    let (mut plan, mut kept) = (Vec::new(), 0);
    for e in committed.elements() {
        let p = e.partition();
        let Offset::Offset(from) = e.offset() else {
            kept += 1;
            continue;
        };
        let to = match found.find_partition(topic, p).map(|f| f.offset()) {
            Some(Offset::Offset(o)) if answers => o,
            _ if answers => from,
            // librdkafka's mock cluster does not look times up: read.
            _ => reader.first_at_or_after(topic, p, at_ms)?,
        };
        if to < from {
            plan.push(Move {
                partition: p,
                from,
                to,
            });
        } else {
            kept += 1;
        }
    }
    Ok((plan, kept))
}

/// Whether the cluster answers offsets-for-times (the oldest time gives the
/// first offset of a partition that has records).
fn offsets_for_times_works(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<bool> {
    let partitions = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(15))?
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len()) as i32;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(15))?;
        if high > low {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Offset(0))?;
            let answer = consumer.offsets_for_times(tpl, Duration::from_secs(15))?;
            return Ok(matches!(
                answer.find_partition(topic, p).map(|e| e.offset()),
                Some(Offset::Offset(_))
            ));
        }
    }
    Ok(true)
}

/// A consumer of `group` that does not join it.
fn member(config: &Config, bootstrap: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    kafka::consumer_config(&config.kafka, bootstrap, group)
        .create()
        .context("cannot create a Kafka consumer (check the [kafka.client] properties)")
}

/// Commits the plan's offsets with their fences, as the group's only
/// member: refuses when the group has others (its workers run).
fn commit(config: &Config, bootstrap: &str, group: &str, plan: &[Move]) -> anyhow::Result<()> {
    let topic = &config.kafka.topic;
    let running = || {
        anyhow::anyhow!(
            "the workers of consumer group {group} are running: stop them first (every worker runs every target, so scale the worker deployment to 0, e.g. kubectl scale deployment/mutebridge-worker --replicas=0), rewind, then start them again; nothing was changed"
        )
    };
    let consumer = member(config, bootstrap, group)?;
    // Where the cluster describes groups, ask it; else join and see.
    if let Ok(list) = consumer.fetch_group_list(Some(group), Duration::from_secs(10)) {
        if let Some(g) = list.groups().iter().find(|g| g.name() == group) {
            if !g.members().is_empty() {
                let hosts: Vec<&str> = g.members().iter().map(|m| m.client_host()).collect();
                return Err(running()).with_context(|| format!("members on {}", hosts.join(", ")));
            }
        }
    }
    let partitions = Reader::new(&config.kafka, bootstrap)?.partition_count(topic)?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let _ = consumer.poll(Duration::from_millis(100));
        let held = consumer.assignment()?.count();
        if held == partitions {
            break;
        }
        if held > 0 || Instant::now() > deadline {
            consumer.unsubscribe();
            return Err(running());
        }
    }
    let mut tpl = TopicPartitionList::new();
    for m in plan {
        tpl.add_partition_offset(topic, m.partition, Offset::Offset(m.to))?;
        if let Some(mut e) = tpl.find_partition(topic, m.partition) {
            e.set_metadata(format!("{FENCE}{}", m.from));
        }
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .with_context(|| format!("cannot commit the rewound offsets of {group}"))?;
    consumer.unsubscribe();
    Ok(())
}
