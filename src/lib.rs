//! mutebridge: Easemob / Agora Chat group and chatroom callbacks in, one
//! normalized, per-group-ordered Kafka topic out, and a worker that applies
//! a mute policy from that topic to other IM providers.
//!
//! Read the modules in the order an event travels; each file's own `//!`
//! comment says more. Every module is listed here (a test keeps it so).
//!
//! **The event's path.**
//!
//! - [`ingest`]: one callback at a time, answered 200 only once Kafka has
//!   acknowledged it: `ingest::http` (the endpoint) -> `ingest::verify` (the
//!   signature) -> `ingest::normalize` (`ingest::normalize::muc` and
//!   `ingest::normalize::group_op`, the two formats) -> `ingest::dedup` ->
//!   `ingest::publish`; `ingest::config` is its `[easemob]` section.
//! - [`event`]: the versioned contract on the topic, between the two roles
//!   and towards anyone else who reads it.
//! - [`state`]: the second contract, each group's mute state; `state::guard`
//!   keeps a late callback from undoing a newer change, `state::applied` is
//!   what one target applied.
//! - [`worker`]: one consumer group per target and one for the state keeper
//!   (`worker::keeper`). Per group: `worker::pipeline` (the consumer and its
//!   coordinator) -> `worker::scheduler` (which event runs next) ->
//!   `worker::handler` (what a keeper and a target each do with a job) ->
//!   `worker::engine` (judge with the guard, plan with [`policy`]) ->
//!   `worker::deliver` (call the target through `worker::breaker`) ->
//!   `worker::dlq` (what failed for good) -> `worker::store` (the state
//!   records) -> `worker::completion` (the steps from a finished job to a
//!   commit) -> `worker::offsets` (what may be committed);
//!   `worker::renewal` decides and schedules the renewal of capped mutes.
//!   Beside them: `worker::reader` (rebuilding state from the state topic),
//!   `worker::rebalance` (assignments and revocations), `worker::lease`
//!   (whether this worker may still act), `worker::topics` (the start-up
//!   checks), `worker::inherit` (offsets of the single consumer group of
//!   earlier versions), `worker::outcome` (the words for results),
//!   `worker::metrics`, `worker::config`, and `worker::testing` (the unit
//!   tests' Kafka and provider).
//! - [`policy`]: the rules; `policy::config` as written,
//!   `policy::compile` checked against the targets, `policy::template` the
//!   ID templates and conditions.
//! - `targets`: the providers' APIs, one module each (`targets::zego`,
//!   `targets::rongcloud`, `targets::tencent`, `targets::agora`,
//!   `targets::webhook`, `targets::log`), the credentials they make
//!   (`targets::credential`) and what their reads say (`targets::readback`).
//! - [`limit`]: how fast a target may be called, shared by every worker
//!   (`limit::redis` the exact schedule, `limit::config` its section).
//!
//! **Beside the path**, two loops close the gaps callbacks and providers
//! leave. [`reconcile`] compares the mute state with Easemob's own:
//! `reconcile::states` streams the state topic, `reconcile::rest` and
//! `reconcile::read` read Easemob, `reconcile::diff` compares,
//! `reconcile::metrics` and `reconcile::config`. [`verify`] reads back what
//! each target's provider holds and repairs the drift through the worker:
//! `verify::source` (the newest states) -> `verify::expect` (what a target
//! should hold) -> `verify::read` (`verify::zego`, `verify::rongcloud`,
//! `verify::tencent`, `verify::agora`, `verify::observed`; one enum of
//! them, `verify::providers`) ->
//! `verify::diff` -> `verify::report` and `verify::repair`;
//! `verify::metrics`, `verify::config`.
//!
//! **Around them.** [`config`] (one TOML file, checked at load;
//! `config::error` names the key and the file, `config::secret` the `env:`
//! values); [`kafka`] (the cluster and every client's settings:
//! `kafka::config`, `kafka::client`, `kafka::embedded` the in-process mock,
//! `kafka::local` a real Apache Kafka on this machine, `kafka::topics` the
//! topics and their checks, `kafka::partition` where a key goes,
//! `kafka::scan` reading a topic once); `server` (the HTTP/1.1 server under
//! both roles, `server::config` its limits); `ops` (`/metrics`, `/healthz`,
//! `/readyz`); [`metrics`]; `time` (milliseconds since the epoch).
//!
//! [`cli`] holds the commands, one file each: `cli::run` (the roles),
//! `cli::send`, `cli::explain`, `cli::targets`, `cli::state`,
//! `cli::resync`, `cli::reconcile`, `cli::verify`, `cli::rewind`,
//! `cli::dlq`, `cli::topics`, `cli::kafka`, `cli::dev_kafka`,
//! `cli::check_config`, `cli::schema`, `cli::health`, `cli::bench`, each
//! with its arguments; `main.rs` lists the commands and calls them.
//!
//! The items re-exported at the top are what the binary, the integration
//! tests and the benchmarks build on. Beside `src/`: `tests/it/` is the one
//! fast integration-test binary (each module one area, over real sockets,
//! with faithful ZEGO, RongCloud and webhook stand-ins in `providers.rs`,
//! what they hold and their read APIs in `held.rs`, Tencent's and Agora's in
//! `providers_tencent.rs` and `providers_agora.rs`), `tests/real_kafka/` the
//! tier on a real three-node Apache Kafka cluster, `benches/` the worker
//! benchmark (one module per measurement) and the ingest scripts, `deploy/`
//! the container, compose, Kubernetes and Prometheus files and the
//! commented config reference.

pub mod cli;
pub mod config;
pub mod event;
mod ingest;
mod kafka;
pub mod limit;
mod metrics;
mod ops;
mod policy;
pub mod reconcile;
mod server;
pub mod state;
mod targets;
mod time;
pub mod verify;
mod worker;

pub use config::Config;
pub use ingest::publish::Publisher;
pub use ingest::verify::sign;
pub use ingest::Ingest;
pub use kafka::local as local_kafka;
pub use kafka::{key_partition, producer_config, topics, Cluster, EmbeddedKafka};
pub use metrics::Metrics;
pub use reconcile::Reconciler;
pub use targets::zego::signature as zego_signature;
pub use targets::TargetConfig;
pub use worker::Worker;
