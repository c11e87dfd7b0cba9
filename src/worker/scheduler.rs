//! Which consumed event runs next. Pure bookkeeping, no Kafka and no I/O,
//! so it is unit-tested on its own.
//!
//! Events are queued per group (partition + key) and a group runs one event
//! at a time, so a group's actions happen in partition order. Up to
//! `max_in_flight` groups run at once, so a group stuck in retries holds up
//! only itself. Events held (queued or running) are counted; at
//! `max_buffered` the caller should pause fetching, and resume once the
//! backlog is down to half. Work of a revoked partition is dropped: the new
//! owner starts again from the committed offset.
//!
//! A group whose partition's records are still being read (a rebuild after
//! an assignment) is parked, not started: it holds no run slot that the
//! groups of other partitions need, and goes on once the caller says the
//! partition is loaded ([`Scheduler::unpark`]).

use std::collections::{HashMap, HashSet, VecDeque};

use crate::event::ReplayScope;

/// Work waiting for its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub partition: i32,
    /// The partition's assignment generation when it was received
    /// (see [`super::offsets::Tracker`]).
    pub generation: u64,
    /// The record key (the group ID).
    pub key: Vec<u8>,
    pub work: Work,
}

/// What a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// A consumed record.
    Record {
        offset: i64,
        payload: Option<Vec<u8>>,
        /// Set on a record `dlq replay` published: apply only this.
        replay: Option<ReplayScope>,
    },
    /// Re-apply the capped mutes of the group's applied record with this
    /// key before the provider ends them (no offset).
    Renew(String),
}

impl Job {
    /// The offset of a consumed record; `None` for other work.
    pub fn offset(&self) -> Option<i64> {
        match &self.work {
            Work::Record { offset, .. } => Some(*offset),
            Work::Renew(_) => None,
        }
    }
}

/// A group: the partition and the record key (the group ID).
pub type GroupKey = (i32, Vec<u8>);

/// Something running that can be stopped (a task's abort handle).
pub trait Abort {
    fn abort(&self);
}

impl Abort for tokio::task::AbortHandle {
    fn abort(&self) {
        tokio::task::AbortHandle::abort(self)
    }
}

/// A change of the consumer's fetching the caller should make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Pause,
    Resume,
}

struct Running<H> {
    generation: u64,
    /// The record a renewal is for (no offset; dropped with its
    /// partition, whatever the generation).
    renewal: Option<String>,
    handle: H,
}

/// Per-group queues and the set of running groups.
pub struct Scheduler<H> {
    queues: HashMap<GroupKey, VecDeque<Job>>,
    running: HashMap<GroupKey, Running<H>>,
    /// Groups with a queued event and nothing running, in arrival order.
    ready: VecDeque<GroupKey>,
    /// Ready groups of partitions whose records are still being read.
    parked: HashMap<i32, Vec<GroupKey>>,
    /// Applied-record keys with a renewal queued or running.
    renewing: HashSet<String>,
    buffered: usize,
    paused: bool,
    max_in_flight: usize,
    max_buffered: usize,
}

impl<H: Abort> Scheduler<H> {
    pub fn new(max_in_flight: usize, max_buffered: usize) -> Scheduler<H> {
        Scheduler {
            queues: HashMap::new(),
            running: HashMap::new(),
            ready: VecDeque::new(),
            parked: HashMap::new(),
            renewing: HashSet::new(),
            buffered: 0,
            paused: false,
            max_in_flight,
            max_buffered,
        }
    }

    /// Queues a received event (or a renewal) behind its group's earlier
    /// work. A renewal already queued or running for the same record is
    /// not queued twice.
    pub fn push(&mut self, job: Job) {
        if let Work::Renew(record) = &job.work {
            if !self.renewing.insert(record.clone()) {
                return;
            }
        }
        let key: GroupKey = (job.partition, job.key.clone());
        self.buffered += 1;
        let known = self.running.contains_key(&key) || self.queues.contains_key(&key);
        self.queues.entry(key.clone()).or_default().push_back(job);
        if !known {
            self.ready.push_back(key);
        }
    }

    /// Starts queued work of idle groups while fewer than `max_in_flight`
    /// groups run; `loaded` says whether a partition's records are read
    /// (groups of other partitions are parked); `spawn` starts one job and
    /// returns its handle.
    pub fn start_ready(&mut self, loaded: impl Fn(i32) -> bool, mut spawn: impl FnMut(Job) -> H) {
        while self.running.len() < self.max_in_flight {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            if !loaded(key.0) {
                self.parked.entry(key.0).or_default().push(key);
                continue;
            }
            let Some(job) = self.queues.get_mut(&key).and_then(VecDeque::pop_front) else {
                continue;
            };
            let generation = job.generation;
            let renewal = match &job.work {
                Work::Renew(record) => Some(record.clone()),
                Work::Record { .. } => None,
            };
            let handle = spawn(job);
            self.running.insert(
                key,
                Running {
                    generation,
                    renewal,
                    handle,
                },
            );
        }
    }

    /// Partition `partition`'s records are read: its parked groups may run.
    pub fn unpark(&mut self, partition: i32) {
        if let Some(keys) = self.parked.remove(&partition) {
            self.ready.extend(keys);
        }
    }

    /// Records that the running event of `group` (started under
    /// `generation`) is done, and lines up the group's next event. False
    /// when that work was dropped by a revoke in between (it must not count).
    pub fn finished(&mut self, group: &GroupKey, generation: u64) -> bool {
        if self
            .running
            .get(group)
            .is_none_or(|r| r.generation != generation)
        {
            return false;
        }
        if let Some(record) = self.running.remove(group).and_then(|r| r.renewal) {
            self.renewing.remove(&record);
        }
        self.buffered -= 1;
        if self.queues.get(group).is_some_and(|q| !q.is_empty()) {
            self.ready.push_back(group.clone());
        } else {
            self.queues.remove(group);
        }
        true
    }

    /// Drops the queued and running work `partition` received under
    /// `generation` (running work is aborted), and every renewal of the
    /// partition (the new owner schedules its own). Linear in the groups
    /// held: a rebalance may revoke partitions with thousands queued.
    pub fn revoke(&mut self, partition: i32, generation: u64) {
        let renewing = &mut self.renewing;
        let mut dropped = 0;
        for (key, queue) in self.queues.iter_mut() {
            if key.0 == partition {
                let before = queue.len();
                queue.retain(|j| {
                    let keep = j.generation != generation && !matches!(j.work, Work::Renew(_));
                    if let (false, Work::Renew(r)) = (keep, &j.work) {
                        renewing.remove(r);
                    }
                    keep
                });
                dropped += before - queue.len();
            }
        }
        self.parked.remove(&partition);
        self.running.retain(|key, r| {
            let stale = key.0 == partition && (r.generation == generation || r.renewal.is_some());
            if stale {
                r.handle.abort();
                dropped += 1;
                if let Some(record) = &r.renewal {
                    renewing.remove(record);
                }
            }
            !stale
        });
        self.buffered -= dropped;
        let (queues, running) = (&self.queues, &self.running);
        self.ready
            .retain(|k| queues.get(k).is_some_and(|q| !q.is_empty()));
        for keys in self.parked.values_mut() {
            keys.retain(|k| queues.get(k).is_some_and(|q| !q.is_empty()));
        }
        self.queues
            .retain(|k, q| !q.is_empty() || running.contains_key(k));
        // A group of the partition whose running event was dropped may
        // still have newer events queued (of a later generation): it can
        // run them now.
        let waiting: HashSet<&GroupKey> = self
            .ready
            .iter()
            .chain(self.parked.values().flatten())
            .collect();
        let lost: Vec<GroupKey> = self
            .queues
            .keys()
            .filter(|k| k.0 == partition && !running.contains_key(*k) && !waiting.contains(k))
            .cloned()
            .collect();
        self.ready.extend(lost);
    }

    /// The fetching change due now, if any: pause at `max_buffered`, resume
    /// at half. Call [`Scheduler::set_paused`] once it is made.
    pub fn flow(&self) -> Option<Flow> {
        if !self.paused && self.buffered >= self.max_buffered {
            Some(Flow::Pause)
        } else if self.paused && self.buffered <= self.max_buffered / 2 {
            Some(Flow::Resume)
        } else {
            None
        }
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Aborts everything still running (the shutdown grace is over).
    pub fn abort_running(&mut self) {
        for r in self.running.values() {
            r.handle.abort();
        }
    }

    /// Groups with an event running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Events held: running or queued.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Groups with work held: running or queued.
    pub fn groups(&self) -> usize {
        self.queues.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A handle that remembers being aborted.
    #[derive(Clone, Default)]
    struct Handle(Rc<Cell<bool>>);

    impl Abort for Handle {
        fn abort(&self) {
            self.0.set(true);
        }
    }

    fn job(partition: i32, offset: i64, generation: u64, key: &str) -> Job {
        Job {
            partition,
            generation,
            key: key.as_bytes().to_vec(),
            work: Work::Record {
                offset,
                payload: None,
                replay: None,
            },
        }
    }

    fn start(s: &mut Scheduler<Handle>) -> Vec<(Job, Handle)> {
        start_loaded(s, |_| true)
    }

    fn start_loaded(s: &mut Scheduler<Handle>, loaded: impl Fn(i32) -> bool) -> Vec<(Job, Handle)> {
        let mut started = Vec::new();
        s.start_ready(loaded, |j| {
            let h = Handle::default();
            started.push((j, h.clone()));
            h
        });
        started
    }

    fn offsets(started: &[(Job, Handle)]) -> Vec<i64> {
        started.iter().map(|(j, _)| j.offset().unwrap()).collect()
    }

    fn group(partition: i32, key: &str) -> GroupKey {
        (partition, key.as_bytes().to_vec())
    }

    #[test]
    fn one_event_per_group_at_a_time_in_order() {
        let mut s = Scheduler::new(10, 100);
        s.push(job(0, 1, 1, "a"));
        s.push(job(0, 2, 1, "a"));
        s.push(job(0, 3, 1, "b"));
        let started = start(&mut s);
        assert_eq!(
            offsets(&started),
            [1, 3],
            "one per group: a@1 and b@3, not a@2"
        );
        assert!(start(&mut s).is_empty(), "a is busy until 1 finishes");
        assert!(s.finished(&group(0, "a"), 1));
        let next = start(&mut s);
        assert_eq!(next.len(), 1);
        assert_eq!(offsets(&next), [2], "then a's next event");
        assert_eq!(s.buffered(), 2, "a@2 and b@3 are held");
    }

    #[test]
    fn concurrency_is_bounded_by_max_in_flight() {
        let mut s = Scheduler::new(2, 100);
        for (i, g) in ["a", "b", "c"].iter().enumerate() {
            s.push(job(0, i as i64, 1, g));
        }
        assert_eq!(start(&mut s).len(), 2);
        assert_eq!(s.running(), 2);
        assert!(s.finished(&group(0, "a"), 1));
        let next = start(&mut s);
        assert_eq!(next[0].0.key, b"c", "c waited for a free slot");
    }

    #[test]
    fn revocation_drops_and_aborts_stale_work() {
        let mut s = Scheduler::new(10, 100);
        s.push(job(3, 10, 7, "a"));
        s.push(job(3, 11, 7, "a"));
        s.push(job(4, 20, 1, "b"));
        let started = start(&mut s);
        let a = started.iter().find(|(j, _)| j.partition == 3).unwrap();
        s.revoke(3, 7);
        assert!(
            a.1 .0.get(),
            "the running event of the revoked partition is aborted"
        );
        assert_eq!(s.buffered(), 1, "only b@20 (partition 4) is still held");
        assert_eq!(s.running(), 1);
        assert!(
            !s.finished(&group(3, "a"), 7),
            "a finish reported after the revoke does not count"
        );
        // Partition 3 comes back (generation 8): its events run again.
        s.push(job(3, 10, 8, "a"));
        let again = start(&mut s);
        assert_eq!(again.len(), 1);
        assert_eq!((offsets(&again), again[0].0.generation), (vec![10], 8));
    }

    #[test]
    fn revoke_keeps_newer_work_of_the_same_group_runnable() {
        let mut s = Scheduler::new(10, 100);
        s.push(job(1, 5, 1, "a"));
        start(&mut s);
        // Revoked and re-assigned before the old work was dropped: the new
        // generation's copy is queued behind the stale running one.
        s.push(job(1, 5, 2, "a"));
        s.revoke(1, 1);
        let started = start(&mut s);
        assert_eq!(started.len(), 1, "the new copy runs");
        assert_eq!(started[0].0.generation, 2);
    }

    #[test]
    fn pause_at_max_buffered_and_resume_at_half() {
        let mut s = Scheduler::<Handle>::new(1, 4);
        for i in 0..3 {
            s.push(job(0, i, 1, "a"));
        }
        assert_eq!(s.flow(), None);
        s.push(job(0, 3, 1, "a"));
        assert_eq!(s.flow(), Some(Flow::Pause));
        s.set_paused(true);
        assert_eq!(s.flow(), None, "already paused");
        start(&mut s);
        assert!(s.finished(&group(0, "a"), 1));
        start(&mut s);
        assert_eq!(s.buffered(), 3);
        assert_eq!(s.flow(), None, "3 > 4 / 2");
        assert!(s.finished(&group(0, "a"), 1));
        assert_eq!(s.buffered(), 2);
        assert_eq!(s.flow(), Some(Flow::Resume));
        s.set_paused(false);
        assert_eq!(s.flow(), None);
    }

    #[test]
    fn groups_of_a_loading_partition_wait_without_holding_a_slot() {
        let mut s = Scheduler::new(1, 100);
        s.push(job(5, 1, 1, "rebuilding"));
        s.push(job(6, 1, 1, "ready"));
        let started = start_loaded(&mut s, |p| p != 5);
        assert_eq!(
            started.len(),
            1,
            "the one slot goes to the loaded partition"
        );
        assert_eq!(started[0].0.key, b"ready");
        assert!(s.finished(&group(6, "ready"), 1));
        assert!(start_loaded(&mut s, |p| p != 5).is_empty(), "still parked");
        s.unpark(5);
        let started = start(&mut s);
        assert_eq!(started[0].0.key, b"rebuilding");
    }

    #[test]
    fn a_renewal_is_queued_once_and_dropped_with_its_partition() {
        let mut s = Scheduler::<Handle>::new(10, 100);
        let renew = |key: &str| Job {
            partition: 2,
            generation: 1,
            key: b"g".to_vec(),
            work: Work::Renew(key.into()),
        };
        s.push(renew("@rc|a#b|group|g"));
        s.push(renew("@rc|a#b|group|g"));
        assert_eq!(s.buffered(), 1, "the same record is renewed once");
        s.revoke(2, 1);
        assert_eq!(s.buffered(), 0);
        s.push(renew("@rc|a#b|group|g"));
        assert_eq!(s.buffered(), 1, "queued again after the revoke");
        let started = start(&mut s);
        assert_eq!(started[0].0.offset(), None, "a renewal has no offset");
    }

    #[test]
    fn drain_finishes_running_work_then_aborts_the_rest() {
        let mut s = Scheduler::new(10, 100);
        s.push(job(0, 1, 1, "a"));
        s.push(job(0, 2, 1, "b"));
        s.push(job(0, 3, 1, "a"));
        let started = start(&mut s);
        // Shutdown: nothing new starts (start_ready is not called again);
        // running work reports in until the grace period ends.
        assert!(s.finished(&group(0, "a"), 1));
        assert_eq!(s.running(), 1, "a's next event was not started");
        s.abort_running();
        let b = started.iter().find(|(j, _)| j.key == b"b").unwrap();
        assert!(b.1 .0.get(), "what still runs at the deadline is aborted");
        let a = started.iter().find(|(j, _)| j.key == b"a").unwrap();
        assert!(!a.1 .0.get(), "finished work is not aborted");
    }

    #[test]
    fn revoking_a_partition_with_ten_thousand_queued_groups_is_linear() {
        // 10,000 groups queued in the revoked partition, 10,000 ready in
        // another: the revoke must not compare every queue with every
        // waiting group (10^8 comparisons took seconds).
        let mut s = Scheduler::<Handle>::new(1, 1_000_000);
        for g in 0..10_000 {
            s.push(job(1, g, 1, &format!("revoked-{g}")));
            s.push(job(2, g, 1, &format!("kept-{g}")));
        }
        let started = std::time::Instant::now();
        s.revoke(1, 1);
        let took = started.elapsed();
        eprintln!("revoke of 10,000 queued groups beside 10,000 others: {took:?}");
        assert_eq!(s.buffered(), 10_000);
        assert_eq!(s.groups(), 10_000);
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
        assert_eq!(start(&mut s).len(), 1, "the others still run");
    }
}
