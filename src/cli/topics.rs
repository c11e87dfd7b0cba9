//! `mutebridge topics create|check --config F`: the event, state and
//! dead-letter topics made as mutebridge needs them, or an existing
//! cluster's checked, each finding with what to do (see
//! [`crate::kafka::topics`], the same plan the roles use).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::{Config, Secrets};
use crate::kafka::topics::{Plan, Role, Severity, Topics};

/// `mutebridge topics ...`.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    #[command(subcommand)]
    command: TopicsCommand,
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create the topics that are missing, with the settings mutebridge
    /// needs, then check them all; exits 1 if one is unfit.
    Create {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check the topics as they are; exits 1 if one is missing or unfit.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Runs `mutebridge topics ...`.
pub async fn run(args: TopicsArgs) -> anyhow::Result<ExitCode> {
    let (path, create) = match &args.command {
        TopicsCommand::Create { config } => (config, true),
        TopicsCommand::Check { config } => (config, false),
    };
    let (config, _) = Config::load(Some(path), Secrets::KAFKA)?;
    if config.kafka.is_embedded() {
        anyhow::bail!(
            "kafka.brokers is \"embedded\": the embedded cluster lives inside a running mutebridge and creates its topics itself; point kafka.brokers at a real cluster (`mutebridge kafka start` runs one here)"
        );
    }
    let bootstrap = config.kafka.brokers.trim();
    let topics = Topics::connect(&config.kafka, bootstrap)?;
    let brokers = topics.brokers().await?;
    let roles: Vec<Role> = if config.worker.track_state {
        vec![Role::Events, Role::State, Role::DeadLetters]
    } else {
        vec![Role::Events, Role::DeadLetters]
    };
    let plan = Plan::new(&config, &roles, brokers);
    println!(
        "Kafka at {bootstrap}: {brokers} broker(s); mutebridge's topics: replication factor {}, min.insync.replicas {}",
        plan.replication_factor, plan.min_insync_replicas
    );
    if create {
        for (w, created) in topics.ensure(&plan).await? {
            let settings: Vec<String> = plan
                .settings(w.role)
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if created {
                println!(
                    "  {} ({}): created, {}",
                    w.name,
                    w.role.key(),
                    settings.join(" ")
                );
            } else {
                println!("  {} ({}): exists, left as it is", w.name, w.role.key());
            }
        }
    }
    let findings = topics.check(&plan).await?;
    let mut worst = Severity::Ok;
    for w in &plan.topics {
        let about: Vec<_> = findings.iter().filter(|f| f.topic == w.name).collect();
        if about.iter().all(|f| f.severity == Severity::Ok) {
            let note = about
                .first()
                .map(|f| format!(": {}", f.text))
                .unwrap_or_default();
            println!("  {} ({}): OK{note}", w.name, w.role.key());
        }
        for f in about.iter().filter(|f| f.severity != Severity::Ok) {
            let severity: &str = f.severity.into();
            println!("  {} ({}): {severity}: {}", w.name, w.role.key(), f.text);
            worst = worst.max(f.severity);
        }
    }
    Ok(match worst {
        Severity::Problem => {
            eprintln!("error: some topics are unfit for mutebridge (PROBLEM above); the roles refuse to start on them");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    })
}
