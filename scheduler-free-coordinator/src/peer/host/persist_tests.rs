//! Tests of what [`Hosts`] asks to store and what waits for it: the writes of a report, a
//! verdict's bytes and detail, and answers held until the writes before them are durable.

use std::sync::Arc;

use super::{Hosts, Logged, Notice, Recorded, ReportItem, Streamed, Transmit, Write};
use crate::{Attestation, BlobId, Detail, Event, JobId, Outcome, PeerId, Policy, ResultKey, TaskId, Verdict};

const A: PeerId = PeerId([9; 32]);
const B: PeerId = PeerId([2; 32]);
const W1: PeerId = PeerId([21; 32]);
const W2: PeerId = PeerId([22; 32]);

/// `me` coordinating a one-task quorum-2 job (`[1; 32]`, origin A) with `list`.
fn hosts(me: PeerId, list: &[PeerId], standby: bool) -> (Hosts, JobId) {
    let (mut coord, job) = crate::peer::test_coordinator(1, Policy { quorum: 2, max_replicas: 3, ..Policy::default() });
    coord.set_standby(&job, standby);
    while coord.poll_event().is_some() {}
    let mut hosts = Hosts::new(me, coord, Arc::new(|_, _, _| true));
    hosts.coordinate(job, list.to_vec(), 0);
    (hosts, job)
}

fn att(job: JobId, peer: PeerId, output: &[u8]) -> Attestation {
    let result = ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId::of(output) };
    Attestation { task: TaskId { job, index: 0 }, peer, result, fuel_used: 0, signature: vec![1] }
}

fn said(message: &str) -> Detail {
    Detail { message: message.into(), stderr: String::new() }
}

/// Leases the task to `worker` and reports `output` for it, as batch `batch`.
fn lease_and_report(h: &mut Hosts, job: JobId, worker: PeerId, output: &[u8], batch: u64, now: u64) {
    let granted = h.handle_lease(&job, worker, 1, None, now).expect("held");
    assert_eq!(granted.leases.len(), 1, "{worker:?} gets the task");
    let item = ReportItem::Attest(att(job, worker, output), output.to_vec(), said(&format!("ran at {worker:?}")));
    h.handle_report(worker, batch, vec![item], now + 1);
}

fn writes(h: &mut Hosts) -> Vec<(u64, Write)> {
    std::iter::from_fn(|| h.poll_persist()).collect()
}

#[test]
fn a_report_answer_waits_until_its_attestation_is_durable() {
    let (mut h, job) = hosts(A, &[A], false);
    lease_and_report(&mut h, job, W1, b"42", 5, 0);
    let w = writes(&mut h);
    assert_eq!(w.len(), 1);
    assert!(matches!(&w[0], (1, Write::Attestation { logged }) if logged.att.peer == W1));
    assert!(h.poll_transmit().is_none(), "not before the write is durable");
    h.handle_durable(1);
    assert!(matches!(h.poll_transmit(), Some(Transmit::ReportAnswer { to: W1, batch: 5, accepted: 1, rejected: 0 })));
}

#[test]
fn a_verdict_is_written_with_the_agreed_output_and_the_deciding_runs_detail_before_it_is_told() {
    let (mut h, job) = hosts(A, &[A], false);
    lease_and_report(&mut h, job, W1, b"42", 1, 0);
    lease_and_report(&mut h, job, W2, b"42", 2, 10);
    let w = writes(&mut h);
    let task = TaskId { job, index: 0 };
    let verdict = w.iter().find_map(|(id, w)| if let Write::Verdict { task: t, verdict, verified_by, attestations, output, detail } = w { Some((*id, *t, verdict.clone(), verified_by.clone(), *attestations, output.clone(), detail.clone())) } else { None });
    let (id, t, v, by, n, output, detail) = verdict.expect("a verdict write");
    assert_eq!(t, task);
    assert!(matches!(v, Verdict::Verified(_)));
    assert_eq!((by.len(), n, output.as_slice()), (2, 2, &b"42"[..]));
    assert_eq!(detail, said(&format!("ran at {W2:?}")), "the run that completed the quorum says why");
    assert!(matches!(w.last(), Some((_, Write::Standings(_)))), "the agreeing workers' standings are stored with it");
    assert!(h.poll_notice().is_none(), "the verdict is told only once durable");
    h.handle_durable(id);
    assert!(std::iter::from_fn(|| h.poll_notice()).all(|(_, n)| !matches!(n, Notice::Coordinator { event: Event::TaskFinal { .. }, .. })), "waits for the standings write too");
    h.handle_durable(w.last().map_or(0, |(id, _)| *id));
    let told: Vec<Notice> = std::iter::from_fn(|| h.poll_notice()).map(|(_, n)| n).collect();
    assert!(told.iter().any(|n| matches!(n, Notice::Coordinator { event: Event::TaskFinal { task: t, .. }, .. } if *t == task)));
}

/// Known gap 15, finding 8: a backup that completes a quorum with an attestation replayed
/// without its output stores the bytes an agreeing one brought earlier, not nothing.
#[test]
fn a_verdict_completed_by_an_attestation_without_output_gets_an_earlier_ones_bytes() {
    let (mut h, job) = hosts(B, &[A, B], true);
    let logged = |peer| Logged { att: Arc::new(att(job, peer, b"42")), lone: false };
    let first = Recorded { logged: logged(W1), output: b"42".to_vec(), detail: Detail::default() };
    h.handle_replicate(A, job, vec![Streamed::Attestation(first, 1)], 0).expect("from a coordinator");
    h.handle_replicate(A, job, vec![Streamed::Attestation(Recorded::bare(logged(W2)), 2)], 5).expect("from a coordinator");
    let outputs: Vec<Vec<u8>> = writes(&mut h).into_iter().filter_map(|(_, w)| if let Write::Verdict { output, .. } = w { Some(output) } else { None }).collect();
    assert_eq!(outputs, vec![b"42".to_vec()], "the verdict is stored with the agreed bytes");
}

#[test]
fn a_replicate_from_a_stranger_is_refused_and_writes_nothing() {
    let (mut h, job) = hosts(B, &[A, B], true);
    let r = Recorded::bare(Logged { att: Arc::new(att(job, W1, b"42")), lone: false });
    assert!(h.handle_replicate(W2, job, vec![Streamed::Attestation(r, 1)], 0).is_err());
    assert!(writes(&mut h).is_empty());
}

#[test]
fn a_cancellation_is_written_and_the_backups_get_the_job_again() {
    let (mut h, job) = hosts(A, &[A, B], false);
    assert_eq!(h.cancel(&job, 0), Some(true));
    let w = writes(&mut h);
    assert!(matches!(&w[0], (_, Write::Cancelled { job: j }) if *j == job));
    h.handle_durable(w.last().map_or(0, |(id, _)| *id));
    let told: Vec<Notice> = std::iter::from_fn(|| h.poll_notice()).map(|(_, n)| n).collect();
    assert!(told.contains(&Notice::Announce { done: true }), "its end is announced: {told:?}");
    let at = h.poll_timeout().expect("a catch-up is due");
    h.handle_timeout(at, &super::jobs_tests::NoMembers);
    let adopts: Vec<PeerId> = std::iter::from_fn(|| h.poll_transmit()).filter_map(|t| if let Transmit::Adopt { to, .. } = t { Some(to) } else { None }).collect();
    assert_eq!(adopts, vec![B]);
    assert_eq!(h.cancel(&job, at), Some(false), "an ended job keeps its state");
    assert!(h.forget(&job), "an ended job can be let go");
    assert!(!h.holds(&job));
    assert_eq!(h.cancel(&job, at), None);
}

/// Whether `h` told the job's one task final.
fn told_final(h: &mut Hosts) -> bool {
    std::iter::from_fn(|| h.poll_notice()).any(|(_, n)| matches!(n, Notice::Coordinator { event: Event::TaskFinal { .. }, .. }))
}

/// A verdict this peer decided while leading is announced only once a backup holds its
/// deciding attestation (so it survives the loss of this peer), or once the wait gave up.
#[test]
fn a_leaders_verdict_is_told_once_a_backup_holds_what_decided_it() {
    for backup_answers in [true, false] {
        let (mut h, job) = hosts(A, &[A, B], false);
        lease_and_report(&mut h, job, W1, b"42", 1, 0);
        lease_and_report(&mut h, job, W2, b"42", 2, 10);
        let last = writes(&mut h).last().map_or(0, |(id, _)| *id);
        h.handle_durable(last);
        assert!(!told_final(&mut h), "durable here, not yet at a backup");
        let at = h.poll_timeout().expect("the stream's batch is due");
        h.handle_timeout(at, &super::jobs_tests::NoMembers);
        let sent = std::iter::from_fn(|| h.poll_transmit()).filter(|t| matches!(t, Transmit::Replicate { to: B, .. })).count();
        assert_eq!(sent, 1, "both attestations stream to the backup in one batch");
        if backup_answers {
            h.handle_replicated(&job, B, true, at + 5);
            assert!(told_final(&mut h), "told once the backup holds it");
        } else {
            let give_up = 11 + crate::peer::replication::BACKUP_ACK_TIMEOUT_MS;
            h.handle_timeout(give_up - 1, &super::jobs_tests::NoMembers);
            assert!(!told_final(&mut h), "still waiting for the backup");
            h.handle_timeout(give_up, &super::jobs_tests::NoMembers);
            assert!(told_final(&mut h), "told from this peer alone once the wait gives up");
        }
    }
}

/// An ended job's log is let go (the store keeps it); an `Adopt` of the job then says the driver
/// must send the stored one.
#[test]
fn an_ended_jobs_log_is_let_go_and_its_adoptions_say_so() {
    let (mut h, job) = hosts(A, &[A, B], false);
    lease_and_report(&mut h, job, W1, b"42", 1, 0);
    assert!(!h.shed(&job), "a running job keeps its log");
    assert_eq!(h.cancel(&job, 20), Some(true));
    let last = writes(&mut h).last().map_or(0, |(id, _)| *id);
    h.handle_durable(last);
    assert!(h.shed(&job));
    assert!(h.host(&job).is_some_and(|host| host.log().is_empty()));
    // The stream's batch first, then the catch-up the cancellation asked for.
    let mut adopts: Vec<(Vec<Logged>, bool)> = Vec::new();
    for _ in 0..3 {
        let at = h.poll_timeout().expect("a timer runs");
        h.handle_timeout(at, &super::jobs_tests::NoMembers);
        adopts.extend(std::iter::from_fn(|| h.poll_transmit()).filter_map(|t| if let Transmit::Adopt { log, shed, .. } = t { Some((log, shed)) } else { None }));
    }
    assert_eq!(adopts, vec![(Vec::new(), true)]);
}

/// A job let go while it holds a report answer (waiting for a backup) answers it on the way
/// out: the worker would otherwise wait for it in vain.
#[test]
fn a_job_let_go_answers_the_reports_it_held() {
    let (mut h, job) = hosts(A, &[A, B], false);
    lease_and_report(&mut h, job, W1, b"42", 7, 0);
    assert_eq!(h.cancel(&job, 5), Some(true));
    let last = writes(&mut h).last().map_or(0, |(id, _)| *id);
    h.handle_durable(last);
    let answered = |h: &mut Hosts| std::iter::from_fn(|| h.poll_transmit()).any(|t| matches!(t, Transmit::ReportAnswer { to: W1, batch: 7, .. }));
    assert!(!answered(&mut h), "held until a backup holds the attestation");
    assert!(h.forget(&job));
    assert!(answered(&mut h), "answered as the job is let go");
}
