//! What a pipeline does with its jobs: the state keeper's judging and
//! recording, or one target's engine. Every way the keeper's pipeline
//! differs from a target's, as the coordinator sees it, is here: a target
//! has a circuit breaker, renews capped mutes, and re-applies what a rewind
//! fenced; the keeper does none of that.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::breaker::Circuit;
use super::completion::{Lapse, Report};
use super::engine::TargetEngine;
use super::keeper::Keeper;
use super::offsets::Tracker;
use super::scheduler::{Abort, Job, Work};
use crate::event::ReplayScope;

/// The state keeper, or one target.
pub enum Handler {
    Keeper(Arc<Keeper>),
    Target(Arc<TargetEngine>),
}

/// A running job: its task, or nothing when it finished on its first poll.
pub struct Handle(Option<AbortHandle>);

impl Abort for Handle {
    fn abort(&self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

impl Handle {
    /// A job that is not running on a task of its own.
    #[cfg(test)]
    pub fn none() -> Handle {
        Handle(None)
    }
}

impl Handler {
    /// Starts `job` (step 1 of the completion protocol), whose group task
    /// sends its [`Report`] to `done`. A target's record that a rewind
    /// fenced (`tracker` knows) is judged as a replay of every rule.
    pub fn spawn(
        &self,
        mut job: Job,
        tracker: &Mutex<Tracker>,
        done: mpsc::UnboundedSender<Report>,
    ) -> Handle {
        match self {
            Handler::Keeper(k) => {
                let keeper = k.clone();
                run_or_spawn(async move {
                    let handled = keeper.process(&job).await;
                    let _ = done.send(Report::new(&job, handled));
                })
            }
            Handler::Target(t) => {
                // Re-applied after a rewind (its fence is read with the
                // partition's records): judged as a replay of every rule.
                if let Work::Record { offset, replay, .. } = &mut job.work {
                    if replay.is_none()
                        && tracker
                            .lock()
                            .expect("tracker lock")
                            .reapply(job.partition, *offset)
                    {
                        *replay = Some(ReplayScope::default());
                    }
                }
                let engine = t.clone();
                run_or_spawn(async move {
                    let handled = engine.process(&job).await;
                    let _ = done.send(Report::new(&job, handled));
                })
            }
        }
    }

    /// Whether `partition`'s records are read (or it keeps none).
    pub fn is_loaded(&self, partition: i32) -> bool {
        match self {
            Handler::Keeper(k) => k.state.as_ref().is_none_or(|s| s.is_loaded(partition)),
            Handler::Target(t) => t
                .state
                .as_ref()
                .is_none_or(|s| s.store.is_loaded(partition)),
        }
    }

    /// A target's breaker: true while it blocks (not closed, calls
    /// waiting on it).
    pub fn blocked(&self) -> Option<watch::Receiver<bool>> {
        match self {
            Handler::Target(t) => Some(t.deliverer.breaker.subscribe()),
            Handler::Keeper(_) => None,
        }
    }

    /// How long before a capped mute lapses it is renewed (0: never).
    pub fn renew_ahead_ms(&self) -> i64 {
        match self {
            Handler::Target(t) => t.renew_ahead_ms,
            Handler::Keeper(_) => 0,
        }
    }

    /// The renewals of a partition whose records were just read: each
    /// lapse, with its group ID.
    pub fn renewal_schedule(&self, partition: i32) -> Vec<(Lapse, String)> {
        match self {
            Handler::Target(t) => t.renewal_schedule(partition),
            Handler::Keeper(_) => Vec::new(),
        }
    }

    /// A target's circuit, after updating its circuit and lag gauges.
    pub fn update_gauges(&self, lag_seconds: f64) -> Option<Circuit> {
        match self {
            Handler::Target(t) => {
                let c = t.deliverer.breaker.circuit();
                t.metrics.circuit.set(c.value());
                t.metrics.lag_seconds.set(lag_seconds);
                Some(c)
            }
            Handler::Keeper(_) => None,
        }
    }
}

/// Runs `job` to its first wait right here; only what waits (a provider
/// call, a retry) goes on as a task of its own. Most jobs never wait (the
/// keeper's judgement, an event no rule routes, a `discard` target), and a
/// task per event costs more than the event.
fn run_or_spawn(job: impl Future<Output = ()> + Send + 'static) -> Handle {
    let mut job = Box::pin(job);
    // A job that waits registers this waker; its task polls it again at
    // once and registers its own.
    match job.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(()) => Handle(None),
        Poll::Pending => Handle(Some(tokio::spawn(job).abort_handle())),
    }
}
