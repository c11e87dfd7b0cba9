//! Configuration: one TOML file, every key defaulted, unknown keys rejected.
//!
//! Errors name the file and the key (`mutebridge.toml: kafka.partitions: ...`)
//! because a service that silently ignores a misspelt key is one that runs
//! with the wrong settings in production.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::policy::{Capabilities, MapConfig, Policy, PolicyConfig};
use crate::targets::TargetConfig;

/// The appkey accepted when mutebridge runs without a config file.
pub const DEMO_APPKEY: &str = "demo#mutebridge";
/// The secret of the demo app. Only ever used without a config file.
pub const DEMO_SECRET: &str = "demo-secret";

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub ops: OpsConfig,
    pub kafka: KafkaConfig,
    pub easemob: EasemobConfig,
    pub worker: WorkerConfig,
    /// `[targets.NAME]`: downstream APIs the policy's actions go to.
    pub targets: BTreeMap<String, TargetConfig>,
    pub policy: PolicyConfig,
    /// `[maps.NAME]`: ID translation tables the policy may use.
    pub maps: BTreeMap<String, MapConfig>,
    /// The file this came from (for error messages); `None` for the demo.
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// The policy compiled when the file was loaded (map files read once),
    /// with a fingerprint of the sections it was compiled from.
    #[serde(skip)]
    compiled: Option<(u64, Arc<Policy>)>,
}

/// `[worker]`: the consumer groups that apply the policy: `group_id` keeps
/// the groups' newest mute state, `{group_id}.{target}` applies each
/// target's actions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// The state keeper's Kafka consumer group, and the prefix of each
    /// target's (`{group_id}.{target}`); every worker replica uses the same.
    pub group_id: String,
    /// Groups processed concurrently, per target; one group is always
    /// sequential.
    pub max_in_flight_groups: usize,
    /// Events held in memory per target (queued behind a busy group or
    /// running); at the limit fetching pauses until the backlog halves.
    pub max_buffered_events: usize,
    /// Where actions that failed for good go, with the reason.
    pub dlq_topic: String,
    /// Keep each group's mute state and refuse events older than it (the
    /// stale-event guard). Off: every event is applied in partition order.
    pub track_state: bool,
    /// The compacted topic holding one mute state per group; same
    /// partition count as `kafka.topic`.
    pub state_topic: String,
    /// How long an unmuted member (or a timed mute past its end) is
    /// remembered, to refuse a late mute of it. Longer than Easemob's
    /// 3-day re-send window.
    pub state_horizon_days: u32,
    /// How often finished offsets are committed (also on rebalance and exit).
    pub commit_interval_ms: u64,
    /// On SIGTERM, how long in-flight actions may take before they are
    /// abandoned (their events are re-delivered after a restart).
    pub shutdown_grace_seconds: u64,
    /// Per-attempt HTTP timeout for targets.
    pub request_timeout_ms: u64,
    pub retry: RetryConfig,
    /// Each target's circuit breaker: when it opens, and how often it
    /// probes.
    pub circuit_breaker: crate::worker::breaker::BreakerConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            group_id: "mutebridge-workers".into(),
            max_in_flight_groups: 256,
            max_buffered_events: 10_000,
            dlq_topic: "im.group-events.dlq".into(),
            track_state: true,
            state_topic: "im.group-events.state".into(),
            state_horizon_days: 7,
            commit_interval_ms: 1000,
            shutdown_grace_seconds: 10,
            request_timeout_ms: 10_000,
            retry: RetryConfig::default(),
            circuit_breaker: Default::default(),
        }
    }
}

/// `[worker.retry]`: the budget of one action (one provider call).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// Time from the first attempt after which no new attempt starts.
    pub max_elapsed_seconds: u64,
    /// Backoff ceiling of the first retry; doubles per attempt, with full
    /// jitter (a uniformly random wait between 0 and the ceiling).
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// How long one call may keep drawing the provider's rate-limit answer
    /// before it is dead-lettered (reason `rate_limited`). Rate-limit
    /// answers are temporary by definition: they count against this, not
    /// against `max_attempts` or `max_elapsed_seconds`.
    pub rate_limited_horizon_seconds: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 8,
            max_elapsed_seconds: 300,
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
            rate_limited_horizon_seconds: 6 * 3600,
        }
    }
}

/// `[http]`: the listener and what a reply may promise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on for callbacks and `/healthz`, `/readyz`; also
    /// `/metrics` unless `[ops] listen` is set.
    pub listen: SocketAddr,
    /// Larger bodies get 413 without being read.
    pub max_body_bytes: usize,
    /// Longest request head (request line and headers); a longer one is
    /// answered 431 and the connection closed, so a client cannot make the
    /// server buffer an endless header.
    pub max_header_bytes: usize,
    /// Most bytes of unfinished requests (heads and bodies still arriving)
    /// held at once over all connections. Past it, the connection that has
    /// been receiving longest without finishing is closed (`memory`).
    pub max_buffered_bytes: usize,
    /// How long a callback waits for Kafka's acknowledgement before 503.
    /// Keep it below the sender's own timeout so its retry gets an answer.
    pub ack_timeout_ms: u64,
    /// Value of the `Retry-After` header on 503.
    pub retry_after_seconds: u64,
    /// On SIGTERM, how long in-flight requests and the producer flush may take.
    pub shutdown_grace_seconds: u64,
    /// A connection must deliver a whole request head this soon after it
    /// opens, or after the head's first byte.
    pub header_timeout_seconds: u64,
    /// A request body must arrive this soon after its head (else 408).
    pub body_timeout_seconds: u64,
    /// A keep-alive connection with no new request this long after the last
    /// reply is closed. Keep it above your load balancer's idle timeout, so
    /// that the balancer closes first and never reuses a closed connection.
    pub idle_timeout_seconds: u64,
    /// Most connections open at once; lowered at start to fit the process's
    /// file-descriptor limit (less 128 kept for Kafka and files).
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            max_body_bytes: 65536,
            max_header_bytes: 32 * 1024,
            max_buffered_bytes: 32 * 1024 * 1024,
            ack_timeout_ms: 3000,
            retry_after_seconds: 1,
            shutdown_grace_seconds: 10,
            header_timeout_seconds: 10,
            body_timeout_seconds: 10,
            idle_timeout_seconds: 60,
            max_connections: 10_000,
        }
    }
}

/// `[ops]`: the operators' listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// `HOST:PORT` serving `/metrics`, `/healthz` and `/readyz`. When set,
    /// `/metrics` is served only here (the callback port answers 404 for
    /// it), so the port exposed to the internet does not tell the fd limit,
    /// open connections and close reasons; a worker-only process listens
    /// here instead of `http.listen`.
    pub listen: Option<SocketAddr>,
}

/// `[kafka]`: where events go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `"embedded"` for the in-process cluster, or `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic of normalized events.
    pub topic: String,
    /// Partition count used when mutebridge creates the topic.
    pub partitions: i32,
    /// Replication factor used when mutebridge creates the topic; unset means
    /// the broker's `default.replication.factor`.
    pub replication_factor: Option<i32>,
    /// Create the topic at startup when it does not exist.
    pub create_topics: bool,
    /// Extra librdkafka properties, passed through as they are; a string
    /// `env:NAME` is read from the environment (a SASL password).
    pub client: BTreeMap<String, toml::Value>,
    /// The `env:` values of `client`, once read (kept apart so that they
    /// are never printed with the rest).
    #[serde(skip)]
    resolved_client: BTreeMap<String, Secret>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "embedded".into(),
            topic: "im.group-events".into(),
            partitions: 12,
            replication_factor: None,
            create_topics: true,
            client: BTreeMap::new(),
            resolved_client: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// True when the in-process cluster should be started.
    pub fn is_embedded(&self) -> bool {
        self.brokers.trim() == "embedded"
    }

    /// `[kafka.client]` as librdkafka property strings, `env:` values read.
    pub fn client_properties(&self) -> Vec<(String, String)> {
        self.client
            .iter()
            .map(|(k, v)| {
                let value = match (self.resolved_client.get(k), v) {
                    (Some(secret), _) => secret.expose().to_owned(),
                    (None, toml::Value::String(s)) => s.clone(),
                    (None, other) => other.to_string(),
                };
                (k.clone(), value)
            })
            .collect()
    }
}

/// `[easemob]`: which apps may call, and how callbacks are deduplicated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EasemobConfig {
    pub apps: Vec<EasemobApp>,
    /// Reject callbacks whose `timestamp` is older than this many seconds
    /// (0 = off). Only the clock of the sender is trusted, so keep it generous.
    pub replay_window_seconds: u64,
    /// Reject callbacks whose `timestamp` is more than this many seconds
    /// ahead of our clock (400): a future-dated event would make every real
    /// change after it look older, and be refused as stale by the worker.
    pub max_future_skew_seconds: u64,
    /// How long a published `callId` is remembered to answer retries with 200.
    pub dedup_window_seconds: u64,
    /// Upper bound on remembered callbacks; the oldest are forgotten first.
    pub dedup_capacity: usize,
    /// Also treat a callback as a duplicate when its content (group, operation,
    /// members, timestamp) matches a recent one under a different `callId`.
    pub dedup_by_content: bool,
}

impl Default for EasemobConfig {
    fn default() -> Self {
        EasemobConfig {
            apps: Vec::new(),
            replay_window_seconds: 0,
            max_future_skew_seconds: 300,
            dedup_window_seconds: 600,
            dedup_capacity: 100_000,
            dedup_by_content: true,
        }
    }
}

/// One Easemob app and the secrets of its callback rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EasemobApp {
    pub appkey: String,
    /// One secret per callback rule (Easemob allows up to 4), so rules can be
    /// rotated without downtime. `env:NAME` reads the environment variable.
    pub secrets: Vec<Secret>,
}

/// A secret value; never printed. Written in the file as the value itself
/// or as `env:NAME`, which stays unresolved until the load asks for the
/// secrets of a role that uses it (see [`Secrets`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(SecretValue);

#[derive(Clone, PartialEq, Eq)]
enum SecretValue {
    Value(String),
    /// `env:NAME` not read yet: the name of the variable.
    Env(String),
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretValue::Value(value.into()))
    }

    /// The secret itself, for signing; do not log it. Empty while it is an
    /// unresolved `env:` reference: a role uses only secrets it resolved.
    pub fn expose(&self) -> &str {
        match &self.0 {
            SecretValue::Value(v) => v,
            SecretValue::Env(_) => "",
        }
    }

    /// False for an `env:NAME` reference that was not read (a load that
    /// does not use this secret leaves it so).
    pub fn is_resolved(&self) -> bool {
        matches!(self.0, SecretValue::Value(_))
    }

    fn from_text(text: String) -> Secret {
        match text.strip_prefix("env:") {
            Some(name) => Secret(SecretValue::Env(name.to_owned())),
            None => Secret(SecretValue::Value(text)),
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::from_text)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            SecretValue::Value(_) => f.write_str("Secret(<redacted>)"),
            SecretValue::Env(name) => write!(f, "Secret(env:{name}, unresolved)"),
        }
    }
}

/// Which `env:` secrets a load reads from the environment. Each role
/// resolves only what it uses, so an internet-facing ingest holds no
/// provider credential and a worker no callback secret; a secret left
/// unresolved needs no variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secrets {
    /// `easemob.apps[].secrets`: the ingest role.
    pub apps: bool,
    /// The targets' secrets and Redis URLs: the worker role.
    pub targets: bool,
    /// `env:` values in `[kafka.client]` (a SASL password): every client.
    pub kafka: bool,
}

impl Secrets {
    /// Nothing: the file is checked without its secrets.
    pub const NONE: Secrets = Secrets {
        apps: false,
        targets: false,
        kafka: false,
    };
    /// What `mutebridge ingest` uses.
    pub const INGEST: Secrets = Secrets {
        apps: true,
        targets: false,
        kafka: true,
    };
    /// What `mutebridge worker` uses.
    pub const WORKER: Secrets = Secrets {
        apps: false,
        targets: true,
        kafka: true,
    };
    /// Kafka's only: the commands that read or write topics.
    pub const KAFKA: Secrets = Secrets {
        apps: false,
        targets: false,
        kafka: true,
    };
    /// The targets' only: `policy explain` signs requests, talks to no one.
    pub const TARGETS: Secrets = Secrets {
        apps: false,
        targets: true,
        kafka: false,
    };
    /// Everything: `mutebridge run`.
    pub const ALL: Secrets = Secrets {
        apps: true,
        targets: true,
        kafka: true,
    };
}

/// A configuration mistake, naming where it is.
#[derive(Debug, thiserror::Error)]
#[error("{}: {key}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted path of the offending key (`easemob.apps[0].secrets[1]`).
    pub key: String,
    pub message: String,
}

/// A setting that is wrong: its dotted key path and what is wrong with it.
/// Each section checks itself with keys relative to the section;
/// [`Invalid::under`] puts the section's name in front on the way up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same mistake as seen from the table `prefix`
    /// (`rate_per_second` under `targets.zego` is `targets.zego.rate_per_second`).
    pub fn under(mut self, prefix: &str) -> Invalid {
        self.key = if self.key.is_empty() {
            prefix.to_owned()
        } else if self.key.starts_with('[') {
            format!("{prefix}{}", self.key)
        } else {
            format!("{prefix}.{}", self.key)
        };
        self
    }

    fn in_file(self, file: &Path) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            key: self.key,
            message: self.message,
        }
    }
}

/// What a callback's event adds to its body at most, apart from long IDs:
/// the contract's own fields, the record key and headers.
pub const EVENT_ENVELOPE_BYTES: usize = 512;

/// `Err(Invalid)` for `key`, to keep checks one line each.
fn invalid<T>(key: &str, message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid::new(key, message))
}

/// Where a configuration came from: a file, or the built-in demo defaults.
#[derive(Debug, Clone)]
pub enum Origin {
    File(PathBuf),
    Demo,
}

impl Config {
    /// The zero-config setup: embedded Kafka, the demo app, and a policy
    /// whose targets print the requests they would send (`src/demo.toml`).
    pub fn demo() -> Config {
        Config::parse_with_env(DEMO_TOML, Path::new("(built-in demo config)"), &|_| None)
            .expect("the built-in demo config is valid")
    }

    /// Fails unless the ingest role can run with this config.
    pub fn require_ingest(&self) -> Result<(), ConfigError> {
        if self.easemob.apps.is_empty() {
            return Err(Invalid::new(
                "easemob.apps",
                "no app is configured, so no callback could be verified; add an [[easemob.apps]] table",
            )
            .in_file(&self.file_name()));
        }
        Ok(())
    }

    fn file_name(&self) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(|| PathBuf::from("(config)"))
    }

    /// The compiled policy: the one compiled when the file was loaded, or,
    /// for a config built or changed in code since, compiled now.
    pub fn policy(&self) -> Result<Arc<Policy>, ConfigError> {
        match &self.compiled {
            Some((fingerprint, policy)) if *fingerprint == self.policy_fingerprint() => {
                Ok(policy.clone())
            }
            _ => self.compile_policy().map(Arc::new),
        }
    }

    /// Identifies the sections the policy is compiled from (`targets`,
    /// `policy`, `maps`), so a cached policy is never used for fields that
    /// were changed after loading. Called once per role start, not per event.
    fn policy_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{:?}{:?}{:?}", self.targets, self.policy, self.maps).hash(&mut h);
        h.finish()
    }

    fn compile_policy(&self) -> Result<Policy, ConfigError> {
        let base = self
            .file
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        let targets: BTreeMap<&str, Capabilities> = self
            .targets
            .iter()
            .map(|(name, t)| (name.as_str(), t.capabilities()))
            .collect();
        Policy::build(&self.policy, &targets, &self.maps, base)
            .map_err(|e| e.in_file(&self.file_name()))
    }

    /// Loads `path`, or the demo configuration when `path` is `None`,
    /// reading the `secrets` its caller uses from the environment.
    pub fn load(path: Option<&Path>, secrets: Secrets) -> Result<(Config, Origin), ConfigError> {
        match path {
            None => Ok((Config::demo(), Origin::Demo)),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Invalid::new("(file)", format!("cannot read the config file: {e}"))
                        .in_file(path)
                })?;
                Ok((
                    Config::parse_with(&text, path, &|name| std::env::var(name).ok(), secrets)?,
                    Origin::File(path.to_path_buf()),
                ))
            }
        }
    }

    /// Parses and validates TOML text, every secret read from the
    /// environment; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, file, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::parse`], reading `env:` secrets through `env`.
    pub fn parse_with_env(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::parse_with(text, file, env, Secrets::ALL)
    }

    /// Parses and validates TOML text, reading only the `secrets` asked
    /// for through `env`; the others stay unresolved references.
    pub fn parse_with(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: Secrets,
    ) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                p if p == "." => "(top level)".to_string(),
                p => p,
            };
            let inner = e.into_inner();
            let at = inner.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" (line {line}, column {column})")
            });
            Invalid::new(
                key,
                format!("{}{}", one_line(inner.message()), at.unwrap_or_default()),
            )
            .in_file(file)
        })?;
        config.file = Some(file.to_path_buf());
        config
            .resolve_secrets(env, secrets)
            .and_then(|()| config.validate())
            .map_err(|e| e.in_file(file))?;
        config.compiled = Some((
            config.policy_fingerprint(),
            Arc::new(config.compile_policy()?),
        ));
        Ok(config)
    }

    /// Reads the selected `env:` secrets; the others are only checked to
    /// be well formed.
    fn resolve_secrets(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: Secrets,
    ) -> Result<(), Invalid> {
        for (i, app) in self.easemob.apps.iter_mut().enumerate() {
            for (j, secret) in app.secrets.iter_mut().enumerate() {
                resolve(secret, env, secrets.apps)
                    .map_err(|e| e.under(&format!("easemob.apps[{i}].secrets[{j}]")))?;
            }
        }
        for (name, target) in self.targets.iter_mut() {
            for (key, secret) in target.secrets_mut() {
                resolve(secret, env, secrets.targets)
                    .map_err(|e| e.under(&format!("targets.{name}.{key}")))?;
            }
        }
        let kafka = &mut self.kafka;
        kafka.resolved_client.clear();
        for (key, value) in &kafka.client {
            let toml::Value::String(text) = value else {
                continue;
            };
            if !text.starts_with("env:") {
                continue;
            }
            let mut secret = Secret::from_text(text.clone());
            resolve(&mut secret, env, secrets.kafka)
                .map_err(|e| e.under(&format!("kafka.client.\"{key}\"")))?;
            if secret.is_resolved() {
                kafka.resolved_client.insert(key.clone(), secret);
            }
        }
        Ok(())
    }

    /// Checks what serde cannot, section by section (the policy is checked
    /// when it is compiled).
    fn validate(&self) -> Result<(), Invalid> {
        self.http.validate().map_err(|e| e.under("http"))?;
        self.kafka.validate().map_err(|e| e.under("kafka"))?;
        let max_message = crate::kafka::client::max_message_bytes(&self.kafka);
        if self.http.max_body_bytes + EVENT_ENVELOPE_BYTES > max_message {
            return invalid(
                "http.max_body_bytes",
                format!(
                    "{} bytes plus {EVENT_ENVELOPE_BYTES} of event envelope (fields, key, headers) do not fit the producer's message.max.bytes ({max_message}), so the largest callbacks could never be published; lower it or raise [kafka.client] \"message.max.bytes\" (and the topic's max.message.bytes)",
                    self.http.max_body_bytes
                ),
            );
        }
        self.easemob.validate().map_err(|e| e.under("easemob"))?;
        self.worker
            .validate(&self.kafka)
            .map_err(|e| e.under("worker"))?;
        for (name, target) in &self.targets {
            check_target_name(name).map_err(|e| e.under(&format!("targets.{name}")))?;
            target
                .validate()
                .map_err(|e| e.under(&format!("targets.{name}")))?;
        }
        if let Some(ops) = self.ops.listen {
            if ops == self.http.listen && ops.port() != 0 {
                return invalid(
                    "ops.listen",
                    format!(
                        "{ops} is http.listen too; give the operators' listener a port of its own"
                    ),
                );
            }
        }
        Ok(())
    }
}

/// `value` (in `unit`) must lie in `range`: durations and sizes beyond it
/// are mistakes, and some would overflow a timer at run time.
fn within(
    key: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
) -> Result<(), Invalid> {
    if range.contains(&value) {
        Ok(())
    } else {
        invalid(
            key,
            format!(
                "{value} is not between {} and {} {unit}",
                range.start(),
                range.end()
            ),
        )
    }
}

/// Seconds in a day, for bounds.
const DAY: u64 = 86_400;

impl HttpConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.max_body_bytes < 1024 {
            return invalid("max_body_bytes", "must be at least 1024 bytes");
        }
        // hyper's read buffer cannot be smaller than 8 KiB.
        within(
            "max_header_bytes",
            self.max_header_bytes as u64,
            8192..=1 << 20,
            "bytes",
        )?;
        let one_request = (self.max_header_bytes + self.max_body_bytes) as u64;
        within(
            "max_buffered_bytes",
            self.max_buffered_bytes as u64,
            (one_request * 16).max(1 << 20)..=1 << 36,
            "bytes (at least 16 requests of max_header_bytes + max_body_bytes)",
        )?;
        within("ack_timeout_ms", self.ack_timeout_ms, 1..=300_000, "ms")?;
        within(
            "retry_after_seconds",
            self.retry_after_seconds,
            0..=DAY,
            "seconds",
        )?;
        within(
            "shutdown_grace_seconds",
            self.shutdown_grace_seconds,
            0..=3600,
            "seconds",
        )?;
        for (key, value) in [
            ("header_timeout_seconds", self.header_timeout_seconds),
            ("body_timeout_seconds", self.body_timeout_seconds),
            ("idle_timeout_seconds", self.idle_timeout_seconds),
        ] {
            within(key, value, 1..=3600, "seconds")?;
        }
        within(
            "max_connections",
            self.max_connections as u64,
            16..=1_000_000,
            "connections",
        )?;
        Ok(())
    }
}

impl KafkaConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.brokers.trim().is_empty() {
            return invalid(
                "brokers",
                "must be \"embedded\" or host:port[,host:port...]",
            );
        }
        if self.topic.trim().is_empty() {
            return invalid("topic", "must not be empty");
        }
        if !(1..=10_000).contains(&self.partitions) {
            return invalid(
                "partitions",
                format!("{} is not between 1 and 10000", self.partitions),
            );
        }
        if self.replication_factor.is_some_and(|rf| rf < 1) {
            return invalid("replication_factor", "must be at least 1");
        }
        if let Some(v) = self.client.get("message.max.bytes") {
            let n = match v {
                toml::Value::Integer(n) => Some(*n),
                toml::Value::String(s) => s.parse().ok(),
                _ => None,
            };
            if !n.is_some_and(|n| (1000..=1_000_000_000).contains(&n)) {
                return invalid(
                    "client.\"message.max.bytes\"",
                    format!("{v} is not a number of bytes between 1000 and 1000000000"),
                );
            }
        }
        for (name, why) in crate::kafka::client::PINNED {
            if self.client.contains_key(*name) {
                return invalid(
                    &format!("client.\"{name}\""),
                    format!("mutebridge sets this itself and it cannot be overridden: {why}"),
                );
            }
        }
        Ok(())
    }
}

impl EasemobConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.dedup_capacity == 0 {
            return invalid("dedup_capacity", "must be at least 1");
        }
        within(
            "replay_window_seconds",
            self.replay_window_seconds,
            0..=30 * DAY,
            "seconds",
        )?;
        within(
            "max_future_skew_seconds",
            self.max_future_skew_seconds,
            1..=DAY,
            "seconds",
        )?;
        within(
            "dedup_window_seconds",
            self.dedup_window_seconds,
            0..=7 * DAY,
            "seconds",
        )?;
        let mut seen = HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let at = format!("apps[{i}]");
            let part = |p: &str| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            };
            if !app
                .appkey
                .split_once('#')
                .is_some_and(|(o, a)| part(o) && part(a))
            {
                return invalid(
                    &format!("{at}.appkey"),
                    format!("{:?} is not an appkey (expected org#app)", app.appkey),
                );
            }
            if !seen.insert(app.appkey.as_str()) {
                return invalid(
                    &format!("{at}.appkey"),
                    format!(
                        "{} is configured twice; put all its secrets in one entry",
                        app.appkey
                    ),
                );
            }
            if app.secrets.is_empty() || app.secrets.len() > 4 {
                return invalid(
                    &format!("{at}.secrets"),
                    format!(
                        "needs 1 to 4 secrets (one per callback rule), found {}",
                        app.secrets.len()
                    ),
                );
            }
            if let Some(j) = app
                .secrets
                .iter()
                .position(|s| s.is_resolved() && s.expose().is_empty())
            {
                return invalid(&format!("{at}.secrets[{j}]"), "is empty");
            }
        }
        Ok(())
    }
}

impl WorkerConfig {
    fn validate(&self, kafka: &KafkaConfig) -> Result<(), Invalid> {
        if self.group_id.trim().is_empty() {
            return invalid("group_id", "must not be empty");
        }
        if self.max_in_flight_groups == 0 {
            return invalid("max_in_flight_groups", "must be at least 1");
        }
        if self.max_buffered_events < self.max_in_flight_groups {
            return invalid(
                "max_buffered_events",
                format!(
                    "must be at least worker.max_in_flight_groups ({})",
                    self.max_in_flight_groups
                ),
            );
        }
        if self.dlq_topic.trim().is_empty() || self.dlq_topic == kafka.topic {
            return invalid("dlq_topic", "must be set and differ from kafka.topic");
        }
        if self.state_topic.trim().is_empty()
            || self.state_topic == kafka.topic
            || self.state_topic == self.dlq_topic
        {
            return invalid(
                "state_topic",
                "must be set and differ from kafka.topic and worker.dlq_topic",
            );
        }
        if self.state_horizon_days < 4 {
            return invalid(
                "state_horizon_days",
                "must be at least 4: Easemob re-sends stored callbacks up to 3 days late, and a guard forgotten sooner lets such a callback undo a newer change",
            );
        }
        within(
            "state_horizon_days",
            self.state_horizon_days.into(),
            4..=3650,
            "days",
        )?;
        within(
            "commit_interval_ms",
            self.commit_interval_ms,
            1..=600_000,
            "ms",
        )?;
        within(
            "shutdown_grace_seconds",
            self.shutdown_grace_seconds,
            0..=3600,
            "seconds",
        )?;
        within(
            "request_timeout_ms",
            self.request_timeout_ms,
            1..=600_000,
            "ms",
        )?;
        self.retry.validate().map_err(|e| e.under("retry"))?;
        self.circuit_breaker
            .validate(self.retry.max_attempts)
            .map_err(|e| e.under("circuit_breaker"))
    }
}

impl RetryConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.max_attempts == 0 {
            return invalid("max_attempts", "must be at least 1");
        }
        if self.initial_backoff_ms == 0 || self.max_backoff_ms < self.initial_backoff_ms {
            return invalid(
                "max_backoff_ms",
                "needs 0 < initial_backoff_ms <= max_backoff_ms",
            );
        }
        within("max_backoff_ms", self.max_backoff_ms, 1..=3_600_000, "ms")?;
        within(
            "max_elapsed_seconds",
            self.max_elapsed_seconds,
            0..=30 * DAY,
            "seconds",
        )?;
        if self.rate_limited_horizon_seconds == 0 {
            return invalid(
                "rate_limited_horizon_seconds",
                "must be greater than 0 (hours are typical: a rate-limit answer is temporary)",
            );
        }
        within(
            "rate_limited_horizon_seconds",
            self.rate_limited_horizon_seconds,
            1..=30 * DAY,
            "seconds",
        )?;
        Ok(())
    }
}

/// A target's name becomes part of a consumer group ID, record keys and
/// metric labels: letters, digits, `_` and `-` only, and not `state`
/// (the state keeper's `pipeline` label).
fn check_target_name(name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return invalid(
            "",
            "a target's name is 1 to 64 letters, digits, `_` or `-` (it names the target's consumer group)",
        );
    }
    if name == crate::worker::metrics::KEEPER {
        return invalid(
            "",
            "`state` is the state keeper's name in metrics; give the target another",
        );
    }
    Ok(())
}

/// The built-in demo configuration.
const DEMO_TOML: &str = include_str!("demo.toml");

/// Replaces an `env:NAME` secret with the variable's value when `read`;
/// otherwise only checks that it names a variable.
fn resolve(
    secret: &mut Secret,
    env: &dyn Fn(&str) -> Option<String>,
    read: bool,
) -> Result<(), Invalid> {
    match &secret.0 {
        SecretValue::Value(v) if v.is_empty() => invalid("", "is empty"),
        SecretValue::Value(_) => Ok(()),
        SecretValue::Env(name) if name.is_empty() => {
            invalid("", "`env:` names no environment variable")
        }
        SecretValue::Env(_) if !read => Ok(()),
        SecretValue::Env(name) => {
            let value = env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                Invalid::new(
                    "",
                    format!("environment variable {name} is not set or empty"),
                )
            })?;
            *secret = Secret::new(value);
            Ok(())
        }
    }
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, Path::new("test.toml"), &|name| match name {
            "SET" => Some("from-env".into()),
            _ => None,
        })
    }

    const APP: &str = "[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"s\"]\n";

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(APP).unwrap();
        assert_eq!(c.kafka.topic, "im.group-events");
        assert_eq!(c.kafka.partitions, 12);
        assert!(c.kafka.is_embedded());
        assert_eq!(c.http.max_body_bytes, 65536);
        assert_eq!(c.easemob.apps[0].secrets[0].expose(), "s");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = parse(&format!("{APP}[kafka]\ntopik = \"x\"\n")).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("test.toml: kafka"), "{text}");
        assert!(text.contains("topik"), "{text}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = parse(&format!("{APP}[kafka]\npartitions = \"twelve\"\n")).unwrap_err();
        assert_eq!(e.key, "kafka.partitions", "{e}");
    }

    #[test]
    fn env_secrets_resolve_or_fail_by_name() {
        let ok = parse("[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"env:SET\"]\n").unwrap();
        assert_eq!(ok.easemob.apps[0].secrets[0].expose(), "from-env");
        let e = parse("[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"x\", \"env:UNSET\"]\n")
            .unwrap_err();
        assert_eq!(e.key, "easemob.apps[0].secrets[1]");
        assert!(e.message.contains("UNSET"));
    }

    #[test]
    fn validation_errors_name_the_key() {
        let e = parse("").unwrap().require_ingest().unwrap_err();
        assert_eq!(e.key, "easemob.apps");
        let e = parse(
            "[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"1\",\"2\",\"3\",\"4\",\"5\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "easemob.apps[0].secrets");
        let e = parse(&format!("{APP}[kafka.client]\nacks = \"1\"\n")).unwrap_err();
        assert!(e.key.contains("acks"), "{e}");
        let e = parse(&format!("{APP}[kafka]\npartitions = 0\n")).unwrap_err();
        assert_eq!(e.key, "kafka.partitions");
        let e = parse(&format!("{APP}[worker]\nstate_horizon_days = 3\n")).unwrap_err();
        assert_eq!(e.key, "worker.state_horizon_days");
        assert!(e.message.contains("3 days"), "{e}");
        let e = parse(&format!(
            "{APP}[worker]\nstate_topic = \"im.group-events.dlq\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "worker.state_topic");
    }

    #[test]
    fn client_properties_are_stringified() {
        let c = parse(&format!(
            "{APP}[kafka.client]\n\"linger.ms\" = 5\n\"compression.type\" = \"lz4\"\n"
        ))
        .unwrap();
        let props = c.kafka.client_properties();
        assert!(props.contains(&("linger.ms".into(), "5".into())));
        assert!(props.contains(&("compression.type".into(), "lz4".into())));
    }

    #[test]
    fn demo_config_is_valid_and_previews_both_providers() {
        let c = Config::demo();
        c.require_ingest().unwrap();
        assert!(c.policy().is_ok());
        assert!(c.compiled.is_some(), "compiled once, at load");
        let cached = c.policy().unwrap();
        assert!(Arc::ptr_eq(&cached, &c.policy().unwrap()), "reused");
        let mut changed = c.clone();
        changed.policy.rules.clear();
        assert!(
            changed.policy().unwrap().is_empty(),
            "a change in code is compiled"
        );
        assert!(c.targets.values().all(|t| t.kind() == "log"));
    }

    #[test]
    fn target_errors_name_the_target_and_key() {
        let e = parse(&format!(
            "{APP}[targets.zego]\nkind = \"zego\"\napp_id = 1\nserver_secret = \"env:UNSET\"\nfrom_user_id = \"b\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "targets.zego.server_secret");
        let e = parse(&format!(
            "{APP}[targets.rc]\nkind = \"rongcloud\"\napp_key = \"k\"\napp_secret = \"s\"\nrate_per_second = 0\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "targets.rc.rate_per_second");
        let e = parse(&format!(
            "{APP}[targets.rc]\nkind = \"rongcloud\"\napp_key = \"k\"\napp_secret = \"s\"\nrate_per_sec = 5\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("targets.rc") && e.to_string().contains("rate_per_sec"),
            "{e}"
        );
        let e = parse(&format!(
            "{APP}[[policy.rules]]\nname = \"r\"\nthen = [{{ target = \"nope\" }}]\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "policy.rules[0].then[0].target");
        assert!(
            e.to_string().starts_with("test.toml: policy.rules[0]"),
            "{e}"
        );
    }

    #[test]
    fn rate_limit_mistakes_name_the_key() {
        let zego = format!(
            "{APP}[targets.zego]\nkind = \"zego\"\napp_id = 1\nserver_secret = \"s\"\nfrom_user_id = \"b\"\n[targets.zego.rate_limit]\n"
        );
        let err = |extra: &str| parse(&format!("{zego}{extra}")).unwrap_err();
        let key = |extra: &str| err(extra).key;
        assert_eq!(key("mode = \"redis\"\n"), "targets.zego.rate_limit.url");
        assert_eq!(key("headroom = 1.5\n"), "targets.zego.rate_limit.headroom");
        assert_eq!(key("burst = 0\n"), "targets.zego.rate_limit.burst");
        assert_eq!(
            key("url = \"redis://r:6379\"\n"),
            "targets.zego.rate_limit.url",
            "a URL without mode = redis is a mistake, not ignored"
        );
        let e = err("mode = \"redis\"\nurl = \"http://r:6379\"\n");
        assert_eq!(e.key, "targets.zego.rate_limit.url");
        assert!(e.message.contains("redis://"), "{e}");
        assert_eq!(
            key("mode = \"redis\"\nurl = \"env:UNSET_REDIS\"\n"),
            "targets.zego.rate_limit.url"
        );
        let e = err("mode = \"exact\"\n");
        // Inside a target (an internally tagged table) serde names the
        // target, and the message names the choices.
        assert!(
            e.key == "targets.zego" && e.message.contains("expected `partition_share` or `redis`"),
            "{e}"
        );
        let ok = parse(&format!(
            "{zego}mode = \"redis\"\nurl = \"redis://:pw@r:6379/2\"\nheadroom = 0.9\n"
        ))
        .unwrap();
        let limit = ok.targets["zego"].rate_limit().unwrap();
        assert_eq!(limit.mode, crate::limit::Mode::Redis);
        assert!(!format!("{ok:?}").contains(":pw@"), "the URL is a secret");
        // A webhook's limit is keyed by its receiver, never by a URL that
        // may carry a token.
        let hook = parse(&format!(
            "{APP}[targets.hook]\nkind = \"webhook\"\nurl = \"https://hooks.example/in?token=t0p\"\nsecret = \"s\"\nrate_per_second = 5\n"
        ))
        .unwrap();
        let spec = hook.targets["hook"].limit_spec("hook").unwrap();
        assert_eq!(spec.app, "hooks.example:443");
        assert_eq!(
            crate::limit::redis::key(spec.kind, &spec.app),
            "mutebridge:rl:webhook:hooks.example:443"
        );
        let e = parse(&format!(
            "{APP}[worker.retry]\nrate_limited_horizon_seconds = 0\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "worker.retry.rate_limited_horizon_seconds");
    }

    /// The demo app, a ZEGO target with a Redis limit and a SASL password,
    /// every secret from the environment.
    const ROLES: &str = "[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"env:APP\"]\n[kafka.client]\n\"sasl.password\" = \"env:SASL\"\n[targets.zego]\nkind = \"zego\"\napp_id = 1\nserver_secret = \"env:ZEGO\"\nfrom_user_id = \"b\"\n[targets.zego.rate_limit]\nmode = \"redis\"\nurl = \"env:REDIS\"\n";

    fn parse_roles(secrets: Secrets, set: &[&str]) -> Result<Config, ConfigError> {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        Config::parse_with(
            ROLES,
            Path::new("roles.toml"),
            &|name| {
                set.iter().any(|s| s == name).then(|| match name {
                    "REDIS" => "redis://:pw@r:6379".to_owned(),
                    other => format!("value-of-{other}"),
                })
            },
            secrets,
        )
    }

    #[test]
    fn each_role_reads_only_its_secrets() {
        let c = parse_roles(Secrets::INGEST, &["APP", "SASL"]).unwrap();
        assert_eq!(c.easemob.apps[0].secrets[0].expose(), "value-of-APP");
        assert!(c
            .kafka
            .client_properties()
            .contains(&("sasl.password".into(), "value-of-SASL".into())));
        let TargetConfig::Zego(zego) = &c.targets["zego"] else {
            panic!()
        };
        assert!(!zego.server_secret.is_resolved());
        let c = parse_roles(Secrets::WORKER, &["ZEGO", "REDIS", "SASL"]).unwrap();
        assert!(!c.easemob.apps[0].secrets[0].is_resolved());
        let TargetConfig::Zego(zego) = &c.targets["zego"] else {
            panic!()
        };
        assert_eq!(zego.server_secret.expose(), "value-of-ZEGO");
        assert!(parse_roles(Secrets::NONE, &[]).is_ok());
        // What a role needs and lacks is named.
        let e = parse_roles(Secrets::WORKER, &["ZEGO", "SASL"]).unwrap_err();
        assert_eq!(e.key, "targets.zego.rate_limit.url", "{e}");
        let e = parse_roles(Secrets::INGEST, &["APP"]).unwrap_err();
        assert_eq!(e.key, "kafka.client.\"sasl.password\"", "{e}");
        let e = parse_roles(Secrets::ALL, &["APP", "SASL", "REDIS"]).unwrap_err();
        assert_eq!(e.key, "targets.zego.server_secret", "{e}");
        // The resolved SASL password is not printed with the config.
        let c = parse_roles(Secrets::ALL, &["APP", "SASL", "ZEGO", "REDIS"]).unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("value-of-"), "{printed}");
        // `env:` with no name is a mistake even unresolved.
        let e = parse(&format!(
            "{APP}[targets.w]\nkind = \"webhook\"\nurl = \"http://h/\"\nsecret = \"env:\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "targets.w.secret", "{e}");
    }

    #[test]
    fn values_that_would_overflow_a_timer_are_refused_by_key() {
        for (extra, key) in [
            ("[http]\nshutdown_grace_seconds = 9223372036854775000\n", "http.shutdown_grace_seconds"),
            ("[http]\nack_timeout_ms = 9223372036854775000\n", "http.ack_timeout_ms"),
            ("[http]\nmax_header_bytes = 1024\n", "http.max_header_bytes"),
            ("[http]\nmax_buffered_bytes = 1000\n", "http.max_buffered_bytes"),
            ("[worker]\nshutdown_grace_seconds = 9223372036854775000\n", "worker.shutdown_grace_seconds"),
            ("[worker]\nrequest_timeout_ms = 9223372036854775000\n", "worker.request_timeout_ms"),
            ("[worker.retry]\nmax_backoff_ms = 9223372036854775000\n", "worker.retry.max_backoff_ms"),
            ("[easemob]\ndedup_window_seconds = 9223372036854775000\n", "easemob.dedup_window_seconds"),
            ("[easemob]\nmax_future_skew_seconds = 0\n", "easemob.max_future_skew_seconds"),
            ("[targets.rc]\nkind = \"rongcloud\"\napp_key = \"k\"\napp_secret = \"s\"\nrate_per_second = 1e-30\n", "targets.rc.rate_per_second"),
            ("[targets.rc]\nkind = \"rongcloud\"\napp_key = \"k\"\napp_secret = \"s\"\n[targets.rc.rate_limit]\nheadroom = 1e-30\n", "targets.rc.rate_limit.headroom"),
            ("[ops]\nlisten = \"127.0.0.1:8080\"\n", "ops.listen"),
        ] {
            let e = parse(&format!("{APP}{extra}")).unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = parse(APP).unwrap();
        assert!(!format!("{c:?}").contains("\"s\""));
    }
}
