//! `cargo bench --bench worker`: how fast the worker turns events into
//! finished, committed work, measured on the embedded Kafka cluster.
//!
//! Three measurements, each repeated `--runs` times on a fresh cluster:
//!
//! 1. **Throughput to a no-op target.** `--events` normalized events (spread
//!    over `--groups` group IDs, keyed like ingest keys them) are preloaded
//!    into the topic. Then, in the same run, a *baseline* — a bare rdkafka
//!    consumer in its own group that only receives and commits — reads them,
//!    and the worker (policy: every event to a `discard` target) processes
//!    them twice, in groups of their own: with the mute state off and on
//!    (the stale-event guard judges every event, and each one writes its
//!    group's state record and waits for the ack). The two alternate which
//!    goes first. Reported: events/s from the first event finished to the
//!    last, and the time until the group's committed offsets reach the end.
//! 2. **Achieved rate against a limited provider.** A local ZEGO server
//!    (tests/providers, the same one the tests use) admits at most 20
//!    requests in any sliding second and refuses the rest with its real
//!    rate-limit code; the worker's ZEGO target is set to
//!    `rate_per_second = 20` (the limit for the whole group) and gets
//!    `--rate-events` mute-all events on distinct groups, evenly spread over
//!    the partitions. Measured for 1 and 2 worker replicas in one consumer
//!    group, in `partition_share` mode and in `redis` mode (against a
//!    `redis-server` the benchmark starts; skipped when there is none).
//!    Reported: calls/s between the first and the last call the provider
//!    accepted, and how many calls it rejected for rate. Then the pacing
//!    alone (no Kafka, no provider): governor's `until_ready` against
//!    sleeping to fixed slots, at the single-replica share.
//!
//! Summaries are medians over the runs.

#[path = "../tests/it/fixtures.rs"]
mod fixtures;
#[path = "../tests/it/providers.rs"]
mod providers;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use mutebridge::event::{Event, EventKind, Format, Mute, Scope, Source, SCHEMA_V1};
use mutebridge::key_partition;
use mutebridge::state::{GroupState, MemberState, MuteAllState};
use mutebridge::Config;
use mutebridge::Metrics;
use mutebridge::Worker;
use mutebridge::{producer_config, Cluster};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use providers::{FakeZego, Provider};

// The allocator the binary runs with, counting live bytes.
#[global_allocator]
static GLOBAL: Counting = Counting;

static LIVE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

struct Counting;

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(
            new as i64 - layout.size() as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new) }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Worker benchmark (see the module comment)")]
struct Args {
    /// Events preloaded for the throughput measurement.
    /// At most about 130 000: the embedded cluster keeps 5 MiB per partition.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Distinct group IDs they are spread over.
    #[arg(long, default_value_t = 1000)]
    groups: usize,
    /// Mute-all events sent through the 20 req/s target (20 per partition).
    #[arg(long, default_value_t = 240)]
    rate_events: usize,
    /// The provider's limit and the target's `rate_per_second`.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Repetitions of each measurement; summaries are medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Skip the throughput measurement.
    #[arg(long)]
    no_throughput: bool,
    /// Skip the rate measurement.
    #[arg(long)]
    no_rate: bool,
    /// Group states preloaded for the rebuild measurement.
    #[arg(long, default_value_t = 100_000)]
    state_groups: usize,
    /// Skip the state rebuild and memory measurement.
    #[arg(long)]
    no_state: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const TOPIC: &str = "im.group-events";
const PARTITIONS: i32 = 12;
const ZEGO_APP: u32 = 12345;
const ZEGO_SECRET: &str = "9193cc662a4c0ec135ec71fb57194b38";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        println!("worker benchmark: {} run(s) per measurement", args.runs);
        if !args.no_throughput {
            throughput(&args).await?;
        }
        if !args.no_rate {
            rate(&args).await?;
        }
        if !args.no_state {
            rebuild(&args).await?;
        }
        Ok(())
    })
}

// ------------------------------------------------------------ throughput

struct ThroughputRun {
    baseline_per_s: f64,
    /// Without and with the mute state.
    worker: [WorkerPass; 2],
}

struct WorkerPass {
    per_s: f64,
    /// From the worker's first finished event until its committed offsets
    /// cover every event.
    committed_s: f64,
}

async fn throughput(args: &Args) -> anyhow::Result<()> {
    println!(
        "\n## throughput to a discard target: {} events over {} groups, {PARTITIONS} partitions",
        args.events, args.groups
    );
    println!(
        "run | baseline consumer ev/s | worker, state off ev/s | worker, state on ev/s | on/off | all committed after (off / on)"
    );
    let mut runs = Vec::new();
    for i in 1..=args.runs {
        let r = throughput_run(args, i % 2 == 0).await?;
        let [off, on] = &r.worker;
        println!(
            "{i} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} s / {:.2} s",
            r.baseline_per_s,
            off.per_s,
            on.per_s,
            on.per_s / off.per_s,
            off.committed_s,
            on.committed_s
        );
        runs.push(r);
    }
    println!(
        "median | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} s / {:.2} s",
        median(runs.iter().map(|r| r.baseline_per_s)),
        median(runs.iter().map(|r| r.worker[0].per_s)),
        median(runs.iter().map(|r| r.worker[1].per_s)),
        median(runs.iter().map(|r| r.worker[1].per_s / r.worker[0].per_s)),
        median(runs.iter().map(|r| r.worker[0].committed_s)),
        median(runs.iter().map(|r| r.worker[1].committed_s)),
    );
    Ok(())
}

fn discard_config(track_state: bool) -> anyhow::Result<Config> {
    let group = worker_group(track_state);
    let text = format!(
        r#"
[kafka]
topic = "{TOPIC}"
partitions = {PARTITIONS}

[worker]
group_id = "{group}"
commit_interval_ms = 100
track_state = {track_state}

[targets.sink]
kind = "discard"

[[policy.rules]]
name = "everything to the sink"
then = [{{ target = "sink" }}]
"#
    );
    Ok(Config::parse(&text, Path::new("bench-worker.toml"))?)
}

fn worker_group(track_state: bool) -> &'static str {
    if track_state {
        "bench-worker-state"
    } else {
        "bench-worker"
    }
}

async fn throughput_run(args: &Args, state_first: bool) -> anyhow::Result<ThroughputRun> {
    let config = discard_config(false)?;
    let cluster = Cluster::connect(&config.kafka).await?;
    let bootstrap = cluster.bootstrap_servers().to_owned();
    preload(&config, &bootstrap, args.events, args.groups)?;

    let baseline_per_s = {
        let bootstrap = bootstrap.clone();
        let n = args.events;
        tokio::task::spawn_blocking(move || baseline_consume(&bootstrap, n)).await??
    };
    let (first, second) = if state_first {
        let on = worker_pass(args, &cluster, true).await?;
        (worker_pass(args, &cluster, false).await?, on)
    } else {
        let off = worker_pass(args, &cluster, false).await?;
        (off, worker_pass(args, &cluster, true).await?)
    };
    Ok(ThroughputRun {
        baseline_per_s,
        worker: [first, second],
    })
}

/// One worker, in a consumer group of its own, through every preloaded
/// event.
async fn worker_pass(
    args: &Args,
    cluster: &Cluster,
    track_state: bool,
) -> anyhow::Result<WorkerPass> {
    let config = discard_config(track_state)?;
    let bootstrap = cluster.bootstrap_servers();
    let worker = RunningWorker::start(&config, cluster).await?;
    let metrics = worker.metrics.clone();
    let applied = metrics.worker.events.with_label_values(&["applied"]);
    let total = args.events as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while applied.get() == 0 {
        ensure_before(deadline, "the worker finished no event")?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (first, first_count) = (Instant::now(), applied.get());
    while applied.get() < total {
        ensure_before(deadline, "the worker did not finish every event")?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let per_s = (total - first_count) as f64 / first.elapsed().as_secs_f64();
    let committer = committed_reader(bootstrap, worker_group(track_state))?;
    loop {
        let committed = committed_total(&committer)?;
        if committed >= total as i64 {
            break;
        }
        ensure_before(deadline, "the worker never committed every event")?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let committed_s = first.elapsed().as_secs_f64();
    worker.stop().await?;
    let other: u64 = ["dead_lettered", "no_match", "stale", "duplicate"]
        .iter()
        .map(|o| metrics.worker.events.with_label_values(&[o]).get())
        .sum();
    if other != 0 {
        bail!("{other} events were not applied");
    }
    if track_state && metrics.worker.state_writes.get() != total {
        bail!(
            "{} state records written for {total} events",
            metrics.worker.state_writes.get()
        );
    }
    Ok(WorkerPass { per_s, committed_s })
}

/// A normalized mute-all event as ingest would publish it.
fn mute_all(i: usize, group: &str) -> Event {
    let now = now_ms();
    Event {
        schema: SCHEMA_V1.into(),
        id: format!("bench#app_{i}"),
        source: Source::Easemob,
        format: Format::GroupOpEvent,
        appkey: "bench#app".into(),
        scope: Scope::Group,
        group_id: group.into(),
        kind: EventKind::MuteAll,
        operation: "UPDATE".into(),
        subtype: Some("MUTE".into()),
        operator: Some("@ppAdmin".into()),
        members: Vec::new(),
        mute: Some(Mute::All { all: true }),
        occurred_at_ms: now,
        received_at_ms: now,
        attributes: Default::default(),
    }
}

/// Produces `n` mute-all events keyed by group, round-robin over `groups`
/// groups, and waits until Kafka has acknowledged all of them.
fn preload(config: &Config, bootstrap: &str, n: usize, groups: usize) -> anyhow::Result<()> {
    preload_with(config, bootstrap, n, |i| {
        format!("{}", 262_000_000_000_000u64 + (i % groups) as u64)
    })
}

/// Produces `n` mute-all events, the `i`th for group `group(i)`, and waits
/// until Kafka has acknowledged all of them.
fn preload_with(
    config: &Config,
    bootstrap: &str,
    n: usize,
    group: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    let producer: BaseProducer = producer_config(&config.kafka, bootstrap)
        .create()
        .context("bench producer")?;
    for i in 0..n {
        let group = group(i);
        let payload = serde_json::to_vec(&mute_all(i, &group))?;
        let record = BaseRecord::to(&config.kafka.topic)
            .key(group.as_str())
            .payload(payload.as_slice());
        send(&producer, record)?;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("preloaded events not acknowledged")?;
    // The embedded (mock) cluster keeps at most 5 MiB per partition and
    // drops the oldest records beyond that.
    let mut kept = 0;
    for p in 0..PARTITIONS {
        let (low, high) =
            producer
                .client()
                .fetch_watermarks(&config.kafka.topic, p, Duration::from_secs(5))?;
        if low != 0 {
            bail!("the embedded cluster dropped the first {low} records of partition {p} (it keeps 5 MiB per partition): use fewer --events");
        }
        kept += high;
    }
    if kept != n as i64 {
        bail!("{kept} of {n} preloaded events are in the topic");
    }
    Ok(())
}

/// Hands `record` to the producer, waiting while its queue is full.
fn send(producer: &BaseProducer, mut record: BaseRecord<'_, str, [u8]>) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e).context("bench producer"),
        }
    }
    producer.poll(Duration::ZERO);
    Ok(())
}

/// The floor: a bare consumer group member that receives `n` records and
/// commits every 100 ms, with no decoding or policy. Returns records/s from
/// the first record to the last.
fn baseline_consume(bootstrap: &str, n: usize) -> anyhow::Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "bench-baseline")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[TOPIC])?;
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

fn committed_reader(bootstrap: &str, group: &str) -> anyhow::Result<StreamConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?)
}

/// Sum of the group's committed offsets over the topic's partitions (with
/// one record per offset, the number of records committed).
fn committed_total(reader: &StreamConsumer) -> anyhow::Result<i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let committed = reader.committed_offsets(tpl, Duration::from_secs(5))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum())
}

// ------------------------------------------------------------ rate

/// How the replicas keep to the limit, as `rate_limit.mode` names it.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    PartitionShare,
    Redis,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::PartitionShare => "partition_share",
            Mode::Redis => "redis",
        }
    }
}

struct RateRun {
    calls: usize,
    per_s: f64,
    rejected_for_rate: u64,
}

async fn rate(args: &Args) -> anyhow::Result<()> {
    println!(
        "\n## achieved rate: {} mute-alls (distinct groups, evenly spread over {PARTITIONS} partitions) to a ZEGO server allowing {}/s in any sliding second; target rate_per_second = {}, headroom 0.95",
        args.rate_events, args.rate, args.rate
    );
    // The record size the sizing in the README multiplies out.
    let sample = serde_json::to_vec(&mute_all(0, "262246968131585"))?;
    println!(
        "(one normalized mute-all event: {} bytes of JSON value, a 15-byte key)",
        sample.len()
    );
    let redis = if fixtures::redis_installed() {
        Some(fixtures::RedisServer::start())
    } else {
        println!("(redis mode skipped: no redis-server; apt-get install redis-server)");
        None
    };
    println!("mode | replicas | run | calls accepted | calls/s | of the limit | rejected for rate (660300005)");
    let mut summary = Vec::new();
    for mode in [Mode::PartitionShare, Mode::Redis] {
        let url = match (mode, &redis) {
            (Mode::PartitionShare, _) => None,
            (Mode::Redis, Some(r)) => Some(r.url()),
            (Mode::Redis, None) => continue,
        };
        for replicas in [1, 2] {
            let mut runs = Vec::new();
            for i in 1..=args.runs {
                let r = rate_run(args, mode, url.as_deref(), replicas).await?;
                println!(
                    "{} | {replicas} | {i} | {} | {:.2} | {:.1} % | {}",
                    mode.name(),
                    r.calls,
                    r.per_s,
                    100.0 * r.per_s / f64::from(args.rate),
                    r.rejected_for_rate
                );
                runs.push(r);
            }
            summary.push((mode, replicas, runs));
        }
    }
    println!("\nmode | replicas | median calls/s | of the limit | rejected for rate (all runs)");
    for (mode, replicas, runs) in &summary {
        let per_s = median(runs.iter().map(|r| r.per_s));
        println!(
            "{} | {replicas} | {per_s:.2} | {:.1} % | {}",
            mode.name(),
            100.0 * per_s / f64::from(args.rate),
            runs.iter().map(|r| r.rejected_for_rate).sum::<u64>()
        );
    }
    pacing(args).await;
    Ok(())
}

/// Why one replica on its share paces a little under its rate: governor
/// counts the next cell from when the caller actually woke, so each
/// wake-up's lateness (tokio's timer rounds up to the millisecond) is lost;
/// sleeping to fixed slots (what the Redis schedule hands out) loses none.
/// The same rate, the same calls, no Kafka and no provider.
async fn pacing(args: &Args) {
    use governor::{Quota, RateLimiter};
    const CALLS: u32 = 100;
    let per_s = f64::from(args.rate) * 0.95;
    let period = Duration::from_secs_f64(1.0 / per_s);
    println!(
        "\n## pacing alone: {CALLS} waits at {per_s:.2}/s (the single-replica share)\nrun | governor until_ready, calls/s | sleep_until fixed slots, calls/s"
    );
    let (mut governed, mut slotted) = (Vec::new(), Vec::new());
    for i in 1..=args.runs {
        let limiter = RateLimiter::direct(Quota::with_period(period).expect("positive period"));
        let start = Instant::now();
        for _ in 0..CALLS {
            limiter.until_ready().await;
        }
        let g = f64::from(CALLS - 1) / start.elapsed().as_secs_f64();
        let start = tokio::time::Instant::now();
        for k in 0..CALLS {
            tokio::time::sleep_until(start + period * k).await;
        }
        let f = f64::from(CALLS - 1) / start.elapsed().as_secs_f64();
        println!("{i} | {g:.2} | {f:.2}");
        governed.push(g);
        slotted.push(f);
    }
    println!(
        "median | {:.2} | {:.2}",
        median(governed.into_iter()),
        median(slotted.into_iter())
    );
}

async fn rate_run(
    args: &Args,
    mode: Mode,
    redis_url: Option<&str>,
    replicas: usize,
) -> anyhow::Result<RateRun> {
    let limit = usize::try_from(args.rate)?;
    let zego = Arc::new(FakeZego::start_sliding(ZEGO_APP, ZEGO_SECRET, limit).await);
    let redis = redis_url
        .map(|u| format!("url = \"{u}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"
[kafka]
topic = "{TOPIC}"
partitions = {PARTITIONS}

[worker]
group_id = "bench-rate"
commit_interval_ms = 100

[targets.zego]
kind = "zego"
base_url = "{}"
app_id = {ZEGO_APP}
server_secret = "{ZEGO_SECRET}"
from_user_id = "moderation-bot"
rate_per_second = {}
[targets.zego.rate_limit]
mode = "{}"
{redis}
[[policy.rules]]
name = "mirror group mutes to ZEGO"
when = {{ scope = "group", kinds = ["mute_all"] }}
then = [{{ target = "zego", group = "{{group_id}}" }}]
"#,
        zego.base_url(),
        args.rate,
        mode.name(),
    );
    let config = Config::parse(&text, Path::new("bench-rate.toml"))?;
    let cluster = Cluster::connect(&config.kafka).await?;
    let mut workers = Vec::new();
    for _ in 0..replicas {
        workers.push(RunningWorker::start(&config, &cluster).await?);
    }
    // The events go in once the group has settled, so every replica works
    // from the first call on.
    let share = f64::from(args.rate) * 0.95 / replicas as f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !workers.iter().all(|w| {
        let s = w
            .metrics
            .worker
            .rate_limit_share
            .with_label_values(&["zego"])
            .get();
        (s - share).abs() < 1e-6
    }) {
        ensure_before(
            deadline,
            "the consumer group did not split the partitions evenly",
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let groups = fixtures::spread_groups(args.rate_events, PARTITIONS, |i| {
        format!("{}", 263_000_000_000_000u64 + i)
    });
    preload_with(&config, cluster.bootstrap_servers(), groups.len(), |i| {
        groups[i].clone()
    })?;
    let deadline = Instant::now() + Duration::from_secs(60 + 2 * args.rate_events as u64);
    let applied = |w: &RunningWorker| {
        w.metrics
            .worker
            .events
            .with_label_values(&["applied"])
            .get()
    };
    while workers.iter().map(applied).sum::<u64>() < args.rate_events as u64 {
        ensure_before(deadline, "the workers did not apply every event")?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in workers {
        w.stop().await?;
    }
    let calls = zego.calls();
    if calls.len() != args.rate_events {
        bail!(
            "the provider accepted {} calls for {} events",
            calls.len(),
            args.rate_events
        );
    }
    let span = calls
        .last()
        .expect("calls")
        .at
        .duration_since(calls[0].at)
        .as_secs_f64();
    Ok(RateRun {
        calls: calls.len(),
        per_s: (calls.len() - 1) as f64 / span,
        rejected_for_rate: zego.rate_limited(),
    })
}

// ------------------------------------------------------------ state rebuild

struct RebuildRun {
    rebuild_s: f64,
    bytes_per_group: f64,
}

async fn rebuild(args: &Args) -> anyhow::Result<()> {
    let n = args.state_groups;
    println!(
        "\n## state rebuild: {n} group states (mute-all + 2 members each) in the state topic, {PARTITIONS} partitions"
    );
    println!("run | rebuild s | groups/s | heap bytes per group | heap for 1 M groups");
    let mut runs = Vec::new();
    for i in 1..=args.runs {
        let r = rebuild_run(n).await?;
        println!(
            "{i} | {:.2} | {:.0} | {:.0} | {:.0} MiB",
            r.rebuild_s,
            n as f64 / r.rebuild_s,
            r.bytes_per_group,
            r.bytes_per_group * 1e6 / 1048576.0
        );
        runs.push(r);
    }
    let rebuild_s = median(runs.iter().map(|r| r.rebuild_s));
    let per_group = median(runs.iter().map(|r| r.bytes_per_group));
    println!(
        "median | {rebuild_s:.2} | {:.0} | {per_group:.0} | {:.0} MiB",
        n as f64 / rebuild_s,
        per_group * 1e6 / 1048576.0
    );
    Ok(())
}

/// A group's state as the worker writes it after a mute-all and a member
/// mute of two members.
fn group_state(i: usize) -> GroupState {
    let now = now_ms();
    let group = format!("{}", 262_000_000_000_000u64 + i as u64);
    let mut state = GroupState::new("bench#app", Scope::Group, &group);
    state.mute_all = Some(MuteAllState {
        muted: true,
        at_ms: now,
        event_id: format!("bench#app_{}", uuid_like(i, 0)),
    });
    for m in 0..2 {
        state.members.insert(
            format!("user-{i}-{m}"),
            MemberState {
                muted: true,
                until_ms: Some(now + 3_600_000),
                at_ms: now,
                event_id: format!("bench#app_{}", uuid_like(i, 1)),
            },
        );
    }
    state.updated_at_ms = now;
    state
}

/// A callId-sized unique string (Easemob's are `{appkey}_{uuid}`).
fn uuid_like(i: usize, salt: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i, salt)
}

async fn rebuild_run(n: usize) -> anyhow::Result<RebuildRun> {
    let config = discard_config(true)?;
    let cluster = Cluster::connect(&config.kafka).await?;
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let state_topic = config.worker.state_topic.clone();
    cluster
        .embedded()
        .expect("embedded")
        .create_topic(&state_topic, PARTITIONS)?;
    let records: Vec<(i32, String, Vec<u8>)> = (0..n)
        .map(|i| {
            let s = group_state(i);
            let p = key_partition(s.group_id.as_bytes(), PARTITIONS);
            (p, s.key(), serde_json::to_vec(&s).expect("state"))
        })
        .collect();
    {
        let producer: BaseProducer = producer_config(&config.kafka, &bootstrap)
            .create()
            .context("bench producer")?;
        for (p, key, payload) in &records {
            let record = BaseRecord::to(&state_topic)
                .partition(*p)
                .key(key.as_str())
                .payload(payload.as_slice());
            send(&producer, record)?;
        }
        producer.flush(Duration::from_secs(60))?;
        for p in 0..PARTITIONS {
            let (low, _) =
                producer
                    .client()
                    .fetch_watermarks(&state_topic, p, Duration::from_secs(5))?;
            if low != 0 {
                bail!("the embedded cluster dropped states of partition {p}: use fewer --state-groups");
            }
        }
    }

    // The heap the states take, held the way the worker holds them: one
    // map per partition from record key to parsed state.
    let before = LIVE.load(std::sync::atomic::Ordering::Relaxed);
    let mut tables: HashMap<i32, HashMap<String, GroupState>> = HashMap::new();
    for (p, key, payload) in &records {
        let state: GroupState = serde_json::from_slice(payload)?;
        tables.entry(*p).or_default().insert(key.clone(), state);
    }
    let bytes_per_group =
        (LIVE.load(std::sync::atomic::Ordering::Relaxed) - before) as f64 / n as f64;
    drop(tables);
    drop(records);

    let worker = RunningWorker::start(&config, &cluster).await?;
    let metrics = worker.metrics.clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    while metrics.worker.state_groups.get() < n as i64
        || metrics.worker.state_rebuild.get_sample_count() == 0
    {
        ensure_before(deadline, "the worker did not rebuild every state")?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rebuild_s = metrics.worker.state_rebuild.get_sample_sum();
    worker.stop().await?;
    Ok(RebuildRun {
        rebuild_s,
        bytes_per_group,
    })
}

// ------------------------------------------------------------ helpers

/// A worker running on its own task until `stop`.
struct RunningWorker {
    metrics: Metrics,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    async fn start(config: &Config, cluster: &Cluster) -> anyhow::Result<RunningWorker> {
        let metrics = Metrics::new();
        let worker = Worker::start(config, cluster, &metrics).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        Ok(RunningWorker {
            metrics,
            stop,
            task,
        })
    }

    /// The SIGTERM path: finish, commit, leave the group.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ensure_before(deadline: Instant, what: &str) -> anyhow::Result<()> {
    if Instant::now() > deadline {
        bail!("timed out: {what}");
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
