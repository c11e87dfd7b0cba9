//! The topics mutebridge needs, and the settings its promises depend on,
//! in one plan: `mutebridge topics create` makes them, `mutebridge topics
//! check` says exactly what is wrong with existing ones, the roles create
//! what they use when `kafka.create_topics` is on, and the worker refuses a
//! state topic that would lose groups' states.
//!
//! What each setting protects:
//! - replication factor and `min.insync.replicas`: a 200 (`acks=all`)
//!   means the record is on `min.insync.replicas` brokers, so one broker
//!   may die without losing it, and one being down does not stop writes;
//! - `unclean.leader.election.enable=false`: an out-of-sync replica never
//!   becomes leader and drops acknowledged records;
//! - the event topic deletes by time (`retention.ms`), never compacts
//!   (compaction keeps only a group's newest event: what a lagging target
//!   has not read would vanish);
//! - the state topic compacts and never deletes (`compact,delete` would
//!   expire the guards and renewal records of groups that stay quiet);
//! - the state topic has the event topic's partition count (a group's
//!   records live in its events' partition number).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::client_config;
use crate::config::Config;
use crate::kafka::config::KafkaConfig;

/// What a topic is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// The normalized events (`kafka.topic`).
    Events,
    /// Each group's mute state and what each target applied (`worker.state_topic`).
    State,
    /// Dead letters (`worker.dlq_topic`).
    DeadLetters,
}

impl Role {
    /// The config key that names the topic.
    pub fn key(self) -> &'static str {
        match self {
            Role::Events => "kafka.topic",
            Role::State => "worker.state_topic",
            Role::DeadLetters => "worker.dlq_topic",
        }
    }

    /// `cleanup.policy` as mutebridge creates the topic.
    fn cleanup_policy(self) -> &'static str {
        match self {
            Role::State => "compact",
            Role::Events | Role::DeadLetters => "delete",
        }
    }
}

/// How long dead letters are kept: long enough to find the cause and
/// replay them after a holiday weekend.
pub const DEAD_LETTER_RETENTION_DAYS: u64 = 30;

/// One topic of the plan.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub role: Role,
    pub name: String,
}

/// The topics and how they are replicated, for a cluster of `brokers`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub topics: Vec<Wanted>,
    /// `kafka.topic`, whose partition count the state topic takes.
    pub event_topic: String,
    pub brokers: usize,
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
    /// `kafka.partitions`: the event topic's, when mutebridge creates it.
    pub partitions: i32,
    /// The event topic's `retention.ms`.
    pub event_retention_ms: i64,
}

impl Plan {
    /// The plan for `roles` of `config` on a cluster of `brokers` brokers.
    pub fn new(config: &Config, roles: &[Role], brokers: usize) -> Plan {
        let topics = roles
            .iter()
            .map(|&role| Wanted {
                role,
                name: match role {
                    Role::Events => config.kafka.topic.clone(),
                    Role::State => config.worker.state_topic.clone(),
                    Role::DeadLetters => config.worker.dlq_topic.clone(),
                },
            })
            .collect();
        Plan::of(&config.kafka, topics, brokers)
    }

    /// The plan for the event topic alone (what ingest publishes to).
    pub fn events(kafka: &KafkaConfig, brokers: usize) -> Plan {
        let events = Wanted {
            role: Role::Events,
            name: kafka.topic.clone(),
        };
        Plan::of(kafka, vec![events], brokers)
    }

    /// `kafka.replication_factor` (default: 3, or fewer on a smaller
    /// cluster) and `kafka.min_insync_replicas` (default: 2 from 3
    /// replicas, else 1).
    fn of(k: &KafkaConfig, topics: Vec<Wanted>, brokers: usize) -> Plan {
        let replication_factor = k
            .replication_factor
            .unwrap_or_else(|| (brokers.clamp(1, 3)) as i32);
        let min_insync_replicas =
            k.min_insync_replicas
                .unwrap_or(if replication_factor >= 3 { 2 } else { 1 });
        Plan {
            topics,
            event_topic: k.topic.clone(),
            brokers,
            replication_factor,
            min_insync_replicas,
            partitions: k.partitions,
            event_retention_ms: (k.retention_hours as i64).saturating_mul(3_600_000),
        }
    }

    /// The topic settings mutebridge creates `role` with.
    pub fn settings(&self, role: Role) -> Vec<(&'static str, String)> {
        let mut s = vec![
            ("cleanup.policy", role.cleanup_policy().to_owned()),
            ("min.insync.replicas", self.min_insync_replicas.to_string()),
            ("unclean.leader.election.enable", "false".into()),
        ];
        match role {
            Role::Events => s.push(("retention.ms", self.event_retention_ms.to_string())),
            Role::DeadLetters => s.push((
                "retention.ms",
                (DEAD_LETTER_RETENTION_DAYS * 86_400_000).to_string(),
            )),
            Role::State => {}
        }
        s
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, strum::IntoStaticStr)]
#[strum(serialize_all = "UPPERCASE")]
pub enum Severity {
    /// Fine, said for completeness.
    Ok,
    /// The cluster does not say (librdkafka's mock cluster has no
    /// DescribeConfigs; an ACL may forbid it).
    Unchecked,
    /// Works, but weakens a promise (durability, availability, retention).
    Warning,
    /// Breaks a promise: must be fixed before mutebridge uses the topic.
    Problem,
}

/// One thing `check` found about a topic.
#[derive(Debug, Clone)]
pub struct Finding {
    pub topic: String,
    pub role: Role,
    pub severity: Severity,
    pub text: String,
}

/// What the cluster says about one existing topic.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub partitions: usize,
    /// The smallest replica count among its partitions.
    pub replicas: usize,
    /// Partitions whose in-sync replicas are fewer than their replicas.
    pub under_replicated: usize,
    /// Partitions without a leader (no write or read is possible).
    pub leaderless: usize,
    /// Effective topic settings (`None`: the cluster does not answer
    /// DescribeConfigs, like librdkafka's mock cluster).
    pub configs: Option<HashMap<String, String>>,
}

/// A connection to a cluster for creating and checking topics.
pub struct Topics {
    admin: std::sync::Arc<AdminClient<DefaultClientContext>>,
    bootstrap: String,
    /// Whether to ask for topic settings: off once the cluster failed to
    /// answer (each unanswered DescribeConfigs costs its timeout), and for
    /// librdkafka's mock cluster, which has none.
    describe: std::sync::atomic::AtomicBool,
    /// Whether the cluster is librdkafka's mock (asked once).
    mock: tokio::sync::OnceCell<bool>,
}

impl Topics {
    pub fn connect(cfg: &KafkaConfig, bootstrap: &str) -> anyhow::Result<Topics> {
        let admin = client_config(cfg, bootstrap)
            .create()
            .context("cannot create a Kafka admin client (check [kafka.client] properties)")?;
        Ok(Topics {
            admin: std::sync::Arc::new(admin),
            bootstrap: bootstrap.to_owned(),
            describe: std::sync::atomic::AtomicBool::new(true),
            mock: tokio::sync::OnceCell::new(),
        })
    }

    /// Whether the cluster is librdkafka's mock cluster (the embedded one,
    /// or `mutebridge dev-kafka`): it has neither CreateTopics nor
    /// DescribeConfigs, and asking would only wait for a timeout. Its
    /// cluster ID says so.
    async fn is_mock(&self) -> bool {
        *self
            .mock
            .get_or_init(|| async {
                let admin = self.admin.clone();
                tokio::task::spawn_blocking(move || {
                    admin
                        .inner()
                        .fetch_cluster_id(Duration::from_secs(5))
                        .is_some_and(|id| id.starts_with("mockCluster"))
                })
                .await
                .unwrap_or(false)
            })
            .await
    }

    /// Does not ask for topic settings (a cluster known to have none:
    /// librdkafka's mock cluster).
    pub fn without_settings(self) -> Topics {
        self.describe
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// How many brokers the cluster has.
    pub async fn brokers(&self) -> anyhow::Result<usize> {
        let metadata = self.metadata(None).await?;
        Ok(metadata.brokers().len())
    }

    async fn metadata(&self, topic: Option<&str>) -> anyhow::Result<rdkafka::metadata::Metadata> {
        let admin = self.admin.clone();
        let topic = topic.map(str::to_owned);
        // librdkafka's metadata call blocks.
        tokio::task::spawn_blocking(move || {
            admin
                .inner()
                .fetch_metadata(topic.as_deref(), Duration::from_secs(15))
        })
        .await?
        .with_context(|| {
            format!(
                "cannot reach Kafka at {}: check kafka.brokers and that the brokers are up",
                self.bootstrap
            )
        })
    }

    /// What the cluster says about `topic`; `None` when it does not exist.
    pub async fn observe(&self, topic: &str) -> anyhow::Result<Option<Observed>> {
        let metadata = self.metadata(Some(topic)).await?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match t.error() {
            None if !t.partitions().is_empty() => {}
            None => return Ok(None),
            Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
                return Ok(None)
            }
            Some(e) => anyhow::bail!("topic {topic}: {:?}", RDKafkaErrorCode::from(e)),
        }
        let replicas = t
            .partitions()
            .iter()
            .map(|p| p.replicas().len())
            .min()
            .unwrap_or(0);
        let under_replicated = t
            .partitions()
            .iter()
            .filter(|p| p.isr().len() < p.replicas().len())
            .count();
        let leaderless = t.partitions().iter().filter(|p| p.leader() < 0).count();
        Ok(Some(Observed {
            partitions: t.partitions().len(),
            replicas,
            under_replicated,
            leaderless,
            configs: self.configs(topic).await,
        }))
    }

    /// Like [`Topics::observe`], but a topic that seems missing is asked for
    /// again for a few seconds: a broker hears of a topic created through
    /// another one a moment later.
    async fn observe_settled(&self, topic: &str) -> anyhow::Result<Option<Observed>> {
        for _ in 0..15 {
            if let Some(o) = self.observe(topic).await? {
                return Ok(Some(o));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.observe(topic).await
    }

    /// The effective settings of `topic`; `None` when the cluster does not
    /// answer (librdkafka's mock cluster has no DescribeConfigs; an ACL may
    /// forbid it).
    async fn configs(&self, topic: &str) -> Option<HashMap<String, String>> {
        use std::sync::atomic::Ordering;
        if !self.describe.load(Ordering::Relaxed) || self.is_mock().await {
            return None;
        }
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let resource = ResourceSpecifier::Topic(topic);
        let asked = tokio::time::timeout(
            Duration::from_secs(12),
            self.admin.describe_configs([&resource], &opts),
        )
        .await;
        let answer = asked
            .ok()
            .and_then(Result::ok)
            .and_then(|r| r.into_iter().next());
        let Some(Ok(resource)) = answer else {
            self.describe.store(false, Ordering::Relaxed);
            return None;
        };
        Some(
            resource
                .entries
                .into_iter()
                .filter_map(|e| Some((e.name, e.value?)))
                .collect(),
        )
    }

    /// Creates `wanted` as the plan says (`partitions` of them); an
    /// existing topic is left as it is. Returns whether it was created.
    pub async fn create(
        &self,
        plan: &Plan,
        wanted: &Wanted,
        partitions: i32,
    ) -> anyhow::Result<bool> {
        if self.is_mock().await {
            anyhow::bail!(
                "cannot create topic {} ({}) on {}: it is librdkafka's mock cluster (`mutebridge dev-kafka`), which cannot create topics for its clients; create it there (dev-kafka --topic ...) and set kafka.create_topics = false",
                wanted.name,
                wanted.role.key(),
                self.bootstrap
            );
        }
        let settings = plan.settings(wanted.role);
        let mut topic = NewTopic::new(
            &wanted.name,
            partitions,
            TopicReplication::Fixed(plan.replication_factor),
        );
        for (k, v) in &settings {
            topic = topic.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let cannot = |why: String| {
            anyhow::anyhow!(
                "cannot create topic {} ({}) on {}: {why}; create it yourself (`mutebridge topics check` says what it needs) and set kafka.create_topics = false",
                wanted.name,
                wanted.role.key(),
                self.bootstrap
            )
        };
        let results = tokio::time::timeout(Duration::from_secs(15), self.admin.create_topics([&topic], &opts))
            .await
            .map_err(|_| cannot("the cluster answers metadata requests but did not answer CreateTopics within 15 s (librdkafka's mock cluster behind `mutebridge dev-kafka` cannot create topics)".into()))?
            .map_err(|e| cannot(e.to_string()))?;
        for result in results {
            match result {
                Ok(_) => {}
                // Created by another replica meanwhile.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(false),
                Err((_, RDKafkaErrorCode::InvalidReplicationFactor)) => {
                    return Err(cannot(format!(
                        "the cluster has {} broker(s), fewer than the replication factor {} (kafka.replication_factor)",
                        plan.brokers, plan.replication_factor
                    )))
                }
                Err((_, code)) => return Err(cannot(code.to_string())),
            }
        }
        tracing::info!(topic = %wanted.name, role = <&str>::from(wanted.role), partitions, replication_factor = plan.replication_factor, min_insync_replicas = plan.min_insync_replicas, "created topic");
        // The controller answers before every broker's metadata has the
        // topic: wait until clients can use it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .observe(&wanted.name)
                .await?
                .is_some_and(|o| o.partitions == partitions as usize && o.leaderless == 0);
            if ready {
                return Ok(true);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "created topic {} on {}, but its partitions have no leader after 30 s",
                    wanted.name,
                    self.bootstrap
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates what is missing of `plan`, the event topic first (the
    /// others take its partition count); returns each topic and whether
    /// it was created.
    pub async fn ensure(&self, plan: &Plan) -> anyhow::Result<Vec<(Wanted, bool)>> {
        let mut out = Vec::new();
        let mut event_partitions = self
            .observe(&plan.event_topic)
            .await?
            .map(|o| o.partitions as i32);
        if let Some(w) = plan.topics.iter().find(|w| w.role == Role::Events) {
            let created =
                event_partitions.is_none() && self.create(plan, w, plan.partitions).await?;
            event_partitions.get_or_insert(plan.partitions);
            out.push((w.clone(), created));
        }
        for w in plan.topics.iter().filter(|w| w.role != Role::Events) {
            let created = self.observe(&w.name).await?.is_none()
                && self
                    .create(plan, w, event_partitions.unwrap_or(plan.partitions))
                    .await?;
            out.push((w.clone(), created));
        }
        Ok(out)
    }

    /// Everything wrong (or worth knowing) about the plan's topics as they
    /// are on the cluster.
    pub async fn check(&self, plan: &Plan) -> anyhow::Result<Vec<Finding>> {
        let events = self.observe_settled(&plan.event_topic).await?;
        let mut findings = Vec::new();
        for w in &plan.topics {
            let observed = if w.name == plan.event_topic {
                events.clone()
            } else {
                self.observe_settled(&w.name).await?
            };
            let event_partitions = events.as_ref().map(|e| e.partitions);
            findings.extend(judge(plan, w, observed.as_ref(), event_partitions));
        }
        Ok(findings)
    }
}

/// The findings about one topic, from what the cluster says of it.
pub fn judge(
    plan: &Plan,
    wanted: &Wanted,
    observed: Option<&Observed>,
    event_partitions: Option<usize>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut say = |severity: Severity, text: String| {
        out.push(Finding {
            topic: wanted.name.clone(),
            role: wanted.role,
            severity,
            text,
        })
    };
    let Some(o) = observed else {
        let partitions = match (wanted.role, event_partitions) {
            (Role::Events, _) | (_, None) => {
                format!("{} partitions, kafka.partitions", plan.partitions)
            }
            (_, Some(n)) => format!("{n} partitions, the event topic's"),
        };
        say(
            Severity::Problem,
            format!("does not exist: `mutebridge topics create --config FILE` creates it ({partitions})"),
        );
        return out;
    };
    let topic = &wanted.name;
    let alter = |setting: &str| {
        format!("kafka-configs.sh --bootstrap-server ... --alter --entity-type topics --entity-name {topic} --add-config {setting}")
    };
    // Partitions.
    match wanted.role {
        Role::Events if o.partitions as i32 != plan.partitions => say(
            Severity::Warning,
            format!(
                "{} partitions, kafka.partitions says {}: mutebridge uses the topic as it is (repartitioning would move groups between partitions and break their order); set kafka.partitions = {} to match",
                o.partitions, plan.partitions, o.partitions
            ),
        ),
        Role::State => match event_partitions {
            Some(e) if e != o.partitions => say(
                Severity::Problem,
                format!(
                    "has {} partitions and the event topic has {e}: they must match, because a group's state is kept in its events' partition number; recreate it with {e} partitions (the workers rebuild it from new events) or set worker.state_topic to a new topic",
                    o.partitions
                ),
            ),
            _ => {}
        },
        _ => {}
    }
    // Replication.
    let wanted_rf = plan.replication_factor.max(1) as usize;
    if o.replicas < wanted_rf.min(plan.brokers) {
        say(
            Severity::Warning,
            format!(
                "replication factor {}, below {wanted_rf} (kafka.replication_factor, {} broker(s)): a broker's disk lost can lose acknowledged records",
                o.replicas, plan.brokers
            ),
        );
    }
    if o.leaderless > 0 {
        say(
            Severity::Warning,
            format!(
                "{} partition(s) have no leader right now: nothing can be written to or read from them",
                o.leaderless
            ),
        );
    }
    if o.under_replicated > 0 {
        say(
            Severity::Warning,
            format!(
                "{} partition(s) have fewer in-sync replicas than replicas right now (a broker down or catching up)",
                o.under_replicated
            ),
        );
    }
    let Some(configs) = &o.configs else {
        say(
            Severity::Unchecked,
            "the cluster does not describe topic settings (DescribeConfigs): cleanup.policy, min.insync.replicas and retention cannot be checked".into(),
        );
        return out;
    };
    let get = |k: &str| configs.get(k).map(String::as_str);
    // min.insync.replicas against the replicas the topic has.
    if let Some(isr) = get("min.insync.replicas").and_then(|v| v.parse::<usize>().ok()) {
        if isr > o.replicas {
            say(
                Severity::Problem,
                format!(
                    "min.insync.replicas={isr} with {} replica(s): every write is refused (NOT_ENOUGH_REPLICAS); fix: {}",
                    o.replicas,
                    alter(&format!("min.insync.replicas={}", plan.min_insync_replicas))
                ),
            );
        } else if isr == o.replicas && o.replicas > 1 {
            say(
                Severity::Warning,
                format!(
                    "min.insync.replicas={isr} equals the replication factor: one broker down stops every write (ingest answers 503); {} is usual",
                    o.replicas - 1
                ),
            );
        } else if isr < 2 && o.replicas > 1 {
            say(
                Severity::Warning,
                format!(
                    "min.insync.replicas=1 with {} replicas: a 200 may mean the record is on one broker only, lost with it; fix: {}",
                    o.replicas,
                    alter("min.insync.replicas=2")
                ),
            );
        }
    }
    if get("unclean.leader.election.enable") == Some("true") {
        say(
            Severity::Problem,
            format!(
                "unclean.leader.election.enable=true: an out-of-sync replica can become leader and drop acknowledged records; fix: {}",
                alter("unclean.leader.election.enable=false")
            ),
        );
    }
    let policy = get("cleanup.policy").unwrap_or("delete");
    let policies: Vec<&str> = policy.split(',').map(str::trim).collect();
    match wanted.role {
        Role::State => {
            if !policies.contains(&"compact") {
                say(
                    Severity::Problem,
                    format!(
                        "cleanup.policy={policy}: its records would expire with retention and every group's mute state with them; fix: {}",
                        alter("cleanup.policy=compact")
                    ),
                );
            } else if policies.contains(&"delete") {
                say(
                    Severity::Problem,
                    format!(
                        "cleanup.policy={policy}: retention would delete the guards and the renewal records of groups that stay quiet; fix: {}",
                        alter("cleanup.policy=compact")
                    ),
                );
            }
        }
        Role::Events | Role::DeadLetters if policies.contains(&"compact") => say(
            Severity::Problem,
            format!(
                "cleanup.policy={policy}: compaction keeps only each group's newest record, so records not yet read would vanish; fix: {}",
                alter("cleanup.policy=delete")
            ),
        ),
        _ => {}
    }
    if wanted.role == Role::Events {
        match get("retention.ms").and_then(|v| v.parse::<i64>().ok()) {
            Some(ms) if ms >= 0 && ms < plan.event_retention_ms => say(
                Severity::Warning,
                format!(
                    "retention.ms={ms} ({:.1} h), below kafka.retention_hours ({} h): a target down longer than that loses the events it has not read (mutebridge_worker_offsets_skipped_total counts them)",
                    ms as f64 / 3_600_000.0,
                    plan.event_retention_ms / 3_600_000
                ),
            ),
            Some(ms) => say(
                Severity::Ok,
                if ms < 0 {
                    "keeps records for ever (retention.ms=-1)".into()
                } else {
                    format!(
                        "keeps records {:.1} h: the longest a target may be down without losing events",
                        ms as f64 / 3_600_000.0
                    )
                },
            ),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let mut config = Config::default();
        config.kafka.brokers = "x:1".into();
        Plan::new(&config, <Role as strum::VariantArray>::VARIANTS, 3)
    }

    fn observed(partitions: usize, configs: &[(&str, &str)]) -> Observed {
        Observed {
            partitions,
            replicas: 3,
            under_replicated: 0,
            leaderless: 0,
            configs: Some(
                configs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
        }
    }

    fn severities(f: &[Finding]) -> Vec<(Severity, String)> {
        f.iter().map(|f| (f.severity, f.text.clone())).collect()
    }

    #[test]
    fn defaults_follow_the_cluster_size() {
        let p = plan();
        assert_eq!((p.replication_factor, p.min_insync_replicas), (3, 2));
        let one = Plan::events(&Config::default().kafka, 1);
        assert_eq!((one.replication_factor, one.min_insync_replicas), (1, 1));
        let state = p.settings(Role::State);
        assert!(state.contains(&("cleanup.policy", "compact".into())));
        assert!(!state.iter().any(|(k, _)| *k == "retention.ms"));
    }

    #[test]
    fn a_state_topic_that_also_deletes_is_a_problem() {
        let p = plan();
        let state = &p.topics[1];
        let f = judge(
            &p,
            state,
            Some(&observed(
                12,
                &[
                    ("cleanup.policy", "compact,delete"),
                    ("min.insync.replicas", "2"),
                ],
            )),
            Some(12),
        );
        assert!(
            matches!(severities(&f).as_slice(), [(Severity::Problem, t)] if t.contains("renewal records")),
            "{f:?}"
        );
        let fine = judge(
            &p,
            state,
            Some(&observed(
                12,
                &[("cleanup.policy", "compact"), ("min.insync.replicas", "2")],
            )),
            Some(12),
        );
        assert!(fine.is_empty(), "{fine:?}");
    }

    #[test]
    fn partitions_replication_and_compaction_of_events_are_judged() {
        let p = plan();
        let events = &p.topics[0];
        let f = judge(
            &p,
            events,
            Some(&observed(
                6,
                &[
                    ("cleanup.policy", "compact"),
                    ("min.insync.replicas", "1"),
                    ("unclean.leader.election.enable", "true"),
                    ("retention.ms", "3600000"),
                ],
            )),
            Some(6),
        );
        let texts: Vec<String> = f
            .iter()
            .map(|f| format!("{:?} {}", f.severity, f.text))
            .collect();
        assert!(
            texts.iter().any(|t| t.starts_with("Warning 6 partitions")),
            "{texts:?}"
        );
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with("Warning min.insync.replicas=1")),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(|t| t.starts_with("Problem unclean")),
            "{texts:?}"
        );
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with("Problem cleanup.policy=compact")),
            "{texts:?}"
        );
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with("Warning retention.ms=3600000")),
            "{texts:?}"
        );
        let missing = judge(&p, events, None, None);
        assert_eq!(missing[0].severity, Severity::Problem);
    }

    #[test]
    fn a_state_topic_partitioned_unlike_the_events_is_a_problem() {
        let p = plan();
        let f = judge(
            &p,
            &p.topics[1],
            Some(&observed(
                4,
                &[("cleanup.policy", "compact"), ("min.insync.replicas", "2")],
            )),
            Some(12),
        );
        assert!(
            f[0].severity == Severity::Problem && f[0].text.contains("must match"),
            "{f:?}"
        );
    }

    #[test]
    fn min_isr_above_the_replicas_refuses_every_write() {
        let p = plan();
        let mut o = observed(
            12,
            &[("cleanup.policy", "delete"), ("min.insync.replicas", "3")],
        );
        o.replicas = 2;
        let f = judge(&p, &p.topics[2], Some(&o), Some(12));
        assert!(
            f.iter()
                .any(|f| f.severity == Severity::Problem
                    && f.text.contains("every write is refused")),
            "{f:?}"
        );
        assert!(f.iter().any(|f| f.severity == Severity::Warning && f.text.contains("replication factor 2")), "{f:?}");
    }
}
