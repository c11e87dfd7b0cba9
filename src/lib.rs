//! mutebridge: Easemob / Agora Chat group and chatroom callbacks in, one
//! normalized, per-group-ordered Kafka topic out.

pub mod cli;
pub mod config;
pub mod event;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod policy;
pub mod target;
pub mod worker;
