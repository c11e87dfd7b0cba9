//! `mutebridge bench ingest`: a load generator for the ingest path.
//!
//! It sends signed callbacks (unique `callId`s, spread over many groups) on
//! N keep-alive HTTP/1.1 connections and reports throughput and latency
//! percentiles. Without `--url` it measures, round after round in turns
//! (the order rotates each round), servers each in a child process of its
//! own so the generator does not share their runtime:
//!
//! - a bare "return 200" axum server: what HTTP alone costs here;
//! - the floor of any HTTP-to-Kafka bridge: a minimal hyper + rdkafka proxy
//!   on the same embedded broker (parse the JSON body, key it by its `id`,
//!   acks=all and idempotence, 200 after the ack; no verification, no
//!   dedup). Every other row says how close it gets to it;
//! - `mutebridge ingest` (or `run`, with `--role run`) on the embedded
//!   Kafka cluster;
//! - with `--compare BIN`, the same command of `BIN` too (another build,
//!   for an A/B).
//!
//! Peak RSS of each server is read from `/proc`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use axum::body::Bytes;
use axum::http::{header, Request, StatusCode};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{DEMO_APPKEY, DEMO_SECRET};
use crate::ingest::verify::sign;
use crate::time::now_ms;

/// `mutebridge bench ...`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Load-test the callback endpoint.
    Ingest(IngestBench),
    /// A bare axum server answering 200 to everything (the baseline).
    #[command(hide = true)]
    BaselineServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The floor: a minimal hyper + rdkafka proxy (see the module doc).
    #[command(hide = true)]
    FloorServer {
        #[arg(long)]
        listen: SocketAddr,
        /// `embedded` (its own in-process cluster) or a bootstrap list.
        #[arg(long, default_value = "embedded")]
        brokers: String,
    },
}

/// Options of `mutebridge bench ingest`.
#[derive(Args, Debug, Clone)]
pub struct IngestBench {
    /// Target an already running server instead of starting the baseline
    /// and mutebridge (e.g. http://127.0.0.1:8080/webhooks/easemob).
    #[arg(long)]
    pub url: Option<String>,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Runs per server; the summary is the median run by throughput.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Distinct group IDs the callbacks are spread over.
    #[arg(long, default_value_t = 1000)]
    pub groups: u64,
    /// Appkey and secret to sign with (default: the demo app).
    #[arg(long, default_value = DEMO_APPKEY)]
    pub appkey: String,
    #[arg(long, default_value = DEMO_SECRET)]
    pub secret: String,
    /// Where the embedded cluster runs: `in-process` (the zero-config
    /// default) or `separate-process` (`mutebridge dev-kafka`, so the RSS
    /// reported is mutebridge's own and not the in-memory log's).
    #[arg(long, default_value = "in-process", value_parser = ["in-process", "separate-process"])]
    pub kafka: String,
    /// Extra TOML appended to the generated mutebridge config (e.g.
    /// `[kafka.client]` settings to compare).
    #[arg(long)]
    pub extra_config: Option<PathBuf>,
    /// Another mutebridge binary to measure in the same rounds (the same
    /// role and config), for an alternated A/B of two builds.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// The mutebridge command measured: `ingest` (the callback path alone,
    /// like the floor) or `run` (a worker consuming the topic beside it).
    #[arg(long, default_value = "ingest", value_parser = ["ingest", "run"])]
    pub role: String,
    /// A real Kafka cluster (`host:port,...`, e.g. `mutebridge kafka
    /// start`'s): the floor and mutebridge are measured against it too, in
    /// the same rounds as against the embedded cluster.
    #[arg(long)]
    pub real_kafka: Option<String>,
}

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Latencies of successful requests, microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl LoadReport {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`-th percentile latency in milliseconds (0 when empty).
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((p / 100.0) * (self.latencies_us.len() - 1) as f64).round() as usize;
        self.latencies_us[idx] as f64 / 1000.0
    }
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        anyhow!("--url must start with http:// (the generator speaks plain HTTP/1.1)")
    })?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/webhooks/easemob"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} has no address"))?;
    Ok(Target {
        addr,
        host: host.to_owned(),
        path: path.to_owned(),
    })
}

/// A signed new-format mute-all callback with a unique callId.
fn callback(appkey: &str, secret: &str, run: u64, seq: u64, groups: u64) -> String {
    let call_id = format!("{appkey}_bench-{run}-{seq}");
    let ts = now_ms().to_string();
    let security = sign(&call_id, secret, &ts);
    let group = 100_000_000 + seq % groups.max(1);
    format!(
        r#"{{"callId":"{call_id}","security":"{security}","payload":{{"mute":true,"type":"MUTE"}},"appkey":"{appkey}","id":"{group}","type":"GROUP","event":"group_op_event","operation":"UPDATE","operator":"@ppAdmin","timestamp":{ts}}}"#
    )
}

/// Drives `opts.connections` connections for `warmup + duration` seconds.
pub async fn load(url: &str, opts: &IngestBench) -> anyhow::Result<LoadReport> {
    let target = Arc::new(parse_url(url)?);
    let seq = Arc::new(AtomicU64::new(0));
    let run = now_ms() as u64;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(opts.warmup);
    let end = measure_from + Duration::from_secs(opts.duration);
    let mut tasks = Vec::new();
    for _ in 0..opts.connections {
        let target = target.clone();
        let seq = seq.clone();
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(target.addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::with_capacity(1 << 16));
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let body = callback(&opts.appkey, &opts.secret, run, n, opts.groups);
                let req = Request::post(target.path.as_str())
                    .header(header::HOST, target.host.as_str())
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                sender.ready().await?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                if sent >= measure_from {
                    if status == StatusCode::OK {
                        ok += 1;
                        lat.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        failed += 1;
                    }
                }
            }
            anyhow::Ok((ok, failed, lat))
        }));
    }
    let mut report = LoadReport {
        ok: 0,
        failed: 0,
        elapsed: Duration::from_secs(opts.duration),
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (ok, failed, lat) = task.await.context("a load connection panicked")??;
        report.ok += ok;
        report.failed += failed;
        report.latencies_us.extend(lat);
    }
    report.latencies_us.sort_unstable();
    Ok(report)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Peak resident set size of a process in MiB, from /proc (Linux only).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn wait_ready(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = reqwest::Client::new();
    while Instant::now() < deadline {
        if let Ok(resp) = client.get(format!("http://{addr}{path}")).send().await {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server at {addr} did not become ready within 60 s")
}

/// A server under test, in a child process.
struct Child {
    child: tokio::process::Child,
}

impl Child {
    fn command(args: &[&str]) -> anyhow::Result<tokio::process::Command> {
        Child::command_of(None, args)
    }

    /// `bin` (or this binary) with `args`.
    fn command_of(
        bin: Option<&std::path::Path>,
        args: &[&str],
    ) -> anyhow::Result<tokio::process::Command> {
        let exe = match bin {
            Some(b) => b.to_path_buf(),
            None => std::env::current_exe().context("cannot find the mutebridge binary")?,
        };
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        Ok(cmd)
    }

    async fn spawn(args: &[&str], addr: SocketAddr, ready_path: &str) -> anyhow::Result<Child> {
        Child::spawn_bin(None, args, addr, ready_path).await
    }

    async fn spawn_bin(
        bin: Option<&std::path::Path>,
        args: &[&str],
        addr: SocketAddr,
        ready_path: &str,
    ) -> anyhow::Result<Child> {
        let child = Child::command_of(bin, args)?
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the server under test")?;
        wait_ready(addr, ready_path).await?;
        Ok(Child { child })
    }

    /// Starts `mutebridge dev-kafka` and returns it with its bootstrap list.
    async fn spawn_kafka() -> anyhow::Result<(Child, String)> {
        use tokio::io::AsyncBufReadExt;
        let mut child = Child::command(&["dev-kafka"])?
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start mutebridge dev-kafka")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await? {
            if let Some(bootstrap) = line.strip_prefix("bootstrap.servers=") {
                return Ok((Child { child }, bootstrap.to_owned()));
            }
        }
        bail!("mutebridge dev-kafka exited without printing its address")
    }

    fn peak_rss_mib(&self) -> Option<f64> {
        self.child.id().and_then(peak_rss_mib)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            // SIGTERM, so mutebridge drains and flushes as in production.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }
}

struct Row {
    name: String,
    report: LoadReport,
    rss_mib: Option<f64>,
    /// Against the real cluster (its floor is the real-Kafka floor).
    real: bool,
}

/// One row; `floor`: the floor's req/s of the same round, for the ratio.
fn print_row(label: &str, r: &Row, floor: Option<f64>) {
    print_row_ratio(label, r, floor.map(|f| r.report.rate() / f));
}

fn print_row_ratio(label: &str, r: &Row, of_floor: Option<f64>) {
    let rep = &r.report;
    let rss = r
        .rss_mib
        .map(|m| format!("{m:.1}"))
        .unwrap_or_else(|| "-".into());
    let of_floor = of_floor
        .map(|x| format!("{x:.2}"))
        .unwrap_or_else(|| "-".into());
    println!(
        "{label:<36} {:>10.0} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>8}",
        rep.rate(),
        of_floor,
        rep.percentile_ms(50.0),
        rep.percentile_ms(90.0),
        rep.percentile_ms(99.0),
        rep.percentile_ms(100.0),
        rep.failed,
        rss
    );
}

fn print_header() {
    println!(
        "{:<36} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "server", "req/s", "of floor", "p50 ms", "p90 ms", "p99 ms", "max ms", "non-200", "RSS MiB"
    );
}

async fn run_ingest_bench(opts: IngestBench) -> anyhow::Result<()> {
    if let Some(url) = &opts.url {
        println!(
            "# {} connections, {} s (+{} s warm-up), against {url}",
            opts.connections, opts.duration, opts.warmup
        );
        print_header();
        for i in 1..=opts.runs {
            let report = load(url, &opts).await?;
            print_row(
                &format!("run {i}"),
                &Row {
                    name: "target".into(),
                    report,
                    rss_mib: None,
                    real: false,
                },
                None,
            );
        }
        return Ok(());
    }

    let extra = match &opts.extra_config {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        None => String::new(),
    };
    let config_path =
        std::env::temp_dir().join(format!("mutebridge-bench-{}.toml", std::process::id()));
    println!(
        "# {} connections, {} s per run (+{} s warm-up), {} run(s) per server, mutebridge {}, Kafka {}, {} cores",
        opts.connections,
        opts.duration,
        opts.warmup,
        opts.runs,
        opts.role,
        opts.kafka,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    print_header();
    let mut servers = vec![
        (Server::Baseline, None),
        (Server::Floor, None),
        (Server::Mutebridge(None), None),
    ];
    if let Some(other) = &opts.compare {
        servers.push((Server::Mutebridge(Some(other.clone())), None));
    }
    if let Some(real) = &opts.real_kafka {
        // The topic made once, as mutebridge makes it for a cluster of
        // this size (replication, min.insync.replicas).
        let kafka = crate::kafka::config::KafkaConfig {
            brokers: real.clone(),
            ..Default::default()
        };
        let topics = crate::kafka::topics::Topics::connect(&kafka, real)?;
        let brokers = topics.brokers().await?;
        topics
            .ensure(&crate::kafka::topics::Plan::events(&kafka, brokers))
            .await?;
        println!("# real Kafka: {real} ({brokers} brokers)");
        servers.push((Server::Floor, Some(real.clone())));
        servers.push((Server::Mutebridge(None), Some(real.clone())));
    }
    let mut rows: Vec<Row> = Vec::new();
    for i in 1..=opts.runs {
        let floor = rows.len();
        // Each round in another order, so no server always runs first.
        let order: Vec<&(Server, Option<String>)> = (0..servers.len())
            .map(|k| &servers[(k + i - 1) % servers.len()])
            .collect();
        for (server, real) in order {
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let listen = addr.to_string();
            let (kafka, brokers) = match (real, opts.kafka.as_str()) {
                (Some(real), _) => (None, real.clone()),
                (None, "separate-process") if !matches!(server, Server::Baseline) => {
                    let (child, bootstrap) = Child::spawn_kafka().await?;
                    (Some(child), bootstrap)
                }
                _ => (None, "embedded".to_owned()),
            };
            let child = match server {
                Server::Baseline => {
                    Child::spawn(
                        &["bench", "baseline-server", "--listen", &listen],
                        addr,
                        "/healthz",
                    )
                    .await?
                }
                Server::Floor => {
                    Child::spawn(
                        &[
                            "bench",
                            "floor-server",
                            "--listen",
                            &listen,
                            "--brokers",
                            &brokers,
                        ],
                        addr,
                        "/healthz",
                    )
                    .await?
                }
                Server::Mutebridge(bin) => {
                    std::fs::write(
                        &config_path,
                        format!(
                            "[http]\nlisten = \"{addr}\"\n\n[kafka]\nbrokers = \"{brokers}\"\ncreate_topics = false\n\n[[easemob.apps]]\nappkey = \"{}\"\nsecrets = [\"{}\"]\n\n{extra}\n",
                            opts.appkey, opts.secret
                        ),
                    )?;
                    let config = config_path.to_string_lossy().into_owned();
                    Child::spawn_bin(
                        bin.as_deref(),
                        &[&opts.role, "--config", &config],
                        addr,
                        "/readyz",
                    )
                    .await?
                }
            };
            let report = load(&format!("http://{addr}/webhooks/easemob"), &opts).await?;
            let row = Row {
                name: name(server, real.is_some()),
                report,
                rss_mib: child.peak_rss_mib(),
                real: real.is_some(),
            };
            child.stop().await?;
            if let Some(kafka) = kafka {
                kafka.stop().await?;
            }
            rows.push(row);
        }
        let round = &rows[floor..];
        for row in round {
            let floor_rate = round
                .iter()
                .find(|r| r.name == name(&Server::Floor, row.real))
                .map(|r| r.report.rate());
            print_row(&format!("{} run {i}", row.name), row, floor_rate);
        }
    }
    let _ = std::fs::remove_file(&config_path);
    print_medians(&servers, &rows);
    Ok(())
}

/// A row's name: the server, and the cluster when it is the real one.
fn name(server: &Server, real: bool) -> String {
    if real {
        format!("{}, real Kafka", server.name())
    } else {
        server.name()
    }
}

/// Each server's median run, and its median ratio to its round's floor
/// (the floor on the same cluster).
fn print_medians(servers: &[(Server, Option<String>)], rows: &[Row]) {
    println!("# median run by throughput; of floor: the median of each round's ratio to that round's floor on the same cluster");
    for (server, real) in servers {
        let name = name(server, real.is_some());
        let floor_name = self::name(&Server::Floor, real.is_some());
        let mut runs: Vec<&Row> = rows.iter().filter(|r| r.name == name).collect();
        runs.sort_by(|a, b| a.report.rate().total_cmp(&b.report.rate()));
        let Some(median) = runs.get(runs.len() / 2) else {
            continue;
        };
        // Paired: each run against the floor of its own round.
        let mut ratios: Vec<f64> = rows
            .chunks(servers.len())
            .filter_map(|round| {
                let floor = round.iter().find(|r| r.name == floor_name)?;
                let this = round.iter().find(|r| r.name == name)?;
                Some(this.report.rate() / floor.report.rate())
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        let ratio = ratios.get(ratios.len() / 2).copied();
        print_row_ratio(&format!("{name} (median)"), median, ratio);
    }
}

/// A server the bench measures.
enum Server {
    Baseline,
    Floor,
    /// `mutebridge run` of this binary, or of another build.
    Mutebridge(Option<PathBuf>),
}

impl Server {
    fn name(&self) -> String {
        match self {
            Server::Baseline => "baseline (bare 200)".into(),
            Server::Floor => "floor (hyper+rdkafka)".into(),
            Server::Mutebridge(None) => "mutebridge (this build)".into(),
            Server::Mutebridge(Some(bin)) => format!("mutebridge {}", bin.display()),
        }
    }
}

async fn baseline_server(listen: SocketAddr) -> anyhow::Result<()> {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/webhooks/easemob",
            post(|_body: Bytes| async { r#"{"status":"ok"}"# }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::ops::shutdown_signal())
        .await?;
    Ok(())
}

/// The floor of any HTTP-to-Kafka bridge: hyper reads the body, serde
/// parses it, rdkafka publishes it keyed by its `id` with the settings a
/// 200 needs (acks=all, idempotence, no linger), and the reply waits for
/// the ack. Nothing else: no verification, dedup, limits or timeouts.
async fn floor_server(listen: SocketAddr, brokers: &str) -> anyhow::Result<()> {
    use hyper::service::service_fn;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    const TOPIC: &str = "im.group-events";
    let embedded = match brokers {
        "embedded" => {
            let cluster = crate::kafka::EmbeddedKafka::start(1)?;
            cluster.create_topic(TOPIC, 12)?;
            Some(cluster)
        }
        _ => None,
    };
    let bootstrap = embedded
        .as_ref()
        .map_or(brokers, |c| c.bootstrap_servers())
        .to_owned();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("allow.auto.create.topics", "false")
        .create()?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let shutdown = crate::ops::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (io, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted?,
        };
        let producer = producer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let producer = producer.clone();
                async move {
                    if req.uri().path() == "/healthz" {
                        return Ok::<_, std::convert::Infallible>(floor_reply(StatusCode::OK));
                    }
                    let Ok(body) = req.into_body().collect().await else {
                        return Ok(floor_reply(StatusCode::BAD_REQUEST));
                    };
                    let body = body.to_bytes();
                    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
                        return Ok(floor_reply(StatusCode::BAD_REQUEST));
                    };
                    let key = value["id"].as_str().unwrap_or_default();
                    let record = FutureRecord::to(TOPIC).key(key).payload(&body[..]);
                    let status = match producer.send_result(record) {
                        Ok(delivery) => match delivery.await {
                            Ok(Ok(_)) => StatusCode::OK,
                            _ => StatusCode::SERVICE_UNAVAILABLE,
                        },
                        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
                    };
                    Ok(floor_reply(status))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await;
        });
    }
    // The producer before its cluster, so that it does not report the
    // cluster gone on the way out.
    drop(producer);
    drop(embedded);
    Ok(())
}

fn floor_reply(status: StatusCode) -> hyper::Response<Full<Bytes>> {
    let mut reply = hyper::Response::new(Full::new(Bytes::from_static(br#"{"status":"ok"}"#)));
    *reply.status_mut() = status;
    reply
}

/// Runs a `mutebridge bench` subcommand.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::Ingest(opts) => run_ingest_bench(opts).await?,
        BenchCommand::BaselineServer { listen } => baseline_server(listen).await?,
        BenchCommand::FloorServer { listen, brokers } => floor_server(listen, &brokers).await?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let r = LoadReport {
            ok: 100,
            failed: 0,
            elapsed: Duration::from_secs(1),
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
        };
        assert_eq!(r.rate(), 100.0);
        assert_eq!(r.percentile_ms(50.0), 51.0);
        assert_eq!(r.percentile_ms(99.0), 99.0);
        assert_eq!(r.percentile_ms(100.0), 100.0);
    }

    #[test]
    fn bench_callbacks_verify() {
        let body = callback("a#b", "s", 1, 7, 10);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let ts = v["timestamp"].as_i64().unwrap().to_string();
        assert_eq!(v["security"], sign(v["callId"].as_str().unwrap(), "s", &ts));
        assert_eq!(v["id"], "100000007");
    }
}
