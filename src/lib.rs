//! mutebridge: Easemob / Agora Chat group and chatroom callbacks in, one
//! normalized, per-group-ordered Kafka topic out.
//!
//! Read the modules in the order an event travels. Ingest:
//! [`http`] -> [`verify`] -> [`normalize`] -> [`dedup`] -> [`publish`].
//! Worker: [`consume`] -> [`policy`] -> [`deliver`] -> [`target`], with
//! [`dlq`] for what fails for good.
//! [`event`] is the contract between them, [`config`] and [`kafka`] the
//! setting they run in, [`ingest`] and [`worker`] wire each role together,
//! and [`send`] / [`bench`] are the tools that drive it from outside.

pub mod bench;
pub mod config;
pub mod consume;
pub mod dedup;
pub mod deliver;
pub mod dlq;
pub mod event;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod normalize;
pub mod policy;
pub mod publish;
pub mod send;
pub mod target;
pub mod verify;
pub mod worker;
