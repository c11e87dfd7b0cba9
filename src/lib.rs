//! mutebridge: Easemob / Agora Chat group and chatroom callbacks in, one
//! normalized, per-group-ordered Kafka topic out.
//!
//! Read the modules in the order an event travels:
//! [`http`] -> [`verify`] -> [`normalize`] -> [`dedup`] -> [`publish`].
//! [`event`] is the contract they produce, [`config`] and [`kafka`] the
//! setting they run in, [`ingest`] wires them into a server, and [`send`] /
//! [`bench`] are the tools that drive it from outside.

pub mod bench;
pub mod config;
pub mod dedup;
pub mod event;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod normalize;
pub mod publish;
pub mod send;
pub mod verify;
