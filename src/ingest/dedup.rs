//! Duplicate suppression for callbacks: bounded in time and in memory.
//!
//! Easemob retries a non-200 once, immediately, and support can re-send
//! stored callbacks later. A callback is remembered by `callId` (and, when
//! enabled, by a fingerprint of its content) from the moment its publish
//! starts:
//! - while the first copy's publish is in flight, a duplicate waits for the
//!   same outcome instead of publishing again;
//! - once Kafka acknowledged it, duplicates get 200 without a second record;
//! - if the publish failed, the entry is dropped so a retry publishes anew.
//!
//! Keys are 16-byte digests, so memory per entry is fixed whatever the
//! sender puts in `callId`. Duplicates that arrive while the first copy is in
//! flight are rare (the sender retries only after an answer), so they poll
//! the entry instead of every request paying for a notification channel.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use crate::event::{Event, Mute};

type Key = [u8; 16];

/// Hashes a [`Key`] by taking 8 of its bytes: keys are MD5 digests, already
/// uniform, so SipHash over them again buys nothing (and costs about a
/// thousand instructions per callback: each is looked up and inserted
/// twice, by callId and by content). Only verified callbacks reach the
/// table, so aiming collisions at it takes the callback secret.
#[derive(Clone, Copy, Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 16]` hashes as its length, then its bytes.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

type KeyMap<V> = HashMap<Key, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// What the cache knows about a callback.
pub enum Claim {
    /// First sighting: publish it, then resolve the ticket.
    New(Ticket),
    /// Already acknowledged by Kafka.
    Published,
    /// Another request is publishing it; wait for its outcome.
    InFlight(Pending),
}

/// Another request's publish, awaited by a duplicate.
pub struct Pending {
    dedup: Dedup,
    key: Key,
    claim: u64,
}

/// How often a waiting duplicate looks at the entry again.
const POLL: Duration = Duration::from_millis(5);

impl Pending {
    /// `true` once the original was acknowledged, `false` if it failed or
    /// `deadline` passed first.
    pub async fn published_within(self, deadline: Duration) -> bool {
        let give_up = Instant::now() + deadline;
        loop {
            match self.dedup.lock().entries.get(&self.key) {
                Some(Entry::Published(_)) => return true,
                Some(Entry::InFlight(claim)) if *claim == self.claim => {}
                // Failed and forgotten, or claimed again by a later retry.
                _ => return false,
            }
            if Instant::now() >= give_up {
                return false;
            }
            tokio::time::sleep(POLL.min(give_up.saturating_duration_since(Instant::now()))).await;
        }
    }
}

enum Entry {
    /// Being published under this claim number.
    InFlight(u64),
    Published(Instant),
}

struct Inner {
    entries: KeyMap<Entry>,
    /// Published keys oldest first, for expiry and the capacity bound.
    order: VecDeque<(Instant, Key)>,
    next_claim: u64,
}

/// The cache, shared by all requests of one ingest instance.
#[derive(Clone)]
pub struct Dedup {
    inner: Arc<Mutex<Inner>>,
    window: Duration,
    capacity: usize,
    by_content: bool,
}

/// The right (and duty) to publish a callback. Dropping it unresolved counts
/// as a failed publish, so an abandoned request never blocks its retry.
pub struct Ticket {
    dedup: Dedup,
    keys: Vec<Key>,
    resolved: bool,
}

impl Ticket {
    /// Records the outcome: remembered as published, or forgotten.
    pub fn resolve(mut self, published: bool) {
        self.finish(published);
    }

    fn finish(&mut self, published: bool) {
        if self.resolved {
            return;
        }
        self.resolved = true;
        self.dedup.complete(&self.keys, published);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.finish(false);
    }
}

fn digest(parts: &[&[u8]]) -> Key {
    let mut md5 = Md5::new();
    for part in parts {
        md5.update((part.len() as u64).to_le_bytes());
        md5.update(part);
    }
    md5.finalize().into()
}

/// A fingerprint of what the callback says happened, independent of `callId`.
fn content_key(e: &Event) -> Key {
    let mute: [u8; 9] = match e.mute {
        Some(Mute::All { all }) => [1, all as u8, 0, 0, 0, 0, 0, 0, 0],
        Some(Mute::Until { until_ms }) => {
            let mut m = [2u8; 9];
            m[1..].copy_from_slice(&until_ms.unwrap_or(-1).to_le_bytes());
            m
        }
        None => [0; 9],
    };
    let mut parts: Vec<&[u8]> = vec![
        b"content",
        e.appkey.as_bytes(),
        e.scope.as_str().as_bytes(),
        e.group_id.as_bytes(),
        e.operation.as_bytes(),
        e.subtype.as_deref().unwrap_or("").as_bytes(),
        e.operator.as_deref().unwrap_or("").as_bytes(),
        &mute,
    ];
    let ts = e.occurred_at_ms.to_le_bytes();
    parts.push(&ts);
    parts.extend(e.members.iter().map(|m| m.as_bytes()));
    // The kind-specific extras too (announcement text, info snapshot, raw
    // payload of unknown kinds): two different updates in the same
    // millisecond must not look alike. The map's keys are sorted, so this
    // serialization is canonical.
    // (Most callbacks have none: no serialization, no allocation then.)
    let attributes = if e.attributes.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(&e.attributes).expect("a JSON map serializes")
    };
    parts.push(&attributes);
    digest(&parts)
}

impl Dedup {
    pub fn new(window: Duration, capacity: usize, by_content: bool) -> Dedup {
        Dedup {
            inner: Arc::new(Mutex::new(Inner {
                entries: KeyMap::default(),
                order: VecDeque::new(),
                next_claim: 0,
            })),
            window,
            capacity: capacity.max(1),
            by_content,
        }
    }

    /// Keys recorded per callback: its callId, and its content if enabled.
    fn keys_per_callback(&self) -> usize {
        if self.by_content {
            2
        } else {
            1
        }
    }

    /// Number of remembered callbacks (published or in flight).
    pub fn len(&self) -> usize {
        self.lock().entries.len() / self.keys_per_callback()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way that matters here; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks the event up under its `callId` and content, and claims it if new.
    pub fn claim(&self, event: &Event) -> Claim {
        let mut keys = vec![digest(&[
            b"call",
            event.appkey.as_bytes(),
            event.id.as_bytes(),
        ])];
        if self.by_content {
            keys.push(content_key(event));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        for key in &keys {
            match inner.entries.get(key) {
                Some(Entry::Published(_)) => return Claim::Published,
                Some(Entry::InFlight(claim)) => {
                    return Claim::InFlight(Pending {
                        dedup: self.clone(),
                        key: *key,
                        claim: *claim,
                    })
                }
                None => {}
            }
        }
        inner.next_claim += 1;
        let claim = inner.next_claim;
        for key in &keys {
            inner.entries.insert(*key, Entry::InFlight(claim));
        }
        drop(inner);
        Claim::New(Ticket {
            dedup: self.clone(),
            keys,
            resolved: false,
        })
    }

    fn complete(&self, keys: &[Key], published: bool) {
        let now = Instant::now();
        let mut inner = self.lock();
        for key in keys {
            if published {
                inner.entries.insert(*key, Entry::Published(now));
                inner.order.push_back((now, *key));
            } else {
                inner.entries.remove(key);
            }
        }
        while inner.order.len() > self.capacity * self.keys_per_callback() {
            if let Some((at, key)) = inner.order.pop_front() {
                remove_if_published_at(&mut inner.entries, &key, at);
            }
        }
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some(&(at, key)) = inner.order.front() {
            if now.duration_since(at) < self.window {
                break;
            }
            inner.order.pop_front();
            remove_if_published_at(&mut inner.entries, &key, at);
        }
    }
}

/// Removes `key` only if it is still the publication recorded at `at` (the
/// same callback may have been forgotten and published again since).
fn remove_if_published_at(entries: &mut KeyMap<Entry>, key: &Key, at: Instant) {
    if matches!(entries.get(key), Some(Entry::Published(t)) if *t == at) {
        entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, Format, Scope, Source, SCHEMA_V1};

    fn event(id: &str, ts: i64) -> Event {
        Event {
            schema: SCHEMA_V1.into(),
            id: id.into(),
            source: Source::Easemob,
            format: Format::GroupOpEvent,
            appkey: "a#b".into(),
            scope: Scope::Group,
            group_id: "g".into(),
            kind: EventKind::MuteAll,
            operation: "UPDATE".into(),
            subtype: Some("MUTE".into()),
            operator: None,
            members: vec![],
            mute: Some(Mute::All { all: true }),
            occurred_at_ms: ts,
            received_at_ms: 0,
            attributes: Default::default(),
        }
    }

    fn new_ticket(d: &Dedup, e: &Event) -> Ticket {
        match d.claim(e) {
            Claim::New(t) => t,
            _ => panic!("expected a new claim"),
        }
    }

    #[tokio::test]
    async fn published_then_duplicate() {
        let d = Dedup::new(Duration::from_secs(60), 100, true);
        new_ticket(&d, &event("1", 1)).resolve(true);
        assert!(matches!(d.claim(&event("1", 1)), Claim::Published));
        // Same content, new callId: a re-send.
        assert!(matches!(d.claim(&event("2", 1)), Claim::Published));
        // New content, new callId: new.
        assert!(matches!(d.claim(&event("3", 2)), Claim::New(_)));
    }

    /// Memory per remembered callback, for the README:
    /// `cargo test --release --lib dedup::tests::memory_per_callback -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn memory_per_callback() {
        fn rss_kib() -> i64 {
            let s = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        let n = 1_000_000usize;
        let d = Dedup::new(Duration::from_secs(3600), n, true);
        let mut e = event("x", 0);
        let before = rss_kib();
        for i in 0..n {
            e.id = format!("a#b_{i}");
            e.occurred_at_ms = i as i64;
            if let Claim::New(t) = d.claim(&e) {
                t.resolve(true)
            }
        }
        let after = rss_kib();
        eprintln!(
            "{} callbacks: {} bytes each",
            d.len(),
            (after - before) * 1024 / n as i64
        );
    }

    #[tokio::test]
    async fn different_extras_are_different_content() {
        let d = Dedup::new(Duration::from_secs(60), 100, true);
        let mut a = event("1", 1);
        a.attributes.insert("announcement".into(), "first".into());
        new_ticket(&d, &a).resolve(true);
        let mut b = event("2", 1);
        b.attributes.insert("announcement".into(), "second".into());
        assert!(matches!(d.claim(&b), Claim::New(_)));
    }

    #[tokio::test]
    async fn content_check_can_be_disabled() {
        let d = Dedup::new(Duration::from_secs(60), 100, false);
        new_ticket(&d, &event("1", 1)).resolve(true);
        assert!(matches!(d.claim(&event("2", 1)), Claim::New(_)));
    }

    #[tokio::test]
    async fn failure_and_drop_forget() {
        let d = Dedup::new(Duration::from_secs(60), 100, true);
        new_ticket(&d, &event("1", 1)).resolve(false);
        let t = new_ticket(&d, &event("1", 1));
        drop(t);
        assert!(matches!(d.claim(&event("1", 1)), Claim::New(_)));
    }

    #[tokio::test]
    async fn in_flight_duplicate_waits_for_outcome() {
        let d = Dedup::new(Duration::from_secs(60), 100, true);
        let t = new_ticket(&d, &event("1", 1));
        let Claim::InFlight(p) = d.claim(&event("1", 1)) else {
            panic!("expected in flight")
        };
        let waiter = tokio::spawn(p.published_within(Duration::from_secs(5)));
        t.resolve(true);
        assert!(waiter.await.unwrap());
        let t = new_ticket(&d, &event("9", 9));
        let Claim::InFlight(p) = d.claim(&event("9", 9)) else {
            panic!("expected in flight")
        };
        assert!(!p.published_within(Duration::from_millis(20)).await);
        drop(t);
    }

    #[tokio::test]
    async fn capacity_and_window_bound_memory() {
        let d = Dedup::new(Duration::from_secs(60), 10, false);
        for i in 0..100 {
            new_ticket(&d, &event(&i.to_string(), i)).resolve(true);
        }
        assert_eq!(d.len(), 10);
        assert!(matches!(d.claim(&event("99", 99)), Claim::Published));
        assert!(matches!(d.claim(&event("0", 0)), Claim::New(_)));

        // With content keys, the capacity still counts callbacks.
        let d = Dedup::new(Duration::from_secs(60), 10, true);
        for i in 0..100 {
            new_ticket(&d, &event(&i.to_string(), i)).resolve(true);
        }
        assert_eq!(d.len(), 10);
        assert!(matches!(d.claim(&event("90", 90)), Claim::Published));
        assert!(matches!(d.claim(&event("89", 89)), Claim::New(_)));

        let d = Dedup::new(Duration::from_millis(10), 10, false);
        new_ticket(&d, &event("1", 1)).resolve(true);
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(d.claim(&event("1", 1)), Claim::New(_)));
    }
}
