//! The `mutebridge` command line: the arguments, and which function of
//! [`mutebridge::cli`] each command runs. The work is done there.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use mutebridge::cli::{self, bench, run::Roles, send};

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
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the ingest role: verify callbacks and publish them to Kafka.
    Ingest {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the worker role: consume events and apply the mute policy.
    Worker {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Inspect the mute policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Sign callback payloads as Easemob does and POST them.
    Send {
        /// The callback endpoint, e.g. http://127.0.0.1:8080/webhooks/easemob
        #[arg(long)]
        url: String,
        #[arg(long)]
        appkey: String,
        /// The callback rule's secret.
        #[arg(long, env = "MUTEBRIDGE_SEND_SECRET")]
        secret: String,
        /// A built-in payload (repeatable): mute-all, unmute-all, member-muted,
        /// member-unmuted, chatroom-mute-all, chatroom-unmute-all.
        #[arg(long = "example")]
        examples: Vec<String>,
        /// Keep the payloads' callId and timestamp instead of fresh ones.
        #[arg(long)]
        keep_ids: bool,
        /// Per-request timeout in seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// JSON payload files.
        files: Vec<PathBuf>,
    },
    /// Run only the embedded (in-memory) Kafka cluster, for pointing
    /// separate mutebridge processes or other clients at one dev cluster.
    DevKafka {
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
    },
    /// Inspect the dead-letter topic and send its events through the
    /// worker again.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Read the groups' mute states from the state topic.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Make a target match the groups' current mute state: publishes a
    /// `resync` marker per group; the worker owning the group applies its
    /// state then, in the group's order and under the target's rate limit.
    Resync {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The `[targets.NAME]` to bring in line.
        #[arg(long)]
        target: String,
        #[command(flatten)]
        selection: cli::state::Selection,
        /// Print the groups that would be resynced; publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Compare the groups' mute state with Easemob's own (its REST API) and
    /// publish a correction for each difference: callbacks that never
    /// came. Without --once: the role, a pass every
    /// reconcile.interval_seconds.
    Reconcile {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// One pass, progress on stderr, a summary, then exit (the first
        /// sync of a deployment); exits 1 if some groups or apps could not
        /// be read, or were held back (the summary names them).
        #[arg(long)]
        once: bool,
        /// Only groups whose ID matches this pattern (`*` matches any run
        /// of characters).
        #[arg(long)]
        groups: Option<String>,
        /// Print the differences; publish nothing (implies --once).
        #[arg(long)]
        dry_run: bool,
    },
    /// Read back what each target's provider holds (ZEGO, RongCloud,
    /// Tencent, Agora), compare it with the groups' mute state as the
    /// policy sends it, and report each difference; --repair has the
    /// workers re-apply the drifted dimensions (the remaining time of a
    /// timed mute).
    Verify {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only this `[targets.NAME]` (default: every target that can be
        /// read back).
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        selection: cli::state::Selection,
        /// Print what would be repaired; publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// Publish a repair marker per drifted group; the worker owning
        /// the group applies it under the target's rate limit.
        #[arg(long)]
        repair: bool,
        /// One JSON object per difference, then a summary per target.
        #[arg(long)]
        json: bool,
    },
    /// Each target's circuit breaker, lag and backlog: from a running
    /// worker (--url, its ops address) or from Kafka (--config).
    Targets {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A worker's ops address, e.g. http://127.0.0.1:9091
        #[arg(long)]
        url: Option<String>,
        /// One JSON line per pipeline instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Move one target's consumer group back to a time, so that it applies
    /// again what happened since; the other targets are untouched. Refuses
    /// while the workers run.
    Rewind {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The `[targets.NAME]` to rewind.
        #[arg(long)]
        target: String,
        /// A duration ago (90s, 30m, 12h, 7d) or milliseconds since the epoch.
        #[arg(long)]
        to: String,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the JSON Schema of a contract: the normalized event (default),
    /// the group mute state, or what a target applied.
    Schema {
        #[arg(value_enum, default_value_t = Contract::Event)]
        contract: Contract,
    },
    /// Validate a config file; exits non-zero with the key at fault.
    /// Without --resolve, `env:NAME` secrets are not read (only checked to
    /// name a variable), so a file can be checked where its secrets are not.
    CheckConfig {
        file: PathBuf,
        /// Also read the `env:` secrets the given role uses, as it would at
        /// start: ingest (apps, [kafka.client]), worker (targets, Redis
        /// URLs, [kafka.client]) or all.
        #[arg(long, value_enum)]
        resolve: Option<cli::Resolve>,
    },
    /// Exit 0 if URL answers 200 within the timeout, 1 otherwise: the
    /// container health check (the runtime image has no curl).
    Health {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        /// Seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// A real Apache Kafka cluster on this machine (from Maven Central's
    /// jars): start, stop, kill, pause, resume and restart its nodes.
    Kafka(cli::kafka::KafkaArgs),
    /// Create the event, state and dead-letter topics as mutebridge needs
    /// them, or check an existing cluster's and say what is wrong.
    Topics(cli::topics::TopicsArgs),
    /// Load generators and benchmarks.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Contract {
    /// `mutebridge.event/v1`, the records of the event topic.
    Event,
    /// `mutebridge.state/v1`, the group states in the state topic.
    State,
    /// `mutebridge.applied/v1`, what each target applied, in the state topic.
    Applied,
}

#[derive(Subcommand)]
enum StateCommand {
    /// Print one group's mute state (JSON), reading only its partition.
    Get {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// `org#app`.
        appkey: String,
        /// `group` or `chatroom`.
        scope: String,
        group_id: String,
    },
    /// Print every group's newest mute state, one JSON line each.
    Dump {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        selection: cli::state::Selection,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// A summary by target and reason, then each dead letter.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        filters: cli::dlq::Filters,
        /// One JSON line per dead letter instead of the text report.
        #[arg(long)]
        json: bool,
    },
    /// Publish the selected dead letters' events to the event topic again,
    /// for the worker to re-apply (only the failed target and rule).
    Replay {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        filters: cli::dlq::Filters,
        /// Print what would be replayed; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also replay dead letters that were replayed before.
        #[arg(long)]
        again: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print which rules match a normalized event (JSON, as read from the
    /// topic) and the exact requests they would send. Calls nothing.
    Explain {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A `mutebridge.event/v1` JSON file.
        event: PathBuf,
        /// A group state (`mutebridge state get` output): also show what
        /// the stale-event guard would let through against it.
        #[arg(long)]
        state: Option<PathBuf>,
    },
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
    let ok = |()| ExitCode::SUCCESS;
    match command {
        Command::Run { config } => cli::run::serve(config.as_deref(), Roles::Both).await,
        Command::Ingest { config } => cli::run::serve(config.as_deref(), Roles::Ingest).await,
        Command::Worker { config } => cli::run::serve(config.as_deref(), Roles::Worker).await,
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    config,
                    event,
                    state,
                },
        } => cli::explain::run(config.as_deref(), &event, state.as_deref()).map(ok),
        Command::Send {
            url,
            appkey,
            secret,
            examples,
            keep_ids,
            timeout,
            files,
        } => {
            let failures = send::run(send::SendArgs {
                url,
                appkey,
                secret,
                files,
                examples,
                keep_ids,
                timeout: Duration::from_secs(timeout),
            })
            .await?;
            Ok(exit(failures == 0))
        }
        Command::DevKafka {
            topic,
            dlq_topic,
            state_topic,
            partitions,
        } => cli::dev_kafka(&[&topic, &dlq_topic, &state_topic], partitions)
            .await
            .map(ok),
        Command::Dlq { command } => match command {
            DlqCommand::List {
                config,
                filters,
                json,
            } => cli::dlq::list(config.as_deref(), &filters, json)
                .await
                .map(ok),
            DlqCommand::Replay {
                config,
                filters,
                dry_run,
                again,
            } => cli::dlq::replay(config.as_deref(), &filters, dry_run, again)
                .await
                .map(|_| ExitCode::SUCCESS),
        },
        Command::State { command } => match command {
            StateCommand::Get {
                config,
                appkey,
                scope,
                group_id,
            } => cli::state::get(config.as_deref(), &appkey, &scope, &group_id)
                .await
                .map(exit),
            StateCommand::Dump { config, selection } => {
                cli::state::dump(config.as_deref(), &selection)
                    .await
                    .map(ok)
            }
        },
        Command::Resync {
            config,
            target,
            selection,
            dry_run,
        } => cli::resync::run(config.as_deref(), &target, &selection, dry_run)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Reconcile {
            config,
            once,
            groups,
            dry_run,
        } => {
            let args = cli::reconcile::Args {
                once,
                groups,
                dry_run,
            };
            cli::reconcile::run(config.as_deref(), args).await
        }
        Command::Verify {
            config,
            target,
            selection,
            dry_run,
            repair,
            json,
        } => {
            let args = cli::verify::Args {
                target,
                selection,
                dry_run,
                repair,
                json,
            };
            cli::verify::run(config.as_deref(), args).await
        }
        Command::Schema { contract } => {
            print!(
                "{}",
                match contract {
                    Contract::Event => mutebridge::event::json_schema(),
                    Contract::State => mutebridge::state::json_schema(),
                    Contract::Applied => mutebridge::state::applied::json_schema(),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Targets { config, url, json } => {
            cli::targets::run(config.as_deref(), url.as_deref(), json)
                .await
                .map(ok)
        }
        Command::Rewind {
            config,
            target,
            to,
            dry_run,
        } => cli::rewind::run(config.as_deref(), &target, &to, dry_run)
            .await
            .map(ok),
        Command::CheckConfig { file, resolve } => cli::check_config(&file, resolve).map(ok),
        Command::Health { url, timeout } => {
            let healthy = cli::health::run(&url, Duration::from_secs(timeout)).await?;
            Ok(exit(healthy))
        }
        Command::Kafka(args) => tokio::task::spawn_blocking(move || cli::kafka::run(args))
            .await?
            .map(ok),
        Command::Topics(args) => cli::topics::run(args).await,
        Command::Bench { command } => bench::run(command).await.map(ok),
    }
}

fn exit(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
