//! Test harness: a real ingest server on loopback, publishing to the
//! embedded (librdkafka mock) cluster, and a real Kafka consumer to read
//! back what it published.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mutebridge::config::{Config, EasemobApp, Secret};
use mutebridge::sign;
use mutebridge::Cluster;
use mutebridge::Ingest;
use mutebridge::Metrics;
use mutebridge::Publisher;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

pub const APPKEY: &str = "test#app";
pub const SECRETS: [&str; 2] = ["rule-one-secret", "rule-two-secret"];
/// The seeds' own appkey, configured so the documents can be sent as they are.
pub const SEED_APPKEY: &str = "XXXX#XXXX";
pub const SEED_SECRET: &str = "seed-secret";

pub struct Harness {
    pub cluster: Cluster,
    pub addr: SocketAddr,
    pub config: Config,
    pub metrics: Metrics,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    http: reqwest::Client,
}

/// The configuration tests start from.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.easemob.apps = vec![
        EasemobApp {
            appkey: APPKEY.into(),
            secrets: SECRETS.iter().map(|s| Secret::new(*s)).collect(),
        },
        EasemobApp {
            appkey: SEED_APPKEY.into(),
            secrets: vec![Secret::new(SEED_SECRET)],
        },
    ];
    config
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub raw_len: usize,
    pub headers: reqwest::header::HeaderMap,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Harness {
        // Logs show with `RUST_LOG=info cargo test -- --nocapture`.
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let mut config = test_config();
        adjust(&mut config);
        let metrics = Metrics::new();
        let cluster = Cluster::connect(&config.kafka)
            .await
            .expect("embedded cluster starts");
        let publisher =
            Publisher::new(&config.kafka, cluster.bootstrap_servers()).expect("producer");
        let ingest = Ingest::bind(&config, publisher, metrics.clone())
            .await
            .expect("bind");
        let addr = ingest.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(ingest.serve(async move {
            let _ = rx.await;
        }));
        let h = Harness {
            cluster,
            addr,
            config,
            metrics,
            shutdown: Some(tx),
            server: Some(server),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while h.get("/readyz").await.0 != 200 {
            assert!(Instant::now() < deadline, "ingest never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post_raw(&self, body: impl Into<reqwest::Body>) -> Reply {
        let resp = self
            .http
            .post(self.url("/webhooks/easemob"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text.clone())),
            raw_len: text.len(),
            headers,
        }
    }

    pub async fn post(&self, body: &Map<String, Value>) -> Reply {
        self.post_raw(Value::Object(body.clone()).to_string()).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self.http.get(self.url(path)).send().await.expect("request");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Reads records from the start of every partition until `n` arrived or
    /// `timeout` passed.
    pub async fn consume(&self, n: usize, timeout: Duration) -> Vec<Record> {
        let bootstrap = self.cluster.bootstrap_servers().to_owned();
        let topic = self.config.kafka.topic.clone();
        let partitions = self.config.kafka.partitions;
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, partitions, n, timeout))
            .await
            .unwrap()
    }

    pub async fn metric(&self, line_prefix: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(line_prefix)
                    .map(|v| v.trim().parse::<f64>().unwrap())
            })
            .unwrap_or_else(|| panic!("metric {line_prefix} not found"))
    }

    /// Graceful shutdown of the server (the path SIGTERM takes); the
    /// cluster stays up so tests can read what was published.
    pub async fn stop_server(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// Stops the server, then the cluster.
    pub async fn stop(mut self) {
        self.stop_server().await;
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub partition: i32,
    pub offset: i64,
    pub headers: HashMap<String, String>,
    pub value: Value,
}

pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    n: usize,
    timeout: Duration,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for hdr in h.iter() {
                        headers.insert(
                            hdr.key.to_owned(),
                            String::from_utf8_lossy(hdr.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    headers,
                    value: serde_json::from_slice(m.payload().unwrap_or_default())
                        .expect("record is JSON"),
                });
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    out
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Signs `body` in place with `secret`, with the body's own callId and timestamp.
pub fn resign(body: &mut Map<String, Value>, secret: &str) {
    let call_id = body["callId"].as_str().unwrap().to_owned();
    let ts = body["timestamp"].to_string();
    body.insert("security".into(), sign(&call_id, secret, &ts).into());
}

/// A signed new-format callback for `APPKEY` with a fresh callId.
pub fn op_event(group: &str, operation: &str, payload: Value) -> Map<String, Value> {
    let mut body = serde_json::json!({
        "callId": format!("{APPKEY}_{}", uuid::Uuid::new_v4()),
        "appkey": APPKEY,
        "id": group,
        "type": "GROUP",
        "event": "group_op_event",
        "operation": operation,
        "operator": "@ppAdmin",
        "timestamp": now_ms(),
        "payload": payload,
    });
    let map = body.as_object_mut().unwrap();
    resign(map, SECRETS[0]);
    map.clone()
}

pub fn mute_all(group: &str) -> Map<String, Value> {
    op_event(
        group,
        "UPDATE",
        serde_json::json!({"type": "MUTE", "mute": true}),
    )
}

/// Kafka's Java client murmur2 (`Utils.murmur2`), to check placement
/// independently of librdkafka.
pub fn java_murmur2(data: &[u8]) -> i32 {
    let seed: u32 = 0x9747b28c;
    let m: u32 = 0x5bd1e995;
    let r = 24;
    let len = data.len();
    let mut h: u32 = seed ^ (len as u32);
    let chunks = len / 4;
    for i in 0..chunks {
        let b = &data[i * 4..i * 4 + 4];
        let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        k = k.wrapping_mul(m);
        k ^= k >> r;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    let tail = &data[chunks * 4..];
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's Java `DefaultPartitioner` picks for a key.
pub fn java_partition(key: &str, partitions: i32) -> i32 {
    (java_murmur2(key.as_bytes()) & 0x7fffffff) % partitions
}

#[test]
fn murmur2_matches_kafka_test_vectors() {
    // From Kafka's UtilsTest.testMurmur2.
    assert_eq!(java_murmur2(b"21"), -973932308);
    assert_eq!(java_murmur2(b"foobar"), -790332482);
    assert_eq!(java_murmur2(b"a-little-bit-long-string"), -985981536);
    assert_eq!(java_murmur2(b"a-little-bit-longer-string"), -1486304829);
    assert_eq!(
        java_murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
        -58897971
    );
    assert_eq!(java_murmur2(b"abc"), 479470107);
}

/// A worker running against the harness's cluster.
pub struct WorkerHandle {
    pub metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl WorkerHandle {
    /// Graceful stop (the SIGTERM path): finish running events, commit.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Waits (up to 20 s) until `mutebridge_worker_events_total{outcome}`
    /// is exactly `n`, and fails with the last value seen otherwise.
    pub async fn wait_for_events(&self, outcome: &str, n: f64) {
        let line = format!("mutebridge_worker_events_total{{outcome=\"{outcome}\"}}");
        let reached = wait_until(Duration::from_secs(20), || self.metric(&line) == n).await;
        assert!(reached, "{line} is {}, expected {n}", self.metric(&line));
    }

    /// The value of a metric line starting with `line_prefix`, or 0.
    pub fn metric(&self, line_prefix: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix(line_prefix)
                    .map(|v| v.trim().parse::<f64>().unwrap())
            })
            .unwrap_or(0.0)
    }
}

/// Settings that keep worker tests quick: frequent commits, short backoffs.
pub fn fast_worker(config: &mut Config) {
    config.worker.commit_interval_ms = 100;
    config.worker.request_timeout_ms = 1000;
    config.worker.shutdown_grace_seconds = 5;
    config.worker.retry.initial_backoff_ms = 20;
    config.worker.retry.max_backoff_ms = 200;
    config.worker.retry.max_attempts = 6;
}

impl Harness {
    /// Starts a worker with the harness's config.
    pub async fn start_worker(&self) -> WorkerHandle {
        self.start_worker_with(&self.config).await
    }

    /// Starts a worker with `config` against the harness's cluster.
    pub async fn start_worker_with(&self, config: &Config) -> WorkerHandle {
        let metrics = Metrics::new();
        let worker = mutebridge::Worker::start(config, &self.cluster, &metrics)
            .await
            .expect("worker starts");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        WorkerHandle {
            metrics,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Reads the dead-letter topic from the start.
    pub async fn dead_letters(&self, n: usize, timeout: Duration) -> Vec<Record> {
        let bootstrap = self.cluster.bootstrap_servers().to_owned();
        let topic = self.config.worker.dlq_topic.clone();
        let partitions = self.config.kafka.partitions;
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, partitions, n, timeout))
            .await
            .unwrap()
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
