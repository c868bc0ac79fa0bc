//! What the store keeps, as serde records, and the byte layout of table keys. Keys are
//! big-endian so a job's tasks sort by index and range scans read them in order.

use serde::{Deserialize, Serialize};
use spare_protocol::{Attestation, BlobId, Diversity, JobId, JobSpec, PeerId, TaskId, Verdict};

/// A job as the origin accepted it: what the coordinator needs plus what the sandbox needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredJob {
    /// Module, task count, policy, origin, submission time, label.
    pub spec: JobSpec,
    /// argv[1..] of every task.
    pub args: Vec<String>,
    /// Environment of every task.
    pub env: Vec<(String, String)>,
    /// Whether the submitter cancelled it.
    pub cancelled: bool,
    /// The nonce its id was derived with (so other coordinators can check the id).
    pub nonce: Vec<u8>,
    /// The origin's signature over the job id (`spare.v1.job\0` ++ id).
    pub origin_signature: Vec<u8>,
    /// The peers coordinating it, the active one first.
    pub coordinators: Vec<PeerId>,
    /// The submitter key that owns it (`None`: stored before jobs had owners).
    pub owner: Option<PeerId>,
    /// The digest of its content its id was derived from (`None`: stored before job ads
    /// carried it; such a job's ads are not taken by peers that have not heard of it).
    pub content_digest: Option<[u8; 32]>,
}

/// A job as stored before it kept its content digest (read, so that an older data directory
/// opens).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StoredJobV1 {
    spec: JobSpec,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cancelled: bool,
    nonce: Vec<u8>,
    origin_signature: Vec<u8>,
    coordinators: Vec<PeerId>,
    owner: Option<PeerId>,
}

/// A job as stored before jobs had owners (read, so that an older data directory opens).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StoredJobV0 {
    spec: JobSpec,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cancelled: bool,
    nonce: Vec<u8>,
    origin_signature: Vec<u8>,
    coordinators: Vec<PeerId>,
}

/// Encodes a job as stored now: the [`StoredJob`] followed by its policy's network diversity,
/// which the policy's serde form leaves out (`Policy::diversity`).
pub fn encode_job(job: &StoredJob) -> Result<Vec<u8>, postcard::Error> {
    encode(&(job, job.spec.policy.diversity))
}

/// Decodes a stored job, of this shape or one before it (those ask for no diversity).
pub fn decode_job(bytes: &[u8]) -> Result<StoredJob, postcard::Error> {
    if let Ok((mut job, diversity)) = decode::<(StoredJob, Option<Diversity>)>(bytes) {
        job.spec.policy.diversity = diversity;
        return Ok(job);
    }
    decode::<StoredJob>(bytes).or_else(|e| {
        if let Ok(old) = decode::<StoredJobV1>(bytes) {
            let StoredJobV1 { spec, args, env, cancelled, nonce, origin_signature, coordinators, owner } = old;
            return Ok(StoredJob { spec, args, env, cancelled, nonce, origin_signature, coordinators, owner, content_digest: None });
        }
        let old: StoredJobV0 = decode(bytes).map_err(|_| e)?;
        let StoredJobV0 { spec, args, env, cancelled, nonce, origin_signature, coordinators } = old;
        Ok(StoredJob { spec, args, env, cancelled, nonce, origin_signature, coordinators, owner: None, content_digest: None })
    })
}

/// One task's input: inline bytes, or a blob stored beside the database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredInput {
    /// The bytes themselves.
    Inline(Vec<u8>),
    /// A blob in the blob store.
    Blob(BlobId),
}

/// A task's final verdict and, when a quorum agreed, the canonical output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResult {
    /// The verdict, as the coordinator decided it.
    pub verdict: Verdict,
    /// Peers whose attestations make up the quorum.
    pub verified_by: Vec<PeerId>,
    /// The agreed stdout (empty unless a quorum agreed on it).
    pub output: Vec<u8>,
    /// Detail from the run that decided it (trap text, which limit), for diagnosis.
    pub message: String,
    /// Attestations the task had when it was decided.
    pub attestations: u32,
    /// The tail of the deciding run's stderr, for diagnosis (why a task failed).
    pub stderr: String,
}

/// A result as stored before results kept `stderr` (read, so that an older data directory opens).
#[derive(Deserialize)]
struct StoredResultV0 {
    verdict: Verdict,
    verified_by: Vec<PeerId>,
    output: Vec<u8>,
    message: String,
    attestations: u32,
}

/// Decodes a stored result, of this shape or the one before it.
pub fn decode_result(bytes: &[u8]) -> Result<StoredResult, postcard::Error> {
    decode::<StoredResult>(bytes).or_else(|e| {
        let old: StoredResultV0 = decode(bytes).map_err(|_| e)?;
        let StoredResultV0 { verdict, verified_by, output, message, attestations } = old;
        Ok(StoredResult { verdict, verified_by, output, message, attestations, stderr: String::new() })
    })
}

/// The fields of a stored result before its output, in either shape: read without copying the
/// output (statuses need no bytes).
#[derive(Deserialize)]
struct ResultHead<'a> {
    verdict: Verdict,
    verified_by: Vec<PeerId>,
    #[serde(borrow)]
    _output: &'a [u8],
    message: String,
    attestations: u32,
}

/// Decodes a stored result without its output (left empty), of this shape or the one before it.
pub fn decode_result_head(bytes: &[u8]) -> Result<StoredResult, postcard::Error> {
    let (head, rest): (ResultHead<'_>, &[u8]) = postcard::take_from_bytes(bytes)?;
    // The shape before `stderr` ends here.
    let stderr = if rest.is_empty() { String::new() } else { postcard::from_bytes(rest)? };
    let ResultHead { verdict, verified_by, message, attestations, .. } = head;
    Ok(StoredResult { verdict, verified_by, output: Vec::new(), message, attestations, stderr })
}

/// Key of a job: its 32 bytes.
pub type JobKey = [u8; 32];
/// Key of a task: job ++ index (big-endian).
pub type TaskKey = [u8; 36];

/// The key of a task.
pub fn task_key(task: &TaskId) -> TaskKey {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(task.job.as_bytes());
    k[32..].copy_from_slice(&task.index.to_be_bytes());
    k
}

/// The task a task key names.
pub fn task_of(k: &TaskKey) -> TaskId {
    let mut job = [0u8; 32];
    job.copy_from_slice(&k[..32]);
    let mut idx = [0u8; 4];
    idx.copy_from_slice(&k[32..36]);
    TaskId { job: JobId(job), index: u32::from_be_bytes(idx) }
}

/// Encodes a record.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

/// Decodes a record.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// An attestation as stored (its place in its job's log is in the key), with whether the coordinator
/// took it alone (adaptive replication), so a replay reaches the verdict it reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAttestation {
    /// The signed attestation.
    pub attestation: Attestation,
    /// It was the task's first attestation and decided it alone.
    pub lone: bool,
}

/// A [`StoredAttestation`] to encode, borrowing its attestation: postcard encodes a reference as
/// what it refers to, so the bytes are the same and the writer need not copy the attestation.
#[derive(Serialize)]
pub struct StoredAttestationRef<'a> {
    pub attestation: &'a Attestation,
    pub lone: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_stored_before_stderr_still_decode() {
        #[derive(Serialize)]
        struct V0 {
            verdict: Verdict,
            verified_by: Vec<PeerId>,
            output: Vec<u8>,
            message: String,
            attestations: u32,
        }
        let old = V0 { verdict: Verdict::Inconclusive, verified_by: Vec::new(), output: b"x".to_vec(), message: "m".into(), attestations: 3 };
        let r = decode_result(&encode(&old).unwrap()).unwrap();
        assert_eq!((r.output.as_slice(), r.message.as_str(), r.attestations, r.stderr.as_str()), (&b"x"[..], "m", 3, ""));
        let new = StoredResult { stderr: "why".into(), ..r };
        assert_eq!(decode_result(&encode(&new).unwrap()).unwrap(), new);
    }

    #[test]
    fn jobs_stored_before_owners_still_decode() {
        use spare_protocol::Policy;
        let spec = JobSpec {
            module: BlobId::of(b"m"),
            task_count: 2,
            policy: Policy::default(),
            origin: PeerId([1; 32]),
            submitted_at_ms: 5,
            label: "l".into(),
        };
        let old = StoredJobV0 {
            spec: spec.clone(),
            args: vec!["a".into()],
            env: Vec::new(),
            cancelled: false,
            nonce: vec![1],
            origin_signature: vec![2],
            coordinators: vec![PeerId([1; 32])],
        };
        let job = decode_job(&encode(&old).unwrap()).unwrap();
        assert_eq!((job.spec, job.owner, job.args), (spec, None, vec!["a".to_string()]));
        let new = StoredJob { owner: Some(PeerId([9; 32])), ..decode_job(&encode(&old).unwrap()).unwrap() };
        assert_eq!(decode_job(&encode(&new).unwrap()).unwrap(), new);
        // A job stored before it kept its content digest.
        let v1 = StoredJobV1 {
            spec: new.spec.clone(),
            args: new.args.clone(),
            env: Vec::new(),
            cancelled: false,
            nonce: vec![1],
            origin_signature: vec![2],
            coordinators: vec![PeerId([1; 32])],
            owner: Some(PeerId([9; 32])),
        };
        assert_eq!(decode_job(&encode(&v1).unwrap()).unwrap(), new);
        let digested = StoredJob { content_digest: Some([3; 32]), ..new };
        assert_eq!(decode_job(&encode(&digested).unwrap()).unwrap(), digested);
    }

    /// A job written before jobs asked for a network diversity loads (asking for none, so its
    /// coordinator's default applies), and one that asks keeps what it asked across the store.
    #[test]
    fn jobs_stored_before_diversity_still_decode() {
        use spare_protocol::Policy;
        let old = StoredJob {
            spec: JobSpec {
                module: BlobId::of(b"m"),
                task_count: 2,
                policy: Policy { quorum: 3, ..Policy::default() },
                origin: PeerId([1; 32]),
                submitted_at_ms: 5,
                label: "l".into(),
            },
            args: vec!["a".into()],
            env: vec![("K".into(), "V".into())],
            cancelled: true,
            nonce: vec![1],
            origin_signature: vec![2],
            coordinators: vec![PeerId([1; 32]), PeerId([4; 32])],
            owner: Some(PeerId([9; 32])),
            content_digest: Some([3; 32]),
        };
        // The encoding of before: the record alone.
        assert_eq!(decode_job(&encode(&old).unwrap()).unwrap(), old);
        for d in [None, Some(Diversity::Prefix), Some(Diversity::Wide), Some(Diversity::Off)] {
            let mut job = old.clone();
            job.spec.policy.diversity = d;
            assert_eq!(decode_job(&encode_job(&job).unwrap()).unwrap(), job, "{d:?}");
        }
    }

    #[test]
    fn an_attestation_encodes_the_same_borrowed_or_owned() {
        let attestation = Attestation {
            task: TaskId { job: JobId([3; 32]), index: 9 },
            peer: PeerId([4; 32]),
            result: spare_protocol::ResultKey { outcome: spare_protocol::Outcome::Exited(0), output_hash: BlobId::of(b"out") },
            fuel_used: 77,
            signature: vec![5; 64],
        };
        let owned = encode(&StoredAttestation { attestation: attestation.clone(), lone: true }).unwrap();
        assert_eq!(encode(&StoredAttestationRef { attestation: &attestation, lone: true }).unwrap(), owned);
        assert_eq!(decode::<StoredAttestation>(&owned).unwrap().attestation, attestation);
    }

    #[test]
    fn task_keys_sort_by_job_then_index() {
        let t = |i| TaskId { job: JobId([7; 32]), index: i };
        assert!(task_key(&t(1)) < task_key(&t(256)));
        assert_eq!(task_of(&task_key(&t(300))), t(300));
    }
}
