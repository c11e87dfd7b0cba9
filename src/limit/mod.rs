//! How fast a target may be called: one provider limit for the whole
//! consumer group, however many worker replicas share it.
//!
//! A target's `rate_per_second` is the provider's limit for everything that
//! calls it (ZEGO: 20/s per AppID; RongCloud: 100/s per app key), less
//! `headroom`. Two modes keep the replicas under it together:
//!
//! - **partition share** (default): each replica spaces its calls at
//!   `limit × assigned partitions ÷ all partitions`, set from the rebalance
//!   callback ([`Shares`]). Shares never add up to more than the limit: a
//!   revoke lowers a share before its partitions move, an assignment raises
//!   it only after they arrived.
//! - **redis**: one GCRA schedule in Redis ([`redis::Gcra`]) hands out
//!   slots to every caller of the provider app, so one busy replica can use
//!   the whole limit. While Redis does not answer, the replica falls back to
//!   its partition share and probes Redis until it answers again.
//!
//! On top of either, a provider's rate-limit answer pauses *every* call of
//! the target (honouring `Retry-After`), not only the one that drew it; in
//! redis mode the pause is written into the shared schedule, so the other
//! replicas hold too.
//!
//! One caller at a time takes the next slot (a FIFO turn), so each replica
//! has at most one slot reserved ahead: a rebalance or a Redis outage
//! changes the pace from the next call on, not after a backlog of
//! reservations made under the old one.

pub mod config;
pub mod redis;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus::{Counter, Gauge, IntCounter, IntGauge};
use tokio::sync::watch;
use tokio::time::Instant;

pub use config::{Mode, RateLimitConfig};
use redis::Gcra;

/// The first pause after a rate-limit answer without `Retry-After`; it
/// doubles with each further answer to a call sent after the pause began,
/// up to `worker.retry.max_backoff_ms` (never below this). Providers count
/// per second, so one second lets their window move on.
pub const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest `Retry-After` honoured (a broken header must not stall a
/// target for a day).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(900);
/// How often an unreachable Redis is tried again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What a limiter needs to know about its target.
pub struct Spec<'a> {
    pub name: &'a str,
    /// `kind` in the config (`zego`, `rongcloud`, `webhook`).
    pub kind: &'a str,
    /// The provider app the limit belongs to (ZEGO AppID, RongCloud app key).
    pub app: String,
    /// `rate_per_second`; `None` = no spacing (only the back-off applies).
    pub rate_per_second: Option<f64>,
    pub config: &'a RateLimitConfig,
}

/// The metric handles of one target's limiter. `share` and `exact` exist
/// only for targets with a `rate_per_second` (a gauge stuck at 0 would read
/// as "may not call at all").
#[derive(Clone)]
pub struct LimitMetrics {
    pub share: Option<Gauge>,
    pub exact: Option<IntGauge>,
    pub fallbacks: IntCounter,
    pub rate_limited: IntCounter,
    pub waited: Counter,
}

/// The pace this replica keeps while it is on its partition share.
#[derive(Clone)]
struct Share {
    rate: f64,
    /// `None` while no partition is assigned (nothing may be sent).
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

/// The target-wide back-off after rate-limit answers.
#[derive(Default)]
struct Pause {
    until: Option<Instant>,
    began: Option<Instant>,
    strikes: u32,
}

/// The caller whose call goes next holds this.
struct Turn {
    /// When this replica's last call went.
    last: Option<Instant>,
    /// Whether that call went by the Redis schedule.
    exact: bool,
}

/// Redis mode: the shared schedule and whether it is in force.
struct Exact {
    gcra: Gcra,
    up: AtomicBool,
    probing: AtomicBool,
    name: Arc<str>,
    metrics: LimitMetrics,
}

/// One target's limiter.
pub struct Limiter {
    name: Arc<str>,
    /// Calls per second for the whole consumer group, headroom applied.
    limit: Option<f64>,
    burst: NonZeroU32,
    turn: tokio::sync::Mutex<Turn>,
    share: watch::Sender<Share>,
    exact: Option<Arc<Exact>>,
    pause: Mutex<Pause>,
    max_pause: Duration,
    metrics: LimitMetrics,
}

impl Limiter {
    /// `max_pause`: the longest back-off without `Retry-After`.
    pub fn new(
        spec: Spec<'_>,
        max_pause: Duration,
        metrics: LimitMetrics,
    ) -> anyhow::Result<Limiter> {
        let name: Arc<str> = Arc::from(spec.name);
        let cfg = spec.config;
        let limit = spec.rate_per_second.map(|r| r * cfg.headroom);
        let exact = match (cfg.mode, &cfg.url, limit) {
            (Mode::Redis, Some(url), Some(_)) => {
                let gcra = Gcra::new(
                    url.expose(),
                    redis::key(spec.kind, &spec.app),
                    Duration::from_millis(cfg.redis_timeout_ms),
                )
                .map_err(|e| {
                    anyhow::anyhow!(
                        "targets.{}.rate_limit.url is not a usable Redis URL: {:?}",
                        spec.name,
                        e.kind()
                    )
                })?;
                tracing::info!(target = %name, key = gcra.key(), "rate limit kept in Redis");
                Some(Arc::new(Exact {
                    gcra,
                    // Assumed up until a call says otherwise.
                    up: AtomicBool::new(true),
                    probing: AtomicBool::new(false),
                    name: name.clone(),
                    metrics: metrics.clone(),
                }))
            }
            _ => None,
        };
        if let Some(g) = &metrics.exact {
            g.set(i64::from(exact.is_some()));
        }
        if let Some(g) = &metrics.share {
            g.set(0.0);
        }
        Ok(Limiter {
            name,
            limit,
            burst: NonZeroU32::new(cfg.burst).unwrap_or(NonZeroU32::MIN),
            turn: tokio::sync::Mutex::new(Turn {
                last: None,
                exact: exact.is_some(),
            }),
            share: watch::Sender::new(Share {
                rate: 0.0,
                limiter: None,
            }),
            exact,
            pause: Mutex::new(Pause::default()),
            max_pause: max_pause.max(FIRST_PAUSE),
            metrics,
        })
    }

    /// This replica's share, in calls per second.
    pub fn share(&self) -> f64 {
        self.share.borrow().rate
    }

    /// True while the Redis schedule is in force (redis mode, Redis up).
    pub fn exact(&self) -> bool {
        self.exact
            .as_ref()
            .is_some_and(|e| e.up.load(Ordering::Relaxed))
    }

    /// Sets this replica's share to `assigned ÷ total` of the limit.
    pub fn set_share(&self, assigned: usize, total: usize) {
        let Some(limit) = self.limit else {
            return;
        };
        let rate = if total == 0 {
            0.0
        } else {
            limit * assigned.min(total) as f64 / total as f64
        };
        let limiter = (rate > 0.0).then(|| {
            let period = Duration::from_secs_f64(1.0 / rate);
            Arc::new(RateLimiter::direct(
                Quota::with_period(period)
                    .expect("a positive rate has a positive period")
                    .allow_burst(self.burst),
            ))
        });
        self.share.send_replace(Share { rate, limiter });
        if let Some(g) = &self.metrics.share {
            g.set(rate);
        }
        tracing::info!(
            target = %self.name,
            share_per_second = format!("{rate:.2}"),
            limit_per_second = format!("{limit:.2}"),
            assigned,
            total,
            exact = self.exact(),
            "rate-limit share set"
        );
    }

    /// Waits until the next call of this target may go; returns how long
    /// it waited.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        let mut turn = self.turn.lock().await;
        loop {
            let paused = self.pause.lock().expect("pause lock").until;
            if let Some(until) = paused.filter(|u| *u > Instant::now()) {
                tokio::time::sleep_until(until).await;
                continue;
            }
            let Some(limit) = self.limit else {
                break;
            };
            let exact = self.exact.as_ref().filter(|e| e.up.load(Ordering::Relaxed));
            if exact.is_some() != turn.exact {
                // The mode changed: neither pace knows the other's last
                // call, so the first call under the new one waits a full
                // share period after this replica's previous call.
                turn.exact = exact.is_some();
                let rate = self.share();
                if let (Some(last), true) = (turn.last, rate > 0.0) {
                    tokio::time::sleep_until(last + Duration::from_secs_f64(1.0 / rate)).await;
                }
                continue;
            }
            if let Some(exact) = exact {
                let interval = Duration::from_secs_f64(1.0 / limit);
                match exact.gcra.reserve(interval, self.burst.get()).await {
                    Ok(wait) => {
                        tokio::time::sleep(wait).await;
                        if self.paused() {
                            continue;
                        }
                        break;
                    }
                    Err(e) => {
                        exact.fall_back(&e);
                        continue;
                    }
                }
            }
            let mut share = self.share.subscribe();
            let limiter = share.borrow_and_update().limiter.clone();
            match limiter {
                None => {
                    // No partition: nothing of ours may go until one comes.
                    let _ = share.changed().await;
                }
                Some(limiter) => {
                    tokio::select! {
                        // A pause that began meanwhile holds this call too.
                        _ = limiter.until_ready() => if !self.paused() {
                            break;
                        },
                        // A rebalance changed the pace: wait at the new one.
                        _ = share.changed() => {}
                    }
                }
            }
        }
        turn.last = Some(Instant::now());
        let waited = started.elapsed();
        self.metrics.waited.inc_by(waited.as_secs_f64());
        waited
    }

    /// Whether a target-wide pause is running.
    fn paused(&self) -> bool {
        let p = self.pause.lock().expect("pause lock");
        p.until.is_some_and(|u| u > Instant::now())
    }

    /// The provider answered a call sent at `sent` with its rate-limit
    /// code: every call of the target pauses, for `retry_after` when the
    /// provider said, else for a pause that doubles while the answers go
    /// on. Returns the pause.
    pub async fn rate_limited(&self, sent: Instant, retry_after: Option<Duration>) -> Duration {
        self.metrics.rate_limited.inc();
        let now = Instant::now();
        let (pause, new) = {
            let mut p = self.pause.lock().expect("pause lock");
            // Answers to calls sent before the pause began are the same
            // overload, not a new one.
            let new = p.began.is_none_or(|b| sent > b);
            if new {
                p.strikes = p.strikes.saturating_add(1);
            }
            let doubling = FIRST_PAUSE
                .saturating_mul(1 << p.strikes.saturating_sub(1).min(16))
                .min(self.max_pause);
            let pause = retry_after.map_or(doubling, |r| r.min(MAX_RETRY_AFTER));
            let until = now + pause;
            if p.until.is_none_or(|u| until > u) {
                p.until = Some(until);
                if new {
                    p.began = Some(now);
                }
            }
            (pause, new)
        };
        if new {
            tracing::warn!(target = %self.name, ?pause, ?retry_after, "provider rate limit answered; every call of this target pauses");
        }
        if let Some(exact) = self.exact.as_ref().filter(|e| e.up.load(Ordering::Relaxed)) {
            if let Err(e) = exact.gcra.pause(pause).await {
                exact.fall_back(&e);
            }
        }
        pause
    }

    /// A call went through: the next rate-limit answer starts the pauses
    /// from [`FIRST_PAUSE`] again.
    pub fn admitted(&self) {
        self.pause.lock().expect("pause lock").strikes = 0;
    }
}

impl Exact {
    /// Redis failed: the partition share takes over and a probe starts.
    fn fall_back(self: &Arc<Self>, error: &::redis::RedisError) {
        if self.up.swap(false, Ordering::Relaxed) {
            self.metrics.fallbacks.inc();
            if let Some(g) = &self.metrics.exact {
                g.set(0);
            }
            tracing::warn!(target = %self.name, key = self.gcra.key(), error = %error, "Redis does not answer; the rate limit falls back to this replica's partition share until it does");
        }
        if !self.probing.swap(true, Ordering::Relaxed) {
            // Weak: a worker that stops while Redis is down ends its probe.
            tokio::spawn(Exact::probe(Arc::downgrade(self)));
        }
    }

    async fn probe(exact: std::sync::Weak<Exact>) {
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            let Some(this) = exact.upgrade() else {
                return;
            };
            if this.gcra.ping().await.is_ok() {
                this.up.store(true, Ordering::Relaxed);
                this.probing.store(false, Ordering::Relaxed);
                if let Some(g) = &this.metrics.exact {
                    g.set(1);
                }
                tracing::info!(target = %this.name, key = this.gcra.key(), "Redis answers again; the exact rate limit is back in force");
                return;
            }
        }
    }
}

/// Every limiter of a worker, and the partitions it holds: the share of
/// each limiter follows the assignment.
pub struct Shares {
    limiters: Vec<Arc<Limiter>>,
    total: usize,
    assigned: Mutex<std::collections::BTreeSet<i32>>,
}

impl Shares {
    /// `total`: the event topic's partition count.
    pub fn new(limiters: Vec<Arc<Limiter>>, total: usize) -> Shares {
        Shares {
            limiters,
            total,
            assigned: Mutex::new(Default::default()),
        }
    }

    /// Partitions arrived (after the assignment): shares grow.
    pub fn assign(&self, partitions: &[i32]) {
        let mut held = self.assigned.lock().expect("shares lock");
        held.extend(partitions);
        self.apply(held.len());
    }

    /// Partitions are leaving (before the revoke completes): shares shrink.
    pub fn revoke(&self, partitions: &[i32]) {
        let mut held = self.assigned.lock().expect("shares lock");
        for p in partitions {
            held.remove(p);
        }
        self.apply(held.len());
    }

    fn apply(&self, assigned: usize) {
        for l in &self.limiters {
            l.set_share(assigned, self.total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> LimitMetrics {
        LimitMetrics {
            share: Some(Gauge::new("s", "s").unwrap()),
            exact: Some(IntGauge::new("e", "e").unwrap()),
            fallbacks: IntCounter::new("f", "f").unwrap(),
            rate_limited: IntCounter::new("r", "r").unwrap(),
            waited: Counter::new("w", "w").unwrap(),
        }
    }

    fn limiter(rate: f64) -> Limiter {
        Limiter::new(
            Spec {
                name: "zego",
                kind: "zego",
                app: "1".into(),
                rate_per_second: Some(rate),
                config: &RateLimitConfig::default(),
            },
            Duration::from_secs(30),
            metrics(),
        )
        .unwrap()
    }

    #[test]
    fn shares_split_the_limit_by_partitions_and_never_exceed_it() {
        let a = Arc::new(limiter(20.0));
        let b = Arc::new(limiter(20.0));
        let (sa, sb) = (
            Shares::new(vec![a.clone()], 12),
            Shares::new(vec![b.clone()], 12),
        );
        sa.assign(&(0..12).collect::<Vec<_>>());
        assert!((a.share() - 19.0).abs() < 1e-9, "headroom 0.95 of 20");
        // B joins: A gives up half first, then B gets it.
        sa.revoke(&[6, 7, 8, 9, 10, 11]);
        assert!(a.share() + b.share() <= 19.0 + 1e-9);
        sb.assign(&[6, 7, 8, 9, 10, 11]);
        assert!((a.share() - 9.5).abs() < 1e-9 && (b.share() - 9.5).abs() < 1e-9);
        // A dies: its partitions come to B, whose share is the whole limit.
        sb.assign(&[0, 1, 2, 3, 4, 5]);
        assert!((b.share() - 19.0).abs() < 1e-9);
        sb.revoke(&(0..12).collect::<Vec<_>>());
        assert_eq!(b.share(), 0.0);
    }

    #[tokio::test]
    async fn calls_are_spaced_at_the_share() {
        let l = limiter(200.0);
        l.set_share(6, 12); // 95/s
        let start = std::time::Instant::now();
        for _ in 0..20 {
            l.acquire().await;
        }
        // The first goes at once, the other 19 one period apart.
        let took = start.elapsed().as_secs_f64();
        assert!(took >= 19.0 / 95.0 * 0.98, "took {took}");
        assert!(took < 19.0 / 95.0 + 0.1, "took {took}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_answer_pauses_every_call_and_doubles_while_it_goes_on() {
        let l = limiter(1000.0);
        l.set_share(1, 1);
        l.acquire().await;
        let sent = Instant::now();
        assert_eq!(l.rate_limited(sent, None).await, FIRST_PAUSE);
        // Another answer to a call sent before the pause began: same pause.
        assert_eq!(l.rate_limited(sent, None).await, FIRST_PAUSE);
        let start = Instant::now();
        l.acquire().await;
        assert!(
            start.elapsed() >= FIRST_PAUSE,
            "waited {:?}",
            start.elapsed()
        );
        // Sent after the pause and refused again: twice as long.
        assert_eq!(l.rate_limited(Instant::now(), None).await, 2 * FIRST_PAUSE);
        l.admitted();
        tokio::time::sleep(3 * FIRST_PAUSE).await;
        assert_eq!(l.rate_limited(Instant::now(), None).await, FIRST_PAUSE);
        // Retry-After is honoured as given.
        let r = Duration::from_secs(7);
        assert_eq!(l.rate_limited(Instant::now(), Some(r)).await, r);
    }
}
