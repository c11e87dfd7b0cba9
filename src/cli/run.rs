//! `mutebridge run | ingest | worker`: start the roles a process runs,
//! print what a first-time user needs to know (the banner), and stop them
//! in order on SIGTERM or Ctrl-C.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, Origin, Secrets, DEMO_APPKEY, DEMO_SECRET};
use crate::ingest::publish::Publisher;
use crate::ingest::Ingest;
use crate::kafka::Cluster;
use crate::metrics::Metrics;
use crate::worker::Worker;

/// Which roles a process runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    Both,
    Ingest,
    Worker,
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
pub async fn serve(config_path: Option<&Path>, roles: Roles) -> anyhow::Result<ExitCode> {
    init_logging();
    // Each role reads only the secrets it uses.
    let secrets = match roles {
        Roles::Both => Secrets::RUN,
        Roles::Ingest => Secrets::INGEST,
        Roles::Worker => Secrets::WORKER,
    };
    let (config, origin) = Config::load(config_path, secrets)?;
    // Each HTTP connection and Kafka socket is a file descriptor; the
    // connection cap is derived from what is available.
    let fd_limit = crate::server::raise_fd_limit();
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

    banner(&origin, &cluster, &config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    // The operators' listener: `[ops] listen`, or a worker-only process's
    // `http.listen` (it has no callback port). Its routes are the role's
    // `crate::ops::router`, into which a role merges routes of its own.
    let ops = match (&ingest, &worker, config.ops.listen) {
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
    };
    let mut ops_bound = None;
    if let Some((listen, key, mut router)) = ops {
        let listener = crate::ops::bind(listen, key).await?;
        let bound = listener.local_addr().unwrap_or(listen);
        ops_bound = Some(bound);
        let name = if ingest.is_some() { "ops" } else { "worker" };
        let mut routes = "/metrics /healthz /readyz";
        if let Some(worker) = &worker {
            // Each target's breaker, lag and backlog (`mutebridge targets`).
            let statuses = worker.statuses();
            router = router.merge(crate::ops::json_route("/targets", move || {
                let list: Vec<_> = statuses
                    .iter()
                    .map(|s| s.lock().expect("status lock").clone())
                    .collect();
                serde_json::json!({ "pipelines": list })
            }));
            routes = "/metrics /healthz /readyz /targets";
        }
        println!("  {name}: http://{bound}  (GET {routes})");
        let router = router.fallback(crate::ops::not_found);
        let stop = stopped(stop_rx.clone());
        let limits = crate::server::Limits::new(&config.http, fd_limit);
        let http = metrics.http.clone();
        tasks.spawn(async move {
            crate::server::serve(listener, router, limits, http, stop).await;
            Ok(())
        });
    }
    if let Some(ingest) = ingest {
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
            demo_hints(addr, ops_bound, &cluster, &config);
        }
        tasks.spawn(ingest.serve(stopped(stop_rx.clone())));
    }
    if let Some(worker) = worker {
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
        tasks.spawn(worker.run(stopped(stop_rx.clone())));
    }
    let mut failed = false;
    tokio::select! {
        _ = crate::ops::shutdown_signal() => {}
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
