//! The coordinator side's calls to other coordinators, as its hosts ask for them: a batch of the
//! replication stream (`MeshService.Replicate`) and the whole job (`MeshService.Adopt`, filled in
//! from the store), each signed and sent, its answer handed back to the hosts.

use std::time::Duration;

use spare_proto as pb;
use spare_protocol::peer::host::{AdoptKind, Logged, Recorded, Streamed};
use spare_protocol::peer::replication::ADOPT_TIMEOUT_MS;
use spare_protocol::{Attestation, BlobId, JobId, JobState, PeerId, TaskId};

use super::core::Core;
use super::{Node, unix_ms};
use crate::store::StoredInput;
use crate::wire::convert::{self, attestation_pb};
use crate::wire::{signing, stream};

/// An attestation an `Adopt` carries, and its output when it was in hand as the call was asked
/// for (`None`: read from the store, which has it if the task is final).
type Carried = (Logged, Option<Vec<u8>>);

/// `log` with the outputs the hosts hold in memory, those of tasks not final yet: what the store
/// cannot give later. Call under the core lock.
fn in_hand(core: &Core, log: impl IntoIterator<Item = Logged>) -> Vec<Carried> {
    log.into_iter()
        .map(|l| {
            let output = core.hosts.pending_output(&l.att.task, &l.att.result.output_hash).map(<[u8]>::to_vec);
            (l, output)
        })
        .collect()
}

impl Node {
    /// Sends a batch of `job`'s stream to backup `to`; the hosts hear whether it holds it.
    pub(super) fn send_replicate(&self, to: PeerId, job: JobId, items: Vec<Streamed>) {
        let node = self.clone();
        tokio::spawn(async move {
            let taken = node.replicate_call(to, job, items).await;
            node.with_hosts(|c, now| c.hosts.handle_replicated(&job, to, taken, now));
        });
    }

    async fn replicate_call(&self, to: PeerId, job: JobId, items: Vec<Streamed>) -> bool {
        let Some(addr) = self.addr_of(&to) else { return false };
        let mut req = pb::ReplicateRequest {
            job_id: job.to_hex(),
            entries: items.into_iter().map(stream::entry_pb).collect(),
            peer_id: self.peer_id().to_hex(),
            timestamp_ms: unix_ms(),
            signature: Vec::new(),
            receiver: to.to_hex(),
            request_nonce: signing::request_nonce(),
        };
        let bytes = signing::replicate(&mut req);
        req.signature = self.sign(&bytes).to_vec();
        let Some(mut client) = self.0.clients.mesh(&addr) else { return false };
        match client.replicate(req).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(%addr, job = %job.short(), "replication failed: {e}");
                self.0.clients.forget(&addr);
                false
            }
        }
    }

    /// Sends `to` the whole job naming `coordinators`, for `kind`; the hosts hear the answer.
    /// What is in memory only (outputs of tasks not final) is taken now, under the core lock:
    /// the rest is read from the store, which holds every write asked before this call, and
    /// so does the log itself when the hosts let it go (`None`: an ended job's).
    pub(super) fn send_adopt(&self, core: &Core, to: PeerId, job: JobId, coordinators: Vec<PeerId>, log: Option<Vec<Logged>>, kind: AdoptKind) {
        let from_store = log.is_none();
        let carried = in_hand(core, log.unwrap_or_default());
        let coord = core.coord();
        let cancelled = coord.job(&job).is_some_and(|v| v.state == JobState::Cancelled);
        let node = self.clone();
        tokio::spawn(async move {
            let carried = if from_store { node.stored_log(&job) } else { Ok(carried) };
            let answer = match async { node.adopt_call(to, job, coordinators, carried?, kind, cancelled).await }.await {
                Ok(missing) => node.checked(missing),
                Err(e) => {
                    tracing::warn!(job = %job.short(), peer = %to.short(), ?kind, "could not hand the job over: {e:#}");
                    None
                }
            };
            let members = node.members();
            node.with_hosts(|c, now| c.hosts.handle_adopted(&job, to, answer, kind, now, &members));
        });
    }

    async fn adopt_call(
        &self,
        to: PeerId,
        job: JobId,
        coordinators: Vec<PeerId>,
        carried: Vec<Carried>,
        kind: AdoptKind,
        cancelled: bool,
    ) -> anyhow::Result<Vec<pb::RecordedAttestation>> {
        let addr = self.addr_of(&to).ok_or_else(|| anyhow::anyhow!("no address"))?;
        let stored = self.store().job(&job)?.ok_or_else(|| anyhow::anyhow!("job {job} is not stored"))?;
        // Every input in one read transaction (a job holds up to 100,000 of them).
        let ids: Vec<TaskId> = (0..stored.spec.task_count).map(|index| TaskId { job, index }).collect();
        let mut tasks = Vec::with_capacity(ids.len());
        for (task, input) in ids.iter().zip(self.store().inputs(&ids)?) {
            let source = match input {
                Some(StoredInput::Inline(b)) => pb::task_input::Source::Inline(b),
                Some(StoredInput::Blob(id)) => pb::task_input::Source::BlobId(id.to_hex()),
                None => anyhow::bail!("task {task} has no stored input"),
            };
            tasks.push(pb::TaskInput { source: Some(source) });
        }
        let mut attestations = Vec::with_capacity(carried.len());
        for (l, output) in carried {
            attestations.extend(self.recorded_of(&l, output, kind == AdoptKind::HandOver)?);
        }
        let mut names: Vec<String> = coordinators.iter().map(PeerId::to_hex).collect();
        // The new coordinator is named in the list it receives.
        if !coordinators.contains(&to) {
            names.push(to.to_hex());
        }
        let timed_out = self.timed_out_of(&job).into_iter().map(|(index, misses)| pb::TimedOutTask { index, misses }).collect();
        let mut req = pb::AdoptRequest {
            job_id: job.to_hex(),
            origin: stored.spec.origin.to_hex(),
            origin_signature: stored.origin_signature.clone(),
            nonce: stored.nonce.clone(),
            module_id: stored.spec.module.to_hex(),
            policy: Some(convert::policy_pb(&stored.spec.policy)),
            args: stored.args.clone(),
            env: stored.env.iter().map(|(k, v)| pb::EnvVar { key: k.clone(), value: v.clone() }).collect(),
            label: stored.spec.label.clone(),
            submitted_at_ms: stored.spec.submitted_at_ms,
            tasks,
            cancelled,
            coordinators: names,
            attestations,
            peer_id: self.peer_id().to_hex(),
            timestamp_ms: unix_ms(),
            signature: Vec::new(),
            timed_out,
            sync: kind == AdoptKind::Sync,
            owner: stored.owner.map(|o| o.as_bytes().to_vec()).unwrap_or_default(),
            receiver: to.to_hex(),
            request_nonce: signing::request_nonce(),
        };
        let bytes = signing::adopt(&mut req);
        req.signature = self.sign(&bytes).to_vec();
        let mut client = self.0.clients.mesh(&addr).ok_or_else(|| anyhow::anyhow!("bad address {addr}"))?;
        let mut request = tonic::Request::new(req);
        request.set_timeout(Duration::from_millis(ADOPT_TIMEOUT_MS));
        let answer = client.adopt(request).await.map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
        Ok(answer.into_inner().missing)
    }

    /// An ended job's attestation log, as the store keeps it (every task final: outputs are
    /// the store's too).
    fn stored_log(&self, job: &JobId) -> anyhow::Result<Vec<Carried>> {
        let log = self.store().attestations(job)?;
        Ok(log.into_iter().map(|rec| (Logged { att: std::sync::Arc::new(rec.attestation), lone: rec.lone }, None)).collect())
    }

    /// One recorded attestation as `Adopt` carries it, with `output` (`None`: the agreed output
    /// of its final task, from the store, when it agrees). The run's detail goes with the
    /// agreed output, so whichever attestation completes the quorum on the other side says why.
    /// `None` for one left out: with `final_only` (a hand-over), an attestation of a task not
    /// final whose output is no longer in hand, since a peer with attestations of its own (the
    /// other side of a split) could complete a quorum with one that carries no output.
    fn recorded_of(&self, l: &Logged, output: Option<Vec<u8>>, final_only: bool) -> anyhow::Result<Option<pb::RecordedAttestation>> {
        let att: &Attestation = &l.att;
        let (output, message, stderr) = match output {
            Some(o) => (o, String::new(), String::new()),
            None => match self.store().result(&att.task)? {
                Some(r) if r.verdict.agreed() == Some(&att.result) => (r.output, r.message, r.stderr),
                Some(_) => Default::default(),
                None if final_only && att.result.output_hash != BlobId::of(&[]) => return Ok(None),
                None => Default::default(),
            },
        };
        Ok(Some(pb::RecordedAttestation { attestation: Some(attestation_pb(att)), output, message, lone: l.lone, stderr }))
    }

    /// What this peer recorded that a new leader's sync lacks (`missing`, from its hosts), as
    /// the answer carries it: outputs of final tasks from the store, the others' from memory.
    pub(crate) fn answer_of(&self, missing: Vec<Logged>) -> anyhow::Result<Vec<pb::RecordedAttestation>> {
        let carried = in_hand(&self.core(), missing);
        let mut answer = Vec::with_capacity(carried.len());
        for (l, output) in carried {
            answer.extend(self.recorded_of(&l, output, false)?);
        }
        Ok(answer)
    }

    /// Recorded attestations from another coordinator, checked: `None` when one is malformed
    /// (the whole answer is refused), those with a bad signature dropped and counted.
    pub(crate) fn checked(&self, items: Vec<pb::RecordedAttestation>) -> Option<Vec<Recorded>> {
        let mut recorded = Vec::with_capacity(items.len());
        for item in items {
            match stream::recorded(item) {
                Ok(r) => recorded.push(r),
                Err(e) => {
                    tracing::warn!("a coordinator's recorded attestations were refused: {}", e.message());
                    return None;
                }
            }
        }
        Some(self.signed_only(recorded))
    }

    /// `recorded` without those whose signature does not check out (counted as invalid), checked
    /// in one batch.
    pub(crate) fn signed_only(&self, recorded: Vec<Recorded>) -> Vec<Recorded> {
        let refs: Vec<&Attestation> = recorded.iter().map(|r| &*r.logged.att).collect();
        let valid = crate::identity::verify_attestations(&refs);
        recorded
            .into_iter()
            .zip(valid)
            .filter_map(|(r, ok)| {
                if !ok {
                    self.count_invalid();
                }
                ok.then_some(r)
            })
            .collect()
    }
}
