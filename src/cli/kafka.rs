//! `mutebridge kafka`: a real Apache Kafka cluster on this machine, from
//! Maven Central's jars (see [`crate::kafka::local`]), to try mutebridge
//! against a real broker and to break it on purpose: stop, kill, pause and
//! resume one node, and start it again.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::kafka::local::{Home, Lifetime, LocalKafka, NodeState, Spec, KAFKA_VERSION};

/// `mutebridge kafka ...`.
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Where the jars are cached and the cluster lives.
    #[arg(
        long,
        global = true,
        env = "MUTEBRIDGE_KAFKA_DIR",
        default_value = "target/kafka"
    )]
    dir: PathBuf,
    #[command(subcommand)]
    command: KafkaCommand,
}

#[derive(Debug, Subcommand)]
enum KafkaCommand {
    /// Fetch Apache Kafka's jars from Maven Central (once; later runs are offline).
    Fetch,
    /// Start the cluster (formatting it the first time) and print bootstrap.servers.
    Start {
        /// 1 or 3 combined broker+controller nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Node N listens on BASE + 10(N-1) for clients, the next port for its controller.
        #[arg(long, default_value_t = 19092)]
        base_port: u16,
        /// Java heap per node, in MiB.
        #[arg(long, default_value_t = 384)]
        heap_mb: u32,
    },
    /// Stop every node (a controlled shutdown; SIGKILL after 20 s).
    Stop {
        /// Also delete the cluster's data (the jars stay).
        #[arg(long)]
        delete: bool,
    },
    /// Each node: its address, its pid, and whether it runs, is paused or stopped.
    Status,
    /// SIGKILL one node: a crash.
    Kill { node: u32 },
    /// SIGSTOP one node: a hang (it keeps its connections and answers nothing).
    Pause { node: u32 },
    /// SIGCONT one paused node.
    Resume { node: u32 },
    /// Start one node again (stopping it first if it runs) and wait until it serves.
    Restart { node: u32 },
}

/// Runs `mutebridge kafka ...`.
pub async fn run(args: KafkaArgs) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || control(args)).await??;
    Ok(ExitCode::SUCCESS)
}

/// Blocking: the JVMs are started and waited on from this thread.
fn control(args: KafkaArgs) -> anyhow::Result<()> {
    let home = Home::new(&args.dir);
    let dir = args.dir.join("cluster");
    let say = |s: &str| eprintln!("{s}");
    match args.command {
        KafkaCommand::Fetch => {
            let libs = home.fetch(&say)?;
            println!("Apache Kafka {KAFKA_VERSION} jars in {}", libs.display());
        }
        KafkaCommand::Start {
            nodes,
            base_port,
            heap_mb,
        } => {
            home.fetch(&say)?;
            let cluster = if dir.join("cluster.json").exists() {
                let cluster = LocalKafka::open(&home, &dir, Lifetime::Detached)?;
                if cluster.nodes().len() != nodes as usize {
                    anyhow::bail!(
                        "the cluster in {} has {} node(s), not {nodes}: stop it with --delete to make a new one",
                        dir.display(),
                        cluster.nodes().len()
                    );
                }
                cluster
            } else {
                say(&format!(
                    "formatting a {nodes}-node cluster in {}",
                    dir.display()
                ));
                let spec = Spec {
                    nodes,
                    base_port,
                    heap_mb,
                    overrides: Vec::new(),
                };
                LocalKafka::create(&home, &dir, &spec, Lifetime::Detached)?
            };
            say("starting (each node is a JVM; a few seconds)");
            cluster.start()?;
            println!(
                "Apache Kafka {KAFKA_VERSION}: {} node(s) running in {}",
                cluster.nodes().len(),
                dir.display()
            );
            println!("bootstrap.servers={}", cluster.bootstrap_servers());
            println!(
                "  point mutebridge at it:  [kafka] brokers = \"{}\"",
                cluster.bootstrap_servers()
            );
            println!("  create its topics:       mutebridge topics create --config FILE");
            println!("  break it:                mutebridge kafka kill|pause|resume|restart NODE");
            println!("  stop it:                 mutebridge kafka stop [--delete]");
        }
        KafkaCommand::Stop { delete } => {
            if dir.join("cluster.json").exists() {
                let cluster = LocalKafka::open(&home, &dir, Lifetime::Detached)?;
                cluster.stop()?;
                println!("stopped the cluster in {}", dir.display());
            } else {
                println!("no cluster in {}", dir.display());
            }
            if delete && dir.exists() {
                std::fs::remove_dir_all(&dir)?;
                println!("deleted {}", dir.display());
            }
        }
        KafkaCommand::Status => {
            let cluster = LocalKafka::open(&home, &dir, Lifetime::Detached)?;
            println!("bootstrap.servers={}", cluster.bootstrap_servers());
            for node in cluster.nodes() {
                let state = cluster.state(node.id);
                let pid = match cluster.pid(node.id) {
                    Some(pid) if state != NodeState::Stopped => pid.to_string(),
                    _ => "-".into(),
                };
                let state: &str = state.into();
                println!("node {}  {}  pid {pid}  {state}", node.id, node.address());
            }
        }
        KafkaCommand::Kill { node } => {
            open(&home, &dir)?.kill(node)?;
            println!("node {node} killed (SIGKILL)");
        }
        KafkaCommand::Pause { node } => {
            open(&home, &dir)?.pause(node)?;
            println!("node {node} paused (SIGSTOP); `mutebridge kafka resume {node}` wakes it");
        }
        KafkaCommand::Resume { node } => {
            open(&home, &dir)?.resume(node)?;
            println!("node {node} resumed (SIGCONT)");
        }
        KafkaCommand::Restart { node } => {
            open(&home, &dir)?.restart(node)?;
            println!("node {node} started");
        }
    }
    Ok(())
}

fn open(home: &Home, dir: &std::path::Path) -> anyhow::Result<LocalKafka> {
    LocalKafka::open(home, dir, Lifetime::Detached)
}
