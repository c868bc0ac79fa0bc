//! The local worker slots: when slots are free, pull work — leases from this peer's own
//! coordinator first, then from the coordinators of jobs other peers announced, chosen fairly by
//! the [`Puller`] — run each replica in the sandbox, sign the attestation and report it. Nothing
//! pushes work here; idle slots ask for it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use spare_protocol::peer::slots::{ABANDON_PAUSE_MS, LOOK_AGAIN_MS, leases_per_slot, is_stale};
use spare_protocol::pull::Puller;
use spare_protocol::{Attestation, BlobId, JobId, Lease, Outcome, Release, Reported, ResultKey, TaskId};
use spare_proto as pb;
use tokio::task::JoinSet;

use super::core::Evidence;
use super::{Node, donation};
use super::remote::{RemoteInput, RemoteReplica, ReportMsg};
use crate::sandbox::{RunOutcome, RunRequest, task_seed};
use crate::store::StoredInput;

/// What finished in the slot loop.
enum Done {
    /// A replica ran (or was given up: `true`).
    Replica(bool),
    /// A remote lease request came back.
    Leased(JobId, anyhow::Result<Vec<RemoteReplica>>),
}

/// A leased replica that waited so long its lease would lapse before a run could finish.
#[derive(Debug, thiserror::Error)]
#[error("the lease would lapse before the run could finish")]
struct Stale;

/// What a run produced, ready to attest.
struct Ran {
    outcome: Outcome,
    output: Vec<u8>,
    message: String,
    fuel: u64,
}

/// Pulls and runs work until the peer shuts down.
pub(super) async fn run(node: Node) {
    let mut running: JoinSet<Done> = JoinSet::new();
    let mut replicas = 0usize;
    let mut asking: Option<u32> = None;
    let mut puller = Puller::new().with_memory_cap(node.config().caps.limits.memory_bytes);
    let mut stop = node.shutdown_signal();
    let mut paused_until = tokio::time::Instant::now();
    loop {
        let paused = tokio::time::Instant::now() < paused_until;
        let capacity = node.sandbox().slots() * leases_per_slot(node.mean_run().as_micros() as u64);
        let mut free = if paused { 0 } else { capacity.saturating_sub(replicas + asking.unwrap_or(0) as usize) };
        free = donation::allowance(free, node.0.donation.paused(), node.0.donation.waiting_for_memory());
        if free > 0 {
            let now = node.now();
            let me = node.peer_id();
            let leases = node.core().coord.lease(me, free, now);
            for lease in leases {
                replicas += 1;
                free -= 1;
                node.0.running.fetch_add(1, Ordering::Relaxed);
                let n = node.clone();
                running.spawn(async move { Done::Replica(n.replica(lease).await) });
            }
        }
        if free > 0 && asking.is_none() {
            // Jobs this peer coordinates actively are served above; the rest (including those it
            // only backs up) are pulled from their active coordinator.
            let ads: Vec<_> = {
                let core = node.core();
                let mine = |j: &JobId| core.jobs.contains_key(j) && !core.coord.is_standby(j);
                let d = &node.config().donation;
                let ads = node.mesh().membership.job_ads();
                ads.into_iter().filter(|a| !mine(&a.job) && donation::serves(d, &a.module, &a.policy).is_ok()).collect()
            };
            puller.retain(|j| ads.iter().any(|a| a.job == *j && !a.done));
            if let Some((job, n)) = puller.pick(&ads, free as u32, node.now()) {
                asking = Some(n);
                let node2 = node.clone();
                running.spawn(async move { Done::Leased(job, node2.lease_remote(job, n).await) });
            }
        }
        tokio::select! {
            _ = node.0.work.notified() => {}
            Some(done) = running.join_next(), if !running.is_empty() => match done {
                Ok(Done::Replica(abandoned)) => {
                    replicas -= 1;
                    if abandoned {
                        // A failing peer should not spin: take no new work for a moment.
                        paused_until = tokio::time::Instant::now() + Duration::from_millis(ABANDON_PAUSE_MS);
                    }
                }
                Ok(Done::Leased(job, Ok(got))) => {
                    asking = None;
                    if got.is_empty() {
                        puller.empty(job, node.now());
                    } else {
                        puller.got(job);
                    }
                    for r in got {
                        replicas += 1;
                        node.0.running.fetch_add(1, Ordering::Relaxed);
                        let n = node.clone();
                        running.spawn(async move { Done::Replica(n.remote_replica(r).await) });
                    }
                }
                Ok(Done::Leased(job, Err(e))) => {
                    asking = None;
                    tracing::debug!(job = %job.short(), "lease request failed: {e:#}");
                    puller.empty(job, node.now());
                }
                Err(e) => {
                    // A replica task panicked or was cancelled; its slot is free again.
                    tracing::error!("slot task ended abnormally: {e}");
                    replicas = running.len().min(replicas.saturating_sub(1));
                    asking = None;
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(LOOK_AGAIN_MS)) => {}
            _ = stop.changed() => break,
        }
    }
    running.shutdown().await;
}

impl Node {
    /// Runs one replica leased from this peer's own coordinator and reports it. Returns true
    /// when it had to be abandoned.
    async fn replica(self, lease: Lease) -> bool {
        let abandoned = match self.execute(&lease).await {
            Err(e) if e.is::<Stale>() => {
                // Queued too long behind other replicas: hand it back unblamed for another peer.
                self.release_task(lease.task, lease.peer, Release::Abandoned).await;
                false
            }
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(task = %lease.task, "replica abandoned: {e:#}");
                self.release_task(lease.task, lease.peer, Release::Abandoned).await;
                true
            }
        };
        self.0.running.fetch_sub(1, Ordering::Relaxed);
        abandoned
    }

    async fn execute(&self, lease: &Lease) -> anyhow::Result<()> {
        let task = lease.task;
        let meta = self.core().jobs.get(&task.job).cloned();
        let meta = meta.ok_or_else(|| anyhow::anyhow!("job {} is not held here", task.job))?;
        // Waits until the task's memory limit fits beside the running tasks'.
        let _memory = self.0.donation.admit_memory(meta.spec.policy.limits.memory_bytes).await?;
        if is_stale(self.now(), meta.spec.policy.limits.timeout_ms, lease.expires_at) {
            return Err(Stale.into());
        }
        let input = match self.store().input(&task)? {
            Some(StoredInput::Inline(bytes)) => bytes,
            Some(StoredInput::Blob(id)) => self.store().blobs().read(&id).await?,
            None => anyhow::bail!("task {task} has no stored input"),
        };
        let req = RunRequest {
            module: meta.spec.module,
            input,
            args: meta.args.to_vec(),
            env: meta.env.to_vec(),
            limits: meta.spec.policy.limits,
            seed: task_seed(&task.job, task.index),
        };
        let Some(ran) = self.run_replica(req).await? else {
            self.release_task(task, lease.peer, Release::Deadline).await;
            return Ok(());
        };
        let Some((att, output)) = self.attest(task, ran.outcome, ran.output, ran.fuel) else { return Ok(()) };
        self.report(att, &output, &ran.message).await;
        Ok(())
    }

    /// Runs one replica leased from another peer's coordinator and reports it there.
    async fn remote_replica(self, r: RemoteReplica) -> bool {
        let abandoned = match self.execute_remote(&r).await {
            Err(e) if e.is::<Stale>() => {
                self.release_remote(&r, Release::Abandoned).await;
                false
            }
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(task = %r.task, coordinator = %r.coordinator, "replica abandoned: {e:#}");
                self.release_remote(&r, Release::Abandoned).await;
                true
            }
        };
        self.0.running.fetch_sub(1, Ordering::Relaxed);
        abandoned
    }

    async fn execute_remote(&self, r: &RemoteReplica) -> anyhow::Result<()> {
        #[cfg(feature = "chaos")]
        if self.config().chaos == Some(super::Chaos::Silent) {
            return Ok(()); // holds the lease and never reports
        }
        let _memory = self.0.donation.admit_memory(r.limits.memory_bytes).await?;
        if is_stale(self.now(), r.limits.timeout_ms, r.expires_at) {
            return Err(Stale.into());
        }
        if !self.sandbox().is_prepared(&r.module) {
            let max = self.config().max_module_bytes as u64;
            self.fetch_blob(&r.coordinator, &r.module, max).await?;
        }
        let input = match &r.input {
            RemoteInput::Inline(b) => b.clone(),
            RemoteInput::Blob(id) => {
                self.fetch_blob(&r.coordinator, id, self.config().max_blob_bytes).await?;
                self.store().blobs().read(id).await?
            }
        };
        let req = RunRequest {
            module: r.module,
            input,
            args: r.args.clone(),
            env: r.env.clone(),
            limits: r.limits,
            seed: task_seed(&r.task.job, r.task.index),
        };
        let Some(ran) = self.run_replica(req).await? else {
            self.release_remote(r, Release::Deadline).await;
            return Ok(());
        };
        let Some((att, output)) = self.attest(r.task, ran.outcome, ran.output, ran.fuel) else { return Ok(()) };
        let item = pb::ReportItem {
            attestation: Some(crate::wire::convert::attestation_pb(&att)),
            output,
            message: ran.message,
        };
        self.send_report(&r.coordinator, r.expires_at, ReportMsg::Attestation(item)).await;
        Ok(())
    }

    /// Runs a request in the sandbox (compiling the module first if needed). `None` when the
    /// run passed its wall deadline, which is not a result.
    async fn run_replica(&self, req: RunRequest) -> anyhow::Result<Option<Ran>> {
        let prepared = self.prepare_module(&req.module).await;
        Ok(Some(match prepared {
            Err(super::submit::PrepareError::Other(e)) => return Err(e),
            // Every peer refuses the same module the same way, so this is attested as a trap
            // rather than retried forever.
            Err(super::submit::PrepareError::Module(e)) => {
                Ran { outcome: Outcome::Trapped, output: Vec::new(), message: format!("invalid module: {e}"), fuel: 0 }
            }
            Ok(()) => {
                let report = self.sandbox().run(req).await?;
                self.note_run(report.elapsed);
                self.0.metrics.ran(&report.outcome, report.elapsed);
                match report.outcome {
                    RunOutcome::Done { outcome, message } => {
                        Ran { outcome, output: report.stdout, message, fuel: report.fuel_used }
                    }
                    RunOutcome::Deadline => return Ok(None),
                    RunOutcome::Invalid(e) => {
                        Ran { outcome: Outcome::Trapped, output: Vec::new(), message: format!("invalid module: {e}"), fuel: 0 }
                    }
                }
            }
        }))
    }

    /// The signed attestation of a run, and the output that goes with it. `None` when this
    /// peer (in chaos mode) keeps quiet.
    fn attest(&self, task: TaskId, outcome: Outcome, output: Vec<u8>, fuel: u64) -> Option<(Attestation, Vec<u8>)> {
        // Only a successful run's stdout is a result; a failure is its outcome alone.
        #[allow(unused_mut)]
        let mut output = if outcome.is_success() { output } else { Vec::new() };
        #[cfg(feature = "chaos")]
        if self.config().chaos == Some(super::Chaos::Lie) {
            // Every task its own wrong answer, as a careless or malicious peer would give.
            output = format!("lie from {} about {task}\n", self.peer_id().short()).into_bytes();
        }
        let mut att = Attestation {
            task,
            peer: self.peer_id(),
            result: ResultKey { outcome, output_hash: BlobId::of(&output) },
            fuel_used: fuel,
            signature: Vec::new(),
        };
        self.0.identity.sign_attestation(&mut att);
        #[cfg(feature = "chaos")]
        match self.config().chaos {
            Some(super::Chaos::Forge) => att.signature = vec![7; 64],
            Some(super::Chaos::Silent) => return None,
            _ => {}
        }
        Some((att, output))
    }

    /// Records an attestation with the coordinator, then stores it (and any verdict it made)
    /// and tells watchers once that is durable. Returns whether it was taken.
    pub(crate) async fn report(&self, att: Attestation, output: &[u8], message: &str) -> bool {
        {
            let mut core = self.core();
            match core.coord.report(att.clone()) {
                Ok(Reported::Recorded | Reported::Decided) => {}
                // The verdict was in before it; it counted for reputation only.
                Ok(Reported::Late) => return true,
                Err(e) => {
                    tracing::debug!("attestation not recorded: {e}");
                    return false;
                }
            }
            let (ordinal, lone) =
                core.coord.task(&att.task).map_or((0, false), |t| (t.attestations.saturating_sub(1), t.lone && t.attestations == 1));
            let evidence = Evidence { attestation: &att, output, message };
            let (mut ops, changes) = core.drain(Some(&evidence));
            ops.insert(0, crate::store::Op::PutAttestation { ordinal, attestation: att.clone(), lone });
            // The other coordinators get it too (with the output when it decided the task), and
            // a verdict is announced only once one of them has it.
            let decided = changes.contains(&super::Change::TaskFinal(att.task));
            let coordinators = core.jobs.get(&att.task.job).map(|m| m.coordinators.clone()).unwrap_or_default();
            let backup = self.replicate(&coordinators, &att, lone, decided.then_some(output));
            // Queued in order; the caller need not wait for the disk.
            drop(self.announce_with(ops, changes, backup));
        };
        true
    }

    /// Hands back a leased replica that produced no attestation.
    pub(crate) async fn release_task(&self, task: TaskId, peer: spare_protocol::PeerId, why: Release) {
        let timed_out = {
            let mut core = self.core();
            core.coord.release(task, peer, why);
            if let Some(m) = core.jobs.get(&task.job) {
                self.replicate_release(&m.coordinators, task, peer, why);
            }
            let (ops, changes) = core.drain(None);
            let timed_out = ops.iter().any(|op| {
                matches!(op, crate::store::Op::PutResult(_, r)
                    if matches!(r.verdict, spare_protocol::Verdict::Failed(spare_protocol::Failure::TimedOut(_))))
            });
            if !ops.is_empty() || !changes.is_empty() {
                drop(self.announce(ops, changes));
            }
            timed_out
        };
        // A task failed by deadline misses: no attestation carries that to the backups.
        if timed_out {
            self.catch_up_backups(task.job);
        }
        self.0.work.notify_one();
    }
}
