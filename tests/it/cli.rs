//! The `mutebridge` binary as a user runs it: the zero-config first run from
//! the README, `send`, `schema`, `check-config` and `policy explain`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{http_get, spawn_role, wait_for_200, Killed};

const BIN: &str = env!("CARGO_BIN_EXE_mutebridge");

#[test]
fn schema_command_matches_the_checked_in_copy() {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let checked_in = include_str!("../../deploy/schema/event.v1.json");
    assert_eq!(
        printed, checked_in,
        "the event schema changed: run `mutebridge schema > deploy/schema/event.v1.json` and bump the schema version if it is not backward compatible"
    );
    assert_eq!(printed, mutebridge::event::json_schema());
}

#[test]
fn state_schema_command_matches_the_checked_in_copy() {
    let out = Command::new(BIN)
        .args(["schema", "state"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let checked_in = include_str!("../../deploy/schema/state.v1.json");
    assert_eq!(
        printed, checked_in,
        "the state schema changed: run `mutebridge schema state > deploy/schema/state.v1.json` and bump the schema version if it is not backward compatible"
    );
    // A state as the worker writes it validates against it.
    let schema: serde_json::Value = serde_json::from_str(checked_in).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let state = serde_json::json!({
        "schema": "mutebridge.state/v1",
        "appkey": "org#app",
        "scope": "group",
        "group_id": "g1",
        "mute_all": {"muted": false, "at_ms": 2, "event_id": "e2"},
        "members": {"u1": {"muted": true, "until_ms": null, "at_ms": 1, "event_id": "e1"}},
        "updated_at_ms": 3,
    });
    assert!(validator.is_valid(&state));
    let mut missing = state.clone();
    missing["members"]["u1"]
        .as_object_mut()
        .unwrap()
        .remove("until_ms");
    assert!(!validator.is_valid(&missing), "until_ms is always written");
}

#[test]
fn applied_schema_command_matches_the_checked_in_copy() {
    let out = Command::new(BIN)
        .args(["schema", "applied"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let checked_in = include_str!("../../deploy/schema/applied.v1.json");
    assert_eq!(
        printed, checked_in,
        "the applied schema changed: run `mutebridge schema applied > deploy/schema/applied.v1.json` and bump the schema version if it is not backward compatible"
    );
    // A record as a target writes it validates against it.
    let schema: serde_json::Value = serde_json::from_str(checked_in).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let dim = |applied: serde_json::Value, lapses: serde_json::Value| {
        serde_json::json!({"muted": true, "until_ms": null, "at_ms": 1, "event_id": "e1",
            "applied_at_ms": applied, "lapses_at_ms": lapses})
    };
    let record = serde_json::json!({
        "schema": "mutebridge.applied/v1",
        "target": "rc",
        "appkey": "org#app",
        "scope": "chatroom",
        "group_id": "r1",
        "mute_all": null,
        "members": {"u1": dim(serde_json::json!(5), serde_json::json!(2_592_005_000i64))},
        "updated_at_ms": 6,
    });
    assert!(validator.is_valid(&record));
    let mut missing = record.clone();
    missing["members"]["u1"]
        .as_object_mut()
        .unwrap()
        .remove("lapses_at_ms");
    assert!(
        !validator.is_valid(&missing),
        "lapses_at_ms is always written"
    );
}

fn check_config(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutebridge.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .env("SECRET_FROM_ENV", "x")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/config/mutebridge.toml");

/// The `env:NAME` secrets the documented example refers to, each with a
/// value of its own.
fn example_secrets() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(EXAMPLE_CONFIG).unwrap();
    let mut names: Vec<String> = text
        .split("\"env:")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let value = format!("value-of-{n}");
            (n, value)
        })
        .collect()
}

#[test]
fn check_config_accepts_the_documented_example() {
    let example = std::fs::read_to_string(EXAMPLE_CONFIG).unwrap();
    let secrets = example_secrets();
    assert!(secrets.len() >= 4, "{secrets:?}");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(EXAMPLE_CONFIG)
        .envs(secrets.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("OK") && stdout.contains("5 target(s), 6 rule(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("zego: 20/s for the whole worker group, 19.00/s used (headroom 0.95); each worker replica takes its partition share"),
        "{stdout}"
    );

    // Without the environment the same file is valid: a deployment's CI
    // checks it without its secrets.
    let (ok, stdout, stderr) = check_config(&example);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("secrets not read"), "{stdout}");

    // With --resolve ROLE, the secrets that role reads must be set, and
    // only those.
    let resolve = |role: &str, env: &[(String, String)]| {
        let out = Command::new(BIN)
            .args(["check-config", "--resolve", role])
            .arg(EXAMPLE_CONFIG)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let only = |names: &[&str]| -> Vec<(String, String)> {
        secrets
            .iter()
            .filter(|(k, _)| names.contains(&k.as_str()))
            .cloned()
            .collect()
    };
    let (ok, stderr) = resolve("ingest", &only(&["EASEMOB_RULE2_SECRET"]));
    assert!(ok, "{stderr}");
    let (ok, stderr) = resolve("ingest", &[]);
    assert!(!ok && stderr.contains("EASEMOB_RULE2_SECRET"), "{stderr}");
    let workers: Vec<&str> = secrets
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != "EASEMOB_RULE2_SECRET")
        .collect();
    let (ok, stderr) = resolve("worker", &only(&workers));
    assert!(ok, "the worker needs no callback secret: {stderr}");
    let (ok, stderr) = resolve("worker", &only(&["EASEMOB_RULE2_SECRET"]));
    assert!(!ok && stderr.contains("targets."), "{stderr}");
    let (ok, stderr) = resolve("all", &only(&workers));
    assert!(
        !ok && stderr.contains("easemob.apps[0].secrets[1]"),
        "{stderr}"
    );
    let help = Command::new(BIN)
        .args(["check-config", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--resolve") && help.contains("ingest") && help.contains("worker"),
        "{help}"
    );
}

/// A normalized event as the worker reads it from the topic.
fn event_json(scope: &str, group: &str, kind: &str) -> String {
    serde_json::json!({
        "schema": "mutebridge.event/v1",
        "id": "1100000000000000#moderation_1",
        "source": "easemob",
        "format": "group_op_event",
        "appkey": "1100000000000000#moderation",
        "scope": scope,
        "group_id": group,
        "kind": kind,
        "operation": "UPDATE",
        "subtype": "MUTE",
        "operator": "@ppAdmin",
        "members": [],
        "mute": {"all": kind == "mute_all"},
        "occurred_at_ms": 1_795_000_000_000i64,
        "received_at_ms": 1_795_000_000_001i64,
        "attributes": {},
    })
    .to_string()
}

/// `policy explain` on the documented example: which rules match, why the
/// others do not, and the signed request, without the secret in it.
fn explain(event: &str) -> (bool, String, String) {
    explain_with_state(event, None)
}

fn explain_with_state(event: &str, state: Option<&str>) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("event.json");
    std::fs::write(&path, event).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["policy", "explain", "--config", EXAMPLE_CONFIG])
        .arg(&path)
        .envs(example_secrets());
    if let Some(state) = state {
        let state_path = dir.path().join("state.json");
        std::fs::write(&state_path, state).unwrap();
        command.arg("--state").arg(&state_path);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn policy_explain_prints_matching_rules_and_the_requests_with_signatures_masked() {
    let (ok, out, err) = explain(&event_json("group", "262246968131585", "mute_all"));
    assert!(ok, "{err}");
    assert!(
        out.contains("rule \"mirror group mutes to ZEGO\": matches"),
        "{out}"
    );
    assert!(
        out.contains(
            "rule \"mirror chatroom mutes to RongCloud\": no match (scope is group, not chatroom)"
        ),
        "{out}"
    );
    assert!(
        out.contains("rule \"audit every kick and mute\": matches"),
        "{out}"
    );
    let request = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("GET https://zim-api.zego.im/?"))
        .unwrap_or_else(|| panic!("no ZEGO request in:\n{out}"));
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.split_once('?').unwrap().1.as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k} in {request}"))
    };
    assert_eq!(get("Action"), "MuteGroup");
    assert_eq!(get("GroupId"), "zego-room-42", "the example's group map");
    assert_eq!(get("IsAllMuted"), "true");
    assert_eq!(get("Duration"), "-1");
    // The signature is masked (valid for minutes, it does not cover the
    // action), and no secret is printed.
    assert_eq!(get("Signature"), "<masked>");
    assert!(
        out.contains("Signature: <masked>"),
        "RongCloud's header too:\n{out}"
    );
    for (_, value) in example_secrets() {
        assert!(!out.contains(&value), "a secret was printed:\n{out}");
    }

    // A group missing from the map is reported as the rule says.
    let (ok, out, err) = explain(&event_json("group", "262299999999999", "mute_all"));
    assert!(ok, "{err}");
    assert!(
        out.contains("dead-lettered as unmapped") && !out.contains("Action=MuteGroup"),
        "{out}"
    );

    // A chatroom unmute goes to RongCloud's rollback endpoint.
    let (ok, out, err) = explain(&event_json("chatroom", "1234567890", "unmute_all"));
    assert!(ok, "{err}");
    assert!(out.contains("/chatroom/ban/rollback.json"), "{out}");

    // What is not an event is refused with a hint, naming the file.
    let (ok, _, err) = explain("{\"kind\": \"mute_all\"}");
    assert!(!ok);
    assert!(
        err.contains("event.json") && err.contains("is not a normalized event"),
        "{err}"
    );
}

#[test]
fn policy_explain_with_a_state_shows_what_the_guard_holds() {
    let group = "262246968131585";
    let newer = 1_795_000_000_000i64 + 1000;
    let state = serde_json::json!({
        "schema": "mutebridge.state/v1",
        "appkey": "1100000000000000#moderation",
        "scope": "group",
        "group_id": group,
        "mute_all": {"muted": false, "at_ms": newer, "event_id": "the-unmute"},
        "members": {"u1": {"muted": false, "until_ms": null, "at_ms": newer, "event_id": "the-unmute-of-u1"}},
        "updated_at_ms": newer,
    })
    .to_string();
    // A mute-all older than the state's unmute: held.
    let (ok, out, err) = explain_with_state(&event_json("group", group, "mute_all"), Some(&state));
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "mute_all: stale (event the-unmute at {newer} ms set it later; not sent)"
        )),
        "{out}"
    );
    assert!(out.contains("-> zego, mute_all: not sent (stale)"), "{out}");
    assert!(!out.contains("(zego), mute_all: would send"), "{out}");
    // The audit webhook is a trail of every event, stale or not.
    assert!(
        out.contains("-> audit (webhook), forward: would send"),
        "{out}"
    );

    // A member mute of u1 (stale) and u2 (fresh): only u2 is sent.
    let mut member: serde_json::Value =
        serde_json::from_str(&event_json("group", group, "member_muted")).unwrap();
    member["members"] = serde_json::json!(["u1", "u2"]);
    member["mute"] = serde_json::json!({"until_ms": null});
    let (ok, out, err) = explain_with_state(&member.to_string(), Some(&state));
    assert!(ok, "{err}");
    assert!(out.contains("member:u2: fresh"), "{out}");
    assert!(out.contains("member:u1: stale"), "{out}");
    assert!(out.contains("UserIds%5B%5D=u2"), "{out}");
    assert!(!out.contains("UserIds%5B%5D=u1"), "{out}");
    // The audit webhook gets the whole event, as the worker sends it.
    assert!(out.contains(r#""members":["u1","u2"]"#), "{out}");

    // A resync marker is not run through the rules (no webhook "forwards" it).
    let mut marker: serde_json::Value =
        serde_json::from_str(&event_json("group", group, "resync")).unwrap();
    marker["attributes"] = serde_json::json!({"target": "zego"});
    marker["mute"] = serde_json::Value::Null;
    let (ok, out, err) = explain(&marker.to_string());
    assert!(ok, "{err}");
    assert!(
        out.contains("a resync marker") && out.contains("target zego"),
        "{out}"
    );
    assert!(!out.contains("would send"), "{out}");

    // A state of another group is refused, naming both.
    let (ok, _, err) = explain_with_state(&event_json("group", "other", "mute_all"), Some(&state));
    assert!(!ok);
    assert!(
        err.contains("is the state of") && err.contains("other"),
        "{err}"
    );
}

#[test]
fn check_config_names_file_and_key() {
    let (ok, _, stderr) = check_config(
        "[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"s\"]\n[http]\nlisen = \"0.0.0.0:1\"\n",
    );
    assert!(!ok);
    assert!(stderr.contains("mutebridge.toml"), "{stderr}");
    assert!(
        stderr.contains("http") && stderr.contains("lisen"),
        "{stderr}"
    );

    let unset = "[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"env:NOT_SET_ANYWHERE\"]\n";
    let (ok, _, stderr) = check_config(unset);
    assert!(ok, "not read without --resolve: {stderr}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutebridge.toml");
    std::fs::write(&path, unset).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--resolve", "ingest"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("easemob.apps[0].secrets[0]") && stderr.contains("NOT_SET_ANYWHERE"),
        "{stderr}"
    );

    // Values that would overflow a timer or a pace at run time are refused
    // at load, naming the key.
    let app = "[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"s\"]\n";
    for (extra, key) in [
        ("[http]\nshutdown_grace_seconds = 9223372036854775000\n", "http.shutdown_grace_seconds"),
        ("[worker]\nshutdown_grace_seconds = 9223372036854775000\n", "worker.shutdown_grace_seconds"),
        ("[http]\nack_timeout_ms = 9223372036854775000\n", "http.ack_timeout_ms"),
        (
            "[targets.rc]\nkind = \"rongcloud\"\napp_key = \"k\"\napp_secret = \"s\"\nrate_per_second = 1e-30\n",
            "targets.rc.rate_per_second",
        ),
        (
            "[targets.rc]\nkind = \"rongcloud\"\napp_key = \"k\"\napp_secret = \"s\"\n[targets.rc.rate_limit]\nheadroom = 1e-30\n",
            "targets.rc.rate_limit.headroom",
        ),
        // Intervals too short to be meant, and URLs that would send signed
        // requests in clear text.
        ("[worker]\ncommit_interval_ms = 1\n", "worker.commit_interval_ms"),
        ("[worker]\nrequest_timeout_ms = 5\n", "worker.request_timeout_ms"),
        ("[worker.retry]\ninitial_backoff_ms = 1\n", "worker.retry.initial_backoff_ms"),
        (
            "[worker.circuit_breaker]\nprobe_candidates = 0\n",
            "worker.circuit_breaker.probe_candidates",
        ),
        (
            "[targets.rc]\nkind = \"rongcloud\"\nbase_urls = [\"http://api.rong-api.com\"]\napp_key = \"k\"\napp_secret = \"s\"\n",
            "targets.rc.base_urls[0]",
        ),
        (
            "[targets.w]\nkind = \"webhook\"\nurl = \"http://hooks.example/in\"\nsecret = \"s\"\n",
            "targets.w.url",
        ),
    ] {
        let (ok, _, stderr) = check_config(&format!("{app}{extra}"));
        assert!(!ok, "{extra}");
        assert!(
            stderr.contains(&format!("mutebridge.toml: {key}:")),
            "{extra}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    let (ok, _, stderr) = check_config("this is not toml");
    assert!(!ok);
    assert!(stderr.contains("mutebridge.toml"), "{stderr}");
}

/// Kills the child on drop so a failing test leaves no server behind.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The README's first run: `mutebridge run` with no config, then the
/// command it prints, then a Kafka client reading the topic it names.
#[test]
fn zero_config_first_run() {
    if std::net::TcpListener::bind("127.0.0.1:8080").is_err() {
        panic!("port 8080 is taken on this machine; the zero-config run listens there");
    }
    let mut child = Command::new(BIN)
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut server = Server(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = Vec::new();
    let (mut bootstrap, mut send_cmd, mut targets_cmd) = (None, None, None);
    while bootstrap.is_none() || send_cmd.is_none() || targets_cmd.is_none() {
        let line = lines.next().expect("banner ended early").unwrap();
        if let Some(rest) = line.split("bootstrap.servers=").nth(1) {
            bootstrap = Some(rest.split_whitespace().next().unwrap().to_owned());
        }
        if line.trim_start().contains(" send --url ") {
            send_cmd = Some(line.trim().to_owned());
        }
        if line.trim_start().contains(" targets --url ") {
            targets_cmd = Some(line.trim().to_owned());
        }
        banner.push(line);
    }
    let banner = banner.join("\n");
    assert!(banner.contains("EMBEDDED"), "{banner}");
    assert!(
        banner.contains("demo#mutebridge") && banner.contains("demo-secret"),
        "{banner}"
    );

    // Run the printed command as a user would paste it (through a shell).
    let deadline = Instant::now() + Duration::from_secs(20);
    let output = loop {
        let out = Command::new("sh")
            .arg("-c")
            .arg(send_cmd.as_ref().unwrap())
            .output()
            .unwrap();
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("200"), "{printed}");

    // Any Kafka client can read the topic at the printed address.
    let records = read_all(bootstrap.as_ref().unwrap(), "im.group-events", 1);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["kind"], "mute_all");
    assert_eq!(records[0]["appkey"], "demo#mutebridge");

    // The printed targets command shows the demo's targets.
    let out = Command::new("sh")
        .arg("-c")
        .arg(targets_cmd.as_ref().unwrap())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for pipeline in ["state", "zego", "rongcloud"] {
        assert!(shown.contains(pipeline), "{pipeline} in\n{shown}");
    }

    // SIGTERM: drain, flush, exit 0.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_all(bootstrap: &str, topic: &str, n: usize) -> Vec<serde_json::Value> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "cli-test")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
    }
    out
}

/// Kills the child when dropped, so a failing test leaves no process.
#[test]
fn ingest_and_worker_run_against_dev_kafka_with_default_topic_settings() {
    let mut kafka = Command::new(BIN)
        .arg("dev-kafka")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = kafka.stdout.take().unwrap();
    let kafka = Killed(kafka);
    let mut lines = BufReader::new(stdout).lines();
    let bootstrap = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("bootstrap.servers=").map(str::to_owned))
        .expect("dev-kafka printed its address");
    // Keep reading what it prints after the address.
    std::thread::spawn(move || lines.for_each(drop));
    let dir = tempfile::tempdir().unwrap();
    // Only the brokers and an app (and each process's own port): no
    // kafka.create_topics = false.
    // Port 0: each process binds a free port and prints it (no race with
    // other tests for a port picked in advance).
    let start = |role: &str| {
        let path = dir.path().join(format!("{role}.toml"));
        std::fs::write(
            &path,
            format!(
                "[http]\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"{bootstrap}\"\n[[easemob.apps]]\nappkey = \"org#app\"\nsecrets = [\"s3cret\"]\n"
            ),
        )
        .unwrap();
        spawn_role(role, &path, &dir.path().join(format!("{role}.log")))
    };
    let (_ingest, ingest_addr) = start("ingest");
    let (_worker, worker_addr) = start("worker");
    let logs = || {
        ["ingest", "worker"]
            .map(|r| {
                std::fs::read_to_string(dir.path().join(format!("{r}.log"))).unwrap_or_default()
            })
            .join("\n")
    };
    assert!(
        wait_for_200(ingest_addr, "/readyz", Duration::from_secs(20)),
        "ingest is not ready: {}",
        logs()
    );
    assert!(
        wait_for_200(worker_addr, "/readyz", Duration::from_secs(20)),
        "worker is not ready: {}",
        logs()
    );
    let out = Command::new(BIN)
        .args([
            "send",
            "--url",
            &format!("http://{ingest_addr}/webhooks/easemob"),
        ])
        .args([
            "--appkey",
            "org#app",
            "--secret",
            "s3cret",
            "--example",
            "mute-all",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http_get(worker_addr, "/metrics").unwrap();
        // No target is configured: only the state keeper consumes.
        if metrics.contains("mutebridge_state_events_total{outcome=\"recorded\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never consumed the event:\n{metrics}\nlogs:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(kafka);
}

#[test]
fn dlq_since_refuses_what_is_not_a_duration_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mutebridge.toml");
    // Nothing listens there: the filter is refused before Kafka is asked.
    std::fs::write(&config, "[kafka]\nbrokers = \"127.0.0.1:9\"\n").unwrap();
    for since in ["5é", "é", "300000000000000d", "-5m", "5w"] {
        let out = Command::new(BIN)
            .args(["dlq", "list", "--config"])
            .arg(&config)
            .arg(format!("--since={since}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{since}: {stderr}");
        assert!(
            stderr.contains("--since") && !stderr.contains("panicked"),
            "{since}: {stderr}"
        );
    }
}

/// Starts `mutebridge ROLE --config CONFIG` with only `env` in its
/// environment; returns it with the addresses its banner printed
/// (`  NAME: http://ADDR` for each NAME: ingest, ops, worker).
fn spawn_with_env(
    role: &str,
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (
    Killed,
    std::collections::HashMap<String, std::net::SocketAddr>,
) {
    let mut child = Command::new(BIN)
        .args([role, "--config", config.to_str().unwrap()])
        .env_clear()
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addrs = std::collections::HashMap::new();
    // The ops line, when there is one, comes before the ingest line.
    let last = if role == "worker" { "worker" } else { "ingest" };
    for line in lines.by_ref().map_while(Result::ok) {
        for name in ["ingest", "ops", "worker"] {
            if let Some(rest) = line.strip_prefix(&format!("  {name}: http://")) {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                addrs.insert(name.to_owned(), addr);
            }
        }
        if addrs.contains_key(last) {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (Killed(child), addrs)
}

/// A free loopback port (released again: a tiny race with other tests).
fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

const ROLE_CONFIG: &str = "[[easemob.apps]]\nappkey = \"org#app\"\nsecrets = [\"env:APP_SECRET\"]\n[targets.zego]\nkind = \"zego\"\nbase_url = \"http://127.0.0.1:9\"\napp_id = 1\nserver_secret = \"env:ZEGO_SECRET\"\nfrom_user_id = \"bot\"\n";

#[test]
fn each_role_starts_with_only_its_own_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mutebridge.toml");
    std::fs::write(
        &config,
        format!("[http]\nlisten = \"127.0.0.1:0\"\n{ROLE_CONFIG}"),
    )
    .unwrap();
    // Ingest: the callback secret, no provider credential.
    let (_ingest, addrs) = spawn_with_env("ingest", &config, &[("APP_SECRET", "s3cret")]);
    let ingest = addrs["ingest"];
    assert!(wait_for_200(ingest, "/readyz", Duration::from_secs(20)));
    let out = Command::new(BIN)
        .args([
            "send",
            "--url",
            &format!("http://{ingest}/webhooks/easemob"),
        ])
        .args([
            "--appkey",
            "org#app",
            "--secret",
            "s3cret",
            "--example",
            "mute-all",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Worker: the provider credential, no callback secret.
    let (_worker, addrs) = spawn_with_env("worker", &config, &[("ZEGO_SECRET", "z")]);
    assert!(wait_for_200(
        addrs["worker"],
        "/readyz",
        Duration::from_secs(20)
    ));
    // A role missing a secret it uses says which.
    let out = Command::new(BIN)
        .args(["worker", "--config"])
        .arg(&config)
        .env_clear()
        .env("APP_SECRET", "s3cret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("targets.zego.server_secret") && stderr.contains("ZEGO_SECRET"),
        "{stderr}"
    );
}

#[test]
fn with_an_ops_listener_metrics_leave_the_callback_port() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!("[http]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n{ROLE_CONFIG}"),
    )
    .unwrap();
    let env = [("APP_SECRET", "s3cret"), ("ZEGO_SECRET", "z")];
    let (_run, addrs) = spawn_with_env("run", &config, &env);
    let (callbacks, ops) = (addrs["ingest"], addrs["ops"]);
    assert_ne!(callbacks, ops);
    for addr in [callbacks, ops] {
        assert!(wait_for_200(addr, "/readyz", Duration::from_secs(20)));
        assert_eq!(http_get(addr, "/healthz").unwrap().0, 200);
    }
    let (status, body) = http_get(callbacks, "/metrics").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("mutebridge_"), "{body}");
    let (status, body) = http_get(ops, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("mutebridge_http_connections_open"), "{body}");
    assert!(
        body.contains("mutebridge_state_events_total"),
        "the worker's too: {body}"
    );
    assert_eq!(http_get(ops, "/webhooks/easemob").unwrap().0, 404);

    // A worker-only process listens on the ops address, not http.listen.
    let (http, ops) = (free_addr(), free_addr());
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!("[http]\nlisten = \"{http}\"\n[ops]\nlisten = \"{ops}\"\n{ROLE_CONFIG}"),
    )
    .unwrap();
    let (_worker, addrs) = spawn_with_env("worker", &config, &[("ZEGO_SECRET", "z")]);
    assert_eq!(addrs["worker"], ops);
    assert!(wait_for_200(ops, "/readyz", Duration::from_secs(20)));
    assert_eq!(http_get(ops, "/metrics").unwrap().0, 200);
    assert!(
        http_get(http, "/healthz").is_none(),
        "nothing on http.listen"
    );
}

/// Starts `mutebridge dev-kafka` (topics a, b, c) and returns it with its
/// bootstrap list.
fn dev_kafka() -> (Killed, String) {
    let mut kafka = Command::new(BIN)
        .args([
            "dev-kafka",
            "--topic",
            "a",
            "--dlq-topic",
            "b",
            "--state-topic",
            "c",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = kafka.stdout.take().unwrap();
    let kafka = Killed(kafka);
    let mut lines = BufReader::new(stdout).lines();
    let bootstrap = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("bootstrap.servers=").map(str::to_owned))
        .expect("dev-kafka printed its address");
    std::thread::spawn(move || lines.for_each(drop));
    (kafka, bootstrap)
}

/// Whether the cluster knows `topic`, asked without creating it.
fn topic_exists(bootstrap: &str, topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

#[test]
fn ingest_refuses_a_missing_topic_instead_of_publishing_to_an_auto_created_one() {
    let (_kafka, bootstrap) = dev_kafka();
    let dir = tempfile::tempdir().unwrap();
    let run = |create: bool| {
        let config = dir.path().join(format!("ingest-{create}.toml"));
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"missing\"\ncreate_topics = {create}\n[[easemob.apps]]\nappkey = \"org#app\"\nsecrets = [\"s\"]\n"
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["ingest", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = run(false);
    assert!(!ok);
    assert!(
        stderr.contains("missing (kafka.topic): does not exist")
            && stderr.contains("12 partitions")
            && stderr.contains("mutebridge topics create")
            && stderr.contains("kafka.create_topics = true"),
        "{stderr}"
    );
    // Asking whether it exists did not create it; nor did trying to create
    // it on a cluster that cannot (the mock has no CreateTopics).
    assert!(!topic_exists(&bootstrap, "missing"));
    let (ok, stderr) = run(true);
    assert!(!ok);
    assert!(stderr.contains("cannot create topic missing"), "{stderr}");
    assert!(!topic_exists(&bootstrap, "missing"));
    assert!(topic_exists(&bootstrap, "a"), "the check itself works");
}
