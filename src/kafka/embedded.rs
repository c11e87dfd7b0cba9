//! librdkafka's mock cluster as mutebridge's embedded Kafka: real Kafka
//! protocol on loopback, data in memory. The mock cluster handle is not
//! `Send`, so it lives on a thread of its own and is driven by commands.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

type Reply = mpsc::Sender<Result<(), String>>;

enum Command {
    CreateTopic(String, i32, Reply),
    BrokerDown(i32, Reply),
    BrokerUp(i32, Reply),
    RoundTripTime(i32, Duration, Reply),
}

/// librdkafka's mock cluster, owned by a thread of its own (the handle is
/// not `Send`), so the rest of the program can share this handle freely.
/// The data lives in memory and is gone when this is dropped.
pub struct EmbeddedKafka {
    bootstrap: String,
    /// Topics created through this handle; creating one again is a no-op.
    topics: std::sync::Mutex<std::collections::HashSet<String>>,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a cluster of `brokers` brokers (IDs 1..=brokers) on loopback.
    pub fn start(brokers: i32) -> anyhow::Result<EmbeddedKafka> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (tx, rx) = mpsc::channel::<Command>();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster: MockCluster<'static, DefaultProducerContext> =
                    match MockCluster::new(brokers) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                let done = |reply: Reply, r: rdkafka::error::KafkaResult<()>| {
                    let _ = reply.send(r.map_err(|e| e.to_string()));
                };
                // Ends when the handle is dropped, which drops the cluster.
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::CreateTopic(name, partitions, reply) => {
                            done(reply, cluster.create_topic(&name, partitions, 1))
                        }
                        Command::BrokerDown(id, reply) => done(reply, cluster.broker_down(id)),
                        Command::BrokerUp(id, reply) => done(reply, cluster.broker_up(id)),
                        Command::RoundTripTime(id, rtt, reply) => {
                            done(reply, cluster.broker_round_trip_time(id, rtt))
                        }
                    }
                }
            })
            .context("cannot start the embedded Kafka thread")?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| anyhow!("the embedded Kafka thread stopped during startup"))?
            .map_err(|e| anyhow!("cannot start the embedded Kafka cluster: {e}"))?;
        Ok(EmbeddedKafka {
            bootstrap,
            topics: Default::default(),
            commands: Some(tx),
            thread: Some(thread),
        })
    }

    /// `host:port[,host:port...]` of the mock brokers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    fn call(&self, make: impl FnOnce(Reply) -> Command) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .as_ref()
            .and_then(|c| c.send(make(tx)).ok())
            .ok_or_else(|| anyhow!("the embedded Kafka cluster has stopped"))?;
        rx.recv()
            .map_err(|_| anyhow!("the embedded Kafka cluster has stopped"))?
            .map_err(|e| anyhow!(e))
    }

    /// Creates a topic with replication factor 1 (once; again is a no-op).
    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let mut topics = self.topics.lock().expect("topics lock");
        if topics.contains(name) {
            return Ok(());
        }
        self.call(|r| Command::CreateTopic(name.to_owned(), partitions, r))?;
        topics.insert(name.to_owned());
        Ok(())
    }

    /// Takes a broker down: its connections are closed and refused.
    pub fn broker_down(&self, id: i32) -> anyhow::Result<()> {
        self.call(|r| Command::BrokerDown(id, r))
    }

    /// Delays every response of a broker by `rtt` (a slow network or disk).
    pub fn broker_round_trip_time(&self, id: i32, rtt: Duration) -> anyhow::Result<()> {
        self.call(|r| Command::RoundTripTime(id, rtt, r))
    }

    /// Brings a broker taken down by [`EmbeddedKafka::broker_down`] back.
    pub fn broker_up(&self, id: i32) -> anyhow::Result<()> {
        self.call(|r| Command::BrokerUp(id, r))
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
