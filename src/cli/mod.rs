//! The command line's work, one file per command: each holds the command's
//! arguments (clap derives) and the function `main.rs` calls with them,
//! `run` (`run::serve` for the three roles).

pub mod bench;
pub mod check_config;
pub mod dev_kafka;
pub mod dlq;
pub mod explain;
pub mod health;
pub mod kafka;
pub mod reconcile;
pub mod resync;
pub mod rewind;
pub mod run;
pub mod schema;
pub mod send;
pub mod state;
pub mod targets;
pub mod topics;
pub mod verify;

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Checked, Config, Secrets};

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

/// 0 or 1, for the commands whose answer is yes or no.
fn exit_code(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
