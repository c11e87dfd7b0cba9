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
//! Pass by pass: each app on its own (one app's failures never stop
//! another's), its states streamed from the state topic ([`states`]) and
//! read from Easemob 100 groups at a time ([`read`]), so a pass holds a
//! batch of states, not all of them; `scope = "all"` then adds the groups
//! `GET /chatgroups` lists, page by page. Reads go through each app's rate
//! limiter. Only evidence changes anything: a group whose read fails is
//! left for the next pass (counted and named, never guessed), "gone" takes
//! Easemob's own answer twice, and unmuting more than
//! `confirm_unmute_share` of a group's muted members takes a second read
//! that agrees. One replica is enough; two would each read everything.

pub mod config;
pub mod diff;
pub mod metrics;
pub mod read;
pub mod rest;
pub mod states;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::join_all;
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
use metrics::{AppFailure, Difference, GroupOutcome, PassOutcome, ReconcileMetrics};
use rest::{Read, Rest, DETAILS_BATCH};

/// The longest app-wide pause after 429s without `Retry-After`.
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// Groups a summary names per app and list (the log names every one).
pub const NAMED: usize = 20;
/// Distinct reasons a summary keeps per app; the rest are counted together.
const REASONS: usize = 10;

/// What one pass is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only groups whose ID matches this pattern (`*` = any run).
    pub groups: Option<String>,
    /// Compare and report; publish nothing.
    pub dry_run: bool,
    /// Print progress to stderr (after a batch of 100 groups, at most once
    /// a second per app).
    pub progress: bool,
}

/// What a pass found and did: the totals, and each app's part.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Groups and chat rooms in scope.
    pub groups: usize,
    pub agreed: usize,
    /// Differed (and were corrected, unless a dry run).
    pub differed: usize,
    pub gone: usize,
    /// A read failed or proved nothing: compared next pass.
    pub unread: usize,
    /// Would have unmuted more than `confirm_unmute_share` of their muted
    /// members, and a second read did not agree: compared next pass.
    pub held_back: usize,
    /// Groups `GET /chatgroups` listed (`scope = "all"`).
    pub listed: usize,
    /// States of apps without `[easemob.apps.rest]`: not compared.
    pub without_rest: usize,
    /// By kind of difference (one per dimension).
    pub differences: BTreeMap<&'static str, usize>,
    /// Corrective events published (0 in a dry run).
    pub published: usize,
    /// Easemob answers other than success, by status (retried ones too).
    pub rest_errors: BTreeMap<String, usize>,
    /// Each app with `[easemob.apps.rest]`, by appkey.
    pub apps: BTreeMap<String, AppSummary>,
    pub seconds: f64,
}

/// One app's part of a pass.
#[derive(Debug, Clone, Default)]
pub struct AppSummary {
    pub groups: usize,
    pub agreed: usize,
    pub differed: usize,
    pub gone: usize,
    pub unread: usize,
    pub held_back: usize,
    pub listed: usize,
    pub published: usize,
    pub differences: BTreeMap<&'static str, usize>,
    /// What stopped a part of the app's pass (its listing, its states),
    /// and why: those groups were not compared at all.
    pub failures: BTreeMap<AppFailure, String>,
    /// The first [`NAMED`] groups not read, as `group:ID` or `chatroom:ID`.
    pub unread_groups: Vec<String>,
    /// Why groups were not read, with how many each.
    pub unread_because: BTreeMap<String, usize>,
    /// The first [`NAMED`] groups held back.
    pub held_back_groups: Vec<String>,
}

impl Summary {
    /// Every group in scope was read (and, with `scope = "all"`, listed)
    /// and nothing was held back.
    pub fn complete(&self) -> bool {
        self.apps.values().all(AppSummary::complete)
    }

    fn differences_total(&self) -> usize {
        self.differences.values().sum()
    }

    fn add(&mut self, appkey: &str, a: AppSummary, rest_errors: BTreeMap<String, usize>) {
        self.groups += a.groups;
        self.agreed += a.agreed;
        self.differed += a.differed;
        self.gone += a.gone;
        self.unread += a.unread;
        self.held_back += a.held_back;
        self.listed += a.listed;
        self.published += a.published;
        for (d, n) in &a.differences {
            *self.differences.entry(d).or_default() += n;
        }
        for (status, n) in rest_errors {
            *self.rest_errors.entry(status).or_default() += n;
        }
        self.apps.insert(appkey.to_owned(), a);
    }

    /// One line per app and thing not read, naming the groups.
    pub fn not_read(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (app, a) in &self.apps {
            for (stage, why) in &a.failures {
                lines.push(match stage {
                    AppFailure::Listing => {
                        format!("{app}: not every group listed, the unlisted ones not compared: {why}")
                    }
                    AppFailure::StateTopic => format!(
                        "{app}: the state topic not read to its end, the app's remaining known groups not compared: {why}"
                    ),
                });
            }
            if a.unread > 0 {
                let why: Vec<String> = a
                    .unread_because
                    .iter()
                    .map(|(why, n)| format!("{why} x{n}"))
                    .collect();
                lines.push(format!(
                    "{app}: {} group(s) not read: {}; because: {}",
                    a.unread,
                    named(&a.unread_groups, a.unread),
                    why.join(", ")
                ));
            }
            if a.held_back > 0 {
                lines.push(format!(
                    "{app}: {} group(s) held back (a second read of the mute list did not confirm unmuting more than reconcile.confirm_unmute_share of the muted members): {}",
                    a.held_back,
                    named(&a.held_back_groups, a.held_back)
                ));
            }
        }
        lines
    }
}

/// `a, b, c and 7 more`.
fn named(names: &[String], total: usize) -> String {
    let mut text = names.join(", ");
    if total > names.len() {
        text.push_str(&format!(" and {} more", total - names.len()));
    }
    text
}

impl AppSummary {
    /// Every group of the app in scope was read and settled.
    pub fn complete(&self) -> bool {
        self.unread == 0 && self.held_back == 0 && self.failures.is_empty()
    }

    /// The groups of `outcome` (a dry run's differences are `differed`,
    /// a pass's `corrected`).
    fn count(&self, outcome: GroupOutcome, dry_run: bool) -> usize {
        match outcome {
            GroupOutcome::Agreed => self.agreed,
            GroupOutcome::Corrected if !dry_run => self.differed,
            GroupOutcome::Differed if dry_run => self.differed,
            GroupOutcome::Corrected | GroupOutcome::Differed => 0,
            GroupOutcome::Gone => self.gone,
            GroupOutcome::Unread => self.unread,
            GroupOutcome::HeldBack => self.held_back,
        }
    }

    fn failed(&mut self, stage: AppFailure, why: String) {
        self.failures.insert(stage, why);
    }

    fn unread(&mut self, subject: &Subject, why: String) {
        self.groups += 1;
        self.unread += 1;
        if self.unread_groups.len() < NAMED {
            self.unread_groups.push(subject.name());
        }
        let why = if self.unread_because.len() < REASONS || self.unread_because.contains_key(&why) {
            why
        } else {
            "other reasons".to_owned()
        };
        *self.unread_because.entry(why).or_default() += 1;
    }

    fn held_back(&mut self, subject: &Subject) {
        self.groups += 1;
        self.held_back += 1;
        if self.held_back_groups.len() < NAMED {
            self.held_back_groups.push(subject.name());
        }
    }
}

/// One group in scope: ours, if we hold a state for it.
struct Subject {
    scope: Scope,
    id: String,
    state: Option<GroupState>,
}

impl Subject {
    fn name(&self) -> String {
        format!("{}:{}", self.scope.as_str(), self.id)
    }
}

/// A group whose unmutes wait for a second read of its mute list.
struct ToConfirm {
    subject: Subject,
    mute_all: Option<Read<bool>>,
    unmuted: Vec<String>,
}

/// The reconcile role: one REST client per app with a `rest` table.
pub struct Reconciler {
    config: Checked,
    bootstrap: String,
    apps: Vec<Rest>,
    producer: FutureProducer,
    metrics: ReconcileMetrics,
}

/// Where a corrective event goes besides Kafka: `--dry-run` prints it.
pub type Seen<'a> = &'a (dyn Fn(&Event) + Sync);

/// One app's pass in progress.
struct AppPass<'a> {
    app: &'a Rest,
    options: &'a Options,
    seen: Seen<'a>,
    started: Instant,
    last_report: Instant,
    /// State partitions handed out so far, of how many.
    partitions: (usize, usize),
    summary: AppSummary,
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
            // The app's series exist before its first pass ends.
            metrics.reconcile.app_passed(&app.appkey, |_| 0, |_| false);
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
                    Ok(s) => {
                        tracing::info!(
                            groups = s.groups, agreed = s.agreed, differed = s.differed, gone = s.gone,
                            unread = s.unread, held_back = s.held_back, published = s.published,
                            seconds = format!("{:.1}", s.seconds), "reconcile pass finished"
                        );
                        for line in s.not_read() {
                            tracing::warn!("reconcile pass incomplete: {line}; compared next pass");
                        }
                    }
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

    /// One pass over every app.
    pub async fn pass(&self, options: &Options) -> anyhow::Result<Summary> {
        self.pass_with(options, &|_| {}).await
    }

    /// One pass over every app, each on its own; `seen` gets every
    /// corrective event (published unless `dry_run`). Fails only when Kafka
    /// does not take a correction; an app's failures are in its summary.
    pub async fn pass_with(&self, options: &Options, seen: Seen<'_>) -> anyhow::Result<Summary> {
        let started = Instant::now();
        let others = {
            let (kafka, bootstrap) = (self.config.kafka.clone(), self.bootstrap.clone());
            let topic = self.config.worker.state_topic.clone();
            let appkeys: Vec<String> = self.apps.iter().map(|a| a.appkey().to_owned()).collect();
            let pattern = options.groups.clone();
            tokio::task::spawn_blocking(move || {
                states::count_others(&kafka, &bootstrap, &topic, &appkeys, pattern.as_deref())
            })
        };
        let passes = self
            .apps
            .iter()
            .map(|app| self.app_pass(app, options, seen, started));
        let results = join_all(passes).await;
        let mut summary = Summary::default();
        let mut failed = None;
        for (app, result) in self.apps.iter().zip(results) {
            // Taken whatever happened: the next pass counts its own.
            let errors = app.take_errors();
            match result {
                Ok(a) => summary.add(app.appkey(), a, errors),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        summary.without_rest = match others.await? {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot count the states of apps without [easemob.apps.rest]");
                0
            }
        };
        summary.seconds = started.elapsed().as_secs_f64();
        for (appkey, a) in &summary.apps {
            self.metrics.app_passed(
                appkey,
                |o| a.count(o, options.dry_run),
                |f| a.failures.contains_key(&f),
            );
        }
        self.metrics.passed(if summary.complete() {
            PassOutcome::Complete
        } else {
            PassOutcome::Incomplete
        });
        self.metrics
            .last_pass_differences
            .set(summary.differences_total() as i64);
        self.metrics.last_pass_end.set(now_ms() as f64 / 1000.0);
        Ok(summary)
    }

    /// One app: its known groups as the state topic streams them, then
    /// (`scope = "all"`) the groups it lists that have no state.
    async fn app_pass(
        &self,
        app: &Rest,
        options: &Options,
        seen: Seen<'_>,
        started: Instant,
    ) -> anyhow::Result<AppSummary> {
        let all = self.config.reconcile.scope == Reach::All;
        let mut pass = AppPass {
            app,
            options,
            seen,
            started,
            last_report: Instant::now(),
            partitions: (0, 0),
            summary: AppSummary::default(),
        };
        let mut stream = states::stream(
            &self.config.kafka,
            &self.bootstrap,
            &self.config.worker.state_topic,
            states::Select {
                appkey: app.appkey().to_owned(),
                pattern: options.groups.clone(),
                known_groups: all,
            },
        );
        let mut pending: [Vec<Subject>; 2] = [Vec::new(), Vec::new()];
        while let Some(item) = stream.items.recv().await {
            match item {
                states::Item::State(s) => {
                    let s = *s;
                    let batch = &mut pending[scope_slot(s.scope)];
                    batch.push(Subject {
                        scope: s.scope,
                        id: s.group_id.clone(),
                        state: Some(s),
                    });
                    if batch.len() == DETAILS_BATCH {
                        let batch = std::mem::take(batch);
                        self.batch(&mut pass, batch).await?;
                    }
                }
                states::Item::Unreadable(scope, id) => self.unread(
                    &mut pass,
                    &Subject {
                        scope,
                        id,
                        state: None,
                    },
                    "its state record is not a mutebridge.state/v1 group state".into(),
                ),
                states::Item::Partition { done, of } => {
                    pass.partitions = (done, of);
                    pass.progress();
                }
            }
        }
        for batch in pending {
            if !batch.is_empty() {
                self.batch(&mut pass, batch).await?;
            }
        }
        let known = match stream.scan.await {
            Ok(Ok(scanned)) => Some(scanned.known_groups),
            Ok(Err(e)) => {
                tracing::warn!(app = app.appkey(), error = %format!("{e:#}"), "cannot read the app's states to the end; its remaining groups are compared next pass");
                pass.summary
                    .failed(AppFailure::StateTopic, format!("{e:#}"));
                None
            }
            Err(e) => {
                pass.summary.failed(
                    AppFailure::StateTopic,
                    format!("the state topic reader failed: {e}"),
                );
                None
            }
        };
        if all {
            match known {
                Some(known) => self.listed(&mut pass, &known).await?,
                // Without the known groups, a listed group with a state
                // would be compared as one without.
                None => pass.summary.failed(
                    AppFailure::Listing,
                    "not listed: the app's states could not be read".into(),
                ),
            }
        }
        pass.progress_now();
        Ok(pass.summary)
    }

    /// `GET /chatgroups` page by page; each listed group without a state
    /// is compared (those with one were, from the state topic). A failed
    /// page, or a cursor given before (the listing would loop), ends the
    /// listing for this pass.
    async fn listed(
        &self,
        pass: &mut AppPass<'_>,
        known: &HashSet<states::KeyDigest>,
    ) -> anyhow::Result<()> {
        let app = pass.app;
        let mut cursor: Option<String> = None;
        let mut cursors: HashSet<String> = HashSet::new();
        let mut batch = Vec::new();
        let mut pages = 0usize;
        loop {
            let (ids, next) = match app.list_groups(cursor.as_deref()).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(app = app.appkey(), pages, error = %e, "cannot list the app's groups; the unlisted ones are compared next pass");
                    pass.summary.failed(
                        AppFailure::Listing,
                        format!("GET /chatgroups failed after {pages} page(s): {e}"),
                    );
                    break;
                }
            };
            pages += 1;
            pass.summary.listed += ids.len();
            for id in ids {
                let key = crate::state::key(app.appkey(), Scope::Group, &id);
                let selected = pass.options.groups.as_deref().is_none_or(|p| glob(p, &id));
                if selected && !known.contains(&states::digest(key.as_bytes())) {
                    batch.push(Subject {
                        scope: Scope::Group,
                        id,
                        state: None,
                    });
                    if batch.len() == DETAILS_BATCH {
                        self.batch(pass, std::mem::take(&mut batch)).await?;
                    }
                }
            }
            match next {
                None => break,
                Some(c) if !cursors.insert(c.clone()) => {
                    tracing::warn!(app = app.appkey(), pages, "GET /chatgroups gave back a cursor it gave before: the listing loops; it ends here");
                    pass.summary.failed(
                        AppFailure::Listing,
                        format!("GET /chatgroups gave back, after {pages} page(s), a cursor it gave before: the listing loops and was ended there"),
                    );
                    break;
                }
                Some(c) => cursor = Some(c),
            }
        }
        if !batch.is_empty() {
            self.batch(pass, batch).await?;
        }
        Ok(())
    }

    /// Reads, compares and corrects up to 100 groups of one scope.
    async fn batch(&self, pass: &mut AppPass<'_>, subjects: Vec<Subject>) -> anyhow::Result<()> {
        let app = pass.app;
        let Some(scope) = subjects.first().map(|s| s.scope) else {
            return Ok(());
        };
        if let Some(why) = app.token_failure().await {
            tracing::warn!(app = app.appkey(), groups = subjects.len(), error = %why, "no Easemob token: these groups are compared next pass");
            for s in &subjects {
                self.unread(pass, s, format!("no token: {why}"));
            }
            pass.progress();
            return Ok(());
        }
        let ids: Vec<&str> = subjects.iter().map(|s| s.id.as_str()).collect();
        let found = read::batch(app, scope, &ids).await;
        let share = self.config.reconcile.confirm_unmute_share;
        let mut confirm = Vec::new();
        for (subject, found) in subjects.into_iter().zip(found) {
            let found = match found {
                Ok(found) => found,
                Err(why) => {
                    self.unread(pass, &subject, why);
                    continue;
                }
            };
            let c = self.compare(app, &subject, &found);
            match found {
                Found::Read { mute_all, muted }
                    if diff::unmutes_need_confirmation(
                        subject.state.as_ref(),
                        muted.at_ms,
                        &c,
                        share,
                    ) =>
                {
                    let unmuted = c.unmuted().into_iter().map(str::to_owned).collect();
                    confirm.push(ToConfirm {
                        subject,
                        mute_all,
                        unmuted,
                    });
                }
                found => self.settle(pass, &subject, &found, c).await?,
            }
        }
        // Second reads of the mute lists, after the batch's first ones.
        let reads: Vec<_> = confirm
            .iter()
            .map(|t| read::mute_list(app, scope, &t.subject.id))
            .collect();
        let again: Vec<_> = stream::iter(reads)
            .buffered(read::CONCURRENT_READS)
            .collect()
            .await;
        for (t, again) in confirm.into_iter().zip(again) {
            let ToConfirm {
                subject,
                mute_all,
                unmuted,
            } = t;
            let muted = match again {
                Ok(muted) => muted,
                Err(e) => {
                    tracing::warn!(app = app.appkey(), group = subject.id, error = %e, "cannot read the mute list again to confirm its unmutes; the group is compared next pass");
                    self.unread(pass, &subject, format!("second read of the mute list: {e}"));
                    continue;
                }
            };
            let found = Found::Read { mute_all, muted };
            let c = self.compare(app, &subject, &found);
            if c.unmuted() == unmuted {
                self.settle(pass, &subject, &found, c).await?;
            } else {
                tracing::warn!(
                    app = app.appkey(), group = subject.id, first = unmuted.len(), second = c.unmuted().len(),
                    "two reads of the mute list disagree on which members to unmute; nothing published, the group is compared next pass"
                );
                pass.summary.held_back(&subject);
                self.metrics.group(GroupOutcome::HeldBack);
            }
        }
        pass.progress();
        Ok(())
    }

    /// Counts a group left for the next pass, and why.
    fn unread(&self, pass: &mut AppPass<'_>, subject: &Subject, why: String) {
        pass.summary.unread(subject, why);
        self.metrics.group(GroupOutcome::Unread);
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

    /// Counts what a read group came to, and publishes its corrections.
    async fn settle(
        &self,
        pass: &mut AppPass<'_>,
        subject: &Subject,
        found: &Found,
        c: Corrections,
    ) -> anyhow::Result<()> {
        let a = &mut pass.summary;
        for d in &c.differences {
            *a.differences.entry(<&str>::from(*d)).or_default() += 1;
            self.metrics.difference(*d);
        }
        let outcome = match (found, c.differences.is_empty()) {
            (Found::Gone { .. }, _) => GroupOutcome::Gone,
            (_, true) => GroupOutcome::Agreed,
            (_, false) if pass.options.dry_run => GroupOutcome::Differed,
            (_, false) => GroupOutcome::Corrected,
        };
        a.groups += 1;
        match outcome {
            GroupOutcome::Gone => a.gone += 1,
            GroupOutcome::Agreed => a.agreed += 1,
            _ => a.differed += 1,
        }
        self.metrics.group(outcome);
        if let Found::Gone { .. } = found {
            if subject.state.is_some() {
                tracing::info!(
                    app = pass.app.appkey(),
                    group = subject.id,
                    "Easemob says twice that the group does not exist: destroying its state"
                );
            }
        }
        for e in &c.events {
            (pass.seen)(e);
        }
        if !c.events.is_empty() && !pass.options.dry_run {
            a.published += self.publish(&c.events).await?;
        }
        Ok(())
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

/// The pending batch of a scope.
fn scope_slot(scope: Scope) -> usize {
    match scope {
        Scope::Group => 0,
        Scope::Chatroom => 1,
    }
}

impl AppPass<'_> {
    /// A progress line on stderr, at most once a second.
    fn progress(&mut self) {
        if self.last_report.elapsed() >= Duration::from_secs(1) {
            self.progress_now();
        }
    }

    fn progress_now(&mut self) {
        if !self.options.progress {
            return;
        }
        let a = &self.summary;
        let (done, of) = self.partitions;
        let listed = if a.listed > 0 {
            format!(", {} listed", a.listed)
        } else {
            String::new()
        };
        eprintln!(
            "[{:.0?}] {}: {} compared (state partitions {done} of {of}{listed}), {} differed, {} gone, {} unread, {} held back, {} event(s) published",
            self.started.elapsed(),
            self.app.appkey(),
            a.groups,
            a.differed,
            a.gone,
            a.unread,
            a.held_back,
            a.published
        );
        self.last_report = Instant::now();
    }
}

/// The summary lines `mutebridge reconcile` prints.
pub fn describe(s: &Summary, dry_run: bool, topic: &str) -> Vec<String> {
    let mut lines = vec![format!(
        "{} group(s) compared in {:.1} s: {} agreed, {} differed, {} gone, {} unread, {} held back{}",
        s.groups,
        s.seconds,
        s.agreed,
        s.differed,
        s.gone,
        s.unread,
        s.held_back,
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
    lines.extend(s.not_read());
    if s.without_rest > 0 {
        lines.push(format!(
            "{} state(s) of apps without [easemob.apps.rest] not compared",
            s.without_rest
        ));
    }
    lines
}
