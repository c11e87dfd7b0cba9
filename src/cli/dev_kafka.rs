//! `mutebridge dev-kafka`: the embedded (in-memory) Kafka cluster alone,
//! for pointing separate mutebridge processes or other clients at one dev
//! cluster.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;

use crate::kafka::EmbeddedKafka;

/// `mutebridge dev-kafka`: the topics to create.
#[derive(Debug, Args)]
pub struct DevKafkaArgs {
    /// The event topic to create (`kafka.topic`).
    #[arg(long, default_value = "im.group-events")]
    topic: String,
    /// The dead-letter topic to create (`worker.dlq_topic`).
    #[arg(long, default_value = "im.group-events.dlq")]
    dlq_topic: String,
    /// The mute-state topic to create (`worker.state_topic`).
    #[arg(long, default_value = "im.group-events.state")]
    state_topic: String,
    #[arg(long, default_value_t = 12)]
    partitions: i32,
}

/// Runs the cluster with the topics created (it cannot create topics for
/// its clients) until Ctrl-C.
pub async fn run(args: DevKafkaArgs) -> anyhow::Result<ExitCode> {
    let topics = [&*args.topic, &*args.dlq_topic, &*args.state_topic];
    let partitions = args.partitions;
    let cluster = EmbeddedKafka::start(1)?;
    for topic in topics {
        cluster.create_topic(topic, partitions)?;
    }
    // Written, not println!: a reader that goes away after the address
    // (a script, a test) must not take the cluster down with a panic.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "bootstrap.servers={}", cluster.bootstrap_servers());
    let _ = writeln!(
        out,
        "topics {} ({partitions} partitions each); in memory, gone on exit. Ctrl-C to stop.",
        topics.join(", ")
    );
    let _ = out.flush();
    crate::ops::shutdown_signal().await;
    Ok(ExitCode::SUCCESS)
}
