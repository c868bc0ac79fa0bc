//! Running one replica in the sandbox for the worker loop (`work.rs`): memory admission, its
//! input, the run, the signed attestation; and recording what this peer's own replicas produced
//! with its own coordinator.

use spare_protocol::peer::host::ReportItem;
use spare_protocol::peer::slots::is_stale;
use spare_protocol::peer::work::Replica;
use spare_protocol::{Attestation, BlobId, Outcome, Release, ResultKey, TaskId};

use super::core::Detail;
use super::remote::{Payload, RemoteInput};
use super::{Node, donation};
use crate::sandbox::{RunOutcome, RunRequest, task_seed};
use crate::store::StoredInput;

/// How a replica given a slot ended.
pub(super) enum Ended {
    /// It ran for `ran_us` microseconds; its attestation (unsigned), output and the run's detail.
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
        // Checked again after the fetches, and by the sandbox once a slot takes the run (known
        // gap 11 was a replica queued behind long runs started after its lease lapsed).
        let now = self.now();
        if is_stale(now, req.limits.timeout_ms, r.expires_at) {
            return Ok(Ended::NotRun { abandoned: false });
        }
        let left = r.expires_at.saturating_sub(now).saturating_sub(req.limits.timeout_ms);
        let start_by = std::time::Instant::now() + std::time::Duration::from_millis(left);
        let run = RunRequest {
            module: r.module,
            input,
            args: req.args,
            env: req.env,
            limits: req.limits,
            seed: task_seed(&task.job, task.index),
        };
        let (ran, took_us) = match self.run_replica(run, start_by).await {
            Err(e) if matches!(e.downcast_ref::<crate::sandbox::SandboxError>(), Some(crate::sandbox::SandboxError::Stale)) => {
                return Ok(Ended::NotRun { abandoned: false });
            }
            other => other?,
        };
        let ran_us = took_us.unwrap_or(0);
        let Some(ran) = ran else { return Ok(Ended::Deadline { ran_us }) };
        let (att, output) = self.attest(task, ran.outcome, ran.output, ran.fuel);
        Ok(Ended::Ran { ran_us, att: Box::new(att), output, detail: ran.detail })
    }

    /// Runs a request in the sandbox (compiling the module first if needed), with how long it
    /// ran in the sandbox if it did. `None` when the run passed its wall deadline, which is not
    /// a result.
    async fn run_replica(&self, req: RunRequest, start_by: std::time::Instant) -> anyhow::Result<(Option<Ran>, Option<u64>)> {
        let prepared = self.prepare_module(&req.module).await;
        let mut took_us = None;
        let ran = match prepared {
            Err(super::submit::PrepareError::Other(e)) => return Err(e),
            Err(super::submit::PrepareError::Module(e)) => Some(Ran::invalid(e)),
            Ok(()) => {
                let report = self.sandbox().run_before(req, start_by).await?;
                took_us = Some(u64::try_from(report.elapsed.as_micros()).unwrap_or(u64::MAX));
                self.0.metrics.ran(&report.outcome, report.elapsed);
                // Counted durably per local day too, for "tasks run today" on the status page.
                let ok = matches!(report.outcome, RunOutcome::Done { outcome: Outcome::Exited(0), .. });
                self.store().count_run(donation::local_day(), ok);
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

    /// The attestation of a run, unsigned, and the output that goes with it. It is signed with
    /// the others that end about the same time, one signature over many: for the own
    /// coordinator by the work loop (`own_batch.rs`), for another in its report batch
    /// (`work.rs`).
    fn attest(&self, task: TaskId, outcome: Outcome, output: Vec<u8>, fuel: u64) -> (Attestation, Vec<u8>) {
        // Only a successful run's stdout is a result; a failure is its outcome alone.
        #[allow(unused_mut)]
        let mut output = if outcome.is_success() { output } else { Vec::new() };
        #[cfg(feature = "chaos")]
        if self.config().chaos == Some(super::Chaos::Lie) {
            // Every task its own wrong answer, as a careless or malicious peer would give.
            output = format!("lie from {} about {task}\n", self.peer_id().short()).into_bytes();
        }
        #[cfg_attr(not(feature = "chaos"), allow(unused_mut))]
        let mut att = Attestation {
            task,
            peer: self.peer_id(),
            result: ResultKey { outcome, output_hash: BlobId::of(&output) },
            fuel_used: fuel,
            signature: Vec::new(),
        };
        #[cfg(feature = "chaos")]
        if self.config().chaos == Some(super::Chaos::Forge) {
            att.signature = vec![7; 64];
        }
        (att, output)
    }

    /// Records an attestation of one of this peer's own replicas with its coordinator side.
    pub(crate) fn report(&self, att: Attestation, output: Vec<u8>, detail: Detail) {
        self.with_hosts(|c, now| c.hosts.handle_own(ReportItem::Attest(att, output, detail), now));
    }

    /// Hands back one of this peer's own leased replicas that produced no attestation.
    pub(crate) fn release_own(&self, task: TaskId, why: Release) {
        self.with_hosts(|c, now| c.hosts.handle_own(ReportItem::Release(task, why), now));
        self.0.work.notify_one();
    }
}
