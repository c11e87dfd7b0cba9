//! Throughput to a no-op target. `--events` normalized mute-all events
//! (spread over `--groups` group IDs, keyed like ingest keys them) are
//! preloaded. Then, in the same run, a *baseline* (a bare rdkafka consumer
//! group member that only receives and commits) reads them, and the worker
//! (policy: every event to a `discard` target) processes them twice, in
//! consumer groups of its own: with the mute state off and on (the state
//! keeper judges every event and writes its group's state record). The two
//! passes alternate which goes first. Reported: the target's events/s from
//! its first finished event to its last, and the time until the target's
//! consumer group has committed every event. With `--kafka BOOTSTRAP` (a
//! real cluster, e.g. `mutebridge kafka start`'s), each run is made on the
//! embedded cluster and on the real one, alternating which goes first.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mutebridge::{Cluster, Config};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};

use crate::common::*;
use crate::Args;

struct Run {
    baseline_per_s: f64,
    /// Without and with the mute state.
    worker: [Pass; 2],
}

pub struct Pass {
    pub per_s: f64,
    /// From the first finished event until the committed offsets cover
    /// every event.
    pub committed_s: f64,
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    println!(
        "\n## throughput to a discard target: {} events over {} groups, {PARTITIONS} partitions",
        args.events, args.groups
    );
    println!(
        "run | cluster | baseline consumer ev/s | worker, state off ev/s | worker, state on ev/s | on/off | all committed after (off / on)"
    );
    let clusters: Vec<Option<&str>> = match &args.kafka {
        None => vec![None],
        Some(real) => vec![None, Some(real.as_str())],
    };
    let mut runs: Vec<(Option<&str>, Run)> = Vec::new();
    for i in 1..=args.runs {
        // Alternate which cluster goes first.
        let order: Vec<Option<&str>> = (0..clusters.len())
            .map(|k| clusters[(k + i) % clusters.len()])
            .collect();
        for real in order {
            let r = one(args, i % 2 == 0, real, i).await?;
            let [off, on] = &r.worker;
            println!(
                "{i} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} s / {:.2} s",
                cluster_name(real),
                r.baseline_per_s,
                off.per_s,
                on.per_s,
                on.per_s / off.per_s,
                off.committed_s,
                on.committed_s
            );
            runs.push((real, r));
        }
    }
    for real in clusters {
        let runs: Vec<&Run> = runs
            .iter()
            .filter(|(c, _)| *c == real)
            .map(|(_, r)| r)
            .collect();
        println!(
            "median | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} s / {:.2} s",
            cluster_name(real),
            median(runs.iter().map(|r| r.baseline_per_s)),
            median(runs.iter().map(|r| r.worker[0].per_s)),
            median(runs.iter().map(|r| r.worker[1].per_s)),
            median(runs.iter().map(|r| r.worker[1].per_s / r.worker[0].per_s)),
            median(runs.iter().map(|r| r.worker[0].committed_s)),
            median(runs.iter().map(|r| r.worker[1].committed_s)),
        );
    }
    Ok(())
}

fn cluster_name(real: Option<&str>) -> &'static str {
    match real {
        None => "embedded",
        Some(_) => "real",
    }
}

/// A config whose `targets` discard every event, in consumer groups named
/// after `group`.
pub fn discard_config(group: &str, targets: &[&str], track_state: bool) -> anyhow::Result<Config> {
    let mut text = format!(
        r#"
[kafka]
topic = "{TOPIC}"
partitions = {PARTITIONS}

[worker]
group_id = "{group}"
commit_interval_ms = 100
track_state = {track_state}
# Each pass its own states: the same events must not be duplicates.
state_topic = "{group}.state"
"#
    );
    for t in targets {
        text.push_str(&format!(
            "[targets.{t}]\nkind = \"discard\"\n[[policy.rules]]\nname = \"everything to {t}\"\nthen = [{{ target = \"{t}\" }}]\n"
        ));
    }
    Ok(Config::parse(&text, Path::new("bench-worker.toml"))?)
}

fn group(track_state: bool) -> &'static str {
    if track_state {
        "bench-worker-state"
    } else {
        "bench-worker"
    }
}

/// `config` on the real cluster `real`, in a topic and consumer groups of
/// run `i`'s own (a real cluster keeps what earlier runs left).
fn on_cluster(mut config: Config, real: Option<&str>, i: usize) -> Config {
    if let Some(real) = real {
        let run = format!("{}-{i}", std::process::id());
        config.kafka.brokers = real.to_owned();
        config.kafka.topic = format!("{TOPIC}-{run}");
        config.worker.group_id = format!("{}-{run}", config.worker.group_id);
        config.worker.state_topic = format!("{}.state", config.worker.group_id);
        config.worker.dlq_topic = format!("{}.dlq", config.worker.group_id);
    }
    config
}

async fn one(args: &Args, state_first: bool, real: Option<&str>, i: usize) -> anyhow::Result<Run> {
    let config = on_cluster(discard_config(group(false), &["sink"], false)?, real, i);
    let cluster = Cluster::connect(&config.kafka).await?;
    let bootstrap = cluster.bootstrap_servers().to_owned();
    preload(&config, &bootstrap, args.events, args.groups)?;

    let baseline_per_s = {
        let bootstrap = bootstrap.clone();
        let n = args.events;
        let topic = config.kafka.topic.clone();
        tokio::task::spawn_blocking(move || baseline_consume(&bootstrap, &topic, n)).await??
    };
    let pass = |state| {
        let config = discard_config(group(state), &["sink"], state).map(|c| on_cluster(c, real, i));
        let cluster = &cluster;
        async move { worker_pass(args.events, cluster, &config?, &["sink"]).await }
    };
    let (first, second) = if state_first {
        let on = pass(true).await?;
        (pass(false).await?.remove(0), on)
    } else {
        let off = pass(false).await?.remove(0);
        (off, pass(true).await?)
    };
    Ok(Run {
        baseline_per_s,
        worker: [first, second.into_iter().next().expect("one target")],
    })
}

/// One worker with `config` through `total` preloaded events; each
/// target's events/s and commit time, in `targets` order.
pub async fn worker_pass(
    total: usize,
    cluster: &Cluster,
    config: &Config,
    targets: &[&str],
) -> anyhow::Result<Vec<Pass>> {
    let bootstrap = cluster.bootstrap_servers();
    let worker = RunningWorker::start(config, cluster).await?;
    let metrics = worker.metrics.clone();
    let total = total as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    let applied = |t: &str| events(&metrics, t, "applied");
    let mut firsts = vec![None; targets.len()];
    let mut lasts = vec![None; targets.len()];
    while lasts.iter().any(Option::is_none) {
        ensure_before(deadline, "the worker did not finish every event")?;
        for (i, t) in targets.iter().enumerate() {
            let n = applied(t);
            if n > 0 && firsts[i].is_none() {
                firsts[i] = Some((Instant::now(), n));
            }
            if n >= total && lasts[i].is_none() {
                lasts[i] = Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The state keeper reads every event too.
    let kept = || -> u64 {
        [
            "recorded",
            "unchanged",
            "stale",
            "not_mute",
            "removed",
            "undecodable",
        ]
        .iter()
        .map(|o| {
            metrics
                .worker
                .events
                .state_events
                .with_label_values(&[o])
                .get()
        })
        .sum()
    };
    while kept() < total {
        ensure_before(deadline, "the state keeper did not finish every event")?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut passes = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let (first, first_count) = firsts[i].expect("first");
        let last = lasts[i].expect("last");
        let per_s = (total - first_count) as f64 / last.duration_since(first).as_secs_f64();
        let committer = committed_reader(bootstrap, &format!("{}.{t}", config.worker.group_id))?;
        while committed_total(&committer, &config.kafka.topic)? < total as i64 {
            ensure_before(deadline, "the worker never committed every event")?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        passes.push(Pass {
            per_s,
            committed_s: first.elapsed().as_secs_f64(),
        });
    }
    worker.stop().await?;
    for t in targets {
        let other: u64 = [
            "dead_lettered",
            "no_match",
            "stale",
            "duplicate",
            "superseded",
        ]
        .iter()
        .map(|o| events(&metrics, t, o))
        .sum();
        if other != 0 {
            bail!("{other} events were not applied at {t}");
        }
    }
    let written = metrics
        .worker
        .pipelines
        .state_writes
        .with_label_values(&["state"])
        .get();
    if config.worker.track_state && written != total {
        let outcomes: Vec<String> = ["recorded", "unchanged", "stale", "not_mute"]
            .iter()
            .map(|o| {
                format!(
                    "{o} {}",
                    metrics
                        .worker
                        .events
                        .state_events
                        .with_label_values(&[o])
                        .get()
                )
            })
            .collect();
        bail!(
            "{written} state records written for {total} events ({})",
            outcomes.join(", ")
        );
    }
    Ok(passes)
}

/// The floor: a bare consumer group member that receives `n` records and
/// commits every 100 ms, with no decoding or policy. Returns records/s from
/// the first record to the last.
fn baseline_consume(bootstrap: &str, topic: &str, n: usize) -> anyhow::Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("bench-baseline-{topic}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[topic])?;
        let mut first: Option<Instant> = None;
        let mut last_commit = Instant::now();
        let mut bytes = 0usize;
        for i in 0..n {
            let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
                .await
                .with_context(|| format!("baseline consumer stalled after {i} of {n} records"))??;
            bytes += m.payload().map_or(0, <[u8]>::len);
            consumer.store_offset_from_message(&m)?;
            first.get_or_insert_with(Instant::now);
            if last_commit.elapsed() >= Duration::from_millis(100) {
                consumer.commit_consumer_state(CommitMode::Async)?;
                last_commit = Instant::now();
            }
        }
        consumer.commit_consumer_state(CommitMode::Sync)?;
        std::hint::black_box(bytes);
        let first = first.expect("at least one record");
        Ok((n - 1) as f64 / first.elapsed().as_secs_f64())
    })
}
