//! The `mutebridge` binary as a user runs it: the zero-config first run from
//! the README, `send`, `schema`, and `check-config`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mutebridge");

#[test]
fn schema_command_matches_the_checked_in_copy() {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let checked_in = include_str!("../deploy/schema/event.v1.json");
    assert_eq!(
        printed, checked_in,
        "the event schema changed: run `mutebridge schema > deploy/schema/event.v1.json` and bump the schema version if it is not backward compatible"
    );
    assert_eq!(printed, mutebridge::event::json_schema());
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

#[test]
fn check_config_accepts_the_documented_example() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/config/mutebridge.toml"
    ))
    .unwrap();
    let example = example.replace("env:EASEMOB_RULE2_SECRET", "env:SECRET_FROM_ENV");
    let (ok, stdout, stderr) = check_config(&example);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
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
