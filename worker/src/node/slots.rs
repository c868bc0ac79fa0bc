//! The local worker slots: when slots are free, pull leases from the coordinator, run each
//! replica in the sandbox, sign the attestation and report it. Nothing pushes work here; idle
//! slots ask for it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use spare_coordinator::{Attestation, BlobId, Lease, Outcome, Release, Reported, ResultKey};
use tokio::task::JoinSet;

use super::Node;
use super::core::Evidence;
use crate::sandbox::{RunOutcome, RunRequest, task_seed};
use crate::store::StoredInput;

/// Replicas leased per slot, so a slot finishing one has the next at hand.
const LEASES_PER_SLOT: usize = 4;
/// Pause after a replica had to be abandoned, so a failing peer does not spin.
const BACKOFF: Duration = Duration::from_millis(250);

/// Pulls and runs work until the peer shuts down.
pub(super) async fn run(node: Node) {
    let capacity = node.sandbox().slots() * LEASES_PER_SLOT;
    let mut running = JoinSet::new();
    let mut stop = node.shutdown_signal();
    loop {
        let free = capacity.saturating_sub(running.len());
        if free > 0 {
            let now = node.now();
            let me = node.peer_id();
            let leases = node.core().coord.lease(me, free, now);
            for lease in leases {
                node.0.running.fetch_add(1, Ordering::Relaxed);
                running.spawn(node.clone().replica(lease));
            }
        }
        tokio::select! {
            _ = node.0.work.notified() => {}
            Some(abandoned) = running.join_next(), if !running.is_empty() => {
                if abandoned.unwrap_or(true) {
                    tokio::time::sleep(BACKOFF).await;
                }
            }
            _ = stop.changed() => break,
        }
    }
    running.shutdown().await;
}

impl Node {
    /// Runs one leased replica and reports it. Returns true when it had to be abandoned.
    async fn replica(self, lease: Lease) -> bool {
        let abandoned = match self.execute(&lease).await {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(task = %lease.task, "replica abandoned: {e:#}");
                self.release(lease, Release::Abandoned).await;
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
        let input = match self.store().input(&task)? {
            Some(StoredInput::Inline(bytes)) => bytes,
            Some(StoredInput::Blob(id)) => self.store().blobs().read(&id).await?,
            None => anyhow::bail!("task {task} has no stored input"),
        };
        let module = meta.spec.module;
        let prepared = self.prepare_module(&module).await;
        let req = RunRequest {
            module,
            input,
            args: meta.args.to_vec(),
            env: meta.env.to_vec(),
            limits: meta.spec.policy.limits,
            seed: task_seed(&task.job, task.index),
        };
        let (outcome, output, message, fuel) = match prepared {
            Err(super::submit::PrepareError::Other(e)) => return Err(e),
            // Validated at submission, so this is not expected; every peer would refuse the same
            // module the same way, so it is attested as a trap rather than retried forever.
            Err(super::submit::PrepareError::Module(e)) => (Outcome::Trapped, Vec::new(), format!("invalid module: {e}"), 0),
            Ok(()) => {
                let report = self.sandbox().run(req).await?;
                match report.outcome {
                    RunOutcome::Done { outcome, message } => (outcome, report.stdout, message, report.fuel_used),
                    RunOutcome::Deadline => {
                        self.release(*lease, Release::Deadline).await;
                        return Ok(());
                    }
                    RunOutcome::Invalid(e) => (Outcome::Trapped, Vec::new(), format!("invalid module: {e}"), 0),
                }
            }
        };
        let output = if outcome.is_success() { output } else { Vec::new() };
        let mut att = Attestation {
            task,
            peer: self.peer_id(),
            result: ResultKey { outcome, output_hash: BlobId::of(&output) },
            fuel_used: fuel,
            signature: Vec::new(),
        };
        self.0.identity.sign_attestation(&mut att);
        self.report(att, &output, &message).await;
        Ok(())
    }

    /// Records an attestation with the coordinator, then stores it (and any verdict it made)
    /// and tells watchers once that is durable.
    pub(crate) async fn report(&self, att: Attestation, output: &[u8], message: &str) {
        let write = {
            let mut core = self.core();
            match core.coord.report(att.clone()) {
                Ok(Reported::Recorded | Reported::Decided) => {}
                // The verdict was in before it; it counted for reputation only.
                Ok(Reported::Late) => return,
                Err(e) => {
                    tracing::debug!("attestation not recorded: {e}");
                    return;
                }
            }
            let ordinal = core.coord.task(&att.task).map_or(0, |t| t.attestations.saturating_sub(1));
            let evidence = Evidence { attestation: &att, output, message };
            let (mut ops, changes) = core.drain(Some(&evidence));
            ops.insert(0, crate::store::Op::PutAttestation { ordinal, attestation: att.clone() });
            (self.store().write(ops), changes)
        };
        // The write is queued in order already; the slot need not wait for the disk.
        let node = self.clone();
        tokio::spawn(async move { node.publish(write.0, write.1).await });
    }

    async fn release(&self, lease: Lease, why: Release) {
        let write = {
            let mut core = self.core();
            core.coord.release(lease.task, lease.peer, why);
            let (ops, changes) = core.drain(None);
            (!ops.is_empty() || !changes.is_empty()).then(|| (self.store().write(ops), changes))
        };
        if let Some((write, changes)) = write {
            self.publish(write, changes).await;
        }
        self.0.work.notify_one();
    }
}
