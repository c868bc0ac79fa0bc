//! The attestation log: each job's attestations keyed by job and recording position, so a
//! commit appends at the end of its job's range instead of writing into the middle of it.
//!
//! Tasks are handed out in a keyed shuffle, so attestations arrive in no task order; keyed by
//! task (as before), the ~80 attestations of a busy commit fell into ~78 different B-tree leaves
//! and each commit wrote ~140 pages for ~40 tasks (`--bench mesh`). By position they fill a
//! few leaves at the end. A restart also reads them back in the order they were recorded.
//!
//! The writer thread is the only writer, so it keeps each job's next position ([`Positions`]),
//! found from the table's last key the first time a job is written after the open.

use std::collections::HashMap;

use redb::{ReadableTable, Table, TableDefinition, TableHandle, WriteTransaction};
use spare_protocol::JobId;

use super::key::Fixed;
use super::{StoreError, db_err};

/// A job's attestations by recording position: job ++ position (big-endian `u64`, from 0).
pub(super) const ATTESTATION_LOG: TableDefinition<Fixed<40>, &[u8]> = TableDefinition::new("attestation_log");
/// The table before it: job ++ task index ++ the task's ordinal. Moved at the first open.
pub(super) const BY_TASK: TableDefinition<Fixed<40>, &[u8]> = TableDefinition::new("attestations");
/// Jobs whose next position the writer remembers; past it, it forgets them all (each is found
/// again from the table).
const REMEMBERED: usize = 4_096;

/// The key of a job's attestation at `position`.
pub(super) fn key(job: &JobId, position: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&job.0);
    k[32..].copy_from_slice(&position.to_be_bytes());
    k
}

/// The keys of all of a job's attestations.
pub(super) fn range(job: &JobId) -> std::ops::RangeInclusive<[u8; 40]> {
    key(job, 0)..=key(job, u64::MAX)
}

/// Each job's next position, as the writer thread knows it.
#[derive(Default)]
pub(super) struct Positions(HashMap<JobId, u64>);

impl Positions {
    /// The position for a new attestation of `job` in `table`, taken.
    pub(super) fn take(&mut self, table: &Table<Fixed<40>, &[u8]>, job: &JobId) -> Result<u64, StoreError> {
        let next = match self.0.get(job) {
            Some(&n) => n,
            None => {
                if self.0.len() >= REMEMBERED {
                    self.0.clear();
                }
                let last = table.range(range(job)).map_err(db_err)?.next_back().transpose().map_err(db_err)?;
                last.map_or(0, |(k, _)| position_of(&k.value()) + 1)
            }
        };
        self.0.insert(*job, next + 1);
        Ok(next)
    }

    /// `job` was deleted: its positions start again from the table.
    pub(super) fn forget(&mut self, job: &JobId) {
        self.0.remove(job);
    }
}

fn position_of(k: &[u8; 40]) -> u64 {
    let mut p = [0u8; 8];
    p.copy_from_slice(&k[32..]);
    u64::from_be_bytes(p)
}

/// Moves a store's attestations from the task-keyed table of earlier versions into the log, in
/// that table's order (by task, then each task's own order, which is what a restart replayed
/// before), inside the open's transaction. Returns the rows moved.
pub(super) fn migrate(tx: &WriteTransaction) -> Result<u64, StoreError> {
    if !tx.list_tables().map_err(db_err)?.any(|t| t.name() == BY_TASK.name()) {
        return Ok(0);
    }
    let mut rows = 0;
    {
        let old = tx.open_table(BY_TASK).map_err(db_err)?;
        let mut log = tx.open_table(ATTESTATION_LOG).map_err(db_err)?;
        let mut positions = Positions::default();
        for row in old.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let mut job = [0u8; 32];
            job.copy_from_slice(&k.value()[..32]);
            let at = positions.take(&log, &JobId(job))?;
            log.insert(key(&JobId(job), at), v.value()).map_err(db_err)?;
            rows += 1;
        }
    }
    tx.delete_table(BY_TASK).map_err(db_err)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_a_job_by_position() {
        let (a, b) = (JobId([1; 32]), JobId([2; 32]));
        assert!(key(&a, 1) < key(&a, 2));
        assert!(key(&a, 255) < key(&a, 256), "big-endian");
        assert!(key(&a, u64::MAX) < key(&b, 0));
        assert!(range(&a).contains(&key(&a, 7)) && !range(&a).contains(&key(&b, 0)));
        assert_eq!(position_of(&key(&b, 300)), 300);
    }
}

#[cfg(test)]
mod store_tests {
    use std::sync::Arc;

    use redb::{Database, ReadableDatabase, TableHandle};
    use spare_protocol::{Attestation, BlobId, JobId, Outcome, PeerId, ResultKey, TaskId};

    use super::super::records::{StoredAttestation, StoredAttestationRef, encode};
    use super::super::{DB_FILE, Op, Store};
    use super::BY_TASK;

    const JOB: JobId = JobId([3; 32]);

    fn att(job: JobId, index: u32, peer: u8) -> Attestation {
        Attestation {
            task: TaskId { job, index },
            peer: PeerId([peer; 32]),
            result: ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId([index as u8; 32]) },
            fuel_used: 1,
            signature: vec![peer; 64],
        }
    }

    fn put(a: &Attestation) -> Op {
        Op::PutAttestation { attestation: Arc::new(a.clone()), lone: false }
    }

    fn stored(list: &[&Attestation]) -> Vec<StoredAttestation> {
        list.iter().map(|a| StoredAttestation { attestation: (*a).clone(), lone: false }).collect()
    }

    /// Read back in the order recorded, whatever the tasks; a reopened store appends after what
    /// it holds (nothing is written over), and a deleted job starts a new log.
    #[tokio::test]
    async fn a_log_reads_back_in_recording_order_across_reopens_and_deletes() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let other = JobId([9; 32]);
        let (a, b, c, d) = (att(JOB, 7, 1), att(JOB, 2, 1), att(JOB, 7, 2), att(other, 0, 1));
        {
            let store = Store::open(dir.path()).expect("open");
            store.write(vec![put(&a), put(&d)]).await.expect("write");
            store.write(vec![put(&b)]).await.expect("write");
        }
        let store = Store::open(dir.path()).expect("reopen");
        store.write(vec![put(&c)]).await.expect("write");
        assert_eq!(store.attestations(&JOB).expect("read"), stored(&[&a, &b, &c]));
        assert_eq!(store.attestations(&other).expect("read"), stored(&[&d]));
        store.write(vec![Op::DeleteJob(JOB), put(&b)]).await.expect("write");
        assert_eq!(store.attestations(&JOB).expect("read"), stored(&[&b]));
        assert_eq!(store.attestations(&other).expect("read"), stored(&[&d]), "another job's log is untouched");
    }

    /// A store written by an earlier version keeps its attestations by task: the first open
    /// moves them into the log, in task order (what a restart replayed before), and new ones
    /// follow them.
    #[tokio::test]
    async fn attestations_keyed_by_task_move_into_the_log() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (first, second, third) = (att(JOB, 1, 1), att(JOB, 1, 2), att(JOB, 4, 1));
        {
            let db = Database::create(dir.path().join(DB_FILE)).expect("create");
            let tx = db.begin_write().expect("write");
            {
                let mut t = tx.open_table(BY_TASK).expect("table");
                // Inserted out of order: the table's key order is what counts.
                for (a, ordinal) in [(&third, 0u32), (&second, 1), (&first, 0)] {
                    let mut k = [0u8; 40];
                    k[..32].copy_from_slice(&a.task.job.0);
                    k[32..36].copy_from_slice(&a.task.index.to_be_bytes());
                    k[36..].copy_from_slice(&ordinal.to_be_bytes());
                    let v = encode(&StoredAttestationRef { attestation: a, lone: false }).expect("encode");
                    t.insert(k, v.as_slice()).expect("insert");
                }
            }
            tx.commit().expect("commit");
        }
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(store.attestations(&JOB).expect("read"), stored(&[&first, &second, &third]));
        let fourth = att(JOB, 0, 3);
        store.write(vec![put(&fourth)]).await.expect("write");
        assert_eq!(store.attestations(&JOB).expect("read"), stored(&[&first, &second, &third, &fourth]));
        drop(store);
        let db = Database::create(dir.path().join(DB_FILE)).expect("open");
        let tables: Vec<String> = db.begin_read().expect("read").list_tables().expect("tables").map(|t| t.name().to_string()).collect();
        assert!(!tables.iter().any(|t| t == "attestations"), "the old table is gone: {tables:?}");
    }
}
