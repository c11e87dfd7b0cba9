//! mutebridge: Easemob / Agora Chat group and chatroom callbacks in, one
//! normalized, per-group-ordered Kafka topic out, and a worker that applies
//! a mute policy from that topic to other IM providers.
//!
//! Read the modules in the order an event travels:
//!
//! - [`ingest`]: HTTP -> verify -> normalize -> dedup -> publish, one
//!   callback at a time, answered 200 only once Kafka has acknowledged it;
//! - [`event`]: the versioned contract on the topic, between the two roles
//!   and towards anyone else who reads it;
//! - [`state`]: the second contract, each group's mute state, and the guard
//!   that keeps a late callback from undoing a newer change;
//! - [`worker`]: consume -> schedule per group -> guard -> [`policy`] decides ->
//!   deliver to one of the [`targets`] (ZEGO, RongCloud, Tencent, Agora, webhook) ->
//!   dead-letter what fails for good -> commit.
//!
//! Beside the event's path, two loops close the gaps callbacks and
//! providers leave: [`reconcile`] compares the mute state with Easemob's
//! own, and [`verify`] reads back what each target's provider holds and
//! repairs the drift through the worker.
//!
//! Around them: [`config`] (one TOML file, checked at load), [`kafka`] (the
//! cluster, embedded or external, and every client's settings), `server`
//! (the HTTP/1.1 server under both roles, with connection timeouts and a
//! cap), `ops` (`/metrics`, `/healthz`, `/readyz`), [`metrics`], and
//! [`cli`], the commands that run and drive it all.
//!
//! The items re-exported at the top are what the binary, the integration
//! tests and the benchmarks build on. Beside `src/`: `tests/it/` is the one
//! integration-test binary (each module one area, over real sockets, with
//! faithful ZEGO, RongCloud and webhook stand-ins in `providers.rs`, what
//! they hold and their read APIs in `held.rs`, Tencent's and Agora's in
//! `providers_tencent.rs` and `providers_agora.rs`),
//! `benches/` the worker benchmark (one module per measurement) and the
//! ingest scripts, `deploy/` the container, compose, Kubernetes and
//! Prometheus files and the commented config reference.

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
