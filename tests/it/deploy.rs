//! deploy/ checked with the real tools: promtool, a real Prometheus server
//! scraping a running mutebridge, kubernetes-validate, docker-compose; and
//! the settings that must agree across files (grace periods vs drain times,
//! worker replicas vs partitions, scrape targets vs services).
//!
//! The tools come from Debian (`prometheus`, `docker-compose`) and PyPI
//! (`kubernetes-validate`); `.ci/run` installs them. A missing tool fails the
//! test with the install command, unless MUTEBRIDGE_SKIP_DEPLOY_TOOLS=1 is
//! set, which skips the tests that need it (and says so).

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mutebridge::Config;
use serde_json::Value;
use serde_norway::Value as Yaml;

const BIN: &str = env!("CARGO_BIN_EXE_mutebridge");

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// The path of an external tool, or `None` when skipping was asked for.
fn tool(name: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var("MUTEBRIDGE_SKIP_DEPLOY_TOOLS").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: {name} is not installed ({install})");
            None
        }
        None => panic!(
            "{name} is not installed: {install} (or set MUTEBRIDGE_SKIP_DEPLOY_TOOLS=1 to skip these checks)"
        ),
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("tool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn yaml_docs(text: &str) -> Vec<Yaml> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|d| Yaml::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child on drop so a failing test leaves no server behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------ PromQL names

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// The metric names a PromQL expression selects: identifiers outside label
/// matchers, label lists, strings and ranges that are neither functions,
/// aggregations nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let mut out = BTreeSet::new();
    let (mut i, mut braces, mut in_label_list) = (0, 0, false);
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
        } else if c == b'[' {
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
        } else if c == b'{' {
            braces += 1;
        } else if c == b'}' {
            braces -= 1;
        } else if c == b')' && in_label_list {
            in_label_list = false;
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            continue;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start().chars().next();
            if braces > 0 || in_label_list {
                continue;
            }
            if LABEL_LISTS.contains(&word) {
                in_label_list = next == Some('(');
            } else if !AGGREGATIONS.contains(&word)
                && !KEYWORDS.contains(&word)
                && next != Some('(')
            {
                out.insert(word.to_owned());
            }
            continue;
        }
        i += 1;
    }
    out
}

#[test]
fn promql_metric_name_extraction() {
    let names = metric_names(
        r#"sum by (target, le) (rate(mutebridge_a_bucket{job=~"x.*", le!="1"}[$__rate_interval])) / on (target) group_left max(b) > 0.2 and c offset 5m unless up == 1e3"#,
    );
    let want: BTreeSet<String> = ["mutebridge_a_bucket", "b", "c", "up"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
}

// ------------------------------------------------------------ live scrape

/// Starts `mutebridge run` (embedded Kafka, a `log` target so the worker's
/// labelled metrics exist) and waits for /healthz.
/// Starts `mutebridge run` as deployed: callbacks on one port, `/metrics`
/// on the `[ops] listen` port (returned).
fn start_mutebridge(dir: &Path) -> (Server, u16) {
    let (port, ops) = (free_port(), free_port());
    let config = dir.join("mutebridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[http]
listen = "127.0.0.1:{port}"

[ops]
listen = "127.0.0.1:{ops}"

[[easemob.apps]]
appkey = "deploy#test"
secrets = ["deploy-test-secret"]

[targets.preview]
kind = "log"

# Never called (its rule matches no group that is sent); it gives the
# rate-limit and circuit-breaker series.
[targets.zego]
kind = "zego"
base_url = "http://127.0.0.1:9"
app_id = 1
server_secret = "deploy-test"
from_user_id = "bot"

[[policy.rules]]
name = "everything to the log"
then = [{{ target = "preview" }}]

[[policy.rules]]
name = "no group"
when = {{ groups = ["never-*"], kinds = ["mute_all"] }}
then = [{{ target = "zego", group = "{{group_id}}" }}]
"#
        ),
    )
    .unwrap();
    let server = Server(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Command::new(BIN)
        .args(["health", "--url", &url])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "mutebridge never became healthy");
        std::thread::sleep(Duration::from_millis(200));
    }
    // One event, so that the worker has offsets to report lag against.
    let sent = Command::new(BIN)
        .args(["send", "--url"])
        .arg(format!("http://127.0.0.1:{port}/webhooks/easemob"))
        .args(["--appkey", "deploy#test", "--secret", "deploy-test-secret"])
        .args(["--example", "mute-all"])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stdout)
    );
    // The port Easemob reaches does not serve /metrics.
    let (status, _) = crate::support::http_get(([127, 0, 0, 1], port).into(), "/metrics").unwrap();
    assert_eq!(status, 404);
    (server, ops)
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let r = client.get(url).send().await.expect("request");
    let status = r.status();
    let body: Value = r.json().await.expect("JSON reply");
    assert!(status.is_success(), "{url}: {status} {body}");
    body
}

/// The dashboard's PromQL expressions, with Grafana's interval variables
/// replaced so that Prometheus can run them.
fn dashboard_exprs() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&read("grafana/mutebridge.json")).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            out.push((
                panel["title"].as_str().unwrap().to_owned(),
                expr.replace("$__rate_interval", "1m")
                    .replace("$__range", "1h"),
            ));
        }
    }
    out
}

/// The full path users rely on: a real Prometheus scrapes a running
/// mutebridge, loads deploy/prometheus/alerts.yml and evaluates every rule;
/// every alert and dashboard expression runs and names only metrics the
/// binary exports; `promtool check metrics` accepts the live output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_mutebridge_and_every_alert_and_panel_uses_real_metrics() {
    let Some(prometheus) = tool("prometheus", "apt-get install prometheus") else {
        return;
    };
    let Some(promtool) = tool("promtool", "apt-get install prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, port) = start_mutebridge(dir.path());
    let client = reqwest::Client::new();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");

    // The lag gauge appears once the worker has partitions and librdkafka
    // has sent its first statistics (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(40);
    let live = loop {
        let text = client
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("mutebridge_consumer_lag{") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no mutebridge_consumer_lag in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), live.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus, scraping every second, with the shipped alerts.
    let prom_port = free_port();
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: mutebridge-ingest\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n",
            deploy("prometheus/alerts.yml").display()
        ),
    )
    .unwrap();
    let _prom = Server(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api = format!("http://127.0.0.1:{prom_port}/api/v1");

    // Wait for a scrape that carries a mutebridge metric.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client
            .get(format!("{api}/query"))
            .query(&[("query", "mutebridge_build_info")])
            .send()
            .await
        {
            if let Ok(v) = r.json::<Value>().await {
                let result = &v["data"]["result"];
                if result.as_array().is_some_and(|r| !r.is_empty()) {
                    assert_eq!(result[0]["value"][1], "1", "{v}");
                    assert_eq!(result[0]["metric"]["job"], "mutebridge-ingest");
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped mutebridge"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let targets = get_json(&client, &format!("{api}/targets")).await;
    assert_eq!(
        targets["data"]["activeTargets"][0]["health"], "up",
        "{targets}"
    );

    let scraped: BTreeSet<String> = get_json(&client, &format!("{api}/label/__name__/values"))
        .await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    // Ours, and the standard process collector's (the fd alert reads them).
    let exported = |name: &str| {
        ((name.starts_with("mutebridge_") || name.starts_with("process_"))
            && scraped.contains(name))
            || name == "up"
    };

    // Every rule in alerts.yml loaded and evaluated without error.
    let alert_count = read("prometheus/alerts.yml")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(alert_count >= 8, "{alert_count} alerts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let v = get_json(&client, &format!("{api}/rules")).await;
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        if rules.len() == alert_count && rules.iter().all(|r| r["health"] == "ok") {
            break rules;
        }
        assert!(Instant::now() < deadline, "rules not all healthy: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for rule in &rules {
        let query = rule["query"].as_str().unwrap();
        let names = metric_names(query);
        assert!(!names.is_empty(), "{query}");
        for name in names {
            assert!(
                exported(&name),
                "alert {}: {name} is not a metric mutebridge exports",
                rule["name"]
            );
        }
    }

    // Every dashboard expression runs and names only exported metrics.
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 15, "{} expressions", exprs.len());
    for (panel, expr) in exprs {
        for name in metric_names(&expr) {
            assert!(
                exported(&name),
                "panel {panel:?}: {name} is not a metric mutebridge exports"
            );
        }
        let v = get_json(
            &client,
            &format!(
                "{api}/query?query={}",
                form_urlencoded::byte_serialize(expr.as_bytes()).collect::<String>()
            ),
        )
        .await;
        assert_eq!(v["status"], "success", "panel {panel:?}: {expr}: {v}");
    }

    // The container health check: the same command, against the live
    // server and against a closed port.
    let health = |url: String| {
        Command::new(BIN)
            .args(["health", "--url", &url, "--timeout", "2"])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(health(format!("http://127.0.0.1:{port}/healthz")));
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    assert!(!health(format!("http://127.0.0.1:{port}/healthz")));
}

// ------------------------------------------------------------ static checks

#[test]
fn promtool_accepts_the_prometheus_config_and_rules() {
    let Some(promtool) = tool("promtool", "apt-get install prometheus") else {
        return;
    };
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "config"])
        .arg(deploy("prometheus/prometheus.yml")));
    assert!(ok, "{out}");
    assert!(out.contains("1 rule files found"), "{out}");
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(deploy("prometheus/alerts.yml")));
    assert!(ok, "{out}");
}

fn k8s_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// All Kubernetes objects in deploy/k8s, by kind and name.
fn k8s_objects() -> HashMap<(String, String), Yaml> {
    let mut out = HashMap::new();
    for f in k8s_files() {
        for doc in yaml_docs(&std::fs::read_to_string(&f).unwrap()) {
            let kind = doc["kind"].as_str().unwrap().to_owned();
            let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
            out.insert((kind, name), doc);
        }
    }
    out
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let Some(validator) = tool("kubernetes-validate", "pip install kubernetes-validate") else {
        return;
    };
    // 1.30: the first version with the preStop `sleep` action on by default.
    let (ok, out) = run(Command::new(&validator)
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .args(k8s_files()));
    assert!(ok, "{out}");
    // Every built-in object was checked against a schema (only the
    // operator's ServiceMonitor has none there; it is checked below).
    for line in out.lines().filter(|l| l.starts_with("WARN")) {
        assert!(line.contains("ServiceMonitor"), "{line}");
    }
    assert!(out.matches(" passed for resource ").count() >= 8, "{out}");
}

/// Replaces every `env:NAME` secret with a placeholder.
fn parse_config(text: &str, file: &str) -> Config {
    Config::parse_with_env(text, Path::new(file), &|_| {
        Some("placeholder-secret-value".into())
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn seconds(v: &Yaml) -> u64 {
    v.as_u64().expect("a number of seconds")
}

#[test]
fn kubernetes_settings_agree_with_the_config() {
    let objects = k8s_objects();
    let get = |kind: &str, name: &str| {
        objects
            .get(&(kind.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
    };
    let toml = get("ConfigMap", "mutebridge-config")["data"]["mutebridge.toml"]
        .as_str()
        .unwrap();
    let config = parse_config(toml, "deploy/k8s/configmap.yaml");
    config.require_ingest().unwrap();

    // Each role starts with only the secrets of its own Secret.
    let only = |names: &'static [&'static str]| {
        move |name: &str| {
            names
                .contains(&name)
                .then(|| "placeholder-secret-value".to_owned())
        }
    };
    for (role, secrets, names) in [
        (
            "ingest",
            mutebridge::config::Secrets::INGEST,
            INGEST_SECRETS,
        ),
        (
            "worker",
            mutebridge::config::Secrets::WORKER,
            WORKER_SECRETS,
        ),
        (
            "reconcile",
            mutebridge::config::Secrets::RECONCILE,
            RECONCILE_SECRETS,
        ),
    ] {
        Config::parse_with(
            toml,
            Path::new("deploy/k8s/configmap.yaml"),
            &only(names),
            secrets,
        )
        .unwrap_or_else(|e| panic!("{role} with only {names:?}: {e}"));
    }
    let comment = read("k8s/configmap.yaml");
    for (secret, names) in [
        ("mutebridge-ingest-secrets", INGEST_SECRETS),
        ("mutebridge-worker-secrets", WORKER_SECRETS),
        ("mutebridge-reconcile-secrets", RECONCILE_SECRETS),
    ] {
        let command = comment
            .split(&format!("create secret generic {secret}"))
            .nth(1)
            .unwrap_or_else(|| panic!("no command for {secret}"));
        let command = command.split("create secret").next().unwrap();
        for name in names {
            assert!(command.contains(&format!("{name}=")), "{secret}: {name}");
        }
    }
    let ops_port = config.ops.listen.expect("[ops] listen is set").port() as u64;
    assert_ne!(ops_port, config.http.listen.port() as u64);

    let ingest = get("Deployment", "mutebridge-ingest");
    let worker = get("Deployment", "mutebridge-worker");
    let reconcile = get("Deployment", "mutebridge-reconcile");
    // One reconciler, never two at once (each would read every group).
    assert_eq!(reconcile["spec"]["replicas"].as_i64(), Some(1));
    assert_eq!(
        reconcile["spec"]["strategy"]["type"],
        Yaml::from("Recreate")
    );
    assert!(config.reconcile.interval_seconds > 0);

    // The topics are mutebridge's own: a Job runs `mutebridge topics
    // create` with the same config, and the roles only check them.
    let topics = get("Job", "mutebridge-topics");
    let args: Vec<&str> = topics["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "topics",
            "create",
            "--config",
            "/etc/mutebridge/mutebridge.toml"
        ]
    );
    assert!(!config.kafka.create_topics);
    assert_eq!(config.kafka.min_insync_replicas, Some(2));

    // Workers beyond the partition count would sit idle.
    let replicas = worker["spec"]["replicas"].as_i64().unwrap();
    assert!(replicas <= i64::from(config.kafka.partitions));
    // Limits are the providers' own, for the whole group: nothing is
    // divided by the replica count by hand (the shares follow the
    // assignment).
    for (name, documented) in [
        ("zego", "rate_per_second = 20"),
        ("rc", "rate_per_second = 100"),
    ] {
        assert!(config.targets[name].rate_limit().is_some(), "{name}");
        let table = toml.split(&format!("[targets.{name}]")).nth(1).unwrap();
        let table = table.split("\n\n").next().unwrap();
        assert!(table.contains(documented), "{name}: {table}");
    }

    // Termination grace longer than the drain.
    let ingest_pod = &ingest["spec"]["template"]["spec"];
    let pre_stop =
        seconds(&ingest_pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]);
    assert!(
        seconds(&ingest_pod["terminationGracePeriodSeconds"])
            > pre_stop + 2 * config.http.shutdown_grace_seconds
    );
    let worker_pod = &worker["spec"]["template"]["spec"];
    assert!(
        seconds(&worker_pod["terminationGracePeriodSeconds"])
            > config.worker.shutdown_grace_seconds + 5
    );

    for (deployment, role) in [
        (ingest, "ingest"),
        (worker, "worker"),
        (reconcile, "reconcile"),
    ] {
        let pod = &deployment["spec"]["template"];
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["args"][0], Yaml::from(role));
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"],
            Yaml::from("/healthz")
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"],
            Yaml::from("/readyz")
        );
        assert_eq!(
            c["envFrom"][0]["secretRef"]["name"],
            Yaml::from(format!("mutebridge-{role}-secrets"))
        );
        assert!(c["resources"]["requests"]["cpu"].is_string());
        let ports: HashMap<String, u64> = c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_owned(),
                    p["containerPort"].as_u64().unwrap(),
                )
            })
            .collect();
        // The ingest has the callback port and the ops port; a worker and
        // the reconciler only the ops port (their only listener).
        assert_eq!(ports["ops"], ops_port, "{role}");
        let probed = if role == "ingest" {
            assert_eq!(ports["http"], config.http.listen.port() as u64);
            "http"
        } else {
            assert_eq!(ports.len(), 1, "{role}: {ports:?}");
            "ops"
        };
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["httpGet"]["port"], Yaml::from(probed), "{role}");
        }
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], Yaml::from("true"));
        assert_eq!(
            annotations["prometheus.io/port"],
            Yaml::from(ops_port.to_string())
        );
        assert_eq!(
            pod["spec"]["securityContext"]["runAsNonRoot"],
            Yaml::from(true)
        );
    }

    // The ServiceMonitor (no schema in kubernetes-validate) selects the
    // ops Services of both roles by their labels, on their ops port, and
    // not the public ingest Service, which has no ops port.
    let monitor = get("ServiceMonitor", "mutebridge");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap();
    let port_name = &monitor["spec"]["endpoints"][0]["port"];
    assert_eq!(port_name, &Yaml::from("ops"));
    let selected: BTreeSet<&str> = objects
        .iter()
        .filter(|((kind, _), s)| {
            kind == "Service"
                && selector
                    .iter()
                    .all(|(k, v)| &s["metadata"]["labels"][k] == v)
        })
        .map(|((_, name), _)| name.as_str())
        .collect();
    assert_eq!(
        selected,
        BTreeSet::from([
            "mutebridge-ingest-ops",
            "mutebridge-reconcile",
            "mutebridge-worker"
        ])
    );
    for service in &selected {
        let s = get("Service", service);
        assert!(
            s["spec"]["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| &p["name"] == port_name && p["targetPort"] == "ops"),
            "{service}"
        );
    }
    let public = get("Service", "mutebridge-ingest");
    for p in public["spec"]["ports"].as_sequence().unwrap() {
        assert_eq!(
            p["targetPort"],
            Yaml::from("http"),
            "the public Service: {p:?}"
        );
    }
}

/// The secrets each role's Kubernetes Secret (and compose env file) holds.
const INGEST_SECRETS: &[&str] = &["EASEMOB_RULE_SECRET"];
const WORKER_SECRETS: &[&str] = &["ZEGO_SERVER_SECRET", "RONGCLOUD_APP_SECRET"];
const RECONCILE_SECRETS: &[&str] = &["EASEMOB_CLIENT_ID", "EASEMOB_CLIENT_SECRET"];

/// An env file of deploy/compose as a map.
fn env_file(path: &str) -> HashMap<String, String> {
    read(path)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn compose_file_parses_and_agrees_with_its_config() {
    use mutebridge::config::Secrets;
    let mut compose: Yaml = serde_norway::from_str(&read("docker-compose.yml")).unwrap();
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let text = read("compose/mutebridge.toml");
    let file = Path::new("deploy/compose/mutebridge.toml");

    // Each role's env file holds what that role reads, and no more.
    let ingest_env = env_file("compose/ingest.env");
    let worker_env = env_file("compose/worker.env");
    for name in INGEST_SECRETS {
        assert!(
            ingest_env.contains_key(*name) && !worker_env.contains_key(*name),
            "{name}"
        );
    }
    for name in WORKER_SECRETS {
        assert!(
            worker_env.contains_key(*name) && !ingest_env.contains_key(*name),
            "{name}"
        );
    }
    let parse = |text: &str, env: &HashMap<String, String>, secrets| {
        Config::parse_with(text, file, &|name| env.get(name).cloned(), secrets)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let config = parse(&text, &ingest_env, Secrets::INGEST);
    config.require_ingest().unwrap();
    parse(&text, &worker_env, Secrets::WORKER);
    assert_eq!(config.kafka.brokers, "kafka:9092");
    assert!(services.contains_key("kafka"));
    let (port, ops_port) = (
        config.http.listen.port(),
        config.ops.listen.expect("[ops] listen is set").port(),
    );

    // Prometheus scrapes every mutebridge service on the ops port; only
    // the callback port is published to the host.
    let prom: Yaml = serde_norway::from_str(&read("prometheus/prometheus.yml")).unwrap();
    let scraped: BTreeSet<String> = prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| {
            job["static_configs"][0]["targets"]
                .as_sequence()
                .unwrap()
                .clone()
        })
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let ours: Vec<(&str, &Yaml)> = services
        .iter()
        .filter(|(name, s)| s["image"] == "mutebridge:local" && *name != "kafka-init")
        .map(|(name, s)| (name.as_str().unwrap(), s))
        .collect();
    let mutebridge: BTreeSet<String> = ours
        .iter()
        .map(|(name, _)| format!("{name}:{ops_port}"))
        .collect();
    assert_eq!(mutebridge.len(), 4, "two ingest replicas and two workers");
    assert_eq!(scraped, mutebridge);
    for (name, service) in &ours {
        let role = if name.starts_with("ingest") {
            "ingest"
        } else {
            "worker"
        };
        assert_eq!(
            service["env_file"],
            Yaml::from(format!("compose/{role}.env")),
            "{name}"
        );
        let published: Vec<String> = service["ports"]
            .as_sequence()
            .map(|p| p.iter().map(|p| p.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        if role == "ingest" {
            assert_eq!(published.len(), 1, "{name}: {published:?}");
            assert!(
                published[0].ends_with(&format!(":{port}")),
                "{name}: {published:?}"
            );
        } else {
            assert!(published.is_empty(), "{name}: {published:?}");
            // The image's health check asks the callback port, which a
            // worker does not have: the worker's own asks the ops port.
            let check = service["healthcheck"]["test"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                check.contains(&format!(":{ops_port}/healthz")),
                "{name}: {check}"
            );
        }
    }

    // Topics are made by mutebridge itself, from the same config, on the
    // Kafka release the real-Kafka tests run; the roles wait for them.
    let init = &services["kafka-init"];
    assert_eq!(init["image"], "mutebridge:local");
    let command: Vec<&str> = init["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        command,
        [
            "topics",
            "create",
            "--config",
            "/etc/mutebridge/mutebridge.toml"
        ]
    );
    assert!(!config.kafka.create_topics);
    assert_eq!(
        services["kafka"]["image"],
        Yaml::from(format!(
            "apache/kafka:{}",
            mutebridge::local_kafka::KAFKA_VERSION
        ))
    );

    // The example block for real providers, uncommented, is valid: the
    // workers keep its limits in the stack's Redis, which both reach, and
    // the ingest replicas start without REDIS_URL or any provider secret.
    let example = text
        .split_once("# An example policy for real providers.")
        .unwrap()
        .1;
    let setting =
        |l: &str| l.starts_with('[') || l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' '));
    let uncommented: String = example
        .lines()
        .filter_map(|l| l.strip_prefix("# ").filter(|l| setting(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    let real_text = format!("{text}\n{uncommented}");
    let redis_url = services["worker-1"]["environment"]["REDIS_URL"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut with_redis = worker_env.clone();
    with_redis.insert("REDIS_URL".into(), redis_url.clone());
    let real = parse(&real_text, &with_redis, Secrets::WORKER);
    for name in ["zego", "rc"] {
        let limit = real.targets[name].rate_limit().unwrap();
        assert_eq!(limit.mode, mutebridge::limit::Mode::Redis, "{name}");
        assert_eq!(limit.url.as_ref().unwrap().expose(), redis_url);
    }
    parse(&real_text, &ingest_env, Secrets::INGEST)
        .require_ingest()
        .unwrap();
    for ingest in ["ingest-1", "ingest-2"] {
        assert!(
            services[ingest]["environment"]["REDIS_URL"].is_null(),
            "{ingest}"
        );
    }
    assert!(redis_url.starts_with("redis://redis:"));
    assert!(services.contains_key("redis"));
    for worker in ["worker-1", "worker-2"] {
        assert_eq!(
            services[worker]["environment"]["REDIS_URL"],
            redis_url.as_str()
        );
        assert_eq!(
            services[worker]["depends_on"]["redis"]["condition"], "service_healthy",
            "{worker}"
        );
        assert!(services[worker]["depends_on"]
            .as_mapping()
            .unwrap()
            .contains_key("kafka-init"));
    }

    let Some(compose_tool) = tool("docker-compose", "apt-get install docker-compose") else {
        return;
    };
    let (ok, out) = run(Command::new(compose_tool)
        .arg("--file")
        .arg(deploy("docker-compose.yml"))
        .args(["config", "--quiet"]));
    assert!(ok, "{out}");
}

#[test]
fn the_docker_build_context_leaves_out_target_and_git() {
    // BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile, with
    // patterns relative to the context (the repository root).
    let patterns: Vec<String> = read("Dockerfile.dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    for excluded in ["target", ".git"] {
        assert!(
            patterns.iter().any(|p| p == excluded),
            "{excluded} is not excluded: {patterns:?}"
        );
        assert!(
            !patterns
                .iter()
                .any(|p| p.starts_with('!') && p.contains(excluded)),
            "{excluded} is included again: {patterns:?}"
        );
    }
    // What the Dockerfile copies is not excluded.
    let dockerfile = read("Dockerfile");
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        for source in line
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            let top = source.split('/').next().unwrap();
            assert!(
                !patterns.iter().any(|p| p == top || p == *source),
                "{source} (COPY) is excluded: {patterns:?}"
            );
        }
    }
}

#[test]
fn dockerfile_runs_non_root_with_a_health_check() {
    let text = read("Dockerfile");
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(froms >= 2, "multi-stage");
    let user = instructions
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "{user}"
    );
    assert!(text.contains(r#"CMD ["mutebridge", "health""#));
    assert!(text.contains(r#"ENTRYPOINT ["mutebridge"]"#));
    assert!(text.contains("--release --locked"));
}
