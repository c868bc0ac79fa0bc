//! Message sizes, computed field by field from the protobuf encodings the real peer sends
//! (`proto/proto/spare/v1/mesh.proto`, `blob.proto`), so the byte counts are exact for the
//! message bodies without linking prost. Ids travel as 64 hex characters, signatures are 64
//! bytes, and proto3 leaves out fields at their default value, as prost does.
//!
//! What is estimated: the transport around each message. Every RPC costs
//! [`REQUEST_OVERHEAD`] bytes on top of its request body (HTTP/2 HEADERS with HPACK-indexed
//! headers, a DATA frame header, the 5-byte gRPC prefix) and [`REPLY_OVERHEAD`] on top of its
//! reply (HEADERS, DATA, trailers with `grpc-status`). TCP/IP headers, TLS records (22 bytes
//! each), HTTP/2 PING/WINDOW_UPDATE frames and connection set-up are not counted.

/// Transport bytes per RPC request beyond the message body (an estimate, see above).
pub const REQUEST_OVERHEAD: u64 = 45;
/// Transport bytes per RPC reply beyond the message body (an estimate, see above).
pub const REPLY_OVERHEAD: u64 = 55;

const HEX_ID: u64 = 64;
const SIGNATURE: u64 = 64;

/// Bytes of `v` as a protobuf varint.
pub fn varint(v: u64) -> u64 {
    u64::from((64 - v.leading_zeros()).max(1)).div_ceil(7)
}

/// A length-delimited field (tag < 16) of `len` bytes; proto3 omits an empty one.
pub fn bytes_field(len: u64) -> u64 {
    if len == 0 { 0 } else { 1 + varint(len) + len }
}

/// A nested message field of `len` bytes; present even when empty, as prost writes a set `Some`.
pub fn message_field(len: u64) -> u64 {
    1 + varint(len) + len
}

/// A varint field (tag < 16); proto3 omits a zero.
pub fn varint_field(v: u64) -> u64 {
    if v == 0 { 0 } else { 1 + varint(v) }
}

/// `GossipRequest{data}`.
pub fn gossip_request(data: u64) -> u64 {
    // Only the data: the TLS link names the sender, so gossip carries no id or signature.
    bytes_field(data)
}

/// `LeaseRequest{peer_id, job_id, max, timestamp_ms, signature}`.
pub fn lease_request(max: u32, timestamp_ms: u64) -> u64 {
    2 * bytes_field(HEX_ID) + varint_field(u64::from(max)) + varint_field(timestamp_ms) + bytes_field(SIGNATURE)
}

/// `Limits{memory_bytes, fuel, timeout_ms, output_bytes}`.
pub fn limits(l: &crate::Limits) -> u64 {
    varint_field(l.memory_bytes) + varint_field(l.fuel) + varint_field(l.timeout_ms) + varint_field(l.output_bytes)
}

/// `LeaseResponse{job_id, module_id, limits, tasks[], note}` with inline inputs of `input` bytes;
/// `tasks` holds each task's `(index, expires_in_ms)`.
pub fn lease_reply(limits_len: u64, tasks: &[(u32, u64)], input: u64, note: u64) -> u64 {
    let task = |&(index, expires): &(u32, u64)| {
        let input_msg = message_field(bytes_field(input));
        message_field(varint_field(u64::from(index)) + input_msg + varint_field(expires))
    };
    2 * bytes_field(HEX_ID) + message_field(limits_len) + tasks.iter().map(task).sum::<u64>() + bytes_field(note)
}

/// `Attestation{job_id, index, peer_id, kind, exit_code, output_hash, fuel_used, signature}` of a
/// successful run (kind `EXITED` = 1, exit code 0).
pub fn attestation(index: u32, fuel: u64) -> u64 {
    3 * bytes_field(HEX_ID) + varint_field(u64::from(index)) + varint_field(1) + varint_field(fuel) + bytes_field(SIGNATURE)
}

/// `ReportRequest{items[], peer_id, released[], timestamp_ms, signature}`; `items` holds each
/// attestation's `(index, fuel, output bytes)`, `released` each release's `(index, deadline)`.
pub fn report_request(items: &[(u32, u64, u64)], released: &[(u32, bool)], timestamp_ms: u64) -> u64 {
    let item = |&(index, fuel, out): &(u32, u64, u64)| message_field(message_field(attestation(index, fuel)) + bytes_field(out));
    let release =
        |&(index, deadline): &(u32, bool)| message_field(bytes_field(HEX_ID) + varint_field(u64::from(index)) + varint_field(u64::from(deadline)));
    items.iter().map(item).sum::<u64>()
        + bytes_field(HEX_ID)
        + released.iter().map(release).sum::<u64>()
        + varint_field(timestamp_ms)
        + bytes_field(SIGNATURE)
}

/// `ReportResponse{accepted, rejected}`.
pub fn report_reply(accepted: u32, rejected: u32) -> u64 {
    varint_field(u64::from(accepted)) + varint_field(u64::from(rejected))
}

/// `RecordedAttestation{attestation, output, message, lone}` of a successful run with `out`
/// bytes of output (empty unless it carries the canonical output); `message` is always empty.
pub fn recorded_attestation(index: u32, fuel: u64, out: u64, lone: bool) -> u64 {
    message_field(attestation(index, fuel)) + bytes_field(out) + varint_field(u64::from(lone))
}

/// `ReplicatedLease{index, peer_id, expires_in_ms}`.
pub fn replicated_lease(index: u32, expires_in_ms: u64) -> u64 {
    varint_field(u64::from(index)) + bytes_field(HEX_ID) + varint_field(expires_in_ms)
}

/// `ReplicatedRelease{index, peer_id, deadline}`.
pub fn replicated_release(index: u32, deadline: bool) -> u64 {
    varint_field(u64::from(index)) + bytes_field(HEX_ID) + varint_field(u64::from(deadline))
}

/// `ReplicationEntry{oneof entry}` around one member of `len` bytes (from
/// [`recorded_attestation`], [`replicated_lease`] or [`replicated_release`], tags 1–3): a set
/// oneof member is written even when empty.
pub fn replication_entry(len: u64) -> u64 {
    message_field(len)
}

/// `ReplicateRequest{job_id, entries[], peer_id, timestamp_ms, signature}`; `entries` holds each
/// entry's size from [`replication_entry`].
pub fn replicate_request(entries: &[u64], timestamp_ms: u64) -> u64 {
    bytes_field(HEX_ID) + entries.iter().map(|&e| message_field(e)).sum::<u64>() + bytes_field(HEX_ID) + varint_field(timestamp_ms) + bytes_field(SIGNATURE)
}

/// `ReplicateResponse{recorded}`.
pub fn replicate_reply(recorded: u32) -> u64 {
    varint_field(u64::from(recorded))
}

/// `Policy{quorum, max_replicas, limits, priority, adaptive}`.
pub fn policy(p: &crate::Policy) -> u64 {
    let adaptive = p.adaptive.map_or(0, |a| {
        message_field(varint_field(u64::from(a.min_agreed)) + 1 + varint(u64::from(a.spot_check_per_mille)))
    });
    varint_field(u64::from(p.quorum))
        + varint_field(u64::from(p.max_replicas))
        + message_field(limits(&p.limits))
        + varint_field(p.priority as u64)
        + adaptive
}

/// A field with a tag of 16 or more (two bytes of key), length-delimited.
fn bytes_field_hi(len: u64) -> u64 {
    if len == 0 { 0 } else { 2 + varint(len) + len }
}

/// `AdoptRequest`: the job as submitted (16-byte nonce, no
/// args or env, `tasks` inline inputs of `input` bytes each), its `coordinators`, every recorded
/// attestation (`items`, sizes from [`recorded_attestation`]) and the sender's signature.
#[allow(clippy::too_many_arguments)]
pub fn adopt_request(policy_len: u64, label: u64, tasks: u32, input: u64, coordinators: u64, items: &[u64], submitted_at_ms: u64, timestamp_ms: u64) -> u64 {
    let task = message_field(bytes_field(input));
    bytes_field(HEX_ID) // job_id
        + bytes_field(HEX_ID) // origin
        + bytes_field(SIGNATURE) // origin_signature
        + bytes_field(16) // nonce
        + bytes_field(HEX_ID) // module_id
        + message_field(policy_len)
        + bytes_field(label)
        + varint_field(submitted_at_ms)
        + u64::from(tasks) * task
        + coordinators * bytes_field(HEX_ID)
        + items.iter().map(|&i| message_field(i)).sum::<u64>()
        + bytes_field(HEX_ID) // peer_id
        + if timestamp_ms == 0 { 0 } else { 2 + varint(timestamp_ms) }
        + bytes_field_hi(SIGNATURE)
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

    #[test]
    fn varints_and_fields() {
        assert_eq!(varint(0), 1);
        assert_eq!(varint(127), 1);
        assert_eq!(varint(128), 2);
        assert_eq!(varint(u64::MAX), 10);
        assert_eq!(bytes_field(64), 66);
        assert_eq!(varint_field(0), 0);
        // peer id, job id, max 3, a 2023 timestamp, signature.
        assert_eq!(lease_request(3, 1_700_000_000_000), 66 + 66 + 2 + 7 + 66);
        // An empty replication batch: job id, peer id, timestamp, signature.
        assert_eq!(replicate_request(&[], 1_700_000_000_000), 66 + 66 + 7 + 66);
        assert_eq!(bytes_field_hi(64), 67);
    }

    #[test]
    fn replication_entries() {
        // Index 3 (1 + 1), peer id (66), 14,950 ms left (1 + 2).
        assert_eq!(replicated_lease(3, 14_950), 2 + 66 + 3);
        // Index 0 and `deadline` false are left out.
        assert_eq!(replicated_release(0, false), 66);
        assert_eq!(replicated_release(200, true), 3 + 66 + 2);
        // Entry: tag + length + lease; request: tag + length + entry.
        let entry = replication_entry(replicated_lease(3, 14_950));
        assert_eq!(entry, 2 + 71);
        assert_eq!(replicate_request(&[entry], 1_700_000_000_000), 66 + (2 + entry) + 66 + 7 + 66);
    }
}
