//! `mutebridge run | ingest | worker`: start the roles a process runs,
//! print what a first-time user needs to know (the banner), and stop them
//! in order on SIGTERM or Ctrl-C.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Checked, Config, Origin, Secrets, DEMO_APPKEY, DEMO_SECRET};
use crate::ingest::publish::Publisher;
use crate::ingest::Ingest;
use crate::kafka::Cluster;
use crate::metrics::Metrics;
use crate::worker::Worker;

/// `mutebridge run | ingest | worker`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// Which roles a process runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    Both,
    Ingest,
    Worker,
}

impl Roles {
    /// Each role reads only the secrets it uses.
    fn secrets(self) -> Secrets {
        match self {
            Roles::Both => Secrets::RUN,
            Roles::Ingest => Secrets::INGEST,
            Roles::Worker => Secrets::WORKER,
        }
    }
}

pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs `roles` until SIGTERM or Ctrl-C; the exit code says whether every
/// part stopped cleanly.
pub async fn serve(args: RunArgs, roles: Roles) -> anyhow::Result<ExitCode> {
    init_logging();
    let (config, origin) = Config::load(args.config.as_deref(), roles.secrets())?;
    // Each HTTP connection and Kafka socket is a file descriptor; the
    // connection cap is derived from what is available.
    let fd_limit = crate::server::raise_fd_limit();
    if roles != Roles::Worker {
        config.require_ingest()?;
    }
    let metrics = Metrics::new();
    let cluster = Cluster::connect(&config.kafka).await?;
    let (ingest, worker) = start(roles, &config, &cluster, &metrics).await?;

    banner(&origin, &cluster, &config);
    let mut tasks = Tasks::new();
    let ops = serve_ops(
        &mut tasks,
        ingest.as_ref(),
        worker.as_ref(),
        &config,
        &metrics,
        fd_limit,
    )
    .await?;
    if let Some(ingest) = ingest {
        serve_ingest(&mut tasks, ingest, ops, &origin, &cluster, &config);
    }
    if let Some(worker) = worker {
        serve_worker(&mut tasks, worker, &origin, &config);
    }
    let clean = tasks.until_stopped().await;
    drop(cluster);
    Ok(super::exit_code(clean))
}

/// The parts `roles` asks for, ready to serve: the worker, then ingest
/// bound to its port.
async fn start(
    roles: Roles,
    config: &Checked,
    cluster: &Cluster,
    metrics: &Metrics,
) -> anyhow::Result<(Option<Ingest>, Option<Worker>)> {
    let worker = match roles {
        Roles::Ingest => None,
        _ => Some(Worker::start(config, cluster, metrics).await?),
    };
    let ingest = match roles {
        Roles::Worker => None,
        _ => {
            let publisher = Publisher::new(&config.kafka, cluster.bootstrap_servers())?;
            Some(Ingest::bind(config, publisher, metrics.clone()).await?)
        }
    };
    Ok((ingest, worker))
}

/// The running parts. They are told to stop together: on a signal, or as
/// soon as one of them ends.
struct Tasks {
    set: JoinSet<anyhow::Result<()>>,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
}

impl Tasks {
    fn new() -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        Tasks {
            set: JoinSet::new(),
            stop_tx,
            stop_rx,
        }
    }

    /// Completes when the parts are told to stop.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    fn spawn(&mut self, part: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        self.set.spawn(part);
    }

    /// Waits for SIGTERM, Ctrl-C or the first part to end, tells every
    /// part to stop and waits for each; true when all stopped cleanly.
    async fn until_stopped(mut self) -> bool {
        let mut failed = false;
        tokio::select! {
            _ = crate::ops::shutdown_signal() => {}
            Some(result) = self.set.join_next() => {
                report(result, &mut failed);
            }
        }
        let _ = self.stop_tx.send(true);
        while let Some(result) = self.set.join_next().await {
            report(result, &mut failed);
        }
        !failed
    }
}

/// Spawns the operators' listener, if the roles have one; returns the
/// address it is bound to.
async fn serve_ops(
    tasks: &mut Tasks,
    ingest: Option<&Ingest>,
    worker: Option<&Worker>,
    config: &Config,
    metrics: &Metrics,
    fd_limit: Option<u64>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some((listen, key, mut router)) = ops_listener(ingest, worker, config, metrics) else {
        return Ok(None);
    };
    let listener = crate::ops::bind(listen, key).await?;
    let bound = listener.local_addr().unwrap_or(listen);
    let name = if ingest.is_some() { "ops" } else { "worker" };
    let mut routes = "/metrics /healthz /readyz";
    if let Some(worker) = worker {
        router = router.merge(targets_route(worker));
        routes = "/metrics /healthz /readyz /targets";
    }
    println!("  {name}: http://{bound}  (GET {routes})");
    let router = router.fallback(crate::ops::not_found);
    let stop = tasks.stopped();
    let limits = crate::server::Limits::new(&config.http, fd_limit);
    let http = metrics.http.clone();
    tasks.spawn(async move {
        crate::server::serve(listener, router, limits, http, stop).await;
        Ok(())
    });
    Ok(Some(bound))
}

/// The operators' listener: `[ops] listen`, or a worker-only process's
/// `http.listen` (it has no callback port), with the config key that sets
/// it. Its routes are the role's `crate::ops::router`, into which a role
/// merges routes of its own.
fn ops_listener(
    ingest: Option<&Ingest>,
    worker: Option<&Worker>,
    config: &Config,
    metrics: &Metrics,
) -> Option<(SocketAddr, &'static str, axum::Router)> {
    match (ingest, worker, config.ops.listen) {
        (Some(ingest), _, Some(listen)) => Some((listen, "ops.listen", ingest.ops_router())),
        (None, Some(worker), listen) => Some((
            listen.unwrap_or(config.http.listen),
            if listen.is_some() {
                "ops.listen"
            } else {
                "http.listen"
            },
            crate::ops::router(metrics.clone(), worker.ready_flag(), || {}),
        )),
        _ => None,
    }
}

/// Each target's breaker, lag and backlog (`mutebridge targets`).
fn targets_route(worker: &Worker) -> axum::Router {
    let statuses = worker.statuses();
    crate::ops::json_route("/targets", move || {
        let list: Vec<_> = statuses
            .iter()
            .map(|s| s.lock().expect("status lock").clone())
            .collect();
        serde_json::json!({ "pipelines": list })
    })
}

/// Spawns the callback listener; in the demo, says what to try first.
fn serve_ingest(
    tasks: &mut Tasks,
    ingest: Ingest,
    ops: Option<SocketAddr>,
    origin: &Origin,
    cluster: &Cluster,
    config: &Config,
) {
    let addr = ingest.local_addr();
    let metrics_here = if config.ops.listen.is_some() {
        ""
    } else {
        "/metrics "
    };
    println!(
        "  ingest: http://{addr}  (POST /webhooks/easemob, GET {metrics_here}/healthz /readyz)"
    );
    if matches!(origin, Origin::Demo) {
        demo_hints(addr, ops, cluster, config);
    }
    let stop = tasks.stopped();
    tasks.spawn(ingest.serve(stop));
}

/// Spawns the worker's consumers.
fn serve_worker(tasks: &mut Tasks, worker: Worker, origin: &Origin, config: &Config) {
    println!(
        "  worker: state keeper group {}, one group per target ({}.NAME) -> {} target(s), {} rule(s); dead letters to {}",
        config.worker.group_id,
        config.worker.group_id,
        config.targets.len(),
        config.policy.rules.len(),
        config.worker.dlq_topic
    );
    if matches!(origin, Origin::Demo) {
        println!("  DEMO targets are `log` targets: each action is printed below as the signed request it would send");
    }
    let stop = tasks.stopped();
    tasks.spawn(worker.run(stop));
}

/// What runs where: the version, the config and the cluster.
fn banner(origin: &Origin, cluster: &Cluster, config: &Config) {
    println!("mutebridge {}", env!("CARGO_PKG_VERSION"));
    match origin {
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
}

/// The demo's next steps: a signed sample callback, a topic reader, and
/// the targets' state on the ops port.
fn demo_hints(
    addr: std::net::SocketAddr,
    ops: Option<std::net::SocketAddr>,
    cluster: &Cluster,
    config: &Config,
) {
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
    if let Some(ops) = ops {
        println!("  each target's breaker, lag and backlog:");
        println!("    {exe} targets --url http://{ops}");
    }
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
