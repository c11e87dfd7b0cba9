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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::Config;
use crate::event::{Event, HEADER_REPLAY_OF, HEADER_REPLAY_RULE, HEADER_REPLAY_TARGET};
use crate::ingest::publish::event_headers;
use crate::kafka::{self, scan::ScannedRecord};
use crate::time::now_ms;
use crate::worker::dlq::{
    Position, Reason, ReplayMarker, SourceRecord, StoredDeadLetter, DEAD_LETTER_SCHEMA,
    REPLAY_SCHEMA,
};

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

/// A dead letter with where it is and whether it was replayed.
struct Entry {
    at: Position,
    letter: StoredDeadLetter,
    replays: usize,
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

/// Reads the whole dead-letter topic: the dead letters in topic order and
/// how often each was replayed. Records that are neither are reported.
async fn read(config: &Config, bootstrap: &str) -> anyhow::Result<Vec<Entry>> {
    let (kafka, topic) = (config.kafka.clone(), config.worker.dlq_topic.clone());
    let bootstrap = bootstrap.to_owned();
    // Parsed as they arrive, so only the dead letters are held, not the raw
    // records; replay markers can come after their dead letter (another
    // partition), so the counts are joined at the end.
    let (letters, replays, foreign) = tokio::task::spawn_blocking(move || {
        let mut letters: Vec<(Position, StoredDeadLetter)> = Vec::new();
        let mut replays: HashMap<Position, usize> = HashMap::new();
        let mut foreign = 0usize;
        kafka::scan::scan(&kafka, &bootstrap, &topic, |r: ScannedRecord| {
            let at = Position {
                partition: r.partition,
                offset: r.offset,
            };
            let payload = r.payload.unwrap_or_default();
            match r.headers.get("schema").map(String::as_str) {
                Some(REPLAY_SCHEMA) => match serde_json::from_slice::<ReplayMarker>(&payload) {
                    Ok(m) => *replays.entry(m.dead_letter).or_default() += 1,
                    Err(_) => foreign += 1,
                },
                Some(DEAD_LETTER_SCHEMA) => match serde_json::from_slice(&payload) {
                    Ok(letter) => letters.push((at, letter)),
                    Err(_) => foreign += 1,
                },
                _ => foreign += 1,
            }
        })
        .map(|()| (letters, replays, foreign))
    })
    .await??;
    if foreign > 0 {
        eprintln!(
            "note: {foreign} record(s) in the topic are not mutebridge dead letters; skipped"
        );
    }
    Ok(letters
        .into_iter()
        .map(|(at, letter)| Entry {
            replays: replays.get(&at).copied().unwrap_or(0),
            at,
            letter,
        })
        .collect())
}

/// Reads back, from the event topic, the events of dead letters written
/// without them (a letter that would not fit in one message keeps only the
/// event's source position). One the topic no longer holds stays without.
async fn recover_omitted(
    config: &Config,
    bootstrap: &str,
    entries: &mut [Entry],
) -> anyhow::Result<()> {
    let wanted: Vec<(usize, SourceRecord)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.letter.event.is_none() && e.letter.omitted.iter().any(|f| f == "event"))
        .map(|(i, e)| (i, e.letter.source.clone()))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let (kafka, bootstrap) = (config.kafka.clone(), bootstrap.to_owned());
    let found =
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(usize, Option<Event>)>> {
            let reader = kafka::scan::Reader::new(&kafka, &bootstrap)?;
            wanted
                .into_iter()
                .map(|(i, at)| {
                    let value = reader.read_one(&at.topic, at.partition, at.offset)?;
                    Ok((i, value.and_then(|v| serde_json::from_slice(&v).ok())))
                })
                .collect()
        })
        .await??;
    for (i, event) in found {
        if event.is_none() {
            let at = &entries[i].letter.source;
            eprintln!(
                "note: dead letter {}/{} was written without its event and {}/{}@{} no longer holds it",
                entries[i].at.partition, entries[i].at.offset, at.topic, at.partition, at.offset
            );
        }
        entries[i].letter.event = event;
    }
    Ok(())
}

/// `mutebridge dlq list`: a summary by target and reason, then the records.
pub async fn list(config_file: Option<&Path>, filters: &Filters, json: bool) -> anyhow::Result<()> {
    let selection = filters.compile()?;
    let (config, bootstrap) = super::connect(config_file)?;
    let entries: Vec<Entry> = read(&config, &bootstrap)
        .await?
        .into_iter()
        .filter(|e| selection.matches(&e.letter))
        .collect();
    if json {
        for e in &entries {
            let line = serde_json::json!({
                "dlq": {"topic": config.worker.dlq_topic, "partition": e.at.partition, "offset": e.at.offset},
                "replays": e.replays,
                "dead_letter": e.letter,
            });
            println!("{line}");
        }
        return Ok(());
    }
    let mut summary: BTreeMap<(String, &str), (usize, usize)> = BTreeMap::new();
    for e in &entries {
        let key = (
            e.letter.target.clone().unwrap_or_else(|| "-".into()),
            e.letter.reason.as_str(),
        );
        let row = summary.entry(key).or_default();
        row.0 += 1;
        row.1 += usize::from(e.replays > 0);
    }
    println!(
        "{} dead letter(s) in {} matching the filters",
        entries.len(),
        config.worker.dlq_topic
    );
    if entries.is_empty() {
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
    for e in &entries {
        let l = &e.letter;
        let (group, id) = l
            .event
            .as_ref()
            .map_or(("-", "-"), |ev| (ev.group_id.as_str(), ev.id.as_str()));
        println!(
            "{}/{}  {} ago  target={} rule={} action={} reason={} group={} event={}{}\n    {}",
            e.at.partition,
            e.at.offset,
            age(now - l.failed_at_ms),
            l.target.as_deref().unwrap_or("-"),
            l.rule.as_deref().unwrap_or("-"),
            l.action.as_deref().unwrap_or("-"),
            l.reason.as_str(),
            group,
            id,
            match e.replays {
                0 => String::new(),
                n => format!("  (replayed {n}x)"),
            },
            l.error
        );
    }
    Ok(())
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

/// `mutebridge dlq replay`: publishes the selected dead letters' events
/// again. Returns how many were replayed.
pub async fn replay(
    config_file: Option<&Path>,
    filters: &Filters,
    dry_run: bool,
    again: bool,
) -> anyhow::Result<usize> {
    let selection = filters.compile()?;
    let (config, bootstrap) = super::connect(config_file)?;
    let mut entries: Vec<Entry> = read(&config, &bootstrap)
        .await?
        .into_iter()
        .filter(|e| selection.matches(&e.letter))
        .collect();
    recover_omitted(&config, &bootstrap, &mut entries).await?;
    let (mut chosen, mut done_before, mut unreplayable) = (Vec::new(), 0usize, 0usize);
    for e in entries {
        if e.letter.event.is_none() {
            unreplayable += 1;
        } else if e.replays > 0 && !again {
            done_before += 1;
        } else {
            chosen.push(e);
        }
    }
    eprintln!(
        "{} dead letter(s) to replay; {done_before} replayed before (skipped; --again sends them again); {unreplayable} undecodable (no event to replay)",
        chosen.len()
    );
    if dry_run {
        for e in &chosen {
            let ev = e.letter.event.as_ref().expect("chosen letters have events");
            println!(
                "would replay {}/{}: {} {} group {} -> target {}",
                e.at.partition,
                e.at.offset,
                ev.id,
                ev.kind,
                ev.group_id,
                e.letter.target.as_deref().unwrap_or("(all)")
            );
        }
        return Ok(0);
    }
    let producer: FutureProducer = kafka::producer_config(&config.kafka, &bootstrap)
        .create()
        .context("cannot create the Kafka producer (check the [kafka.client] properties)")?;
    let dlq = &config.worker.dlq_topic;
    let total = chosen.len();
    let mut replayed = 0usize;
    for e in chosen {
        let ev = e.letter.event.as_ref().expect("chosen letters have events");
        let origin = format!("{dlq}/{}/{}", e.at.partition, e.at.offset);
        let mut headers = event_headers(ev).insert(Header {
            key: HEADER_REPLAY_OF,
            value: Some(origin.as_str()),
        });
        if let Some(target) = &e.letter.target {
            headers = headers.insert(Header {
                key: HEADER_REPLAY_TARGET,
                value: Some(target.as_str()),
            });
        }
        if let Some(rule) = &e.letter.rule {
            headers = headers.insert(Header {
                key: HEADER_REPLAY_RULE,
                value: Some(rule.as_str()),
            });
        }
        let payload = serde_json::to_vec(ev).expect("events always serialize");
        let record = FutureRecord::to(&config.kafka.topic)
            .key(ev.group_id.as_str())
            .payload(&payload)
            .headers(headers);
        let (partition, offset) = producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(err, _)| err)
            .with_context(|| format!("cannot publish the event of {origin} to {}; {replayed} of {total} replayed so far", config.kafka.topic))?;
        let marker = ReplayMarker {
            schema: REPLAY_SCHEMA.into(),
            dead_letter: e.at,
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
                    .key(ev.group_id.as_str())
                    .payload(&marker)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(err, _)| err)
            .with_context(|| format!("replayed {origin} but could not record it in {dlq}; a later replay would send it again"))?;
        replayed += 1;
        eprintln!(
            "[{replayed}/{total}] {origin} -> {}/{partition}/{offset} ({} {} group {})",
            config.kafka.topic, ev.id, ev.kind, ev.group_id
        );
    }
    let _ = producer.flush(Duration::from_secs(10));
    eprintln!(
        "replayed {replayed} dead letter(s) into {}",
        config.kafka.topic
    );
    Ok(replayed)
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
