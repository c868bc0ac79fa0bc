//! Bringing a backup coordinator up to date with a whole adoption where the ordered replication
//! stream cannot: a batch the backup did not take (the stream moves on, in order, without it),
//! or a verdict no attestation carries (a task failed because its replicas kept missing the
//! deadline). Requests for one job and one backup coalesce while one is pending.

use std::time::Duration;

use spare_coordinator::{JobId, PeerId, TaskId};
use spare_proto as pb;

use super::Node;

/// How long a catch-up waits, so that the failures and verdicts of a burst share one adoption.
const CATCH_UP_AFTER: Duration = Duration::from_secs(2);

impl Node {
    /// Sends `peer` the whole job soon, if this peer still leads it and `peer` is still one of
    /// its coordinators then.
    pub(crate) fn catch_up(&self, job: JobId, peer: PeerId) {
        if !self.0.catching_up.insert((job, peer)) {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CATCH_UP_AFTER).await;
            // From here on a new reason needs a new catch-up.
            node.0.catching_up.remove(&(job, peer));
            let me = node.peer_id();
            let wanted = {
                let core = node.core();
                core.leads(&job, &me) && core.jobs.get(&job).is_some_and(|m| m.coordinators.contains(&peer))
            };
            if !wanted {
                return;
            }
            let sent = match node.adopt_request(&job).await {
                Ok(req) => node.adopt_to(peer, req).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                tracing::warn!(job = %job.short(), peer = %peer.short(), "catch-up of a backup coordinator failed: {e:#}");
            }
        });
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
        self.core().coord.timed_out(job).into_iter().map(|(index, misses)| pb::TimedOutTask { index, misses }).collect()
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
