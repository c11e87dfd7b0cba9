//! The Kafka cluster mutebridge talks to: an external one, or librdkafka's
//! in-process mock cluster (`kafka.brokers = "embedded"`, see [`embedded`]),
//! which speaks the real Kafka protocol on loopback so any client (kcat,
//! Java) can read it. [`Cluster`] also creates the topics at startup;
//! [`client`] holds the settings of every client.

pub mod client;
pub mod config;
pub mod embedded;
pub mod partition;
pub mod scan;

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::config::KafkaConfig;
pub use client::{client_config, consumer_config, producer_config};
pub use embedded::EmbeddedKafka;
pub use partition::key_partition;

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
            cluster.create_topic(cfg, &cfg.topic, &[]).await?;
        } else {
            cluster.require_topic(cfg, &cfg.topic).await?;
        }
        Ok(cluster)
    }

    /// Fails, saying what to do, unless `topic` exists: nothing may be
    /// published to (or read from) a topic the broker would create with its
    /// own defaults.
    pub async fn require_topic(&self, cfg: &KafkaConfig, topic: &str) -> anyhow::Result<()> {
        match self.find_topic(cfg, topic).await? {
            Some(_) => Ok(()),
            None => bail!(
                "topic {topic} does not exist on {} and kafka.create_topics is false: create it with {} partitions (kafka.partitions), or set kafka.create_topics = true",
                self.bootstrap,
                cfg.partitions
            ),
        }
    }

    /// Whether an existing `topic` is compacted (`cleanup.policy` has
    /// `compact`), asked with DescribeConfigs. [`Compaction::CannotTell`]
    /// when the cluster does not answer it: librdkafka's mock cluster (the
    /// embedded one and `mutebridge dev-kafka`) does not implement it, and
    /// ACLs may forbid it.
    pub async fn compaction(&self, cfg: &KafkaConfig, topic: &str) -> Compaction {
        let admin: AdminClient<DefaultClientContext> =
            match client_config(cfg, &self.bootstrap).create() {
                Ok(a) => a,
                Err(e) => return Compaction::CannotTell(format!("no admin client: {e}")),
            };
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let resource = ResourceSpecifier::Topic(topic);
        let asked = tokio::time::timeout(
            Duration::from_secs(15),
            admin.describe_configs([&resource], &opts),
        )
        .await;
        let results = match asked {
            Err(_) => {
                return Compaction::CannotTell("DescribeConfigs not answered within 15 s".into())
            }
            Ok(Err(e)) => return Compaction::CannotTell(format!("DescribeConfigs failed: {e}")),
            Ok(Ok(results)) => results,
        };
        match results.into_iter().next() {
            Some(Ok(resource)) => {
                match resource.get("cleanup.policy").and_then(|e| e.value.clone()) {
                    Some(policy) if policy.split(',').any(|p| p.trim() == "compact") => {
                        Compaction::Compacted
                    }
                    Some(policy) => Compaction::NotCompacted(policy),
                    None => Compaction::CannotTell("the answer has no cleanup.policy".into()),
                }
            }
            Some(Err(code)) => Compaction::CannotTell(format!("DescribeConfigs failed: {code}")),
            None => Compaction::CannotTell("DescribeConfigs returned nothing".into()),
        }
    }

    /// Creates another topic (the dead-letter topic) like the event topic;
    /// with `kafka.create_topics = false`, fails unless it exists.
    pub async fn create_extra_topic(&self, cfg: &KafkaConfig, topic: &str) -> anyhow::Result<()> {
        self.create_topic_with(cfg, topic, &[]).await
    }

    /// Creates a compacted topic (the state topic) like the event topic:
    /// only each key's newest record has to be kept.
    pub async fn create_compacted_topic(
        &self,
        cfg: &KafkaConfig,
        topic: &str,
    ) -> anyhow::Result<()> {
        self.create_topic_with(cfg, topic, &[("cleanup.policy", "compact")])
            .await
    }

    async fn create_topic_with(
        &self,
        cfg: &KafkaConfig,
        topic: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        match &self.embedded {
            // The mock cluster keeps every record; compaction is moot there.
            Some(embedded) => embedded.create_topic(topic, cfg.partitions),
            None if cfg.create_topics => self.create_topic(cfg, topic, settings).await,
            None => self.require_topic(cfg, topic).await,
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

    /// `Some(partitions)` when `topic` exists, `None` when the cluster says
    /// it does not (asking does not create it: see [`client_config`]).
    async fn find_topic(&self, cfg: &KafkaConfig, topic: &str) -> anyhow::Result<Option<usize>> {
        let admin: AdminClient<DefaultClientContext> = client_config(cfg, &self.bootstrap)
            .create()
            .context("cannot create a Kafka admin client (check [kafka.client] properties)")?;
        let name = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            existing_partitions(admin.inner(), &name, Duration::from_secs(15))
        })
        .await?
        .with_context(|| {
            format!(
                "cannot reach Kafka at {} (metadata for {topic}); check kafka.brokers and that the brokers are up",
                self.bootstrap
            )
        })
    }

    /// Makes sure `topic` exists: metadata first, so an existing topic
    /// needs no CreateTopics (which some clusters do not serve: librdkafka's
    /// mock cluster behind `mutebridge dev-kafka`, or one whose ACLs forbid
    /// it), then CreateTopics for a missing one.
    async fn create_topic(
        &self,
        cfg: &KafkaConfig,
        topic: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let found = self.find_topic(cfg, topic).await?;
        if let Some(n) = found {
            // Kept as it is: repartitioning would move groups between
            // partitions and break their order. Say so if it differs.
            if n as i32 != cfg.partitions {
                tracing::warn!(
                    topic,
                    existing = n,
                    configured = cfg.partitions,
                    "topic exists with a different partition count; using it as it is"
                );
            }
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = client_config(cfg, &self.bootstrap)
            .create()
            .context("cannot create a Kafka admin client (check [kafka.client] properties)")?;
        let replication = TopicReplication::Fixed(cfg.replication_factor.unwrap_or(-1));
        let mut new_topic = NewTopic::new(topic, cfg.partitions, replication);
        for (key, value) in settings {
            new_topic = new_topic.set(key, value);
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let cannot = |why: String| {
            anyhow!(
                "cannot create topic {topic} on {}: {why}; create it yourself and set kafka.create_topics = false",
                self.bootstrap
            )
        };
        let results = tokio::time::timeout(Duration::from_secs(15), admin.create_topics([&new_topic], &opts))
            .await
            .map_err(|_| cannot("the cluster answers metadata requests but did not answer CreateTopics within 15 s, so it cannot create topics (librdkafka's mock cluster behind `mutebridge dev-kafka` cannot)".into()))?
            .map_err(|e| cannot(e.to_string()))?;
        for result in results {
            match result {
                Ok(_) => tracing::info!(topic, partitions = cfg.partitions, "created topic"),
                // Created by another replica since the metadata said no.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(cannot(code.to_string())),
            }
        }
        Ok(())
    }
}

/// Whether a topic is compacted, as far as the cluster tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compaction {
    /// `cleanup.policy` includes `compact`.
    Compacted,
    /// `cleanup.policy` is this (e.g. `delete`): old records expire with
    /// retention instead of each key keeping its newest.
    NotCompacted(String),
    /// The cluster did not say, and why (no DescribeConfigs on the mock
    /// cluster, an ACL, a timeout).
    CannotTell(String),
}

/// `Some(partitions)` when `topic` exists, `None` when the cluster says it
/// does not; an error when the cluster cannot be asked.
fn existing_partitions<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<usize>> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error() {
        None if !t.partitions().is_empty() => Ok(Some(t.partitions().len())),
        None => Ok(None),
        Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            Ok(None)
        }
        Some(e) => bail!("topic {topic}: {:?}", RDKafkaErrorCode::from(e)),
    }
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
