//! `mutebridge rewind --target X --to TIME`: moves only X's consumer group
//! back to a time, so that X applies again what happened since (a provider
//! that lost data, restored from a backup), the other targets untouched.
//!
//! Kafka moves a group's offsets only while no worker holds them, so the
//! command first makes sure none does, before anything slow: a cluster
//! that describes groups names the running members at once; on one that
//! does not (librdkafka's mock cluster) the command joins the group and
//! refuses if it is not given every partition. It then *holds* the group
//! (so no worker can start in between) while it plans and commits.
//!
//! The offsets come from Kafka's offsets-for-times (or, on a cluster that
//! does not answer it, from reading the partitions, all at once, each only
//! up to where the group is, with progress on stderr). Each moved
//! partition's commit carries a fence: events below it are judged as
//! replays, so that what the target applied before is sent again (each
//! group's newest state per dimension, not every step). The fence goes
//! with the target's commits, a rebalance's included, until it is passed,
//! and a second rewind keeps the wider window (the higher fence).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka;
use crate::worker::offsets::{fence_of, FENCE};
use crate::worker::target_group;

/// `mutebridge rewind`: which target, to when.
#[derive(Debug, Args)]
pub struct RewindArgs {
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The `[targets.NAME]` to rewind.
    #[arg(long)]
    target: String,
    /// A duration ago (90s, 30m, 12h, 7d) or milliseconds since the epoch.
    #[arg(long)]
    to: String,
    /// Print the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// How long the command waits to be let into the group: the coordinator
/// holds a group for up to `session.timeout.ms` (45 s by default) after a
/// member left without saying so.
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);

/// How often a long step says where it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Move {
    partition: i32,
    /// Where the group is now.
    from: i64,
    /// Where it goes.
    to: i64,
    /// Below it events are applied again: `from`, or an earlier rewind's
    /// fence not yet passed when that is higher.
    fence: i64,
}

impl Move {
    /// Events the target applies again in this partition.
    fn reapplied(&self) -> i64 {
        self.fence - self.to
    }

    /// Whether the group's offset moves (else an earlier rewind's fence is
    /// still ahead of it, and stays).
    fn moves(&self) -> bool {
        self.to < self.from
    }
}

/// Rewinds `--target` to `--to`; prints the plan, and with `--dry-run`
/// only that.
pub async fn run(args: RewindArgs) -> anyhow::Result<ExitCode> {
    let RewindArgs {
        config,
        target,
        to,
        dry_run,
    } = args;
    let (config, bootstrap) = super::connect(config.as_deref())?;
    if !config.targets.contains_key(&target) {
        let known: Vec<&str> = config.targets.keys().map(String::as_str).collect();
        bail!(
            "--target {target}: no [targets.{target}] in the config; defined: {}",
            known.join(", ")
        );
    }
    let at_ms = super::dlq::parse_since(&to).map_err(|e| anyhow::anyhow!("--to {to}: {e:#}"))?;
    let group = target_group(&config.worker, &target);
    // librdkafka's calls block: the whole command runs on one thread.
    tokio::task::spawn_blocking(move || {
        rewind(&config, &bootstrap, &target, &group, at_ms, dry_run)
    })
    .await??;
    Ok(ExitCode::SUCCESS)
}

fn rewind(
    config: &Config,
    bootstrap: &str,
    target: &str,
    group: &str,
    at_ms: i64,
    dry_run: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let topic = &config.kafka.topic;
    // A dry run changes nothing, so it neither needs the group nor
    // disturbs running workers.
    let holder = if dry_run {
        None
    } else {
        Some(Holder::take(config, bootstrap, group)?)
    };
    let looker;
    let consumer = match &holder {
        Some(h) => &h.consumer,
        None => {
            looker = member(config, bootstrap, group, Joined::default())?;
            &looker
        }
    };
    let keep_alive = || {
        if let Some(h) = &holder {
            h.keep_alive();
        }
    };
    let reader = || {
        kafka::client_config(&config.kafka, bootstrap)
            .set("group.id", "mutebridge-rewind-scan")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create::<BaseConsumer>()
            .context("cannot create a Kafka consumer (check the [kafka.client] properties)")
    };
    let (plan, kept) = plan(consumer, &reader, topic, at_ms, &keep_alive)
        .with_context(|| format!("cannot plan the rewind of consumer group {group}"))?;
    let events: i64 = plan.iter().map(Move::reapplied).sum();
    let moves = plan.iter().filter(|m| m.moves()).count();
    eprintln!(
        "target {target} (consumer group {group}): {moves} partition(s) move back, {events} event(s) are applied again; {kept} partition(s) already at or before the time",
    );
    for m in &plan {
        let left = m.fence - m.from;
        let earlier = if left > 0 {
            format!(", {left} of them left from an earlier rewind")
        } else {
            String::new()
        };
        println!(
            "partition {}: {} -> {} ({} events{earlier})",
            m.partition,
            m.from,
            m.to,
            m.reapplied()
        );
    }
    let Some(holder) = holder else {
        return Ok(());
    };
    if moves == 0 {
        return Ok(());
    }
    holder.commit(&plan)?;
    eprintln!(
        "rewound in {:.1}s; start {target}'s workers: they apply again from there (the other targets are untouched)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Each partition whose committed offset is past the first record at or
/// after `at_ms`, or that an earlier rewind's fence is still ahead of; and
/// how many are neither.
fn plan(
    consumer: &BaseConsumer<Joined>,
    reader: &dyn Fn() -> anyhow::Result<BaseConsumer>,
    topic: &str,
    at_ms: i64,
    keep_alive: &dyn Fn(),
) -> anyhow::Result<(Vec<Move>, usize)> {
    let timeout = Duration::from_secs(15);
    let partitions = kafka::partition_count(consumer.client(), topic, timeout)? as i32;
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(all, timeout)
        .context("cannot read the committed offsets")?;
    // Where each partition is, and the fence an earlier rewind left there.
    let mut at: Vec<(i32, i64, Option<i64>)> = Vec::new();
    let mut kept = 0;
    for e in committed.elements() {
        match e.offset() {
            Offset::Offset(from) => at.push((e.partition(), from, fence_of(e.metadata()))),
            _ => kept += 1,
        }
    }
    keep_alive();
    let targets = if offsets_for_times_works(consumer, topic, partitions)? {
        by_time(consumer, topic, &at, at_ms)?
    } else {
        eprintln!("the cluster does not look offsets up by time (librdkafka's mock cluster): reading the partitions instead");
        scan(&reader()?, topic, &at, at_ms, keep_alive)?
    };
    let mut plan = Vec::new();
    for (partition, from, fence) in at {
        let to = targets.get(&partition).copied().unwrap_or(from).min(from);
        let fence = fence.map_or(from, |f| f.max(from));
        if to < fence {
            plan.push(Move {
                partition,
                from,
                to,
                fence,
            });
        } else {
            kept += 1;
        }
    }
    Ok((plan, kept))
}

/// The first offset at or after `at_ms` of each partition, from the
/// broker's time index; a partition with no record since stays where it is.
fn by_time(
    consumer: &BaseConsumer<Joined>,
    topic: &str,
    at: &[(i32, i64, Option<i64>)],
    at_ms: i64,
) -> anyhow::Result<HashMap<i32, i64>> {
    let mut times = TopicPartitionList::new();
    for (p, _, _) in at {
        times.add_partition_offset(topic, *p, Offset::Offset(at_ms))?;
    }
    let found = consumer
        .offsets_for_times(times, Duration::from_secs(15))
        .context("cannot ask Kafka for the offsets at that time")?;
    Ok(found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            // No record at or after the time (Kafka answers -1).
            _ => None,
        })
        .collect())
}

/// The first offset at or after `at_ms` of each partition, by reading the
/// partitions together from their oldest record, each only up to where the
/// group is (no further record can be a move back); says how far it got
/// every few seconds.
fn scan(
    reader: &BaseConsumer,
    topic: &str,
    at: &[(i32, i64, Option<i64>)],
    at_ms: i64,
    keep_alive: &dyn Fn(),
) -> anyhow::Result<HashMap<i32, i64>> {
    let timeout = Duration::from_secs(15);
    let mut found = HashMap::new();
    // Per partition: the end of what is read (where the group is).
    let mut open: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &(p, from, _) in at {
        let (low, _) = reader.fetch_watermarks(topic, p, timeout)?;
        if from > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            open.insert(p, from);
        }
    }
    let total = open.len();
    let mut read = 0u64;
    let mut note_at = Instant::now() + PROGRESS_EVERY;
    if !open.is_empty() {
        reader.assign(&tpl)?;
    }
    while !open.is_empty() {
        keep_alive();
        if Instant::now() >= note_at {
            eprintln!(
                "  reading: {read} record(s) so far, {} of {total} partition(s) done",
                total - open.len()
            );
            note_at = Instant::now() + PROGRESS_EVERY;
        }
        let Some(message) = reader.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.with_context(|| format!("cannot read {topic}"))?;
        read += 1;
        let p = message.partition();
        let Some(&end) = open.get(&p) else { continue };
        let written = message.timestamp().to_millis();
        if written.is_some_and(|t| t >= at_ms) {
            found.insert(p, message.offset());
            open.remove(&p);
        } else if message.offset() + 1 >= end {
            open.remove(&p);
        }
    }
    if total > 0 {
        eprintln!("  read {read} record(s) of {total} partition(s)");
    }
    Ok(found)
}

/// Whether the cluster answers offsets-for-times (the oldest time gives the
/// first offset of a partition that has records).
fn offsets_for_times_works(
    consumer: &BaseConsumer<Joined>,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<bool> {
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

/// Counts the assignments the group's coordinator hands out.
#[derive(Default)]
struct Joined {
    assignments: AtomicUsize,
}

impl ClientContext for Joined {}

impl ConsumerContext for Joined {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.assignments.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A consumer of `group` (it joins only if subscribed).
fn member(
    config: &Config,
    bootstrap: &str,
    group: &str,
    context: Joined,
) -> anyhow::Result<BaseConsumer<Joined>> {
    kafka::consumer_config(&config.kafka, bootstrap, group)
        .create_with_context(context)
        .context("cannot create a Kafka consumer (check the [kafka.client] properties)")
}

/// The target's consumer group, held by this command as its only member.
struct Holder {
    consumer: BaseConsumer<Joined>,
    topic: String,
}

impl Holder {
    /// Makes sure no worker holds `group` and joins it as its only member;
    /// refuses at once, naming them, where the cluster describes groups.
    fn take(config: &Config, bootstrap: &str, group: &str) -> anyhow::Result<Holder> {
        let topic = config.kafka.topic.clone();
        let running = || {
            anyhow::anyhow!(
                "the workers of consumer group {group} are running (or one stopped without leaving the group less than session.timeout.ms ago): stop them first (every worker runs every target, so scale the worker deployment to 0, e.g. kubectl scale deployment/mutebridge-worker --replicas=0), rewind, then start them again; nothing was changed"
            )
        };
        let consumer = member(config, bootstrap, group, Joined::default())?;
        // Where the cluster describes groups, ask it: no join, no wait.
        if let Ok(list) = consumer.fetch_group_list(Some(group), Duration::from_secs(5)) {
            if let Some(g) = list.groups().iter().find(|g| g.name() == group) {
                if !g.members().is_empty() {
                    let hosts: Vec<&str> = g.members().iter().map(|m| m.client_host()).collect();
                    return Err(running())
                        .with_context(|| format!("members on {}", hosts.join(", ")));
                }
            }
        }
        let partitions =
            kafka::partition_count(consumer.client(), &topic, Duration::from_secs(15))?;
        consumer.subscribe(&[&topic])?;
        eprintln!("joining consumer group {group} to hold it while rewinding (refused if a worker holds partitions of it) ...");
        let started = Instant::now();
        let mut note_at = started + PROGRESS_EVERY;
        loop {
            let _ = consumer.poll(Duration::from_millis(100));
            let held = consumer.assignment()?.count();
            if held == partitions {
                break;
            }
            // Given part of the partitions, or none once the coordinator
            // assigned them: others hold the rest.
            if held > 0 || consumer.context().assignments.load(Ordering::SeqCst) > 0 {
                consumer.unsubscribe();
                return Err(running()).with_context(|| {
                    format!("this command was given {held} of the {partitions} partitions")
                });
            }
            if started.elapsed() > JOIN_TIMEOUT {
                consumer.unsubscribe();
                bail!(
                    "consumer group {group}: not admitted within {}s (is Kafka reachable?); nothing was changed",
                    JOIN_TIMEOUT.as_secs()
                );
            }
            if Instant::now() >= note_at {
                eprintln!(
                    "  waiting for the group coordinator ({}s; it holds a group for up to session.timeout.ms after a member left)",
                    started.elapsed().as_secs()
                );
                note_at = Instant::now() + PROGRESS_EVERY;
            }
        }
        // Held, not read: its partitions fetch nothing.
        consumer.pause(&consumer.assignment()?)?;
        eprintln!(
            "holding consumer group {group} ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
        Ok(Holder { consumer, topic })
    }

    /// Keeps the membership (a member that does not poll for
    /// `max.poll.interval.ms` is dropped from the group).
    fn keep_alive(&self) {
        let _ = self.consumer.poll(Duration::ZERO);
    }

    /// Commits the plan's offsets with their fences.
    fn commit(&self, plan: &[Move]) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for m in plan.iter().filter(|m| m.moves()) {
            tpl.add_partition_offset(&self.topic, m.partition, Offset::Offset(m.to))?;
            if let Some(mut e) = tpl.find_partition(&self.topic, m.partition) {
                e.set_metadata(format!("{FENCE}{}", m.fence));
            }
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .context("cannot commit the rewound offsets")
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.consumer.unsubscribe();
    }
}
