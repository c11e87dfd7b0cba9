//! A circuit breaker per target: closed -> open -> half-open -> closed.
//!
//! Closed, calls go out as usual and the breaker counts consecutive
//! outage failures (connection errors, timeouts, 5xx, the providers'
//! system-error codes). At `failures` in a row it opens: no call goes out,
//! the target's consumer is paused (its events wait in Kafka, not in
//! memory), and no call spends its retry budget. Every `probe_interval`
//! (doubling up to `max_probe_interval` while probes fail) one waiting call
//! goes out as the probe (half-open); its success closes the breaker and
//! every waiting call goes on.
//!
//! A waiting call whose change a newer event has made since gives up its
//! turn without a call (it is superseded). When no call is left waiting,
//! the pipeline fetches again, so that a current one can probe: the breaker
//! is *blocked* (the consumer paused) only while it is not closed and some
//! call waits on it.
//!
//! The state machine ([`Phases`]) is pure and unit-tested; [`Breaker`]
//! wraps it for the group tasks that wait on it and the pipeline that
//! pauses the consumer.

use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::error::Invalid;

/// `[worker.circuit_breaker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive outage failures of a target that open its breaker.
    /// Below `worker.retry.max_attempts`, so a lone call in an outage never
    /// runs out of attempts before the breaker stops it.
    pub failures: u32,
    /// How long the breaker stays open before the first probe.
    pub probe_interval_seconds: u64,
    /// The longest wait between probes (the wait doubles while probes fail).
    pub max_probe_interval_seconds: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            probe_interval_seconds: 5,
            max_probe_interval_seconds: 60,
        }
    }
}

impl BreakerConfig {
    /// Keys relative to `circuit_breaker`; `max_attempts` is the retry
    /// budget's.
    pub fn validate(&self, max_attempts: u32) -> Result<(), Invalid> {
        if self.failures == 0 || self.failures >= max_attempts {
            return Err(Invalid::new(
                "failures",
                format!(
                    "{} is not between 1 and worker.retry.max_attempts ({max_attempts}) exclusive: a call that fails in an outage must find the breaker open before it runs out of attempts",
                    self.failures
                ),
            ));
        }
        if !(1..=3600).contains(&self.probe_interval_seconds) {
            return Err(Invalid::new(
                "probe_interval_seconds",
                format!("{} is not between 1 and 3600", self.probe_interval_seconds),
            ));
        }
        if self.max_probe_interval_seconds < self.probe_interval_seconds
            || self.max_probe_interval_seconds > 86_400
        {
            return Err(Invalid::new(
                "max_probe_interval_seconds",
                format!(
                    "{} is not between probe_interval_seconds ({}) and 86400",
                    self.max_probe_interval_seconds, self.probe_interval_seconds
                ),
            ));
        }
        Ok(())
    }
}

/// The breaker's state, as the `mutebridge_target_circuit_state` gauge and
/// `mutebridge targets` show it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, strum::VariantArray, strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Circuit {
    Closed,
    /// A probe is out.
    HalfOpen,
    Open,
}

impl Circuit {
    /// Every variant, in declaration order.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    /// The gauge's value: 0 closed, 1 half-open, 2 open.
    pub fn value(self) -> i64 {
        self as i64
    }

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What the caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: send.
    Send,
    /// Send as the probe.
    Probe,
    /// Wait until `Instant` (the next probe) or a change.
    Wait(Option<Instant>),
}

/// The pure state machine.
#[derive(Debug, Clone)]
pub struct Phases {
    config: BreakerConfig,
    phase: Phase,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed {
        failures: u32,
    },
    Open {
        probe_at: Instant,
        interval: Duration,
    },
    HalfOpen {
        interval: Duration,
    },
}

impl Phases {
    pub fn new(config: BreakerConfig) -> Phases {
        Phases {
            config,
            phase: Phase::Closed { failures: 0 },
        }
    }

    /// Closed, with no failure counted.
    pub fn is_clean(&self) -> bool {
        matches!(self.phase, Phase::Closed { failures: 0 })
    }

    pub fn circuit(&self) -> Circuit {
        match self.phase {
            Phase::Closed { .. } => Circuit::Closed,
            Phase::Open { .. } => Circuit::Open,
            Phase::HalfOpen { .. } => Circuit::HalfOpen,
        }
    }

    /// Whether a call may go out at `now` (a probe is handed out once).
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.phase {
            Phase::Closed { .. } => Admission::Send,
            Phase::Open { probe_at, interval } if now >= probe_at => {
                self.phase = Phase::HalfOpen { interval };
                Admission::Probe
            }
            Phase::Open { probe_at, .. } => Admission::Wait(Some(probe_at)),
            Phase::HalfOpen { .. } => Admission::Wait(None),
        }
    }

    /// A call reached the provider and it answered (success, or an answer
    /// that is not an outage): closes the breaker.
    pub fn answered(&mut self) {
        self.phase = Phase::Closed { failures: 0 };
    }

    /// A call failed with an outage failure; `probe` says whether it was
    /// the probe.
    pub fn failed(&mut self, now: Instant, probe: bool) {
        let first = Duration::from_secs(self.config.probe_interval_seconds);
        let max = Duration::from_secs(self.config.max_probe_interval_seconds);
        match self.phase {
            Phase::Closed { failures } => {
                let failures = failures + 1;
                self.phase = if failures >= self.config.failures {
                    Phase::Open {
                        probe_at: now + first,
                        interval: first,
                    }
                } else {
                    Phase::Closed { failures }
                };
            }
            Phase::HalfOpen { interval } if probe => {
                let interval = (interval * 2).min(max);
                self.phase = Phase::Open {
                    probe_at: now + interval,
                    interval,
                };
            }
            // Calls that left before the breaker opened report in late.
            Phase::HalfOpen { .. } | Phase::Open { .. } => {}
        }
    }

    /// The probe did not reach the provider after all (its call became
    /// moot, or was superseded): the next waiting call probes at once.
    pub fn probe_returned(&mut self, now: Instant) {
        if let Phase::HalfOpen { interval } = self.phase {
            self.phase = Phase::Open {
                probe_at: now,
                interval,
            };
        }
    }
}

/// One target's breaker, shared by its group tasks.
pub struct Breaker {
    phases: Mutex<Phases>,
    /// Closed with no failure counted: the common case, where admitting a
    /// call and hearing it answered touch nothing shared but this.
    clean: std::sync::atomic::AtomicBool,
    /// Calls waiting in [`Breaker::admit`].
    waiting: Mutex<usize>,
    /// The circuit, for whoever shows it.
    circuit: watch::Sender<Circuit>,
    /// Not closed, with calls waiting: the pipeline pauses fetching.
    blocked: watch::Sender<bool>,
}

/// Counts a caller as waiting while it is in [`Breaker::admit`].
struct Waiting<'b>(&'b Breaker);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        *self.0.waiting.lock().expect("breaker lock") -= 1;
        self.0.publish_blocked(self.0.circuit());
    }
}

/// A caller's permission to send one attempt.
#[must_use]
pub struct Permit<'b> {
    breaker: &'b Breaker,
    probe: bool,
    settled: bool,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            phases: Mutex::new(Phases::new(config)),
            clean: std::sync::atomic::AtomicBool::new(true),
            waiting: Mutex::new(0),
            circuit: watch::Sender::new(Circuit::Closed),
            blocked: watch::Sender::new(false),
        }
    }

    /// Follows whether the breaker is blocked: not closed, with calls
    /// waiting on it.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.blocked.subscribe()
    }

    pub fn circuit(&self) -> Circuit {
        *self.circuit.borrow()
    }

    /// Waits until the breaker lets a call go (closed, or this caller is
    /// the probe); returns how long it waited.
    pub async fn admit(&self) -> (Permit<'_>, Duration) {
        if self.clean.load(std::sync::atomic::Ordering::Acquire) {
            let permit = Permit {
                breaker: self,
                probe: false,
                settled: false,
            };
            return (permit, Duration::ZERO);
        }
        let started = Instant::now();
        let mut changes = self.circuit.subscribe();
        *self.waiting.lock().expect("breaker lock") += 1;
        let _waiting = Waiting(self);
        loop {
            let admission = self.update(|p| p.admit(Instant::now()));
            let probe = match admission {
                Admission::Send => false,
                Admission::Probe => true,
                Admission::Wait(until) => {
                    match until {
                        Some(t) => {
                            tokio::select! {
                                _ = tokio::time::sleep_until(t) => {}
                                _ = changes.changed() => {}
                            }
                        }
                        None => {
                            let _ = changes.changed().await;
                        }
                    }
                    continue;
                }
            };
            let permit = Permit {
                breaker: self,
                probe,
                settled: false,
            };
            return (permit, started.elapsed());
        }
    }

    /// Applies `change` and publishes the circuit if it moved.
    fn update<T>(&self, change: impl FnOnce(&mut Phases) -> T) -> T {
        let mut phases = self.phases.lock().expect("breaker lock");
        let out = change(&mut phases);
        let circuit = phases.circuit();
        self.clean
            .store(phases.is_clean(), std::sync::atomic::Ordering::Release);
        drop(phases);
        self.circuit
            .send_if_modified(|c| std::mem::replace(c, circuit) != circuit);
        self.publish_blocked(circuit);
        out
    }

    /// Blocked: a probe is out, or the breaker is open with calls waiting
    /// (open with none waiting, the pipeline fetches so that one can come
    /// and probe).
    fn publish_blocked(&self, circuit: Circuit) {
        let blocked = match circuit {
            Circuit::Closed => false,
            Circuit::HalfOpen => true,
            Circuit::Open => *self.waiting.lock().expect("breaker lock") > 0,
        };
        self.blocked
            .send_if_modified(|b| std::mem::replace(b, blocked) != blocked);
    }
}

impl Permit<'_> {
    /// Whether this attempt is the probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The provider answered (anything but an outage failure).
    pub fn answered(mut self) {
        self.settled = true;
        if !self.probe
            && self
                .breaker
                .clean
                .load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        self.breaker.update(Phases::answered);
    }

    /// The attempt failed with an outage failure.
    pub fn failed(mut self) {
        self.settled = true;
        let probe = self.probe;
        self.breaker.update(|p| p.failed(Instant::now(), probe));
    }

    /// The attempt said nothing about the provider (a rate-limit answer of
    /// the app or of one group): the breaker stays as it is.
    pub fn neutral(mut self) {
        self.settled = true;
        if self.probe {
            self.breaker.update(|p| p.probe_returned(Instant::now()));
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // Dropped unsettled: the call never went out (moot, superseded,
        // aborted). A probe that did not go out hands its turn on.
        if !self.settled && self.probe {
            self.breaker.update(|p| p.probe_returned(Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases() -> Phases {
        Phases::new(BreakerConfig {
            failures: 3,
            probe_interval_seconds: 5,
            max_probe_interval_seconds: 20,
        })
    }

    #[test]
    fn opens_on_consecutive_failures_and_an_answer_resets_the_count() {
        let now = Instant::now();
        let mut p = phases();
        p.failed(now, false);
        p.failed(now, false);
        p.answered();
        p.failed(now, false);
        p.failed(now, false);
        assert_eq!(p.circuit(), Circuit::Closed, "2 in a row after an answer");
        p.failed(now, false);
        assert_eq!(p.circuit(), Circuit::Open);
        assert_eq!(
            p.admit(now),
            Admission::Wait(Some(now + Duration::from_secs(5)))
        );
    }

    #[test]
    fn one_probe_per_interval_backing_off_to_the_maximum() {
        let t0 = Instant::now();
        let mut p = phases();
        for _ in 0..3 {
            p.failed(t0, false);
        }
        let mut at = t0;
        for wait in [5, 10, 20, 20] {
            assert!(matches!(p.admit(at), Admission::Wait(Some(_))));
            at += Duration::from_secs(wait);
            assert_eq!(p.admit(at), Admission::Probe, "a probe after {wait} s");
            assert_eq!(p.circuit(), Circuit::HalfOpen);
            assert_eq!(p.admit(at), Admission::Wait(None), "only one probe");
            // Late failures of calls sent before the breaker opened do not
            // count as the probe's.
            p.failed(at, false);
            assert_eq!(p.circuit(), Circuit::HalfOpen);
            p.failed(at, true);
            assert_eq!(p.circuit(), Circuit::Open);
        }
        at += Duration::from_secs(20);
        assert_eq!(p.admit(at), Admission::Probe);
        p.answered();
        assert_eq!(p.circuit(), Circuit::Closed);
        assert_eq!(p.admit(at), Admission::Send);
    }

    #[test]
    fn a_probe_that_never_went_out_hands_its_turn_on() {
        let t0 = Instant::now();
        let mut p = phases();
        for _ in 0..3 {
            p.failed(t0, false);
        }
        let at = t0 + Duration::from_secs(5);
        assert_eq!(p.admit(at), Admission::Probe);
        p.probe_returned(at);
        assert_eq!(
            p.admit(at),
            Admission::Probe,
            "the next caller probes at once"
        );
    }

    #[test]
    fn the_threshold_must_come_before_the_attempts_run_out() {
        let c = BreakerConfig::default();
        assert!(c.validate(8).is_ok());
        assert_eq!(c.validate(5).unwrap_err().key, "failures");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_go_on_when_the_probe_succeeds() {
        let b = std::sync::Arc::new(Breaker::new(BreakerConfig {
            failures: 1,
            probe_interval_seconds: 5,
            max_probe_interval_seconds: 60,
        }));
        let (permit, _) = b.admit().await;
        permit.failed();
        assert_eq!(b.circuit(), Circuit::Open);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                let (permit, waited) = b.admit().await;
                let probe = permit.is_probe();
                permit.answered();
                (probe, waited)
            })
        };
        let (probe, waited) = waiter.await.unwrap();
        assert!(probe, "the first caller after the interval probes");
        assert!(waited >= Duration::from_secs(5), "{waited:?}");
        assert_eq!(b.circuit(), Circuit::Closed);
        let (permit, waited) = b.admit().await;
        assert!(!permit.is_probe() && waited == Duration::ZERO);
        permit.answered();
    }
}
