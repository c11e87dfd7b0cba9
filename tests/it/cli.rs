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
        stdout.contains("OK") && stdout.contains("3 target(s), 4 rule(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("zego: 20/s for the whole worker group, 19.00/s used (headroom 0.95); each worker replica takes its partition share"),
        "{stdout}"
    );

    // Without the environment the same file is refused, naming the key.
    let (ok, _, stderr) = check_config(&example);
    assert!(!ok);
    assert!(stderr.contains("env"), "{stderr}");
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
    assert!(
        out.contains("nothing of it is sent to mute targets"),
        "{out}"
    );
    assert!(!out.contains("would send"), "{out}");

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

    let (ok, _, stderr) =
        check_config("[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"env:NOT_SET_ANYWHERE\"]\n");
    assert!(!ok);
    assert!(
        stderr.contains("easemob.apps[0].secrets[0]") && stderr.contains("NOT_SET_ANYWHERE"),
        "{stderr}"
    );

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
    let (mut bootstrap, mut send_cmd) = (None, None);
    while bootstrap.is_none() || send_cmd.is_none() {
        let line = lines.next().expect("banner ended early").unwrap();
        if let Some(rest) = line.split("bootstrap.servers=").nth(1) {
            bootstrap = Some(rest.split_whitespace().next().unwrap().to_owned());
        }
        if line.trim_start().contains(" send --url ") {
            send_cmd = Some(line.trim().to_owned());
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
