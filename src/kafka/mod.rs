//! The Kafka cluster mutebridge talks to: an external one, or librdkafka's
//! in-process mock cluster (`kafka.brokers = "embedded"`, see [`embedded`]),
//! which speaks the real Kafka protocol on loopback so any client (kcat,
//! Java) can read it. [`Cluster`] also creates the topics at startup;
//! [`client`] holds the settings of every client.

pub mod client;
pub mod embedded;

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
pub use client::{client_config, consumer_config, producer_config};
pub use embedded::EmbeddedKafka;

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
