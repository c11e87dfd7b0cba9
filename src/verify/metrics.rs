//! The verifier's metrics: its reads, what each pass found per target and
//! dimension, and what it repaired. Registered in every process, so that
//! dashboards and alerts find the series; they move only where verify
//! runs (the reconcile role with `[verify] interval_seconds`, or the
//! command). Series with a `target` label appear once a verifier starts.

use prometheus::core::Collector;
use prometheus::{Gauge, IntCounterVec, IntGauge, Opts};
use strum::VariantArray;

use super::diff::{Difference, Dimension};
use super::read::{ReadCounters, ReadStatus};

/// What a pass made of one place, the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum PlaceOutcome {
    /// Read, and it holds what it should.
    Agreed,
    /// Read, and some dimension differs.
    Differed,
    /// A read failed: compared next pass.
    Unread,
}

/// Every verify metric.
#[derive(Clone)]
pub struct VerifyMetrics {
    reads: IntCounterVec,
    places: IntCounterVec,
    differences: IntCounterVec,
    repairs: IntCounterVec,
    unverified: IntCounterVec,
    pub last_pass_differences: IntGauge,
    pub last_pass_end: Gauge,
    pub interval: IntGauge,
}

fn vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl VerifyMetrics {
    pub fn new() -> VerifyMetrics {
        VerifyMetrics {
            reads: vec(
                "mutebridge_verify_reads_total",
                "Provider reads of verify passes, each attempt, by target and status (ok, rate_limited, outage, failed).",
                &["target", "status"],
            ),
            places: vec(
                "mutebridge_verify_places_total",
                "Provider groups and chatrooms a verify pass compared, by target and outcome.",
                &["target", "outcome"],
            ),
            differences: vec(
                "mutebridge_verify_differences_total",
                "Differences between what a target should hold and what its provider holds, by target, dimension and difference.",
                &["target", "dimension", "difference"],
            ),
            repairs: vec(
                "mutebridge_verify_repairs_total",
                "Repair markers verify published (one per drifted group and target), acknowledged by Kafka.",
                &["target"],
            ),
            unverified: vec(
                "mutebridge_verify_unverified_total",
                "Member mutes a pass could not verify one by one (ZEGO shows only whether a group has any).",
                &["target"],
            ),
            last_pass_differences: IntGauge::new(
                "mutebridge_verify_last_pass_differences",
                "Differences the last finished verify pass found, over every target it read.",
            )
            .expect("valid metric"),
            last_pass_end: Gauge::new(
                "mutebridge_verify_last_pass_timestamp_seconds",
                "When the last verify pass finished (seconds since the epoch); while the first scheduled pass runs, when it started; 0 where none runs.",
            )
            .expect("valid metric"),
            interval: IntGauge::new(
                "mutebridge_verify_interval_seconds",
                "verify.interval_seconds of the running reconcile role; 0 where no pass is scheduled.",
            )
            .expect("valid metric"),
        }
    }

    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.reads.clone()),
            Box::new(self.places.clone()),
            Box::new(self.differences.clone()),
            Box::new(self.repairs.clone()),
            Box::new(self.unverified.clone()),
            Box::new(self.last_pass_differences.clone()),
            Box::new(self.last_pass_end.clone()),
            Box::new(self.interval.clone()),
        ]
    }

    /// Every series of `target` at 0, and its read counters.
    pub fn target(&self, target: &str) -> ReadCounters {
        for o in PlaceOutcome::VARIANTS {
            self.places.with_label_values(&[target, o.into()]);
        }
        for d in Dimension::VARIANTS {
            for k in Difference::VARIANTS {
                self.differences
                    .with_label_values(&[target, d.into(), k.into()]);
            }
        }
        self.repairs.with_label_values(&[target]);
        self.unverified.with_label_values(&[target]);
        ReadCounters(
            ReadStatus::VARIANTS
                .iter()
                .map(|s| self.reads.with_label_values(&[target, s.into()]))
                .collect(),
        )
    }

    pub fn place(&self, target: &str, outcome: PlaceOutcome, n: usize) {
        self.places
            .with_label_values(&[target, outcome.into()])
            .inc_by(n as u64);
    }

    pub fn difference(&self, target: &str, dimension: Dimension, difference: Difference) {
        self.differences
            .with_label_values(&[target, dimension.into(), difference.into()])
            .inc();
    }

    pub fn repaired(&self, target: &str, n: usize) {
        self.repairs.with_label_values(&[target]).inc_by(n as u64);
    }

    pub fn unverified(&self, target: &str, n: usize) {
        self.unverified
            .with_label_values(&[target])
            .inc_by(n as u64);
    }
}

impl Default for VerifyMetrics {
    fn default() -> Self {
        VerifyMetrics::new()
    }
}
