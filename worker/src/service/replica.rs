//! The receiving side of replicated coordination: `MeshService.Adopt` (become another
//! coordinator of a job) and `MeshService.Replicate` (the active coordinator's stream of
//! recorded attestations). Both are signed by their sender, who must be a coordinator of the job.

use spare_protocol::{Attestation, BlobId, JobId, JobSpec, Lease, PeerId, Release, TaskId, derive_job_id};
use spare_proto as pb;
use tokio::sync::oneshot;
use tonic::Status;

use crate::wire::convert::{self, parse_id};
use crate::wire::convert::attestation;
use crate::identity;
use crate::wire::signing::{self, LEASE_CLOCK_SKEW_MS};
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

/// One entry of a coordinator's stream, checked.
enum Entry {
    Attestation(Attestation, Box<pb::RecordedAttestation>),
    Lease(Lease),
    Release(TaskId, PeerId, Release),
}

/// Checks and records attestations a coordinator recorded; resolves once they are durable.
async fn record_all(node: &Node, items: Vec<pb::RecordedAttestation>) -> Result<u32, Status> {
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        entries.push(attestation_entry(item)?);
    }
    apply(node, entries).await
}

fn attestation_entry(item: pb::RecordedAttestation) -> Result<Entry, Status> {
    let att = item.attestation.as_ref().ok_or_else(|| Status::invalid_argument("an item has no attestation")).and_then(attestation)?;
    if !item.output.is_empty() && BlobId::of(&item.output) != att.result.output_hash {
        return Err(Status::invalid_argument(format!("the output of {} does not hash to its attestation", att.task)));
    }
    Ok(Entry::Attestation(att, Box::new(item)))
}

/// Checks the entries of a replication batch for `job`, received `now`.
fn entries_of(job: JobId, raw: Vec<pb::ReplicationEntry>, now: spare_protocol::Millis) -> Result<Vec<Entry>, Status> {
    use pb::replication_entry::Entry as E;
    let mut out = Vec::with_capacity(raw.len());
    for e in raw {
        out.push(match e.entry {
            Some(E::Attestation(item)) => attestation_entry(item)?,
            Some(E::Lease(l)) => Entry::Lease(Lease {
                task: TaskId { job, index: l.index },
                peer: parse_id("lease.peer_id", &l.peer_id)?,
                expires_at: now.saturating_add(l.expires_in_ms),
            }),
            Some(E::Release(r)) => Entry::Release(
                TaskId { job, index: r.index },
                parse_id("release.peer_id", &r.peer_id)?,
                if r.deadline { Release::Deadline } else { Release::Abandoned },
            ),
            None => return Err(Status::invalid_argument("an entry is empty")),
        });
    }
    Ok(out)
}

/// Applies a coordinator's entries in order (attestation signatures checked as one batch);
/// resolves once the attestations recorded are durable, with how many were.
async fn apply(node: &Node, entries: Vec<Entry>) -> Result<u32, Status> {
    let refs: Vec<&Attestation> = entries.iter().filter_map(|e| if let Entry::Attestation(a, _) = e { Some(a) } else { None }).collect();
    let mut valid = identity::verify_attestations(&refs).into_iter();
    let mut last: Option<oneshot::Receiver<()>> = None;
    let mut recorded = 0;
    for e in entries {
        match e {
            Entry::Attestation(att, item) => {
                if !valid.next().unwrap_or(false) {
                    node.count_invalid();
                    continue;
                }
                let detail = crate::node::Detail::bounded(&item.message, &item.stderr);
                if let Some(rx) = node.record_replicated(att, item.lone, &item.output, &detail) {
                    recorded += 1;
                    last = Some(rx);
                }
            }
            Entry::Lease(lease) => node.record_lease(lease),
            Entry::Release(task, peer, why) => {
                if let Some(rx) = node.record_release(task, peer, why) {
                    last = Some(rx);
                }
            }
        }
    }
    // Announcements (and so writes) complete in order: the last one covers all.
    if let Some(rx) = last {
        rx.await.map_err(|_| Status::internal("the attestations could not be stored"))?;
    }
    Ok(recorded)
}

/// `MeshService.Adopt`.
pub async fn adopt(node: &Node, r: pb::AdoptRequest) -> Result<(), Status> {
    let sender = check_sender(&r.peer_id, r.timestamp_ms, &signing::adopt(&r), &r.signature)?;
    super::mesh::first_and_for_me(node, sender, &r.receiver, &r.request_nonce)?;
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

    if !node.peer_allowed(sender) {
        return Err(Status::resource_exhausted("too many requests from this peer"));
    }
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
    record_all(node, r.attestations).await?;
    node.record_timed_out(job, &r.timed_out).await.map_err(|e| Status::internal(format!("{e:#}")))?;
    // A job its coordinator cancelled (the sender must be one of this peer's coordinators of
    // it: anyone can sign an adoption naming itself).
    if held && r.cancelled && node.core().jobs.get(&job).is_some_and(|m| m.coordinators.contains(&sender)) {
        node.cancel(&job).await.map_err(|e| Status::internal(format!("{e:#}")))?;
    }
    if held {
        node.adopted_from(job, sender, coordinators);
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    //! Fuzzing the conversion of a replication stream's entries (from the network) into the
    //! protocol's types: any entry is taken or refused, never a panic.

    use super::*;
    use proptest::prelude::*;

    /// An id field as a peer might send it: a real 64-hex id, or any text.
    fn id_text() -> impl Strategy<Value = String> {
        prop_oneof![any::<[u8; 32]>().prop_map(hex::encode), proptest::collection::vec(any::<char>(), 0..70).prop_map(|c| c.into_iter().collect())]
    }

    fn entry() -> impl Strategy<Value = pb::ReplicationEntry> {
        use pb::replication_entry::Entry as E;
        let attestation = (id_text(), any::<u32>(), id_text(), -1i32..9, id_text(), proptest::collection::vec(any::<u8>(), 0..64), any::<bool>())
            .prop_map(|(job_id, index, peer_id, kind, output_hash, output, lone)| {
                let attestation = pb::Attestation { job_id, index, peer_id, kind, output_hash, signature: vec![0; 64], ..Default::default() };
                E::Attestation(pb::RecordedAttestation { attestation: Some(attestation), output, lone, ..Default::default() })
            });
        let lease = (any::<u32>(), id_text(), any::<u64>())
            .prop_map(|(index, peer_id, expires_in_ms)| E::Lease(pb::ReplicatedLease { index, peer_id, expires_in_ms }));
        let release = (any::<u32>(), id_text(), any::<bool>())
            .prop_map(|(index, peer_id, deadline)| E::Release(pb::ReplicatedRelease { index, peer_id, deadline }));
        prop_oneof![
            4 => attestation.prop_map(|e| pb::ReplicationEntry { entry: Some(e) }),
            2 => lease.prop_map(|e| pb::ReplicationEntry { entry: Some(e) }),
            2 => release.prop_map(|e| pb::ReplicationEntry { entry: Some(e) }),
            1 => Just(pb::ReplicationEntry { entry: None }),
        ]
    }

    /// Cases per property: `n`, or `PROPTEST_CASES` to fuzz longer by hand.
    fn cases(n: u32) -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(1000), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn replication_entries_are_taken_whole_or_refused(raw in proptest::collection::vec(entry(), 0..12), now in any::<u64>()) {
            let n = raw.len();
            let empty = raw.iter().any(|e| e.entry.is_none());
            match entries_of(JobId([1; 32]), raw, now) {
                Ok(entries) => {
                    prop_assert_eq!(entries.len(), n);
                    prop_assert!(!empty, "an empty entry is never taken");
                }
                Err(e) => prop_assert_eq!(e.code(), tonic::Code::InvalidArgument),
            }
        }
    }
}
