//! The coordinator side's messages on the wire: a `Replicate` batch's entries and an `Adopt`'s
//! recorded attestations, to and from the protocol's [`Streamed`] and [`Recorded`]. Whatever
//! comes from the network is checked here (ids, an output against its hash); signatures are the
//! caller's, checked in one batch.

use std::sync::Arc;

use spare_proto as pb;
use spare_protocol::peer::host::{Logged, Recorded, Streamed};
use spare_protocol::{BlobId, Detail, JobId, PeerId, Release, TaskId};
use tonic::Status;

use super::convert::{attestation, attestation_pb, parse_id};

/// One attestation a coordinator recorded, as `Replicate` and `Adopt` carry it (its output
/// moved, not copied: a stream batch carries every output it recorded).
pub fn recorded_pb(r: Recorded) -> pb::RecordedAttestation {
    pb::RecordedAttestation {
        attestation: Some(attestation_pb(&r.logged.att)),
        output: r.output,
        message: r.detail.message,
        lone: r.logged.lone,
        stderr: r.detail.stderr,
    }
}

/// A recorded attestation from another coordinator, checked but for its signature: its output,
/// when it comes with one, must hash to what it attests.
pub fn recorded(item: pb::RecordedAttestation) -> Result<Recorded, Status> {
    let att = item.attestation.as_ref().ok_or_else(|| Status::invalid_argument("an item has no attestation")).and_then(attestation)?;
    if !item.output.is_empty() && BlobId::of(&item.output) != att.result.output_hash {
        return Err(Status::invalid_argument(format!("the output of {} does not hash to its attestation", att.task)));
    }
    let detail = Detail::bounded(&item.message, &item.stderr);
    Ok(Recorded { logged: Logged { att: Arc::new(att), lone: item.lone }, output: item.output, detail })
}

/// One entry of the active coordinator's stream, as `Replicate` carries it.
pub fn entry_pb(e: Streamed) -> pb::ReplicationEntry {
    use pb::replication_entry::Entry as E;
    let entry = match e {
        Streamed::Attestation(r, _) => E::Attestation(recorded_pb(r)),
        Streamed::Lease { task, peer, expires_in } => {
            E::Lease(pb::ReplicatedLease { index: task.index, peer_id: peer.to_hex(), expires_in_ms: expires_in })
        }
        Streamed::Release { task, peer, why } => {
            E::Release(pb::ReplicatedRelease { index: task.index, peer_id: peer.to_hex(), deadline: why == Release::Deadline })
        }
    };
    pb::ReplicationEntry { entry: Some(entry) }
}

/// The entries of a replication batch for `job`, checked but for signatures (an attestation's
/// place in the sender's log is not sent: 0).
pub fn entries(job: JobId, raw: Vec<pb::ReplicationEntry>) -> Result<Vec<Streamed>, Status> {
    use pb::replication_entry::Entry as E;
    let mut out = Vec::with_capacity(raw.len());
    for e in raw {
        out.push(match e.entry {
            Some(E::Attestation(item)) => {
                let r = recorded(item)?;
                if r.logged.att.task.job != job {
                    return Err(Status::invalid_argument("an entry attests a task of another job"));
                }
                Streamed::Attestation(r, 0)
            }
            Some(E::Lease(l)) => Streamed::Lease {
                task: TaskId { job, index: l.index },
                peer: parse_id::<PeerId>("lease.peer_id", &l.peer_id)?,
                expires_in: l.expires_in_ms,
            },
            Some(E::Release(r)) => Streamed::Release {
                task: TaskId { job, index: r.index },
                peer: parse_id::<PeerId>("release.peer_id", &r.peer_id)?,
                why: if r.deadline { Release::Deadline } else { Release::Abandoned },
            },
            None => return Err(Status::invalid_argument("an entry is empty")),
        });
    }
    Ok(out)
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
        fn replication_entries_are_taken_whole_or_refused(raw in proptest::collection::vec(entry(), 0..12)) {
            let n = raw.len();
            let empty = raw.iter().any(|e| e.entry.is_none());
            match entries(JobId([1; 32]), raw) {
                Ok(taken) => {
                    prop_assert_eq!(taken.len(), n);
                    prop_assert!(!empty, "an empty entry is never taken");
                }
                Err(e) => prop_assert_eq!(e.code(), tonic::Code::InvalidArgument),
            }
        }

        #[test]
        fn an_entry_converts_back_to_what_was_sent(index in any::<u32>(), peer in any::<[u8; 32]>(), expires_in in any::<u64>(), deadline in any::<bool>()) {
            let job = JobId([1; 32]);
            let task = TaskId { job, index };
            let why = if deadline { Release::Deadline } else { Release::Abandoned };
            let sent = [Streamed::Lease { task, peer: PeerId(peer), expires_in }, Streamed::Release { task, peer: PeerId(peer), why }];
            let back = entries(job, sent.iter().cloned().map(entry_pb).collect()).expect("taken");
            prop_assert_eq!(format!("{back:?}"), format!("{sent:?}"));
        }
    }
}
