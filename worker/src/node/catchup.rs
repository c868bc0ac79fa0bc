//! Catch-ups of backup coordinators: when one is due (`spare_protocol::peer::catchup` decides
//! when), the whole job goes to the backup as an adoption.

use spare_protocol::{JobId, PeerId, TaskId};
use spare_proto as pb;

use super::Node;

impl Node {
    /// Asks for `peer` to get the whole job soon (coalesced with a pending request).
    pub(crate) fn catch_up(&self, job: JobId, peer: PeerId) {
        let now = self.now();
        self.0.catch_ups.lock().unwrap_or_else(|p| p.into_inner()).request(job, peer, now);
    }

    /// Sends the catch-ups that are due, each if this peer still leads the job and the backup is
    /// still one of its coordinators.
    pub(crate) fn send_due_catch_ups(&self) {
        let now = self.now();
        let due: Vec<(JobId, PeerId)> = {
            let mut c = self.0.catch_ups.lock().unwrap_or_else(|p| p.into_inner());
            std::iter::from_fn(|| c.poll_due(now)).collect()
        };
        let me = self.peer_id();
        for (job, peer) in due {
            let wanted = {
                let core = self.core();
                core.leads(&job, &me) && core.jobs.get(&job).is_some_and(|m| m.coordinators.contains(&peer))
            };
            if !wanted {
                continue;
            }
            let node = self.clone();
            tokio::spawn(async move {
                let sent = match node.adopt_request(&job).await {
                    Ok(req) => node.adopt_to(peer, req).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    tracing::warn!(job = %job.short(), peer = %peer.short(), "catch-up of a backup coordinator failed: {e:#}");
                }
            });
        }
    }

    /// [`Node::catch_up`] for every backup of a job this peer leads.
    pub(crate) fn catch_up_backups(&self, job: JobId) {
        let me = self.peer_id();
        let backups: Vec<PeerId> = {
            let core = self.core();
            match core.jobs.get(&job) {
                Some(m) if core.leads(&job, &me) => m.coordinators[1..].to_vec(),
                _ => return,
            }
        };
        for b in backups {
            self.catch_up(job, b);
        }
    }

    /// The job's tasks that failed by deadline misses, as the coordinator holds them.
    pub(crate) fn timed_out_tasks(&self, job: &JobId) -> Vec<pb::TimedOutTask> {
        self.timed_out_of(job).into_iter().map(|(index, misses)| pb::TimedOutTask { index, misses }).collect()
    }

    /// Replays tasks of `job` that failed by deadline misses (stored, or told by the active
    /// coordinator), storing the verdicts that are new here. Resolves once they are durable.
    pub(crate) async fn record_timed_out(&self, job: JobId, tasks: &[pb::TimedOutTask]) -> anyhow::Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        let durable = {
            let mut core = self.core();
            let total = core.coord.job(&job).map_or(0, |v| v.spec.task_count);
            for t in tasks.iter().filter(|t| t.index < total) {
                core.coord.restore_timed_out(TaskId { job, index: t.index }, t.misses);
            }
            let (ops, changes) = core.drain(None);
            self.announce(ops, changes)
        };
        durable.await.map_err(|_| anyhow::anyhow!("timed-out tasks could not be stored"))
    }
}
