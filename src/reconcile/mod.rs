//! Reconciliation: repair what callbacks missed by reading Easemob's own
//! state.
//!
//! Callbacks are not a complete record: Easemob retries a failed one once,
//! bans a rule after 90 failures in 30 s and never re-sends what a ban
//! swallowed; a new deployment starts with no state at all. A pass reads,
//! for every group in scope, its mute-all ([`rest::Rest::details`], 100 ids
//! a call) and its muted members ([`rest::Rest::mute_list`]), compares them
//! with the group's state in the state topic ([`diff`]), and publishes a
//! corrective event for each dimension that differs, into the event topic,
//! keyed by the group. From there it is an event like any other: the
//! stale-event guard judges it against the group's state (a callback newer
//! than the read wins), and every target the policy routes it to applies
//! it, in the group's order, under its own limits.
//!
//! Pass by pass: the state topic is read once; `scope = "all"` adds the
//! groups `GET /chatgroups` lists; reads go through each app's rate
//! limiter; a group whose read fails is left for the next pass (counted,
//! never guessed). One replica is enough; two would each read everything.

pub mod config;
pub mod diff;
pub mod metrics;
pub mod rest;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::stream::{self, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use strum::VariantArray;

use crate::config::{Checked, Reach};
use crate::event::{Event, Scope};
use crate::ingest::publish::event_headers;
use crate::kafka::{self, Cluster};
use crate::limit::{Limiter, Spec};
use crate::metrics::Metrics;
use crate::policy::glob;
use crate::state::GroupState;
use crate::time::now_ms;
use diff::{Corrections, Found};
use metrics::{Difference, GroupOutcome, PassOutcome, ReconcileMetrics};
use rest::{Read, Rest, RestError, DETAILS_BATCH};

/// Mute lists read at once (each is one call; the limiter spaces them).
const CONCURRENT_READS: usize = 8;
/// The longest app-wide pause after 429s without `Retry-After`.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// What one pass is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only groups whose ID matches this pattern (`*` = any run).
    pub groups: Option<String>,
    /// Compare and report; publish nothing.
    pub dry_run: bool,
    /// Print progress to stderr (after a batch of 100 groups, at most once
    /// a second).
    pub progress: bool,
}

/// What a pass found and did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Groups and chat rooms in scope.
    pub groups: usize,
    pub agreed: usize,
    /// Differed (and were corrected, unless a dry run).
    pub differed: usize,
    pub gone: usize,
    /// A read failed: compared next pass.
    pub unread: usize,
    /// Groups `GET /chatgroups` listed (`scope = "all"`).
    pub listed: usize,
    /// States of apps without `[easemob.apps.rest]`: not compared.
    pub without_rest: usize,
    /// Apps whose group listing (`scope = "all"`) failed, and why: only
    /// their known groups were compared.
    pub unlisted: Vec<String>,
    /// By kind of difference (one per dimension).
    pub differences: BTreeMap<&'static str, usize>,
    /// Corrective events published (0 in a dry run).
    pub published: usize,
    /// Easemob answers other than success, by status (retried ones too).
    pub rest_errors: BTreeMap<String, usize>,
    pub seconds: f64,
}

impl Summary {
    /// Every group in scope was read (and, with `scope = "all"`, listed).
    pub fn complete(&self) -> bool {
        self.unread == 0 && self.unlisted.is_empty()
    }

    fn differences_total(&self) -> usize {
        self.differences.values().sum()
    }
}

/// One group in scope: ours, if we hold a state for it.
struct Subject {
    scope: Scope,
    id: String,
    state: Option<GroupState>,
}

/// The reconcile role: one REST client per app with a `rest` table.
pub struct Reconciler {
    config: Checked,
    bootstrap: String,
    apps: Vec<Rest>,
    producer: FutureProducer,
    metrics: ReconcileMetrics,
}

impl Reconciler {
    /// Checks that there is a state to compare and an app to read, and
    /// builds the clients.
    pub async fn start(
        config: &Checked,
        cluster: &Cluster,
        metrics: &Metrics,
    ) -> anyhow::Result<Reconciler> {
        if !config.worker.track_state {
            anyhow::bail!("worker.track_state is off: the workers keep no mute state to reconcile with Easemob's");
        }
        cluster
            .require_topic(&config.kafka, &config.worker.state_topic)
            .await
            .context("the state topic is the workers' (start the workers once first)")?;
        let timeout = Duration::from_millis(config.reconcile.request_timeout_ms);
        let mut apps = Vec::new();
        for app in &config.easemob.apps {
            let Some(rest) = &app.rest else {
                continue;
            };
            let name = format!("easemob:{}", app.appkey);
            let limiter = Limiter::new(
                Spec {
                    name: &name,
                    kind: "easemob",
                    app: app.appkey.clone(),
                    rate_per_second: Some(rest.rate_per_second),
                    config: &rest.rate_limit,
                },
                MAX_PAUSE,
                metrics.worker.limit_metrics(&name, true),
            )?;
            apps.push(Rest::new(
                &app.appkey,
                rest,
                timeout,
                limiter,
                metrics.reconcile.clone(),
            )?);
        }
        if apps.is_empty() {
            anyhow::bail!("no [easemob.apps.rest] in the config: reconciling reads each app's REST API; add base_url, client_id and client_secret under the app");
        }
        let producer: FutureProducer =
            kafka::producer_config(&config.kafka, cluster.bootstrap_servers())
                .create()
                .context(
                    "cannot create the Kafka producer (check the [kafka.client] properties)",
                )?;
        metrics
            .reconcile
            .interval
            .set(config.reconcile.interval_seconds as i64);
        Ok(Reconciler {
            config: config.clone(),
            bootstrap: cluster.bootstrap_servers().to_owned(),
            apps,
            producer,
            metrics: metrics.reconcile.clone(),
        })
    }

    /// A pass at once, then one `interval_seconds` after each ends, until
    /// `stop` (a long pass delays the next rather than overlapping it).
    pub async fn run(self, options: Options, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let interval = Duration::from_secs(self.config.reconcile.interval_seconds.max(1));
        // Stalled is measured from here until the first pass ends.
        self.metrics.last_pass_end.set(now_ms() as f64 / 1000.0);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                done = self.pass(&options) => match done {
                    Ok((s, _)) => tracing::info!(
                        groups = s.groups, agreed = s.agreed, differed = s.differed, gone = s.gone,
                        unread = s.unread, published = s.published, seconds = format!("{:.1}", s.seconds),
                        "reconcile pass finished"
                    ),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "reconcile pass failed; trying again next interval"),
                },
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        let _ = self.producer.flush(Duration::from_secs(5));
        Ok(())
    }

    /// One pass over every app; returns what it found, and the corrective
    /// events (published unless `dry_run`).
    pub async fn pass(&self, options: &Options) -> anyhow::Result<(Summary, Vec<Event>)> {
        let started = Instant::now();
        let mut summary = Summary::default();
        let mut events = Vec::new();
        let mut known = self.known(options).await?;
        for app in &self.apps {
            let subjects = self
                .subjects(
                    app,
                    known.remove(app.appkey()).unwrap_or_default(),
                    options,
                    &mut summary,
                )
                .await?;
            self.reconcile_app(app, subjects, options, &mut summary, &mut events, started)
                .await?;
            for (status, n) in app.take_errors() {
                *summary.rest_errors.entry(status).or_default() += n;
            }
        }
        summary.without_rest = known.values().map(Vec::len).sum();
        summary.seconds = started.elapsed().as_secs_f64();
        self.metrics.passed(if summary.complete() {
            PassOutcome::Complete
        } else {
            PassOutcome::Incomplete
        });
        self.metrics
            .last_pass_differences
            .set(summary.differences_total() as i64);
        self.metrics.last_pass_end.set(now_ms() as f64 / 1000.0);
        Ok((summary, events))
    }

    /// The states in the state topic, by appkey, that `options` selects.
    async fn known(&self, options: &Options) -> anyhow::Result<HashMap<String, Vec<GroupState>>> {
        let (kafka, topic) = (
            self.config.kafka.clone(),
            self.config.worker.state_topic.clone(),
        );
        let (bootstrap, pattern) = (self.bootstrap.clone(), options.groups.clone());
        tokio::task::spawn_blocking(move || {
            let mut known: HashMap<String, Vec<GroupState>> = HashMap::new();
            crate::kafka::scan::states(
                &kafka,
                &bootstrap,
                &topic,
                |s| pattern.as_deref().is_none_or(|p| glob(p, &s.group_id)),
                |s| {
                    known.entry(s.appkey.clone()).or_default().push(s);
                    true
                },
            )
            .with_context(|| format!("cannot read the state topic {topic}"))?;
            anyhow::Ok(known)
        })
        .await?
    }

    /// The groups of `app` in scope: its states, and with `scope = "all"`
    /// every group it lists.
    async fn subjects(
        &self,
        app: &Rest,
        states: Vec<GroupState>,
        options: &Options,
        summary: &mut Summary,
    ) -> anyhow::Result<Vec<Subject>> {
        let mut subjects: BTreeMap<(Scope, String), Option<GroupState>> = states
            .into_iter()
            .map(|s| ((s.scope, s.group_id.clone()), Some(s)))
            .collect();
        if self.config.reconcile.scope == Reach::All {
            let mut cursor: Option<String> = None;
            loop {
                let (ids, next) = app.list_groups(cursor.as_deref()).await.map_err(|e| {
                    anyhow::anyhow!(
                        "{}: cannot list the app's groups (GET /chatgroups): {e}",
                        app.appkey()
                    )
                })?;
                summary.listed += ids.len();
                for id in ids {
                    if options.groups.as_deref().is_none_or(|p| glob(p, &id)) {
                        subjects.entry((Scope::Group, id)).or_insert(None);
                    }
                }
                match next {
                    Some(c) if Some(&c) != cursor.as_ref() => cursor = Some(c),
                    _ => break,
                }
            }
        }
        Ok(subjects
            .into_iter()
            .map(|((scope, id), state)| Subject { scope, id, state })
            .collect())
    }

    /// Reads, compares and corrects the `subjects` of one app, 100 at a time.
    async fn reconcile_app(
        &self,
        app: &Rest,
        subjects: Vec<Subject>,
        options: &Options,
        summary: &mut Summary,
        events: &mut Vec<Event>,
        started: Instant,
    ) -> anyhow::Result<()> {
        let mut last_report = Instant::now();
        let before = summary.groups;
        for scope in [Scope::Group, Scope::Chatroom] {
            let of_scope: Vec<&Subject> = subjects.iter().filter(|s| s.scope == scope).collect();
            for batch in of_scope.chunks(DETAILS_BATCH) {
                if let Some(why) = app.token_failure().await {
                    let left = subjects.len() - (summary.groups - before);
                    tracing::warn!(app = app.appkey(), left, error = %why, "no Easemob token: the app's remaining groups are compared next pass");
                    summary.groups += left;
                    summary.unread += left;
                    for _ in 0..left {
                        self.metrics.group(GroupOutcome::Unread);
                    }
                    return Ok(());
                }
                let found = read_batch(app, scope, batch).await;
                for (subject, found) in batch.iter().zip(found) {
                    summary.groups += 1;
                    let Some(found) = found else {
                        summary.unread += 1;
                        self.metrics.group(GroupOutcome::Unread);
                        continue;
                    };
                    let c = self.compare(app, subject, &found);
                    self.count(&c, &found, options, summary);
                    if !c.events.is_empty() && !options.dry_run {
                        summary.published += self.publish(&c.events).await?;
                    }
                    events.extend(c.events);
                }
                if options.progress && last_report.elapsed() >= Duration::from_secs(1) {
                    eprintln!(
                        "[{:.0?}] {}: {} of {} read, {} differed, {} gone, {} unread, {} event(s) published",
                        started.elapsed(),
                        app.appkey(),
                        summary.groups - before,
                        subjects.len(),
                        summary.differed,
                        summary.gone,
                        summary.unread,
                        summary.published
                    );
                    last_report = Instant::now();
                }
            }
        }
        Ok(())
    }

    fn compare(&self, app: &Rest, subject: &Subject, found: &Found) -> Corrections {
        diff::compare(
            (app.appkey(), subject.scope, &subject.id),
            subject.state.as_ref(),
            found,
            now_ms(),
            &mut || format!("reconcile-{}", uuid::Uuid::new_v4()),
        )
    }

    fn count(&self, c: &Corrections, found: &Found, options: &Options, summary: &mut Summary) {
        for d in &c.differences {
            *summary.differences.entry(<&str>::from(*d)).or_default() += 1;
            self.metrics.difference(*d);
        }
        let outcome = match (found, c.differences.is_empty()) {
            (Found::Gone { .. }, _) => GroupOutcome::Gone,
            (_, true) => GroupOutcome::Agreed,
            (_, false) if options.dry_run => GroupOutcome::Differed,
            (_, false) => GroupOutcome::Corrected,
        };
        match outcome {
            GroupOutcome::Gone => summary.gone += 1,
            GroupOutcome::Agreed => summary.agreed += 1,
            _ => summary.differed += 1,
        }
        self.metrics.group(outcome);
    }

    /// Publishes one group's corrections in order and waits for Kafka's
    /// acknowledgement of each.
    async fn publish(&self, events: &[Event]) -> anyhow::Result<usize> {
        let topic = &self.config.kafka.topic;
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            let payload = serde_json::to_vec(e).expect("events always serialize");
            let record = FutureRecord::to(topic)
                .key(e.group_id.as_str())
                .payload(&payload)
                .headers(event_headers(e));
            let delivery = self.producer.send_result(record).map_err(|(err, _)| {
                anyhow::anyhow!("cannot publish a correction to {topic}: {err}")
            })?;
            pending.push((e.kind, delivery));
        }
        for (kind, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => self.metrics.corrected(kind),
                Ok(Err((err, _))) => {
                    anyhow::bail!("Kafka did not take a correction for {topic}: {err}")
                }
                Err(_) => anyhow::bail!("the producer shut down"),
            }
        }
        Ok(events.len())
    }
}

/// One id's details: gone (Easemob answered 404 for it alone, at this
/// server time), or there, with its mute-all (`None`: not reported).
enum Detail {
    Gone(i64),
    Here(Read<Option<bool>>),
}

/// Reads one batch: `None` for a subject whose read failed.
async fn read_batch(app: &Rest, scope: Scope, batch: &[&Subject]) -> Vec<Option<Found>> {
    let ids: Vec<&str> = batch.iter().map(|s| s.id.as_str()).collect();
    let details = mute_all(app, scope, &ids).await;
    let reads: Vec<_> = ids
        .iter()
        .zip(details)
        .map(|(id, details)| read_members(app, scope, id, details))
        .collect();
    stream::iter(reads)
        .buffered(CONCURRENT_READS)
        .collect()
        .await
}

/// Completes one group's read with its mute list.
async fn read_members(
    app: &Rest,
    scope: Scope,
    id: &str,
    details: Result<Detail, RestError>,
) -> Option<Found> {
    let read = match details {
        Err(_) => return None,
        Ok(Detail::Gone(at_ms)) => return Some(Found::Gone { at_ms }),
        Ok(Detail::Here(read)) => read,
    };
    let list = match app.mute_list(scope, id).await {
        Err(e) => {
            // A 404 here, right after the details found it, is not taken
            // as gone: only a details read of the id alone decides that.
            tracing::warn!(app = app.appkey(), group = id, error = %e, "cannot read the mute list; its members are compared next pass");
            None
        }
        Ok(read) => Some(Read {
            at_ms: read.at_ms,
            data: read
                .data
                .into_iter()
                .map(|m| (m.user, rest::until(m.expire)))
                .collect(),
        }),
    };
    let at_ms = read.at_ms;
    Some(Found::Read {
        mute_all: read.data.map(|data| Read { data, at_ms }),
        muted: list,
    })
}

/// The details of each id. Ids a batch answer leaves out, or all of a
/// batch answered 404 (how Easemob reports a missing id among others is
/// unconfirmed), are asked one by one: only a 404 for an id asked alone
/// makes it gone.
async fn mute_all(app: &Rest, scope: Scope, ids: &[&str]) -> Vec<Result<Detail, RestError>> {
    match app.details(scope, ids).await {
        Err(RestError::NotFound(at)) if ids.len() == 1 => {
            vec![Ok(Detail::Gone(at.unwrap_or_else(now_ms)))]
        }
        Err(RestError::NotFound(_)) => {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(single(app, scope, id).await);
            }
            out
        }
        Err(e) => {
            tracing::warn!(app = app.appkey(), scope = scope.as_str(), ids = ids.len(), error = %e, "cannot read group details; these groups are compared next pass");
            ids.iter().map(|_| Err(e.clone())).collect()
        }
        Ok(read) => {
            let by_id: HashMap<&str, Option<bool>> =
                read.data.iter().map(|d| (d.id.as_str(), d.mute)).collect();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(match by_id.get(id) {
                    Some(mute) => Ok(Detail::Here(Read {
                        data: *mute,
                        at_ms: read.at_ms,
                    })),
                    None if ids.len() > 1 => single(app, scope, id).await,
                    None => Err(RestError::Body(format!(
                        "the answer for {id} alone does not list it"
                    ))),
                });
            }
            out
        }
    }
}

/// The details of one id, asked alone.
async fn single(app: &Rest, scope: Scope, id: &str) -> Result<Detail, RestError> {
    match app.details(scope, &[id]).await {
        Ok(read) => match read.data.iter().find(|d| d.id == id) {
            Some(d) => Ok(Detail::Here(Read {
                data: d.mute,
                at_ms: read.at_ms,
            })),
            None => Err(RestError::Body(format!(
                "the answer for {id} alone does not list it"
            ))),
        },
        Err(RestError::NotFound(at)) => Ok(Detail::Gone(at.unwrap_or_else(now_ms))),
        Err(e) => Err(e),
    }
}

/// The summary lines `mutebridge reconcile` prints.
pub fn describe(s: &Summary, dry_run: bool, topic: &str) -> Vec<String> {
    let mut lines = vec![format!(
        "{} group(s) compared in {:.1} s: {} agreed, {} differed, {} gone, {} unread{}",
        s.groups,
        s.seconds,
        s.agreed,
        s.differed,
        s.gone,
        s.unread,
        if s.listed > 0 {
            format!(" ({} listed by Easemob)", s.listed)
        } else {
            String::new()
        }
    )];
    let differences: Vec<String> = Difference::VARIANTS
        .iter()
        .map(|d| <&str>::from(*d))
        .map(|d| format!("{d} {}", s.differences.get(d).copied().unwrap_or(0)))
        .collect();
    lines.push(format!("differences: {}", differences.join(", ")));
    lines.push(if dry_run {
        "dry run: nothing published".to_owned()
    } else {
        format!("published {} corrective event(s) to {topic}", s.published)
    });
    lines.push(if s.rest_errors.is_empty() {
        "REST errors: none".to_owned()
    } else {
        let e: Vec<String> = s
            .rest_errors
            .iter()
            .map(|(status, n)| format!("{status} x{n}"))
            .collect();
        format!("REST errors: {} (429 and 401 are retried)", e.join(", "))
    });
    for app in &s.unlisted {
        lines.push(format!("not listed (only known groups compared): {app}"));
    }
    if s.without_rest > 0 {
        lines.push(format!(
            "{} state(s) of apps without [easemob.apps.rest] not compared",
            s.without_rest
        ));
    }
    lines
}
