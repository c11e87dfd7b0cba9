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
    publisher: Publisher,
}

/// The configuration tests start from.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.easemob.apps = vec![
        EasemobApp {
            appkey: APPKEY.into(),
            secrets: SECRETS.iter().map(|s| Secret::new(*s)).collect(),
            rest: None,
        },
        EasemobApp {
            appkey: SEED_APPKEY.into(),
            secrets: vec![Secret::new(SEED_SECRET)],
            rest: None,
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
        let ingest = Ingest::bind(&config, publisher.clone(), metrics.clone())
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
            publisher,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while h.get("/readyz").await.0 != 200 {
            assert!(Instant::now() < deadline, "ingest never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h
    }

    /// The event producer ingest publishes with.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Waits (up to `limit`) for the server to stop by itself, and returns
    /// the error it stopped with.
    pub async fn server_error(&mut self, limit: Duration) -> String {
        let server = self.server.take().expect("the server runs");
        match tokio::time::timeout(limit, server).await {
            Ok(Ok(Err(e))) => format!("{e:#}"),
            Ok(Ok(Ok(()))) => panic!("the server stopped without an error"),
            Ok(Err(e)) => panic!("the server task failed: {e}"),
            Err(_) => panic!("the server did not stop within {limit:?}"),
        }
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
        // A pooled connection the server has just closed for idleness (the
        // tests with short idle timeouts) resets the first request sent on
        // it: that one is sent again, on a new connection.
        let resp = match self.http.get(self.url(path)).send().await {
            Ok(resp) => resp,
            Err(e) if e.is_request() || e.is_connect() => self
                .http
                .get(self.url(path))
                .send()
                .await
                .expect("request, sent again"),
            Err(e) => panic!("request: {e:?}"),
        };
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
            // A broker the tests took down: the client reconnects.
            Some(Err(e))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                            | rdkafka::types::RDKafkaErrorCode::AllBrokersDown
                    )
                ) => {}
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

/// The partition Kafka's Java `DefaultPartitioner` picks for a key.
pub fn java_partition(key: &str, partitions: i32) -> i32 {
    mutebridge::key_partition(key.as_bytes(), partitions)
}

/// A worker running against the harness's cluster.
pub struct WorkerHandle {
    pub metrics: Metrics,
    /// Each pipeline's status, as the worker's `/targets` shows it.
    statuses: Box<dyn Fn() -> Vec<Value> + Send + Sync>,
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

    /// Waits (up to 20 s) until `mutebridge_worker_events_total{outcome,
    /// target}` is exactly `n`, and fails with the last value seen otherwise.
    pub async fn wait_for_events(&self, target: &str, outcome: &str, n: f64) {
        let line = events_line(target, outcome);
        let reached = wait_until(Duration::from_secs(20), || self.metric(&line) == n).await;
        assert!(reached, "{line} is {}, expected {n}", self.metric(&line));
    }

    /// The value of a metric line starting with `line_prefix`, or 0.
    pub fn metric(&self, line_prefix: &str) -> f64 {
        metric_of(&self.metrics, line_prefix)
    }

    /// Each pipeline's status as the worker's `/targets` shows it
    /// (`pipeline`, `group_id`, `partitions`, `paused`, ...); a pipeline
    /// that has not reported yet has an empty name.
    pub fn statuses(&self) -> Vec<Value> {
        (self.statuses)()
    }

    /// The status of `pipeline` (a target's name, or `state` for the state
    /// keeper), once it has reported.
    pub fn status(&self, pipeline: &str) -> Option<Value> {
        self.statuses()
            .into_iter()
            .find(|s| s["pipeline"] == pipeline)
    }

    /// The partitions `pipeline` owns now.
    pub fn owned(&self, pipeline: &str) -> Vec<i32> {
        self.status(pipeline)
            .and_then(|s| {
                s["partitions"].as_array().map(|ps| {
                    ps.iter()
                        .map(|p| p.as_i64().expect("a partition number") as i32)
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Waits until `pipeline` has finished, and committed, every event in
    /// the event topic when asked (see [`Harness::wait_committed`]): what
    /// it does about anything sent before has been done.
    pub async fn wait_finished(&self, h: &Harness, pipeline: &str) {
        let mut group = None;
        let reported = wait_until(WAIT_LONG, || {
            group = self
                .status(pipeline)
                .and_then(|s| s["group_id"].as_str().map(str::to_owned));
            group.is_some()
        })
        .await;
        assert!(reported, "{pipeline} never reported: {:?}", self.statuses());
        h.wait_committed(&group.unwrap()).await;
    }
}

/// Deadline of the waits here: generous, for 2 cores shared by several
/// test runs.
pub const WAIT_LONG: Duration = Duration::from_secs(60);

/// The value in `metrics` of the line starting with `line_prefix`, or 0.
pub fn metric_of(metrics: &Metrics, line_prefix: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find_map(|l| {
            l.strip_prefix(line_prefix)
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

/// The metric line of `target`'s events that ended with `outcome`.
pub fn events_line(target: &str, outcome: &str) -> String {
    format!("mutebridge_worker_events_total{{outcome=\"{outcome}\",target=\"{target}\"}}")
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
        let worker = mutebridge::Worker::start(&checked(config), &self.cluster, &metrics)
            .await
            .expect("worker starts");
        let statuses = worker.statuses();
        let statuses = Box::new(move || {
            statuses
                .iter()
                .map(|s| {
                    serde_json::to_value(&*s.lock().expect("status lock"))
                        .expect("a status is JSON")
                })
                .collect()
        });
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        WorkerHandle {
            metrics,
            statuses,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A config file in `dir` for `mutebridge worker` *processes* against
    /// this harness's embedded cluster, with the `targets` fragment (targets
    /// and rules). The cluster cannot create topics for other processes, so
    /// the state and dead-letter topics are created here; rebalances are
    /// quick (the mock coordinator holds a join for max.poll.interval.ms).
    pub fn worker_process_config(
        &self,
        targets: &str,
        dir: &std::path::Path,
    ) -> std::path::PathBuf {
        let embedded = self.cluster.embedded().unwrap();
        let partitions = self.config.kafka.partitions;
        for topic in [
            &self.config.worker.state_topic,
            &self.config.worker.dlq_topic,
        ] {
            embedded.create_topic(topic, partitions).unwrap();
        }
        let config = dir.join("worker.toml");
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"{}\"\ntopic = \"{}\"\npartitions = {partitions}\ncreate_topics = false\n[kafka.client]\n\"max.poll.interval.ms\" = \"7000\"\n\"session.timeout.ms\" = \"6000\"\n[worker]\ndlq_topic = \"{}\"\nstate_topic = \"{}\"\ncommit_interval_ms = 100\nrequest_timeout_ms = 5000\n{targets}",
                self.cluster.bootstrap_servers(),
                self.config.kafka.topic,
                self.config.worker.dlq_topic,
                self.config.worker.state_topic,
            ),
        )
        .unwrap();
        config
    }

    /// Waits until every pipeline of `workers` has joined its consumer
    /// group with all of them: between them each pipeline owns every
    /// partition of the event topic once, and each worker owns some.
    pub async fn wait_joined(&self, workers: &[&WorkerHandle]) {
        let all: Vec<i32> = (0..self.config.kafka.partitions).collect();
        let joined = || {
            let statuses: Vec<Vec<Value>> = workers.iter().map(|w| w.statuses()).collect();
            if statuses.iter().flatten().any(|s| s["pipeline"] == "") {
                return false;
            }
            statuses[0].iter().all(|s| {
                let pipeline = s["pipeline"].as_str().unwrap();
                let mut owned = Vec::new();
                for w in workers {
                    let mine = w.owned(pipeline);
                    if mine.is_empty() {
                        return false;
                    }
                    owned.extend(mine);
                }
                owned.sort();
                owned == all
            })
        };
        assert!(
            wait_until(WAIT_LONG, joined).await,
            "the workers' pipelines never settled on the partitions: {:?}",
            workers.iter().map(|w| w.statuses()).collect::<Vec<_>>()
        );
    }

    /// Waits until consumer group `group` has committed every record in the
    /// event topic as it is when asked. A committed offset means the
    /// event's actions ran (or it is dead-lettered): whatever that group
    /// does about anything sent before has been done, so a check that
    /// nothing more happens can follow at once.
    pub async fn wait_committed(&self, group: &str) {
        let (bootstrap, topic, group) = (
            self.cluster.bootstrap_servers().to_owned(),
            self.config.kafka.topic.clone(),
            group.to_owned(),
        );
        let partitions = self.config.kafka.partitions;
        let behind = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer");
            let deadline = Instant::now() + WAIT_LONG;
            loop {
                let behind = uncommitted(&consumer, &topic, partitions);
                if behind.as_ref().is_ok_and(Vec::is_empty) || Instant::now() > deadline {
                    return (group, behind);
                }
                // The poll interval of this deadline loop.
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .unwrap();
        assert!(
            behind.1.as_ref().is_ok_and(Vec::is_empty),
            "{} has not committed the event topic's end: (partition, committed, end) {:?}",
            behind.0,
            behind.1
        );
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

/// `(partition, committed, end)` of each partition of `topic` that
/// `consumer`'s group has not committed to its end (records retention
/// deleted are not waited for).
fn uncommitted(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> rdkafka::error::KafkaResult<Vec<(i32, i64, i64)>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(5))?;
    let mut behind = Vec::new();
    for p in 0..partitions {
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        };
        let (start, end) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5))?;
        if done.max(start) < end {
            behind.push((p, done, end));
        }
    }
    Ok(behind)
}

/// Tests that run several worker processes, or measure rates against a
/// sliding window, take turns: run together on 2 cores, CPU starvation
/// bunches the calls a sliding window sees by more than the 5 % headroom
/// absorbs (seen: one refusal), and delays what they time.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP/1.1 GET: the status and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// A metric of a mutebridge process serving `/metrics` at `addr` (the
/// value of the line starting with `line`; 0 when absent or unreachable).
pub fn process_metric(addr: std::net::SocketAddr, line: &str) -> f64 {
    http_get(addr, "/metrics")
        .and_then(|(_, body)| {
            body.lines().find_map(|l| {
                l.strip_prefix(line)
                    .map(|v| v.trim().parse::<f64>().unwrap())
            })
        })
        .unwrap_or(0.0)
}

pub fn wait_for_200(addr: std::net::SocketAddr, path: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if http_get(addr, path).is_some_and(|(status, _)| status == 200) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Starts `mutebridge ROLE --config CONFIG` with stderr to `log`; returns
/// it with the address its banner printed (`  ROLE: http://ADDR`).
pub fn spawn_role(
    role: &str,
    config: &std::path::Path,
    log: &std::path::Path,
) -> (Killed, SocketAddr) {
    spawn_role_with_env(role, config, log, &[])
}

/// [`spawn_role`] with `env` set for the process (its `env:` secrets).
pub fn spawn_role_with_env(
    role: &str,
    config: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> (Killed, SocketAddr) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let log = std::fs::File::create(log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mutebridge"))
        .args([role, "--config", config.to_str().unwrap()])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let prefix = format!("  {role}: http://");
    let addr: SocketAddr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix(&prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .map(|a| a.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{role} printed no address"));
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (Killed(child), addr)
}

/// `config`, as changed in code, checked and compiled like a loaded file.
pub fn checked(config: &Config) -> mutebridge::config::Checked {
    mutebridge::config::Checked::new(config.clone()).expect("the test config checks")
}
