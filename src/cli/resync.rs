//! `mutebridge resync`: make a target match the groups' current mute state
//! (after adding a provider, or after a provider lost data).
//!
//! It does not call the provider itself: that would race the workers and
//! their rate limit. For each selected group it publishes a `resync`
//! marker into the event topic, keyed by the group like its events, so
//! the worker that owns the group reaches it in the group's order and
//! applies the state it holds *then* (newer events included) through the
//! normal deliverer: the target's rate limit, retries and dead letters.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::message::Header;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::state::{for_each_state, Selection};
use crate::event::{Event, EventKind, HEADER_RESYNC_TARGET};
use crate::ingest::publish::event_headers;
use crate::kafka;
use crate::state::{guard, GroupState};
use crate::time::now_ms;

/// Markers handed to Kafka and not yet acknowledged, at most.
const WINDOW: usize = 1000;

/// `mutebridge resync`: which target, which groups.
#[derive(Debug, Args)]
pub struct ResyncArgs {
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The `[targets.NAME]` to bring in line.
    #[arg(long)]
    target: String,
    #[command(flatten)]
    selection: Selection,
    /// Print the groups that would be resynced; publish nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `mutebridge resync`.
pub async fn run(args: ResyncArgs) -> anyhow::Result<ExitCode> {
    let (config, target) = (args.config.as_deref(), &args.target);
    resync(config, target, &args.selection, args.dry_run).await?;
    Ok(ExitCode::SUCCESS)
}

/// Publishes one marker per selected group; returns how many.
async fn resync(
    config_file: Option<&Path>,
    target: &str,
    selection: &Selection,
    dry_run: bool,
) -> anyhow::Result<usize> {
    let (config, bootstrap) = super::connect(config_file)?;
    if !config.targets.contains_key(target) {
        let known: Vec<&str> = config.targets.keys().map(String::as_str).collect();
        bail!(
            "--target {target}: no [targets.{target}] in the config; defined: {}",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    }
    if !config.worker.track_state {
        bail!("worker.track_state is off in the config: the workers keep no mute state to resync from");
    }
    // Only which groups: the worker reads each state itself when it
    // reaches the marker.
    let mut states: Vec<GroupState> = Vec::new();
    for_each_state(&config, &bootstrap, selection, |s| {
        states.push(GroupState::new(&s.appkey, s.scope, &s.group_id));
        true
    })
    .await?;
    let total = states.len();
    let topic = &config.kafka.topic;
    eprintln!(
        "{total} group(s) in {} match; {} a resync marker for each into {topic} (target {target})",
        config.worker.state_topic,
        if dry_run {
            "would publish"
        } else {
            "publishing"
        }
    );
    if dry_run {
        for s in &states {
            println!(
                "would resync {} {} {} -> {target}",
                s.appkey,
                s.scope.as_str(),
                s.group_id
            );
        }
        return Ok(0);
    }
    let producer: FutureProducer = kafka::producer_config(&config.kafka, &bootstrap)
        .create()
        .context("cannot create the Kafka producer (check the [kafka.client] properties)")?;
    let run_id = now_ms();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut acknowledged = 0usize;
    for (i, s) in states.iter().enumerate() {
        let marker = marker(s, target, &format!("resync-{run_id}-{i}"));
        let payload = serde_json::to_vec(&marker).expect("events always serialize");
        let headers = event_headers(&marker).insert(Header {
            key: HEADER_RESYNC_TARGET,
            value: Some(target),
        });
        let mut record = FutureRecord::to(topic)
            .key(marker.group_id.as_str())
            .payload(&payload)
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                // The local queue is full: wait for the oldest, try again.
                Err((_, back)) => {
                    record = back;
                    let Some(oldest) = pending.pop_front() else {
                        bail!("the producer refuses records with nothing in flight; check [kafka.client]");
                    };
                    acknowledge(oldest, acknowledged, total, topic).await?;
                    acknowledged += 1;
                }
            }
        }
        while pending.len() >= WINDOW {
            let oldest = pending.pop_front().expect("window is not empty");
            acknowledge(oldest, acknowledged, total, topic).await?;
            acknowledged += 1;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!("[{acknowledged}/{total}] markers acknowledged");
            last_report = Instant::now();
        }
    }
    while let Some(oldest) = pending.pop_front() {
        acknowledge(oldest, acknowledged, total, topic).await?;
        acknowledged += 1;
    }
    let _ = producer.flush(Duration::from_secs(10));
    eprintln!(
        "published {acknowledged} resync marker(s) for target {target} into {topic} in {:.1?}; each group's worker applies its state when it reaches the marker (see mutebridge_actions_total{{target=\"{target}\"}})",
        started.elapsed()
    );
    Ok(acknowledged)
}

async fn acknowledge(
    delivery: DeliveryFuture,
    done: usize,
    total: usize,
    topic: &str,
) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => {
            bail!("cannot publish a resync marker to {topic}: {e}; {done} of {total} published (running resync again is safe)")
        }
        Err(_) => bail!("the producer shut down; {done} of {total} published"),
    }
}

/// The marker for one group: kind `resync`, the target in `attributes`.
fn marker(state: &GroupState, target: &str, id: &str) -> Event {
    let now = now_ms();
    let mut e = guard::not_a_callback(state, EventKind::Resync, id, now, now);
    e.attributes.insert("target".into(), target.into());
    e
}
