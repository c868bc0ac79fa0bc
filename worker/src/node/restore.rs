//! Bringing a peer back on its data directory: every stored job into the coordinator side, its
//! attestations replayed (their verdicts come back as they were, nothing written again), the
//! standings as last stored, and the running jobs' roles looked at (which announces them).

use std::sync::Arc;

use anyhow::Context;
use spare_protocol::JobId;
use spare_protocol::peer::host::Logged;

use super::{JobMeta, Node};

impl Node {
    /// Loads every stored job and replays its attestations, so verdicts come back as they were.
    pub(super) fn restore(&self) -> anyhow::Result<usize> {
        let orphans = self.0.store.remove_orphan_inputs()?;
        if orphans > 0 {
            tracing::info!("removed the inputs of {orphans} submissions that were not stored whole when the peer stopped");
        }
        let jobs = self.0.store.jobs()?;
        let now = self.now();
        let mut guard = self.core();
        // Field by field: the coordinator and the job table are borrowed at once below.
        let core = &mut *guard;
        for (id, job) in &jobs {
            core.hosts
                .coordinator_mut()
                .restore(*id, job.spec.clone(), job.cancelled)
                .with_context(|| format!("restoring job {id}"))?;
            core.jobs.insert(*id, JobMeta::of(job));
            let log = self.0.store.attestations(id)?.into_iter().map(|rec| Logged { att: Arc::new(rec.attestation), lone: rec.lone }).collect();
            // In standby if it has backups: another coordinator may lead meanwhile (the role
            // rules decide once membership says who is alive).
            core.hosts.restore(*id, job.coordinators.clone(), log, now);
            let open = !core.coord().job(id).is_some_and(|v| v.state.is_final());
            if !open {
                // Its verdicts and log are all stored: read from there, not held in memory.
                core.hosts.shed(id);
                if let Some(meta) = core.jobs.get_mut(id) {
                    meta.args = Default::default();
                    meta.env = Default::default();
                }
            }
            let unfinished = if open { core.coord().unfinished(id) } else { Vec::new() };
            for index in unfinished {
                let task = spare_protocol::TaskId { job: *id, index };
                if let Some(r) = self.0.store.result(&task)?
                    && let spare_protocol::Verdict::Failed(spare_protocol::Failure::TimedOut(misses)) = r.verdict
                {
                    core.hosts.coordinator_mut().restore_timed_out(task, misses);
                }
            }
            // Their events describe the past; everything they record is already stored.
            while core.hosts.coordinator_mut().poll_event().is_some() {}
        }
        // The standings as last stored replace what the replays above re-judged (which counted
        // only the jobs still kept, and those a second time).
        for (peer, standing) in self.0.store.standings()? {
            core.hosts.coordinator_mut().set_standing(peer, standing);
        }
        let _ = core.hosts.coordinator_mut().take_changed_standings();
        // Nothing the replays asked to write is new: it is all stored.
        let mut replayed = 0;
        while let Some((id, _)) = core.hosts.poll_persist() {
            replayed = id;
        }
        core.hosts.handle_durable(replayed);
        self.0.durable.send_replace(replayed);
        // Jobs that ended before retention kept track (older stores) count as ending now.
        let ended: std::collections::HashSet<JobId> = self.0.store.finished()?.into_iter().map(|(j, _)| j).collect();
        for (id, _) in &jobs {
            if core.coord().job(id).is_some_and(|v| v.state.is_final()) {
                self.0.finished.insert(*id);
                if !ended.contains(id) {
                    self.note_ended(*id);
                }
            } else {
                // Nothing is announced until the role rules have looked (once known gap 19): a job
                // with backups is back in standby, and another may lead it now; the first look
                // announces it again, as its leader, or a newer ad from a peer it outranks is
                // answered with its own (`peer::heal::newer_ad`).
                core.hosts.look_at_roles(id, now);
                self.0.held_tasks.fetch_add(u64::from(core.jobs.get(id).map_or(0, |m| m.spec.task_count)), std::sync::atomic::Ordering::Relaxed);
            }
        }
        drop(guard);
        Ok(jobs.len())
    }
}
