//! The librdkafka settings of every mutebridge client, in one place: what
//! all clients share, the producer's and the consumer's defaults, and the
//! keys mutebridge pins because its promises depend on them.

use rdkafka::config::ClientConfig;

use crate::kafka::config::KafkaConfig;

/// The settings every mutebridge client shares: the bootstrap list, the
/// user's `[kafka.client]` pass-through properties, and no topic created
/// by asking for it: librdkafka's producers (and the admin client, which
/// is one) let a metadata request auto-create the topic by default.
pub fn client_config(cfg: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in cfg.client_properties() {
        config.set(key, value);
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
    // After this librdkafka gives up on a record; replies stop waiting
    // earlier (http.ack_timeout_ms), this bounds the tail behind a 503.
    ("message.timeout.ms", "30000"),
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
/// last, so `[kafka.client]` cannot change them).
pub fn consumer_config(cfg: &KafkaConfig, bootstrap: &str, group_id: &str) -> ClientConfig {
    let mut config = with_defaults(CONSUMER_DEFAULTS, cfg, bootstrap);
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
