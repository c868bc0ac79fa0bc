//! Recording what another coordinator recorded: the attestations of an adoption or a takeover
//! sync's answer, and the entries of a replication stream, each checked (signatures in one
//! batch, outputs against their hashes) and recorded in the sender's order.

use spare_protocol::{Attestation, BlobId, JobId, Lease, PeerId, Release, TaskId};
use spare_proto as pb;
use tokio::sync::oneshot;
use tonic::Status;

use super::Node;
use crate::identity;
use crate::wire::convert::{attestation, parse_id};

/// One entry of a coordinator's stream, checked.
pub(crate) enum Entry {
    Attestation(Attestation, Box<pb::RecordedAttestation>),
    Lease(Lease),
    Release(TaskId, PeerId, Release),
}

/// Checks and records attestations a coordinator recorded; resolves once they are durable.
pub(crate) async fn record_all(node: &Node, items: Vec<pb::RecordedAttestation>) -> Result<u32, Status> {
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
pub(crate) fn entries_of(job: JobId, raw: Vec<pb::ReplicationEntry>, now: spare_protocol::Millis) -> Result<Vec<Entry>, Status> {
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
pub(crate) async fn apply(node: &Node, entries: Vec<Entry>) -> Result<u32, Status> {
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
