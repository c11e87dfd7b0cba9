//! Which offsets of the event topic may be committed.
//!
//! Events of different groups finish out of order, so a partition's commit
//! position is the lowest offset still in progress (or one past the last
//! received when none is). Committing only up to there is what makes "a
//! committed offset means the actions ran or were dead-lettered" true; a
//! crash re-delivers from there and never skips.
//!
//! A position counts as committed only once Kafka acknowledged the commit
//! ([`Tracker::commit_answered`]): a commit that failed (the coordinator
//! moved, a rebalance was in progress) is issued again with the next one.
//! And when librdkafka reset a partition's position because retention had
//! deleted the records there ([`Tracker::reset_at`]), the records it skipped
//! are counted ([`Tracker::take_skipped`]), never silently lost.

use std::collections::{BTreeMap, HashMap};

use rdkafka::{Offset, TopicPartitionList};

/// Per-partition progress.
#[derive(Debug, Default)]
pub struct Tracker {
    parts: HashMap<i32, Part>,
    next_generation: u64,
    revoked: Vec<(i32, u64)>,
    /// Partitions `mutebridge rewind` moved back: the offset below which
    /// events are applied again (judged as replays, so that what the
    /// target applied before is sent again).
    fences: HashMap<i32, i64>,
    /// Where librdkafka reset a partition's position from (the first
    /// offset it could not fetch), until the next record shows where to.
    resets: HashMap<i32, i64>,
    /// Records skipped by resets since the last [`Tracker::take_skipped`].
    skipped: Vec<Skipped>,
}

/// Records of one partition that were never read: retention deleted them
/// before this pipeline got to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub partition: i32,
    /// The first offset that could not be read, and the one read instead.
    pub from: i64,
    pub to: i64,
}

/// The commit metadata that carries a rewind's fence until it is passed:
/// `mutebridge:reapply-until=OFFSET`.
pub const FENCE: &str = "mutebridge:reapply-until=";

/// The fence in a committed offset's metadata.
pub fn fence_of(metadata: &str) -> Option<i64> {
    metadata.strip_prefix(FENCE)?.parse().ok()
}

#[derive(Debug)]
struct Part {
    /// Changes when the partition is revoked and assigned again, so results
    /// of work started under an old assignment are not counted.
    generation: u64,
    /// Unfinished offsets, with their records' timestamps (ms).
    pending: BTreeMap<i64, i64>,
    next: i64,
    /// The last position Kafka acknowledged as committed.
    committed: i64,
    /// The last position a commit was issued for (acknowledged or not),
    /// and when.
    issued: i64,
    issued_at: Option<std::time::Instant>,
}

/// How long a commit may go unanswered before it is issued again (its
/// answer lost in a rebalance).
const COMMIT_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Part {
    fn position(&self) -> i64 {
        self.pending
            .first_key_value()
            .map(|(o, _)| *o)
            .unwrap_or(self.next)
    }
}

impl Tracker {
    /// Records that `offset` (its record written at `timestamp_ms`) was
    /// received; returns its partition's generation.
    pub fn received(&mut self, partition: i32, offset: i64, timestamp_ms: i64) -> u64 {
        let next_generation = &mut self.next_generation;
        let part = self.parts.entry(partition).or_insert_with(|| {
            *next_generation += 1;
            Part {
                generation: *next_generation,
                pending: BTreeMap::new(),
                next: offset,
                // The consumer starts at the group's committed offset: the
                // first record's offset is committed already. Committing
                // it again before any work is done would only overwrite the
                // commit's metadata (a rewind's fence the partition's
                // records have not been read for yet).
                committed: offset,
                issued: offset,
                issued_at: None,
            }
        });
        if let Some(from) = self.resets.remove(&partition) {
            if offset > from {
                self.skipped.push(Skipped {
                    partition,
                    from,
                    to: offset,
                });
            }
        }
        part.pending.insert(offset, timestamp_ms);
        part.next = part.next.max(offset + 1);
        part.generation
    }

    /// `mutebridge rewind` moved `partition` back from `until` (`None`:
    /// it was not, or that is passed).
    pub fn set_fence(&mut self, partition: i32, until: Option<i64>) {
        match until {
            Some(f) => self.fences.insert(partition, f),
            None => self.fences.remove(&partition),
        };
    }

    /// Whether the record at `offset` is one a rewind re-applies.
    pub fn reapply(&self, partition: i32, offset: i64) -> bool {
        self.fences.get(&partition).is_some_and(|f| offset < *f)
    }

    /// When the oldest unfinished record was written (ms), if one is held.
    pub fn oldest_pending_ms(&self) -> Option<i64> {
        self.parts
            .values()
            .filter_map(|p| p.pending.first_key_value().map(|(_, ts)| *ts))
            .min()
    }

    /// Records that `offset` is finished (applied, skipped or dead-lettered).
    pub fn finished(&mut self, partition: i32, offset: i64, generation: u64) {
        if let Some(part) = self.parts.get_mut(&partition) {
            if part.generation == generation {
                part.pending.remove(&offset);
            }
        }
    }

    /// The offset to commit for `partition`: everything before it is finished.
    #[cfg(test)]
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.parts.get(&partition).map(Part::position)
    }

    /// Positions to commit: those that moved since the last call, and
    /// those whose last commit failed; a rewind's fence goes with them
    /// until it is passed (so a restart in the middle still re-applies the
    /// rest).
    pub fn take_commits(&mut self, topic: &str) -> Option<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for (p, part) in self.parts.iter_mut() {
            let position = part.position();
            let unanswered = part
                .issued_at
                .is_some_and(|at| at.elapsed() > COMMIT_ANSWER_TIMEOUT);
            if position > part.committed && (position != part.issued || unanswered) {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(position));
                part.issued = position;
                part.issued_at = Some(std::time::Instant::now());
                match self.fences.get(p) {
                    Some(f) if position < *f => {
                        if let Some(mut e) = tpl.find_partition(topic, *p) {
                            e.set_metadata(format!("{FENCE}{f}"));
                        }
                    }
                    Some(_) => {
                        self.fences.remove(p);
                    }
                    None => {}
                }
            }
        }
        (tpl.count() > 0).then_some(tpl)
    }

    /// Every partition's position, moved or not: committing it again is a
    /// no-op for Kafka, and only a current member may do it.
    pub fn positions(&self, topic: &str) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (p, part) in &self.parts {
            let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(part.position()));
        }
        tpl
    }

    /// Kafka answered a commit of `position` for `partition`: acknowledged
    /// (`ok`), or refused, in which case the position is issued again with
    /// the next commit. Answers about an older assignment change nothing
    /// that matters: an acknowledged position is true whoever committed it.
    pub fn commit_answered(&mut self, partition: i32, position: i64, ok: bool) {
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        if ok {
            part.committed = part.committed.max(position);
        } else if part.issued == position {
            part.issued = part.committed;
        }
        if part.issued <= part.committed {
            part.issued_at = None;
        }
    }

    /// librdkafka reset `partition`'s position after failing to fetch
    /// `from` (retention deleted it): the next record received there shows
    /// how many were skipped.
    pub fn reset_at(&mut self, partition: i32, from: i64) {
        self.resets.entry(partition).or_insert(from);
    }

    /// The broker's log start of `partition` (librdkafka's statistics):
    /// what a reset there skipped is counted now, up to where the log
    /// starts, instead of only when a record next arrives (none may, when
    /// retention deleted all of it). The reset stays noted from there
    /// until a record arrives, so each skipped record is counted once.
    pub fn log_starts_at(&mut self, partition: i32, low: i64) {
        if let Some(from) = self.resets.get_mut(&partition) {
            if low > *from {
                let from = std::mem::replace(from, low);
                self.skipped.push(Skipped {
                    partition,
                    from,
                    to: low,
                });
            }
        }
    }

    /// Records skipped by resets since the last call.
    pub fn take_skipped(&mut self) -> Vec<Skipped> {
        std::mem::take(&mut self.skipped)
    }

    /// Forgets a revoked partition; returns its final position when that
    /// is past what Kafka acknowledged (else there is nothing to commit),
    /// with the commit's metadata: a rewind's fence not yet passed goes
    /// with it, so the next owner re-applies the rest.
    pub fn revoke(&mut self, partition: i32) -> Option<(i64, String)> {
        let fence = self.fences.remove(&partition);
        self.resets.remove(&partition);
        let part = self.parts.remove(&partition)?;
        self.revoked.push((partition, part.generation));
        let position = part.position();
        let metadata = match fence {
            Some(f) if position < f => format!("{FENCE}{f}"),
            _ => String::new(),
        };
        (position > part.committed).then_some((position, metadata))
    }

    /// Partitions revoked since the last call, with their old generation:
    /// their queued and running work must be dropped.
    pub fn take_revoked(&mut self) -> Vec<(i32, u64)> {
        std::mem::take(&mut self.revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_waits_for_the_lowest_unfinished_offset() {
        let mut t = Tracker::default();
        let g = t.received(0, 10, 100);
        t.received(0, 11, 110);
        t.received(0, 12, 120);
        assert_eq!(t.oldest_pending_ms(), Some(100));
        t.finished(0, 11, g);
        t.finished(0, 12, g);
        assert_eq!(t.position(0), Some(10), "10 is still running");
        t.finished(0, 10, g);
        assert_eq!(t.position(0), Some(13));
        assert_eq!(t.oldest_pending_ms(), None, "nothing unfinished");
        let tpl = t.take_commits("t").unwrap();
        assert_eq!(
            tpl.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(13)
        );
        t.commit_answered(0, 13, true);
        assert!(t.take_commits("t").is_none(), "nothing moved");
    }

    #[test]
    fn a_refused_commit_is_issued_again_and_never_counts_as_done() {
        let mut t = Tracker::default();
        let g = t.received(0, 10, 0);
        t.finished(0, 10, g);
        let first = t.take_commits("t").unwrap();
        assert_eq!(
            first.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(11)
        );
        assert!(t.take_commits("t").is_none(), "in flight: not issued twice");
        // The coordinator moved: the commit failed.
        t.commit_answered(0, 11, false);
        assert_eq!(
            t.revoke(0),
            Some((11, String::new())),
            "a revoke still commits it"
        );
        let g = t.received(0, 11, 0);
        t.finished(0, 11, g);
        t.take_commits("t").unwrap();
        t.commit_answered(0, 12, false);
        let again = t.take_commits("t").expect("retried with the next commit");
        assert_eq!(
            again.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(12)
        );
        t.commit_answered(0, 12, true);
        assert!(t.take_commits("t").is_none());
        assert_eq!(t.revoke(0), None, "acknowledged: nothing left to commit");
    }

    #[test]
    fn records_skipped_by_a_reset_are_counted_once() {
        let mut t = Tracker::default();
        t.reset_at(4, 100);
        t.received(4, 250, 0);
        t.received(4, 251, 0);
        assert_eq!(
            t.take_skipped(),
            vec![Skipped {
                partition: 4,
                from: 100,
                to: 250
            }]
        );
        assert!(t.take_skipped().is_empty());
        // A reset that lands where it was (nothing deleted) skips nothing.
        t.reset_at(4, 252);
        t.received(4, 252, 0);
        assert!(t.take_skipped().is_empty());
    }

    #[test]
    fn a_reset_is_counted_from_the_log_start_when_no_record_follows() {
        let mut t = Tracker::default();
        t.log_starts_at(2, 500);
        assert!(t.take_skipped().is_empty(), "no reset: nothing skipped");
        t.reset_at(2, 100);
        t.log_starts_at(2, 90);
        assert!(t.take_skipped().is_empty(), "older statistics");
        t.log_starts_at(2, 300);
        t.log_starts_at(2, 300);
        t.log_starts_at(2, 340);
        // Then a record past the log start: the rest, once.
        t.received(2, 360, 0);
        t.log_starts_at(2, 400);
        let ranges: Vec<(i64, i64)> = t.take_skipped().iter().map(|s| (s.from, s.to)).collect();
        assert_eq!(ranges, [(100, 300), (300, 340), (340, 360)]);
    }

    #[test]
    fn revoked_work_does_not_count_after_reassignment() {
        let mut t = Tracker::default();
        let old = t.received(3, 5, 0);
        assert_eq!(
            t.revoke(3),
            None,
            "5 is where the group was: nothing to commit"
        );
        assert_eq!(t.take_revoked(), vec![(3, old)]);
        let new = t.received(3, 5, 0);
        assert_ne!(old, new);
        t.finished(3, 5, old);
        assert_eq!(t.position(3), Some(5), "a stale finish is ignored");
        t.finished(3, 5, new);
        assert_eq!(t.position(3), Some(6));
    }

    #[test]
    fn nothing_is_committed_before_work_is_done_so_a_fence_is_never_overwritten() {
        let mut t = Tracker::default();
        // The partition's first record is at the group's committed offset.
        let g = t.received(2, 40, 0);
        t.received(2, 41, 0);
        assert!(t.take_commits("t").is_none(), "40 is committed already");
        t.finished(2, 40, g);
        let tpl = t.take_commits("t").unwrap();
        assert_eq!(
            tpl.find_partition("t", 2).unwrap().offset(),
            Offset::Offset(41)
        );
    }

    #[test]
    fn a_rewind_fence_goes_with_the_commits_until_it_is_passed() {
        let mut t = Tracker::default();
        t.set_fence(1, Some(3));
        let g = t.received(1, 1, 0);
        t.received(1, 2, 0);
        t.received(1, 3, 0);
        assert!(t.reapply(1, 2) && !t.reapply(1, 3));
        t.finished(1, 1, g);
        let tpl = t.take_commits("t").unwrap();
        let e = tpl.find_partition("t", 1).unwrap();
        assert_eq!(
            (e.offset(), fence_of(e.metadata())),
            (Offset::Offset(2), Some(3))
        );
        t.finished(1, 2, g);
        t.finished(1, 3, g);
        let tpl = t.take_commits("t").unwrap();
        let e = tpl.find_partition("t", 1).unwrap();
        assert_eq!(e.offset(), Offset::Offset(4));
        assert_eq!(e.metadata(), "", "passed: no fence any more");
        assert!(!t.reapply(1, 2));
    }

    #[test]
    fn a_revoke_commits_the_fence_until_it_is_passed() {
        let mut t = Tracker::default();
        t.set_fence(1, Some(10));
        let g = t.received(1, 4, 0);
        t.received(1, 5, 0);
        t.finished(1, 4, g);
        let (position, metadata) = t.revoke(1).unwrap();
        assert_eq!((position, fence_of(&metadata)), (5, Some(10)));
        // Past the fence: the commit carries none.
        t.set_fence(2, Some(3));
        let g = t.received(2, 3, 0);
        t.finished(2, 3, g);
        assert_eq!(t.revoke(2), Some((4, String::new())));
    }

    #[test]
    fn a_revoke_after_the_last_commit_has_nothing_to_commit() {
        let mut t = Tracker::default();
        let g = t.received(2, 7, 0);
        t.finished(2, 7, g);
        assert!(t.take_commits("t").is_some());
        t.commit_answered(2, 8, true);
        // At shutdown the final commit ran before the unsubscribe: the
        // revoke must not block on committing the same position again.
        assert_eq!(t.revoke(2), None);
        assert_eq!(t.take_revoked(), vec![(2, g)]);
    }
}
