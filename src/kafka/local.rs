//! A real Apache Kafka (KRaft) cluster on loopback, run from the broker's
//! jars on Maven Central: what `mutebridge kafka` starts for trying
//! mutebridge against a real broker, and what the real-Kafka test tier runs
//! on. The embedded cluster ([`super::embedded`]) is librdkafka's mock: it
//! ignores `acks`, never compacts and never moves a leader, so the promises
//! that depend on those are proven here.
//!
//! One node or three, each a combined broker + controller (static voters)
//! with its own ports, data and logs under the cluster's directory. Nodes
//! are found again by their pid files, and a pid counts as a node only if
//! its command line names that node's config, so stopping or killing never
//! touches a process this module did not start.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

/// The Apache Kafka release the local cluster runs, and the one the
/// compose stack and the Kubernetes notes name.
pub const KAFKA_VERSION: &str = "4.4.0";

/// The log4j-core that `kafka-server` 4.4.0 brings; the SLF4J binding the
/// release tarball adds must be of the same version. Kafka 4.4 still logs
/// through SLF4J 1.7, hence `log4j-slf4j-impl` (not the 2.x binding).
const LOG4J_VERSION: &str = "2.25.5";

/// Pinned, so Maven does not look up the newest plugin on every fetch.
const DEPENDENCY_PLUGIN: &str = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1";

/// The line a node logs once it serves clients (`KafkaBroker.STARTED_MESSAGE`).
const STARTED: &str = "Kafka Server started";

/// How long a node may take to start (three JVMs on two cores: ~5 s).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `stop` waits for a controlled shutdown before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// The Maven project that resolves the broker's runtime jars: the broker
/// itself and what the release tarball adds (the SLF4J binding), nothing
/// else.
fn pom() -> String {
    format!(
        r#"<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mutebridge.local</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"#
    )
}

/// Each node logs to `logs/server.log` in its directory (without a
/// binding and a config, Kafka logs nothing, not even that it started).
const LOG4J2_PROPERTIES: &str = "\
status = warn
appender.f.type = File
appender.f.name = F
appender.f.fileName = ${sys:kafka.logs.dir}/server.log
appender.f.layout.type = PatternLayout
appender.f.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.f.ref = F
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
";

/// Broker settings for a cluster on one small machine. Each differs from
/// Kafka's default for a reason given beside it; everything else is the
/// broker's default.
const SMALL_MACHINE: &[(&str, &str)] = &[
    // mutebridge creates its topics itself; a typo must fail, not create
    // a topic with the broker's defaults.
    ("auto.create.topics.enable", "false"),
    // Preferred leaders would move back every 300 s: leader changes in
    // the middle of a test that nobody caused.
    ("auto.leader.rebalance.enable", "false"),
    ("unclean.leader.election.enable", "false"),
    // Consumers join at once instead of after 3 s.
    ("group.initial.rebalance.delay.ms", "0"),
    // 50 partitions of each internal topic per node slow the first
    // FindCoordinator on two cores.
    ("offsets.topic.num.partitions", "3"),
    ("transaction.state.log.num.partitions", "3"),
    // The cleaner's dedupe buffer is allocated on the heap (128 MiB by
    // default); 2 MiB is what Kafka's own test kit uses.
    ("log.cleaner.dedupe.buffer.size", "2097152"),
    // Compaction and retention act within a second or two, not minutes.
    ("log.cleaner.backoff.ms", "500"),
    ("log.retention.check.interval.ms", "1000"),
    ("log.initial.task.delay.ms", "1000"),
    ("log.segment.bytes", "16777216"),
    ("num.network.threads", "2"),
    ("num.io.threads", "2"),
    ("background.threads", "2"),
    ("group.coordinator.threads", "1"),
    // The new consumer protocol (KIP-848): a member that stops
    // heartbeating is removed after 10 s instead of 45 s (the client
    // cannot set this itself under that protocol).
    ("group.consumer.min.session.timeout.ms", "6000"),
    ("group.consumer.session.timeout.ms", "10000"),
    ("group.consumer.min.heartbeat.interval.ms", "500"),
    ("group.consumer.heartbeat.interval.ms", "1000"),
];

/// JVM flags per node: a small heap and the serial collector, so three
/// nodes and the tests fit on two cores.
fn jvm_flags(heap_mb: u32) -> Vec<String> {
    vec![
        format!("-Xmx{heap_mb}m"),
        "-Xms64m".into(),
        "-XX:+UseSerialGC".into(),
        "-XX:+ExitOnOutOfMemoryError".into(),
        "-Djava.awt.headless=true".into(),
    ]
}

/// Where the jars are cached and clusters live.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `root`: usually `target/kafka` (`--dir`, `MUTEBRIDGE_KAFKA_DIR`).
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The broker's jars, once fetched.
    pub fn libs(&self) -> PathBuf {
        self.root.join(format!("libs-{KAFKA_VERSION}"))
    }

    /// Fetches the broker's jars from Maven Central into [`Home::libs`]
    /// (Maven keeps its own cache in `~/.m2`); a second call finds them
    /// there and needs no network. `say` hears what is happening.
    pub fn fetch(&self, say: &dyn Fn(&str)) -> anyhow::Result<PathBuf> {
        let libs = self.libs();
        let marker = libs.join("FETCHED");
        if marker.is_file() {
            return Ok(libs);
        }
        java()?;
        let mvn = maven()?;
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create {}", self.root.display()))?;
        let pom_file = self.root.join(format!("kafka-{KAFKA_VERSION}.pom.xml"));
        std::fs::write(&pom_file, pom())
            .with_context(|| format!("cannot write {}", pom_file.display()))?;
        let partial = self.root.join(format!("libs-{KAFKA_VERSION}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        say(&format!(
            "fetching Apache Kafka {KAFKA_VERSION} (org.apache.kafka:kafka_2.13) from Maven Central into {}",
            libs.display()
        ));
        let output = Command::new(&mvn)
            .args(["-B", "-q", "-f"])
            .arg(&pom_file)
            .arg(format!("{DEPENDENCY_PLUGIN}:copy-dependencies"))
            .arg("-DincludeScope=runtime")
            .arg(format!("-DoutputDirectory={}", partial.display()))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", mvn.display()))?;
        if !output.status.success() {
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            bail!(
                "Maven could not fetch org.apache.kafka:kafka_2.13:{KAFKA_VERSION} and its dependencies from Maven Central (is it reachable from here? a proxy or mirror goes in ~/.m2/settings.xml):\n{}",
                tail(&text, 20)
            );
        }
        for jar in [
            format!("kafka_2.13-{KAFKA_VERSION}.jar"),
            format!("kafka-server-{KAFKA_VERSION}.jar"),
            format!("log4j-slf4j-impl-{LOG4J_VERSION}.jar"),
            format!("log4j-core-{LOG4J_VERSION}.jar"),
        ] {
            if !partial.join(&jar).is_file() {
                bail!(
                    "Maven fetched Kafka's jars but {jar} is not among them in {}: the broker would not start or not log",
                    partial.display()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&libs);
        std::fs::rename(&partial, &libs)
            .with_context(|| format!("cannot move the jars to {}", libs.display()))?;
        std::fs::write(
            &marker,
            format!("org.apache.kafka:kafka_2.13:{KAFKA_VERSION}\n"),
        )?;
        Ok(libs)
    }
}

/// The `java` to run: `$JAVA_HOME/bin/java` or the one on `PATH`, at
/// least Java 17 (Kafka 4's minimum for brokers).
fn java() -> anyhow::Result<PathBuf> {
    let java = std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("java"));
    let install = "install OpenJDK 17 or newer (Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME";
    let output = Command::new(&java)
        .arg("-version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow!("cannot run {} ({e}): {install}", java.display()))?;
    let text = String::from_utf8_lossy(&output.stderr);
    let major = text
        .split('"')
        .nth(1)
        .and_then(|v| v.split(['.', '-', '+']).next())
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(m) if m >= 17 => Ok(java),
        Some(m) => bail!(
            "{} is Java {m}; Apache Kafka {KAFKA_VERSION} needs 17 or newer: {install}",
            java.display()
        ),
        None => bail!(
            "cannot tell the version of {} from `java -version`: {install}",
            java.display()
        ),
    }
}

/// `mvn`, or what to install.
fn maven() -> anyhow::Result<PathBuf> {
    let mvn = PathBuf::from("mvn");
    match Command::new(&mvn)
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(mvn),
        _ => bail!(
            "Maven (`mvn`) is needed once, to fetch Apache Kafka's jars from Maven Central: install it (Debian: apt-get install maven)"
        ),
    }
}

/// How a cluster is laid out: written once, when it is formatted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layout {
    pub kafka_version: String,
    pub cluster_id: String,
    pub heap_mb: u32,
    pub nodes: Vec<Node>,
}

/// One combined broker + controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub id: u32,
    /// Clients connect here.
    pub port: u16,
    pub controller_port: u16,
}

impl Node {
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// What a node's process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum NodeState {
    Running,
    /// Stopped by SIGSTOP (`pause`): alive but answering nothing.
    Paused,
    Stopped,
}

/// Whether nodes outlive the process that started them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Their own session: they run until `stop` (`mutebridge kafka start`).
    Detached,
    /// Killed when this process ends, however it ends (the test tier).
    ThisProcess,
}

/// A cluster's settings before it is formatted.
#[derive(Debug, Clone)]
pub struct Spec {
    /// 1 or 3.
    pub nodes: u32,
    /// The first node's client port; node N uses `base + 10 (N-1)` and the
    /// port after it for its controller. 0: free ports are picked.
    pub base_port: u16,
    pub heap_mb: u32,
    /// Broker settings over the defaults of [`SMALL_MACHINE`] and the
    /// replication settings for the node count.
    pub overrides: Vec<(String, String)>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            nodes: 3,
            base_port: 19092,
            heap_mb: 384,
            overrides: Vec::new(),
        }
    }
}

/// A cluster's directory, and the nodes this process started in it.
pub struct LocalKafka {
    dir: PathBuf,
    libs: PathBuf,
    layout: Layout,
    lifetime: Lifetime,
    /// Children started by this process (reaped when they end).
    children: Mutex<HashMap<u32, Child>>,
}

impl LocalKafka {
    /// Formats a new cluster in `dir` (which must not hold one).
    pub fn create(
        home: &Home,
        dir: &Path,
        spec: &Spec,
        lifetime: Lifetime,
    ) -> anyhow::Result<LocalKafka> {
        if !matches!(spec.nodes, 1 | 3) {
            bail!("a local cluster has 1 or 3 nodes, not {}", spec.nodes);
        }
        if dir.join("cluster.json").exists() {
            bail!(
                "{} already holds a cluster; start it again, or stop it with --delete first",
                dir.display()
            );
        }
        let libs = home.fetch(&|_| {})?;
        let java = java()?;
        let nodes = ports(spec)?;
        let layout = Layout {
            kafka_version: KAFKA_VERSION.into(),
            cluster_id: cluster_id(),
            heap_mb: spec.heap_mb,
            nodes,
        };
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(dir.join("log4j2.properties"), LOG4J2_PROPERTIES)?;
        for node in &layout.nodes {
            let nd = node_dir(dir, node.id);
            std::fs::create_dir_all(nd.join("data"))?;
            std::fs::create_dir_all(nd.join("logs"))?;
            std::fs::write(
                nd.join("server.properties"),
                server_properties(dir, node, &layout.nodes, &spec.overrides),
            )?;
        }
        // Formatting is one JVM per node; run them side by side.
        let formatted: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = layout
                .nodes
                .iter()
                .map(|node| {
                    let (java, libs, dir, id) = (&java, &libs, dir, &layout.cluster_id);
                    s.spawn(move || format_node(java, libs, dir, node.id, id))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("the format thread panicked")))
                })
                .collect()
        });
        formatted.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        std::fs::write(
            dir.join("cluster.json"),
            serde_json::to_string_pretty(&layout)?,
        )?;
        Ok(LocalKafka {
            dir: dir.to_owned(),
            libs,
            layout,
            lifetime,
            children: Mutex::new(HashMap::new()),
        })
    }

    /// The cluster formatted earlier in `dir`.
    pub fn open(home: &Home, dir: &Path, lifetime: Lifetime) -> anyhow::Result<LocalKafka> {
        let file = dir.join("cluster.json");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no cluster in {} (start one with `mutebridge kafka start`)",
                dir.display()
            )
        })?;
        let layout: Layout = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cluster layout", file.display()))?;
        if layout.kafka_version != KAFKA_VERSION {
            bail!(
                "the cluster in {} was made with Kafka {} and this mutebridge runs {KAFKA_VERSION}: stop it with --delete and start a new one",
                dir.display(),
                layout.kafka_version
            );
        }
        Ok(LocalKafka {
            dir: dir.to_owned(),
            libs: home.libs(),
            layout,
            lifetime,
            children: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn nodes(&self) -> &[Node] {
        &self.layout.nodes
    }

    /// `host:port,...` of every node.
    pub fn bootstrap_servers(&self) -> String {
        self.layout
            .nodes
            .iter()
            .map(Node::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node(&self, id: u32) -> anyhow::Result<&Node> {
        self.layout
            .nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| {
                anyhow!(
                    "no node {id}: the cluster in {} has nodes 1..={}",
                    self.dir.display(),
                    self.layout.nodes.len()
                )
            })
    }

    /// The pid of node `id`'s process if it is one this module started
    /// (its command line names the node's config), alive or paused.
    pub fn pid(&self, id: u32) -> Option<i32> {
        self.reap();
        let nd = node_dir(&self.dir, id);
        let pid: i32 = std::fs::read_to_string(nd.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let config = nd.join("server.properties");
        let config = config.to_string_lossy();
        let ours = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == config.as_bytes());
        ours.then_some(pid)
    }

    /// What node `id`'s process is doing.
    pub fn state(&self, id: u32) -> NodeState {
        let Some(pid) = self.pid(id) else {
            return NodeState::Stopped;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state letter follows the parenthesised command name.
        match stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
        {
            Some('T') => NodeState::Paused,
            Some('Z') | Some('X') | None => NodeState::Stopped,
            Some(_) => NodeState::Running,
        }
    }

    /// Starts every node that is not running and waits until all serve.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut started = Vec::new();
        for node in &self.layout.nodes {
            match self.state(node.id) {
                NodeState::Running => {}
                NodeState::Paused => self.resume(node.id)?,
                NodeState::Stopped => started.push((node.id, self.spawn(node.id)?)),
            }
        }
        for (id, from) in started {
            self.wait_started(id, from)?;
        }
        self.wait_brokers(self.layout.nodes.len(), START_TIMEOUT)
    }

    /// Starts node `id` again (after `kill` or `stop`) and waits until it
    /// serves; a running node is stopped first.
    pub fn restart(&self, id: u32) -> anyhow::Result<()> {
        self.node(id)?;
        if self.state(id) != NodeState::Stopped {
            self.stop_node(id)?;
        }
        let from = self.spawn(id)?;
        self.wait_started(id, from)
    }

    /// SIGKILL: the node crashes, as in a power cut.
    pub fn kill(&self, id: u32) -> anyhow::Result<()> {
        self.signal(id, libc::SIGKILL)?;
        self.wait_gone(id, Duration::from_secs(10))
    }

    /// SIGSTOP: the node hangs (a long GC pause, a frozen VM).
    pub fn pause(&self, id: u32) -> anyhow::Result<()> {
        self.signal(id, libc::SIGSTOP)
    }

    /// SIGCONT after [`LocalKafka::pause`].
    pub fn resume(&self, id: u32) -> anyhow::Result<()> {
        self.signal(id, libc::SIGCONT)
    }

    /// A controlled shutdown (SIGTERM), then SIGKILL after 20 s.
    pub fn stop_node(&self, id: u32) -> anyhow::Result<()> {
        self.node(id)?;
        if self.pid(id).is_none() {
            return Ok(());
        }
        // A paused node cannot act on SIGTERM until it runs again.
        let _ = self.signal(id, libc::SIGCONT);
        self.signal(id, libc::SIGTERM)?;
        if self.wait_gone(id, STOP_GRACE).is_err() {
            self.kill(id)?;
        }
        Ok(())
    }

    /// Stops every node (in reverse order, the controllers' quorum last).
    pub fn stop(&self) -> anyhow::Result<()> {
        // Stopped together: a lone node's shutdown waits for a quorum
        // that its stopped peers no longer form.
        for node in self.layout.nodes.iter().rev() {
            if self.pid(node.id).is_some() {
                let _ = self.signal(node.id, libc::SIGCONT);
                let _ = self.signal(node.id, libc::SIGTERM);
            }
        }
        for node in self.layout.nodes.iter().rev() {
            if self.wait_gone(node.id, STOP_GRACE).is_err() {
                self.kill(node.id)?;
            }
        }
        Ok(())
    }

    fn signal(&self, id: u32, signal: i32) -> anyhow::Result<()> {
        self.node(id)?;
        let pid = self
            .pid(id)
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        // SAFETY: kill(2) on a pid this module started (checked by `pid`).
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!(
                "cannot signal node {id} (pid {pid}): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    fn wait_gone(&self, id: u32, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.state(id) != NodeState::Stopped {
            if Instant::now() > deadline {
                bail!("node {id} did not stop within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Reaps children of this process that ended, so they do not linger
    /// as zombies (which still own their pid).
    fn reap(&self) {
        if let Ok(mut children) = self.children.lock() {
            children.retain(|_, c| matches!(c.try_wait(), Ok(None)));
        }
    }

    /// Launches node `id`; returns where its log was when it started (the
    /// "started" line to wait for comes after).
    fn spawn(&self, id: u32) -> anyhow::Result<u64> {
        let java = java()?;
        let nd = node_dir(&self.dir, id);
        let log = nd.join("logs/server.log");
        let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(nd.join("stdout"))?;
        let mut command = Command::new(&java);
        command
            .args(jvm_flags(self.layout.heap_mb))
            .arg(format!("-Dkafka.logs.dir={}", nd.join("logs").display()))
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", self.libs.display()))
            .arg("kafka.Kafka")
            .arg(nd.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = match self.lifetime {
            Lifetime::Detached => {
                use std::os::unix::process::CommandExt;
                // SAFETY: setsid(2) only, between fork and exec.
                unsafe {
                    command.pre_exec(|| {
                        libc::setsid();
                        Ok(())
                    });
                }
                command.spawn()?
            }
            Lifetime::ThisProcess => spawn_tied(command)?,
        };
        std::fs::write(nd.join("pid"), child.id().to_string())?;
        self.children
            .lock()
            .expect("children lock")
            .insert(id, child);
        Ok(from)
    }

    /// Waits until node `id` logs that it started (after `from` in its
    /// log), failing early, with its last lines, if it exits.
    fn wait_started(&self, id: u32, from: u64) -> anyhow::Result<()> {
        let nd = node_dir(&self.dir, id);
        let log = nd.join("logs/server.log");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if log_since(&log, from).contains(STARTED) {
                return Ok(());
            }
            if self.state(id) == NodeState::Stopped {
                bail!(
                    "node {id} exited while starting; its last lines ({}):\n{}",
                    nd.display(),
                    tail(
                        &(read_lossy(&nd.join("stdout")) + &log_since(&log, from)),
                        15
                    )
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node {id} did not start within {START_TIMEOUT:?}; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until a client sees `n` brokers (registered and unfenced:
    /// topics with that many replicas can be created).
    pub fn wait_brokers(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("allow.auto.create.topics", "false")
            .set("log_level", "3")
            .create()
            .context("cannot create a Kafka client")?;
        let deadline = Instant::now() + limit;
        let mut seen = 0;
        while Instant::now() < deadline {
            if let Ok(m) = consumer.fetch_metadata(None, Duration::from_secs(2)) {
                seen = m.brokers().len();
                if seen >= n {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("only {seen} of {n} brokers answered within {limit:?}")
    }
}

/// The directory of node `id`.
fn node_dir(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("node-{id}"))
}

/// The nodes' ports: from `spec.base_port`, or free ones.
fn ports(spec: &Spec) -> anyhow::Result<Vec<Node>> {
    (1..=spec.nodes)
        .map(|id| {
            let (port, controller_port) = if spec.base_port == 0 {
                (free_port()?, free_port()?)
            } else {
                let port = spec.base_port + 10 * (id as u16 - 1);
                (port, port + 1)
            };
            Ok(Node {
                id,
                port,
                controller_port,
            })
        })
        .collect()
}

/// A loopback port nobody listens on now.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A KRaft cluster ID: 16 random bytes, URL-safe base64 without padding,
/// as `kafka-storage random-uuid` makes them (one JVM start saved).
fn cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 16];
    bytes.fill_with(|| fastrand::u8(..));
    // Never the all-zero ID Kafka reserves.
    bytes[0] |= 1;
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = String::with_capacity(22);
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        count += 8;
        while count >= 6 {
            count -= 6;
            out.push(ALPHABET[((bits >> count) & 63) as usize] as char);
        }
    }
    if count > 0 {
        out.push(ALPHABET[((bits << (6 - count)) & 63) as usize] as char);
    }
    out
}

/// `server.properties` of `node` in a cluster of `all`.
fn server_properties(
    dir: &Path,
    node: &Node,
    all: &[Node],
    overrides: &[(String, String)],
) -> String {
    let voters: Vec<String> = all
        .iter()
        .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
        .collect();
    let replicas = all.len().min(3);
    // A record is acknowledged once on two replicas: one node may die.
    let min_isr = if replicas >= 3 { 2 } else { 1 };
    let mut settings: Vec<(String, String)> = vec![
        ("process.roles".into(), "broker,controller".into()),
        ("node.id".into(), node.id.to_string()),
        ("controller.quorum.voters".into(), voters.join(",")),
        (
            "listeners".into(),
            format!(
                "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                node.port, node.controller_port
            ),
        ),
        (
            "advertised.listeners".into(),
            format!("PLAINTEXT://127.0.0.1:{}", node.port),
        ),
        (
            "listener.security.protocol.map".into(),
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".into(),
        ),
        ("controller.listener.names".into(), "CONTROLLER".into()),
        ("inter.broker.listener.name".into(), "PLAINTEXT".into()),
        (
            "log.dirs".into(),
            node_dir(dir, node.id).join("data").display().to_string(),
        ),
        ("default.replication.factor".into(), replicas.to_string()),
        ("min.insync.replicas".into(), min_isr.to_string()),
        (
            "offsets.topic.replication.factor".into(),
            replicas.to_string(),
        ),
        (
            "transaction.state.log.replication.factor".into(),
            replicas.to_string(),
        ),
        ("transaction.state.log.min.isr".into(), min_isr.to_string()),
        (
            "share.coordinator.state.topic.replication.factor".into(),
            replicas.to_string(),
        ),
        (
            "share.coordinator.state.topic.min.isr".into(),
            min_isr.to_string(),
        ),
    ];
    settings.extend(
        SMALL_MACHINE
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    for (key, value) in overrides {
        match settings.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.clone(),
            None => settings.push((key.clone(), value.clone())),
        }
    }
    let mut text = format!(
        "# Written by mutebridge for node {} of a local Apache Kafka {KAFKA_VERSION} cluster.\n",
        node.id
    );
    for (k, v) in settings {
        let _ = writeln!(text, "{k}={v}");
    }
    text
}

/// `kafka-storage format` for one node (static voters: no `--standalone`).
fn format_node(
    java: &Path,
    libs: &Path,
    dir: &Path,
    id: u32,
    cluster_id: &str,
) -> anyhow::Result<()> {
    let config = node_dir(dir, id).join("server.properties");
    let output = Command::new(java)
        .args(["-Xmx256m", "-XX:+UseSerialGC", "-cp"])
        .arg(format!("{}/*", libs.display()))
        .arg("kafka.tools.StorageTool")
        .args(["format", "-t", cluster_id, "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .context("cannot run Kafka's storage tool")?;
    if !output.status.success() {
        bail!(
            "cannot format node {id} ({}):\n{}",
            config.display(),
            tail(
                &(String::from_utf8_lossy(&output.stdout).into_owned()
                    + &String::from_utf8_lossy(&output.stderr)),
                15
            )
        );
    }
    Ok(())
}

/// Spawns `command` from one long-lived thread, its children set to be
/// killed when that thread ends (`PR_SET_PDEATHSIG` follows the thread
/// that forked, not the process): when this process ends, however it
/// ends, no node is left behind.
fn spawn_tied(command: Command) -> anyhow::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("kafka-node-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    use std::os::unix::process::CommandExt;
                    // SAFETY: prctl(2) only, between fork and exec.
                    unsafe {
                        command.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static: this loop never ends.
                std::thread::park();
            })
            .expect("cannot start the node spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .expect("spawner lock")
        .send((command, tx))
        .map_err(|_| anyhow!("the node spawner thread has stopped"))?;
    rx.recv()
        .map_err(|_| anyhow!("the node spawner thread has stopped"))?
        .context("cannot start java")
}

/// What was appended to `log` after byte `from`.
fn log_since(log: &Path, from: u64) -> String {
    let Ok(mut file) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // A log shorter than before was replaced: read it all.
    let start = if len < from { 0 } else { from };
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        for _ in 0..100 {
            let id = cluster_id();
            assert_eq!(id.len(), 22, "{id}");
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }

    #[test]
    fn three_nodes_vote_together_and_replicate_three_times() {
        let spec = Spec::default();
        let nodes = ports(&spec).unwrap();
        assert_eq!(
            nodes.iter().map(|n| n.port).collect::<Vec<_>>(),
            [19092, 19102, 19112]
        );
        let text = server_properties(
            Path::new("/tmp/c"),
            &nodes[1],
            &nodes,
            &[("min.insync.replicas".into(), "3".into())],
        );
        assert!(text.contains(
            "controller.quorum.voters=1@127.0.0.1:19093,2@127.0.0.1:19103,3@127.0.0.1:19113\n"
        ));
        assert!(text.contains("node.id=2\n"));
        assert!(text.contains("default.replication.factor=3\n"));
        assert!(text.contains("offsets.topic.replication.factor=3\n"));
        assert!(text.contains("min.insync.replicas=3\n"), "overridden");
        assert!(!text.contains("min.insync.replicas=2\n"));
        assert!(text.contains("log.dirs=/tmp/c/node-2/data\n"));
        assert!(text.contains("auto.create.topics.enable=false\n"));
    }

    #[test]
    fn the_pom_pins_the_broker_and_the_binding() {
        let pom = pom();
        assert!(pom.contains("<artifactId>kafka_2.13</artifactId><version>4.4.0</version>"));
        assert!(pom.contains("<artifactId>log4j-slf4j-impl</artifactId><version>2.25.5</version>"));
    }
}
