//! What the measurements share: the counting allocator, events and their
//! preloading, a worker running on its own task, committed offsets, and
//! medians.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use mutebridge::event::{Event, EventKind, Format, Mute, Scope, Source, SCHEMA_V1};
use mutebridge::producer_config;
use mutebridge::{Cluster, Config, Metrics, Worker};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::oneshot;

pub const TOPIC: &str = "im.group-events";
pub const PARTITIONS: i32 = 12;
pub const ZEGO_APP: u32 = 12345;
pub const ZEGO_SECRET: &str = "9193cc662a4c0ec135ec71fb57194b38";

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};

/// Bytes allocated and not freed while [`COUNTING`] is on.
pub static LIVE: AtomicI64 = AtomicI64::new(0);
/// Counting is on only while the heap of the group states is measured:
/// one counter shared by every thread would slow the throughput
/// measurements down (its cache line bounces between the cores).
pub static COUNTING: AtomicBool = AtomicBool::new(false);

/// mimalloc, as the binary runs with, counting the bytes it holds while
/// [`COUNTING`] is on.
pub struct Counting;

fn count(bytes: i64) {
    if COUNTING.load(Relaxed) {
        LIVE.fetch_add(bytes, Relaxed);
    }
}

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size() as i64);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        count(-(layout.size() as i64));
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        count(new as i64 - layout.size() as i64);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new) }
    }
}

/// A normalized mute event (`mute_all` or `unmute_all`) as ingest would
/// publish it, dated `at_ms`.
pub fn group_mute(i: usize, group: &str, muted: bool, at_ms: i64) -> Event {
    Event {
        schema: SCHEMA_V1.into(),
        id: format!("bench#app_{i}"),
        source: Source::Easemob,
        format: Format::GroupOpEvent,
        appkey: "bench#app".into(),
        scope: Scope::Group,
        group_id: group.into(),
        kind: if muted {
            EventKind::MuteAll
        } else {
            EventKind::UnmuteAll
        },
        operation: "UPDATE".into(),
        subtype: Some("MUTE".into()),
        operator: Some("@ppAdmin".into()),
        members: Vec::new(),
        mute: Some(Mute::All { all: muted }),
        occurred_at_ms: at_ms,
        received_at_ms: at_ms,
        attributes: Default::default(),
    }
}

/// A mute-all of `group`, now.
pub fn mute_all(i: usize, group: &str) -> Event {
    group_mute(i, group, true, now_ms())
}

/// Produces `n` mute-all events keyed by group, round-robin over `groups`
/// groups, and waits until Kafka has acknowledged all of them.
pub fn preload(config: &Config, bootstrap: &str, n: usize, groups: usize) -> anyhow::Result<()> {
    preload_events(config, bootstrap, n, |i| {
        let group = format!("{}", 262_000_000_000_000u64 + (i % groups) as u64);
        mute_all(i, &group)
    })
}

/// Produces `n` mute-all events, the `i`th for group `group(i)`.
pub fn preload_with(
    config: &Config,
    bootstrap: &str,
    n: usize,
    group: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    preload_events(config, bootstrap, n, |i| mute_all(i, &group(i)))
}

/// Produces the events `event(0..n)`, keyed by group, and waits until
/// Kafka has acknowledged all of them.
pub fn preload_events(
    config: &Config,
    bootstrap: &str,
    n: usize,
    event: impl Fn(usize) -> Event,
) -> anyhow::Result<()> {
    let producer: BaseProducer = producer_config(&config.kafka, bootstrap)
        .create()
        .context("bench producer")?;
    for i in 0..n {
        let e = event(i);
        let payload = serde_json::to_vec(&e)?;
        let record = BaseRecord::to(&config.kafka.topic)
            .key(e.group_id.as_str())
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
            bail!("the embedded cluster dropped the first {low} records of partition {p} (it keeps 5 MiB per partition): use fewer events");
        }
        kept += high;
    }
    if kept < n as i64 {
        bail!("{kept} of {n} preloaded events are in the topic");
    }
    Ok(())
}

/// Hands `record` to the producer, waiting while its queue is full.
pub fn send(producer: &BaseProducer, mut record: BaseRecord<'_, str, [u8]>) -> anyhow::Result<()> {
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

/// A consumer that reads a group's committed offsets (never joins it).
pub fn committed_reader(bootstrap: &str, group: &str) -> anyhow::Result<StreamConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?)
}

/// Sum of the group's committed offsets over `topic`'s partitions (with
/// one record per offset, the number of records committed).
pub fn committed_total(reader: &StreamConsumer, topic: &str) -> anyhow::Result<i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
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

/// Events target `target` finished with `outcome`, so far.
pub fn events(metrics: &Metrics, target: &str, outcome: &str) -> u64 {
    metrics
        .worker
        .events
        .target_events
        .with_label_values(&[target, outcome])
        .get()
}

/// A worker running on its own task until `stop`.
pub struct RunningWorker {
    pub metrics: Metrics,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    pub async fn start(config: &Config, cluster: &Cluster) -> anyhow::Result<RunningWorker> {
        let metrics = Metrics::new();
        let checked = mutebridge::config::Checked::new(config.clone())?;
        let worker = Worker::start(&checked, cluster, &metrics).await?;
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

    /// The SIGTERM path: finish, commit, leave the groups.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn ensure_before(deadline: Instant, what: &str) -> anyhow::Result<()> {
    if Instant::now() > deadline {
        bail!("timed out: {what}");
    }
    Ok(())
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
