//! Retention: ended jobs, their records and the blobs only they named (a module with its
//! compiled forms) are removed once they have been over for `retention`, or sooner, oldest first, while the data directory is at its
//! `max_disk` cap, but then only jobs whose results a submitter has fetched. A job still running
//! is never removed. Each removal is logged.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use spare_protocol::{BlobId, JobId};

use super::{Node, unix_ms};
use crate::store::{Op, StoredInput};

/// Uploaded blobs no job names yet are kept this long even at the disk cap: a submitter
/// uploads a job's blobs before submitting it.
pub const BLOB_GRACE: Duration = Duration::from_secs(10 * 60);
/// Most jobs removed in one pass, so one pass never holds the store for long.
pub const MAX_REMOVED_PER_PASS: usize = 256;

/// An ended job, as retention sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The job.
    pub job: JobId,
    /// When it ended here, Unix ms.
    pub ended_ms: u64,
    /// Whether a submitter fetched all its results from this peer.
    pub fetched: bool,
}

/// The jobs to remove now, oldest first: those over for `retention`, and, while the disk is at
/// its cap, those whose results were fetched. At most [`MAX_REMOVED_PER_PASS`].
pub fn choose(ended: &[Ended], now_ms: u64, retention: Duration, at_disk_cap: bool) -> Vec<JobId> {
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let mut by_age: Vec<&Ended> = ended.iter().collect();
    by_age.sort_by_key(|e| (e.ended_ms, e.job));
    by_age
        .into_iter()
        .filter(|e| now_ms.saturating_sub(e.ended_ms) >= retention_ms || (at_disk_cap && e.fetched))
        .take(MAX_REMOVED_PER_PASS)
        .map(|e| e.job)
        .collect()
}

/// What one pass removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// Jobs removed.
    pub jobs: usize,
    /// Blobs removed, and their bytes.
    pub blobs: usize,
    pub blob_bytes: u64,
}

impl Node {
    /// Records when a job ended here, for retention.
    pub(crate) fn note_ended(&self, job: JobId) {
        drop(self.0.store.write(vec![Op::PutFinished(job, unix_ms())]));
    }

    /// Notes, durably, that a submitter fetched every result of an ended job from this peer.
    pub(crate) fn note_fetched(&self, job: JobId) {
        drop(self.0.store.write(vec![Op::PutFetched(job)]));
    }

    /// One retention pass: removes what [`choose`] picks, then the blobs no stored job names
    /// that are older than `retention` (or [`BLOB_GRACE`] at the disk cap).
    pub(crate) async fn retain(&self, at_disk_cap: bool) -> anyhow::Result<Removed> {
        let retention = self.config().donation.retention;
        let now = unix_ms();
        let fetched = self.store().fetched()?;
        let ended: Vec<Ended> = self
            .store()
            .finished()?
            .into_iter()
            .map(|(job, ended_ms)| Ended { job, ended_ms, fetched: fetched.contains(&job) })
            .collect();
        let mut removed = Removed::default();
        let mut freed: HashSet<BlobId> = HashSet::new();
        for job in choose(&ended, now, retention, at_disk_cap) {
            // Only a job whose end is durable and which the coordinator agrees has ended.
            if !self.is_finished(&job) && self.core().jobs.contains_key(&job) {
                continue;
            }
            let stored = self.store().job(&job)?;
            let gone = {
                let mut core = self.core();
                let known = core.jobs.contains_key(&job);
                let forgot = core.hosts.forget(&job);
                if known && !forgot {
                    continue; // running after all (restored, taken over): never removed
                }
                core.jobs.remove(&job);
                self.0.finished.remove(&job);
                self.0.store.write(vec![Op::DeleteJob(job)])
            };
            if let Some(s) = stored {
                freed.insert(s.spec.module);
                for index in 0..s.spec.task_count {
                    if let Some(StoredInput::Blob(b)) = self.store().input(&spare_protocol::TaskId { job, index })? {
                        freed.insert(b);
                    }
                }
            }
            gone.await?;
            let ended_ms = ended.iter().find(|e| e.job == job).map_or(now, |e| e.ended_ms);
            let age = Duration::from_millis(now.saturating_sub(ended_ms));
            let why = if age >= retention { format!("ended {} ago", humantime::format_duration(round(age))) } else { "the data directory is at max_disk and its results were fetched".into() };
            tracing::info!(job = %job.short(), "retention: removed job {job} ({why})");
            removed.jobs += 1;
        }
        // Blobs: those only removed jobs named go now; others no job names once they are old.
        // Never less than BLOB_GRACE below the cap: a module uploaded for a submission that
        // is not durable yet is named by no stored job (a short retention removed it from
        // under a job being submitted).
        let grace = if at_disk_cap { BLOB_GRACE.min(retention) } else { retention.max(BLOB_GRACE) };
        let sys_now = SystemTime::now();
        let candidates: Vec<_> = self
            .store()
            .blobs()
            .list()
            .into_iter()
            .filter(|(id, _, written)| freed.contains(id) || sys_now.duration_since(*written).unwrap_or_default() >= grace)
            .collect();
        // Which blobs the kept jobs name takes a scan of every input: only when it matters.
        let refs = if candidates.is_empty() { HashSet::new() } else { self.store().blob_refs()? };
        let gone: HashSet<BlobId> = candidates.iter().filter(|(id, _, _)| !refs.contains(id)).map(|(id, _, _)| *id).collect();
        // A module's compiled forms go with it, before it (so none outlives its blob), in one
        // pass over the cache for all.
        if !gone.is_empty() {
            removed.blob_bytes += self.sandbox().forget_modules(&gone);
        }
        for (id, size, _) in candidates {
            if gone.contains(&id) && self.store().blobs().remove(&id) {
                removed.blobs += 1;
                removed.blob_bytes += size;
            }
        }
        if removed.blobs > 0 {
            tracing::info!("retention: removed {} blobs no kept job needs ({} bytes)", removed.blobs, removed.blob_bytes);
        }
        Ok(removed)
    }
}

/// A duration to the second, for people.
fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(n: u8, ended_ms: u64, fetched: bool) -> Ended {
        Ended { job: JobId([n; 32]), ended_ms, fetched }
    }

    #[test]
    fn old_jobs_go_and_at_the_cap_fetched_ones_oldest_first() {
        let day = Duration::from_secs(86_400);
        let now = 10 * 86_400_000;
        let jobs = [ended(1, now - 86_400_000 / 2, true), ended(2, now - 2 * 86_400_000, false), ended(3, now - 1000, false), ended(4, now - 2000, true)];
        assert_eq!(choose(&jobs, now, day, false), vec![JobId([2; 32])], "only what is past retention");
        assert_eq!(
            choose(&jobs, now, day, true),
            vec![JobId([2; 32]), JobId([1; 32]), JobId([4; 32])],
            "at the cap, also fetched ones, oldest first; never one not yet fetched within retention"
        );
        let many: Vec<Ended> = (0..=255u8).chain(0..=255).map(|n| ended(n, 0, false)).collect();
        assert_eq!(choose(&many, now, day, false).len(), MAX_REMOVED_PER_PASS);
    }
}
