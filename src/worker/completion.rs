//! The types of the worker's completion protocol, whose steps
//! [`super`] lists: what a handled job leaves behind, what its group task
//! reports to the pipeline's coordinator, and the acknowledgement of its
//! record that its offset may wait for.

use std::future::Future;
use std::pin::Pin;

use super::scheduler::{GroupKey, Job};
use super::store::{PendingWrite, Record};

/// Step 2: what a handled job leaves behind.
pub struct Handled<R> {
    /// The record written for it, to be acknowledged before its offset
    /// may be committed.
    pub write: Option<PendingWrite<R>>,
    /// A target's: when the group's applied record next needs a renewal,
    /// if that changed.
    pub lapse: Option<Lapse>,
}

impl<R> Default for Handled<R> {
    fn default() -> Self {
        Handled {
            write: None,
            lapse: None,
        }
    }
}

/// When a capped mute of a target's applied record next lapses at the
/// provider: the record's renewal is due a little before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lapse {
    /// The applied record's key.
    pub record: String,
    /// Milliseconds since the epoch; `None`: nothing of it to renew (any
    /// renewal scheduled for it is dropped).
    pub at_ms: Option<i64>,
}

/// Step 3: a group task's report on its job, to the coordinator.
pub struct Report {
    pub group: GroupKey,
    /// The record's offset; `None` for a renewal.
    pub offset: Option<i64>,
    /// The partition's assignment generation the job was received under.
    pub generation: u64,
    pub commit: Commit,
    pub lapse: Option<Lapse>,
}

/// When the offset of a reported job may be committed. Either way the
/// group's next job may start at once.
pub enum Commit {
    /// Now: nothing was written for it.
    Now,
    /// Once its record is in Kafka.
    OnceWritten(Confirm),
}

/// A record on its way to Kafka; true once acknowledged, false when
/// abandoned (the partition was revoked).
pub type Confirm = Pin<Box<dyn Future<Output = bool> + Send>>;

impl Report {
    /// The report on `job`, which left `handled` behind.
    pub fn new<R: Record>(job: &Job, handled: Handled<R>) -> Report {
        let commit = match handled.write {
            None => Commit::Now,
            Some(write) => {
                Commit::OnceWritten(Box::pin(async move { write.confirm().await.is_ok() }))
            }
        };
        Report {
            group: (job.partition, job.key.clone()),
            offset: job.offset(),
            generation: job.generation,
            commit,
            lapse: handled.lapse,
        }
    }
}

/// Step 4: the record of a job reported [`Commit::OnceWritten`],
/// acknowledged by Kafka or abandoned.
pub struct Written {
    pub group: GroupKey,
    pub offset: Option<i64>,
    pub generation: u64,
    pub acknowledged: bool,
}
