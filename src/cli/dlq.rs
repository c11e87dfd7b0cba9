//! `mutebridge dlq list` and `mutebridge dlq replay`: look into the
//! dead-letter topic, and send what failed through the worker again once
//! its cause is fixed (a credential, a mapping, a provider outage).
//!
//! A replay publishes the dead letter's event to the event topic again,
//! keyed by its group like ingest does, so the worker that owns the group
//! applies it in the group's order and under the target's rate limit. The
//! record carries `replay-of` (where the dead letter is) and, when the
//! dead letter names them, `replay-target` / `replay-rule`: the worker then
//! applies only that rule's action on that target, not every action of the
//! event again. For each replayed dead letter a `mutebridge.dead_letter_replay/v1`
//! marker is written to the dead-letter topic, so the next replay with the
//! same filters skips it (unless `--again`) and `dlq list` shows it.
//!
//! Both commands stream the topic (a pass for the replay markers, then one
//! for the summary or the count, then one for the records): what they hold
//! is one entry per replayed dead letter, never the letters. An
//! `undecodable` letter is replayed too once this version can read its
//! record (an event of a newer version, dead-lettered by older workers
//! during an upgrade); it goes to every target, like the original.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::event::{Event, HEADER_REPLAY_OF, HEADER_REPLAY_RULE, HEADER_REPLAY_TARGET};
use crate::ingest::publish::event_headers;
use crate::kafka::{
    self,
    scan::{Reader, ScannedRecord},
};
use crate::time::now_ms;
use crate::worker::dlq::{
    Position, Reason, ReplayMarker, StoredDeadLetter, DEAD_LETTER_SCHEMA, REPLAY_SCHEMA,
};
use crate::worker::engine::decode;

/// `mutebridge dlq list | replay`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// A summary by target and reason, then each dead letter.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        filters: Filters,
        /// One JSON line per dead letter instead of the text report.
        #[arg(long)]
        json: bool,
    },
    /// Publish the selected dead letters' events to the event topic again,
    /// for the worker to re-apply (only the failed target and rule).
    Replay {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        filters: Filters,
        /// Print what would be replayed; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also replay dead letters that were replayed before.
        #[arg(long)]
        again: bool,
    },
}

/// Runs `mutebridge dlq ...`.
pub async fn run(args: DlqArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DlqCommand::List {
            config,
            filters,
            json,
        } => list(config.as_deref(), &filters, json).await?,
        DlqCommand::Replay {
            config,
            filters,
            dry_run,
            again,
        } => {
            replay(config.as_deref(), &filters, dry_run, again).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Which dead letters a command is about.
#[derive(Args, Debug, Clone, Default)]
pub struct Filters {
    /// Only dead letters of this `[targets.NAME]`.
    #[arg(long)]
    pub target: Option<String>,
    /// Only this reason: permanent_error, retries_exhausted, rate_limited, unmapped, undecodable.
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead letters written since then: a duration ago (`90s`, `30m`,
    /// `12h`, `7d`) or milliseconds since the epoch.
    #[arg(long)]
    pub since: Option<String>,
}

struct Selection {
    reason: Option<Reason>,
    since_ms: Option<i64>,
    target: Option<String>,
}

impl Filters {
    fn compile(&self) -> anyhow::Result<Selection> {
        let reason = match &self.reason {
            None => None,
            Some(r) => Some(Reason::parse(r).with_context(|| {
                let known: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
                format!(
                    "--reason {r}: not a reason; use one of {}",
                    known.join(", ")
                )
            })?),
        };
        let since_ms = self.since.as_deref().map(parse_since).transpose()?;
        Ok(Selection {
            reason,
            since_ms,
            target: self.target.clone(),
        })
    }
}

impl Selection {
    fn matches(&self, l: &StoredDeadLetter) -> bool {
        self.reason.is_none_or(|r| r == l.reason)
            && self.since_ms.is_none_or(|t| l.failed_at_ms >= t)
            && self
                .target
                .as_deref()
                .is_none_or(|t| l.target.as_deref() == Some(t))
    }
}

/// `90s`, `30m`, `12h`, `7d` ago, or milliseconds since the epoch.
pub(crate) fn parse_since(text: &str) -> anyhow::Result<i64> {
    parse_since_at(text, now_ms())
}

/// [`parse_since`] with the clock passed in. Refuses what is not one of
/// those forms (any character, not only ASCII, in the unit's place) and
/// a duration reaching before the epoch.
fn parse_since_at(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    let bad = || {
        anyhow::anyhow!(
            "--since {text}: expected a duration ago (90s, 30m, 12h, 7d) or milliseconds since the epoch"
        )
    };
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let (unit_seconds, number) = [("s", 1i64), ("m", 60), ("h", 3600), ("d", 86_400)]
        .into_iter()
        .find_map(|(unit, seconds)| text.strip_suffix(unit).map(|n| (seconds, n)))
        .ok_or_else(bad)?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let since = number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_seconds))
        .and_then(|s| s.checked_mul(1000))
        .and_then(|ms| now_ms.checked_sub(ms))
        .filter(|since| *since >= 0)
        .ok_or_else(|| {
            anyhow::anyhow!("--since {text}: reaches before 1970; give a shorter duration")
        })?;
    Ok(since)
}

/// One record of the dead-letter topic, as a pass reads it.
enum Item {
    Letter {
        at: Position,
        /// The record's key: the key of the event it is about.
        key: Option<Vec<u8>>,
        letter: Box<StoredDeadLetter>,
    },
    Marker(ReplayMarker),
    /// Neither (written by something else).
    Foreign,
}

impl Item {
    fn of(r: ScannedRecord) -> Item {
        let at = Position {
            partition: r.partition,
            offset: r.offset,
        };
        let payload = r.payload.unwrap_or_default();
        match r.headers.get("schema").map(String::as_str) {
            Some(REPLAY_SCHEMA) => {
                serde_json::from_slice(&payload).map_or(Item::Foreign, Item::Marker)
            }
            Some(DEAD_LETTER_SCHEMA) => match serde_json::from_slice(&payload) {
                Ok(letter) => Item::Letter {
                    at,
                    key: r.key,
                    letter: Box::new(letter),
                },
                Err(_) => Item::Foreign,
            },
            _ => Item::Foreign,
        }
    }
}

/// Reads the dead-letter topic once, on a blocking thread, handing each
/// record to `each` as it arrives: nothing of the topic is held but what
/// `each` keeps.
async fn pass<T: Send + 'static>(
    config: &Config,
    bootstrap: &str,
    mut each: impl FnMut(Item, &Reader) + Send + 'static,
    done: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (kafka, topic) = (config.kafka.clone(), config.worker.dlq_topic.clone());
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        // For events a letter was written without (read back from their
        // source offset).
        let reader = Reader::new(&kafka, &bootstrap)?;
        kafka::scan::scan(&kafka, &bootstrap, &topic, |r| each(Item::of(r), &reader))?;
        Ok(done())
    })
    .await?
}

/// How often each dead letter was replayed (replay markers can come after
/// their dead letter), and how many records are not mutebridge's: one
/// entry per replayed dead letter is what the commands hold.
async fn replay_counts(
    config: &Config,
    bootstrap: &str,
) -> anyhow::Result<HashMap<Position, usize>> {
    let counts = Arc::new(Mutex::new((HashMap::new(), 0usize)));
    let (c, d) = (counts.clone(), counts.clone());
    let (replays, foreign) = pass(
        config,
        bootstrap,
        move |item, _| {
            let mut c = c.lock().expect("counts lock");
            match item {
                Item::Marker(m) => *c.0.entry(m.dead_letter).or_default() += 1,
                Item::Foreign => c.1 += 1,
                Item::Letter { .. } => {}
            }
        },
        move || std::mem::take(&mut *d.lock().expect("counts lock")),
    )
    .await?;
    if foreign > 0 {
        eprintln!(
            "note: {foreign} record(s) in the topic are not mutebridge dead letters; skipped"
        );
    }
    Ok(replays)
}

/// `mutebridge dlq list`: a summary by target and reason, then the records.
/// Reads the topic three times (replays, summary, records), holding only
/// the replay counts and the summary.
async fn list(config_file: Option<&Path>, filters: &Filters, json: bool) -> anyhow::Result<()> {
    let selection = Arc::new(filters.compile()?);
    let (config, bootstrap) = super::connect(config_file)?;
    let replays = Arc::new(replay_counts(&config, &bootstrap).await?);
    let dlq = config.worker.dlq_topic.clone();
    if json {
        let (sel, replays) = (selection.clone(), replays.clone());
        return pass(
            &config,
            &bootstrap,
            move |item, _| {
                if let Item::Letter { at, letter, .. } = item {
                    if sel.matches(&letter) {
                        let line = serde_json::json!({
                            "dlq": {"topic": dlq, "partition": at.partition, "offset": at.offset},
                            "replays": replays.get(&at).copied().unwrap_or(0),
                            "dead_letter": letter,
                        });
                        println!("{line}");
                    }
                }
            },
            || (),
        )
        .await;
    }
    // By target and reason: how many, how many replayed.
    type Summary = BTreeMap<(String, &'static str), (usize, usize)>;
    let summary: Arc<Mutex<Summary>> = Arc::default();
    let (sel, rep, sum) = (selection.clone(), replays.clone(), summary.clone());
    pass(
        &config,
        &bootstrap,
        move |item, _| {
            if let Item::Letter { at, letter, .. } = item {
                if sel.matches(&letter) {
                    let key = (
                        letter.target.clone().unwrap_or_else(|| "-".into()),
                        letter.reason.as_str(),
                    );
                    let mut sum = sum.lock().expect("summary lock");
                    let row = sum.entry(key).or_default();
                    row.0 += 1;
                    row.1 += usize::from(rep.get(&at).is_some());
                }
            }
        },
        || (),
    )
    .await?;
    let summary = std::mem::take(&mut *summary.lock().expect("summary lock"));
    let total: usize = summary.values().map(|(n, _)| n).sum();
    println!(
        "{total} dead letter(s) in {} matching the filters",
        config.worker.dlq_topic
    );
    if total == 0 {
        return Ok(());
    }
    println!(
        "\n{:<20} {:<18} {:>8} {:>9}",
        "target", "reason", "count", "replayed"
    );
    for ((target, reason), (count, replayed)) in &summary {
        println!("{target:<20} {reason:<18} {count:>8} {replayed:>9}");
    }
    println!();
    let now = now_ms();
    pass(
        &config,
        &bootstrap,
        move |item, _| {
            if let Item::Letter { at, letter, .. } = item {
                if selection.matches(&letter) {
                    print_letter(at, &letter, replays.get(&at).copied().unwrap_or(0), now);
                }
            }
        },
        || (),
    )
    .await
}

/// One dead letter as `dlq list` shows it.
fn print_letter(at: Position, l: &StoredDeadLetter, replays: usize, now: i64) {
    let (group, id) = l
        .event
        .as_ref()
        .map_or(("-", "-"), |ev| (ev.group_id.as_str(), ev.id.as_str()));
    println!(
        "{}/{}  {} ago  target={} rule={} action={} reason={} group={} event={}{}\n    {}",
        at.partition,
        at.offset,
        age(now - l.failed_at_ms),
        l.target.as_deref().unwrap_or("-"),
        l.rule.as_deref().unwrap_or("-"),
        l.action.as_deref().unwrap_or("-"),
        l.reason.as_str(),
        group,
        id,
        match replays {
            0 => String::new(),
            n => format!("  (replayed {n}x)"),
        },
        l.error
    );
    for m in &l.missing_state {
        let state = match (m.muted, m.until_ms) {
            (false, _) => "unmuted".to_owned(),
            (true, None) => "muted".to_owned(),
            (true, Some(until)) => format!("muted until {until} ms"),
        };
        println!(
            "    the target misses {} {state} (set by event {} at {} ms)",
            m.dimension, m.set_by, m.at_ms
        );
    }
}

fn age(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// What a replay publishes for one dead letter.
struct Replay {
    at: Position,
    /// The event topic record: key and value.
    key: Vec<u8>,
    payload: Vec<u8>,
    event: Event,
    target: Option<String>,
    rule: Option<String>,
}

/// What can be replayed of a dead letter: its event; for one written
/// without it, the event read back from its source offset; for an
/// `undecodable` one, its record, once this version can read it (a newer
/// version's event, dead-lettered by older workers during an upgrade).
/// `None` when there is no event (or none this version understands).
fn replayable(
    at: Position,
    key: Option<Vec<u8>>,
    l: &StoredDeadLetter,
    reader: &Reader,
) -> Option<Replay> {
    let from_source = || {
        let s = &l.source;
        let value = reader.read_one(&s.topic, s.partition, s.offset);
        match value {
            Ok(Some(v)) => Some(v),
            Ok(None) => {
                eprintln!(
                    "note: dead letter {}/{} was written without its event and {}/{}@{} no longer holds it",
                    at.partition, at.offset, s.topic, s.partition, s.offset
                );
                None
            }
            Err(e) => {
                eprintln!(
                    "note: dead letter {}/{}: cannot read its event back from {}/{}@{}: {e:#}",
                    at.partition, at.offset, s.topic, s.partition, s.offset
                );
                None
            }
        }
    };
    let omitted = |field: &str| l.omitted.iter().any(|f| f == field);
    let (payload, event) = match (&l.event, l.reason) {
        (Some(e), _) => (
            serde_json::to_vec(e).expect("events always serialize"),
            e.clone(),
        ),
        (None, Reason::Undecodable) => {
            let raw = match &l.payload {
                Some(p) => p.clone().into_bytes(),
                None if omitted("payload") => from_source()?,
                None => return None,
            };
            let event = decode(Some(&raw)).ok()?;
            (raw, event)
        }
        (None, _) if omitted("event") => {
            let raw = from_source()?;
            let event: Event = serde_json::from_slice(&raw).ok()?;
            (
                serde_json::to_vec(&event).expect("events always serialize"),
                event,
            )
        }
        (None, _) => return None,
    };
    let key = key
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| event.group_id.clone().into_bytes());
    Some(Replay {
        at,
        key,
        payload,
        event,
        target: l.target.clone(),
        rule: l.rule.clone(),
    })
}

/// How a replay's letters were sorted.
#[derive(Default)]
struct Tally {
    chosen: usize,
    done_before: usize,
    unreplayable: usize,
}

/// `mutebridge dlq replay`: publishes the selected dead letters' events
/// again, streaming: the topic is read once to count and once to publish
/// as it reads. Returns how many were replayed.
async fn replay(
    config_file: Option<&Path>,
    filters: &Filters,
    dry_run: bool,
    again: bool,
) -> anyhow::Result<usize> {
    let selection = Arc::new(filters.compile()?);
    let (config, bootstrap) = super::connect(config_file)?;
    let replays = Arc::new(replay_counts(&config, &bootstrap).await?);
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let (sel, rep, t) = (selection.clone(), replays.clone(), tally.clone());
    pass(
        &config,
        &bootstrap,
        move |item, reader| {
            let Item::Letter { at, key, letter } = item else {
                return;
            };
            if !sel.matches(&letter) {
                return;
            }
            let mut t = t.lock().expect("tally lock");
            if rep.contains_key(&at) && !again {
                t.done_before += 1;
            } else if replayable(at, key, &letter, reader).is_none() {
                t.unreplayable += 1;
            } else {
                t.chosen += 1;
            }
        },
        || (),
    )
    .await?;
    let Tally {
        chosen,
        done_before,
        unreplayable,
    } = std::mem::take(&mut *tally.lock().expect("tally lock"));
    eprintln!(
        "{chosen} dead letter(s) to replay; {done_before} replayed before (skipped; --again sends them again); {unreplayable} undecodable (no event this version can read to replay)"
    );
    if chosen == 0 {
        return Ok(0);
    }
    // The scan hands the letters to replay over a small queue: only a few
    // are held at a time.
    let (tx, mut rx) = mpsc::channel::<Replay>(16);
    let scan = {
        let (config, bootstrap) = (config.clone(), bootstrap.clone());
        tokio::spawn(async move {
            pass(
                &config,
                &bootstrap,
                move |item, reader| {
                    let Item::Letter { at, key, letter } = item else {
                        return;
                    };
                    if !selection.matches(&letter) || (replays.contains_key(&at) && !again) {
                        return;
                    }
                    if let Some(r) = replayable(at, key, &letter, reader) {
                        // The publisher stopped (an error): read on, send nothing.
                        let _ = tx.blocking_send(r);
                    }
                },
                || (),
            )
            .await
        })
    };
    let mut publisher = Publish::new(&config, &bootstrap, dry_run, chosen)?;
    let mut failed = None;
    while let Some(r) = rx.recv().await {
        if failed.is_none() {
            if let Err(e) = publisher.one(&r).await {
                failed = Some(e);
                rx.close();
            }
        }
    }
    scan.await??;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(publisher.finish())
}

/// Publishes replays (or, for a dry run, prints them).
struct Publish<'c> {
    config: &'c Config,
    producer: Option<FutureProducer>,
    total: usize,
    replayed: usize,
}

impl<'c> Publish<'c> {
    fn new(
        config: &'c Config,
        bootstrap: &str,
        dry_run: bool,
        total: usize,
    ) -> anyhow::Result<Publish<'c>> {
        let producer = if dry_run {
            None
        } else {
            Some(
                kafka::producer_config(&config.kafka, bootstrap)
                    .create()
                    .context(
                        "cannot create the Kafka producer (check the [kafka.client] properties)",
                    )?,
            )
        };
        Ok(Publish {
            config,
            producer,
            total,
            replayed: 0,
        })
    }

    async fn one(&mut self, r: &Replay) -> anyhow::Result<()> {
        let dlq = &self.config.worker.dlq_topic;
        let topic = &self.config.kafka.topic;
        let ev = &r.event;
        let origin = format!("{dlq}/{}/{}", r.at.partition, r.at.offset);
        let Some(producer) = &self.producer else {
            println!(
                "would replay {}/{}: {} {} group {} -> target {}",
                r.at.partition,
                r.at.offset,
                ev.id,
                ev.kind,
                ev.group_id,
                r.target.as_deref().unwrap_or("(all)")
            );
            return Ok(());
        };
        let mut headers = event_headers(ev).insert(Header {
            key: HEADER_REPLAY_OF,
            value: Some(origin.as_str()),
        });
        if let Some(target) = &r.target {
            headers = headers.insert(Header {
                key: HEADER_REPLAY_TARGET,
                value: Some(target.as_str()),
            });
        }
        if let Some(rule) = &r.rule {
            headers = headers.insert(Header {
                key: HEADER_REPLAY_RULE,
                value: Some(rule.as_str()),
            });
        }
        let record = FutureRecord::to(topic)
            .key(&r.key)
            .payload(&r.payload)
            .headers(headers);
        let (replayed, total) = (self.replayed, self.total);
        let (partition, offset) = producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(err, _)| err)
            .with_context(|| format!("cannot publish the event of {origin} to {topic}; {replayed} of {total} replayed so far"))?;
        let marker = ReplayMarker {
            schema: REPLAY_SCHEMA.into(),
            dead_letter: r.at,
            replayed_to: Position { partition, offset },
            replayed_at_ms: now_ms(),
        };
        let marker = serde_json::to_vec(&marker).expect("markers always serialize");
        let headers = OwnedHeaders::new().insert(Header {
            key: "schema",
            value: Some(REPLAY_SCHEMA),
        });
        producer
            .send(
                FutureRecord::to(dlq)
                    .key(&r.key)
                    .payload(&marker)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(err, _)| err)
            .with_context(|| format!("replayed {origin} but could not record it in {dlq}; a later replay would send it again"))?;
        self.replayed += 1;
        eprintln!(
            "[{}/{total}] {origin} -> {topic}/{partition}/{offset} ({} {} group {})",
            self.replayed, ev.id, ev.kind, ev.group_id
        );
        Ok(())
    }

    /// How many were replayed (0 for a dry run).
    fn finish(self) -> usize {
        if let Some(p) = &self.producer {
            let _ = p.flush(Duration::from_secs(10));
            eprintln!(
                "replayed {} dead letter(s) into {}",
                self.replayed, self.config.kafka.topic
            );
        }
        self.replayed
    }
}

#[cfg(test)]
mod tests {
    use super::parse_since_at;

    #[test]
    fn since_takes_durations_and_epoch_ms_and_refuses_the_rest() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_since_at("90s", now).unwrap(), now - 90_000);
        assert_eq!(parse_since_at("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(
            parse_since_at("1700000000000", now).unwrap(),
            1_700_000_000_000
        );
        for bad in [
            "5é",
            "é",
            "d",
            "-5m",
            "+5m",
            "5 m",
            "5w",
            "",
            "300000000000000d",
            "30000d",
        ] {
            assert!(parse_since_at(bad, now).is_err(), "{bad:?}");
        }
    }
}
