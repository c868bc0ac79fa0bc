//! Replicated coordination. A job has up to three coordinators: its origin, then the live peers
//! that rank highest by rendezvous hashing of the job id. The first live one is *active*: it
//! leases and decides. It streams every attestation it records, in order, to the others
//! (`MeshService.Replicate`), which replay them into their own coordinator in standby, reach the
//! same verdicts, and store the same results; a verdict is announced only once one other
//! coordinator has it durably. When the active one dies, the next live coordinator takes over,
//! hands the job to a replacement (`MeshService.Adopt`) and announces the new coordinator list.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::future::select_ok;
use spare_coordinator::rendezvous::{self, DEFAULT_COORDINATORS};
use spare_coordinator::{Attestation, JobId, PeerId, Reported};
use spare_proto as pb;
use tokio::sync::{mpsc, oneshot};

use super::core::Evidence;
use super::{Node, unix_ms};
use crate::service::convert;
use crate::service::mesh::attestation_pb;
use crate::store::{Op, StoredInput};

/// How long a new coordinator may take to adopt a job (it fetches the module and inputs).
const ADOPT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a verdict's announcement waits for a backup coordinator to have it durably; past it
/// the verdict is announced anyway (the backups are unreachable) and a warning logged.
pub const BACKUP_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Attestations per replication request.
const REPLICATE_BATCH: usize = 256;
/// For how long after a start a coordinator unknown to membership counts as alive (past it, a
/// peer nobody has heard of is taken for dead).
const UNKNOWN_IS_ALIVE_MS: u64 = 30_000;
/// How often a job led here with fewer than [`DEFAULT_COORDINATORS`] coordinators is offered
/// to more live peers.
const TOP_UP_EVERY: Duration = Duration::from_secs(30);
/// Attempts at one replication batch.
const REPLICATE_TRIES: u32 = 3;
/// How often the active coordinator of an unfinished job announces it again. Gossip sends a
/// record only a few times, and the one-shot sync to a peer that comes up can be lost on a
/// connection that died in a cut: without this, the two leaders of a healed split could go on
/// never hearing of each other (see `heal.rs`), the side that finished first no longer
/// announcing at all.
const REANNOUNCE_EVERY: Duration = Duration::from_secs(15);

/// When the periodic parts of [`Node::evaluate_roles`] last ran.
#[derive(Default)]
pub struct RoleTicks {
    top_up: Option<std::time::Instant>,
    reannounce: Option<std::time::Instant>,
}

/// Resolves to whether a backup coordinator has an attestation durably.
pub type BackupAck = Pin<Box<dyn Future<Output = bool> + Send>>;

/// One attestation on its way to one backup coordinator.
pub struct ReplItem {
    job: JobId,
    /// The backup coordinator it goes to.
    to: PeerId,
    item: pb::RecordedAttestation,
    ack: oneshot::Sender<bool>,
}

/// The bytes the sender of an adoption signs.
pub fn adopt_signing_bytes(req: &pb::AdoptRequest) -> Vec<u8> {
    signed_digest(b"spare.v1.adopt\0", &pb::AdoptRequest { signature: Vec::new(), ..req.clone() })
}

/// The bytes the sender of a replication batch signs.
pub fn replicate_signing_bytes(req: &pb::ReplicateRequest) -> Vec<u8> {
    signed_digest(b"spare.v1.replicate\0", &pb::ReplicateRequest { signature: Vec::new(), ..req.clone() })
}

fn signed_digest(tag: &[u8], msg: &impl prost::Message) -> Vec<u8> {
    let mut b = tag.to_vec();
    b.extend_from_slice(blake3::hash(&msg.encode_to_vec()).as_bytes());
    b
}

impl Node {
    /// Live peers as membership sees them, this one included.
    pub(crate) fn live_set(&self) -> HashSet<PeerId> {
        let mut live: HashSet<PeerId> = self
            .mesh()
            .membership
            .members()
            .into_iter()
            .filter(|(_, s)| *s != spare_coordinator::membership::MemberState::Dead)
            .map(|(m, _)| m.peer)
            .collect();
        live.insert(self.peer_id());
        live
    }

    /// Brings the job's coordinators up to [`DEFAULT_COORDINATORS`] live ones (this peer first)
    /// by handing the job to the highest-ranked live peers, and records the new list.
    pub(crate) async fn add_coordinators(&self, job: JobId) {
        let me = self.peer_id();
        let live = self.live_set();
        let Some(current) = self.core().jobs.get(&job).map(|m| m.coordinators.clone()) else { return };
        let mut keep: Vec<PeerId> = vec![me];
        keep.extend(current.iter().filter(|c| **c != me && live.contains(c)));
        let candidates: Vec<PeerId> = live.iter().copied().filter(|p| !keep.contains(p)).collect();
        let wanted = rendezvous::choose(&job, &keep, &candidates, DEFAULT_COORDINATORS);
        let new: Vec<PeerId> = wanted.iter().copied().filter(|p| !keep.contains(p)).collect();
        let mut adopted = Vec::new();
        if !new.is_empty() {
            match self.adopt_request(&job).await {
                Ok(req) => {
                    let tries = new.iter().map(|p| {
                        let req = req.clone();
                        async move { (*p, self.adopt_to(*p, req).await) }
                    });
                    for (p, r) in futures::future::join_all(tries).await {
                        match r {
                            Ok(()) => adopted.push(p),
                            Err(e) => tracing::warn!(job = %job.short(), peer = %p.short(), "could not hand the job over: {e:#}"),
                        }
                    }
                }
                Err(e) => tracing::warn!(job = %job.short(), "cannot describe the job for adoption: {e:#}"),
            }
        }
        let mut coordinators = keep;
        coordinators.extend(adopted.iter().copied());
        let Ok(Some(mut stored)) = self.store().job(&job) else { return };
        if coordinators == stored.coordinators {
            return;
        }
        tracing::info!(job = %job.short(), coordinators = coordinators.len(), "job coordinators");
        let durable = {
            let mut core = self.core();
            let Some(meta) = core.jobs.get_mut(&job) else { return };
            meta.set_coordinators(coordinators.clone());
            stored.coordinators = coordinators;
            self.announce(vec![Op::PutJob(job, stored)], Vec::new())
        };
        // Writes are durable in order: once this one is, everything recorded before the new
        // coordinators joined the list is in the store, and everything after streams to them.
        // A second hand-over of the stored attestations closes the gap between the two.
        let _ = durable.await;
        if !adopted.is_empty() {
            if let Ok(req) = self.adopt_request(&job).await {
                for p in &adopted {
                    if let Err(e) = self.adopt_to(*p, req.clone()).await {
                        tracing::warn!(job = %job.short(), peer = %p.short(), "catch-up of a new coordinator failed: {e:#}");
                    }
                }
            }
        }
    }

    /// The whole job, as a new coordinator needs it: spec, inputs, attestations (with the
    /// agreed outputs of final tasks).
    pub(crate) async fn adopt_request(&self, job: &JobId) -> anyhow::Result<pb::AdoptRequest> {
        self.adopt_request_of(job, false).await
    }

    /// [`Node::adopt_request`], with only the attestations of final tasks when `final_only`: a
    /// peer with attestations of its own (the other side of a split) could otherwise complete a
    /// quorum with ones that carry no output (outputs are kept only with verdicts).
    pub(crate) async fn adopt_request_of(&self, job: &JobId, final_only: bool) -> anyhow::Result<pb::AdoptRequest> {
        let stored = self.store().job(job)?.ok_or_else(|| anyhow::anyhow!("job {job} is not stored"))?;
        let (coordinators, cancelled) = {
            let core = self.core();
            let meta = core.jobs.get(job).ok_or_else(|| anyhow::anyhow!("job {job} is not held"))?;
            let cancelled = core.coord.job(job).is_some_and(|v| v.state == spare_coordinator::JobState::Cancelled);
            (meta.coordinators.clone(), cancelled)
        };
        let mut tasks = Vec::with_capacity(stored.spec.task_count as usize);
        for index in 0..stored.spec.task_count {
            let task = spare_coordinator::TaskId { job: *job, index };
            let source = match self.store().input(&task)? {
                Some(StoredInput::Inline(b)) => pb::task_input::Source::Inline(b),
                Some(StoredInput::Blob(id)) => pb::task_input::Source::BlobId(id.to_hex()),
                None => anyhow::bail!("task {task} has no stored input"),
            };
            tasks.push(pb::TaskInput { source: Some(source) });
        }
        let mut attestations = Vec::new();
        for rec in self.store().attestations(job)? {
            let att = rec.attestation;
            // The agreed output travels with every attestation that carries it, so whichever
            // completes the quorum on the other side brings it.
            let result = self.store().result(&att.task)?;
            if final_only && result.is_none() {
                continue;
            }
            let output = match result {
                Some(r) if r.verdict.agreed() == Some(&att.result) => r.output,
                _ => Vec::new(),
            };
            attestations.push(pb::RecordedAttestation {
                attestation: Some(attestation_pb(&att)),
                output,
                message: String::new(),
                solo: rec.solo,
            });
        }
        let timed_out = self.timed_out_tasks(job);
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
            coordinators: coordinators.iter().map(PeerId::to_hex).collect(),
            attestations,
            peer_id: self.peer_id().to_hex(),
            timestamp_ms: unix_ms(),
            signature: Vec::new(),
            timed_out,
        };
        req.signature = self.0.identity.sign(&adopt_signing_bytes(&req)).to_vec();
        Ok(req)
    }

    pub(crate) async fn adopt_to(&self, peer: PeerId, mut req: pb::AdoptRequest) -> anyhow::Result<()> {
        let addr = self.addr_of(&peer).ok_or_else(|| anyhow::anyhow!("no address"))?;
        // The new coordinator is named in the list it receives.
        if !req.coordinators.contains(&peer.to_hex()) {
            req.coordinators.push(peer.to_hex());
        }
        req.signature = self.0.identity.sign(&adopt_signing_bytes(&req)).to_vec();
        let mut client = self.0.clients.mesh(&addr).ok_or_else(|| anyhow::anyhow!("bad address {addr}"))?;
        let mut request = tonic::Request::new(req);
        request.set_timeout(ADOPT_TIMEOUT);
        client.adopt(request).await.map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
        Ok(())
    }

    /// Streams a recorded attestation to the job's other coordinators when this peer is the
    /// active one, with whether it was taken alone (`solo`: their reputation tables differ from
    /// this one's, so they replay the decision rather than remake it). Call with the core lock
    /// held (keeps the stream in recording order). The returned future resolves once one of them
    /// has it durably.
    pub(crate) fn replicate(
        &self,
        coordinators: &[PeerId],
        att: &Attestation,
        solo: bool,
        output: Option<&[u8]>,
    ) -> Option<BackupAck> {
        let me = self.peer_id();
        if coordinators.first() != Some(&me) || coordinators.len() < 2 {
            return None;
        }
        let item = pb::RecordedAttestation {
            attestation: Some(attestation_pb(att)),
            output: output.map(<[u8]>::to_vec).unwrap_or_default(),
            message: String::new(),
            solo,
        };
        let mut acks = Vec::new();
        for backup in &coordinators[1..] {
            let Some(addr) = self.addr_of(backup) else { continue };
            let (tx, rx) = oneshot::channel();
            let sender = {
                let mut reps = self.0.replicators.lock().unwrap_or_else(|p| p.into_inner());
                reps.retain(|_, tx| !tx.is_closed());
                reps.entry(addr.clone())
                    .or_insert_with(|| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        tokio::spawn(self.clone().replicator(addr.clone(), rx));
                        tx
                    })
                    .clone()
            };
            if sender.send(ReplItem { job: att.task.job, to: *backup, item: item.clone(), ack: tx }).is_ok() {
                acks.push(Box::pin(async move { if rx.await.unwrap_or(false) { Ok(()) } else { Err(()) } }));
            }
        }
        if acks.is_empty() {
            return Some(Box::pin(async { false }));
        }
        Some(Box::pin(async move { select_ok(acks).await.is_ok() }))
    }

    /// Sends replication batches to one backup coordinator, in order.
    async fn replicator(self, addr: String, mut rx: mpsc::UnboundedReceiver<ReplItem>) {
        let mut pending: Option<ReplItem> = None;
        loop {
            let first = match pending.take() {
                Some(i) => i,
                None => match rx.recv().await {
                    Some(i) => i,
                    None => return,
                },
            };
            let job = first.job;
            let mut batch = vec![first];
            while batch.len() < REPLICATE_BATCH {
                match rx.try_recv() {
                    Ok(i) if i.job == job => batch.push(i),
                    Ok(i) => {
                        pending = Some(i);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let mut req = pb::ReplicateRequest {
                job_id: job.to_hex(),
                items: batch.iter().map(|i| i.item.clone()).collect(),
                peer_id: self.peer_id().to_hex(),
                timestamp_ms: unix_ms(),
                signature: Vec::new(),
            };
            req.signature = self.0.identity.sign(&replicate_signing_bytes(&req)).to_vec();
            let mut ok = false;
            for attempt in 1..=REPLICATE_TRIES {
                let Some(mut client) = self.0.clients.mesh(&addr) else { break };
                match client.replicate(req.clone()).await {
                    Ok(_) => {
                        ok = true;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(%addr, attempt, "replication failed: {e}");
                        self.0.clients.forget(&addr);
                        if attempt < REPLICATE_TRIES {
                            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                        }
                    }
                }
            }
            if !ok {
                // Not resent in the stream (it moves on in order); a full adoption repairs it,
                // and everything queued behind it too, so a dead backup's queue is not tried
                // batch by batch.
                let mut failed = batch;
                failed.extend(pending.take());
                while let Ok(i) = rx.try_recv() {
                    failed.push(i);
                }
                let mut jobs: Vec<(JobId, PeerId)> = failed.iter().map(|i| (i.job, i.to)).collect();
                jobs.dedup();
                for (job, to) in jobs {
                    self.catch_up(job, to);
                }
                for i in failed {
                    let _ = i.ack.send(false);
                }
                continue;
            }
            for i in batch {
                let _ = i.ack.send(ok);
            }
        }
    }

    /// Records an attestation the active coordinator recorded (replication or adoption). The
    /// returned receiver resolves once it is durable here.
    /// `solo` is the active coordinator's decision that it took the attestation alone.
    pub(crate) fn record_replicated(
        &self,
        att: Attestation,
        solo: bool,
        output: &[u8],
        message: &str,
    ) -> Option<oneshot::Receiver<()>> {
        let mut core = self.core();
        match core.coord.restore_attestation_solo(att.clone(), solo) {
            Ok(Reported::Recorded | Reported::Decided) => {}
            // Already final, or already held: nothing to store.
            Ok(Reported::Late) => return None,
            Err(e) => {
                tracing::debug!("replicated attestation not recorded: {e}");
                return None;
            }
        }
        let ordinal = core.coord.task(&att.task).map_or(0, |t| t.attestations.saturating_sub(1));
        let evidence = Evidence { attestation: &att, output, message };
        let evidence = (!output.is_empty()).then_some(&evidence);
        let (mut ops, changes) = core.drain(evidence);
        ops.insert(0, Op::PutAttestation { ordinal, attestation: att.clone(), solo });
        let decided = changes.iter().any(|c| *c == super::Change::TaskFinal(att.task));
        // A verified task whose output is not empty must have come with it (see `heal.rs`).
        let lacks_output = ops.iter().any(|op| {
            matches!(op, Op::PutResult(t, r) if *t == att.task && r.output.is_empty()
                && matches!(&r.verdict, spare_coordinator::Verdict::Verified(_))
                && r.verdict.agreed().is_some_and(|a| a.output_hash != spare_coordinator::BlobId::of(&[])))
        });
        if lacks_output {
            tracing::warn!(task = %att.task, "a verdict was replayed without its output");
        }
        // Merged here from another coordinator while this one leads (a healed split): its
        // backups get it like anything else this peer records.
        let me = self.peer_id();
        let coordinators = core.jobs.get(&att.task.job).map(|m| m.coordinators.clone()).unwrap_or_default();
        let leads = core.leads(&att.task.job, &me);
        let backup = if leads { self.replicate(&coordinators, &att, solo, decided.then_some(output)) } else { None };
        Some(self.announce_with(ops, changes, backup))
    }

    /// Decides, for every job held, whether this peer is its active coordinator (the first live
    /// one in its list) or a standby, and takes over a job whose active coordinator died.
    pub(crate) async fn evaluate_roles(&self) {
        let mut roles = self.0.roles.lock().await;
        let me = self.peer_id();
        let mut live = self.live_set();
        // Soon after a start, a coordinator membership has not heard of yet is taken as alive:
        // taking a job over from a leader that is merely not known yet makes two leaders.
        if self.now() < UNKNOWN_IS_ALIVE_MS {
            let known: HashSet<PeerId> = self.mesh().membership.members().into_iter().map(|(m, _)| m.peer).collect();
            let unknown: Vec<PeerId> =
                self.core().jobs.values().flat_map(|m| m.coordinators.iter().copied()).filter(|c| !known.contains(c)).collect();
            live.extend(unknown);
        }
        let mut take_over = Vec::new();
        // Jobs this peer leads with fewer coordinators than wanted while more peers are live
        // (submitted while the mesh was small): topped up now and then, since each try hands
        // the whole job over.
        let top_up_due = roles.top_up.is_none_or(|t| t.elapsed() >= TOP_UP_EVERY);
        let mut top_up = Vec::new();
        let reannounce_due = roles.reannounce.is_none_or(|t| t.elapsed() >= REANNOUNCE_EVERY);
        let mut reannounce = Vec::new();
        {
            let mut core = self.core();
            let jobs: Vec<(JobId, Vec<PeerId>)> =
                core.jobs.iter().map(|(id, m)| (*id, m.coordinators.clone())).collect();
            for (job, coordinators) in jobs {
                if self.is_finished(&job) {
                    continue;
                }
                if !coordinators.contains(&me) {
                    // No longer among its coordinators: keep what is here, lease nothing.
                    core.coord.set_standby(&job, true);
                    continue;
                }
                let first_live = coordinators.iter().find(|c| live.contains(c));
                let active = first_live == Some(&me);
                let standby = core.coord.is_standby(&job);
                if active && (standby || coordinators.iter().any(|c| !live.contains(c))) {
                    // This peer first, before it leases anything: what it records from now on
                    // streams to the live backups at once (replacements are added below).
                    if let Some(meta) = core.jobs.get_mut(&job) {
                        let mut list = vec![me];
                        list.extend(coordinators.iter().copied().filter(|c| *c != me && live.contains(c)));
                        meta.set_coordinators(list);
                    }
                    core.coord.set_standby(&job, false);
                    take_over.push(job);
                } else if !active && !standby {
                    core.coord.set_standby(&job, true);
                } else if active {
                    if top_up_due && coordinators.len() < DEFAULT_COORDINATORS && live.len() > coordinators.len() {
                        top_up.push(job);
                    }
                    if reannounce_due {
                        reannounce.push(job);
                    }
                }
            }
        }
        if top_up_due {
            roles.top_up = Some(std::time::Instant::now());
        }
        if reannounce_due {
            roles.reannounce = Some(std::time::Instant::now());
        }
        for job in reannounce {
            self.publish_job(job, false);
        }
        for job in top_up {
            let before = self.core().jobs.get(&job).map(|m| m.coordinators.len());
            self.add_coordinators(job).await;
            if self.core().jobs.get(&job).map(|m| m.coordinators.len()) != before {
                self.publish_job(job, false);
            }
        }
        for job in take_over {
            tracing::info!(job = %job.short(), "active coordinator of the job");
            // The live backups kept (this peer is first already) heard the dead leader's stream
            // separately, so one may lack what this peer holds (a verdict replayed from here
            // would then stay pending there): each gets the whole job once. New ones get it
            // from `add_coordinators`.
            let kept: Vec<PeerId> = self.core().jobs.get(&job).map(|m| m.coordinators.iter().skip(1).copied().collect()).unwrap_or_default();
            // This peer first, dead coordinators replaced.
            self.add_coordinators(job).await;
            for backup in kept {
                self.catch_up(job, backup);
            }
            self.publish_job(job, false);
            self.0.work.notify_one();
        }
    }
}
