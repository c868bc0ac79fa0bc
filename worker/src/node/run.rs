//! Running one replica in the sandbox for the worker loop (`work.rs`): memory admission, its
//! input, the run, the signed attestation; and recording what this peer's own replicas produced
//! with its own coordinator.

use spare_protocol::peer::report::{self, Taken};
use spare_protocol::peer::slots::is_stale;
use spare_protocol::peer::work::Replica;
use spare_protocol::{Attestation, BlobId, Outcome, PeerId, Release, ResultKey, TaskId};
use tokio::sync::oneshot;

use futures::FutureExt;
use spare_proto as pb;
use spare_protocol::JobId;

use super::core::{Core, Detail, Evidence};
use super::replicate::recorded_entry;
use super::Change;
use super::remote::{Payload, RemoteInput};
use super::{Node, donation};
use crate::sandbox::{RunOutcome, RunRequest, task_seed};
use crate::store::{Op, StoredInput};

/// How a replica given a slot ended.
pub(super) enum Ended {
    /// It ran for `ran_us` microseconds; its signed attestation, output and the run's detail.
    Ran { ran_us: u64, att: Box<Attestation>, output: Vec<u8>, detail: Detail },
    /// It ran past its wall deadline, which is not a result.
    Deadline { ran_us: u64 },
    /// It did not run: `abandoned` when it could not run here, else its lease would lapse
    /// before a run could finish (it waited too long for memory).
    NotRun { abandoned: bool },
}

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

impl Node {
    /// Runs replica `r` (its `payload` from the lease reply when it was leased from another
    /// peer's coordinator; this peer's own jobs are in its core and store).
    pub(super) async fn run(&self, r: Replica, payload: Option<Payload>) -> Ended {
        match self.try_run(&r, payload).await {
            Ok(ended) => ended,
            Err(e) => {
                tracing::warn!(task = %r.task, coordinator = ?r.coordinator.map(|c| c.short()), "replica abandoned: {e:#}");
                Ended::NotRun { abandoned: true }
            }
        }
    }

    async fn try_run(&self, r: &Replica, payload: Option<Payload>) -> anyhow::Result<Ended> {
        let task = r.task;
        let (req, memory) = match (r.coordinator, payload) {
            (None, _) => {
                let meta = self.core().jobs.get(&task.job).cloned();
                let meta = meta.ok_or_else(|| anyhow::anyhow!("job {} is not held here", task.job))?;
                let input = match self.store().input(&task)? {
                    Some(StoredInput::Inline(bytes)) => RemoteInput::Inline(bytes),
                    Some(StoredInput::Blob(id)) => RemoteInput::Blob(id),
                    None => anyhow::bail!("task {task} has no stored input"),
                };
                let limits = meta.spec.policy.limits;
                (Payload { input, args: meta.args.to_vec(), env: meta.env.to_vec(), limits, expires_at: r.expires_at }, limits.memory_bytes)
            }
            (Some(_), Some(p)) => {
                let memory = p.limits.memory_bytes;
                (p, memory)
            }
            (Some(c), None) => anyhow::bail!("no payload kept for {task} from {}", c.short()),
        };
        // Waits until the task's memory limit fits beside the running tasks'.
        let _memory = self.0.donation.admit_memory(memory).await?;
        if is_stale(self.now(), req.limits.timeout_ms, r.expires_at) {
            // Queued too long behind other replicas: handed back unblamed for another peer.
            return Ok(Ended::NotRun { abandoned: false });
        }
        let coordinator = match r.coordinator {
            Some(c) => Some(self.addr_of(&c).ok_or_else(|| anyhow::anyhow!("no address for {}", c.short()))?),
            None => None,
        };
        // `Work` fetched the module once; retention may have removed it since (at the disk cap).
        if let Some(addr) = &coordinator
            && !self.sandbox().is_prepared(&r.module)
        {
            self.fetch_blob(addr, &r.module, self.config().max_module_bytes as u64).await?;
        }
        let input = match req.input {
            RemoteInput::Inline(b) => b,
            RemoteInput::Blob(id) => {
                if let Some(addr) = &coordinator {
                    self.fetch_blob(addr, &id, self.config().max_blob_bytes).await?;
                }
                self.store().blobs().read(&id).await?
            }
        };
        let run = RunRequest {
            module: r.module,
            input,
            args: req.args,
            env: req.env,
            limits: req.limits,
            seed: task_seed(&task.job, task.index),
        };
        let (ran, took_us) = self.run_replica(run).await?;
        let ran_us = took_us.unwrap_or(0);
        let Some(ran) = ran else { return Ok(Ended::Deadline { ran_us }) };
        let (att, output) = self.attest(task, ran.outcome, ran.output, ran.fuel);
        Ok(Ended::Ran { ran_us, att: Box::new(att), output, detail: ran.detail })
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

    /// The signed attestation of a run, and the output that goes with it.
    fn attest(&self, task: TaskId, outcome: Outcome, output: Vec<u8>, fuel: u64) -> (Attestation, Vec<u8>) {
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
        if self.config().chaos == Some(super::Chaos::Forge) {
            att.signature = vec![7; 64];
        }
        (att, output)
    }

    /// Records an attestation of one of this peer's own replicas ([`report::record`]); see
    /// [`Node::take_reports`].
    pub(crate) fn report(&self, att: Attestation, output: &[u8], detail: &Detail) {
        let mut core = self.core();
        let taken = report::record(&mut core.coord, att.clone());
        let mut kept = Kept::default();
        keep(&mut core, taken, att, output, detail, &mut kept);
        drop(self.finish(&mut core, kept));
    }

    /// Takes the attestations of one report batch from `sender` ([`report::take`], each with the
    /// verdict of its signature), stores them (and the verdicts they made), streams them to the
    /// backups, and tells watchers once that is durable. With what was taken of each comes, when
    /// any was recorded, what resolves once all is durable here and one backup of each job holds
    /// it (or the wait for one gave up): the worker is answered only then, so it never lets go
    /// of an attestation that no live coordinator has (a crash before streaming makes its report
    /// go to the successor). The whole batch is one lock, one store write and one wait for the
    /// backups: per attestation, they were most of the report path's allocations.
    pub(crate) fn take_reports(&self, sender: PeerId, batch: Vec<ReportedAttestation>) -> (Vec<Taken>, Option<oneshot::Receiver<()>>) {
        let mut core = self.core();
        let mut kept = Kept::default();
        let mut taken = Vec::with_capacity(batch.len());
        for r in batch {
            let t = report::take(&mut core.coord, sender, r.att.clone(), r.signed, &r.output);
            taken.push(t.clone());
            keep(&mut core, t, r.att, &r.output, &r.detail, &mut kept);
        }
        let held = self.finish(&mut core, kept);
        (taken, held)
    }

    /// Streams what a batch recorded to the backups of the jobs this peer leads and queues its
    /// writes and changes; the receiver resolves once they are durable and a backup of each job
    /// has its entries. Call with the core lock held, so entries stream in recording order.
    fn finish(&self, core: &mut super::core::Core, kept: Kept) -> Option<oneshot::Receiver<()>> {
        if kept.ops.is_empty() {
            return None;
        }
        // Each job's last entry asks for its backups' answer: a backup's stream is taken in
        // order, so one that holds the last holds the batch's earlier ones too.
        let lasts: Vec<bool> =
            (0..kept.streamed.len()).map(|i| kept.streamed[i + 1..].iter().all(|(j, _)| *j != kept.streamed[i].0)).collect();
        let mut acks = Vec::new();
        for ((job, entry), last) in kept.streamed.into_iter().zip(lasts) {
            let coordinators = core.jobs.get(&job).map_or(&[][..], |m| &m.coordinators[..]);
            acks.extend(self.stream(coordinators, job, entry, last));
        }
        let backup: Option<super::replicate::BackupAck> = match acks.len() {
            0 => None,
            1 => acks.pop(),
            _ => Some(Box::pin(futures::future::join_all(acks).map(|held| held.into_iter().all(|h| h)))),
        };
        // Queued in order; the caller need not wait for the disk.
        Some(self.announce_with(kept.ops, kept.changes, backup))
    }

    /// Hands back a leased replica that produced no attestation.
    pub(crate) fn release_task(&self, task: TaskId, peer: PeerId, why: Release) {
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

/// One attestation of a report batch, with the verdict of its signature check, its output and
/// the run's detail.
pub(crate) struct ReportedAttestation {
    pub att: Attestation,
    pub signed: bool,
    pub output: Vec<u8>,
    pub detail: Detail,
}

/// What the attestations of one batch recorded come to, in recording order: the store writes,
/// the changes to announce once they are durable, and the entries for each job's backups.
#[derive(Default)]
struct Kept {
    ops: Vec<Op>,
    changes: Vec<Change>,
    streamed: Vec<(JobId, pb::replication_entry::Entry)>,
}

/// Adds what [`report::take`] or [`report::record`] recorded of `att` to `kept`: the attestation
/// and the verdicts it made as writes, and its stream entry with its output (and the run's detail
/// when it decided the task).
fn keep(core: &mut Core, taken: Taken, att: Attestation, output: &[u8], detail: &Detail, kept: &mut Kept) {
    let Taken::Recorded { ordinal, lone, decided } = taken else {
        if let Taken::Refused(e) = taken {
            tracing::debug!("attestation not recorded: {e}");
        }
        return;
    };
    core.outputs.keep(att.task, att.result.output_hash, output);
    let evidence = Evidence { att: &att, output, detail };
    let (ops, changes) = core.drain(Some(&evidence));
    let job = att.task.job;
    // Whether it streams is the stream's call (only the active coordinator's go out).
    kept.streamed.push((job, recorded_entry(&att, lone, output, decided.then_some(detail))));
    kept.ops.push(Op::PutAttestation { ordinal, attestation: att, lone });
    kept.ops.extend(ops);
    kept.changes.extend(changes);
}
