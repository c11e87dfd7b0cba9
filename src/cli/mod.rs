//! The command line's work, one file per command; `main.rs` only parses the
//! arguments and dispatches here.

pub mod bench;
pub mod dlq;
pub mod explain;
pub mod health;
pub mod kafka;
pub mod reconcile;
pub mod resync;
pub mod rewind;
pub mod run;
pub mod send;
pub mod state;
pub mod targets;
pub mod topics;
pub mod verify;

use std::path::Path;

use crate::config::{Checked, Config, Secrets};
use crate::kafka::EmbeddedKafka;

/// Loads the config of a command that reads the cluster the services use
/// (`dlq`, `state`, `resync`), with only the Kafka client's secrets;
/// returns it with the bootstrap list.
fn connect(config_file: Option<&Path>) -> anyhow::Result<(Checked, String)> {
    let (config, _) = Config::load(config_file, Secrets::KAFKA)?;
    if config.kafka.is_embedded() {
        anyhow::bail!(
            "kafka.brokers is \"embedded\": the embedded cluster lives inside a running mutebridge and is gone when it exits; point --config at the cluster the worker uses"
        );
    }
    let bootstrap = config.kafka.brokers.trim().to_owned();
    Ok((config, bootstrap))
}

/// Which secrets `check-config --resolve` reads from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resolve {
    /// What `mutebridge ingest` reads: the apps' secrets and `[kafka.client]`'s.
    Ingest,
    /// What `mutebridge worker` reads: the targets' secrets, Redis URLs and `[kafka.client]`'s.
    Worker,
    /// What `mutebridge reconcile` reads: the apps' REST credentials and `[kafka.client]`'s
    /// (and the targets', when it schedules verify passes).
    Reconcile,
    /// Every secret (`mutebridge run` reads ingest's and the worker's).
    All,
}

impl Resolve {
    fn secrets(self) -> Secrets {
        match self {
            Resolve::Ingest => Secrets::INGEST,
            Resolve::Worker => Secrets::WORKER,
            Resolve::Reconcile => Secrets::RECONCILE,
            Resolve::All => Secrets::ALL,
        }
    }
}

/// `mutebridge check-config FILE [--resolve ROLE]`: loads it as the
/// services would; without `--resolve`, `env:` secrets are only checked to
/// name a variable (a deployment repository's CI has none of them).
pub fn check_config(file: &Path, resolve: Option<Resolve>) -> anyhow::Result<()> {
    let secrets = resolve.map_or(Secrets::NONE, Resolve::secrets);
    let (mut config, _) = Config::load(Some(file), secrets)?;
    // A reconcile role that schedules verify passes reads the targets' too.
    if resolve == Some(Resolve::Reconcile) && config.verify.interval_seconds > 0 {
        let with_targets = Secrets {
            targets: true,
            ..secrets
        };
        config = Config::load(Some(file), with_targets)?.0;
    }
    let resolved = match resolve {
        None => "secrets not read; --resolve ROLE reads them",
        Some(Resolve::Ingest) => "the ingest role's secrets read",
        Some(Resolve::Worker) => "the worker role's secrets read",
        Some(Resolve::Reconcile) => "the reconcile role's secrets read",
        Some(Resolve::All) => "every secret read",
    };
    println!(
        "{}: OK ({} app(s), kafka {} topic {}, {} target(s), {} rule(s); {resolved})",
        file.display(),
        config.easemob.apps.len(),
        config.kafka.brokers,
        config.kafka.topic,
        config.targets.len(),
        config.policy.rules.len()
    );
    if config.easemob.apps.is_empty() {
        println!("  no [[easemob.apps]]: usable for `mutebridge worker` only");
    }
    // What each limit means, since it is the whole group's, not a pod's.
    for (name, target) in &config.targets {
        let Some(spec) = target.limit_spec(name) else {
            continue;
        };
        let Some(rate) = spec.rate_per_second else {
            continue;
        };
        let how = match spec.config.mode {
            crate::limit::Mode::PartitionShare => {
                "each worker replica takes its partition share".to_owned()
            }
            crate::limit::Mode::Redis => format!(
                "kept exactly in Redis under {}",
                crate::limit::redis::key(spec.kind, &spec.app)
            ),
        };
        println!(
            "  {name}: {rate}/s for the whole worker group, {:.2}/s used (headroom {}); {how}",
            rate * spec.config.headroom,
            spec.config.headroom
        );
    }
    Ok(())
}

/// `mutebridge dev-kafka`: the embedded cluster alone, with `topics`
/// created (it cannot create topics for its clients), until Ctrl-C.
pub async fn dev_kafka(topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    let cluster = EmbeddedKafka::start(1)?;
    for topic in topics {
        cluster.create_topic(topic, partitions)?;
    }
    // Written, not println!: a reader that goes away after the address
    // (a script, a test) must not take the cluster down with a panic.
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "bootstrap.servers={}", cluster.bootstrap_servers());
    let _ = writeln!(
        out,
        "topics {} ({partitions} partitions each); in memory, gone on exit. Ctrl-C to stop.",
        topics.join(", ")
    );
    let _ = out.flush();
    crate::ops::shutdown_signal().await;
    Ok(())
}
