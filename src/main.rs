//! The `mutebridge` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use mutebridge::cli::{bench, send};
use mutebridge::config::{Config, Origin, DEMO_APPKEY, DEMO_SECRET};
use mutebridge::event;
use mutebridge::ingest::{shutdown_signal, Ingest};
use mutebridge::kafka::Cluster;
use mutebridge::metrics::Metrics;
use mutebridge::ingest::publish::Publisher;
use mutebridge::worker::Worker;

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
        /// Topic to create.
        #[arg(long, default_value = "im.group-events")]
        topic: String,
        #[arg(long, default_value_t = 12)]
        partitions: i32,
    },
    /// Print the JSON Schema of the normalized event.
    Schema,
    /// Validate a config file; exits non-zero with the key at fault.
    CheckConfig { file: PathBuf },
    /// Exit 0 if URL answers 200 within the timeout, 1 otherwise: the
    /// container health check (the runtime image has no curl).
    Health {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        /// Seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// Load generators and benchmarks.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
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
    },
}

/// Which roles a process runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Roles {
    Both,
    Ingest,
    Worker,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
        Command::Run { config } => serve(config, Roles::Both).await,
        Command::Ingest { config } => serve(config, Roles::Ingest).await,
        Command::Worker { config } => serve(config, Roles::Worker).await,
        Command::Policy {
            command: PolicyCommand::Explain { config, event },
        } => {
            let (config, _) = Config::load(config.as_deref())?;
            let policy = config.policy()?;
            let text = std::fs::read_to_string(&event)
                .with_context(|| format!("cannot read {}", event.display()))?;
            let event: event::Event = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a normalized event ({}); save one from the topic, e.g. with kcat",
                    event.display(),
                    event::SCHEMA_V1
                )
            })?;
            print!(
                "{}",
                mutebridge::policy::explain_text(&policy, &config.targets, &event)
            );
            Ok(ExitCode::SUCCESS)
        }
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
            Ok(if failures == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::DevKafka { topic, partitions } => {
            let cluster = mutebridge::kafka::EmbeddedKafka::start(1)?;
            cluster.create_topic(&topic, partitions)?;
            println!("bootstrap.servers={}", cluster.bootstrap_servers());
            println!(
                "topic {topic} ({partitions} partitions); in memory, gone on exit. Ctrl-C to stop."
            );
            shutdown_signal().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            print!("{}", event::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let (config, _) = Config::load(Some(&file))?;
            println!(
                "{}: OK ({} app(s), kafka {} topic {}, {} target(s), {} rule(s))",
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { url, timeout } => {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(timeout))
                .build()?;
            match client.get(&url).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => Ok(ExitCode::SUCCESS),
                Ok(r) => {
                    eprintln!("{url}: {}", r.status());
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => {
                    eprintln!("{url}: {:#}", anyhow::Error::from(e));
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Bench { command } => {
            bench::run(command).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(config_path: Option<PathBuf>, roles: Roles) -> anyhow::Result<ExitCode> {
    init_logging();
    let (config, origin) = Config::load(config_path.as_deref())?;
    if roles != Roles::Worker {
        config.require_ingest()?;
    }
    let metrics = Metrics::new();
    let cluster = Cluster::connect(&config.kafka).await?;
    let worker = match roles {
        Roles::Ingest => None,
        _ => Some(Worker::start(&config, &cluster, &metrics).await?),
    };
    let ingest = match roles {
        Roles::Worker => None,
        _ => {
            let publisher = Publisher::new(&config.kafka, cluster.bootstrap_servers())?;
            Some(Ingest::bind(&config, publisher, metrics.clone()).await?)
        }
    };

    println!("mutebridge {}", env!("CARGO_PKG_VERSION"));
    match &origin {
        Origin::File(path) => println!("  config: {}", path.display()),
        Origin::Demo => println!("  config: none given, using the built-in demo config"),
    }
    if cluster.embedded().is_some() {
        println!("  kafka: EMBEDDED in-process cluster (in memory; its data is gone when mutebridge exits)");
    } else {
        println!("  kafka: external cluster");
    }
    println!(
        "  bootstrap.servers={}  topic={} ({} partitions)",
        cluster.bootstrap_servers(),
        config.kafka.topic,
        config.kafka.partitions
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(ingest) = ingest {
        let addr = ingest.local_addr();
        println!(
            "  ingest: http://{addr}  (POST /webhooks/easemob, GET /metrics /healthz /readyz)"
        );
        if matches!(origin, Origin::Demo) {
            println!("  DEMO app accepted: appkey {DEMO_APPKEY}, secret {DEMO_SECRET} (use a config file for real apps)");
            let exe = std::env::args()
                .next()
                .unwrap_or_else(|| "mutebridge".into());
            println!("  send a sample callback:");
            println!(
                "    {exe} send --url http://{addr}/webhooks/easemob --appkey '{DEMO_APPKEY}' --secret {DEMO_SECRET} --example mute-all"
            );
            println!("  read the topic:");
            println!(
                "    kcat -b {} -t {} -C -o beginning -f '%k %h %s\\n'",
                cluster.bootstrap_servers(),
                config.kafka.topic
            );
        }
        tasks.spawn(ingest.serve(stopped(stop_rx.clone())));
    }
    if let Some(worker) = worker {
        println!(
            "  worker: group {} -> {} target(s), {} rule(s); dead letters to {}",
            config.worker.group_id,
            config.targets.len(),
            config.policy.rules.len(),
            config.worker.dlq_topic
        );
        if matches!(origin, Origin::Demo) {
            println!("  DEMO targets are `log` targets: each action is printed below as the signed request it would send");
        }
        if roles == Roles::Worker {
            let listen = config.http.listen;
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
                format!("cannot listen on {listen}; is another process using it? Set http.listen to another address")
            })?;
            println!("  worker: http://{listen}  (GET /metrics /healthz /readyz)");
            let router = mutebridge::ingest::http::ops_router(metrics.clone(), worker.ready_flag());
            let stop = stopped(stop_rx.clone());
            tasks.spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await
                    .context("the metrics server failed")
            });
        }
        tasks.spawn(worker.run(stopped(stop_rx.clone())));
    }
    let mut failed = false;
    tokio::select! {
        _ = shutdown_signal() => {}
        Some(result) = tasks.join_next() => {
            report(result, &mut failed);
        }
    }
    let _ = stop_tx.send(true);
    while let Some(result) = tasks.join_next().await {
        report(result, &mut failed);
    }
    drop(cluster);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn report(result: Result<anyhow::Result<()>, tokio::task::JoinError>, failed: &mut bool) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            *failed = true;
        }
        Err(e) => {
            eprintln!("error: a task failed: {e}");
            *failed = true;
        }
    }
}
