//! Whether this worker may still act for the partitions it was assigned.
//!
//! A worker frozen past its session timeout (SIGSTOP, a paused VM, a swap
//! storm) has lost its partitions to another replica without knowing it.
//! When it wakes, the calls it was retrying and the records it was about
//! to write would land after the new owner's newer ones: an older mute
//! state at the provider and in the state topic. So a clock thread watches
//! for such gaps (monotonic time jumping well past its tick), and after
//! one each pipeline holds every provider call and state write until it
//! has proven it is still a member of its consumer group (a synchronous
//! offset commit, which the coordinator refuses from a member it expelled)
//! or the rebalance callback has taken away what it lost.
//!
//! What this cannot cover: a request already on the wire when the process
//! froze, and records already in librdkafka's queue (sent when it wakes);
//! the state topic's reader answers those by writing the owner's record
//! again ([`super::reader`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How often the clock thread ticks.
const TICK: Duration = Duration::from_millis(100);

/// A gap this long between ticks is a stall: far beyond any scheduling
/// delay, far below any session timeout (6 s at least).
pub const STALL: Duration = Duration::from_millis(1500);

/// The clock thread's record: when it last ticked, and how many stalls
/// it has seen.
struct Clock {
    base: Instant,
    /// Nanoseconds from `base` at the last tick.
    last_tick: AtomicU64,
    /// Stalls seen so far (an epoch: each stall makes every lease stale).
    stalls: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base: Instant::now(),
            last_tick: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            changed: watch::Sender::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// One tick of the clock thread.
    fn tick(&self) {
        let now = self.now();
        let last = self.last_tick.load(Ordering::SeqCst);
        // The stall is published before the tick that ends it, so whoever
        // sees the fresh tick also sees the stall.
        if Duration::from_nanos(now.saturating_sub(last)) > STALL {
            let stalls = self.stalls.fetch_add(1, Ordering::SeqCst) + 1;
            tracing::warn!(
                stalled = ?Duration::from_nanos(now - last),
                "this process was stalled (frozen, paused or starved): provider calls and state writes wait until each consumer group confirms this worker still holds its partitions"
            );
            self.changed.send_replace(stalls);
        }
        self.last_tick.store(now, Ordering::SeqCst);
    }

    /// The stall epoch as of now: a stall the clock thread has not noticed
    /// yet (it is late by more than [`STALL`]) already counts.
    fn epoch_now(&self) -> u64 {
        let stalls = self.stalls.load(Ordering::SeqCst);
        let last = self.last_tick.load(Ordering::SeqCst);
        if Duration::from_nanos(self.now().saturating_sub(last)) > STALL {
            stalls + 1
        } else {
            stalls
        }
    }
}

/// The process's clock, its thread started on first use.
fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    let mut first = false;
    let c = CLOCK.get_or_init(|| {
        first = true;
        Clock::new()
    });
    if first {
        std::thread::Builder::new()
            .name("stall-watch".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                c.tick();
            })
            .expect("cannot start the stall watch thread");
    }
    c
}

/// One pipeline's standing with its consumer group: valid while no stall
/// happened since it last confirmed its membership.
#[derive(Clone)]
pub struct Lease {
    clock: &'static Clock,
    confirmed: Arc<watch::Sender<u64>>,
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

impl Lease {
    pub fn new() -> Lease {
        Lease::on(clock())
    }

    fn on(clock: &'static Clock) -> Lease {
        Lease {
            clock,
            confirmed: Arc::new(watch::Sender::new(clock.stalls.load(Ordering::SeqCst))),
        }
    }

    /// True when the pipeline may act: no stall since its last confirmation.
    pub fn valid(&self) -> bool {
        self.clock.epoch_now() == *self.confirmed.borrow()
    }

    /// The stall to confirm membership after, when one is pending.
    pub fn pending(&self) -> Option<u64> {
        let now = self.clock.epoch_now();
        (now != *self.confirmed.borrow()).then_some(now)
    }

    /// The pipeline proved it is still a member after stall `epoch` (or
    /// the rebalance took away what it lost).
    pub fn confirm(&self, epoch: u64) {
        self.confirmed.send_if_modified(|c| {
            let moved = epoch > *c;
            if moved {
                *c = epoch;
            }
            moved
        });
    }

    /// Waits until the lease is valid; returns how long that took.
    pub async fn wait(&self) -> Duration {
        if self.valid() {
            return Duration::ZERO;
        }
        let started = Instant::now();
        let mut confirmed = self.confirmed.subscribe();
        let mut stalls = self.clock.changed.subscribe();
        while !self.valid() {
            tokio::select! {
                _ = confirmed.changed() => {}
                _ = stalls.changed() => {}
                // A stall not yet noticed by the clock thread.
                _ = tokio::time::sleep(TICK) => {}
            }
        }
        started.elapsed()
    }
}

#[cfg(test)]
impl Lease {
    /// A lease on a clock of its own (ticking like the process's) that has
    /// just seen a stall: invalid until confirmed with the epoch returned.
    pub(crate) fn after_a_stall() -> (Lease, u64) {
        let c: &'static Clock = Box::leak(Box::new(Clock::new()));
        c.tick();
        std::thread::spawn(move || loop {
            std::thread::sleep(TICK);
            c.tick();
        });
        let lease = Lease::on(c);
        let epoch = c.stalls.fetch_add(1, Ordering::SeqCst) + 1;
        c.changed.send_replace(epoch);
        (lease, epoch)
    }

    /// How many calls are waiting in [`Lease::wait`].
    pub(crate) fn waiting(&self) -> usize {
        self.confirmed.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lease_is_valid_until_a_stall_and_again_once_confirmed() {
        // A clock of its own, ticked by hand (the process's is shared).
        let c: &'static Clock = Box::leak(Box::new(Clock::new()));
        c.tick();
        let lease = Lease::on(c);
        assert!(lease.valid() && lease.pending().is_none());
        // A tick that comes late: a stall.
        c.last_tick.store(0, Ordering::SeqCst);
        std::thread::sleep(STALL + Duration::from_millis(50));
        assert!(!lease.valid(), "counted before the clock thread notices");
        c.tick();
        let epoch = 1;
        assert!(!lease.valid());
        assert_eq!(lease.pending(), Some(epoch));
        let waiter = {
            let lease = lease.clone();
            tokio::spawn(async move { lease.wait().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "held until confirmed");
        lease.confirm(epoch);
        waiter.await.unwrap();
        c.tick();
        assert!(lease.valid());
        // A confirmation of an older stall does not undo a newer one.
        c.stalls.fetch_add(1, Ordering::SeqCst);
        lease.confirm(epoch);
        assert!(!lease.valid());
    }
}
