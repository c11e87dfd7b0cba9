//! `mutebridge targets`: each target's consumer group at a glance — its
//! circuit breaker, how far behind it is and how much waits for it — from
//! a running worker (its `/targets` endpoint) or, with no worker to ask,
//! from Kafka (committed offsets against the end of each partition).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use crate::kafka::{self, scan::Reader};
use crate::time::now_ms;
use crate::worker::metrics::KEEPER;
use crate::worker::target_group;

/// One pipeline, as either source tells it.
#[derive(Debug, Deserialize)]
struct Row {
    pipeline: String,
    group_id: String,
    circuit: Option<String>,
    /// Seconds since the oldest unfinished event was written.
    lag_seconds: f64,
    /// Events not consumed yet (Kafka) or waiting in it (worker).
    backlog: i64,
    /// Events consumed and not finished (a running worker only).
    buffered: Option<usize>,
}

/// `mutebridge targets`: where to read from, and how to print it.
#[derive(Debug, Args)]
pub struct TargetsArgs {
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// A worker's ops address, e.g. http://127.0.0.1:9091
    #[arg(long)]
    url: Option<String>,
    /// One JSON line per pipeline instead of the table.
    #[arg(long)]
    json: bool,
}

/// Prints the table; `--url` asks a running worker, else `--config`'s
/// cluster.
pub async fn run(args: TargetsArgs) -> anyhow::Result<ExitCode> {
    let rows = match args.url.as_deref() {
        Some(url) => from_worker(url).await?,
        None => from_kafka(args.config.as_deref()).await?,
    };
    if args.json {
        for r in &rows {
            println!(
                "{}",
                serde_json::json!({
                    "pipeline": r.pipeline, "group_id": r.group_id, "circuit": r.circuit,
                    "lag_seconds": r.lag_seconds, "backlog": r.backlog, "buffered": r.buffered,
                })
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<36} {:<10} {:>10} {:>9} {:>9}",
        "target", "consumer group", "circuit", "lag", "backlog", "buffered"
    );
    for r in &rows {
        let name = if r.pipeline == KEEPER {
            "(state keeper)".to_owned()
        } else {
            r.pipeline.clone()
        };
        println!(
            "{:<20} {:<36} {:<10} {:>9.1}s {:>9} {:>9}",
            name,
            r.group_id,
            r.circuit.as_deref().unwrap_or("-"),
            r.lag_seconds,
            r.backlog,
            r.buffered.map_or("-".into(), |b| b.to_string())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `GET {url}/targets` of a running worker.
async fn from_worker(url: &str) -> anyhow::Result<Vec<Row>> {
    #[derive(Deserialize)]
    struct Reply {
        pipelines: Vec<Row>,
    }
    let endpoint = format!("{}/targets", url.trim_end_matches('/'));
    let reply = reqwest::Client::new()
        .get(&endpoint)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| {
            format!("cannot reach the worker at {url}: is it running, and is this its ops address?")
        })?;
    if !reply.status().is_success() {
        bail!(
            "{endpoint} answered {}: is this a worker's address?",
            reply.status()
        );
    }
    Ok(reply
        .json::<Reply>()
        .await
        .context("not a worker's /targets reply")?
        .pipelines)
}

/// Each pipeline's consumer group, read from Kafka: the events past its
/// committed offsets, and the age of the oldest of them.
async fn from_kafka(config_file: Option<&Path>) -> anyhow::Result<Vec<Row>> {
    let (config, bootstrap) = super::connect(config_file)?;
    let policy = config.policy();
    let mut groups = vec![(KEEPER.to_owned(), config.worker.group_id.clone())];
    for name in config.targets.keys() {
        if !policy.only(name).is_empty() {
            groups.push((name.clone(), target_group(&config.worker, name)));
        }
    }
    tokio::task::spawn_blocking(move || {
        let reader = Reader::new(&config.kafka, &bootstrap)?;
        let topic = &config.kafka.topic;
        let partitions = reader.partition_count(topic)? as i32;
        let mut rows = Vec::new();
        for (pipeline, group_id) in groups {
            let consumer: BaseConsumer =
                kafka::consumer_config(&config.kafka, &bootstrap, &group_id)
                    .create()
                    .context(
                        "cannot create a Kafka consumer (check the [kafka.client] properties)",
                    )?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(topic, p);
            }
            let committed = consumer
                .committed_offsets(tpl, Duration::from_secs(15))
                .with_context(|| format!("cannot read the committed offsets of {group_id}"))?;
            let (mut backlog, mut oldest) = (0i64, None::<i64>);
            for e in committed.elements() {
                let (low, high) =
                    consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(15))?;
                let from = match e.offset() {
                    Offset::Offset(o) => o.max(low),
                    _ => low,
                };
                if from < high {
                    backlog += high - from;
                    if let Some(ts) = reader.timestamp_at(topic, e.partition(), from)? {
                        oldest = Some(oldest.map_or(ts, |o: i64| o.min(ts)));
                    }
                }
            }
            rows.push(Row {
                pipeline,
                group_id,
                circuit: None,
                lag_seconds: oldest.map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0),
                backlog,
                buffered: None,
            });
        }
        anyhow::Ok(rows)
    })
    .await?
}
