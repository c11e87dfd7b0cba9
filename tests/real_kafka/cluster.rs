//! The tier's one Apache Kafka cluster: three combined nodes on loopback
//! (replication factor 3, `min.insync.replicas` 2, no auto-created topics),
//! started by the first test that needs it and killed with this process.
//! Tests take turns ([`turn`]): a broker fault is the whole cluster's.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mutebridge::config::Config;
use mutebridge::local_kafka::{Home, Lifetime, LocalKafka, NodeState, Spec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::test_config;

static CLUSTER: OnceLock<LocalKafka> = OnceLock::new();
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test's exclusive use of the cluster, healed (every node running and
/// registered) when it begins.
pub struct Turn {
    _guard: tokio::sync::MutexGuard<'static, ()>,
    pub kafka: &'static LocalKafka,
}

impl Turn {
    pub fn bootstrap(&self) -> String {
        self.kafka.bootstrap_servers()
    }
}

/// Waits for the cluster (starting it the first time) and this test's turn.
pub async fn turn() -> Turn {
    let guard = TURN.lock().await;
    let kafka = tokio::task::spawn_blocking(|| {
        let kafka = CLUSTER.get_or_init(start);
        heal(kafka);
        kafka
    })
    .await
    .unwrap();
    Turn {
        _guard: guard,
        kafka,
    }
}

/// The jars' cache (shared with `mutebridge kafka`) and this run's cluster
/// directory, under the workspace's target/.
fn start() -> LocalKafka {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let home = Home::new(target.join("kafka"));
    let dir = home.root().join(format!("test-{}", std::process::id()));
    // Clusters of earlier runs died with their test process.
    if let Ok(entries) = std::fs::read_dir(home.root()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("test-") {
                if !PathBuf::from(format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let started = Instant::now();
    let spec = Spec {
        nodes: 3,
        base_port: 0,
        heap_mb: 320,
        overrides: vec![],
    };
    let kafka = LocalKafka::create(&home, &dir, &spec, Lifetime::ThisProcess).unwrap_or_else(|e| {
        panic!("cannot make the real-Kafka tier's cluster (it needs Java 17+ and Maven; .ci/run installs them): {e:#}")
    });
    kafka
        .start()
        .unwrap_or_else(|e| panic!("the real-Kafka tier's cluster did not start: {e:#}"));
    eprintln!(
        "real Kafka: 3 nodes at {} ready in {:.1} s",
        kafka.bootstrap_servers(),
        started.elapsed().as_secs_f64()
    );
    kafka
}

/// Every node running and registered again, whatever the last test left.
fn heal(kafka: &LocalKafka) {
    for node in kafka.nodes() {
        match kafka.state(node.id) {
            NodeState::Running => {}
            NodeState::Paused => kafka.resume(node.id).unwrap(),
            NodeState::Stopped => kafka.restart(node.id).unwrap(),
        }
    }
    kafka
        .wait_brokers(kafka.nodes().len(), Duration::from_secs(120))
        .unwrap();
}

/// A name no earlier test used.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

/// The tier's config: the test app, this cluster, topics and consumer
/// groups of this test only, six partitions, quick worker settings.
pub fn config(turn: &Turn, name: &str) -> Config {
    let mut c = test_config();
    c.kafka.brokers = turn.bootstrap();
    c.kafka.topic = unique(name);
    c.kafka.partitions = 6;
    c.worker.state_topic = format!("{}.state", c.kafka.topic);
    c.worker.dlq_topic = format!("{}.dlq", c.kafka.topic);
    c.worker.group_id = unique(&format!("{name}-workers"));
    c.easemob.dedup_by_content = false;
    crate::support::fast_worker(&mut c);
    c
}

fn client(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "real-kafka-tier-probe")
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap()
}

/// The broker leading `topic`/`partition`.
pub fn leader(bootstrap: &str, topic: &str, partition: i32) -> i32 {
    let metadata = client(bootstrap)
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .unwrap();
    t.partitions()
        .iter()
        .find(|p| p.id() == partition)
        .unwrap()
        .leader()
}

/// Whether every partition of `topic` has a leader and all its replicas
/// in sync.
pub fn fully_in_sync(bootstrap: &str, topic: &str) -> bool {
    let Ok(metadata) = client(bootstrap).fetch_metadata(Some(topic), Duration::from_secs(10))
    else {
        return false;
    };
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .is_some_and(|t| {
            !t.partitions().is_empty()
                && t.partitions()
                    .iter()
                    .all(|p| p.leader() >= 0 && p.isr().len() == p.replicas().len())
        })
}

/// Whether no partition of `topic` is led by `node`.
pub fn leads_nothing(bootstrap: &str, topic: &str, node: i32) -> bool {
    let Ok(metadata) = client(bootstrap).fetch_metadata(Some(topic), Duration::from_secs(10))
    else {
        return false;
    };
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .is_some_and(|t| {
            t.partitions()
                .iter()
                .all(|p| p.leader() >= 0 && p.leader() != node)
        })
}

/// Each partition's end (high watermark).
pub fn ends(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c = client(bootstrap);
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

/// What consumer group `group` has committed on each partition of `topic`
/// (0 when nothing: the start of a partition that is empty).
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        })
        .collect()
}

/// Waits up to `limit` until consumer group `group` has committed every
/// partition of `topic` to its end as of now: all it was given is done.
/// The ends and the offsets committed last, when it has not.
pub async fn committed_to_end(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    limit: Duration,
) -> Result<(), String> {
    let ends = ends(bootstrap, topic, partitions);
    let (b, g, t, e) = (
        bootstrap.to_owned(),
        group.to_owned(),
        topic.to_owned(),
        ends.clone(),
    );
    if eventually(limit, move || committed(&b, &g, &t, partitions) == e).await {
        return Ok(());
    }
    let last = committed(bootstrap, group, topic, partitions);
    Err(format!("{group} committed {last:?}, the ends are {ends:?}"))
}

/// The node coordinating consumer group `group`: the leader of its
/// `__consumer_offsets` partition (Java's `abs(hashCode) % partitions`;
/// the tier's brokers have 3).
pub fn coordinator(bootstrap: &str, group: &str) -> i32 {
    let hash = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
    // Kafka's Utils.abs: i32::MIN maps to 0.
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    leader(bootstrap, "__consumer_offsets", abs % 3)
}

/// Polls `check` (on a blocking thread) every 200 ms until it holds or
/// `limit` passes.
pub async fn eventually(limit: Duration, check: impl Fn() -> bool + Send + Sync + 'static) -> bool {
    let check = std::sync::Arc::new(check);
    let deadline = Instant::now() + limit;
    loop {
        let c = check.clone();
        if tokio::task::spawn_blocking(move || c()).await.unwrap() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A config file in `dir` for `mutebridge` processes on this cluster, with
/// `config`'s topics, groups and app, members that leave the group 6 s
/// after they stop heartbeating, and `fragment` (targets, rules, settings
/// of other tables) appended.
pub fn process_config(
    config: &Config,
    fragment: &str,
    dir: &std::path::Path,
    name: &str,
) -> PathBuf {
    let k = &config.kafka;
    let w = &config.worker;
    let app = &config.easemob.apps[0];
    let secrets: Vec<String> = app
        .secrets
        .iter()
        .map(|s| format!("\"{}\"", s.expose()))
        .collect();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[http]
listen = "127.0.0.1:0"

[kafka]
brokers = "{}"
topic = "{}"
partitions = {}

[kafka.client]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"

[[easemob.apps]]
appkey = "{}"
secrets = [{}]

[worker]
group_id = "{}"
dlq_topic = "{}"
state_topic = "{}"
commit_interval_ms = 100
request_timeout_ms = 2000

{fragment}
"#,
            k.brokers,
            k.topic,
            k.partitions,
            app.appkey,
            secrets.join(", "),
            w.group_id,
            w.dlq_topic,
            w.state_topic,
        ),
    )
    .unwrap();
    path
}

/// Peak resident memory of process `pid`, in MiB (`VmHWM`).
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The partitions pipeline `pipeline` of the worker at `ops` holds now
/// (its `/targets`).
pub fn owned(ops: std::net::SocketAddr, pipeline: &str) -> Vec<i32> {
    let Some((200, body)) = crate::support::http_get(ops, "/targets") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["pipelines"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pipeline"] == pipeline)
        .and_then(|p| p["partitions"].as_array())
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p.as_i64())
                .map(|p| p as i32)
                .collect()
        })
        .unwrap_or_default()
}

/// A directory for the config and logs of a test's processes: removed
/// when the test passes, kept (and named) when it fails.
pub struct Logs(tempfile::TempDir);

impl Logs {
    pub fn new() -> Logs {
        Logs(tempfile::tempdir().unwrap())
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = std::mem::replace(&mut self.0, tempfile::tempdir().unwrap()).keep();
            eprintln!(
                "the processes' config and logs are kept in {}",
                kept.display()
            );
        }
    }
}

/// Creates `name` (replication factor 3, `min.insync.replicas` 2) with
/// `settings`, before mutebridge does: the tests that need a topic set up
/// unlike the plan (short segments, short retention) make it themselves.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32, settings: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut topic =
        NewTopic::new(name, partitions, TopicReplication::Fixed(3)).set("min.insync.replicas", "2");
    for (k, v) in settings {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
    let (b, n) = (bootstrap.to_owned(), name.to_owned());
    assert!(eventually(Duration::from_secs(30), move || fully_in_sync(&b, &n)).await);
}
