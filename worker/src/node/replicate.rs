//! Replicated coordination. A job has up to three coordinators: its origin, then the live peers
//! that rank highest by rendezvous hashing of the job id. The first live one is *active*: it
//! leases and decides. It streams every attestation it records, in order, to the others
//! (`MeshService.Replicate`), which replay them into their own coordinator in standby, reach the
//! same verdicts, and store the same results; a verdict is announced only once one other
//! coordinator has it durably. When the active one dies, the next live coordinator takes over,
//! hands the job to a replacement (`MeshService.Adopt`) and announces the new coordinator list.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::future::select_ok;
use spare_protocol::membership::MemberState;
use spare_protocol::peer::adoption::{AdoptRound, Settled};
use spare_protocol::peer::replicators::Replicators;
use std::collections::HashMap;
use tokio::task::JoinSet;
use spare_protocol::peer::replication::{
    ADOPT_TIMEOUT_MS, BACKUP_ACK_TIMEOUT_MS, ReplicationBatch, Replicated,
};
use spare_protocol::peer::roles::{RoleChange, RoleView};
use spare_protocol::peer::takeover::Sync;
use spare_protocol::reachability::coordinators_in_role;
use spare_protocol::{Attestation, JobId, Lease, Millis, PeerId, Release, Reported, TaskId};
use spare_proto as pb;
use tokio::sync::{mpsc, oneshot};

use super::core::{Detail, Evidence};
use super::{Node, unix_ms};
use crate::wire::convert::{self, attestation_pb};
use crate::wire::signing;
use crate::store::{Op, StoredInput};

/// How long a verdict's announcement waits for a backup coordinator to have it durably.
pub const BACKUP_ACK_TIMEOUT: Duration = Duration::from_millis(BACKUP_ACK_TIMEOUT_MS);

/// Resolves to whether a backup coordinator has an attestation durably.
pub type BackupAck = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Where entries go to the replicator: the backup's address and the entry.
pub type ReplSender = mpsc::UnboundedSender<(String, ReplItem)>;

/// One entry of the replication stream on its way to one backup coordinator.
pub struct ReplItem {
    job: JobId,
    /// The backup coordinator it goes to.
    to: PeerId,
    entry: pb::ReplicationEntry,
    /// Told whether the backup holds it durably (attestations only).
    ack: Option<oneshot::Sender<bool>>,
}

impl ReplItem {
    /// The output bytes it carries.
    fn bytes(&self) -> usize {
        match &self.entry.entry {
            Some(pb::replication_entry::Entry::Attestation(a)) => a.output.len(),
            _ => 0,
        }
    }
}

/// The stream entry of a recorded attestation: with whether it was taken alone, the run's output,
/// and its detail when it decided the task (see [`Node::replicate`]).
pub(crate) fn recorded_entry(att: &Attestation, lone: bool, output: &[u8], decided: Option<&Detail>) -> pb::replication_entry::Entry {
    let detail = decided.cloned().unwrap_or_default();
    pb::replication_entry::Entry::Attestation(pb::RecordedAttestation {
        attestation: Some(attestation_pb(att)),
        output: output.to_vec(),
        message: detail.message,
        lone,
        stderr: detail.stderr,
    })
}

impl Node {
    /// Live peers as membership sees them, this one included.
    pub(crate) fn live_set(&self) -> std::collections::HashSet<PeerId> {
        let mut live: std::collections::HashSet<PeerId> = self
            .mesh()
            .membership
            .members()
            .into_iter()
            .filter(|(_, s)| *s != spare_protocol::membership::MemberState::Dead)
            .map(|(m, _)| m.peer)
            .collect();
        live.insert(self.peer_id());
        live
    }

    /// Brings the job's coordinators up to strength by an [`AdoptRound`] (this peer first)
    /// by handing the job to the highest-ranked live peers, and records the new list.
    pub(crate) async fn add_coordinators(&self, job: JobId) {
        let me = self.peer_id();
        let live = self.live_set();
        let Some(current) = self.core().jobs.get(&job).map(|m| m.coordinators.clone()) else { return };
        let mut keep: Vec<PeerId> = vec![me];
        keep.extend(current.iter().filter(|c| **c != me && live.contains(c) && self.may_coordinate(c)));
        // Only peers others can dial coordinate (and serve the job's blobs).
        let candidates: Vec<PeerId> = live.iter().copied().filter(|p| !keep.contains(p) && self.may_coordinate(p)).collect();
        let mut round = AdoptRound::new(job, keep, &candidates);
        let mut settled = round.settle_now();
        if settled.is_none() {
            match self.adopt_request(&job).await {
                Ok(req) => {
                    let tries = round.asked().iter().map(|&p| {
                        let mut req = req.clone();
                        req.coordinators = round.list_for(p).iter().map(PeerId::to_hex).collect();
                        async move { (p, self.adopt_to(p, req).await) }
                    });
                    let answers = futures::future::join_all(tries).await;
                    for (p, r) in answers {
                        if let Err(e) = &r {
                            tracing::warn!(job = %job.short(), peer = %p.short(), "could not hand the job over: {e:#}");
                        }
                        settled = settled.or(round.handle_answer(p, r.is_ok()));
                    }
                }
                Err(e) => {
                    tracing::warn!(job = %job.short(), "cannot describe the job for adoption: {e:#}");
                    for p in round.asked().to_vec() {
                        settled = settled.or(round.handle_answer(p, false));
                    }
                }
            }
        }
        let Some(Settled { coordinators, catch_up: adopted }) = settled else { return };
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
        if !adopted.is_empty()
            && let Ok(req) = self.adopt_request(&job).await {
                for p in &adopted {
                    if let Err(e) = self.adopt_to(*p, req.clone()).await {
                        tracing::warn!(job = %job.short(), peer = %p.short(), "catch-up of a new coordinator failed: {e:#}");
                    }
                }
            }
    }

    /// The attestations of `job` recorded here that `wanted`, in recording order, as an adoption
    /// carries them; when `final_only`, without those of tasks not final whose output is no
    /// longer in hand.
    pub(crate) fn recorded_attestations(
        &self,
        job: &JobId,
        final_only: bool,
        wanted: impl Fn(&Attestation) -> bool,
    ) -> anyhow::Result<Vec<pb::RecordedAttestation>> {
        let mut attestations = Vec::new();
        for rec in self.store().attestations(job)? {
            let att = rec.attestation;
            if !wanted(&att) {
                continue;
            }
            // The agreed output travels with every attestation that carries it, so whichever
            // completes the quorum on the other side brings it.
            let (output, message, stderr) = match self.store().result(&att.task)? {
                Some(r) if r.verdict.agreed() == Some(&att.result) => (r.output, r.message, r.stderr),
                Some(_) => Default::default(),
                // Not final: its output, if still in hand, goes with it (known gap 14).
                None => match self.core().outputs.get(&att.task, &att.result.output_hash) {
                    Some(o) => (o.to_vec(), String::new(), String::new()),
                    None if final_only && att.result.output_hash != spare_protocol::BlobId::of(&[]) => continue,
                    None => Default::default(),
                },
            };
            attestations.push(pb::RecordedAttestation { attestation: Some(attestation_pb(&att)), output, message, lone: rec.lone, stderr });
        }
        Ok(attestations)
    }

    /// The whole job, as a new coordinator needs it: spec, inputs, attestations (with the
    /// agreed outputs of final tasks).
    pub(crate) async fn adopt_request(&self, job: &JobId) -> anyhow::Result<pb::AdoptRequest> {
        self.adopt_request_of(job, false).await
    }

    /// [`Node::adopt_request`], when `final_only` without the attestations of tasks not final
    /// whose output is no longer in hand (held only in memory, see [`PendingOutputs`]): a peer
    /// with attestations of its own (the other side of a split) could otherwise complete a
    /// quorum with one that carries no output.
    ///
    /// [`PendingOutputs`]: spare_protocol::peer::outputs::PendingOutputs
    pub(crate) async fn adopt_request_of(&self, job: &JobId, final_only: bool) -> anyhow::Result<pb::AdoptRequest> {
        let stored = self.store().job(job)?.ok_or_else(|| anyhow::anyhow!("job {job} is not stored"))?;
        let (coordinators, cancelled) = {
            let core = self.core();
            let meta = core.jobs.get(job).ok_or_else(|| anyhow::anyhow!("job {job} is not held"))?;
            let cancelled = core.coord.job(job).is_some_and(|v| v.state == spare_protocol::JobState::Cancelled);
            (meta.coordinators.clone(), cancelled)
        };
        let mut tasks = Vec::with_capacity(stored.spec.task_count as usize);
        for index in 0..stored.spec.task_count {
            let task = spare_protocol::TaskId { job: *job, index };
            let source = match self.store().input(&task)? {
                Some(StoredInput::Inline(b)) => pb::task_input::Source::Inline(b),
                Some(StoredInput::Blob(id)) => pb::task_input::Source::BlobId(id.to_hex()),
                None => anyhow::bail!("task {task} has no stored input"),
            };
            tasks.push(pb::TaskInput { source: Some(source) });
        }
        let attestations = self.recorded_attestations(job, final_only, |_| true)?;
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
            sync: false,
            owner: stored.owner.map(|o| o.as_bytes().to_vec()).unwrap_or_default(),
            // Set for each receiver by `adopt_to`.
            receiver: String::new(),
            request_nonce: Vec::new(),
        };
        req.signature = self.0.identity.sign(&signing::adopt(&req)).to_vec();
        Ok(req)
    }

    pub(crate) async fn adopt_to(&self, peer: PeerId, mut req: pb::AdoptRequest) -> anyhow::Result<pb::AdoptResponse> {
        let addr = self.addr_of(&peer).ok_or_else(|| anyhow::anyhow!("no address"))?;
        // The new coordinator is named in the list it receives.
        if !req.coordinators.contains(&peer.to_hex()) {
            req.coordinators.push(peer.to_hex());
        }
        req.receiver = peer.to_hex();
        req.request_nonce = signing::request_nonce();
        req.signature = self.0.identity.sign(&signing::adopt(&req)).to_vec();
        let mut client = self.0.clients.mesh(&addr).ok_or_else(|| anyhow::anyhow!("bad address {addr}"))?;
        let mut request = tonic::Request::new(req);
        request.set_timeout(Duration::from_millis(ADOPT_TIMEOUT_MS));
        let answer = client.adopt(request).await.map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
        Ok(answer.into_inner())
    }

    /// Streams a recorded attestation to the job's other coordinators when this peer is the
    /// active one, with whether it was taken alone (`lone`: their reputation tables differ from
    /// this one's, so they replay the decision rather than remake it), the run's output (so a
    /// backup that decides the task at another attestation has the bytes), and its detail when
    /// it decided the task. Call with the core lock held (keeps the stream in
    /// recording order). The returned future resolves once one of them has it durably.
    pub(crate) fn replicate(
        &self,
        coordinators: &[PeerId],
        att: &Attestation,
        lone: bool,
        output: &[u8],
        decided: Option<&Detail>,
    ) -> Option<BackupAck> {
        self.stream(coordinators, att.task.job, recorded_entry(att, lone, output, decided), true)
    }

    /// Streams a lease this peer gave another peer as the job's active coordinator to its
    /// backups (see `Granted::to_stream`), so that a backup that takes over takes the worker's
    /// report instead of running the task again. Call with the core lock held.
    pub(crate) fn replicate_lease(&self, coordinators: &[PeerId], lease: &Lease, now: Millis) {
        let entry = pb::ReplicatedLease {
            index: lease.task.index,
            peer_id: lease.peer.to_hex(),
            expires_in_ms: lease.expires_at.saturating_sub(now),
        };
        drop(self.stream(coordinators, lease.task.job, pb::replication_entry::Entry::Lease(entry), false));
    }

    /// Streams a replica handed back to this peer as the job's active coordinator to its
    /// backups, so their copies of the lease end too. Call with the core lock held.
    pub(crate) fn replicate_release(&self, coordinators: &[PeerId], task: TaskId, peer: PeerId, why: Release) {
        if peer == self.peer_id() {
            return;
        }
        let entry =
            pb::ReplicatedRelease { index: task.index, peer_id: peer.to_hex(), deadline: why == Release::Deadline };
        drop(self.stream(coordinators, task.job, pb::replication_entry::Entry::Release(entry), false));
    }

    /// Queues `entry` for every backup of a job this peer leads (`coordinators`, this peer
    /// first). With `ack`, the returned future resolves once one of them has it durably.
    pub(crate) fn stream(
        &self,
        coordinators: &[PeerId],
        job: JobId,
        entry: pb::replication_entry::Entry,
        ack: bool,
    ) -> Option<BackupAck> {
        let me = self.peer_id();
        if coordinators.first() != Some(&me) || coordinators.len() < 2 {
            return None;
        }
        let entry = pb::ReplicationEntry { entry: Some(entry) };
        let mut acks = Vec::new();
        let sender = self.replicator();
        for backup in &coordinators[1..] {
            let Some(addr) = self.addr_of(backup) else { continue };
            let (tx, rx) = if ack { let (t, r) = oneshot::channel(); (Some(t), Some(r)) } else { (None, None) };
            if sender.send((addr, ReplItem { job, to: *backup, entry: entry.clone(), ack: tx })).is_ok()
                && let Some(rx) = rx
            {
                acks.push(Box::pin(async move { if rx.await.unwrap_or(false) { Ok(()) } else { Err(()) } }));
            }
        }
        if !ack {
            return None;
        }
        if acks.is_empty() {
            return Some(Box::pin(async { false }));
        }
        Some(Box::pin(async move { select_ok(acks).await.is_ok() }))
    }

    /// The replicator's queue; the replicator is started if it is not running.
    fn replicator(&self) -> ReplSender {
        let mut slot = self.0.replicator.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().replicator_loop(rx));
        *slot = Some(tx.clone());
        tx
    }

    /// The one owner of this peer's [`Replicators`]: queues what is streamed to each backup,
    /// sends each batch they say is due (to every backup at once, one batch out per backup, in
    /// order), and gives each answer back; a stream given up is repaired by catch-ups. Ends once
    /// its queue closes and everything queued went out or was given up.
    async fn replicator_loop(self, mut rx: mpsc::UnboundedReceiver<(String, ReplItem)>) {
        let mut streams: Replicators<String, ReplItem> = Replicators::default();
        let mut out: JoinSet<bool> = JoinSet::new();
        // Which backup each send is for, so a send that panicked is answered too.
        let mut sending: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut open = true;
        loop {
            // What is queued joins the streams first, so batches are as large as they can be.
            while let Ok((addr, i)) = rx.try_recv() {
                let bytes = i.bytes();
                if let Some(Replicated::Failed { items, .. }) = streams.push(addr, i.job, i, bytes) {
                    self.gave_up(items);
                }
            }
            let now = self.now();
            while let Some((addr, batch)) = streams.poll_batch(now) {
                let req = self.replicate_request(batch);
                let (node, to, attempt) = (self.clone(), addr.clone(), batch.attempt);
                let handle = out.spawn(async move { node.send_replication(&to, req, attempt).await });
                sending.insert(handle.id(), addr);
            }
            if !open && streams.is_idle() && out.is_empty() {
                return;
            }
            let nap = streams.poll_timeout(now).map(|at| Duration::from_millis(at.saturating_sub(now)));
            tokio::select! {
                m = rx.recv(), if open => match m {
                    Some((addr, i)) => {
                        let bytes = i.bytes();
                        if let Some(Replicated::Failed { items, .. }) = streams.push(addr, i.job, i, bytes) {
                            self.gave_up(items);
                        }
                    }
                    None => open = false,
                },
                Some(done) = out.join_next_with_id(), if !out.is_empty() => {
                    let (id, taken) = match done {
                        Ok((id, taken)) => (id, taken),
                        Err(e) => (e.id(), false),
                    };
                    let Some(addr) = sending.remove(&id) else { continue };
                    match streams.handle_sent(&addr, taken, self.now()) {
                        Some(Replicated::Taken(items)) => {
                            for ack in items.into_iter().filter_map(|i| i.ack) {
                                let _ = ack.send(true);
                            }
                        }
                        Some(Replicated::Failed { items, .. }) => self.gave_up(items),
                        Some(Replicated::Retry(_)) | None => {}
                    }
                },
                _ = tokio::time::sleep(nap.unwrap_or_default()), if nap.is_some() => {}
            }
        }
    }

    /// The stream gave up on `items` (a batch failed its tries, or the backup fell too far
    /// behind): they are not resent in the stream, which moves on in order; a whole adoption
    /// repairs each of their jobs at that backup.
    fn gave_up(&self, items: Vec<ReplItem>) {
        let mut jobs: Vec<(JobId, PeerId)> = items.iter().map(|i| (i.job, i.to)).collect();
        jobs.sort();
        jobs.dedup();
        for (job, to) in jobs {
            self.catch_up(job, to);
        }
        for ack in items.into_iter().filter_map(|i| i.ack) {
            let _ = ack.send(false);
        }
    }

    /// The signed request of one replication batch.
    fn replicate_request(&self, batch: &ReplicationBatch<ReplItem>) -> pb::ReplicateRequest {
        let mut req = pb::ReplicateRequest {
            job_id: batch.job.to_hex(),
            entries: batch.items.iter().map(|i| i.entry.clone()).collect(),
            peer_id: self.peer_id().to_hex(),
            timestamp_ms: unix_ms(),
            signature: Vec::new(),
            // Every item of a batch goes to the same backup.
            receiver: batch.items.first().map(|i| i.to.to_hex()).unwrap_or_default(),
            request_nonce: signing::request_nonce(),
        };
        req.signature = self.0.identity.sign(&signing::replicate(&req)).to_vec();
        req
    }

    /// Sends one signed replication batch; true when the backup holds it durably.
    async fn send_replication(&self, addr: &str, req: pb::ReplicateRequest, attempt: u32) -> bool {
        let Some(mut client) = self.0.clients.mesh(addr) else { return false };
        match client.replicate(req).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(%addr, attempt, "replication failed: {e}");
                self.0.clients.forget(addr);
                false
            }
        }
    }

    /// Records an attestation the active coordinator recorded (replication or adoption). The
    /// returned receiver resolves once it is durable here.
    /// `lone` is the active coordinator's decision that it took the attestation alone.
    pub(crate) fn record_replicated(
        &self,
        att: Attestation,
        lone: bool,
        output: &[u8],
        detail: &Detail,
    ) -> Option<oneshot::Receiver<()>> {
        let mut core = self.core();
        // No honest run outputs more than the job allows: one that does is refused wherever it comes from.
        if spare_protocol::peer::report::too_long(&core.coord, &att, output) {
            tracing::warn!(task = %att.task, bytes = output.len(), "replicated output longer than the job allows; not recorded");
            return None;
        }
        match core.coord.restore_attestation_lone(att.clone(), lone) {
            Ok(Reported::Recorded | Reported::Decided) => {}
            // Already final, or already held: nothing to store.
            Ok(Reported::Late) => return None,
            Err(e) => {
                tracing::debug!("replicated attestation not recorded: {e}");
                return None;
            }
        }
        let ordinal = core.coord.task(&att.task).map_or(0, |t| t.attestations.saturating_sub(1));
        // The output and detail count only if this attestation decides its task with the agreed
        // result (see `Core::drain`); otherwise they come empty.
        // Checked against its hash when it came (empty when the sender had none).
        core.outputs.keep(att.task, att.result.output_hash, output);
        let evidence = Evidence { att: &att, output, detail };
        let (mut ops, changes) = core.drain(Some(&evidence));
        ops.insert(0, Op::PutAttestation { ordinal, attestation: att.clone(), lone });
        let decided = changes.contains(&super::Change::TaskFinal(att.task));
        // A verified task whose output is not empty must have come with it (see `heal.rs`).
        let lacks_output = ops.iter().any(|op| {
            matches!(op, Op::PutResult(t, r) if *t == att.task && r.output.is_empty()
                && matches!(&r.verdict, spare_protocol::Verdict::Verified(_))
                && r.verdict.agreed().is_some_and(|a| a.output_hash != spare_protocol::BlobId::of(&[])))
        });
        if lacks_output {
            tracing::warn!(task = %att.task, "a verdict was replayed without its output");
        }
        // Merged here from another coordinator while this one leads (a healed split): its
        // backups get it like anything else this peer records.
        let me = self.peer_id();
        let coordinators = core.jobs.get(&att.task.job).map(|m| m.coordinators.clone()).unwrap_or_default();
        let leads = core.leads(&att.task.job, &me);
        let backup = if leads { self.replicate(&coordinators, &att, lone, output, decided.then_some(detail)) } else { None };
        Some(self.announce_with(ops, changes, backup))
    }

    /// Holds a lease the active coordinator gave (its replication stream).
    pub(crate) fn record_lease(&self, lease: Lease) {
        self.core().coord.restore_lease(lease);
    }

    /// Ends a lease handed back to the active coordinator (its replication stream); a task
    /// failed by deadline misses is stored. The receiver resolves once that is durable.
    pub(crate) fn record_release(&self, task: TaskId, peer: PeerId, why: Release) -> Option<oneshot::Receiver<()>> {
        let mut core = self.core();
        core.coord.release(task, peer, why);
        let (ops, changes) = core.drain(None);
        (!ops.is_empty() || !changes.is_empty()).then(|| self.announce(ops, changes))
    }

    /// Decides, for every job held, whether this peer is its active coordinator (the first live
    /// one in its list) or a standby, and takes over a job whose active coordinator died, by
    /// the protocol's role rules.
    pub(crate) async fn evaluate_roles(&self) {
        let mut roles = self.0.roles.lock().await;
        let me = self.peer_id();
        let now = self.now();
        let states: std::collections::HashMap<PeerId, MemberState> =
            self.mesh().membership.members().into_iter().map(|(m, s)| (m.peer, s)).collect();
        let live_peers = 1 + states.values().filter(|s| **s != MemberState::Dead).count();
        let mut take_over = Vec::new();
        let mut top_up = Vec::new();
        let mut reannounce = Vec::new();
        // Peers whose adverts say unreachable, this one too when it found itself so (looked up
        // before the core is locked: adverts live in the mesh).
        let barred: std::collections::HashSet<PeerId> =
            states.keys().chain(std::iter::once(&me)).filter(|p| !self.may_coordinate(p)).copied().collect();
        {
            let mut core = self.core();
            let clock = roles.clone();
            let is_live = |p: &PeerId| clock.counts_as_live(states.get(p).copied(), now);
            // A coordinator whose advert says unreachable (chosen before it found out) is left
            // out: it stands by, the next takes over, the active one drops it at a top-up.
            let held: Vec<(JobId, Vec<PeerId>, bool)> = core
                .jobs
                .iter()
                .filter(|(id, _)| !self.is_finished(id))
                .map(|(id, m)| {
                    let may = |p: &PeerId| !barred.contains(p);
                    let list = coordinators_in_role(&m.coordinators, may, |p| *p == me || is_live(p));
                    (*id, list.unwrap_or_else(|| m.coordinators.clone()), core.coord.is_standby(id))
                })
                .collect();
            let views = held.iter().map(|(job, list, standby)| RoleView { job: *job, coordinators: list, standby: *standby });
            for change in roles.evaluate(me, views, is_live, live_peers, now) {
                match change {
                    RoleChange::StandBy(job) => core.coord.set_standby(&job, true),
                    RoleChange::TakeOver { job, list } => {
                        // This peer first, before it leases anything: what it records from now
                        // on streams to the live backups at once (replacements are added below).
                        // It leads (leaves standby) once the backups kept answered its sync.
                        if let Some(meta) = core.jobs.get_mut(&job) {
                            meta.set_coordinators(list);
                        }
                        take_over.push(job);
                    }
                    RoleChange::TopUp(job) => top_up.push(job),
                    RoleChange::Reannounce(job) => reannounce.push(job),
                }
            }
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
            // The live backups kept (this peer is first already) heard the dead leader's stream
            // separately: each gets the whole job and answers with what it recorded that this
            // peer lacks (`spare_protocol::peer::takeover`). If one brought anything, the others
            // may lack it: each is caught up once more. New ones get it from `add_coordinators`.
            let (kept, catch_up) = self.sync_backups(job).await;
            {
                // A newer ad may have put another peer first meanwhile: then this one stands by.
                let mut core = self.core();
                if core.jobs.get(&job).is_none_or(|m| m.coordinators.first() != Some(&me)) {
                    continue;
                }
                core.coord.set_standby(&job, false);
            }
            tracing::info!(job = %job.short(), "active coordinator of the job");
            // Dead coordinators replaced.
            self.add_coordinators(job).await;
            if catch_up {
                for backup in kept {
                    self.catch_up(job, backup);
                }
            }
            self.publish_job(job, false);
            self.0.work.notify_one();
        }
    }

    /// A takeover's sync: sends each backup kept the whole job marked `sync` and records what
    /// each answers with, until all answered or
    /// [`spare_protocol::peer::takeover::SYNC_TIMEOUT_MS`] passed. Gives the backups
    /// asked, and whether they need catching up again.
    async fn sync_backups(&self, job: JobId) -> (Vec<PeerId>, bool) {
        let list = self.core().jobs.get(&job).map(|m| m.coordinators.clone()).unwrap_or_default();
        let Some(mut sync) = Sync::start(&list, self.now()) else { return (Vec::new(), false) };
        let asked = sync.asked().to_vec();
        let req = match self.adopt_request(&job).await {
            Ok(mut req) => {
                req.sync = true;
                req
            }
            Err(e) => {
                tracing::warn!(job = %job.short(), "could not sync with the backups: {e:#}");
                return (asked, true);
            }
        };
        let mut answers: JoinSet<(PeerId, anyhow::Result<pb::AdoptResponse>)> = JoinSet::new();
        for &b in &asked {
            let (node, req) = (self.clone(), req.clone());
            answers.spawn(async move { (b, node.adopt_to(b, req).await) });
        }
        let wait = Duration::from_millis(sync.poll_timeout().saturating_sub(self.now()));
        let _ = tokio::time::timeout(wait, async {
            while let Some(Ok((from, answer))) = answers.join_next().await {
                let pulled = match answer {
                    Ok(a) => match super::recorded::record_all(self, a.missing).await {
                        Ok(n) => Some(n as usize),
                        Err(e) => {
                            tracing::warn!(job = %job.short(), peer = %from.short(), "a backup's sync answer was refused: {e}");
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!(job = %job.short(), peer = %from.short(), "sync with a backup failed: {e:#}");
                        None
                    }
                };
                if sync.handle_answer(from, pulled) {
                    break;
                }
            }
        })
        .await;
        // Unanswered ones may lack what the others gave: they are caught up too.
        let unanswered = !answers.is_empty();
        if unanswered {
            tracing::warn!(job = %job.short(), "leading without every backup's sync answer");
        }
        (asked, sync.needs_catch_up() || unanswered)
    }
}
