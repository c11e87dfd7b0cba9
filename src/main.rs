//! The `mutebridge` command line: its commands, each with the line its
//! `--help` opens with, and the module of [`mutebridge::cli`] that holds
//! the command's arguments and does its work.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use mutebridge::cli::{self, run::Roles};

// Per request the service allocates many small short-lived objects (JSON
// values, headers, channels); mimalloc serves that pattern with less CPU
// than glibc malloc (measured: see README, Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mutebridge",
    version,
    about = "Easemob group callbacks -> Kafka -> mute policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run ingest and worker in one process. Without --config: embedded
    /// Kafka, a demo app, and targets that print what they would send.
    Run(cli::run::RunArgs),
    /// Run the ingest role: verify callbacks and publish them to Kafka.
    Ingest(cli::run::RunArgs),
    /// Run the worker role: consume events and apply the mute policy.
    Worker(cli::run::RunArgs),
    /// Inspect the mute policy.
    Policy(cli::explain::PolicyArgs),
    /// Sign callback payloads as Easemob does and POST them.
    Send(cli::send::SendArgs),
    /// Run only the embedded (in-memory) Kafka cluster, for pointing
    /// separate mutebridge processes or other clients at one dev cluster.
    DevKafka(cli::dev_kafka::DevKafkaArgs),
    /// Inspect the dead-letter topic and send its events through the
    /// worker again.
    Dlq(cli::dlq::DlqArgs),
    /// Read the groups' mute states from the state topic.
    State(cli::state::StateArgs),
    /// Make a target match the groups' current mute state: publishes a
    /// `resync` marker per group; the worker owning the group applies its
    /// state then, in the group's order and under the target's rate limit.
    Resync(cli::resync::ResyncArgs),
    /// Compare the groups' mute state with Easemob's own (its REST API) and
    /// publish a correction for each difference: callbacks that never
    /// came. Without --once: the role, a pass every
    /// reconcile.interval_seconds.
    Reconcile(cli::reconcile::ReconcileArgs),
    /// Read back what each target's provider holds (ZEGO, RongCloud,
    /// Tencent, Agora), compare it with the groups' mute state as the
    /// policy sends it, and report each difference; --repair has the
    /// workers re-apply the drifted dimensions (the remaining time of a
    /// timed mute).
    Verify(cli::verify::VerifyArgs),
    /// Each target's circuit breaker, lag and backlog: from a running
    /// worker (--url, its ops address) or from Kafka (--config).
    Targets(cli::targets::TargetsArgs),
    /// Move one target's consumer group back to a time, so that it applies
    /// again what happened since; the other targets are untouched. Refuses
    /// while the workers run.
    Rewind(cli::rewind::RewindArgs),
    /// Print the JSON Schema of a contract: the normalized event (default),
    /// the group mute state, or what a target applied.
    Schema(cli::schema::SchemaArgs),
    /// Validate a config file; exits non-zero with the key at fault.
    /// Without --resolve, `env:NAME` secrets are not read (only checked to
    /// name a variable), so a file can be checked where its secrets are not.
    CheckConfig(cli::check_config::CheckConfigArgs),
    /// Exit 0 if URL answers 200 within the timeout, 1 otherwise: the
    /// container health check (the runtime image has no curl).
    Health(cli::health::HealthArgs),
    /// A real Apache Kafka cluster on this machine (from Maven Central's
    /// jars): start, stop, kill, pause, resume and restart its nodes.
    Kafka(cli::kafka::KafkaArgs),
    /// Create the event, state and dead-letter topics as mutebridge needs
    /// them, or check an existing cluster's and say what is wrong.
    Topics(cli::topics::TopicsArgs),
    /// Load generators and benchmarks.
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => cli::run::serve(args, Roles::Both).await,
        Command::Ingest(args) => cli::run::serve(args, Roles::Ingest).await,
        Command::Worker(args) => cli::run::serve(args, Roles::Worker).await,
        Command::Policy(args) => cli::explain::run(args),
        Command::Send(args) => cli::send::run(args).await,
        Command::DevKafka(args) => cli::dev_kafka::run(args).await,
        Command::Dlq(args) => cli::dlq::run(args).await,
        Command::State(args) => cli::state::run(args).await,
        Command::Resync(args) => cli::resync::run(args).await,
        Command::Reconcile(args) => cli::reconcile::run(args).await,
        Command::Verify(args) => cli::verify::run(args).await,
        Command::Targets(args) => cli::targets::run(args).await,
        Command::Rewind(args) => cli::rewind::run(args).await,
        Command::Schema(args) => cli::schema::run(args),
        Command::CheckConfig(args) => cli::check_config::run(args),
        Command::Health(args) => cli::health::run(args).await,
        Command::Kafka(args) => cli::kafka::run(args).await,
        Command::Topics(args) => cli::topics::run(args).await,
        Command::Bench(args) => cli::bench::run(args).await,
    }
}
