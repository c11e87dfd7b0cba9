//! What the worker's unit tests share: Kafka in-process (librdkafka's mock
//! cluster, over loopback sockets), stores and a target engine on it, and
//! a RongCloud stand-in that answers on a loopback socket as the provider
//! does (`{"code":200}`, or the error code it is told to give).

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::breaker::BreakerConfig;
use super::config::RetryConfig;
use super::deliver::{DeliverMetrics, Deliverer};
use super::dlq::DeadLetters;
use super::engine::{TargetEngine, TargetState};
use super::lease::Lease;
use super::metrics::WorkerMetrics;
use super::reader::Newest;
use super::scheduler::{Job, Work};
use super::store::{Record, Store, StoreMetrics};
use crate::config::{Checked, Config};
use crate::event::{Event, EventKind, Format, Mute, Scope, Source, SCHEMA_V1};
use crate::kafka::client::Watched;
use crate::kafka::config::KafkaConfig;
use crate::kafka::{producer_config, EmbeddedKafka};
use crate::targets::Target;

pub const EVENTS: &str = "events";
pub const STATE: &str = "state";
pub const DLQ: &str = "dlq";
pub const APPKEY: &str = "org#app";
pub const ROOM: &str = "room-1";

/// A mock cluster with the event, state and dead-letter topics (two
/// partitions each).
pub fn kafka() -> EmbeddedKafka {
    let kafka = EmbeddedKafka::start(1).expect("mock cluster");
    for topic in [EVENTS, STATE, DLQ] {
        kafka.create_topic(topic, 2).expect("topic");
    }
    kafka
}

/// A store on `kafka`'s state topic, records of at most
/// `max_message_bytes`.
pub fn store<R: Record>(
    kafka: &EmbeddedKafka,
    metrics: StoreMetrics,
    max_message_bytes: usize,
) -> Store<R> {
    let config = producer_config(&KafkaConfig::default(), kafka.bootstrap_servers());
    let producer = Watched::create(config, "state").expect("producer").producer;
    let (loaded, _) = mpsc::unbounded_channel();
    Store::new(
        producer,
        STATE,
        7,
        max_message_bytes,
        metrics,
        loaded,
        Lease::new(),
    )
}

/// A RongCloud stand-in: each call (path, form body) is kept and answered
/// with HTTP 200 and the code `answer` gives it.
pub struct RongCloud {
    pub url: String,
    calls: Arc<Mutex<Vec<(String, String)>>>,
}

impl RongCloud {
    pub async fn start(answer: fn(&str, &str) -> u32) -> RongCloud {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let calls: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let kept = calls.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, kept.clone(), answer));
            }
        });
        RongCloud { url, calls }
    }

    /// The calls so far: path and form body.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().expect("calls lock").clone()
    }
}

/// Answers the requests of one keep-alive connection.
async fn serve(
    mut socket: TcpStream,
    calls: Arc<Mutex<Vec<(String, String)>>>,
    answer: fn(&str, &str) -> u32,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        buf.drain(..head_end + length);
        let code = answer(&path, &body);
        calls.lock().expect("calls lock").push((path, body));
        let reply = format!(r#"{{"code":{code},"errorMessage":"stand-in answer {code}"}}"#);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A RongCloud target `rc` at `url` that the chatroom mutes go to, with
/// its records on `kafka`, gags capped at `max_mute_seconds` and renewed
/// `renew_ahead_seconds` before they end.
pub fn engine(
    kafka: &EmbeddedKafka,
    url: &str,
    max_mute_seconds: u64,
    renew_ahead_seconds: u64,
) -> TargetEngine {
    engine_with_lease(
        kafka,
        url,
        max_mute_seconds,
        renew_ahead_seconds,
        Lease::new(),
    )
}

/// [`engine`] whose calls wait on `lease` (see [`super::lease`]).
pub fn engine_with_lease(
    kafka: &EmbeddedKafka,
    url: &str,
    max_mute_seconds: u64,
    renew_ahead_seconds: u64,
    lease: Lease,
) -> TargetEngine {
    let toml = format!(
        r#"
[targets.rc]
kind = "rongcloud"
base_urls = ["{url}"]
app_key = "k"
app_secret = "s"
max_mute_seconds = {max_mute_seconds}
renew_ahead_seconds = {renew_ahead_seconds}

[[policy.rules]]
name = "chatroom mutes"
when = {{ scope = "chatroom", kinds = ["mute_all", "unmute_all", "member_muted", "member_unmuted"] }}
then = [{{ target = "rc", chatroom = "{{group_id}}" }}]
"#
    );
    let config = Config::parse_with_env(&toml, Path::new("test.toml"), &|_| None).expect("config");
    let checked = Checked::new(config).expect("checked config");
    let cfg = &checked.targets["rc"];
    let metrics = WorkerMetrics::new();
    let deliver_metrics = DeliverMetrics {
        duration: metrics.events.action_duration.with_label_values(&["rc"]),
        retries: metrics.events.action_retries.with_label_values(&["rc"]),
    };
    let deliverer = Deliverer::new(
        "rc",
        Target::new(cfg),
        reqwest::Client::new(),
        RetryConfig::default(),
        None,
        BreakerConfig::default(),
        deliver_metrics,
        lease,
    );
    let bootstrap = kafka.bootstrap_servers();
    TargetEngine {
        name: Arc::from("rc"),
        policy: checked.policy().only("rc"),
        deliverer,
        dlq: DeadLetters::new(&KafkaConfig::default(), bootstrap, DLQ).expect("dead letters"),
        metrics: metrics.target("rc"),
        topic: EVENTS.into(),
        state: Some(TargetState {
            store: store(kafka, metrics.pipeline("rc").store, 1_000_000),
            newest: Arc::new(Newest::default()),
        }),
        renew_ahead_ms: renew_ahead_seconds as i64 * 1000,
    }
}

/// A chatroom event of `ROOM`.
pub fn event(kind: EventKind, id: &str, at_ms: i64, members: &[&str]) -> Event {
    Event {
        schema: SCHEMA_V1.into(),
        id: id.into(),
        source: Source::Easemob,
        format: Format::GroupOpEvent,
        appkey: APPKEY.into(),
        scope: Scope::Chatroom,
        group_id: ROOM.into(),
        kind,
        operation: "x".into(),
        subtype: None,
        operator: None,
        members: members.iter().map(|m| m.to_string()).collect(),
        mute: match kind {
            EventKind::MuteAll => Some(Mute::All { all: true }),
            EventKind::UnmuteAll => Some(Mute::All { all: false }),
            EventKind::MemberMuted => Some(Mute::Until { until_ms: None }),
            _ => None,
        },
        occurred_at_ms: at_ms,
        received_at_ms: at_ms,
        attributes: Default::default(),
    }
}

/// The job of `event` consumed at `offset` of partition 0.
pub fn record_job(event: &Event, offset: i64) -> Job {
    Job {
        partition: 0,
        generation: 1,
        key: event.group_id.as_bytes().to_vec(),
        work: Work::Record {
            offset,
            payload: Some(serde_json::to_vec(event).expect("event JSON")),
            replay: None,
        },
    }
}
