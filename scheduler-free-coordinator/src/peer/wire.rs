//! The sizes of the peer's messages, computed field by field from the protobuf encodings the
//! real peer sends (`proto/proto/spare/v1/mesh.proto`, `blob.proto`), so a byte count is exact
//! for the message bodies without linking prost: each function sizes one whole message from
//! what the peer's machines hand their driver (a report batch, a replication batch, an
//! adoption). Ids travel as 64 hex characters, signatures are 64 bytes, and proto3 leaves out
//! fields at their default value, as prost does. The simulator counts its bytes with them.
//!
//! What is estimated: the transport around each message. Every RPC costs
//! [`REQUEST_OVERHEAD`] bytes on top of its request body (HTTP/2 HEADERS with HPACK-indexed
//! headers, a DATA frame header, the 5-byte gRPC prefix) and [`REPLY_OVERHEAD`] on top of its
//! reply (HEADERS, DATA, trailers with `grpc-status`). TCP/IP headers, TLS records (22 bytes
//! each), HTTP/2 PING/WINDOW_UPDATE frames and connection set-up are not counted.

use crate::peer::host::{AdoptKind, Logged, ReportItem, Streamed};
use crate::{Coordinator, Detail, JobSpec, Limits, Release};

/// Transport bytes per RPC request beyond the message body (an estimate, see above).
pub const REQUEST_OVERHEAD: u64 = 45;
/// Transport bytes per RPC reply beyond the message body (an estimate, see above).
pub const REPLY_OVERHEAD: u64 = 55;

const HEX_ID: u64 = 64;
const SIGNATURE: u64 = 64;

/// Bytes of `v` as a protobuf varint.
fn varint(v: u64) -> u64 {
    u64::from((64 - v.leading_zeros()).max(1)).div_ceil(7)
}

/// A length-delimited field (tag < 16) of `len` bytes; proto3 omits an empty one.
fn bytes_field(len: u64) -> u64 {
    if len == 0 { 0 } else { 1 + varint(len) + len }
}

/// A field with a tag of 16 or more (two bytes of key), length-delimited.
fn bytes_field_hi(len: u64) -> u64 {
    if len == 0 { 0 } else { 2 + varint(len) + len }
}

/// A nested message field of `len` bytes; present even when empty, as prost writes a set `Some`.
fn message_field(len: u64) -> u64 {
    1 + varint(len) + len
}

/// A varint field (tag < 16); proto3 omits a zero.
fn varint_field(v: u64) -> u64 {
    if v == 0 { 0 } else { 1 + varint(v) }
}

/// `GossipRequest{data}`.
pub fn gossip_request(data: u64) -> u64 {
    // Only the data: the TLS link names the sender, so gossip carries no id or signature.
    bytes_field(data)
}

/// The `receiver` (the addressee's id) and `request_nonce` (16 bytes) every signed request
/// carries against replays, at tags below 16.
fn addressed() -> u64 {
    bytes_field(HEX_ID) + bytes_field(16)
}

/// `LeaseRequest{peer_id, job_id, max, timestamp_ms, signature, receiver, request_nonce}`.
pub fn lease_request(max: u32, timestamp_ms: u64) -> u64 {
    2 * bytes_field(HEX_ID) + varint_field(u64::from(max)) + varint_field(timestamp_ms) + bytes_field(SIGNATURE) + addressed()
}

/// `Limits{memory_bytes, fuel, timeout_ms, output_bytes}`.
fn limits(l: &Limits) -> u64 {
    varint_field(l.memory_bytes) + varint_field(l.fuel) + varint_field(l.timeout_ms) + varint_field(l.output_bytes)
}

/// `LeaseResponse{job_id, module_id, limits, tasks[], note}` with inline inputs of `input` bytes;
/// `tasks` holds each task's `(index, expires_in_ms)`.
pub fn lease_reply(l: &Limits, tasks: &[(u32, u64)], input: u64, note: Option<&str>) -> u64 {
    let task = |&(index, expires): &(u32, u64)| {
        let input_msg = message_field(bytes_field(input));
        message_field(varint_field(u64::from(index)) + input_msg + varint_field(expires))
    };
    let note = note.map_or(0, |n| n.len() as u64);
    2 * bytes_field(HEX_ID) + message_field(limits(l)) + tasks.iter().map(task).sum::<u64>() + bytes_field(note)
}

/// `Attestation{job_id, index, peer_id, kind, exit_code, output_hash, fuel_used, signature}` of a
/// successful run (kind `EXITED` = 1, exit code 0).
fn attestation(index: u32, fuel: u64) -> u64 {
    3 * bytes_field(HEX_ID) + varint_field(u64::from(index)) + varint_field(1) + varint_field(fuel) + bytes_field(SIGNATURE)
}

/// `ReportRequest{items[], peer_id, released[], timestamp_ms, signature, receiver, request_nonce}`
/// carrying `items`.
pub fn report_request(items: &[ReportItem], timestamp_ms: u64) -> u64 {
    let item = |i: &ReportItem| match i {
        ReportItem::Attest(a, out, d) => {
            message_field(message_field(attestation(a.task.index, a.fuel_used)) + bytes_field(out.len() as u64) + detail(d))
        }
        ReportItem::Release(..) => 0,
    };
    let release = |i: &ReportItem| match i {
        ReportItem::Attest(..) => 0,
        ReportItem::Release(t, why) => message_field(bytes_field(HEX_ID) + release_fields(t.index, *why)),
    };
    items.iter().map(item).sum::<u64>()
        + bytes_field(HEX_ID)
        + items.iter().map(release).sum::<u64>()
        + varint_field(timestamp_ms)
        + bytes_field(SIGNATURE)
        + addressed()
}

/// The `index` and `deadline` fields of a release.
fn release_fields(index: u32, why: Release) -> u64 {
    varint_field(u64::from(index)) + varint_field(u64::from(why == Release::Deadline))
}

/// `ReportResponse{accepted, rejected}`.
pub fn report_reply(accepted: u32, rejected: u32) -> u64 {
    varint_field(u64::from(accepted)) + varint_field(u64::from(rejected))
}

/// `RecordedAttestation{attestation, output, message, lone}` of a successful run with `out`
/// bytes of output (empty unless it carries the canonical output); `message` is always empty.
fn recorded_attestation(l: &Logged, out: u64) -> u64 {
    message_field(attestation(l.att.task.index, l.att.fuel_used)) + bytes_field(out) + varint_field(u64::from(l.lone))
}

/// The `message` and `stderr` fields of a run's [`Detail`] (absent when empty).
fn detail(d: &Detail) -> u64 {
    bytes_field(d.message.len() as u64) + bytes_field(d.stderr.len() as u64)
}

/// The sizes of `log`'s `RecordedAttestation`s as `coord` sends them, each output `out` bytes:
/// an attestation goes with its output while its task is not final (the peer's outputs in
/// hand), and after if it carries the agreed result.
pub fn recorded(coord: &Coordinator, log: &[Logged], out: u64) -> Vec<u64> {
    log.iter()
        .map(|l| {
            let task = coord.task(&l.att.task);
            let carries = task.is_some_and(|t| !t.verdict.is_final() || t.verdict.agreed() == Some(&l.att.result));
            recorded_attestation(l, if carries { out } else { 0 })
        })
        .collect()
}

/// `ReplicationEntry{oneof entry}` around one `RecordedAttestation`, `ReplicatedLease{index,
/// peer_id, expires_in_ms}` or `ReplicatedRelease{index, peer_id, deadline}` (tags 1–3), each
/// attestation's output `out` bytes: a set oneof member is written even when empty.
fn replication_entry(e: &Streamed, out: u64) -> u64 {
    message_field(match e {
        Streamed::Attestation(r, _) => recorded_attestation(&r.logged, out) + detail(&r.detail),
        Streamed::Lease { task, expires_in, .. } => varint_field(u64::from(task.index)) + bytes_field(HEX_ID) + varint_field(*expires_in),
        Streamed::Release { task, why, .. } => bytes_field(HEX_ID) + release_fields(task.index, *why),
    })
}

/// `ReplicateRequest{job_id, entries[], peer_id, timestamp_ms, signature, receiver, request_nonce}`
/// carrying `items`, each attestation's output `out` bytes.
pub fn replicate_request(items: &[Streamed], out: u64, timestamp_ms: u64) -> u64 {
    let entries = items.iter().map(|e| message_field(replication_entry(e, out))).sum::<u64>();
    bytes_field(HEX_ID) + entries + bytes_field(HEX_ID) + varint_field(timestamp_ms) + bytes_field(SIGNATURE) + addressed()
}

/// `ReplicateResponse{recorded}`.
pub fn replicate_reply(recorded: u32) -> u64 {
    varint_field(u64::from(recorded))
}

/// `Policy{quorum, max_replicas, limits, priority, adaptive}`.
fn policy(p: &crate::Policy) -> u64 {
    let adaptive = p.adaptive.map_or(0, |a| {
        message_field(varint_field(u64::from(a.min_agreed)) + 1 + varint(u64::from(a.spot_check_per_mille)))
    });
    varint_field(u64::from(p.quorum))
        + varint_field(u64::from(p.max_replicas))
        + message_field(limits(&p.limits))
        + varint_field(p.priority as u64)
        + adaptive
}

/// `AdoptRequest`: the job as submitted (`spec`, a 16-byte nonce, no args or env, its tasks'
/// inline inputs of `input` bytes each), its `coordinators`, every recorded attestation (`items`,
/// sizes from [`recorded`]), the sender's signature, and what the adoption is for.
pub fn adopt_request(spec: &JobSpec, input: u64, coordinators: usize, items: &[u64], kind: AdoptKind, timestamp_ms: u64) -> u64 {
    let task = message_field(bytes_field(input));
    bytes_field(HEX_ID) // job_id
        + bytes_field(HEX_ID) // origin
        + bytes_field(SIGNATURE) // origin_signature
        + bytes_field(16) // nonce
        + bytes_field(HEX_ID) // module_id
        + message_field(policy(&spec.policy))
        + bytes_field(spec.label.len() as u64)
        + varint_field(spec.submitted_at_ms)
        + u64::from(spec.task_count) * task
        + coordinators as u64 * bytes_field(HEX_ID)
        + items.iter().map(|&i| message_field(i)).sum::<u64>()
        + bytes_field(HEX_ID) // peer_id
        + if timestamp_ms == 0 { 0 } else { 2 + varint(timestamp_ms) }
        + bytes_field_hi(SIGNATURE)
        + bytes_field_hi(HEX_ID) // receiver
        + bytes_field_hi(16) // request_nonce
        + if kind == AdoptKind::Sync { 2 } else { 0 }
}

/// `AdoptResponse{missing}`: a sync's answer.
pub fn adopt_response(items: &[u64]) -> u64 {
    items.iter().map(|&i| message_field(i)).sum()
}

/// `GetBlobRequest{blob_id}`.
pub fn blob_request() -> u64 {
    bytes_field(HEX_ID)
}

/// The stream of `BlobChunk{chunk}` replies for a blob of `len` bytes, 1 MiB per chunk, each
/// chunk its own gRPC message (5-byte prefix) after the first.
pub fn blob_reply(len: u64) -> u64 {
    const CHUNK: u64 = 1 << 20;
    let chunks = len.div_ceil(CHUNK).max(1);
    let last = len - (chunks - 1) * CHUNK;
    (chunks - 1) * (bytes_field(CHUNK) + 5) + bytes_field(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobId, PeerId, TaskId};

    #[test]
    fn varints_and_fields() {
        assert_eq!(varint(0), 1);
        assert_eq!(varint(127), 1);
        assert_eq!(varint(128), 2);
        assert_eq!(varint(u64::MAX), 10);
        assert_eq!(bytes_field(64), 66);
        assert_eq!(varint_field(0), 0);
        // peer id, job id, max 3, a 2023 timestamp, signature, receiver, request nonce.
        assert_eq!(lease_request(3, 1_700_000_000_000), 66 + 66 + 2 + 7 + 66 + 66 + 18);
        // An empty replication batch: job id, peer id, timestamp, signature, receiver, nonce.
        assert_eq!(replicate_request(&[], 32, 1_700_000_000_000), 66 + 66 + 7 + 66 + 66 + 18);
        assert_eq!(bytes_field_hi(64), 67);
    }

    #[test]
    fn replication_entries() {
        let (peer, task) = (PeerId([1; 32]), |index| TaskId { job: JobId([2; 32]), index });
        // Entry: tag + length of the lease: index 3 (1 + 1), peer id (66), 14,950 ms left (1 + 2).
        let lease = Streamed::Lease { task: task(3), peer, expires_in: 14_950 };
        assert_eq!(replication_entry(&lease, 0), 2 + (2 + 66 + 3));
        // Index 0 and `deadline` false are left out.
        assert_eq!(replication_entry(&Streamed::Release { task: task(0), peer, why: Release::Abandoned }, 0), 2 + 66);
        assert_eq!(replication_entry(&Streamed::Release { task: task(200), peer, why: Release::Deadline }, 0), 2 + (3 + 66 + 2));
        // Request: tag + length + entry.
        assert_eq!(replicate_request(&[lease], 0, 1_700_000_000_000), 66 + (2 + 2 + 71) + 66 + 7 + 66 + 66 + 18);
    }
}
