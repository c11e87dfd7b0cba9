//! The librdkafka settings of every mutebridge client, in one place: what
//! all clients share, the producer's and the consumer's defaults, and the
//! keys mutebridge pins because its promises depend on them.

use rdkafka::config::ClientConfig;

use crate::kafka::config::KafkaConfig;

/// `[kafka.client]` keys only consumer groups take: kept from the other
/// clients, which would warn about each at start.
const GROUP_ONLY: &[&str] = &["group.protocol", "group.remote.assignor"];

/// The settings every mutebridge client shares: the bootstrap list, the
/// user's `[kafka.client]` pass-through properties, and no topic created
/// by asking for it: librdkafka's producers (and the admin client, which
/// is one) let a metadata request auto-create the topic by default.
pub fn client_config(cfg: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in cfg.client_properties() {
        if !GROUP_ONLY.contains(&key.as_str()) {
            config.set(key, value);
        }
    }
    config.set("allow.auto.create.topics", "false");
    config
}

/// Producer defaults a user may change through `[kafka.client]`.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // Each reply waits for its ack, so time spent lingering is reply latency.
    ("linger.ms", "0"),
    // Bounded: a full queue is answered 503 instead of growing memory.
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "65536"),
    // After this librdkafka gives up on a record (replies stop waiting
    // much earlier: http.ack_timeout_ms). librdkafka's default, on purpose:
    // a record that times out makes the idempotent producer start a new
    // epoch, and a batch a leader appended without enough in-sync replicas
    // is then sent again under it, where the broker cannot tell it is a
    // repeat (seen on a real cluster with two of three brokers down for
    // 30 s). So the idempotent producer's "no duplicates" holds for
    // outages shorter than this.
    ("message.timeout.ms", "300000"),
];

/// Settings of every mutebridge producer (events and dead letters): durable
/// (`acks=all`), idempotent (retries neither duplicate nor reorder) and
/// placed with murmur2 like Java clients. The pinned three cannot be
/// overridden; the config loader refuses them in `[kafka.client]`.
pub fn producer_config(cfg: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut config = with_defaults(PRODUCER_DEFAULTS, cfg, bootstrap);
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random");
    config
}

/// Consumer defaults a user may change through `[kafka.client]`.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    // A new consumer group starts with the oldest retained event, so events
    // published before the first worker started are applied too.
    ("auto.offset.reset", "earliest"),
    ("statistics.interval.ms", "5000"),
    // Incremental rebalancing: a replica keeps the partitions it is not
    // asked to give up (their in-flight work and their mute states), instead
    // of revoking everything on every join or leave.
    ("partition.assignment.strategy", "cooperative-sticky"),
];

/// Settings of the worker's consumer: a member of `group_id` whose offsets
/// move only when work is finished, never on a timer (those keys are set
/// last, so `[kafka.client]` cannot change them). Under the new consumer
/// protocol (`group.protocol = "consumer"`, KIP-848) the broker assigns
/// partitions and times sessions, and the client refuses to start with an
/// assignor of its own, so none is set.
pub fn consumer_config(cfg: &KafkaConfig, bootstrap: &str, group_id: &str) -> ClientConfig {
    let defaults: Vec<(&str, &str)> = CONSUMER_DEFAULTS
        .iter()
        .copied()
        .filter(|(k, _)| !(cfg.consumer_protocol() && *k == "partition.assignment.strategy"))
        .collect();
    let mut config = with_defaults(&defaults, cfg, bootstrap);
    for (key, value) in cfg.client_properties() {
        if GROUP_ONLY.contains(&key.as_str()) {
            config.set(key, value);
        }
    }
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    config
}

/// `defaults`, then the shared settings over them (so `[kafka.client]` wins).
fn with_defaults(defaults: &[(&str, &str)], cfg: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in client_config(cfg, bootstrap).config_map() {
        config.set(key, value);
    }
    config
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The producers' `message.max.bytes`: `[kafka.client]`'s, or librdkafka's
/// default. The config check refuses a value that is not a number.
pub fn max_message_bytes(cfg: &KafkaConfig) -> usize {
    cfg.client_properties()
        .into_iter()
        .find(|(k, _)| k == "message.max.bytes")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
}

/// What a producer's librdkafka says about its cluster (from its
/// statistics): the brokers it tries and fails to reach.
#[derive(Clone, Default)]
pub struct ProducerWatch {
    /// `host:port/id` of brokers librdkafka is not connected to and tries to.
    unreachable: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// How often a watched producer's statistics are taken (for the brokers
/// it cannot reach).
const WATCH_STATISTICS_MS: &str = "2000";

impl rdkafka::ClientContext for ProducerWatch {
    fn stats(&self, statistics: rdkafka::Statistics) {
        // Sparse connections: brokers never needed stay INIT, so only
        // those being tried and failing count.
        let mut down: Vec<String> = statistics
            .brokers
            .values()
            .filter(|b| {
                b.nodeid >= 0 && matches!(b.state.as_str(), "DOWN" | "CONNECT" | "TRY_CONNECT")
            })
            .map(|b| b.name.clone())
            .collect();
        down.sort();
        *self.unreachable.lock().expect("watch lock") = down;
    }
}

/// A mutebridge producer (events, state records, dead letters).
pub type Producer = rdkafka::producer::FutureProducer<ProducerWatch>;

/// A producer, with what readiness needs to know of it: whether it failed
/// fatally (librdkafka gives up on an idempotent producer that is fenced,
/// not authorized, or lost track of its sequence numbers: nothing it
/// produces can succeed again), and which brokers it cannot reach.
#[derive(Clone)]
pub struct Watched {
    pub producer: Producer,
    watch: ProducerWatch,
    /// Which producer this is (`event`, `state`, `dead-letter`).
    pub role: &'static str,
}

impl Watched {
    /// Creates a producer from `config`.
    pub fn create(
        mut config: ClientConfig,
        role: &'static str,
    ) -> rdkafka::error::KafkaResult<Watched> {
        config.set("statistics.interval.ms", WATCH_STATISTICS_MS);
        let watch = ProducerWatch::default();
        let producer = config.create_with_context(watch.clone())?;
        Ok(Watched {
            producer,
            watch,
            role,
        })
    }

    /// librdkafka's fatal error, once one happened.
    pub fn fatal(&self) -> Option<String> {
        use rdkafka::producer::Producer as _;
        self.producer.client().fatal_error().map(|(code, reason)| {
            format!(
                "the {} producer failed fatally ({code:?}): {reason}",
                self.role
            )
        })
    }

    /// Completes with librdkafka's fatal error, when one happens.
    pub async fn fatal_error(&self) -> String {
        loop {
            if let Some(why) = self.fatal() {
                tracing::error!(producer = self.role, %why, "the Kafka producer cannot recover: nothing more can be produced with it; the process stops");
                return why;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// Brokers the producer tries and fails to reach, as of its last
    /// statistics.
    pub fn unreachable(&self) -> Vec<String> {
        self.watch.unreachable.lock().expect("watch lock").clone()
    }
}
