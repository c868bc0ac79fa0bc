//! Fuzzing what a peer decodes from the network's protobuf: every request its services take
//! and every reply it reads as a client (`prost` decoding), then the conversions into the
//! protocol's types (`wire::convert`: policies, attestations, ids) and the bytes signatures are
//! checked over (`wire::signing`). Property-based (proptest), with a bounded number of cases so
//! it runs in seconds in every `cargo test`: arbitrary bytes, and real, full messages mutated
//! (bytes replaced, inserted, cut). No input may panic, and none may make decoding allocate much
//! more than its own size (a counting allocator measures each decode's peak, per thread).


use prost::Message;
use proptest::prelude::*;
use spare_peer::wire::{convert, signing};
use spare_proto as pb;

#[path = "../../scheduler-free-coordinator/tests/counting/mod.rs"]
mod counting;

use counting::{cases, peak_of};

/// What decoding `len` bytes may allocate at most: each byte of a repeated field can become an
/// element struct of a few hundred bytes, plus a fixed allowance.
fn allowance(len: usize) -> usize {
    512 * len + (64 << 10)
}

// ---- the decoders -------------------------------------------------------------------------

/// Every id field of an attestation, converted; the attestation too.
fn attestation(a: &pb::Attestation) {
    let _ = convert::attestation(a);
}

fn ids(list: &[String]) {
    for s in list {
        let _ = convert::parse_id::<spare_protocol::PeerId>("peer_id", s);
    }
}

/// Decodes `bytes` as every message a peer takes from the network, and converts what decodes.
fn decode_all(bytes: &[u8]) {
    if let Ok(r) = pb::SubmitRequest::decode(bytes) {
        let _ = convert::policy(r.policy.as_ref());
        let _ = convert::parse_id::<spare_protocol::BlobId>("module_id", &r.module_id);
        for t in &r.tasks {
            if let Some(pb::task_input::Source::BlobId(s)) = &t.source {
                let _ = convert::parse_id::<spare_protocol::BlobId>("blob_id", s);
            }
        }
    }
    if let Ok(mut r) = pb::AdoptRequest::decode(bytes) {
        let _ = convert::policy(r.policy.as_ref());
        ids(&r.coordinators);
        r.attestations.iter().filter_map(|a| a.attestation.as_ref()).for_each(attestation);
        let _ = signing::adopt(&mut r);
    }
    if let Ok(mut r) = pb::ReplicateRequest::decode(bytes) {
        for e in &r.entries {
            if let Some(pb::replication_entry::Entry::Attestation(a)) = &e.entry {
                a.attestation.as_ref().map(attestation);
            }
        }
        let _ = signing::replicate(&mut r);
    }
    if let Ok(mut r) = pb::ReportRequest::decode(bytes) {
        r.items.iter().filter_map(|i| i.attestation.as_ref()).for_each(attestation);
        let _ = signing::report(&mut r);
    }
    if let Ok(r) = pb::LeaseRequest::decode(bytes)
        && let Ok(job) = convert::parse_id::<spare_protocol::JobId>("job_id", &r.job_id)
        && let Ok(receiver) = convert::parse_id::<spare_protocol::PeerId>("receiver", &r.receiver)
    {
        let _ = signing::lease(&job, r.max, r.timestamp_ms, &receiver, &r.request_nonce);
    }
    if let Ok(r) = pb::LeaseResponse::decode(bytes) {
        let _ = convert::parse_id::<spare_protocol::BlobId>("module_id", &r.module_id);
    }
    if let Ok(r) = pb::GossipRequest::decode(bytes) {
        let _ = signing::gossip(&r.data);
    }
    let _ = pb::PutBlobRequest::decode(bytes);
    let _ = pb::BlobChunk::decode(bytes);
    let _ = pb::CancelRequest::decode(bytes);
    let _ = pb::GetJobRequest::decode(bytes);
    let _ = pb::WatchRequest::decode(bytes);
    let _ = pb::ResultsRequest::decode(bytes);
    let _ = pb::JobStatus::decode(bytes);
    let _ = pb::JobEvent::decode(bytes);
    let _ = pb::TaskResult::decode(bytes);
    let _ = pb::ReportResponse::decode(bytes);
}

// ---- real messages to mutate --------------------------------------------------------------

fn hex32(b: u8) -> String {
    hex::encode([b; 32])
}

fn an_attestation(i: u32) -> pb::Attestation {
    pb::Attestation {
        job_id: hex32(1),
        index: i,
        peer_id: hex32(2),
        kind: pb::OutcomeKind::Exited as i32,
        exit_code: 0,
        output_hash: hex32(3),
        fuel_used: 7,
        signature: vec![9; 64],
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let policy = Some(pb::Policy { quorum: 2, max_replicas: 3, priority: 1, ..Default::default() });
    let tasks = vec![
        pb::TaskInput { source: Some(pb::task_input::Source::Inline(b"1 2".to_vec())) },
        pb::TaskInput { source: Some(pb::task_input::Source::BlobId(hex32(4))) },
    ];
    let recorded = |i| pb::RecordedAttestation { attestation: Some(an_attestation(i)), output: b"out".to_vec(), lone: i % 2 == 0, ..Default::default() };
    vec![
        pb::SubmitRequest { module_id: hex32(5), tasks: tasks.clone(), policy, args: vec!["a".into()], label: "l".into(), ..Default::default() }.encode_to_vec(),
        pb::AdoptRequest {
            job_id: hex32(1),
            origin: hex32(6),
            module_id: hex32(5),
            policy,
            tasks: tasks.clone(),
            coordinators: vec![hex32(6), hex32(7)],
            attestations: (0..3).map(recorded).collect(),
            timed_out: vec![pb::TimedOutTask { index: 1, misses: 2 }],
            owner: vec![8; 32],
            ..Default::default()
        }
        .encode_to_vec(),
        pb::ReplicateRequest {
            job_id: hex32(1),
            entries: vec![
                pb::ReplicationEntry { entry: Some(pb::replication_entry::Entry::Attestation(recorded(0))) },
                pb::ReplicationEntry {
                    entry: Some(pb::replication_entry::Entry::Lease(pb::ReplicatedLease { index: 1, peer_id: hex32(2), expires_in_ms: 5 })),
                },
            ],
            peer_id: hex32(6),
            timestamp_ms: 1,
            signature: vec![1; 64],
            receiver: hex32(7),
            request_nonce: vec![3; 16],
        }
        .encode_to_vec(),
        pb::ReportRequest {
            items: (0..3).map(|i| pb::ReportItem { attestation: Some(an_attestation(i)), output: b"o".to_vec(), ..Default::default() }).collect(),
            peer_id: hex32(2),
            released: vec![pb::Release { job_id: hex32(1), index: 4, deadline: true }],
            timestamp_ms: 1,
            signature: vec![2; 64],
            receiver: hex32(6),
            request_nonce: vec![4; 16],
        }
        .encode_to_vec(),
        pb::LeaseResponse {
            job_id: hex32(1),
            module_id: hex32(5),
            tasks: vec![pb::LeasedTask { index: 0, input: Some(tasks[0].clone()), expires_in_ms: 9 }],
            ..Default::default()
        }
        .encode_to_vec(),
        pb::GossipRequest { data: vec![0, 1, 2, 3], ..Default::default() }.encode_to_vec(),
    ]
}

fn mutated(pick: usize, flips: &[(usize, u8)], insert: Option<(usize, u8)>, cut: Option<usize>) -> Vec<u8> {
    let all = corpus();
    let mut f = all[pick % all.len()].clone();
    for (at, b) in flips {
        let n = f.len();
        f[at % n] = *b;
    }
    if let Some((at, b)) = insert {
        f.insert(at % (f.len() + 1), b);
    }
    if let Some(cut) = cut {
        f.truncate(cut % (f.len() + 1));
    }
    f
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let peak = peak_of(|| decode_all(bytes));
    prop_assert!(peak <= allowance(bytes.len()), "{} bytes in, {peak} bytes allocated", bytes.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_decode_or_fail_without_harm(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        check(&bytes)?;
    }

    #[test]
    fn mutated_real_messages(
        pick in any::<usize>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        insert in proptest::option::of((any::<usize>(), any::<u8>())),
        cut in proptest::option::of(any::<usize>()),
    ) {
        check(&mutated(pick, &flips, insert, cut))?;
    }

    #[test]
    fn huge_claimed_lengths_allocate_nothing_of_them(field in 1u32..20, len in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        // A length-delimited field claiming `len` bytes, with few behind it.
        let mut bytes = Vec::new();
        prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut bytes);
        prost::encoding::encode_varint(len, &mut bytes);
        bytes.extend(tail);
        check(&bytes)?;
    }
}

#[test]
fn the_corpus_decodes_and_converts() {
    let all = corpus();
    let adopt = pb::AdoptRequest::decode(all[1].as_slice()).expect("an adoption");
    for a in adopt.attestations.iter().filter_map(|a| a.attestation.as_ref()) {
        convert::attestation(a).expect("a well-formed attestation converts");
    }
    assert_eq!(convert::policy(adopt.policy.as_ref()).quorum, 2);
}
