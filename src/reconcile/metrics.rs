//! The reconciler's metrics: its REST calls, token renewals, what each pass
//! found and corrected. Registered in every process (like the worker's), so
//! dashboards and alerts find the series; they move only where
//! `mutebridge reconcile` runs.

use prometheus::core::Collector;
use prometheus::{Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use strum::VariantArray;

use crate::event::EventKind;

/// A REST call, the `call` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Call {
    /// `POST /token`.
    Token,
    /// `GET /chatgroups/{ids}` or `/chatrooms/{ids}`.
    Details,
    /// `GET .../{id}/mute`.
    MuteList,
    /// `GET /chatgroups?limit&cursor`.
    List,
}

/// Why a token was fetched, the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Renewal {
    /// The first token of the process.
    Start,
    /// The token was about to expire.
    Expiry,
    /// Easemob answered 401 with it.
    Unauthorized,
}

/// A way our state and Easemob's differ, the `difference` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Difference {
    /// Mute-all is on where we have it off, or off where we have it on.
    MuteAll,
    /// A member muted there (or until another time) is not so here.
    MemberMuted,
    /// A member muted here is not muted there.
    MemberUnmuted,
    /// The group or chat room no longer exists.
    Gone,
}

/// What a pass made of one group, the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum GroupOutcome {
    /// Read, and it agreed.
    Agreed,
    /// Read, and corrections were published.
    Corrected,
    /// Read, it differed, nothing was published (`--dry-run`).
    Differed,
    /// Easemob says it does not exist (twice).
    Gone,
    /// A read failed or said nothing about it: compared next pass.
    Unread,
    /// It would unmute more than `confirm_unmute_share` of its muted
    /// members and a second read did not agree: nothing published,
    /// compared next pass.
    HeldBack,
}

/// What stopped part of an app's pass, the `stage` label.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, strum::VariantArray, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum AppFailure {
    /// `GET /chatgroups` failed or its cursor cycled (`scope = "all"`):
    /// the groups it did not list were not compared.
    Listing,
    /// The state topic could not be read to its end: the app's remaining
    /// known groups were not compared.
    StateTopic,
}

/// How a pass ended, the `outcome` label of the passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum PassOutcome {
    /// Every group in scope was read.
    Complete,
    /// Some groups were not read, or held back, or an app's listing or
    /// state failed: they wait for the next pass.
    Incomplete,
}

/// Every reconcile metric.
#[derive(Clone)]
pub struct ReconcileMetrics {
    calls: IntCounterVec,
    renewals: IntCounterVec,
    groups: IntCounterVec,
    differences: IntCounterVec,
    corrections: IntCounterVec,
    passes: IntCounterVec,
    last_pass_groups: IntGaugeVec,
    last_pass_failures: IntGaugeVec,
    pub last_pass_differences: IntGauge,
    pub last_pass_end: Gauge,
    pub interval: IntGauge,
}

fn counter(name: &str, help: &str, label: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric")
}

impl ReconcileMetrics {
    pub fn new() -> ReconcileMetrics {
        let calls = IntCounterVec::new(
            Opts::new(
                "mutebridge_reconcile_rest_calls_total",
                "Easemob REST calls the reconciler made, by call and HTTP status (or transport).",
            ),
            &["call", "status"],
        )
        .expect("valid metric");
        let m = ReconcileMetrics {
            calls,
            renewals: counter(
                "mutebridge_reconcile_token_renewals_total",
                "Easemob app tokens fetched, by reason (start, expiry, unauthorized).",
                "reason",
            ),
            groups: counter(
                "mutebridge_reconcile_groups_total",
                "Groups and chat rooms a pass compared, by outcome.",
                "outcome",
            ),
            differences: counter(
                "mutebridge_reconcile_differences_total",
                "Differences between the mute state and Easemob's, by kind.",
                "difference",
            ),
            corrections: counter(
                "mutebridge_reconcile_corrections_total",
                "Corrective events the reconciler published, by kind.",
                "kind",
            ),
            passes: counter(
                "mutebridge_reconcile_passes_total",
                "Reconcile passes, by outcome (complete; incomplete: some groups or an app's listing were not read).",
                "outcome",
            ),
            last_pass_groups: IntGaugeVec::new(
                Opts::new(
                    "mutebridge_reconcile_last_pass_groups",
                    "Groups and chat rooms the last finished pass compared, by app and outcome (unread and held_back: compared next pass).",
                ),
                &["app", "outcome"],
            )
            .expect("valid metric"),
            last_pass_failures: IntGaugeVec::new(
                Opts::new(
                    "mutebridge_reconcile_last_pass_failures",
                    "1 when the app's group listing (stage listing) or its part of the state topic (stage state_topic) failed in the last finished pass.",
                ),
                &["app", "stage"],
            )
            .expect("valid metric"),
            last_pass_differences: IntGauge::new(
                "mutebridge_reconcile_last_pass_differences",
                "Differences the last finished pass found (callbacks that never arrived).",
            )
            .expect("valid metric"),
            last_pass_end: Gauge::new(
                "mutebridge_reconcile_last_pass_timestamp_seconds",
                "When the last pass finished (seconds since the epoch); while the role's first pass runs, when the role started; 0 where none runs.",
            )
            .expect("valid metric"),
            interval: IntGauge::new(
                "mutebridge_reconcile_interval_seconds",
                "reconcile.interval_seconds of the running reconcile role; 0 where none runs.",
            )
            .expect("valid metric"),
        };
        // Every series at 0 from the start, so rates and alerts see them.
        for d in Difference::VARIANTS {
            m.differences.with_label_values(&[<&str>::from(*d)]);
        }
        for o in GroupOutcome::VARIANTS {
            m.groups.with_label_values(&[<&str>::from(*o)]);
        }
        for r in Renewal::VARIANTS {
            m.renewals.with_label_values(&[<&str>::from(*r)]);
        }
        for kind in EventKind::MUTE.iter().chain([&EventKind::GroupDestroyed]) {
            m.corrections.with_label_values(&[kind.as_str()]);
        }
        for o in PassOutcome::VARIANTS {
            m.passes.with_label_values(&[<&str>::from(*o)]);
        }
        m
    }

    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.calls.clone()),
            Box::new(self.renewals.clone()),
            Box::new(self.groups.clone()),
            Box::new(self.differences.clone()),
            Box::new(self.corrections.clone()),
            Box::new(self.passes.clone()),
            Box::new(self.last_pass_groups.clone()),
            Box::new(self.last_pass_failures.clone()),
            Box::new(self.last_pass_differences.clone()),
            Box::new(self.last_pass_end.clone()),
            Box::new(self.interval.clone()),
        ]
    }

    pub fn call(&self, call: Call, status: &str) {
        self.calls
            .with_label_values(&[<&str>::from(call), status])
            .inc();
    }

    pub fn renewed(&self, why: Renewal) {
        self.renewals.with_label_values(&[<&str>::from(why)]).inc();
    }

    pub fn group(&self, outcome: GroupOutcome) {
        self.groups
            .with_label_values(&[<&str>::from(outcome)])
            .inc();
    }

    pub fn difference(&self, difference: Difference) {
        self.differences
            .with_label_values(&[<&str>::from(difference)])
            .inc();
    }

    pub fn corrected(&self, kind: EventKind) {
        self.corrections.with_label_values(&[kind.as_str()]).inc();
    }

    /// What the last finished pass made of `app`'s groups, and which of
    /// its stages failed.
    pub fn app_passed(
        &self,
        app: &str,
        groups: impl Fn(GroupOutcome) -> usize,
        failed: impl Fn(AppFailure) -> bool,
    ) {
        for o in GroupOutcome::VARIANTS {
            self.last_pass_groups
                .with_label_values(&[app, <&str>::from(*o)])
                .set(groups(*o) as i64);
        }
        for f in AppFailure::VARIANTS {
            self.last_pass_failures
                .with_label_values(&[app, <&str>::from(*f)])
                .set(failed(*f) as i64);
        }
    }

    pub fn passed(&self, outcome: PassOutcome) {
        self.passes
            .with_label_values(&[<&str>::from(outcome)])
            .inc();
    }
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        ReconcileMetrics::new()
    }
}
