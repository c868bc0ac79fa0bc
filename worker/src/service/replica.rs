//! The receiving side of replicated coordination: `MeshService.Adopt` (become another
//! coordinator of a job) and `MeshService.Replicate` (the active coordinator's stream of
//! recorded attestations). Both are signed by their sender, who must be a coordinator of the job.

use spare_protocol::peer::host::{Adopt, AdoptKind, Streamed};
use spare_protocol::{BlobId, JobId, JobSpec, PeerId, derive_job_id};
use spare_proto as pb;
use tonic::Status;

use crate::wire::convert::{self, parse_id};
use crate::identity;
use crate::wire::signing::{self, LEASE_CLOCK_SKEW_MS};
use crate::wire::stream;
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
pub async fn adopt(node: &Node, mut r: pb::AdoptRequest) -> Result<pb::AdoptResponse, Status> {
    let bytes = signing::adopt(&mut r);
    let sender = check_sender(&r.peer_id, r.timestamp_ms, &bytes, &r.signature)?;
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
    let caps = *node.core().coord().caps();
    caps.check(&new.policy, new.inputs.len() as u64).map_err(|e| Status::invalid_argument(e.to_string()))?;
    // Every attestation checked before anything is taken: a malformed one refuses the whole.
    let mut log = Vec::with_capacity(r.attestations.len());
    // Taken out of the request (it can carry every output of the job); nothing below reads them.
    for item in std::mem::take(&mut r.attestations) {
        log.push(stream::recorded(item)?);
    }
    let log = node.signed_only(log);
    let held = node.core().hosts.holds(&job);
    let mut fresh = false;
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
        fresh = taken?;
    }
    let timed_out = r.timed_out.iter().map(|t| (t.index, t.misses)).collect();
    let kind = if r.sync { AdoptKind::Sync } else { AdoptKind::Join };
    let adopt = Adopt { from: sender, job, coordinators, log, kind, timed_out, cancelled: r.cancelled };
    let (missing, written) = node.with_hosts(|c, now| (c.hosts.handle_adopt(adopt, fresh, now), c.hosts.written()));
    // Answered once what it brought is durable here.
    node.durable(written).await?;
    let missing = node.answer_of(missing).map_err(|e| Status::internal(format!("{e:#}")))?;
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
        let coord = core.coord();
        if coord.open_jobs() >= coord.max_jobs() {
            return Err(Status::resource_exhausted(spare_protocol::SubmitError::Full(coord.max_jobs()).to_string()));
        }
    }
    let meta = JobMeta::of(&stored);
    // Durable, inputs in chunks and the job record last, before the coordinator holds it (as a
    // submission: `Node::submit`, finding 11).
    node.store_job(job, stored, new.inputs).await.map_err(|e| Status::internal(format!("storing the job: {e}")))?;
    // In standby until the role rules decide; the adoption itself is taken by the caller.
    let inserted = node.with_hosts(|c, _| {
        if c.hosts.holds(&job) {
            return Ok(false);
        }
        c.hosts.adopt(job, spec, coordinators.to_vec(), 0).map_err(|e| Status::resource_exhausted(e.to_string()))?;
        c.jobs.insert(job, meta);
        Ok::<_, Status>(true)
    })?;
    if inserted {
        tracing::info!(job = %job.short(), from = %sender.short(), "adopted a job as one of its coordinators");
    }
    Ok(inserted)
}

/// `MeshService.Replicate`.
pub async fn replicate(node: &Node, mut r: pb::ReplicateRequest) -> Result<u32, Status> {
    let bytes = signing::replicate(&mut r);
    let sender = check_sender(&r.peer_id, r.timestamp_ms, &bytes, &r.signature)?;
    super::mesh::first_and_for_me(node, sender, &r.receiver, &r.request_nonce)?;
    if !node.peer_allowed(sender) {
        return Err(Status::resource_exhausted("too many requests from this peer"));
    }
    let job: JobId = parse_id("job_id", &r.job_id)?;
    if !node.core().hosts.holds(&job) {
        return Err(Status::not_found(format!("job {job} is not held here")));
    }
    let entries = stream::entries(job, r.entries)?;
    // The attestations' signatures, in one batch: those that fail are dropped and counted.
    let atts: Vec<&spare_protocol::Attestation> =
        entries.iter().filter_map(|e| if let Streamed::Attestation(r, _) = e { Some(&*r.logged.att) } else { None }).collect();
    let mut valid = identity::verify_attestations(&atts).into_iter();
    let entries: Vec<Streamed> = entries
        .into_iter()
        .filter(|e| {
            let ok = !matches!(e, Streamed::Attestation(..)) || valid.next().unwrap_or(false);
            if !ok {
                node.count_invalid();
            }
            ok
        })
        .collect();
    let (recorded, written) = node.with_hosts(|c, now| (c.hosts.handle_replicate(sender, job, entries, now), c.hosts.written()));
    let recorded = recorded.map_err(|e| Status::permission_denied(e.to_string()))?;
    // Answered once what it recorded is durable here.
    node.durable(written).await?;
    Ok(recorded)
}
