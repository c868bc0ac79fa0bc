//! Between the wire (`spare.v1`) and the protocol's types: policies with their defaults,
//! outcomes, attestations, and job and task status as the API shows them.

use spare_protocol::{
    Adaptive, Attestation, Diversity, Failure, JobState, JobView, Limits, Outcome, PeerId, Policy, ResultKey, TaskCounts, TaskId,
    TaskState, TaskView, Verdict,
};
use spare_proto as pb;
use tonic::Status;

use crate::store::StoredResult;

/// A complete policy from the request: zero fields take the defaults.
pub fn policy(p: Option<&pb::Policy>) -> Policy {
    let d = Policy::default();
    let Some(p) = p else { return d };
    let quorum = if p.quorum == 0 { d.quorum } else { p.quorum };
    let max_replicas = if p.max_replicas == 0 { d.max_replicas.max(quorum) } else { p.max_replicas };
    let dl = Limits::default();
    let l = p.limits.unwrap_or_default();
    let or = |v: u64, dv: u64| if v == 0 { dv } else { v };
    Policy {
        quorum,
        max_replicas,
        limits: Limits {
            memory_bytes: or(l.memory_bytes, dl.memory_bytes),
            fuel: or(l.fuel, dl.fuel),
            timeout_ms: or(l.timeout_ms, dl.timeout_ms),
            output_bytes: or(l.output_bytes, dl.output_bytes),
        },
        priority: p.priority,
        adaptive: p.adaptive.map(|a| Adaptive {
            min_agreed: if a.min_agreed == 0 { Adaptive::MIN_AGREED } else { a.min_agreed },
            spot_check_per_mille: a.spot_check_per_mille.unwrap_or(Adaptive::DEFAULT_SPOT_CHECK_PER_MILLE),
        }),
        diversity: diversity(p.diversity()),
    }
}

/// A policy's diversity from the wire (`None`: unspecified).
pub fn diversity(d: pb::Diversity) -> Option<Diversity> {
    match d {
        pb::Diversity::Unspecified => None,
        pb::Diversity::Prefix => Some(Diversity::Prefix),
        pb::Diversity::Wide => Some(Diversity::Wide),
        pb::Diversity::Off => Some(Diversity::Off),
    }
}

/// A policy's diversity on the wire.
pub fn diversity_pb(d: Option<Diversity>) -> pb::Diversity {
    match d {
        None => pb::Diversity::Unspecified,
        Some(Diversity::Prefix) => pb::Diversity::Prefix,
        Some(Diversity::Wide) => pb::Diversity::Wide,
        Some(Diversity::Off) => pb::Diversity::Off,
    }
}

/// The policy as the API shows it.
pub fn policy_pb(p: &Policy) -> pb::Policy {
    pb::Policy {
        quorum: p.quorum,
        max_replicas: p.max_replicas,
        limits: Some(limits_pb(&p.limits)),
        priority: p.priority,
        adaptive: p.adaptive.map(|a| pb::Adaptive {
            min_agreed: a.min_agreed,
            spot_check_per_mille: Some(a.spot_check_per_mille),
        }),
        diversity: diversity_pb(p.diversity).into(),
    }
}

/// Task limits as the API shows them.
pub fn limits_pb(l: &Limits) -> pb::Limits {
    pb::Limits { memory_bytes: l.memory_bytes, fuel: l.fuel, timeout_ms: l.timeout_ms, output_bytes: l.output_bytes }
}

/// Parses a hex id, or says which field is wrong.
pub fn parse_id<T: std::str::FromStr>(field: &str, s: &str) -> Result<T, Status> {
    if s.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is empty")));
    }
    s.parse().map_err(|_| Status::invalid_argument(format!("{field} {s:?} is not a 64-character hex id")))
}

/// An outcome on the wire.
pub fn outcome_pb(o: &Outcome, message: String) -> pb::Outcome {
    use pb::OutcomeKind as K;
    let (kind, exit_code) = match o {
        Outcome::Exited(c) => (K::Exited, *c),
        Outcome::Trapped => (K::Trapped, 0),
        Outcome::OutOfFuel => (K::OutOfFuel, 0),
        Outcome::MemoryLimit => (K::MemoryLimit, 0),
        Outcome::OutputTooLarge => (K::OutputTooLarge, 0),
    };
    pb::Outcome { kind: kind as i32, exit_code, message }
}

/// The agreed outcome of a final verdict, on the wire.
pub fn verdict_outcome(v: &Verdict, message: &str) -> Option<pb::Outcome> {
    match v {
        Verdict::Verified(k) | Verdict::Failed(Failure::Agreed(k)) => Some(outcome_pb(&k.outcome, message.to_string())),
        Verdict::Failed(Failure::TimedOut(_)) => Some(pb::Outcome {
            kind: pb::OutcomeKind::Deadline as i32,
            exit_code: 0,
            message: message.to_string(),
        }),
        Verdict::Pending | Verdict::Inconclusive => None,
    }
}

/// A job state on the wire.
pub fn job_state(s: JobState) -> pb::JobState {
    match s {
        JobState::Queued => pb::JobState::Queued,
        JobState::Running => pb::JobState::Running,
        JobState::Completed => pb::JobState::Completed,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

/// A task state on the wire.
pub fn task_state(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Verified => pb::TaskState::Verified,
        TaskState::Inconclusive => pb::TaskState::Inconclusive,
        TaskState::Failed => pb::TaskState::Failed,
    }
}

fn counts(c: &TaskCounts) -> pb::TaskCounts {
    pb::TaskCounts {
        total: c.total,
        pending: c.pending,
        running: c.running,
        verified: c.verified,
        inconclusive: c.inconclusive,
        failed: c.failed,
    }
}

fn peers(ps: &[PeerId]) -> Vec<String> {
    ps.iter().map(PeerId::to_hex).collect()
}

/// A job's status (without its tasks).
pub fn job_status(v: &JobView) -> pb::JobStatus {
    pb::JobStatus {
        job_id: v.id.to_hex(),
        state: job_state(v.state) as i32,
        tasks: Some(counts(&v.counts)),
        task_list: Vec::new(),
        policy: Some(policy_pb(&v.spec.policy)),
        module_id: v.spec.module.to_hex(),
        label: v.spec.label.clone(),
        submitted_at_ms: v.spec.submitted_at_ms,
        message: v.message.clone().unwrap_or_default(),
        origin: v.spec.origin.to_hex(),
        coordinators: Vec::new(),
        // The owner is the driver's (JobMeta), filled in by the caller.
        owner: String::new(),
    }
}

/// A task's status; `stored` is its stored result, once final.
pub fn task_status(t: &TaskView, stored: Option<&StoredResult>) -> pb::TaskStatus {
    let message = stored.map_or("", |r| r.message.as_str());
    let output_hash = t.verdict.agreed().map(|k| k.output_hash.to_hex()).unwrap_or_default();
    let error = match (t.state, &t.note) {
        (TaskState::Verified, _) => String::new(),
        (_, Some(note)) if !message.is_empty() => format!("{note}: {message}"),
        (_, Some(note)) => note.clone(),
        (_, None) => String::new(),
    };
    let stderr_line = match t.state {
        TaskState::Failed | TaskState::Inconclusive => stored.map(|r| spare_sdk::stderr_line(&r.stderr)).unwrap_or_default(),
        _ => "",
    };
    pb::TaskStatus {
        index: t.id.index,
        state: task_state(t.state) as i32,
        output_hash,
        verified_by: peers(&t.verified_by),
        outcome: verdict_outcome(&t.verdict, message),
        error,
        attestations: t.attestations,
        lone: t.lone,
        stderr_line: stderr_line.to_string(),
    }
}

/// A final task's result from the store.
pub fn task_result(index: u32, r: StoredResult) -> pb::TaskResult {
    let state = match &r.verdict {
        Verdict::Verified(_) => TaskState::Verified,
        Verdict::Inconclusive => TaskState::Inconclusive,
        Verdict::Failed(_) => TaskState::Failed,
        Verdict::Pending => TaskState::Pending,
    };
    let outcome = verdict_outcome(&r.verdict, &r.message);
    pb::TaskResult {
        index,
        state: task_state(state) as i32,
        output_hash: r.verdict.agreed().map(|k| k.output_hash.to_hex()).unwrap_or_default(),
        output: r.output,
        outcome,
        verified_by: peers(&r.verified_by),
        stderr: r.stderr,
    }
}

/// An attestation from the wire, or why it is malformed.
pub fn attestation(a: &pb::Attestation) -> Result<Attestation, Status> {
    use pb::OutcomeKind as K;
    let outcome = match a.kind() {
        K::Exited => Outcome::Exited(a.exit_code),
        K::Trapped => Outcome::Trapped,
        K::OutOfFuel => Outcome::OutOfFuel,
        K::MemoryLimit => Outcome::MemoryLimit,
        K::OutputTooLarge => Outcome::OutputTooLarge,
        other => return Err(Status::invalid_argument(format!("outcome {other:?} cannot be attested"))),
    };
    Ok(Attestation {
        task: TaskId { job: parse_id("job_id", &a.job_id)?, index: a.index },
        peer: parse_id("peer_id", &a.peer_id)?,
        result: ResultKey { outcome, output_hash: parse_id("output_hash", &a.output_hash)? },
        fuel_used: a.fuel_used,
        signature: a.signature.clone(),
    })
}

/// An attestation on the wire.
pub fn attestation_pb(a: &Attestation) -> pb::Attestation {
    let o = outcome_pb(&a.result.outcome, String::new());
    pb::Attestation {
        job_id: a.task.job.to_hex(),
        index: a.task.index,
        peer_id: a.peer.to_hex(),
        kind: o.kind,
        exit_code: o.exit_code,
        output_hash: a.result.output_hash.to_hex(),
        fuel_used: a.fuel_used,
        signature: a.signature.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_fields_take_defaults() {
        let p = policy(Some(&pb::Policy { quorum: 1, ..Default::default() }));
        assert_eq!(p.quorum, 1);
        assert_eq!(p.max_replicas, 5);
        assert_eq!(p.limits, Limits::default());
        let p = policy(Some(&pb::Policy { quorum: 7, ..Default::default() }));
        assert_eq!(p.max_replicas, 7, "the default replica bound never sits below the quorum");
        assert_eq!(policy(None), Policy::default());
        assert_eq!(policy(None).adaptive, None, "adaptive replication is off unless asked for");
    }

    #[test]
    fn diversity_round_trips_and_unspecified_is_none() {
        assert_eq!(policy(None).diversity, None);
        for d in [None, Some(Diversity::Prefix), Some(Diversity::Wide), Some(Diversity::Off)] {
            let p = Policy { diversity: d, ..Policy::default() };
            assert_eq!(policy(Some(&policy_pb(&p))), p);
        }
    }

    #[test]
    fn adaptive_replication_round_trips_with_its_defaults() {
        let asked = pb::Policy { adaptive: Some(pb::Adaptive::default()), ..Default::default() };
        let p = policy(Some(&asked));
        assert_eq!(p.adaptive, Some(Adaptive { min_agreed: 10, spot_check_per_mille: 100 }));
        let none = pb::Adaptive { min_agreed: 50, spot_check_per_mille: Some(0) };
        let p = policy(Some(&pb::Policy { adaptive: Some(none), ..Default::default() }));
        assert_eq!(p.adaptive, Some(Adaptive { min_agreed: 50, spot_check_per_mille: 0 }));
        assert_eq!(policy(Some(&policy_pb(&p))), p);
    }
}
