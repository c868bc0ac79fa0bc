//! The active coordinator's streams to every backup it has: one [`ReplicationQueue`] per
//! backup, each with its batch out. What a stream gives up on comes back as the jobs to catch
//! up ([`super::catchup`]).
//!
//! Sans-IO, one owner. Contract: [`Replicators::push`] each entry for each backup; after every
//! input, take [`Replicators::poll_batch`] until it gives nothing and send each batch; give each
//! answer back with [`Replicators::handle_sent`]; [`Replicators::poll_timeout`] says when a
//! retry is due although nothing happened.

use std::collections::BTreeMap;

use super::replication::{Replicated, ReplicationBatch, ReplicationQueue};
use crate::{JobId, Millis};

/// One backup's stream and its batch out.
#[derive(Debug)]
struct Stream<T> {
    queue: ReplicationQueue<T>,
    out: Option<ReplicationBatch<T>>,
}

impl<T> Default for Stream<T> {
    fn default() -> Stream<T> {
        Stream { queue: ReplicationQueue::default(), out: None }
    }
}

/// Replication streams by backup (`K`: however the driver names a backup).
#[derive(Debug)]
pub struct Replicators<K, T> {
    streams: BTreeMap<K, Stream<T>>,
}

impl<K, T> Default for Replicators<K, T> {
    fn default() -> Replicators<K, T> {
        Replicators { streams: BTreeMap::new() }
    }
}

impl<K: Ord + Clone, T> Replicators<K, T> {
    /// Queues an entry of `job`, carrying `bytes` of output, on the stream to `to`. A backup
    /// too far behind gives up what waits for it: `Some(Replicated::Failed)`, whose jobs the
    /// driver catches up as after a failed batch.
    pub fn push(&mut self, to: K, job: JobId, item: T, bytes: usize) -> Option<Replicated<T>> {
        self.streams.entry(to).or_default().queue.push(job, item, bytes)
    }

    /// A batch due now and the backup it goes to (the first in key order with one due). It
    /// stays here until [`Replicators::handle_sent`].
    pub fn poll_batch(&mut self, now: Millis) -> Option<(K, &ReplicationBatch<T>)> {
        for (to, s) in self.streams.iter_mut() {
            if s.out.is_some() {
                continue;
            }
            if let Some(batch) = s.queue.poll_batch(now) {
                return Some((to.clone(), s.out.insert(batch)));
            }
        }
        None
    }

    /// The batch sent to `to` came back: `taken` when the backup holds it durably. `None` when
    /// no batch was out to `to`.
    pub fn handle_sent(&mut self, to: &K, taken: bool, now: Millis) -> Option<Replicated<T>> {
        let s = self.streams.get_mut(to)?;
        let batch = s.out.take()?;
        let r = s.queue.handle_sent(batch, taken, now);
        if s.queue.is_idle() {
            self.streams.remove(to);
        }
        Some(r)
    }

    /// When [`Replicators::poll_batch`] may next give a batch, if anything waits.
    pub fn poll_timeout(&self, now: Millis) -> Option<Millis> {
        self.streams.values().filter(|s| s.out.is_none()).filter_map(|s| s.queue.poll_timeout(now)).min()
    }

    /// Whether nothing waits and nothing is out.
    pub fn is_idle(&self) -> bool {
        self.streams.is_empty()
    }

    /// Drops the streams to backups `keep` rejects, with what waits on them and their batch out
    /// (its answer finds nothing).
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.streams.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::super::replication::{REPLICATE_PAUSE_MS, REPLICATE_TRIES};
    use super::*;

    #[test]
    fn each_backup_has_its_own_batch_out_and_a_failed_stream_asks_for_catch_ups() {
        let (j1, j2) = (JobId([1; 32]), JobId([2; 32]));
        let mut r: Replicators<&str, u32> = Replicators::default();
        r.push("a", j1, 1, 0);
        r.push("b", j1, 1, 0);
        r.push("a", j2, 2, 0);
        let (to, batch) = r.poll_batch(0).unwrap();
        assert_eq!((to, batch.job, batch.items.clone()), ("a", j1, vec![1]), "one job per batch");
        let (to, _) = r.poll_batch(0).unwrap();
        assert_eq!(to, "b");
        assert!(r.poll_batch(0).is_none(), "one batch out per backup");
        assert_eq!(r.handle_sent(&"b", true, 1), Some(Replicated::Taken(vec![1])));
        let mut now = 1;
        for attempt in 1..REPLICATE_TRIES {
            assert_eq!(r.handle_sent(&"a", false, now), Some(Replicated::Retry(now + REPLICATE_PAUSE_MS * u64::from(attempt))));
            now = r.poll_timeout(now).unwrap();
            assert_eq!(r.poll_batch(now).map(|(k, b)| (k, b.attempt)), Some(("a", attempt + 1)));
        }
        let failed = r.handle_sent(&"a", false, now).unwrap();
        assert_eq!(failed, Replicated::Failed { items: vec![1, 2], catch_up: vec![j1, j2] });
        assert!(r.is_idle(), "a failed stream is emptied");
        assert_eq!(r.handle_sent(&"a", true, now), None, "nothing out");
    }

    #[test]
    fn streams_to_dropped_backups_go() {
        let j = JobId([1; 32]);
        let mut r: Replicators<u8, u8> = Replicators::default();
        r.push(1, j, 1, 0);
        r.push(2, j, 2, 0);
        assert_eq!(r.poll_batch(0).map(|(k, _)| k), Some(1));
        r.push(1, j, 3, 0);
        r.retain(|k| *k == 2);
        assert_eq!(r.poll_batch(0).map(|(k, _)| k), Some(2));
        assert_eq!(r.handle_sent(&1, true, 1), None, "stream 1 is gone, its batch out too");
        assert_eq!(r.handle_sent(&2, true, 1), Some(Replicated::Taken(vec![2])));
        assert!(r.is_idle());
    }
}
