//! Applying actions at one target: wait for the target's circuit breaker
//! and rate limiter, drop what a newer state has set since, send, read the
//! reply, and retry with backoff until the call succeeds, becomes moot, or
//! has to be dead-lettered.
//!
//! Failures are told apart by what they say about the target
//! ([`Transient`]):
//!
//! - an **outage** (connection error, timeout, 5xx, a system-error code)
//!   counts against the call's budget (`[worker.retry]`: attempts and time,
//!   whichever runs out first) and toward the target's circuit breaker;
//!   while the breaker is open no call goes out but its probe, and while it
//!   recovers only what its window admits; waiting for it, a failed probe
//!   and a failure in the recovery spend no budget, so an outage of hours
//!   (or a brownout after it) dead-letters nothing;
//! - a **rate-limit answer** of the provider app pauses every call of the
//!   target ([`crate::limit`]) and is tried again, up to
//!   `rate_limited_horizon_seconds`;
//! - a **group's own limit** (ZEGO 660300006) backs off that call only.
//!
//! Backoff is exponential with full jitter (a uniformly random wait up to
//! the ceiling, so retries of many groups do not synchronise), never
//! shorter than the provider's `Retry-After`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::{Histogram, IntCounter};
use tokio::time::Instant;

use super::breaker::{Breaker, BreakerConfig, Permit};
use super::dlq::Reason;
use super::lease::Lease;
use super::outcome::{ActionOutcome, Failure};
use crate::event::Event;
use crate::limit::{Limiter, FIRST_PAUSE};
use crate::policy::{Action, Op, User};
use crate::targets::{
    log, parse_retry_after, Method, Outcome, Reply, Request, Target, Transient, Unsendable,
};
use crate::time::unix_ms;
use crate::worker::config::RetryConfig;

/// Whether a call planned a while ago is still worth sending: a newer
/// event of the group may have set what it would change since.
pub trait Currency: Sync {
    fn superseded(&self, call: &Action) -> Superseded;
}

/// What of a call a newer state has set since it was planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Superseded {
    Nothing,
    /// All of it (a group-wide call, or every member of a member call).
    All,
    /// These members (event member IDs).
    Members(Vec<String>),
}

/// For targets that forward every event as it is.
pub struct AlwaysCurrent;

impl Currency for AlwaysCurrent {
    fn superseded(&self, _call: &Action) -> Superseded {
        Superseded::Nothing
    }
}

/// What one provider call came to.
#[derive(Debug)]
pub struct Delivered {
    /// The call as it was last sent (superseded users dropped).
    pub call: Action,
    /// A dead letter for users that failed for good (a partial failure)
    /// first, then how the call ended.
    pub outcomes: Vec<ActionOutcome>,
    /// The users the provider accepted (member calls).
    pub accepted: Vec<User>,
    /// When it was accepted (ms), and when the provider ends the mute by
    /// itself before the group does.
    pub at_ms: i64,
    pub lapses_at_ms: Option<i64>,
}

/// The metric handles of one target's deliverer.
pub struct DeliverMetrics {
    pub duration: Histogram,
    pub retries: IntCounter,
}

/// One target, with its limiter, breaker and failover position.
pub struct Deliverer {
    pub name: Arc<str>,
    pub target: Target,
    client: reqwest::Client,
    retry: RetryConfig,
    /// Every target that sends has one (a webhook without
    /// `rate_per_second` only for the back-off).
    limiter: Option<Arc<Limiter>>,
    pub breaker: Arc<Breaker>,
    host: AtomicUsize,
    metrics: DeliverMetrics,
    /// The pipeline's standing in its consumer group: no call goes out
    /// while it is in doubt (see [`super::lease`]).
    lease: Lease,
}

/// What one call has come to so far.
struct CallState {
    budget: Budget,
    /// Users that failed for good, with the provider's reason.
    failed: Vec<(String, String)>,
    /// Users the provider took.
    accepted: Vec<User>,
}

impl Default for CallState {
    fn default() -> Self {
        CallState {
            budget: Budget {
                attempts: 0,
                started: Instant::now(),
                waited: Duration::ZERO,
                limited_since: None,
                group_strikes: 0,
            },
            failed: Vec::new(),
            accepted: Vec::new(),
        }
    }
}

/// How much of a call's budget is spent.
struct Budget {
    /// Attempts that failed with an outage while the breaker was closed.
    attempts: u32,
    started: Instant,
    /// Time not the provider's fault (our limiter, the breaker, pauses).
    waited: Duration,
    /// Since when the call draws rate-limit answers.
    limited_since: Option<Instant>,
    /// Back-offs of the group's own limit in a row.
    group_strikes: u32,
}

/// Where an attempt leaves the call.
enum Next {
    Again(Duration),
    Done(ActionOutcome),
}

impl Deliverer {
    // The parts a target's delivery is made of, each built by the engine.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        target: Target,
        client: reqwest::Client,
        retry: RetryConfig,
        limiter: Option<Arc<Limiter>>,
        breaker: BreakerConfig,
        metrics: DeliverMetrics,
        lease: Lease,
    ) -> Deliverer {
        Deliverer {
            name: Arc::from(name),
            target,
            client,
            retry,
            limiter,
            breaker: Arc::new(Breaker::new(breaker)),
            host: AtomicUsize::new(0),
            metrics,
            lease,
        }
    }

    /// Applies `action` (split into calls of at most 20 users), one call
    /// after another; every call's result, in order.
    pub async fn apply(
        &self,
        action: Action,
        event: &Event,
        current: &dyn Currency,
    ) -> Vec<Delivered> {
        let mut results = Vec::new();
        for call in self.target.split(action) {
            results.push(self.apply_call(call, event, current).await);
        }
        results
    }

    async fn apply_call(
        &self,
        mut call: Action,
        event: &Event,
        current: &dyn Currency,
    ) -> Delivered {
        let mut call_state = CallState::default();
        let group = breaker_group(event);
        loop {
            let (permit, waited) = self.breaker.admit(group).await;
            call_state.budget.waited += waited;
            if !drop_superseded(&mut call, current) {
                return self.finish(call, call_state, ActionOutcome::Superseded);
            }
            if let Some(limiter) = &self.limiter {
                call_state.budget.waited += limiter.acquire().await;
            }
            // The breaker opened while this call waited for its slot.
            if permit.is_stale() {
                continue;
            }
            // After a stall: not before the group says the partition is
            // still ours (a revoke aborts this call instead).
            call_state.budget.waited += self.lease.wait().await;
            let sent = Instant::now();
            let outcome = match self.attempt(&call, event).await {
                Ok(o) => o,
                Err(Unsendable::Moot(why)) => {
                    return self.finish(call, call_state, ActionOutcome::Skipped(why.into()))
                }
                Err(Unsendable::Invalid(error)) => {
                    let attempts = call_state.budget.attempts;
                    let f = Failure::whole(Reason::PermanentError, error, attempts);
                    return self.finish(call, call_state, f);
                }
            };
            match self
                .settle(outcome, permit, sent, &mut call, &mut call_state)
                .await
            {
                Next::Done(last) => return self.finish(call, call_state, last),
                Next::Again(wait) => {
                    self.metrics.retries.inc();
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The call's result: the users that failed for good (a partial
    /// failure), then how it ended, and until when the provider holds it.
    fn finish(&self, call: Action, call_state: CallState, last: ActionOutcome) -> Delivered {
        let mut outcomes = Vec::new();
        if !call_state.failed.is_empty() {
            outcomes.push(partial_failure(
                call_state.failed,
                call_state.budget.attempts,
            ));
        }
        let now = SystemTime::now();
        let lapses_at_ms = matches!(last, ActionOutcome::Ok)
            .then(|| self.target.lapses(&call, now))
            .flatten();
        outcomes.push(last);
        Delivered {
            call,
            outcomes,
            accepted: call_state.accepted,
            at_ms: unix_ms(now),
            lapses_at_ms,
        }
    }

    /// What an attempt's outcome means for the call, the breaker and the
    /// limiter.
    async fn settle(
        &self,
        outcome: Outcome,
        permit: Permit<'_>,
        sent: Instant,
        call: &mut Action,
        call_state: &mut CallState,
    ) -> Next {
        match outcome {
            Outcome::Done => {
                permit.answered();
                self.admitted();
                call_state.accepted.append(&mut call.users.clone());
                Next::Done(ActionOutcome::Ok)
            }
            Outcome::Permanent { error } => {
                permit.answered();
                let attempts = call_state.budget.attempts + 1;
                Next::Done(Failure::whole(Reason::PermanentError, error, attempts))
            }
            Outcome::Partial { retry, failed } => {
                permit.answered();
                self.admitted();
                self.partial(call, call_state, retry, failed)
            }
            Outcome::Retry {
                error,
                kind,
                switch_host,
                after,
            } => {
                if kind == Transient::Outage {
                    return self.outage(permit, sent, call_state, error, switch_host, after);
                }
                permit.neutral();
                if let Some(dead) = self.past_horizon(&mut call_state.budget, sent, &error) {
                    return Next::Done(dead);
                }
                if kind == Transient::GroupLimited {
                    self.group_limited(call, call_state, &error, after)
                } else {
                    self.rate_limited(call, sent, &error, after).await
                }
            }
        }
    }

    /// The provider took the call: the limiter learns of it.
    fn admitted(&self) {
        if let Some(l) = &self.limiter {
            l.admitted();
        }
    }

    /// Some users were refused: those that may succeed later are tried
    /// again, the rest have failed for good.
    fn partial(
        &self,
        call: &mut Action,
        call_state: &mut CallState,
        retry: Vec<String>,
        gave_up: Vec<(String, String)>,
    ) -> Next {
        let settled =
            |u: &User| !retry.contains(&u.id) && !gave_up.iter().any(|(id, _)| *id == u.id);
        let done = call.users.iter().filter(|u| settled(u)).cloned();
        call_state.accepted.extend(done);
        call_state.failed.extend(gave_up);
        if retry.is_empty() {
            return Next::Done(ActionOutcome::Ok);
        }
        call.users.retain(|u| retry.contains(&u.id));
        let error = format!("failed for {} user(s), retrying them", retry.len());
        self.failed_attempt(&mut call_state.budget, error, Duration::ZERO, false)
    }

    /// The target's own limit: the shared limiter pauses the whole target.
    async fn rate_limited(
        &self,
        call: &Action,
        sent: Instant,
        error: &str,
        after: Option<Duration>,
    ) -> Next {
        match &self.limiter {
            Some(l) => {
                l.rate_limited(sent, after).await;
            }
            // Only `log`/`discard` have none, and they never get here.
            None => tokio::time::sleep(after.unwrap_or(FIRST_PAUSE)).await,
        }
        tracing::debug!(target = %self.name, rule = %call.rule, %error, "rate limited; retrying after the target's pause");
        Next::Again(Duration::ZERO)
    }

    /// One group's own limit (ZEGO 660300006): only this call backs off,
    /// doubling while it lasts.
    fn group_limited(
        &self,
        call: &Action,
        call_state: &mut CallState,
        error: &str,
        after: Option<Duration>,
    ) -> Next {
        let budget = &mut call_state.budget;
        budget.group_strikes += 1;
        let wait = FIRST_PAUSE
            .saturating_mul(1 << (budget.group_strikes - 1).min(16))
            .min(Duration::from_millis(self.retry.max_backoff_ms).max(FIRST_PAUSE))
            .max(after.unwrap_or_default());
        budget.waited += wait;
        tracing::debug!(target = %self.name, rule = %call.rule, %error, ?wait, "the group's own limit; only this group backs off");
        Next::Again(wait)
    }

    /// An outage answer (connection error, timeout, 5xx, a system error
    /// code): the breaker counts it, a multi-host target moves on, and
    /// the call backs off; a failed probe or ramp attempt spends no budget.
    fn outage(
        &self,
        permit: Permit<'_>,
        sent: Instant,
        call_state: &mut CallState,
        error: String,
        switch_host: bool,
        after: Option<Duration>,
    ) -> Next {
        call_state.budget.limited_since = None;
        let pass = permit.pass();
        permit.failed();
        let hosts = self.target.hosts();
        let switched = switch_host && hosts > 1;
        if switched {
            let host = self.host.load(Ordering::Relaxed);
            let next = (host + 1) % hosts;
            let _ = self
                .host
                .compare_exchange(host, next, Ordering::Relaxed, Ordering::Relaxed);
        }
        if !pass.spends_budget() {
            // The breaker reopened or narrowed its window: the call waits
            // for its next turn without spending its budget (the attempt's
            // time and a first backoff included, so that a call failing in
            // the ramp does not go again at once).
            let wait = backoff(&self.retry, 1).max(after.unwrap_or_default());
            call_state.budget.waited += sent.elapsed() + wait;
            if pass == super::breaker::Pass::Probe {
                tracing::info!(target = %self.name, %error, "circuit breaker probe failed; the target stays paused");
            } else {
                tracing::info!(target = %self.name, %error, "a call of the recovery ramp failed; the window narrows (no budget spent)");
            }
            return Next::Again(wait);
        }
        // A fresh host is tried at once; a full round of hosts backs off.
        let at_once =
            switched && !((call_state.budget.attempts + 1) as usize).is_multiple_of(hosts);
        self.failed_attempt(
            &mut call_state.budget,
            error,
            after.unwrap_or_default(),
            at_once,
        )
    }

    /// An attempt failed: the next one after a backoff (never sooner than
    /// the provider's `retry_after`; `at_once` for a fresh host), or a dead
    /// letter once the budget is spent.
    fn failed_attempt(
        &self,
        budget: &mut Budget,
        error: String,
        retry_after: Duration,
        at_once: bool,
    ) -> Next {
        budget.attempts += 1;
        let wait = if at_once {
            retry_after
        } else {
            backoff(&self.retry, budget.attempts).max(retry_after)
        };
        let spent = budget.started.elapsed().saturating_sub(budget.waited);
        let max_elapsed = Duration::from_secs(self.retry.max_elapsed_seconds);
        if budget.attempts >= self.retry.max_attempts || spent + wait > max_elapsed {
            let error = format!("{error} (gave up after {} attempts)", budget.attempts);
            return Next::Done(Failure::whole(
                Reason::RetriesExhausted,
                error,
                budget.attempts,
            ));
        }
        tracing::warn!(target = %self.name, attempt = budget.attempts, ?wait, %error, "call failed; retrying");
        Next::Again(wait)
    }

    /// A dead letter once rate-limit answers have gone on for longer than
    /// `rate_limited_horizon_seconds`.
    fn past_horizon(
        &self,
        budget: &mut Budget,
        sent: Instant,
        error: &str,
    ) -> Option<ActionOutcome> {
        let since = *budget.limited_since.get_or_insert(sent);
        let horizon = Duration::from_secs(self.retry.rate_limited_horizon_seconds);
        (since.elapsed() > horizon).then(|| {
            let error = format!(
                "{error} (still rate limited after {}s, worker.retry.rate_limited_horizon_seconds)",
                since.elapsed().as_secs()
            );
            Failure::whole(Reason::RateLimited, error, budget.attempts)
        })
    }

    /// One attempt: render the call for now and send it (the `log` target
    /// prints it instead).
    async fn attempt(&self, call: &Action, event: &Event) -> Result<Outcome, Unsendable> {
        let host = self.host.load(Ordering::Relaxed);
        let request = self.target.render(call, event, host, SystemTime::now())?;
        Ok(match (&self.target, request) {
            (Target::Log(_), request) => {
                log::print(&self.name, call, request.as_ref(), event);
                Outcome::Done
            }
            (_, None) => Outcome::Done,
            (_, Some(request)) => {
                let timer = self.metrics.duration.start_timer();
                let outcome = self.send(call, request).await;
                timer.observe_duration();
                outcome
            }
        })
    }

    async fn send(&self, call: &Action, request: Request) -> Outcome {
        let host = request.host();
        let mut builder = match request.method {
            Method::Get => self.client.get(&request.url),
            Method::Post => self.client.post(&request.url),
            Method::Delete => self.client.delete(&request.url),
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
                    error: transport_error(e, &host),
                    kind: Transient::Outage,
                    switch_host: true,
                    after: None,
                }
            }
        };
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            // The client follows none: a redirect could carry the signed
            // request (or a credential header) to another host.
            return Outcome::Permanent {
                error: format!("HTTP {status} from {host}: a redirect, and mutebridge follows none (a signed request must not go elsewhere); set the target's URL to the address it points to"),
            };
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        match response.bytes().await {
            Ok(body) => self.target.read(
                call,
                &Reply {
                    status,
                    retry_after,
                    body: &body,
                },
            ),
            Err(e) => Outcome::Retry {
                error: format!(
                    "HTTP {status}, body unreadable: {}",
                    transport_error(e, &host)
                ),
                kind: Transient::Outage,
                switch_host: true,
                after: retry_after,
            },
        }
    }
}

/// Who a call waits in the breaker as: its group (probes rotate among
/// groups).
fn breaker_group(event: &Event) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&event.appkey, event.scope, &event.group_id).hash(&mut h);
    h.finish()
}

/// Drops the users of `call` a newer state has set since; false when
/// nothing of it is left to send.
fn drop_superseded(call: &mut Action, current: &dyn Currency) -> bool {
    match current.superseded(call) {
        Superseded::Nothing => true,
        Superseded::All => false,
        Superseded::Members(gone) => {
            call.users.retain(|u| !gone.contains(&u.member));
            !call.users.is_empty()
        }
    }
}

/// The dead letter of the users a partial failure gave up on.
fn partial_failure(failed: Vec<(String, String)>, attempts: u32) -> ActionOutcome {
    let error = failed
        .iter()
        .map(|(u, e)| format!("{u}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    ActionOutcome::DeadLettered(Failure {
        reason: Reason::PermanentError,
        error,
        attempts,
        users: failed.into_iter().map(|(u, _)| u).collect(),
    })
}

/// A transport error, naming the host and never the URL (whose path or
/// query may carry a token, or a signature that is valid for minutes).
fn transport_error(e: reqwest::Error, host: &str) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "transport error"
    };
    let e = e.without_url();
    let mut text = format!("{kind} ({host}): {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Whether `op` sets members (the accepted users matter) or the group.
pub fn per_member(op: &Op) -> bool {
    matches!(op, Op::MuteMembers { .. } | Op::UnmuteMembers)
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
