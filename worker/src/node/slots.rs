//! The local worker slots: when slots are free, pull work — leases from this peer's own
//! coordinator first, then from the coordinators of jobs other peers announced, chosen fairly by
//! the [`Puller`] — run each replica in the sandbox, sign the attestation and report it. Nothing
//! pushes work here; idle slots ask for it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use spare_protocol::peer::slots::{LOOK_AGAIN_MS, Slots, is_stale};
use spare_protocol::pull::Puller;
use spare_protocol::peer::report::{self, Taken};
use spare_protocol::{Attestation, BlobId, JobId, Lease, Outcome, PeerId, Release, ResultKey, TaskId};
use spare_proto as pb;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::core::{Detail, Evidence};
use super::handback::{Held, Holding};
use super::{Node, donation};
use super::remote::{RemoteInput, RemoteReplica, ReportMsg};
use crate::sandbox::{RunOutcome, RunRequest, task_seed};
use crate::store::StoredInput;

/// What finished in the slot loop.
enum Done {
    /// A replica is done: it ran for this many microseconds (if it ran), and was abandoned
    /// (`true`) or not.
    Replica(Option<u64>, bool),
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
    detail: Detail,
    fuel: u64,
}

impl Ran {
    /// A module every peer refuses the same way: attested as a trap rather than retried forever.
    fn invalid(e: impl std::fmt::Display) -> Ran {
        let detail = Detail { message: format!("invalid module: {e}"), stderr: String::new() };
        Ran { outcome: Outcome::Trapped, output: Vec::new(), detail, fuel: 0 }
    }
}

/// Pulls and runs work until the peer shuts down: the one owner of this peer's [`Slots`],
/// carrying out what they decide (lease from this peer's own coordinator, ask another's, run,
/// look again).
pub(super) async fn run(node: Node) {
    let mut running: JoinSet<Done> = JoinSet::new();
    // What each running task holds, handed back at shutdown.
    let mut holding = Holding::default();
    // The lease request out, by its task, so a request that panicked is still answered.
    let mut asking: Option<(tokio::task::Id, JobId)> = None;
    let puller = Puller::new().with_memory_cap(node.config().caps.limits.memory_bytes);
    let mut slots = Slots::new(node.sandbox().slots(), puller);
    let mut stop = node.shutdown_signal();
    loop {
        let now = node.now();
        // The donor's controls hold the slots back (paused, or replicas waiting for memory).
        let held_back = donation::held_back(node.0.donation.paused(), node.0.donation.waiting_for_memory());
        slots.set_allowance(held_back.then_some(0));
        let free = slots.free(now);
        if free > 0 {
            // Jobs this peer coordinates but its volunteer does not serve (taken over, or
            // held from before the filters changed) are left to other peers' slots.
            let d = &node.config().donation;
            let serves = |spec: &spare_protocol::JobSpec| donation::serves(d, &spec.module, &spec.policy).is_ok();
            let leases = node.core().coord.lease_where(node.peer_id(), free, now, serves);
            slots.took(leases.len());
            for lease in leases {
                node.0.running.fetch_add(1, Ordering::Relaxed);
                let n = node.clone();
                let handle = running.spawn(async move { n.replica(lease).await });
                holding.hold(handle.id(), Held::Own(lease));
            }
        }
        // Jobs this peer coordinates actively are served above; the rest (including those it
        // only backs up) are pulled from their active coordinator, if the donor serves them.
        let ads: Vec<_> = if !slots.may_ask(now) {
            Vec::new()
        } else {
            let core = node.core();
            let mine = |j: &JobId| core.jobs.contains_key(j) && !core.coord.is_standby(j);
            let d = &node.config().donation;
            let ads = node.mesh().membership.job_ads();
            ads.into_iter().filter(|a| !mine(&a.job) && donation::serves(d, &a.module, &a.policy).is_ok()).collect()
        };
        if let Some((job, n)) = slots.poll_ask(&ads, now) {
            let node2 = node.clone();
            let handle = running.spawn(async move { Done::Leased(job, node2.lease_remote(job, n).await) });
            asking = Some((handle.id(), job));
        }
        // New work or a freed slot wakes the loop; time alone only matters when the slots say so,
        // and announced jobs are looked at again now and then anyway.
        let nap = slots.poll_timeout(now).map_or(LOOK_AGAIN_MS, |at| at.saturating_sub(now)).min(LOOK_AGAIN_MS);
        tokio::select! {
            _ = node.0.work.notified() => {}
            Some(done) = running.join_next_with_id(), if !running.is_empty() => match done {
                Ok((id, Done::Replica(ran_us, abandoned))) => {
                    holding.done(id);
                    if let Some(us) = ran_us {
                        slots.handle_ran(us);
                    }
                    slots.handle_done(abandoned, node.now());
                }
                Ok((_, Done::Leased(job, Ok(got)))) => {
                    asking = None;
                    slots.handle_leased(job, got.len(), node.now());
                    for r in got {
                        node.0.running.fetch_add(1, Ordering::Relaxed);
                        let n = node.clone();
                        let held = r.clone();
                        let handle = running.spawn(async move { n.remote_replica(r).await });
                        holding.hold(handle.id(), Held::Remote(held));
                    }
                }
                Ok((_, Done::Leased(job, Err(e)))) => {
                    asking = None;
                    tracing::debug!(job = %job.short(), "lease request failed: {e:#}");
                    slots.handle_lease_failed(job, node.now());
                }
                Err(e) => {
                    // A slot task panicked or was cancelled; what it held is free again.
                    tracing::error!("slot task ended abnormally: {e}");
                    holding.done(e.id());
                    match asking.take() {
                        Some((id, job)) if id == e.id() => slots.handle_lease_failed(job, node.now()),
                        other => {
                            asking = other;
                            node.0.running.fetch_sub(1, Ordering::Relaxed);
                            slots.handle_done(true, node.now());
                        }
                    }
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(nap)) => {}
            _ = stop.changed() => break,
        }
    }
    if node.stops_cleanly() {
        holding.hand_back(&node, running).await;
    } else {
        running.shutdown().await;
    }
}

impl Node {
    /// Runs one replica leased from this peer's own coordinator and reports it.
    async fn replica(self, lease: Lease) -> Done {
        let done = match self.execute(&lease).await {
            Err(e) if e.is::<Stale>() => {
                // Queued too long behind other replicas: hand it back unblamed for another peer.
                self.release_task(lease.task, lease.peer, Release::Abandoned).await;
                Done::Replica(None, false)
            }
            Ok(ran_us) => Done::Replica(ran_us, false),
            Err(e) => {
                tracing::warn!(task = %lease.task, "replica abandoned: {e:#}");
                self.release_task(lease.task, lease.peer, Release::Abandoned).await;
                Done::Replica(None, true)
            }
        };
        self.0.running.fetch_sub(1, Ordering::Relaxed);
        done
    }

    /// Runs a replica of this peer's own job; how long it ran, if it ran.
    async fn execute(&self, lease: &Lease) -> anyhow::Result<Option<u64>> {
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
        let (ran, took_us) = self.run_replica(req).await?;
        let Some(ran) = ran else {
            self.release_task(task, lease.peer, Release::Deadline).await;
            return Ok(took_us);
        };
        let Some((att, output)) = self.attest(task, ran.outcome, ran.output, ran.fuel) else { return Ok(took_us) };
        self.report(att, &output, &ran.detail);
        Ok(took_us)
    }

    /// Runs one replica leased from another peer's coordinator and reports it there.
    async fn remote_replica(self, r: RemoteReplica) -> Done {
        let done = match self.execute_remote(&r).await {
            Err(e) if e.is::<Stale>() => {
                self.release_remote(&r, Release::Abandoned).await;
                Done::Replica(None, false)
            }
            Ok(ran_us) => Done::Replica(ran_us, false),
            Err(e) => {
                tracing::warn!(task = %r.task, coordinator = %r.coordinator, "replica abandoned: {e:#}");
                self.release_remote(&r, Release::Abandoned).await;
                Done::Replica(None, true)
            }
        };
        self.0.running.fetch_sub(1, Ordering::Relaxed);
        done
    }

    /// Runs a replica of another peer's job; how long it ran, if it ran.
    async fn execute_remote(&self, r: &RemoteReplica) -> anyhow::Result<Option<u64>> {
        #[cfg(feature = "chaos")]
        if self.config().chaos == Some(super::Chaos::Silent) {
            return Ok(None); // holds the lease and never reports
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
        let (ran, took_us) = self.run_replica(req).await?;
        let Some(ran) = ran else {
            self.release_remote(r, Release::Deadline).await;
            return Ok(took_us);
        };
        let Some((att, output)) = self.attest(r.task, ran.outcome, ran.output, ran.fuel) else { return Ok(took_us) };
        let item = pb::ReportItem {
            attestation: Some(crate::wire::convert::attestation_pb(&att)),
            output,
            message: ran.detail.message,
            stderr: ran.detail.stderr,
        };
        self.send_report(&r.coordinator, r.expires_at, ReportMsg::Attestation(item)).await;
        Ok(took_us)
    }

    /// Runs a request in the sandbox (compiling the module first if needed), with how long it
    /// ran in the sandbox if it did. `None` when the run passed its wall deadline, which is not
    /// a result.
    async fn run_replica(&self, req: RunRequest) -> anyhow::Result<(Option<Ran>, Option<u64>)> {
        let prepared = self.prepare_module(&req.module).await;
        let mut took_us = None;
        let ran = match prepared {
            Err(super::submit::PrepareError::Other(e)) => return Err(e),
            Err(super::submit::PrepareError::Module(e)) => Some(Ran::invalid(e)),
            Ok(()) => {
                let report = self.sandbox().run(req).await?;
                took_us = Some(u64::try_from(report.elapsed.as_micros()).unwrap_or(u64::MAX));
                self.0.metrics.ran(&report.outcome, report.elapsed);
                // Counted durably per local day too, for "tasks run today" on the status page.
                let ok = matches!(report.outcome, RunOutcome::Done { outcome: Outcome::Exited(0), .. });
                drop(self.store().write(vec![crate::store::Op::CountRun { day: donation::local_day(), ok }]));
                match report.outcome {
                    RunOutcome::Done { outcome, message } => {
                        let stderr = crate::sandbox::tail_text(&report.stderr, crate::sandbox::STDERR_TAIL_BYTES);
                        Some(Ran { outcome, output: report.stdout, detail: Detail { message, stderr }, fuel: report.fuel_used })
                    }
                    RunOutcome::Deadline => None,
                    RunOutcome::Invalid(e) => Some(Ran::invalid(e)),
                }
            }
        };
        Ok((ran, took_us))
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

    /// Records an attestation of one of this peer's own replicas ([`report::record`]); see
    /// [`Node::take_report`].
    pub(crate) fn report(&self, att: Attestation, output: &[u8], detail: &Detail) {
        let mut core = self.core();
        let taken = report::record(&mut core.coord, att.clone());
        drop(self.keep(&mut core, taken, att, output, detail));
    }

    /// Takes an attestation `sender` reported ([`report::take`]; `signed` is the verdict of its
    /// signature), stores it (and any verdict it made), streams it to the backups, and tells
    /// watchers once that is durable. With what was taken comes, when it was recorded, what
    /// resolves once it is durable here and one backup holds it (or the wait for one gave up):
    /// the worker is answered only then, so it never lets go of an attestation that no live
    /// coordinator has (a crash before streaming makes its report go to the successor).
    pub(crate) fn take_report(
        &self,
        sender: PeerId,
        att: Attestation,
        signed: bool,
        output: &[u8],
        detail: &Detail,
    ) -> (Taken, Option<oneshot::Receiver<()>>) {
        let mut core = self.core();
        let taken = report::take(&mut core.coord, sender, att.clone(), signed, output);
        let held = self.keep(&mut core, taken.clone(), att, output, detail);
        (taken, held)
    }

    /// Stores and streams what [`report::take`] or [`report::record`] recorded; the receiver
    /// resolves once that is durable and a backup has it. Call with the core lock held, so
    /// entries stream in recording order.
    fn keep(
        &self,
        core: &mut super::core::Core,
        taken: Taken,
        att: Attestation,
        output: &[u8],
        detail: &Detail,
    ) -> Option<oneshot::Receiver<()>> {
        let Taken::Recorded { ordinal, lone, decided } = taken else {
            if let Taken::Refused(e) = taken {
                tracing::debug!("attestation not recorded: {e}");
            }
            return None;
        };
        core.outputs.keep(att.task, att.result.output_hash, output);
        let evidence = Evidence { attestation: &att, output, detail };
        let (mut ops, changes) = core.drain(Some(&evidence));
        ops.insert(0, crate::store::Op::PutAttestation { ordinal, attestation: att.clone(), lone });
        // The other coordinators get it too, with its output (and the run's detail when it
        // decided the task).
        let coordinators = core.jobs.get(&att.task.job).map(|m| m.coordinators.clone()).unwrap_or_default();
        let backup = self.replicate(&coordinators, &att, lone, output, decided.then_some(detail));
        // Queued in order; the caller need not wait for the disk.
        Some(self.announce_with(ops, changes, backup))
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
