//! The Kafka cluster mutebridge talks to: an external one, or librdkafka's
//! in-process mock cluster (`kafka.brokers = "embedded"`, see [`embedded`]),
//! which speaks the real Kafka protocol on loopback so any client (kcat,
//! Java) can read it. [`Cluster`] also creates the topics at startup;
//! [`client`] holds the settings of every client.

pub mod client;
pub mod config;
pub mod embedded;
pub mod local;
pub mod partition;
pub mod scan;
pub mod topics;

use std::time::Duration;

use anyhow::{anyhow, bail};

use crate::kafka::config::KafkaConfig;
pub use client::{client_config, consumer_config, producer_config};
pub use embedded::EmbeddedKafka;
pub use partition::key_partition;
use topics::{Plan, Severity, Topics};

/// A reachable cluster with the event topic in place.
pub struct Cluster {
    bootstrap: String,
    embedded: Option<EmbeddedKafka>,
}

impl Cluster {
    /// Starts the embedded cluster or reaches the external one, with the
    /// event topic in place (created when `kafka.create_topics` is on).
    pub async fn connect(cfg: &KafkaConfig) -> anyhow::Result<Cluster> {
        let cluster = if cfg.is_embedded() {
            let embedded = EmbeddedKafka::start(1)?;
            Cluster {
                bootstrap: embedded.bootstrap_servers().to_owned(),
                embedded: Some(embedded),
            }
        } else {
            Cluster {
                bootstrap: cfg.brokers.trim().to_owned(),
                embedded: None,
            }
        };
        cluster
            .prepare(cfg, |brokers| Plan::events(cfg, brokers))
            .await?;
        Ok(cluster)
    }

    /// Puts the topics of a plan in place: created when missing (with
    /// `kafka.create_topics`), then checked; a topic that would break a
    /// promise (see [`topics`]) is refused with what to do, a weaker one
    /// is logged. `plan` is made for the cluster's broker count.
    pub async fn prepare(
        &self,
        cfg: &KafkaConfig,
        plan: impl FnOnce(usize) -> Plan,
    ) -> anyhow::Result<()> {
        let mut topics = Topics::connect(cfg, &self.bootstrap)?;
        if self.embedded.is_some() {
            topics = topics.without_settings();
        }
        let plan = match &self.embedded {
            Some(embedded) => {
                // The mock cluster cannot create topics for its clients.
                let plan = plan(1);
                for w in &plan.topics {
                    embedded.create_topic(&w.name, cfg.partitions)?;
                }
                plan
            }
            None => {
                let plan = plan(topics.brokers().await?);
                if cfg.create_topics {
                    topics.ensure(&plan).await?;
                }
                plan
            }
        };
        let mut problems = Vec::new();
        for f in topics.check(&plan).await? {
            let role: &str = f.role.into();
            match f.severity {
                Severity::Problem => {
                    problems.push(format!("{} ({}): {}", f.topic, f.role.key(), f.text))
                }
                Severity::Warning => {
                    tracing::warn!(topic = %f.topic, role, "{}", f.text)
                }
                // The embedded cluster has no topic settings to check.
                Severity::Unchecked if self.embedded.is_some() => {}
                Severity::Unchecked => tracing::warn!(topic = %f.topic, role, "{}", f.text),
                Severity::Ok => tracing::info!(topic = %f.topic, role, "{}", f.text),
            }
        }
        if !problems.is_empty() {
            let fix = if cfg.create_topics {
                ""
            } else {
                " (kafka.create_topics is false: `mutebridge topics create --config FILE` creates missing topics, or set kafka.create_topics = true)"
            };
            bail!(
                "the topics on {} are not fit for mutebridge{fix}:\n  {}",
                self.bootstrap,
                problems.join("\n  ")
            );
        }
        Ok(())
    }

    /// Fails, saying what to do, unless `topic` exists: nothing may be
    /// published to (or read from) a topic the broker would create with its
    /// own defaults.
    pub async fn require_topic(&self, cfg: &KafkaConfig, topic: &str) -> anyhow::Result<()> {
        let found = match &self.embedded {
            Some(_) => true,
            None => Topics::connect(cfg, &self.bootstrap)?
                .observe(topic)
                .await?
                .is_some(),
        };
        if !found {
            bail!(
                "topic {topic} does not exist on {}: `mutebridge topics create --config FILE` creates mutebridge's topics",
                self.bootstrap
            );
        }
        Ok(())
    }

    /// The bootstrap list clients should use.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The in-process cluster, when running embedded.
    pub fn embedded(&self) -> Option<&EmbeddedKafka> {
        self.embedded.as_ref()
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
