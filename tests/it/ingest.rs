//! The ingest endpoint over real HTTP and a real (in-process) Kafka cluster:
//! signatures, every status code and what it promises, dedup, metrics,
//! readiness and shutdown.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::*;
use mutebridge::sign;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures() {
    let h = Harness::start().await;
    // Each rule's secret is accepted.
    for secret in SECRETS {
        let mut body = mute_all("g-sig");
        resign(&mut body, secret);
        assert_eq!(h.post(&body).await.status, 200, "{secret}");
    }
    // Another app's secret, a wrong secret, a tampered callId: 401.
    for secret in [SEED_SECRET, "wrong"] {
        let mut body = mute_all("g-sig");
        resign(&mut body, secret);
        let r = h.post(&body).await;
        assert_eq!(r.status, 401, "{secret}");
        assert!(r.body["error"].as_str().unwrap().contains("signature"));
    }
    let mut body = mute_all("g-sig");
    body.insert("callId".into(), format!("{APPKEY}_tampered").into());
    assert_eq!(h.post(&body).await.status, 401);
    // Unknown appkey: 401.
    let mut body = mute_all("g-sig");
    body.insert("appkey".into(), "other#app".into());
    let r = h.post(&body).await;
    assert_eq!(r.status, 401);
    assert!(r.body["error"].as_str().unwrap().contains("appkey"));
    // Signed over the timestamp's digits: a value above 2^53 still verifies
    // (and is then refused as far in the future, 400, not as a wrong
    // signature, 401), and the same number written as a float does not
    // parse.
    let mut body = mute_all("g-sig");
    let call_id = body["callId"].as_str().unwrap().to_owned();
    let digits = "9007199254740993";
    let raw = serde_json::to_string(&Value::Object(body.clone())).unwrap();
    let ts = body["timestamp"].to_string();
    let raw = raw.replace(
        &format!("\"timestamp\":{ts}"),
        &format!("\"timestamp\":{digits}"),
    );
    let raw = raw.replace(
        body["security"].as_str().unwrap(),
        &sign(&call_id, SECRETS[0], digits),
    );
    let r = h.post_raw(raw.clone()).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(
        r.body["error"].as_str().unwrap().contains("ahead"),
        "{:?}",
        r.body
    );
    let as_float = raw.replace(
        &format!("\"timestamp\":{digits}"),
        "\"timestamp\":9007199254740993.0",
    );
    assert_eq!(h.post_raw(as_float).await.status, 400);
    body.insert("timestamp".into(), 1.into());
    assert_eq!(
        h.post(&body).await.status,
        401,
        "signature covers the timestamp"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_say_what_is_wrong() {
    let h = Harness::start().await;
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not JSON"),
        ("[1,2]".into(), "object"),
        (
            json!({"security": "x", "appkey": APPKEY, "timestamp": 1}).to_string(),
            "callId",
        ),
        (
            json!({"callId": "c", "appkey": APPKEY, "timestamp": 1}).to_string(),
            "security",
        ),
        (
            json!({"callId": "c", "security": "x", "timestamp": 1}).to_string(),
            "appkey",
        ),
        (
            json!({"callId": "c", "security": "x", "appkey": APPKEY}).to_string(),
            "timestamp",
        ),
        (
            json!({"callId": "c", "security": "x", "appkey": APPKEY, "timestamp": "soon"})
                .to_string(),
            "timestamp",
        ),
    ];
    for (body, field) in cases {
        let r = h.post_raw(body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
        let msg = r.body["error"].as_str().unwrap();
        assert!(msg.contains(field), "{body}: {msg}");
        assert!(!msg.contains('\n'));
    }
    // Verified but without a group ID: 400 naming the field.
    let mut body = mute_all("g");
    body.remove("id");
    resign(&mut body, SECRETS[0]);
    let r = h.post(&body).await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().contains("`id`"));
    // A body that is huge and broken still gets a short reply.
    let r = h
        .post_raw(format!("{{\"callId\": {}", "9".repeat(60_000)))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.raw_len < 1000);
    assert_eq!(
        h.metric("mutebridge_webhooks_total{outcome=\"bad_request\"}")
            .await,
        9.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let h = Harness::start_with(|c| c.http.max_body_bytes = 4096).await;
    let mut body = mute_all("g-big");
    body.insert("padding".into(), "x".repeat(5000).into());
    let r = h.post(&body).await;
    assert_eq!(r.status, 413);
    assert!(r.raw_len < 1000);
    // Chunked (no Content-Length) bodies are cut off as well.
    let chunk = " ".repeat(3000);
    let request = format!(
        "POST /webhooks/easemob HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    assert!(raw_http(h.addr, &request).await.starts_with("HTTP/1.1 413"));
    assert_eq!(
        h.metric("mutebridge_webhooks_total{outcome=\"too_large\"}")
            .await,
        2.0
    );
    h.stop().await;
}

/// Sends a hand-written HTTP/1.1 request and returns the response head.
async fn raw_http(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_answered_without_a_second_record() {
    let h = Harness::start().await;
    let body = mute_all("g-dup");
    let first = h.post(&body).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["status"], "published");
    // The sender's retry: same callId.
    let again = h.post(&body).await;
    assert_eq!(
        (again.status, again.body["status"].as_str()),
        (200, Some("duplicate"))
    );
    // A re-send with a new callId but the same content.
    let mut resent = body.clone();
    resent.insert("callId".into(), format!("{APPKEY}_resent").into());
    resign(&mut resent, SECRETS[0]);
    assert_eq!(h.post(&resent).await.body["status"], "duplicate");
    // Concurrent copies: exactly one is published.
    let body = mute_all("g-dup-2");
    let replies = futures_join(&h, &body, 8).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.body["status"] == "published")
            .count(),
        1
    );

    let records = h.consume(10, Duration::from_secs(3)).await;
    assert_eq!(records.len(), 2, "one record per distinct callback");
    assert_eq!(
        h.metric("mutebridge_webhooks_total{outcome=\"duplicate\"}")
            .await,
        9.0
    );
    h.stop().await;
}

async fn futures_join(h: &Harness, body: &serde_json::Map<String, Value>, n: usize) -> Vec<Reply> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let url = h.url("/webhooks/easemob");
        let body = Value::Object(body.clone()).to_string();
        set.spawn(async move {
            let resp = reqwest::Client::new()
                .post(url)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap();
            Reply {
                status,
                raw_len: text.len(),
                body: serde_json::from_str(&text).unwrap(),
                headers,
            }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_window_rejects_stale_callbacks() {
    let h = Harness::start_with(|c| c.easemob.replay_window_seconds = 300).await;
    let mut old = mute_all("g-old");
    old.insert("timestamp".into(), (now_ms() - 3_600_000).into());
    resign(&mut old, SECRETS[0]);
    let r = h.post(&old).await;
    assert_eq!(r.status, 401);
    assert!(r.body["error"].as_str().unwrap().contains("replay"));
    assert_eq!(h.post(&mute_all("g-new")).await.status, 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_operations_are_published_not_dropped() {
    let h = Harness::start().await;
    let body = op_event(
        "g-new-op",
        "PIN_MESSAGE",
        json!({"type": "ADD", "msg_id": "m1"}),
    );
    let r = h.post(&body).await;
    assert_eq!(r.status, 200);
    let records = h.consume(1, Duration::from_secs(10)).await;
    assert_eq!(records[0].value["kind"], "unknown");
    assert_eq!(records[0].headers["event-kind"], "unknown");
    assert_eq!(records[0].value["operation"], "PIN_MESSAGE");
    assert_eq!(records[0].value["attributes"]["payload"]["msg_id"], "m1");
    h.stop().await;
}

/// With the cluster's only broker down, nothing is answered 200 and nothing
/// hangs: 503 with Retry-After within the deadline. Every callback that ever
/// got a 200 is in Kafka once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gives_503_and_never_a_false_200() {
    let h = Harness::start_with(|c| c.http.ack_timeout_ms = 700).await;
    let mut acked = HashSet::new();
    let before = mute_all("g-before");
    // The first record also waits for the idempotent producer's ID; give it
    // more than one 700 ms deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.post(&before).await.status != 200 {
        assert!(Instant::now() < deadline, "the cluster never acknowledged");
    }
    acked.insert(before["callId"].as_str().unwrap().to_owned());

    h.cluster.embedded().unwrap().broker_down(1).unwrap();
    let mut unavailable = 0;
    for i in 0..5 {
        let body = mute_all(&format!("g-down-{i}"));
        let started = Instant::now();
        let r = h.post(&body).await;
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
        match r.status {
            200 => {
                acked.insert(body["callId"].as_str().unwrap().to_owned());
            }
            503 => {
                unavailable += 1;
                assert_eq!(r.headers["retry-after"], "1");
                assert!(
                    r.body["error"].as_str().unwrap().contains("acknowledge"),
                    "{:?}",
                    r.body
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        unavailable, 5,
        "no callback can be acknowledged with the broker down"
    );
    // /readyz notices within a probe interval or two.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.get("/readyz").await.0 != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 200 with the broker down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(h.metric("mutebridge_kafka_ready").await, 0.0);

    h.cluster.embedded().unwrap().broker_up(1).unwrap();
    let after = mute_all("g-after");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = h.post(&after).await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    acked.insert(after["callId"].as_str().unwrap().to_owned());

    // Records queued during the outage may still land (a 503 promises
    // nothing either way), but every 200 must be there.
    let records = h.consume(7, Duration::from_secs(10)).await;
    let in_kafka: HashSet<String> = records
        .iter()
        .map(|r| r.value["id"].as_str().unwrap().to_owned())
        .collect();
    for id in &acked {
        assert!(
            in_kafka.contains(id),
            "{id} was answered 200 but is not in Kafka"
        );
    }
    assert!(
        h.metric("mutebridge_webhooks_total{outcome=\"unavailable\"}")
            .await
            >= 5.0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.get("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "/readyz did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_routes() {
    let h = Harness::start().await;
    assert_eq!(h.post(&mute_all("g-m")).await.status, 200);
    let (status, text) = h.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "mutebridge_webhooks_total{outcome=\"published\"} 1",
        "mutebridge_webhooks_total{outcome=\"unavailable\"} 0",
        "mutebridge_webhook_duration_seconds_count 1",
        "mutebridge_events_published_total{kind=\"mute_all\"} 1",
        "mutebridge_kafka_produce_errors_total 0",
        "mutebridge_build_info{version=",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    // No unbounded label values.
    assert!(!text.contains("g-m"));
    assert!(!text.contains(APPKEY));
    assert_eq!(h.get("/healthz").await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.get("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "/readyz never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Even stray requests get short JSON.
    let (status, body) = h.get("/nope").await;
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    let (status, body) = h.get("/webhooks/easemob").await;
    assert_eq!(status, 405);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    h.stop().await;
}

/// Shutdown finishes in-flight requests: with every ack delayed by the
/// broker, the stop arrives while all requests wait for Kafka; each still
/// gets its 200, and each 200 is in Kafka afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    // The mock broker delays responses one after another on a connection,
    // so a burst's acks take several round trips: allow for them.
    let mut h = Harness::start_with(|c| c.http.ack_timeout_ms = 10_000).await;
    let kafka = h.cluster.embedded().unwrap();
    kafka
        .broker_round_trip_time(1, Duration::from_millis(500))
        .unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        let url = h.url("/webhooks/easemob");
        let body = mute_all(&format!("g-{i}"));
        set.spawn(async move {
            let id = body["callId"].as_str().unwrap().to_owned();
            let r = reqwest::Client::new().post(url).json(&body).send().await;
            (id, r.map(|r| r.status().as_u16()))
        });
    }
    // Every request has arrived: each is published, or waits for its ack.
    let published = "mutebridge_webhooks_total{outcome=\"published\"}";
    assert!(
        wait_until(Duration::from_secs(20), || h.publisher().in_flight() as f64
            + metric_of(&h.metrics, published)
            >= 50.0)
        .await,
        "{} in flight, {} published",
        h.publisher().in_flight(),
        metric_of(&h.metrics, published)
    );
    let stopping = Instant::now();
    h.stop_server().await;
    assert!(
        stopping.elapsed() >= Duration::from_millis(200),
        "the server stopped without waiting for in-flight requests"
    );
    let mut acked = HashSet::new();
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            (id, Ok(200)) => {
                acked.insert(id);
            }
            (id, other) => panic!("{id}: {other:?} for a request in flight at shutdown"),
        }
    }
    assert_eq!(acked.len(), 50);
    h.cluster
        .embedded()
        .unwrap()
        .broker_round_trip_time(1, Duration::ZERO)
        .unwrap();
    let records = h.consume(50, Duration::from_secs(10)).await;
    let in_kafka: HashSet<String> = records
        .iter()
        .map(|r| r.value["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        acked, in_kafka,
        "a 200 given during shutdown is not in Kafka"
    );
}

/// A full producer queue is answered 503 at once instead of growing memory
/// or making the sender wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_producer_queue_gives_immediate_503() {
    let h = Harness::start_with(|c| {
        c.http.ack_timeout_ms = 500;
        c.kafka.client.insert(
            "queue.buffering.max.messages".into(),
            toml::Value::Integer(1),
        );
    })
    .await;
    h.cluster.embedded().unwrap().broker_down(1).unwrap();
    // Fills the queue: waits for its deadline, stays queued behind it.
    assert_eq!(h.post(&mute_all("g-q1")).await.status, 503);
    let started = Instant::now();
    let r = h.post(&mute_all("g-q2")).await;
    assert_eq!(r.status, 503);
    assert!(
        r.body["error"].as_str().unwrap().contains("queue is full"),
        "{:?}",
        r.body
    );
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "waited {:?}",
        started.elapsed()
    );
    assert!(h.metric("mutebridge_kafka_produce_errors_total").await >= 1.0);
    h.cluster.embedded().unwrap().broker_up(1).unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_settings_cannot_be_checked_on_a_cluster_without_describe_configs() {
    // librdkafka's mock cluster does not implement DescribeConfigs: the
    // check says so instead of guessing either way.
    use mutebridge::topics::{Plan, Severity, Topics};
    let h = Harness::start().await;
    let started = Instant::now();
    let topics = Topics::connect(&h.config.kafka, h.cluster.bootstrap_servers()).unwrap();
    let plan = Plan::events(&h.config.kafka, 1);
    let findings = topics.check(&plan).await.unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f.severity == Severity::Unchecked && f.text.contains("DescribeConfigs")),
        "{findings:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(16));
    // Asked once: a second check does not wait for it again.
    let again = Instant::now();
    let observed = topics
        .observe(&h.config.kafka.topic)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(observed.partitions, 12);
    assert!(observed.configs.is_none());
    assert!(again.elapsed() < Duration::from_secs(2));
    h.stop().await;
}
