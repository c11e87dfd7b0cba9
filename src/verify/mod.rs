//! Verification: read back what each mute target's provider really holds,
//! compare it with what the target should hold, and repair the drift.
//!
//! mutebridge knows what it sent; a provider can still lose it or change
//! it: a moderator lifts a mute in the provider's console, a chatroom is
//! destroyed and re-created empty, a call went to the wrong app, a
//! provider lost state in an incident. A pass, per target:
//!
//! 1. [`source`]: the selected groups' newest states, and the target's own
//!    records of what it applied, from the state topic;
//! 2. [`expect`]: what the target should hold, place by place, planned
//!    through the target's part of the policy as the worker plans it;
//! 3. [`read`]: what the provider holds, through the provider's read-back
//!    ([`zego`], [`rongcloud`], [`tencent`], [`agora`]), every read under
//!    the target's own rate limiter;
//! 4. [`diff`]: each difference per place and dimension (missing, extra,
//!    wrong end), and what the provider cannot show (ZEGO's member mutes);
//! 5. [`repair`] (`--repair`): a `resync` marker per drifted group naming
//!    exactly the dimensions to fix, which the worker applies in the
//!    group's order through the target's own path, sending what is left of
//!    a timed mute.
//!
//! [`report`] renders a pass for people and as JSON lines; [`metrics`]
//! counts it. A pass runs on demand (`mutebridge verify`) or every
//! `[verify] interval_seconds` in the reconcile role ([`config`]).

pub mod agora;
pub mod config;
pub mod diff;
pub mod expect;
pub mod metrics;
pub mod observed;
pub mod providers;
pub mod read;
pub mod repair;
pub mod report;
pub mod rongcloud;
pub mod source;
pub mod tencent;
pub mod zego;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::message::Header;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::Checked;
use crate::event::HEADER_RESYNC_TARGET;
use crate::ingest::publish::event_headers;
use crate::kafka::{self, Cluster};
use crate::limit::{Limiter, Spec};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::targets::Target;
use crate::time::now_ms;
use diff::{Compared, Finding};
use expect::Source;
use metrics::{PlaceOutcome, VerifyMetrics};
use providers::Reader;
use read::Io;
use repair::{Plan, Repair};
pub use source::Selection;

/// The longest target-wide pause after rate-limit answers without
/// `Retry-After`.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// What one pass is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub selection: Selection,
    /// Publish the repairs.
    pub repair: bool,
    /// Plan the repairs and publish nothing (implies reporting only).
    pub dry_run: bool,
}

/// What a pass found at one target.
#[derive(Debug)]
pub struct TargetReport {
    pub target: String,
    pub kind: &'static str,
    /// Places compared (provider groups and chatrooms).
    pub places: usize,
    pub compared: Compared,
    /// Dimensions not compared: the target has not applied them yet.
    pub pending: usize,
    /// Each finding's repair, in the order of `compared.findings`.
    pub plans: Vec<Plan>,
    /// The source group of each finding, in the same order.
    pub sources: Vec<Option<Source>>,
    /// The repair markers, by group.
    pub repairs: BTreeMap<Source, Repair>,
    /// Markers published (0 unless repairing and not a dry run).
    pub published: usize,
    /// Read attempts, by the provider's API name.
    pub reads: BTreeMap<&'static str, usize>,
    /// What the provider cannot show.
    pub blind: Option<&'static str>,
    pub seconds: f64,
}

/// What a pass found.
#[derive(Debug, Default)]
pub struct Summary {
    pub targets: Vec<TargetReport>,
    /// Configured targets that were not read back, and why.
    pub skipped: Vec<(String, &'static str)>,
    /// Group states compared.
    pub states: usize,
    pub repair: bool,
    pub dry_run: bool,
    pub seconds: f64,
}

impl Summary {
    pub fn differences(&self) -> usize {
        self.targets.iter().map(|t| t.compared.findings.len()).sum()
    }

    /// Every place read and nothing found (or, repairing, every
    /// difference repairable).
    pub fn ok(&self) -> bool {
        self.targets.iter().all(|t| {
            t.compared.unread.is_empty()
                && !t.plans.iter().any(|p| matches!(p, Plan::Cannot(_)))
                && (t.compared.findings.is_empty() || (self.repair && !self.dry_run))
        })
    }
}

/// One target a verifier reads back.
struct Verified {
    name: String,
    kind: &'static str,
    reader: Reader,
    io: Io,
    policy: Policy,
    shape: Target,
}

/// Reads targets back, compares, repairs.
pub struct Verifier {
    config: Checked,
    bootstrap: String,
    targets: Vec<Verified>,
    skipped: Vec<(String, &'static str)>,
    producer: FutureProducer,
    metrics: VerifyMetrics,
}

impl Verifier {
    /// Builds the read-back of `only` (or of every target that has one;
    /// with `scheduled`, of `[verify] targets` when given).
    pub async fn start(
        config: &Checked,
        cluster: &Cluster,
        metrics: &Metrics,
        only: Option<&str>,
        scheduled: bool,
    ) -> anyhow::Result<Verifier> {
        if !config.worker.track_state {
            bail!("worker.track_state is off: the workers keep no mute state to verify the targets against");
        }
        cluster
            .require_topic(&config.kafka, &config.worker.state_topic)
            .await
            .context("the state topic is the workers' (start the workers once first)")?;
        let names: Vec<String> = match only {
            Some(t) => {
                if !config.targets.contains_key(t) {
                    let known: Vec<&str> = config.targets.keys().map(String::as_str).collect();
                    bail!(
                        "--target {t}: no [targets.{t}] in the config; defined: {}",
                        known.join(", ")
                    );
                }
                vec![t.to_owned()]
            }
            None if scheduled && !config.verify.targets.is_empty() => config.verify.targets.clone(),
            None => config.targets.keys().cloned().collect(),
        };
        let timeout = Duration::from_millis(config.verify.request_timeout_ms);
        let (mut targets, mut skipped) = (Vec::new(), Vec::new());
        for name in names {
            let target = &config.targets[&name];
            let reader = match Reader::for_target(target) {
                Ok(Ok(r)) => r,
                Ok(Err(why)) if only.is_none() => {
                    skipped.push((name, why));
                    continue;
                }
                Ok(Err(why)) => bail!("target {name} ({}): {why}", target.kind()),
                Err(e) => bail!("targets.{name}.{e}"),
            };
            let spec = target
                .limit_spec(&name)
                .expect("a target with a read-back sends, so it has a rate limit");
            let label = format!("verify:{name}");
            let limiter = Limiter::new(
                Spec {
                    name: &label,
                    ..spec
                },
                MAX_PAUSE,
                metrics.worker.limit_metrics(&label, true),
            )?;
            // The reads' own pace: a share of the target's limit (in redis
            // mode, only while Redis does not answer).
            limiter.set_share((config.verify.read_share * 1000.0).round() as usize, 1000);
            let shape = Target::new(target);
            let io = Io::new(
                &name,
                limiter,
                shape.hosts(),
                timeout,
                metrics.verify.target(&name),
            )?;
            targets.push(Verified {
                kind: target.kind(),
                policy: config.policy().only(&name),
                name,
                reader,
                io,
                shape,
            });
        }
        if targets.is_empty() {
            bail!(
                "no target can be read back (ZEGO, RongCloud, Tencent and Agora targets can): {}",
                describe_skipped(&skipped)
            );
        }
        let producer: FutureProducer =
            kafka::producer_config(&config.kafka, cluster.bootstrap_servers())
                .create()
                .context(
                    "cannot create the Kafka producer (check the [kafka.client] properties)",
                )?;
        metrics.verify.interval.set(if scheduled {
            config.verify.interval_seconds as i64
        } else {
            0
        });
        Ok(Verifier {
            config: config.clone(),
            bootstrap: cluster.bootstrap_servers().to_owned(),
            targets,
            skipped,
            producer,
            metrics: metrics.verify.clone(),
        })
    }

    /// The targets this verifier reads back.
    pub fn target_names(&self) -> Vec<&str> {
        self.targets.iter().map(|t| t.name.as_str()).collect()
    }

    /// A pass at once, then one `[verify] interval_seconds` after each
    /// ends, until `stop`; repairs when `[verify] repair` says so.
    pub async fn run(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let interval = Duration::from_secs(self.config.verify.interval_seconds.max(1));
        let options = Options {
            repair: self.config.verify.repair,
            ..Options::default()
        };
        self.metrics.last_pass_end.set(now_ms() as f64 / 1000.0);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                done = self.pass(&options) => match done {
                    Ok(s) => {
                        for t in &s.targets {
                            tracing::info!(
                                target = %t.target, places = t.places, agreed = t.compared.agreed,
                                differed = t.compared.differed, unread = t.compared.unread.len(),
                                pending = t.pending, unverified = t.compared.unverified,
                                repairs = t.published, seconds = format!("{:.1}", t.seconds),
                                "verify pass finished"
                            );
                            for f in &t.compared.findings {
                                tracing::warn!(target = %t.target, place = %f.place, dimension = <&str>::from(f.dimension), user = f.user.as_deref().unwrap_or("-"), difference = <&str>::from(f.difference), "the provider does not hold what the target should");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "verify pass failed; trying again next interval"),
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

    /// One pass over every target.
    pub async fn pass(&self, options: &Options) -> anyhow::Result<Summary> {
        let started = Instant::now();
        let (kafka, topic) = (
            self.config.kafka.clone(),
            self.config.worker.state_topic.clone(),
        );
        let names: Vec<String> = self.targets.iter().map(|t| t.name.clone()).collect();
        let (bootstrap, selection) = (self.bootstrap.clone(), options.selection.clone());
        let read = tokio::task::spawn_blocking(move || {
            source::read(&kafka, &bootstrap, &topic, &names, &selection)
        })
        .await??;
        if read.unreadable > 0 {
            tracing::warn!(
                records = read.unreadable,
                "records in the state topic are neither states nor applied records; skipped"
            );
        }
        let mut summary = Summary {
            states: read.states.len(),
            skipped: self.skipped.clone(),
            repair: options.repair,
            dry_run: options.dry_run,
            ..Summary::default()
        };
        // Each target on its own limiter: read together.
        let reports = self.targets.iter().map(|t| self.verify(t, &read, options));
        for report in futures_util::future::join_all(reports).await {
            summary.targets.push(report?);
        }
        summary.seconds = started.elapsed().as_secs_f64();
        self.metrics
            .last_pass_differences
            .set(summary.differences() as i64);
        self.metrics.last_pass_end.set(now_ms() as f64 / 1000.0);
        Ok(summary)
    }

    async fn verify(
        &self,
        t: &Verified,
        read: &source::Read,
        options: &Options,
    ) -> anyhow::Result<TargetReport> {
        let started = Instant::now();
        let reads_before = t.io.calls();
        let expected = expect::expected(
            &t.name,
            &t.policy,
            &t.shape,
            &read.states,
            &read.applied,
            now_ms(),
        );
        let holdings = t.reader.read(&t.io, &expected).await;
        let sight = t.reader.sight();
        let compared = diff::compare(&expected, &holdings, sight.tolerance_ms, now_ms());
        let (repairs, plans) = repair::plan(&expected, &t.policy, &compared.findings);
        let sources = compared
            .findings
            .iter()
            .map(|f| source_of(&expected, f))
            .collect();
        let mut published = 0;
        if options.repair && !options.dry_run && !repairs.is_empty() {
            published = self.publish(&t.name, &repairs).await?;
        }
        let m = &self.metrics;
        m.place(&t.name, PlaceOutcome::Agreed, compared.agreed);
        m.place(&t.name, PlaceOutcome::Differed, compared.differed);
        m.place(&t.name, PlaceOutcome::Unread, compared.unread.len());
        for f in &compared.findings {
            m.difference(&t.name, f.dimension, f.difference);
        }
        m.unverified(&t.name, compared.unverified);
        m.repaired(&t.name, published);
        let mut reads = t.io.calls();
        for (api, n) in reads_before {
            if let Some(now) = reads.get_mut(api) {
                *now -= n;
            }
        }
        Ok(TargetReport {
            target: t.name.clone(),
            kind: t.kind,
            places: expected.places.len(),
            pending: expected.pending,
            compared,
            plans,
            sources,
            repairs,
            published,
            reads,
            blind: sight.blind,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Publishes one marker per repaired group and waits for Kafka's
    /// acknowledgement of each.
    async fn publish(
        &self,
        target: &str,
        repairs: &BTreeMap<Source, Repair>,
    ) -> anyhow::Result<usize> {
        let topic = &self.config.kafka.topic;
        let run = now_ms();
        let mut pending = Vec::with_capacity(repairs.len());
        for (i, (source, repair)) in repairs.iter().enumerate() {
            let marker = repair::marker(
                source,
                target,
                repair,
                &format!("verify-{run}-{i}"),
                now_ms(),
            );
            let payload = serde_json::to_vec(&marker).expect("events always serialize");
            let headers = event_headers(&marker).insert(Header {
                key: HEADER_RESYNC_TARGET,
                value: Some(target),
            });
            let record = FutureRecord::to(topic)
                .key(marker.group_id.as_str())
                .payload(&payload)
                .headers(headers);
            let delivery = self.producer.send_result(record).map_err(|(e, _)| {
                anyhow::anyhow!("cannot publish a repair marker to {topic}: {e}")
            })?;
            pending.push(delivery);
        }
        let total = pending.len();
        for (done, delivery) in pending.into_iter().enumerate() {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => bail!("Kafka did not take a repair marker for {topic}: {e}; {done} of {total} published (running verify --repair again is safe)"),
                Err(_) => bail!("the producer shut down; {done} of {total} repair markers published"),
            }
        }
        Ok(total)
    }
}

/// The source group a finding belongs to: its dimension's, or the first
/// group the policy sends to its place.
fn source_of(expected: &expect::Expected, f: &Finding) -> Option<Source> {
    let index = match &f.dim {
        Some(d) => Some(d.source),
        None => expected
            .places
            .get(&f.place)
            .and_then(|w| w.sources.first().copied()),
    };
    index.map(|i| expected.sources[i].clone())
}

fn describe_skipped(skipped: &[(String, &'static str)]) -> String {
    if skipped.is_empty() {
        return "none is configured".into();
    }
    skipped
        .iter()
        .map(|(n, why)| format!("{n}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}
