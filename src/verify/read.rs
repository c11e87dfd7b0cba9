//! Reading a provider back: the contract each provider's read-back
//! implements, and the one executor every read goes through.
//!
//! ## The contract
//!
//! A provider's read-back is a type implementing [`ReadBack`] (one file per
//! provider: [`super::zego`], [`super::rongcloud`], [`super::tencent`],
//! [`super::agora`]), plus one arm of
//! [`super::providers::Reader`] and of its `for_target`. Its [`ReadBack::read`] gets
//! what the target should hold ([`Expected`]: every place the policy sends
//! to, with each dimension's expectation) and answers, for each place, what
//! the provider holds ([`Held`]), or why it could not read it. It decides
//! which reads to make: the cheapest whole-app lists first, per-place reads
//! only where the expectation needs them (the expectation is given for
//! that). It reports only what the provider said: a dimension it cannot
//! read is [`HeldMembers::Flag`] or [`HeldMembers::NotRead`] or a
//! `mute_all` of `None`, never a guess, and [`ReadBack::sight`] says in
//! words what it cannot see, for the report.
//!
//! Each read is a pure signed-request builder (`Fn(host, now) -> Request`,
//! signed afresh for every attempt, as the targets' writes are) and a pure
//! reply parser (`Fn(&Reply) -> Answer<T>`) handed to [`Io::call`], which
//! spaces the reads by the target's own rate limiter (in `redis` mode the
//! target's exact shared schedule), pauses every read of the target on a
//! rate-limit answer, retries outages (on the next host, where there are
//! several) and counts every attempt. Builders and parsers are plain
//! functions, unit-tested against the documented shapes. Where the
//! target's own module already plans, signs and parses its reads (Tencent,
//! Agora: `crate::targets::readback`), [`super::observed`] runs them, and
//! the provider's file only says what differs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use tokio::time::Instant;

use super::expect::{End, Expected, Place};
use crate::limit::Limiter;
use crate::targets::{parse_retry_after, Method, Outcome, Reply, Request, Transient};

/// What a provider holds at one place, as far as it can be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// The mute-all; `None` when it was not read.
    pub mute_all: Option<HeldAll>,
    pub members: HeldMembers,
    /// Group-level mutes of roles (ZEGO `ForbidList`: 1 owner, 2 admin,
    /// 3 member, > 100 custom), which mutebridge never sets.
    pub roles: Vec<i64>,
}

/// A mute-all as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldAll {
    pub muted: bool,
    /// Its end when the read says it (`None`: only whether it is on).
    pub end: Option<End>,
}

/// Member mutes as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HeldMembers {
    /// Every muted member by provider user ID, with its end.
    Exact(BTreeMap<String, End>),
    /// Only whether any member is muted (ZEGO: no server API lists them).
    Flag(bool),
    /// Not read.
    #[default]
    NotRead,
}

/// What [`ReadBack::read`] answers.
#[derive(Debug, Default)]
pub struct Holdings {
    /// Each place read, or why it could not be.
    pub places: HashMap<Place, Result<Held, String>>,
}

/// What a provider can and cannot read back, for the report.
#[derive(Debug, Clone, Copy)]
pub struct Sight {
    /// Ends within this of each other agree (the provider's resolution,
    /// rounding, clock skew).
    pub tolerance_ms: i64,
    /// What it cannot see, in a sentence; `None` when it sees every
    /// dimension mutebridge sets.
    pub blind: Option<&'static str>,
}

/// A provider's read-back; see the module documentation for the contract.
pub trait ReadBack {
    fn sight(&self) -> Sight;
    /// What the provider holds at each place of `expected`.
    fn read(
        &self,
        io: &Io,
        expected: &Expected,
    ) -> impl std::future::Future<Output = Holdings> + Send;
}

/// A parsed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer<T> {
    Data(T),
    /// Worth another attempt: a rate-limit answer pauses every read of
    /// the target (`after`: the provider's `Retry-After`); an outage is
    /// retried after a backoff, on the next host when `switch_host`.
    Retry {
        error: String,
        kind: Transient,
        switch_host: bool,
        after: Option<Duration>,
    },
    /// Another attempt would get the same answer.
    Fail(String),
}

impl<T> Answer<T> {
    /// What a target's own reading of a reply means for a read: its
    /// transient failures are retried (and paused) as the target's calls
    /// are, anything else fails the read.
    pub fn from_outcome(parsed: Result<T, Outcome>) -> Answer<T> {
        match parsed {
            Ok(t) => Answer::Data(t),
            Err(Outcome::Retry {
                error,
                kind,
                switch_host,
                after,
            }) => Answer::Retry {
                error,
                kind,
                switch_host,
                after,
            },
            Err(Outcome::Permanent { error }) => Answer::Fail(error),
            Err(other) => Answer::Fail(format!("not an answer to a read: {other:?}")),
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Data(t) => Answer::Data(f(t)),
            Answer::Retry {
                error,
                kind,
                switch_host,
                after,
            } => Answer::Retry {
                error,
                kind,
                switch_host,
                after,
            },
            Answer::Fail(e) => Answer::Fail(e),
        }
    }
}

/// Rate-limit answers one read may draw before it counts as failed.
const MAX_RATE_LIMITED: u32 = 10;
/// Attempts of a read that meets an outage.
const MAX_ATTEMPTS: u32 = 4;

/// What each attempt came to, the `status` label of
/// `mutebridge_verify_reads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum ReadStatus {
    /// Answered with data.
    Ok,
    /// The provider's rate-limit answer (every read of the target pauses).
    RateLimited,
    /// An outage (transport error, 5xx, the provider's system-error codes).
    Outage,
    /// An answer another attempt would get again.
    Failed,
}

/// The counters of one target's reads, by [`ReadStatus`].
#[derive(Clone)]
pub struct ReadCounters(pub Vec<IntCounter>);

/// The executor of one target's reads.
pub struct Io {
    target: String,
    http: reqwest::Client,
    limiter: Limiter,
    hosts: usize,
    counters: ReadCounters,
    /// Attempts by read (the provider's API name), for the summary.
    calls: Mutex<BTreeMap<&'static str, usize>>,
}

impl Io {
    /// `hosts`: how many hosts the target fails over between.
    pub fn new(
        target: &str,
        limiter: Limiter,
        hosts: usize,
        timeout: Duration,
        counters: ReadCounters,
    ) -> anyhow::Result<Io> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()?;
        Ok(Io {
            target: target.to_owned(),
            http,
            limiter,
            hosts: hosts.max(1),
            counters,
            calls: Mutex::new(BTreeMap::new()),
        })
    }

    /// Attempts so far, by read.
    pub fn calls(&self) -> BTreeMap<&'static str, usize> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// One read: `build` signs the request for a host and an instant,
    /// `parse` reads the reply. Errors name the read and the host, never
    /// the URL or a credential.
    pub async fn call<T>(
        &self,
        api: &'static str,
        build: impl Fn(usize, SystemTime) -> Request,
        parse: impl Fn(&Reply<'_>) -> Answer<T>,
    ) -> Result<T, String> {
        let (mut host, mut failures, mut limited) = (0usize, 0u32, 0u32);
        loop {
            self.limiter.acquire().await;
            let sent = Instant::now();
            *self
                .calls
                .lock()
                .expect("calls lock")
                .entry(api)
                .or_default() += 1;
            let request = build(host % self.hosts, SystemTime::now());
            let answer = self.send(request, &parse).await;
            let (error, kind, switch_host, after) = match answer {
                Answer::Data(t) => {
                    self.count(ReadStatus::Ok);
                    self.limiter.admitted();
                    return Ok(t);
                }
                Answer::Fail(e) => {
                    self.count(ReadStatus::Failed);
                    return Err(format!("{api}: {e}"));
                }
                Answer::Retry {
                    error,
                    kind,
                    switch_host,
                    after,
                } => (error, kind, switch_host, after),
            };
            if switch_host {
                host += 1;
            }
            match kind {
                Transient::RateLimited => {
                    self.count(ReadStatus::RateLimited);
                    self.limiter.rate_limited(sent, after).await;
                    limited += 1;
                    if limited >= MAX_RATE_LIMITED {
                        return Err(format!("{api}: still rate-limited: {error}"));
                    }
                }
                Transient::Outage | Transient::GroupLimited => {
                    self.count(ReadStatus::Outage);
                    failures += 1;
                    if failures >= MAX_ATTEMPTS {
                        return Err(format!("{api}: {error}"));
                    }
                    let backoff = Duration::from_millis(250 << failures.min(6));
                    tokio::time::sleep(after.unwrap_or(backoff).max(backoff)).await;
                }
            }
        }
    }

    fn count(&self, status: ReadStatus) {
        self.counters.0[status as usize].inc();
    }

    async fn send<T>(
        &self,
        request: Request,
        parse: &impl Fn(&Reply<'_>) -> Answer<T>,
    ) -> Answer<T> {
        let host = request.host();
        let mut builder = match request.method {
            Method::Get => self.http.get(&request.url),
            Method::Post => self.http.post(&request.url),
            Method::Delete => self.http.delete(&request.url),
        };
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let outage = |what: &str, e: reqwest::Error| Answer::Retry {
            error: format!("{what} ({host}): {}", e.without_url()),
            kind: Transient::Outage,
            switch_host: true,
            after: None,
        };
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return outage("timed out", e),
            Err(e) => return outage("cannot reach", e),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        match response.bytes().await {
            Ok(body) => parse(&Reply {
                status,
                retry_after,
                body: &body,
            }),
            Err(e) => outage("body unreadable", e),
        }
    }

    /// The target this executor reads for.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// Values this far ahead are taken for a permanent mute (a provider that
/// writes "forever" as a date).
pub const PERMANENT_AFTER_MS: i64 = 10 * 365 * 86_400_000;

/// An end read as ms since the epoch: none, 0 or negative, or more than
/// ten years ahead, is permanent.
pub fn end_from_ms(ms: Option<i64>, now_ms: i64) -> End {
    match ms {
        Some(t) if t > 0 && t <= now_ms + PERMANENT_AFTER_MS => End::At(t),
        _ => End::Permanent,
    }
}
