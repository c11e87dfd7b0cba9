//! The Kafka cluster mutebridge talks to: an external one, or librdkafka's
//! in-process mock cluster (`kafka.brokers = "embedded"`), which speaks the
//! real Kafka protocol on loopback so any client (kcat, Java) can read it.
//!
//! This module also creates the topic at startup, and holds the librdkafka
//! settings every mutebridge client shares.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

type Reply = mpsc::Sender<Result<(), String>>;

enum Command {
    CreateTopic(String, i32, Reply),
    BrokerDown(i32, Reply),
    BrokerUp(i32, Reply),
    RoundTripTime(i32, Duration, Reply),
}

/// librdkafka's mock cluster, owned by a thread of its own (the handle is
/// not `Send`), so the rest of the program can share this handle freely.
/// The data lives in memory and is gone when this is dropped.
pub struct EmbeddedKafka {
    bootstrap: String,
    /// Topics created through this handle; creating one again is a no-op.
    topics: std::sync::Mutex<std::collections::HashSet<String>>,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a cluster of `brokers` brokers (IDs 1..=brokers) on loopback.
    pub fn start(brokers: i32) -> anyhow::Result<EmbeddedKafka> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (tx, rx) = mpsc::channel::<Command>();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster: MockCluster<'static, DefaultProducerContext> =
                    match MockCluster::new(brokers) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                let done = |reply: Reply, r: rdkafka::error::KafkaResult<()>| {
                    let _ = reply.send(r.map_err(|e| e.to_string()));
                };
                // Ends when the handle is dropped, which drops the cluster.
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::CreateTopic(name, partitions, reply) => {
                            done(reply, cluster.create_topic(&name, partitions, 1))
                        }
                        Command::BrokerDown(id, reply) => done(reply, cluster.broker_down(id)),
                        Command::BrokerUp(id, reply) => done(reply, cluster.broker_up(id)),
                        Command::RoundTripTime(id, rtt, reply) => {
                            done(reply, cluster.broker_round_trip_time(id, rtt))
                        }
                    }
                }
            })
            .context("cannot start the embedded Kafka thread")?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| anyhow!("the embedded Kafka thread stopped during startup"))?
            .map_err(|e| anyhow!("cannot start the embedded Kafka cluster: {e}"))?;
        Ok(EmbeddedKafka {
            bootstrap,
            topics: Default::default(),
            commands: Some(tx),
            thread: Some(thread),
        })
    }

    /// `host:port[,host:port...]` of the mock brokers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    fn call(&self, make: impl FnOnce(Reply) -> Command) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .as_ref()
            .and_then(|c| c.send(make(tx)).ok())
            .ok_or_else(|| anyhow!("the embedded Kafka cluster has stopped"))?;
        rx.recv()
            .map_err(|_| anyhow!("the embedded Kafka cluster has stopped"))?
            .map_err(|e| anyhow!(e))
    }

    /// Creates a topic with replication factor 1 (once; again is a no-op).
    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let mut topics = self.topics.lock().expect("topics lock");
        if topics.contains(name) {
            return Ok(());
        }
        self.call(|r| Command::CreateTopic(name.to_owned(), partitions, r))?;
        topics.insert(name.to_owned());
        Ok(())
    }

    /// Takes a broker down: its connections are closed and refused.
    pub fn broker_down(&self, id: i32) -> anyhow::Result<()> {
        self.call(|r| Command::BrokerDown(id, r))
    }

    /// Delays every response of a broker by `rtt` (a slow network or disk).
    pub fn broker_round_trip_time(&self, id: i32, rtt: Duration) -> anyhow::Result<()> {
        self.call(|r| Command::RoundTripTime(id, rtt, r))
    }

    /// Brings a broker taken down by [`EmbeddedKafka::broker_down`] back.
    pub fn broker_up(&self, id: i32) -> anyhow::Result<()> {
        self.call(|r| Command::BrokerUp(id, r))
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A reachable cluster with the event topic in place.
pub struct Cluster {
    bootstrap: String,
    embedded: Option<EmbeddedKafka>,
}

impl Cluster {
    /// Starts the embedded cluster or checks the external one, and creates
    /// the event topic when configured to.
    pub async fn connect(cfg: &KafkaConfig) -> anyhow::Result<Cluster> {
        if cfg.is_embedded() {
            let embedded = EmbeddedKafka::start(1)?;
            embedded
                .create_topic(&cfg.topic, cfg.partitions)
                .with_context(|| {
                    format!("cannot create topic {} on the embedded cluster", cfg.topic)
                })?;
            return Ok(Cluster {
                bootstrap: embedded.bootstrap_servers().to_owned(),
                embedded: Some(embedded),
            });
        }
        let cluster = Cluster {
            bootstrap: cfg.brokers.trim().to_owned(),
            embedded: None,
        };
        if cfg.create_topics {
            cluster.create_topic(cfg, &cfg.topic).await?;
        }
        Ok(cluster)
    }

    /// Creates another topic (the dead-letter topic) like the event topic.
    pub async fn create_extra_topic(&self, cfg: &KafkaConfig, topic: &str) -> anyhow::Result<()> {
        match &self.embedded {
            Some(embedded) => embedded.create_topic(topic, cfg.partitions),
            None if cfg.create_topics => self.create_topic(cfg, topic).await,
            None => Ok(()),
        }
    }

    /// The bootstrap list clients should use.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The in-process cluster, when running embedded.
    pub fn embedded(&self) -> Option<&EmbeddedKafka> {
        self.embedded.as_ref()
    }

    async fn create_topic(&self, cfg: &KafkaConfig, topic: &str) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = client_config(cfg, &self.bootstrap)
            .create()
            .context("cannot create a Kafka admin client (check [kafka.client] properties)")?;
        let replication = TopicReplication::Fixed(cfg.replication_factor.unwrap_or(-1));
        let new_topic = NewTopic::new(topic, cfg.partitions, replication);
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = tokio::time::timeout(Duration::from_secs(15), admin.create_topics([&new_topic], &opts))
            .await
            .map_err(|_| {
                anyhow!(
                    "Kafka at {} did not answer within 15 s; check kafka.brokers and that the brokers are up",
                    self.bootstrap
                )
            })?
            .with_context(|| format!("cannot reach Kafka at {} to create topic {topic}", self.bootstrap))?;
        let mut existed = false;
        for result in results {
            match result {
                Ok(_) => tracing::info!(topic, partitions = cfg.partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => existed = true,
                Err((_, code)) => bail!(
                    "cannot create topic {topic} on {}: {code}; create it yourself and set kafka.create_topics = false",
                    self.bootstrap
                ),
            }
        }
        if existed {
            // Kept as it is: repartitioning would move groups between
            // partitions and break their order. Say so if it differs.
            let name = topic.to_owned();
            let found = tokio::task::spawn_blocking(move || {
                partition_count(admin.inner(), &name, Duration::from_secs(10))
            })
            .await?;
            match found {
                Ok(n) if n as i32 != cfg.partitions => tracing::warn!(
                    topic,
                    existing = n,
                    configured = cfg.partitions,
                    "topic exists with a different partition count; using it as it is"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(topic, error = %e, "cannot read the topic's metadata"),
            }
        }
        Ok(())
    }
}

/// The settings every mutebridge client shares: the bootstrap list and the
/// user's `[kafka.client]` pass-through properties.
pub fn client_config(cfg: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in cfg.client_properties() {
        config.set(key, value);
    }
    config
}

/// Producer defaults a user may change through `[kafka.client]`.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // Each reply waits for its ack, so time spent lingering is reply latency.
    ("linger.ms", "0"),
    // Bounded: a full queue is answered 503 instead of growing memory.
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "65536"),
    // After this librdkafka gives up on a record; replies stop waiting
    // earlier (http.ack_timeout_ms), this bounds the tail behind a 503.
    ("message.timeout.ms", "30000"),
];

/// Settings of every mutebridge producer (events and dead letters): durable
/// (`acks=all`), idempotent (retries neither duplicate nor reorder) and
/// placed with murmur2 like Java clients. The pinned three cannot be
/// overridden; the config loader refuses them in `[kafka.client]`.
pub fn producer_config(cfg: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in PRODUCER_DEFAULTS {
        config.set(*key, *value);
    }
    for (key, value) in client_config(cfg, bootstrap).config_map() {
        config.set(key, value);
    }
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random");
    config
}

/// How many partitions `topic` has, read from the cluster's metadata.
pub fn partition_count<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow!("topic {topic} is not in the metadata"))?;
    if let Some(err) = t.error() {
        bail!("topic {topic}: {err:?}");
    }
    Ok(t.partitions().len())
}
