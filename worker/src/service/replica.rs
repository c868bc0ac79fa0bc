//! The receiving side of replicated coordination: `MeshService.Adopt` (become another
//! coordinator of a job) and `MeshService.Replicate` (the active coordinator's stream of
//! recorded attestations). Both are signed by their sender, who must be a coordinator of the job.

use spare_protocol::{BlobId, JobId, JobSpec, PeerId, derive_job_id};
use spare_protocol::peer::takeover::Carried;
use spare_proto as pb;
use tonic::Status;

use crate::wire::convert::{self, parse_id};
use crate::identity;
use crate::wire::signing::{self, LEASE_CLOCK_SKEW_MS};
use crate::node::recorded::{apply, entries_of, record_all};
use crate::node::{JobMeta, NewJob, Node, unix_ms};
use crate::store::{StoredInput, StoredJob};

fn check_sender(peer_id: &str, timestamp_ms: u64, bytes: &[u8], signature: &[u8]) -> Result<PeerId, Status> {
    let sender: PeerId = parse_id("peer_id", peer_id)?;
    if unix_ms().abs_diff(timestamp_ms) > LEASE_CLOCK_SKEW_MS {
        return Err(Status::invalid_argument("timestamp_ms is too far from this peer's clock"));
    }
    if !identity::verify(&sender, bytes, signature) {
        return Err(Status::unauthenticated("not signed by peer_id"));
    }
    Ok(sender)
}

/// `MeshService.Adopt`.
pub async fn adopt(node: &Node, r: pb::AdoptRequest) -> Result<pb::AdoptResponse, Status> {
    let sender = check_sender(&r.peer_id, r.timestamp_ms, &signing::adopt(&r), &r.signature)?;
    super::mesh::first_and_for_me(node, sender, &r.receiver, &r.request_nonce)?;
    // Before the content is parsed and hashed again for the job id: a sender over its rate
    // costs this peer one signature check and no more.
    if !node.peer_allowed(sender) {
        return Err(Status::resource_exhausted("too many requests from this peer"));
    }
    let job: JobId = parse_id("job_id", &r.job_id)?;
    let origin: PeerId = parse_id("origin", &r.origin)?;
    if !identity::verify(&origin, &signing::job(&job), &r.origin_signature) {
        return Err(Status::unauthenticated("the job is not signed by its origin"));
    }
    let coordinators: Vec<PeerId> =
        r.coordinators.iter().map(|c| parse_id("coordinators", c)).collect::<Result<_, _>>()?;
    let me = node.peer_id();
    if !coordinators.contains(&sender) || !coordinators.contains(&me) {
        return Err(Status::invalid_argument("the coordinators must name the sender and this peer"));
    }
    let module: BlobId = parse_id("module_id", &r.module_id)?;
    let owner = match r.owner.len() {
        0 => None,
        32 => Some(PeerId(r.owner.as_slice().try_into().map_err(|_| Status::invalid_argument("owner is not 32 bytes"))?)),
        n => return Err(Status::invalid_argument(format!("owner is {n} bytes, not 32"))),
    };
    let mut inputs = Vec::with_capacity(r.tasks.len());
    for (i, t) in r.tasks.iter().enumerate() {
        inputs.push(match &t.source {
            Some(pb::task_input::Source::Inline(b)) => StoredInput::Inline(b.clone()),
            Some(pb::task_input::Source::BlobId(s)) => StoredInput::Blob(parse_id(&format!("tasks[{i}].blob_id"), s)?),
            None => return Err(super::job::no_source(i)),
        });
    }
    let new = NewJob {
        module,
        inputs,
        policy: convert::policy(r.policy.as_ref()),
        args: r.args.clone(),
        env: r.env.iter().map(|e| (e.key.clone(), e.value.clone())).collect(),
        label: r.label.clone(),
        nonce: r.nonce.clone(),
        from_addr: None,
        // Checked with the id below: the id is derived from the owner too.
        owner,
    };
    let content_digest = crate::node::digest(&new);
    if derive_job_id(&origin, &content_digest, &new.nonce) != job {
        return Err(Status::invalid_argument("the job id does not match its origin and content"));
    }
    let caps = *node.core().coord.caps();
    caps.check(&new.policy, new.inputs.len() as u64).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let held = node.core().jobs.contains_key(&job);
    if !held {
        // The volunteer's filters hold for jobs handed here as for jobs submitted here: a
        // coordinator that takes a job over runs its tasks on its own slots.
        crate::node::donation::serves(&node.config().donation, &new.module, &new.policy)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        let count = new.inputs.len() as u64;
        if !node.hold_tasks(count) {
            return Err(Status::resource_exhausted("this peer holds as many tasks as it takes"));
        }
        // Counted above; given back unless the job is taken here.
        let taken = take_job(node, job, origin, sender, &r, (new, content_digest), &coordinators).await;
        if !matches!(taken, Ok(true)) {
            node.unhold_tasks(count);
        }
        taken?;
    }
    // A new leader's sync: what this peer recorded that the adoption does not carry, in this
    // peer's order (only to a coordinator this peer names: the job is its to lead).
    let carried = Carried::of(
        r.attestations.iter().filter_map(|i| i.attestation.as_ref()).filter_map(|a| Some((a.index, parse_id::<PeerId>("peer_id", &a.peer_id).ok()?))),
    );
    let sync = r.sync && held && node.core().jobs.get(&job).is_some_and(|m| m.coordinators.contains(&sender));
    record_all(node, r.attestations).await?;
    node.record_timed_out(job, &r.timed_out).await.map_err(|e| Status::internal(format!("{e:#}")))?;
    let missing = if sync {
        node.recorded_attestations(&job, false, |a| carried.lacks(a)).map_err(|e| Status::internal(format!("{e:#}")))?
    } else {
        Vec::new()
    };
    // A job its coordinator cancelled (the sender must be one of this peer's coordinators of
    // it: anyone can sign an adoption naming itself).
    if held && r.cancelled && node.core().jobs.get(&job).is_some_and(|m| m.coordinators.contains(&sender)) {
        node.cancel(&job).await.map_err(|e| Status::internal(format!("{e:#}")))?;
    }
    if held {
        node.adopted_from(job, sender, coordinators);
    }
    Ok(pb::AdoptResponse { missing })
}

/// Fetches an adopted job's blobs and takes the job into the coordinator (in standby) and the
/// store. Returns whether this call took it (false: a concurrent adoption did).
async fn take_job(
    node: &Node,
    job: JobId,
    origin: PeerId,
    sender: PeerId,
    r: &pb::AdoptRequest,
    (new, content_digest): (NewJob, [u8; 32]),
    coordinators: &[PeerId],
) -> Result<bool, Status> {
    let module = new.module;
    let owner = new.owner;
    // The module and large inputs come from the sender, checked against their hashes.
    let addr = node.addr_of(&sender).ok_or_else(|| Status::unavailable("the sender's address is not known"))?;
    let fetch = |e: anyhow::Error| Status::unavailable(format!("fetching the job's blobs: {e:#}"));
    node.fetch_blob(&addr, &module, node.config().max_module_bytes as u64).await.map_err(fetch)?;
    for input in &new.inputs {
        if let StoredInput::Blob(id) = input {
            node.fetch_blob(&addr, id, node.config().max_blob_bytes).await.map_err(fetch)?;
        }
    }
    let spec = JobSpec {
        module,
        task_count: new.inputs.len() as u32,
        policy: new.policy,
        origin,
        submitted_at_ms: r.submitted_at_ms,
        label: new.label,
    };
    let stored = StoredJob {
        spec: spec.clone(),
        args: new.args,
        env: new.env,
        cancelled: r.cancelled,
        nonce: new.nonce,
        origin_signature: r.origin_signature.clone(),
        coordinators: coordinators.to_vec(),
        owner,
        content_digest: Some(content_digest),
    };
    {
        // Room first, so nothing is written for a job that cannot be taken.
        let core = node.core();
        if core.coord.open_jobs() >= core.coord.max_jobs() {
            return Err(Status::resource_exhausted(spare_protocol::SubmitError::Full(core.coord.max_jobs()).to_string()));
        }
    }
    let meta = JobMeta::of(&stored);
    // Durable, inputs in chunks and the job record last, before the coordinator holds it (as a
    // submission: `Node::submit`, finding 11).
    node.store_job(job, stored, new.inputs).await.map_err(|e| Status::internal(format!("storing the job: {e}")))?;
    let inserted = {
        let mut core = node.core();
        let inserted = !core.jobs.contains_key(&job);
        if inserted {
            core.coord.restore(job, spec, r.cancelled).map_err(|e| Status::resource_exhausted(e.to_string()))?;
            core.coord.set_standby(&job, true);
            while core.coord.poll_event().is_some() {}
            core.jobs.insert(job, meta);
        }
        inserted
    };
    tracing::info!(job = %job.short(), from = %sender.short(), "adopted a job as one of its coordinators");
    Ok(inserted)
}

/// `MeshService.Replicate`.
pub async fn replicate(node: &Node, r: pb::ReplicateRequest) -> Result<u32, Status> {
    let sender = check_sender(&r.peer_id, r.timestamp_ms, &signing::replicate(&r), &r.signature)?;
    super::mesh::first_and_for_me(node, sender, &r.receiver, &r.request_nonce)?;
    if !node.peer_allowed(sender) {
        return Err(Status::resource_exhausted("too many requests from this peer"));
    }
    let job: JobId = parse_id("job_id", &r.job_id)?;
    let coordinators = node.core().jobs.get(&job).map(|m| m.coordinators.clone());
    let Some(coordinators) = coordinators else {
        return Err(Status::not_found(format!("job {job} is not held here")));
    };
    if !coordinators.contains(&sender) {
        return Err(Status::permission_denied("the sender is not a coordinator of the job"));
    }
    let entries = entries_of(job, r.entries, node.now())?;
    apply(node, entries).await
}
