//! Applying actions: wait for the target's rate limiter, send, read the
//! reply, and retry with backoff until the call succeeds, becomes moot, or
//! has to be dead-lettered.
//!
//! Backoff is exponential with full jitter (a uniformly random wait up to
//! the ceiling, so retries of many groups do not synchronise), never shorter
//! than the provider's `Retry-After`. The budget is `[worker.retry]`: a
//! number of attempts and a total time, whichever runs out first; time
//! spent waiting for our own limiter does not count against it.
//!
//! A rate-limit answer is not a failure of the call: the whole target
//! pauses ([`crate::limit`]), the call is tried again, and only
//! `rate_limited_horizon_seconds` of such answers dead-letter it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use prometheus::{Histogram, IntCounter};
use tokio::time::Instant;

use super::dlq::Reason;
use super::outcome::{ActionOutcome, Failure};
use crate::config::{RetryConfig, WorkerConfig};
use crate::event::Event;
use crate::limit::Limiter;
use crate::metrics::WorkerMetrics;
use crate::policy::Action;
use crate::target::{
    parse_retry_after, Method, Outcome, Reply, Request, Target, TargetConfig, Unsendable,
};

/// A target with its limiter, failover position and metric handles.
pub struct TargetRuntime {
    pub name: Arc<str>,
    pub target: Target,
    /// Every target that sends has one (a webhook without
    /// `rate_per_second` only for the back-off).
    limiter: Option<Arc<Limiter>>,
    host: AtomicUsize,
    duration: Histogram,
    retries: IntCounter,
}

/// Applies calls to the configured targets.
pub struct Deliverer {
    client: reqwest::Client,
    retry: RetryConfig,
    targets: HashMap<Arc<str>, Arc<TargetRuntime>>,
}

impl Deliverer {
    pub fn new(
        config: &WorkerConfig,
        targets: &BTreeMap<String, TargetConfig>,
        metrics: &WorkerMetrics,
    ) -> anyhow::Result<Deliverer> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .connect_timeout(Duration::from_millis(config.request_timeout_ms.min(5000)))
            // RongCloud asks for idle keep-alive under 55 s.
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("mutebridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        let mut runtimes: HashMap<Arc<str>, Arc<TargetRuntime>> = HashMap::new();
        for (name, cfg) in targets {
            let limiter = match cfg.limit_spec(name) {
                Some(spec) => {
                    let handles = metrics.limit_metrics(name, spec.rate_per_second.is_some());
                    let max_pause = Duration::from_millis(config.retry.max_backoff_ms);
                    Some(Arc::new(Limiter::new(spec, max_pause, handles)?))
                }
                None => None,
            };
            let name: Arc<str> = Arc::from(name.as_str());
            let runtime = TargetRuntime {
                name: name.clone(),
                target: Target::new(cfg),
                limiter,
                host: AtomicUsize::new(0),
                duration: metrics.action_duration.with_label_values(&[name.as_ref()]),
                retries: metrics.action_retries.with_label_values(&[name.as_ref()]),
            };
            runtimes.insert(name, Arc::new(runtime));
        }
        Ok(Deliverer {
            client,
            retry: config.retry.clone(),
            targets: runtimes,
        })
    }

    /// The targets' rate limiters, for the rebalance callback to set
    /// their shares.
    pub fn limiters(&self) -> Vec<Arc<Limiter>> {
        self.targets
            .values()
            .filter_map(|rt| rt.limiter.clone())
            .collect()
    }

    /// Applies `action` (split into calls of at most 20 users), one call
    /// after another; every call's result, in order.
    pub async fn apply(&self, action: Action, event: &Event) -> Vec<ActionOutcome> {
        let Some(rt) = self.targets.get(&action.target).cloned() else {
            // The policy is checked against the targets at load time.
            let error = format!("no target named {}", action.target);
            return vec![Failure::whole(Reason::PermanentError, error, 0)];
        };
        let mut results = Vec::new();
        for call in rt.target.split(action) {
            results.extend(self.apply_call(&rt, call, event).await);
        }
        results
    }

    async fn apply_call(
        &self,
        rt: &TargetRuntime,
        mut call: Action,
        event: &Event,
    ) -> Vec<ActionOutcome> {
        let started = Instant::now();
        let budget = Duration::from_secs(self.retry.max_elapsed_seconds);
        let horizon = Duration::from_secs(self.retry.rate_limited_horizon_seconds);
        let mut failed_users: Vec<(String, String)> = Vec::new();
        // Attempts that failed other than by a rate-limit answer.
        let mut attempts = 0u32;
        // Time spent waiting for our own limiter (and the target's pauses):
        // not the provider's failure, so not part of the retry budget.
        let mut waited = Duration::ZERO;
        let mut limited_since: Option<Instant> = None;
        let finish = |failed_users: Vec<(String, String)>, attempts: u32, last: ActionOutcome| {
            let mut out = Vec::new();
            if !failed_users.is_empty() {
                out.push(ActionOutcome::DeadLettered(Failure {
                    reason: Reason::PermanentError,
                    error: failed_users
                        .iter()
                        .map(|(u, e)| format!("{u}: {e}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                    attempts,
                    users: failed_users.into_iter().map(|(u, _)| u).collect(),
                }));
            }
            out.push(last);
            out
        };
        loop {
            attempts += 1;
            if let Some(limiter) = &rt.limiter {
                waited += limiter.acquire().await;
            }
            let sent = Instant::now();
            let host = rt.host.load(Ordering::Relaxed);
            let request = match rt.target.render(&call, event, host, SystemTime::now()) {
                Ok(r) => r,
                Err(Unsendable::Moot(why)) => {
                    return finish(failed_users, attempts, ActionOutcome::Skipped(why.into()))
                }
                Err(Unsendable::Invalid(error)) => {
                    let f = Failure::whole(Reason::PermanentError, error, attempts);
                    return finish(failed_users, attempts, f);
                }
            };
            let outcome = match (&rt.target, request) {
                (Target::Log(_), Some(r)) => {
                    println!("[{}] rule {:?} would send:\n{r}\n", rt.name, &*call.rule);
                    Outcome::Done
                }
                (Target::Log(_), None) => {
                    println!("[{}] {}", rt.name, Target::describe(&call, event));
                    Outcome::Done
                }
                (_, None) => Outcome::Done,
                (_, Some(r)) => {
                    let timer = rt.duration.start_timer();
                    let outcome = self.send(rt, &call, r).await;
                    timer.observe_duration();
                    outcome
                }
            };
            if let (Some(limiter), Outcome::Done | Outcome::Partial { .. }) =
                (&rt.limiter, &outcome)
            {
                limiter.admitted();
            }
            let (error, after, switch_host, rate_limited) = match outcome {
                Outcome::Done => return finish(failed_users, attempts, ActionOutcome::Ok),
                Outcome::Permanent { error } => {
                    let f = Failure::whole(Reason::PermanentError, error, attempts);
                    return finish(failed_users, attempts, f);
                }
                Outcome::Partial { retry, failed } => {
                    failed_users.extend(failed);
                    if retry.is_empty() {
                        return finish(failed_users, attempts, ActionOutcome::Ok);
                    }
                    let error = format!("failed for {} user(s), retrying them", retry.len());
                    call.users = retry;
                    (error, None, false, false)
                }
                Outcome::Retry {
                    error,
                    rate_limited,
                    switch_host,
                    after,
                } => (error, after, switch_host, rate_limited),
            };
            if rate_limited {
                // Not this call's failure: the whole target pauses, and the
                // call goes again once the limiter lets it.
                attempts -= 1;
                let since = *limited_since.get_or_insert(sent);
                if since.elapsed() > horizon {
                    let error = format!(
                        "{error} (still rate limited after {}s, worker.retry.rate_limited_horizon_seconds)",
                        since.elapsed().as_secs()
                    );
                    let f = Failure::whole(Reason::RateLimited, error, attempts);
                    return finish(failed_users, attempts, f);
                }
                rt.retries.inc();
                match &rt.limiter {
                    Some(limiter) => {
                        limiter.rate_limited(sent, after).await;
                    }
                    // Only `log`/`discard` have none, and they never get here.
                    None => tokio::time::sleep(after.unwrap_or(crate::limit::FIRST_PAUSE)).await,
                }
                tracing::debug!(target = %rt.name, rule = %call.rule, %error, "rate limited; retrying after the target's pause");
                continue;
            }
            limited_since = None;
            let hosts = rt.target.hosts();
            let switched = switch_host && hosts > 1;
            if switched {
                let _ = rt.host.compare_exchange(
                    host,
                    (host + 1) % hosts,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            // A fresh host is tried at once; a full round of hosts backs off.
            let wait = if switched && !(attempts as usize).is_multiple_of(hosts) {
                after.unwrap_or_default()
            } else {
                backoff(&self.retry, attempts).max(after.unwrap_or_default())
            };
            let spent = started.elapsed().saturating_sub(waited);
            if attempts >= self.retry.max_attempts || spent + wait > budget {
                let error = format!("{error} (gave up after {attempts} attempts)");
                let f = Failure::whole(Reason::RetriesExhausted, error, attempts);
                return finish(failed_users, attempts, f);
            }
            tracing::warn!(target = %rt.name, rule = %call.rule, attempt = attempts, ?wait, rate_limited, %error, "action failed; retrying");
            rt.retries.inc();
            tokio::time::sleep(wait).await;
        }
    }

    async fn send(&self, rt: &TargetRuntime, call: &Action, request: Request) -> Outcome {
        let mut builder = match request.method {
            Method::Get => self.client.get(&request.url),
            Method::Post => self.client.post(&request.url),
        };
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    error: transport_error(&e),
                    rate_limited: false,
                    switch_host: true,
                    after: None,
                }
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        match response.bytes().await {
            Ok(body) => rt.target.read(
                call,
                &Reply {
                    status,
                    retry_after,
                    body: &body,
                },
            ),
            Err(e) => Outcome::Retry {
                error: format!("HTTP {status}, body unreadable: {}", transport_error(&e)),
                rate_limited: false,
                switch_host: true,
                after: retry_after,
            },
        }
    }
}

fn transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "transport error"
    };
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Full-jitter backoff before attempt `attempts + 1`: uniform in
/// `[0, min(max, initial * 2^(attempts-1))]`.
pub fn backoff(retry: &RetryConfig, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let ceiling = retry
        .initial_backoff_ms
        .saturating_mul(1u64 << exp)
        .min(retry.max_backoff_ms);
    Duration::from_millis(fastrand::u64(0..=ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_growing_ceiling() {
        let retry = RetryConfig {
            max_attempts: 10,
            max_elapsed_seconds: 60,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..Default::default()
        };
        for attempt in 1..12 {
            let ceiling = (100u64 << (attempt - 1).min(30)).min(1000);
            let mut seen_above_half = false;
            for _ in 0..200 {
                let b = backoff(&retry, attempt).as_millis() as u64;
                assert!(b <= ceiling, "attempt {attempt}: {b} > {ceiling}");
                seen_above_half |= b > ceiling / 2;
            }
            assert!(seen_above_half, "jitter should span the range");
        }
    }
}
