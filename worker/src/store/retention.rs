//! What retention asks of the store: when each ended job ended, and which blobs the stored
//! jobs still name (modules and inputs), so nothing a kept job needs is removed.

use std::collections::HashSet;

use redb::{ReadableDatabase, ReadableTable};
use spare_protocol::{BlobId, JobId, TaskId};

use super::records::{StoredInput, StoredJob, TaskKey, task_key, task_of};
use super::{FETCHED, FINISHED, INPUTS, JOBS, StoreError, db_err, decode_in, job_in};

impl super::Store {
    /// Every ended job with when it ended here (Unix ms), oldest first.
    pub fn finished(&self) -> Result<Vec<(JobId, u64)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(FINISHED).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((JobId(k.value()), v.value()));
        }
        out.sort_by_key(|(id, at)| (*at, *id));
        Ok(out)
    }

    /// The ended jobs whose results a submitter fetched from here.
    pub fn fetched(&self) -> Result<HashSet<JobId>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(FETCHED).map_err(db_err)?;
        let mut out = HashSet::new();
        for row in t.iter().map_err(db_err)? {
            out.insert(JobId(row.map_err(db_err)?.0.value()));
        }
        Ok(out)
    }

    /// Bytes of the database file that are free for reuse (removed records leave free pages;
    /// the file does not shrink, but new records fill them before it grows).
    pub fn reusable_bytes(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let free = tx.stats().map_err(db_err)?.fragmented_bytes();
        tx.abort().map_err(db_err)?;
        Ok(free)
    }

    /// Blobs the stored jobs name: their modules and their inputs kept as blobs.
    pub fn blob_refs(&self) -> Result<HashSet<BlobId>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let mut refs = HashSet::new();
        let jobs = tx.open_table(JOBS).map_err(db_err)?;
        for row in jobs.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            let job: StoredJob = job_in(v.value())?;
            refs.insert(job.spec.module);
        }
        let inputs = tx.open_table(INPUTS).map_err(db_err)?;
        for row in inputs.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            if let StoredInput::Blob(id) = decode_in("inputs", v.value())? {
                refs.insert(id);
            }
        }
        Ok(refs)
    }

    /// Removes the inputs of jobs that are not stored: those of a submission whose job never
    /// became durable (the peer stopped while its inputs were written in chunks). Returns how
    /// many jobs' inputs went. One seek per job, so cheap at start.
    pub fn remove_orphan_inputs(&self) -> Result<usize, StoreError> {
        use std::ops::Bound;
        let tx = self.db.begin_write().map_err(db_err)?;
        let mut removed = 0;
        {
            let jobs = tx.open_table(JOBS).map_err(db_err)?;
            let mut inputs = tx.open_table(INPUTS).map_err(db_err)?;
            let mut after: Option<TaskKey> = None;
            loop {
                let from = after.map_or(Bound::Unbounded, Bound::Excluded);
                let next = inputs.range::<TaskKey>((from, Bound::Unbounded)).map_err(db_err)?.next().transpose().map_err(db_err)?;
                let Some(first) = next.map(|(k, _)| k.value()) else { break };
                let job = task_of(&first).job;
                let last = task_key(&TaskId { job, index: u32::MAX });
                if jobs.get(job.0).map_err(db_err)?.is_none() {
                    inputs.retain_in(first..=last, |_, _| false).map_err(db_err)?;
                    removed += 1;
                }
                after = Some(last);
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(removed)
    }
}
