//! The `mutebridge` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use mutebridge::config::{Config, Origin, DEMO_APPKEY, DEMO_SECRET};
use mutebridge::ingest::{shutdown_signal, Ingest};
use mutebridge::kafka::Cluster;
use mutebridge::metrics::Metrics;
use mutebridge::publish::Publisher;
use mutebridge::{bench, event, send};

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
    /// Run every role in one process (today: ingest). Without --config:
    /// embedded Kafka and a demo app, for trying mutebridge out.
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the ingest role: verify callbacks and publish them to Kafka.
    Ingest {
        #[arg(long, short)]
        config: Option<PathBuf>,
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
    /// Load generators and benchmarks.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
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
        Command::Run { config } | Command::Ingest { config } => {
            init_logging();
            run_ingest(config).await?;
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
                "{}: OK ({} app(s), kafka {} topic {})",
                file.display(),
                config.easemob.apps.len(),
                config.kafka.brokers,
                config.kafka.topic
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command } => {
            bench::run(command).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_ingest(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, origin) = Config::load(config_path.as_deref())?;
    let metrics = Metrics::new();
    let cluster = Cluster::connect(&config.kafka).await?;
    let publisher = Publisher::new(&config.kafka, cluster.bootstrap_servers())?;
    let ingest = Ingest::bind(&config, publisher, metrics).await?;
    let addr = ingest.local_addr();

    println!("mutebridge {}", env!("CARGO_PKG_VERSION"));
    match &origin {
        Origin::File(path) => println!("  config: {}", path.display()),
        Origin::Demo => println!("  config: none given, using built-in defaults"),
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
    println!(
        "  listening on http://{addr}  (POST /webhooks/easemob, GET /metrics /healthz /readyz)"
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
    ingest.serve(shutdown_signal()).await?;
    drop(cluster);
    Ok(())
}
