//! Scenario tests of the coordinator: leases, quorum, lone peers, expiry, deadlines, cancel.

mod common;

use common::*;
use spare_coordinator::*;

fn drain(c: &mut Coordinator) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

#[test]
fn quorum_one_lone_peer_verifies_every_task() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(10, 1, 1)).unwrap();
    assert_eq!(c.job(&job(1)).unwrap().state, JobState::Queued);
    let leases = c.lease(peer(1), 100, 0);
    assert_eq!(leases.len(), 10);
    assert_eq!(c.job(&job(1)).unwrap().counts.running, 10);
    for l in leases {
        assert_eq!(c.report(att(l.task, l.peer, honest(l.task.index))), Ok(Reported::Decided));
    }
    let v = c.job(&job(1)).unwrap();
    assert_eq!(v.state, JobState::Completed);
    assert_eq!(v.counts.verified, 10);
    let events = drain(&mut c);
    assert_eq!(events.iter().filter(|e| matches!(e, Event::TaskFinal { .. })).count(), 10);
    assert_eq!(events.last(), Some(&Event::JobFinished { job: job(1), state: JobState::Completed }));
}

#[test]
fn quorum_two_lone_peer_waits_and_says_why() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.set_live_peers(1);
    c.submit(job(1), spec(3, 2, 5)).unwrap();
    for l in c.lease(peer(1), 100, 0) {
        c.report(att(l.task, l.peer, honest(l.task.index))).unwrap();
    }
    assert!(c.lease(peer(1), 100, 0).is_empty(), "never two replicas of a task on one peer");
    let v = c.job(&job(1)).unwrap();
    assert_eq!(v.state, JobState::Running);
    assert_eq!(v.counts.pending, 3);
    assert!(v.message.unwrap().contains("needs 2 distinct peers"));
    let t = c.task(&TaskId { job: job(1), index: 0 }).unwrap();
    assert_eq!(t.state, TaskState::Pending);
    assert!(t.note.unwrap().contains("more peers"));
    // A second peer arrives and completes the quorum.
    c.set_live_peers(2);
    for l in c.lease(peer(2), 100, 0) {
        c.report(att(l.task, l.peer, honest(l.task.index))).unwrap();
    }
    let v = c.job(&job(1)).unwrap();
    assert_eq!(v.state, JobState::Completed);
    assert_eq!(v.message, None);
    let t = c.task(&TaskId { job: job(1), index: 2 }).unwrap();
    assert_eq!(t.verified_by, vec![peer(1), peer(2)]);
}

#[test]
fn reports_need_a_live_lease_and_duplicates_are_refused() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(1, 2, 5)).unwrap();
    let t = TaskId { job: job(1), index: 0 };
    assert_eq!(c.report(att(t, peer(1), honest(0))), Err(ReportError::NoLease { task: t, peer: peer(1) }));
    let l = c.lease(peer(1), 1, 0);
    assert_eq!(l.len(), 1);
    assert_eq!(c.report(att(t, peer(1), honest(0))), Ok(Reported::Recorded));
    assert_eq!(c.report(att(t, peer(1), honest(0))), Err(ReportError::NoLease { task: t, peer: peer(1) }));
    let bad = TaskId { job: job(1), index: 5 };
    assert_eq!(c.report(att(bad, peer(1), honest(0))), Err(ReportError::UnknownTask(bad)));
    assert_eq!(c.report(att(TaskId { job: job(2), index: 0 }, peer(1), honest(0))), Err(ReportError::UnknownJob(job(2))));
}

#[test]
fn lapsed_leases_return_to_the_pool() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    let mut s = spec(2, 1, 3);
    s.policy.limits.timeout_ms = 1_000;
    c.submit(job(1), s).unwrap();
    let l = c.lease(peer(1), 10, 0);
    assert_eq!(l.len(), 2);
    assert!(c.lease(peer(2), 10, 0).is_empty(), "quorum 1: one replica in flight is enough");
    let deadline = c.next_deadline().unwrap();
    c.tick(deadline - 1);
    assert!(drain(&mut c).is_empty());
    c.tick(deadline);
    assert_eq!(drain(&mut c).len(), 2);
    assert_eq!(c.lease(peer(2), 10, deadline).len(), 2);
    // The lapsed holder can no longer report.
    assert!(c.report(att(l[0].task, peer(1), honest(l[0].task.index))).is_err());
}

#[test]
fn disagreement_adds_replicas_then_inconclusive() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(1, 2, 3)).unwrap();
    let t = TaskId { job: job(1), index: 0 };
    let wrong = |n: u8| ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId([n; 32]) };
    assert_eq!(c.lease(peer(1), 1, 0).len(), 1);
    assert_eq!(c.lease(peer(2), 1, 0).len(), 1);
    assert!(c.lease(peer(3), 1, 0).is_empty(), "two in flight meet quorum 2");
    c.report(att(t, peer(1), wrong(1))).unwrap();
    c.report(att(t, peer(2), wrong(2))).unwrap();
    assert_eq!(c.lease(peer(3), 1, 0).len(), 1, "disagreement asks for another replica");
    assert!(c.lease(peer(4), 1, 0).is_empty(), "max_replicas bounds replicas");
    c.report(att(t, peer(3), wrong(3))).unwrap();
    assert_eq!(c.task(&t).unwrap().state, TaskState::Inconclusive);
    assert_eq!(c.job(&job(1)).unwrap().state, JobState::Failed);
}

#[test]
fn liars_lose_reputation_and_then_work() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(20, 2, 5)).unwrap();
    let liar = peer(66);
    for round in 0..10 {
        let _ = round;
        for p in [peer(1), liar, peer(2)] {
            for l in c.lease(p, 2, 0) {
                let r = if p == liar { ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId([66; 32]) } } else { honest(l.task.index) };
                c.report(att(l.task, p, r)).unwrap();
            }
        }
    }
    let v = c.job(&job(1)).unwrap();
    assert_eq!(v.state, JobState::Completed);
    assert!(c.reputation().is_banned(&liar));
    assert!(c.lease(liar, 10, 0).is_empty());
    for i in 0..20 {
        let t = c.task(&TaskId { job: job(1), index: i }).unwrap();
        assert_eq!(t.verdict, Verdict::Verified(honest(i)));
        assert!(!t.verified_by.contains(&liar));
    }
}

#[test]
fn agreed_failures_fail_and_deadlines_fail_after_max_replicas() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(2, 1, 2)).unwrap();
    let l = c.lease(peer(1), 2, 0);
    let trap = ResultKey { outcome: Outcome::Trapped, output_hash: BlobId::of(b"") };
    c.report(att(l[0].task, peer(1), trap)).unwrap();
    assert_eq!(c.task(&l[0].task).unwrap().state, TaskState::Failed);
    assert_eq!(c.task(&l[0].task).unwrap().note.as_deref(), Some("trap"));
    c.release(l[1].task, peer(1), Release::Deadline);
    let l2 = c.lease(peer(2), 2, 0);
    assert_eq!(l2.len(), 1);
    c.release(l2[0].task, peer(2), Release::Deadline);
    assert_eq!(c.task(&l[1].task).unwrap().verdict, Verdict::Failed(Failure::TimedOut(2)));
    assert_eq!(c.job(&job(1)).unwrap().state, JobState::Failed);
}

#[test]
fn cancel_stops_leases_and_higher_priority_goes_first() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(5, 1, 1)).unwrap();
    let mut urgent = spec(5, 1, 1);
    urgent.policy.priority = 10;
    c.submit(job(2), urgent).unwrap();
    let l = c.lease(peer(1), 5, 0);
    assert!(l.iter().all(|l| l.task.job == job(2)));
    assert!(c.cancel(&job(1)));
    assert!(c.lease(peer(1), 5, 0).is_empty());
    assert_eq!(c.job(&job(1)).unwrap().state, JobState::Cancelled);
    assert!(!c.cancel(&job(3)));
}

#[test]
fn restore_replays_the_same_verdicts() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(4, 1, 2)).unwrap();
    let mut log = Vec::new();
    for l in c.lease(peer(1), 4, 0) {
        let a = att(l.task, peer(1), honest(l.task.index));
        c.report(a.clone()).unwrap();
        log.push(a);
    }
    let mut d = Coordinator::new(CoordinatorConfig::default());
    d.restore(job(1), spec(4, 1, 2), false).unwrap();
    for a in log {
        d.restore_attestation(a).unwrap();
    }
    assert_eq!(d.job(&job(1)).unwrap().state, JobState::Completed);
    assert_eq!(d.task(&TaskId { job: job(1), index: 3 }).unwrap(), c.task(&TaskId { job: job(1), index: 3 }).unwrap());
}

#[test]
fn submissions_are_checked() {
    let mut c = Coordinator::new(CoordinatorConfig { max_jobs: 1, ..CoordinatorConfig::default() });
    assert_eq!(c.submit(job(1), spec(0, 1, 1)), Err(SubmitError::Policy(PolicyError::NoTasks)));
    c.submit(job(1), spec(1, 1, 1)).unwrap();
    assert_eq!(c.submit(job(1), spec(1, 1, 1)), Err(SubmitError::Duplicate(job(1))));
    assert_eq!(c.submit(job(2), spec(1, 1, 1)), Err(SubmitError::Full(1)));
}
