//! A circuit breaker per target: closed -> open -> half-open ->
//! recovering -> closed.
//!
//! Closed, calls go out as usual and the breaker counts consecutive
//! outage failures (connection errors, timeouts, 5xx, the providers'
//! system-error codes). At `failures` in a row it opens: no call goes out
//! and no call spends its retry budget. Every `probe_interval` (doubling up
//! to `max_probe_interval` while probes fail) one waiting call goes out as
//! the probe (half-open).
//!
//! **Probes rotate.** The probe is the waiting call whose group has failed
//! the fewest probes (and ramp attempts) since the breaker last closed, the
//! longest-waiting first among equals. One event the provider keeps
//! refusing therefore cannot be the probe every time: a call of another
//! group probes next, and its success ends the outage for everyone. The
//! refused event then spends its own budget until it is dead-lettered.
//! While the breaker is not closed the pipeline keeps a bounded number of
//! groups fetched (`probe_candidates`), so that there is a choice.
//!
//! **Recovery ramps up.** A successful probe does not release every
//! waiting call at once (a provider back with little capacity would refuse
//! most of them): the breaker goes to *recovering* and admits waiting calls
//! through a window of calls in flight, a slow start like TCP's. It begins
//! at 2, grows by one per success (doubling per round trip) until the
//! first failure, then by one per window's worth of successes; an outage
//! failure halves it (once per window: failures of calls admitted before
//! the last halving do not count again), and a lone call's failure opens
//! the breaker again. Failures in the ramp spend no retry budget. Once the
//! window covers every call that wants to go, the breaker is closed.
//!
//! A waiting call whose change a newer event has made since gives up its
//! turn without a call (it is superseded). When no call is left waiting,
//! the pipeline fetches again, so that a current one can probe: the breaker
//! is *blocked* (the pipeline fetches only up to `probe_candidates` groups)
//! while it is not closed and some call waits on it or is in flight.
//!
//! The state machine ([`Phases`]) is pure and unit-tested; [`Breaker`]
//! wraps it for the group tasks that wait on it and the pipeline that
//! limits fetching.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::error::{within, Invalid};

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
    /// While the breaker is not closed, the target's pipeline keeps fetching
    /// until this many groups have events in memory (then its events wait
    /// in Kafka): the calls the probe is chosen from, so that one event the
    /// provider keeps refusing is not the probe every time.
    pub probe_candidates: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            probe_interval_seconds: 5,
            max_probe_interval_seconds: 60,
            probe_candidates: 32,
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
        within(
            "probe_interval_seconds",
            self.probe_interval_seconds,
            1..=3600,
            "seconds",
        )?;
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
        within(
            "probe_candidates",
            self.probe_candidates as u64,
            2..=10_000,
            "groups",
        )
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
    /// A probe succeeded: waiting calls are admitted through a widening
    /// window.
    Recovering,
}

impl Circuit {
    /// Every variant, in declaration order.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    /// The gauge's value: 0 closed, 1 half-open, 2 open, 3 recovering.
    pub fn value(self) -> i64 {
        self as i64
    }

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What a waiting caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go, with this pass.
    Go(Pass),
    /// Wait until `Instant` (the next probe) or a change.
    Wait(Option<Instant>),
}

/// The permission an attempt went out with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The breaker was closed (`era`: how often it had opened by then).
    Closed { era: u64 },
    /// The probe.
    Probe,
    /// A call of the recovery ramp, admitted in window `epoch`.
    Ramp { era: u64, epoch: u64 },
}

impl Pass {
    /// Whether an outage failure of this attempt spends the call's retry
    /// budget: only while the breaker is closed.
    pub fn spends_budget(self) -> bool {
        matches!(self, Pass::Closed { .. })
    }
}

/// The pure state machine.
#[derive(Debug, Clone)]
pub struct Phases {
    config: BreakerConfig,
    phase: Phase,
    /// How often the breaker has opened: passes of an earlier era are stale.
    era: u64,
    /// Calls waiting to go, by ticket (arrival order), with their group.
    waiters: BTreeMap<u64, u64>,
    next_ticket: u64,
    /// Failed probes and ramp attempts per group since the breaker last
    /// closed: the waiting call whose group has fewest goes first.
    strikes: HashMap<u64, u32>,
    /// Changes on every change a waiting caller must look at.
    version: u64,
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
    Recovering(Ramp),
}

/// The recovery ramp's window.
#[derive(Debug, Clone, Copy)]
struct Ramp {
    /// Calls that may be in flight.
    window: f64,
    /// Below it the window grows by one per success (slow start), above it
    /// by one per window's worth (once something failed).
    threshold: f64,
    in_flight: usize,
    /// Bumped on each halving: a failure of a call admitted before only
    /// tells what the halving already acted on.
    epoch: u64,
    /// The probe interval to reopen with.
    interval: Duration,
}

/// The window a successful probe opens with.
const FIRST_WINDOW: f64 = 2.0;

impl Phases {
    pub fn new(config: BreakerConfig) -> Phases {
        Phases {
            config,
            phase: Phase::Closed { failures: 0 },
            era: 0,
            waiters: BTreeMap::new(),
            next_ticket: 0,
            strikes: HashMap::new(),
            version: 0,
        }
    }

    /// Closed, with no failure counted and nobody waiting.
    pub fn is_clean(&self) -> bool {
        matches!(self.phase, Phase::Closed { failures: 0 }) && self.waiters.is_empty()
    }

    pub fn circuit(&self) -> Circuit {
        match self.phase {
            Phase::Closed { .. } => Circuit::Closed,
            Phase::Open { .. } => Circuit::Open,
            Phase::HalfOpen { .. } => Circuit::HalfOpen,
            Phase::Recovering(_) => Circuit::Recovering,
        }
    }

    /// Not closed, with calls waiting on it or in flight in the ramp (a
    /// probe is out, or the window holds calls back): the pipeline fetches
    /// only up to `probe_candidates` groups.
    pub fn blocked(&self) -> bool {
        match self.phase {
            Phase::Closed { .. } => false,
            Phase::HalfOpen { .. } => true,
            Phase::Open { .. } => !self.waiters.is_empty(),
            Phase::Recovering(r) => !self.waiters.is_empty() || r.in_flight > 0,
        }
    }

    /// The pass of a call that goes without waiting (closed).
    #[cfg(test)]
    fn closed_pass(&self) -> Pass {
        Pass::Closed { era: self.era }
    }

    /// Whether an attempt admitted with `pass` must ask again: the breaker
    /// opened since a closed pass or a ramp pass was given.
    pub fn is_stale(&self, pass: Pass) -> bool {
        match pass {
            Pass::Closed { era } => era != self.era || !matches!(self.phase, Phase::Closed { .. }),
            Pass::Probe => false,
            Pass::Ramp { era, .. } => era != self.era,
        }
    }

    /// Counts a caller of `group` as waiting; its ticket.
    pub fn wait(&mut self, group: u64) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.waiters.insert(ticket, group);
        self.changed();
        ticket
    }

    /// The caller with `ticket` stopped waiting without a pass.
    pub fn leave(&mut self, ticket: u64) {
        if self.waiters.remove(&ticket).is_some() {
            self.changed();
            self.ramp_done();
        }
    }

    /// Whether the caller with `ticket` may go at `now` (a probe and a
    /// ramp slot are handed out once each).
    pub fn admit(&mut self, ticket: u64, now: Instant) -> Admission {
        let pass = match self.phase {
            Phase::Closed { .. } => Pass::Closed { era: self.era },
            Phase::Open { probe_at, .. } if now < probe_at => {
                return Admission::Wait(Some(probe_at));
            }
            Phase::Open { interval, .. } => {
                if self.first() != Some(ticket) {
                    // The chosen caller wakes at the same instant and takes it.
                    return Admission::Wait(None);
                }
                self.phase = Phase::HalfOpen { interval };
                Pass::Probe
            }
            Phase::HalfOpen { .. } => return Admission::Wait(None),
            Phase::Recovering(mut r) => {
                if r.in_flight as f64 + 1.0 > r.window.floor() || self.first() != Some(ticket) {
                    return Admission::Wait(None);
                }
                r.in_flight += 1;
                self.phase = Phase::Recovering(r);
                Pass::Ramp {
                    era: self.era,
                    epoch: r.epoch,
                }
            }
        };
        self.waiters.remove(&ticket);
        self.changed();
        Admission::Go(pass)
    }

    /// The waiting caller that goes next: fewest strikes of its group,
    /// then the longest waiting.
    fn first(&self) -> Option<u64> {
        self.waiters
            .iter()
            .min_by_key(|(ticket, group)| (self.strikes.get(group).copied().unwrap_or(0), **ticket))
            .map(|(ticket, _)| *ticket)
    }

    /// A call reached the provider and it answered (success, or an answer
    /// that is not an outage).
    pub fn answered(&mut self, pass: Pass) {
        match (pass, &mut self.phase) {
            (Pass::Closed { .. }, Phase::Closed { failures }) if *failures > 0 => {
                *failures = 0;
                self.changed();
            }
            (Pass::Probe, Phase::HalfOpen { interval }) => {
                let interval = *interval;
                self.phase = Phase::Recovering(Ramp {
                    window: FIRST_WINDOW,
                    threshold: f64::INFINITY,
                    in_flight: 0,
                    epoch: 0,
                    interval,
                });
                self.changed();
                self.ramp_done();
            }
            (Pass::Ramp { era, .. }, Phase::Recovering(r)) if era == self.era => {
                r.in_flight -= 1;
                r.window += if r.window < r.threshold {
                    1.0
                } else {
                    1.0 / r.window
                };
                self.changed();
                self.ramp_done();
            }
            // Calls that left before the breaker opened report in late.
            _ => {}
        }
    }

    /// A call of `group` failed with an outage failure at `now`.
    pub fn failed(&mut self, pass: Pass, group: u64, now: Instant) {
        let first = Duration::from_secs(self.config.probe_interval_seconds);
        let max = Duration::from_secs(self.config.max_probe_interval_seconds);
        match (pass, self.phase) {
            (Pass::Closed { era }, Phase::Closed { failures }) if era == self.era => {
                let failures = failures + 1;
                if failures >= self.config.failures {
                    self.open(now, first);
                } else {
                    self.phase = Phase::Closed { failures };
                }
                self.changed();
            }
            (Pass::Probe, Phase::HalfOpen { interval }) => {
                *self.strikes.entry(group).or_default() += 1;
                self.phase = Phase::Open {
                    probe_at: now + (interval * 2).min(max),
                    interval: (interval * 2).min(max),
                };
                self.changed();
            }
            (Pass::Ramp { era, epoch }, Phase::Recovering(mut r)) if era == self.era => {
                *self.strikes.entry(group).or_default() += 1;
                r.in_flight -= 1;
                if epoch == r.epoch {
                    if r.window < 2.0 {
                        // A call alone in flight failed: an outage again.
                        self.open(now, (r.interval * 2).min(max));
                        self.changed();
                        return;
                    }
                    r.threshold = r.window / 2.0;
                    r.window = (r.window / 2.0).max(1.0);
                    r.epoch += 1;
                }
                self.phase = Phase::Recovering(r);
                self.changed();
                self.ramp_done();
            }
            // Late reports of calls sent before the breaker opened.
            _ => {}
        }
    }

    /// The attempt did not reach the provider, or its answer said nothing
    /// about it (a rate-limit answer): a probe hands its turn on at once, a
    /// ramp slot is freed.
    pub fn returned(&mut self, pass: Pass, now: Instant) {
        match (pass, &mut self.phase) {
            (Pass::Probe, Phase::HalfOpen { interval }) => {
                let interval = *interval;
                self.phase = Phase::Open {
                    probe_at: now,
                    interval,
                };
                self.changed();
            }
            (Pass::Ramp { era, .. }, Phase::Recovering(r)) if era == self.era => {
                r.in_flight -= 1;
                self.changed();
                self.ramp_done();
            }
            _ => {}
        }
    }

    fn open(&mut self, now: Instant, interval: Duration) {
        self.era += 1;
        self.phase = Phase::Open {
            probe_at: now + interval,
            interval,
        };
    }

    /// The ramp ends once its window covers every call that wants to go.
    fn ramp_done(&mut self) {
        if let Phase::Recovering(r) = self.phase {
            if r.window >= (r.in_flight + self.waiters.len()) as f64 {
                self.phase = Phase::Closed { failures: 0 };
                self.strikes.clear();
                self.changed();
            }
        }
    }

    fn changed(&mut self) {
        self.version = self.version.wrapping_add(1);
    }
}

/// One target's breaker, shared by its group tasks.
pub struct Breaker {
    phases: Mutex<Phases>,
    /// Closed with no failure counted and nobody waiting: the common case,
    /// where admitting a call and hearing it answered touch nothing shared
    /// but this.
    clean: AtomicBool,
    /// [`Phases`]' era, for the passes of the common case.
    era: AtomicU64,
    /// The circuit, for whoever shows it.
    circuit: watch::Sender<Circuit>,
    /// Not closed, with calls waiting or in the ramp: the pipeline limits
    /// fetching.
    blocked: watch::Sender<bool>,
    /// [`Phases`]' version: waiting callers look again when it changes.
    version: watch::Sender<u64>,
}

/// Stops counting a caller as waiting if it leaves [`Breaker::admit`]
/// without a pass (its task was aborted).
struct Waiting<'b> {
    breaker: &'b Breaker,
    ticket: Option<u64>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            self.breaker.update(|p| p.leave(ticket));
        }
    }
}

/// A caller's permission to send one attempt.
#[must_use]
pub struct Permit<'b> {
    breaker: &'b Breaker,
    pass: Pass,
    group: u64,
    settled: bool,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            phases: Mutex::new(Phases::new(config)),
            clean: AtomicBool::new(true),
            era: AtomicU64::new(0),
            circuit: watch::Sender::new(Circuit::Closed),
            blocked: watch::Sender::new(false),
            version: watch::Sender::new(0),
        }
    }

    /// Follows whether the breaker is blocked: not closed, with calls
    /// waiting on it or in flight in its ramp.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.blocked.subscribe()
    }

    pub fn circuit(&self) -> Circuit {
        *self.circuit.borrow()
    }

    /// Waits until the breaker lets a call of `group` go (closed, the
    /// probe, or a slot of the recovery ramp); returns how long it waited.
    pub async fn admit(&self, group: u64) -> (Permit<'_>, Duration) {
        if self.clean.load(Ordering::Acquire) {
            let pass = Pass::Closed {
                era: self.era.load(Ordering::Acquire),
            };
            return (self.permit(pass, group), Duration::ZERO);
        }
        let started = Instant::now();
        let mut changes = self.version.subscribe();
        let mut waiting = Waiting {
            breaker: self,
            ticket: Some(self.update(|p| p.wait(group))),
        };
        let ticket = waiting.ticket.expect("just set");
        loop {
            changes.borrow_and_update();
            match self.update(|p| p.admit(ticket, Instant::now())) {
                Admission::Go(pass) => {
                    waiting.ticket = None;
                    return (self.permit(pass, group), started.elapsed());
                }
                Admission::Wait(Some(t)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => {}
                        _ = changes.changed() => {}
                    }
                }
                Admission::Wait(None) => {
                    let _ = changes.changed().await;
                }
            }
        }
    }

    fn permit(&self, pass: Pass, group: u64) -> Permit<'_> {
        Permit {
            breaker: self,
            pass,
            group,
            settled: false,
        }
    }

    /// Applies `change` and publishes what moved.
    fn update<T>(&self, change: impl FnOnce(&mut Phases) -> T) -> T {
        let mut phases = self.phases.lock().expect("breaker lock");
        let before = phases.version;
        let out = change(&mut phases);
        if phases.version == before {
            return out;
        }
        let (version, circuit, blocked) = (phases.version, phases.circuit(), phases.blocked());
        self.era.store(phases.era, Ordering::Release);
        self.clean.store(phases.is_clean(), Ordering::Release);
        drop(phases);
        self.circuit
            .send_if_modified(|c| std::mem::replace(c, circuit) != circuit);
        self.blocked
            .send_if_modified(|b| std::mem::replace(b, blocked) != blocked);
        self.version.send_replace(version);
        out
    }
}

impl Permit<'_> {
    /// What the attempt goes out with.
    pub fn pass(&self) -> Pass {
        self.pass
    }

    /// Whether the breaker opened since this permit was given (the call
    /// waited for the rate limiter meanwhile): it must ask again.
    pub fn is_stale(&self) -> bool {
        if self.breaker.clean.load(Ordering::Acquire) && matches!(self.pass, Pass::Closed { .. }) {
            return false;
        }
        self.breaker
            .phases
            .lock()
            .expect("breaker lock")
            .is_stale(self.pass)
    }

    /// The provider answered (anything but an outage failure).
    pub fn answered(mut self) {
        self.settled = true;
        if matches!(self.pass, Pass::Closed { .. }) && self.breaker.clean.load(Ordering::Acquire) {
            return;
        }
        let pass = self.pass;
        self.breaker.update(|p| p.answered(pass));
    }

    /// The attempt failed with an outage failure.
    pub fn failed(mut self) {
        self.settled = true;
        let (pass, group) = (self.pass, self.group);
        self.breaker
            .update(|p| p.failed(pass, group, Instant::now()));
    }

    /// The attempt said nothing about the provider (a rate-limit answer of
    /// the app or of one group): the breaker stays as it is.
    pub fn neutral(mut self) {
        self.settled = true;
        let pass = self.pass;
        self.breaker.update(|p| p.returned(pass, Instant::now()));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // Dropped unsettled: the call never went out (moot, superseded,
        // stale, aborted). A probe hands its turn on, a ramp slot is freed.
        if !self.settled && !matches!(self.pass, Pass::Closed { .. }) {
            let pass = self.pass;
            self.breaker.update(|p| p.returned(pass, Instant::now()));
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
            probe_candidates: 32,
        })
    }

    /// Opens `p` with three closed failures at `now`.
    fn open(p: &mut Phases, now: Instant) {
        let pass = p.closed_pass();
        for _ in 0..3 {
            p.failed(pass, 0, now);
        }
        assert_eq!(p.circuit(), Circuit::Open);
    }

    /// Lets the waiting caller `ticket` go at `now`; its pass.
    fn go(p: &mut Phases, ticket: u64, now: Instant) -> Pass {
        match p.admit(ticket, now) {
            Admission::Go(pass) => pass,
            other => panic!("ticket {ticket} may not go: {other:?}"),
        }
    }

    #[test]
    fn opens_on_consecutive_failures_and_an_answer_resets_the_count() {
        let now = Instant::now();
        let mut p = phases();
        let pass = p.closed_pass();
        p.failed(pass, 0, now);
        p.failed(pass, 0, now);
        p.answered(pass);
        p.failed(pass, 0, now);
        p.failed(pass, 0, now);
        assert_eq!(p.circuit(), Circuit::Closed, "2 in a row after an answer");
        p.failed(pass, 0, now);
        assert_eq!(p.circuit(), Circuit::Open);
        let t = p.wait(1);
        assert_eq!(
            p.admit(t, now),
            Admission::Wait(Some(now + Duration::from_secs(5)))
        );
        assert!(p.is_stale(pass), "a closed pass of before the opening");
    }

    #[test]
    fn one_probe_per_interval_backing_off_to_the_maximum() {
        let t0 = Instant::now();
        let mut p = phases();
        open(&mut p, t0);
        let mut at = t0;
        for wait in [5, 10, 20, 20] {
            let t = p.wait(7);
            assert!(matches!(p.admit(t, at), Admission::Wait(Some(_))));
            at += Duration::from_secs(wait);
            assert_eq!(p.admit(t, at), Admission::Go(Pass::Probe), "after {wait} s");
            assert_eq!(p.circuit(), Circuit::HalfOpen);
            let other = p.wait(8);
            assert_eq!(p.admit(other, at), Admission::Wait(None), "only one probe");
            p.leave(other);
            // Late failures of calls sent before the breaker opened do not
            // count as the probe's.
            p.failed(Pass::Closed { era: 0 }, 0, at);
            assert_eq!(p.circuit(), Circuit::HalfOpen);
            p.failed(Pass::Probe, 7, at);
            assert_eq!(p.circuit(), Circuit::Open);
        }
    }

    #[test]
    fn probes_rotate_to_the_groups_that_failed_fewest() {
        let t0 = Instant::now();
        let mut p = phases();
        open(&mut p, t0);
        let bad = p.wait(1);
        let (a, b) = (p.wait(2), p.wait(3));
        let mut at = t0 + Duration::from_secs(5);
        // The longest waiting probes first ...
        assert_eq!(p.admit(a, at), Admission::Wait(None), "bad waited longer");
        assert_eq!(go(&mut p, bad, at), Pass::Probe);
        p.failed(Pass::Probe, 1, at);
        let bad = p.wait(1);
        // ... then a group that has not failed one.
        at += Duration::from_secs(10);
        assert_eq!(p.admit(bad, at), Admission::Wait(None));
        assert_eq!(go(&mut p, a, at), Pass::Probe);
        p.failed(Pass::Probe, 2, at);
        let a = p.wait(2);
        at += Duration::from_secs(20);
        assert_eq!(go(&mut p, b, at), Pass::Probe, "b has failed none");
        p.answered(Pass::Probe);
        assert_eq!(
            p.circuit(),
            Circuit::Closed,
            "2 waiting: the first window covers them"
        );
        assert!(matches!(go(&mut p, bad, at), Pass::Closed { .. }));
        assert!(matches!(go(&mut p, a, at), Pass::Closed { .. }));
        assert!(p.is_clean());
    }

    #[test]
    fn recovery_widens_while_calls_succeed_and_halves_on_a_failure() {
        let t0 = Instant::now();
        let mut p = phases();
        open(&mut p, t0);
        let tickets: Vec<u64> = (0..40).map(|g| p.wait(g)).collect();
        let at = t0 + Duration::from_secs(5);
        assert_eq!(go(&mut p, tickets[0], at), Pass::Probe);
        p.answered(Pass::Probe);
        assert_eq!(p.circuit(), Circuit::Recovering);
        assert!(p.blocked());
        // A window of 2: two go, the third waits.
        let r1 = go(&mut p, tickets[1], at);
        let r2 = go(&mut p, tickets[2], at);
        assert!(matches!(r1, Pass::Ramp { .. }) && !r1.spends_budget());
        assert_eq!(p.admit(tickets[3], at), Admission::Wait(None));
        // Two successes: a window of 4.
        p.answered(r1);
        p.answered(r2);
        let out: Vec<Pass> = (3..7).map(|i| go(&mut p, tickets[i], at)).collect();
        assert_eq!(p.admit(tickets[7], at), Admission::Wait(None));
        // Two fail: the window halves once (to 2), not twice.
        p.failed(out[0], 3, at);
        p.failed(out[1], 4, at);
        assert_eq!(p.circuit(), Circuit::Recovering);
        assert_eq!(
            p.admit(tickets[7], at),
            Admission::Wait(None),
            "2 in flight"
        );
        // The failed groups go after the others.
        let again = [p.wait(3), p.wait(4)];
        p.answered(out[2]);
        let next = go(&mut p, tickets[7], at);
        assert_eq!(p.admit(again[0], at), Admission::Wait(None));
        p.answered(out[3]);
        p.answered(next);
        // Everyone else succeeds: the window grows past what waits, and
        // the breaker closes.
        let mut left: Vec<u64> = tickets[8..].iter().copied().chain(again).collect();
        while p.circuit() == Circuit::Recovering {
            let mut passes = Vec::new();
            left.retain(|&t| match p.admit(t, at) {
                Admission::Go(pass) => {
                    passes.push(pass);
                    false
                }
                Admission::Wait(_) => true,
            });
            assert!(!passes.is_empty(), "the ramp admits something");
            for pass in passes {
                p.answered(pass);
            }
        }
        assert_eq!(p.circuit(), Circuit::Closed);
        // The window covered the rest: they all go now.
        for t in left {
            assert!(matches!(go(&mut p, t, at), Pass::Closed { .. }));
        }
        assert!(p.is_clean());
    }

    #[test]
    fn a_lone_failure_in_the_ramp_opens_the_breaker_again() {
        let t0 = Instant::now();
        let mut p = phases();
        open(&mut p, t0);
        let tickets: Vec<u64> = (0..10).map(|g| p.wait(g)).collect();
        let at = t0 + Duration::from_secs(5);
        assert_eq!(go(&mut p, tickets[0], at), Pass::Probe);
        p.answered(Pass::Probe);
        let (a, b) = (go(&mut p, tickets[1], at), go(&mut p, tickets[2], at));
        p.failed(a, 1, at);
        p.failed(b, 2, at);
        // Window 1: one call alone, and it fails.
        let c = go(&mut p, tickets[3], at);
        assert_eq!(p.admit(tickets[4], at), Admission::Wait(None));
        p.failed(c, 3, at);
        assert_eq!(p.circuit(), Circuit::Open);
        assert!(p.is_stale(c));
        assert_eq!(
            p.admit(tickets[4], at),
            Admission::Wait(Some(at + Duration::from_secs(10))),
            "the next probe after twice the interval"
        );
    }

    #[test]
    fn a_probe_that_never_went_out_hands_its_turn_on() {
        let t0 = Instant::now();
        let mut p = phases();
        open(&mut p, t0);
        let (a, b) = (p.wait(1), p.wait(2));
        let at = t0 + Duration::from_secs(5);
        assert_eq!(go(&mut p, a, at), Pass::Probe);
        p.returned(Pass::Probe, at);
        assert_eq!(
            go(&mut p, b, at),
            Pass::Probe,
            "the next caller probes at once"
        );
    }

    #[test]
    fn the_threshold_must_come_before_the_attempts_run_out() {
        let c = BreakerConfig::default();
        assert!(c.validate(8).is_ok());
        assert_eq!(c.validate(5).unwrap_err().key, "failures");
        let few = BreakerConfig {
            probe_candidates: 1,
            ..BreakerConfig::default()
        };
        assert_eq!(few.validate(8).unwrap_err().key, "probe_candidates");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_go_on_when_the_probe_succeeds() {
        let b = std::sync::Arc::new(Breaker::new(BreakerConfig {
            failures: 1,
            probe_interval_seconds: 5,
            max_probe_interval_seconds: 60,
            probe_candidates: 32,
        }));
        let (permit, _) = b.admit(0).await;
        permit.failed();
        assert_eq!(b.circuit(), Circuit::Open);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                let (permit, waited) = b.admit(1).await;
                let probe = permit.pass() == Pass::Probe;
                permit.answered();
                (probe, waited)
            })
        };
        let (probe, waited) = waiter.await.unwrap();
        assert!(probe, "the first caller after the interval probes");
        assert!(waited >= Duration::from_secs(5), "{waited:?}");
        assert_eq!(b.circuit(), Circuit::Closed, "nobody else waited");
        let (permit, waited) = b.admit(2).await;
        assert!(permit.pass() != Pass::Probe && waited == Duration::ZERO);
        permit.answered();
    }

    #[tokio::test(start_paused = true)]
    async fn an_aborted_waiter_is_not_chosen() {
        let b = std::sync::Arc::new(Breaker::new(BreakerConfig {
            failures: 1,
            probe_interval_seconds: 5,
            max_probe_interval_seconds: 60,
            probe_candidates: 32,
        }));
        let (permit, _) = b.admit(0).await;
        permit.failed();
        let first = {
            let b = b.clone();
            tokio::spawn(async move { b.admit(1).await.0.answered() })
        };
        tokio::task::yield_now().await;
        let second = {
            let b = b.clone();
            tokio::spawn(async move { b.admit(2).await.0.pass() == Pass::Probe })
        };
        tokio::task::yield_now().await;
        first.abort();
        assert!(second.await.unwrap(), "the remaining waiter probes");
    }
}
