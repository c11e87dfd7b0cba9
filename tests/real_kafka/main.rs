//! The real-Kafka tier: the promises librdkafka's mock cluster cannot test
//! (it ignores `acks` and `min.insync.replicas`, never compacts, answers
//! offsets-for-times with -1, never moves a leader), proven on a
//! three-node Apache Kafka cluster that `cluster.rs` starts from Maven
//! Central's jars with the same code as `mutebridge kafka start`.
//!
//! One cluster for the whole binary; tests take turns, each with topics and
//! consumer groups of its own, and every node is running again when the
//! next one starts. Modules, in the order an event travels: ingest and the
//! brokers (failover), the worker and the group coordinator (groups), the
//! state topic (state), then the whole deployment (flow).

#[path = "../it/held.rs"]
mod held;
#[path = "../it/providers.rs"]
mod providers;
#[path = "../it/support.rs"]
mod support;

mod cluster;
mod failover;
mod flow;
mod groups;
mod state;
