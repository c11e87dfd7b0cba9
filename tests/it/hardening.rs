//! The ingest under clients that misbehave, over raw sockets: stalled and
//! idle connections are reclaimed on their clock, the connection cap keeps
//! the server answering when file descriptors run short, and inputs that
//! cannot be published correctly are refused with the field named.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};

/// Connects and sends `bytes` (possibly nothing).
fn open(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    s
}

/// Opens `n` connections that each send half a request head and stop.
async fn stall(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|_| open(addr, b"POST /webhooks/easemob HTTP/1.1\r\nhost:"))
            .collect()
    })
    .await
    .unwrap()
}

/// Reads until the server closes; when that was and what it sent.
fn until_closed(mut s: TcpStream, limit: Duration) -> (Instant, String) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("not closed within {limit:?}: {e}"),
        }
    }
    (Instant::now(), String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_idle_connections_are_closed_on_their_clock() {
    let h = Harness::start_with(|c| {
        c.http.header_timeout_seconds = 1;
        c.http.body_timeout_seconds = 1;
        c.http.idle_timeout_seconds = 2;
    })
    .await;
    let addr = h.addr;
    let head = "POST /webhooks/easemob HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    let opened = Instant::now();
    let (silent, half_head, half_body, idle) = tokio::task::spawn_blocking(move || {
        let silent = open(addr, b"");
        let half_head = open(addr, head.as_bytes());
        let half_body = open(
            addr,
            format!("{head}content-length: 100\r\n\r\n{{\"callId\":").as_bytes(),
        );
        let mut idle = open(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
        let mut first = [0u8; 12];
        idle.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        (silent, half_head, half_body, idle)
    })
    .await
    .unwrap();
    let limit = Duration::from_secs(5);
    let checks = tokio::task::spawn_blocking(move || {
        [
            until_closed(silent, limit),
            until_closed(half_head, limit),
            until_closed(half_body, limit),
            until_closed(idle, limit),
        ]
    })
    .await
    .unwrap();
    let [silent, half_head, half_body, idle] = checks.map(|(at, text)| (at - opened, text));
    // Each within its timeout + 1 s of when it opened (or went idle).
    for (name, (after, _)) in [
        ("silent", &silent),
        ("half head", &half_head),
        ("half body", &half_body),
    ] {
        assert!(
            *after >= Duration::from_millis(900) && *after < Duration::from_secs(2),
            "{name}: closed after {after:?}"
        );
    }
    assert!(
        half_body.1.starts_with("HTTP/1.1 408") && half_body.1.contains("connection: close"),
        "a body timeout is answered 408 and says it closes: {}",
        half_body.1
    );
    assert!(
        idle.0 >= Duration::from_millis(1500) && idle.0 < Duration::from_secs(3),
        "idle: {:?}",
        idle.0
    );
    let closed =
        |reason: &str| format!("mutebridge_http_connections_closed_total{{reason=\"{reason}\"}}");
    assert_eq!(h.metric(&closed("header_timeout")).await, 2.0);
    assert_eq!(h.metric(&closed("body_timeout")).await, 1.0);
    // (the harness's own pooled connections go idle too)
    assert!(h.metric(&closed("idle")).await >= 1.0);
    assert_eq!(
        h.metric("mutebridge_webhooks_total{outcome=\"body_timeout\"}")
            .await,
        1.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_answered_while_hundreds_of_connections_stall() {
    let h = Harness::start().await;
    let addr = h.addr;
    let stalled = stall(addr, 300).await;
    for i in 0..20 {
        let r = h.post(&mute_all(&format!("g-busy-{i}"))).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert!(h.metric("mutebridge_http_connections_open").await >= 300.0);
    drop(stalled);
    h.stop().await;
}

/// Runs `mutebridge run` with RLIMIT_NOFILE set to `nofile` (soft and
/// hard, so it cannot raise it), on a free port.
fn run_with_fd_limit(nofile: u64, config: &str) -> (std::process::Child, SocketAddr) {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("mutebridge.toml");
    std::fs::write(&path, format!("[http]\nlisten = \"{addr}\"\n{config}")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_mutebridge"));
    command
        .args(["run", "--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    (command.spawn().unwrap(), addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_fd_limit_the_oldest_stalled_connections_make_room() {
    let config = format!(
        "[[easemob.apps]]\nappkey = \"{APPKEY}\"\nsecrets = [\"{}\"]\n",
        SECRETS[0]
    );
    let (child, addr) = run_with_fd_limit(256, &config);
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while http
        .get(url("/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 256 fds less 128 kept back: at most 128 connections. Open more than
    // the process could hold at all.
    let stalled = stall(addr, 300).await;
    // The server has taken them in: at its cap of 128, closing the oldest.
    let limit_closed = "mutebridge_http_connections_closed_total{reason=\"limit\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = http
            .get(url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let closed = text
            .lines()
            .find_map(|l| l.strip_prefix(limit_closed))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap());
        if closed >= 150.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{closed} closed at the cap");
        // The poll interval of this deadline loop.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..10 {
        let r = http.get(url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = Value::Object(mute_all(&format!("g-fd-{i}"))).to_string();
        let r = http
            .post(url("/webhooks/easemob"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "callbacks are still answered at the cap");
    }
    let metrics = http
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.trim().parse::<f64>().unwrap())
            })
            .unwrap_or_else(|| panic!("{name} not in {metrics}"))
    };
    assert!(value("mutebridge_http_connections_closed_total{reason=\"limit\"}") >= 150.0);
    assert!(value("mutebridge_http_connections_open") <= 128.0);
    assert_eq!(value("process_max_fds"), 256.0);
    assert!(value("process_open_fds") < 256.0);
    drop(stalled);
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("open connections at http.max_connections"),
        "{log}"
    );
    assert!(
        log.contains("open-files limit"),
        "the limits are logged at start: {log}"
    );
}

/// POSTs `body` and returns status and error text.
async fn refused(h: &Harness, body: Value) -> (u16, String) {
    let r = h.post_raw(body.to_string()).await;
    (
        r.status,
        r.body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

fn signed(mut body: serde_json::Map<String, Value>) -> Value {
    resign(&mut body, SECRETS[0]);
    Value::Object(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_that_cannot_be_published_faithfully_are_refused_by_name() {
    let h = Harness::start().await;
    // Timestamps must be positive.
    for ts in [json!(0), json!(-5), json!("0")] {
        let mut b = mute_all("g");
        b.insert("timestamp".into(), ts.clone());
        let (status, error) = refused(&h, signed(b)).await;
        assert_eq!(status, 400, "{ts}");
        assert!(error.contains("`timestamp`"), "{error}");
    }
    // An expiry is read exactly like `timestamp`, or refused: never guessed
    // into "permanent".
    for bad in [
        json!(1.7e12),
        json!("soon"),
        json!("99999999999999999999"),
        json!(true),
    ] {
        let b = op_event(
            "g",
            "MUTE",
            json!({"type": "ADD", "member": ["u1"], "expire_timestamp": bad}),
        );
        let (status, error) = refused(&h, Value::Object(b)).await;
        assert_eq!(status, 400, "{bad}");
        assert!(error.contains("expire_timestamp"), "{error}");
    }
    // Group IDs and callIds: not blank, no control characters, bounded.
    let long = "9".repeat(300);
    for id in ["   ", "g\u{0}x", "g\nx", long.as_str()] {
        let (status, error) = refused(&h, Value::Object(mute_all(id))).await;
        assert_eq!(status, 400, "{id:?}");
        assert!(error.contains("`id`"), "{error}");
    }
    for call_id in [
        format!("{APPKEY}_{}", "x".repeat(300)),
        "a\u{7}b".into(),
        " ".into(),
    ] {
        let mut b = mute_all("g");
        b.insert("callId".into(), call_id.clone().into());
        let (status, error) = refused(&h, signed(b)).await;
        assert_eq!(status, 400, "{call_id:?}");
        assert!(error.contains("`callId`"), "{error}");
    }
    // A valid digit-string expiry keeps its time.
    let until = now_ms() + 60_000;
    let b = op_event(
        "g-until",
        "MUTE",
        json!({"type": "ADD", "member": ["u1"], "expire_timestamp": until.to_string()}),
    );
    assert_eq!(h.post(&b).await.status, 200);
    let events = h.consume(1, Duration::from_secs(10)).await;
    assert_eq!(events[0].value["mute"], json!({"until_ms": until}));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_answers_are_final_and_close_the_connection() {
    // A producer that takes at most 1600 bytes; bodies up to 1088 pass the
    // config check (1088 + the 512-byte envelope allowance <= 1600).
    let h = Harness::start_with(|c| {
        c.http.max_body_bytes = 1088;
        c.kafka
            .client
            .insert("message.max.bytes".into(), toml::Value::Integer(1600));
    })
    .await;
    // Long IDs travel twice more (key, header) beside the event's own
    // fields, so this body's record is over 1600 bytes although the body
    // is under 1088.
    let group = "7".repeat(256);
    let members: Vec<String> = (0..30).map(|i| format!("user-{i:02}")).collect();
    let mut b = op_event(&group, "MUTE", json!({"type": "ADD", "member": members}));
    b.insert(
        "callId".into(),
        format!("{APPKEY}_{}", "c".repeat(247)).into(),
    );
    let body = signed(b).to_string();
    assert!(body.len() < 1088, "{}", body.len());
    let r = h.post_raw(body).await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert!(r.body["error"]
        .as_str()
        .unwrap()
        .contains("message.max.bytes"));
    assert!(
        r.headers.get("retry-after").is_none(),
        "final, not 'retry later'"
    );
    assert!(
        h.consume(1, Duration::from_secs(2)).await.is_empty(),
        "nothing published"
    );

    // Over the body limit: 413, and the reply says the connection closes,
    // so a keep-alive client does not write its next request into a
    // closed socket.
    let addr = h.addr;
    let reply = tokio::task::spawn_blocking(move || {
        let s = open(
            addr,
            b"POST /webhooks/easemob HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n{",
        );
        until_closed(s, Duration::from_secs(5)).1
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_past_max_header_bytes_is_answered_431() {
    let h = Harness::start_with(|c| c.http.max_header_bytes = 16 * 1024).await;
    let addr = h.addr;
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = open(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n");
        // 64 KiB of header lines, never finished; the server stops reading
        // at its limit, so a write may fail once it has answered.
        let line = format!("x-filler: {}\r\n", "a".repeat(1000));
        for _ in 0..64 {
            if s.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
        until_closed(s, Duration::from_secs(5)).1
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");
    // A head under the limit is served as before, and the limit is the
    // head's only: a body three times its size is read whole.
    let (status, _) = h.get("/healthz").await;
    assert_eq!(status, 200);
    let mut b = mute_all("g-large-body");
    b.insert("padding".into(), "p".repeat(48 * 1024).into());
    let r = h.post(&b).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    h.stop().await;
}

/// Sends a callback head announcing `length` bytes and `sent` of them.
fn trickle(addr: SocketAddr, length: usize, sent: usize) -> TcpStream {
    let head = format!(
        "POST /webhooks/easemob HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    );
    let mut s = open(addr, head.as_bytes());
    s.write_all(&vec![b' '; sent]).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_trickling_their_bodies_are_evicted_at_the_cap_and_past_the_memory_budget() {
    // At the connection cap: 16 connections each in the middle of a body.
    let h = Harness::start_with(|c| c.http.max_connections = 16).await;
    let addr = h.addr;
    let trickling = tokio::task::spawn_blocking(move || {
        (0..16)
            .map(|_| trickle(addr, 60_000, 1000))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // The server has taken them in: a new connection, queued behind them,
    // is accepted after them, past the cap (closing the oldest).
    let limit = "mutebridge_http_connections_closed_total{reason=\"limit\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::task::spawn_blocking(move || process_metric(addr, limit))
        .await
        .unwrap()
        < 1.0
    {
        assert!(Instant::now() < deadline, "the 16 were never taken in");
        // The poll interval of this deadline loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..5 {
        let r = h.post(&mute_all(&format!("g-trickle-{i}"))).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert!(
        h.metric("mutebridge_http_connections_closed_total{reason=\"limit\"}")
            .await
            >= 1.0
    );
    drop(trickling);
    h.stop().await;

    // Past the memory budget (the smallest allowed: 1 MiB): the bodies
    // received longest are closed until the rest fits, callbacks still go.
    let h = Harness::start_with(|c| {
        c.http.max_body_bytes = 60_000;
        c.http.max_buffered_bytes = 1 << 20;
    })
    .await;
    let addr = h.addr;
    let trickling = tokio::task::spawn_blocking(move || {
        (0..40)
            .map(|_| {
                let s = trickle(addr, 60_000, 50_000);
                // Spaced, so that which were opened first is clear: not a
                // wait.
                std::thread::sleep(Duration::from_millis(5));
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // The server has read past its budget and closed the oldest.
    let memory = "mutebridge_http_connections_closed_total{reason=\"memory\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.metric(memory).await < 15.0 {
        assert!(
            Instant::now() < deadline,
            "{} closed",
            h.metric(memory).await
        );
        // The poll interval of this deadline loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed = h.metric(memory).await;
    // 40 x 50 KB = 2 MB against 1 MiB: about half must go.
    assert!((15.0..=30.0).contains(&closed), "{closed} closed");
    // The first ones opened are the ones closed.
    let first = trickling.into_iter().next().unwrap();
    let (_, text) =
        tokio::task::spawn_blocking(move || until_closed(first, Duration::from_secs(2)))
            .await
            .unwrap();
    assert!(text.is_empty(), "closed without a reply: {text:?}");
    let r = h.post(&mute_all("g-after-memory")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_dated_callbacks_and_control_characters_in_names_are_refused_by_field() {
    let h = Harness::start().await;
    // Ten years ahead: refused, naming the field (a signed mute-all dated
    // so would make every real change after it "stale").
    let mut b = mute_all("g-future");
    b.insert(
        "timestamp".into(),
        (now_ms() + 10 * 365 * 86_400_000).into(),
    );
    let (status, error) = refused(&h, signed(b)).await;
    assert_eq!(status, 400);
    assert!(
        error.contains("`timestamp`") && error.contains("ahead"),
        "{error}"
    );
    // Within the default skew (300 s): accepted.
    let mut b = mute_all("g-near-future");
    b.insert("timestamp".into(), (now_ms() + 60_000).into());
    assert_eq!(h.post_raw(signed(b).to_string()).await.status, 200);

    // Member names, the operation and the operator reach log lines and
    // targets: control characters are refused like in IDs.
    let cases: Vec<(serde_json::Map<String, Value>, &str)> = vec![
        (
            op_event(
                "g",
                "MUTE",
                json!({"type": "ADD", "member": ["ok", "u\nforged"]}),
            ),
            "`payload.member`",
        ),
        (
            op_event(
                "g",
                "MUTE",
                json!({"type": "ADD", "members": "u\u{1b}[31m"}),
            ),
            "`payload.members`",
        ),
        (
            op_event("g", "UPD\rATE", json!({"type": "MUTE", "mute": true})),
            "`operation`",
        ),
        (
            {
                let mut b = mute_all("g");
                b.insert("operator".into(), "admin\n2026-01-01 INFO forged".into());
                b
            },
            "`operator`",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = refused(&h, signed(body)).await;
        assert_eq!(status, 400, "{field}");
        assert!(
            error.contains(field) && error.contains("control"),
            "{error}"
        );
    }
    // The legacy format: the operation, and `to` (the member).
    let legacy = |operation: &str, to: &str| {
        let mut b = json!({
            "callId": format!("{APPKEY}_{}", uuid::Uuid::new_v4()),
            "appkey": APPKEY,
            "chat_type": "muc",
            "group_id": "g-legacy",
            "from": format!("{APPKEY}_admin@easemob.com"),
            "to": to,
            "timestamp": now_ms(),
            "payload": {"operation": operation, "is_chatroom": false},
        });
        signed(b.as_object_mut().unwrap().clone())
    };
    let (status, error) = refused(&h, legacy("add\tmute", "u1")).await;
    assert_eq!(status, 400);
    assert!(error.contains("`payload.operation`"), "{error}");
    let (status, error) = refused(&h, legacy("add_mute", "u1\u{0}")).await;
    assert_eq!(status, 400);
    assert!(error.contains("`to`"), "{error}");
    assert_eq!(
        h.post_raw(legacy("add_mute", "u1").to_string())
            .await
            .status,
        200
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_signatures_stay_out_of_logs_dead_letters_and_the_log_preview() {
    use crate::providers::{FakeWebhook, FakeZego, Fault, Provider};
    use crate::worker::{mutebridge, policy, post_ok, zego_target, ZEGO_APP, ZEGO_SECRET};
    let _turn = HEAVY.lock().await;
    let zego = FakeZego::start(ZEGO_APP, ZEGO_SECRET, 1000.0).await;
    let hook = FakeWebhook::start("hook-secret").await;
    // A permanent answer from each: the dead letters carry their errors.
    zego.fault(Fault::Code(660000002));
    hook.fault(Fault::Status(400));
    // A port nothing listens on.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tokens = ["HOOK-TOKEN-1", "DOWN-TOKEN-2", "PREVIEW-TOKEN-3"];
    let text = format!(
        "{}
[targets.hook]
kind = \"webhook\"
url = \"{}?token={}\"
secret = \"hook-secret\"
[targets.down]
kind = \"webhook\"
url = \"http://{refused}/in?token={}\"
secret = \"down-secret\"
[targets.preview]
kind = \"log\"
[targets.preview.as]
kind = \"webhook\"
url = \"https://hooks.example/in?token={}\"
secret = \"preview-secret\"
[[policy.rules]]
name = \"everywhere\"
when = {{ kinds = [\"mute_all\"] }}
then = [{{ target = \"zego\", group = \"{{group_id}}\" }}, {{ target = \"hook\" }}, {{ target = \"down\" }}, {{ target = \"preview\" }}]
",
        zego_target(&zego, "zego"),
        hook.url(),
        tokens[0],
        tokens[1],
        tokens[2],
    );
    let h = Harness::start_with(|c| policy(c, &text)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = h.worker_process_config(&text, dir.path());
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let _worker = Killed(
        Command::new(env!("CARGO_BIN_EXE_mutebridge"))
            .args(["worker", "--config", config.to_str().unwrap()])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    post_ok(&h, &mute_all("g-secret")).await;
    // ZEGO's and the hook's dead letters; the refused port keeps the
    // `down` target retrying (an outage is not dead-lettered).
    let letters = h.dead_letters(2, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 2);
    let logged = || std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || logged()
            .contains(&format!("cannot connect ({refused})")))
        .await,
        "the host is named:\n{}",
        logged()
    );
    // The preview target has its own consumer group: it prints on its own
    // schedule, not after the others.
    let printed = || std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || printed()
            .contains("POST https://hooks.example/in?token=%3Cmasked%3E"))
        .await,
        "{}",
        printed()
    );
    let printed = printed();
    let listed = mutebridge(&[
        "dlq",
        "list",
        "--config",
        config.to_str().unwrap(),
        "--json",
    ]);
    assert!(listed.status.success());
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let raw: Vec<String> = letters.iter().map(|r| r.value.to_string()).collect();
    for (what, text) in [
        ("the worker's log", logged()),
        ("the log preview", printed),
        ("dlq list --json", listed),
        ("the dead letters", raw.join("\n")),
    ] {
        for secret in tokens
            .iter()
            .chain(&[ZEGO_SECRET, "hook-secret", "preview-secret"])
        {
            assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
        }
        for signed in ["Signature=", "sha256="] {
            assert!(!text.contains(signed), "{signed} in {what}:\n{text}");
        }
    }
}
