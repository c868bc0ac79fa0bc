//! Scenario tests of the coordinator: leases, quorum, lone peers, expiry, deadlines, cancel.

mod common;

use common::*;
use spare_protocol::*;

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

#[test]
fn a_peer_never_gets_back_a_task_it_let_lapse() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    let mut s = spec(1, 1, 2);
    s.policy.limits.timeout_ms = 1_000;
    c.submit(job(1), s).unwrap();
    let t = TaskId { job: job(1), index: 0 };
    let l = c.lease(peer(1), 10, 0);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].expires_at, 1_000 + CoordinatorConfig::default().lease_grace_ms);
    c.tick(l[0].expires_at);
    assert_eq!(drain(&mut c), vec![Event::LeaseExpired { task: t, peer: peer(1) }]);
    assert!(c.lease(peer(1), 10, l[0].expires_at).is_empty(), "the hoarder gets nothing back");
    assert_eq!(c.reputation().get(&peer(1)).lapsed, 1);
    // Lapses are no deadline misses: however many peers lapse, the task waits for a new one.
    for p in 2..=9 {
        let l = c.lease(peer(p), 10, 0);
        assert_eq!(l.len(), 1);
        c.tick(l[0].expires_at);
    }
    assert_eq!(c.task(&t).unwrap().state, TaskState::Pending);
    let l = c.lease(peer(10), 10, 0);
    assert_eq!(l.len(), 1);
    assert_eq!(c.report(att(t, peer(10), honest(0))), Ok(Reported::Decided));
    assert_eq!(c.job(&job(1)).unwrap().state, JobState::Completed);
}

#[test]
fn lapsed_peers_are_remembered_up_to_a_bound() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(1, 1, 1)).unwrap();
    let bound = 1 + Coordinator::LAPSED_SLACK as u8;
    let mut now = 0;
    for p in 1..=bound + 1 {
        let l = c.lease(peer(p), 1, now);
        assert_eq!(l.len(), 1, "peer {p}");
        now = l[0].expires_at;
        c.tick(now);
    }
    // Peer 1 was pushed out by the newer lapses and may try again; peer 2 may not.
    assert!(c.lease(peer(2), 1, now).is_empty());
    assert_eq!(c.lease(peer(1), 1, now).len(), 1);
}

#[test]
fn a_peer_that_only_lets_leases_lapse_is_banned() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(20, 1, 1)).unwrap();
    let mut now = 0;
    let mut lapses = 0;
    while let Some(l) = c.lease(peer(1), 1, now).pop() {
        now = l.expires_at;
        c.tick(now);
        lapses += 1;
        assert!(lapses <= 20);
    }
    assert_eq!(lapses, 6, "banned at its sixth lapse");
    assert!(c.reputation().is_banned(&peer(1)));
    assert_eq!(c.lease(peer(2), 100, now).len(), 20, "its tasks went back to the pool");
}

#[test]
fn peer_down_lapses_its_leases_at_once_across_jobs() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(3, 2, 3)).unwrap();
    c.submit(job(2), spec(2, 1, 1)).unwrap();
    let held = c.lease(peer(1), 10, 0);
    assert_eq!(held.len(), 5);
    let mut sorted = held.clone();
    sorted.sort_by_key(|l| l.task);
    assert_eq!(c.leases_of(&peer(1)), sorted);
    let other = c.lease(peer(2), 1, 0);
    assert_eq!(other.len(), 1);
    // One task is reported before the peer dies: its lease is no longer held.
    c.report(att(held[0].task, peer(1), honest(held[0].task.index))).unwrap();
    drain(&mut c);
    assert_eq!(c.leases_of(&peer(1)).len(), 4);
    assert_eq!(c.peer_down(peer(1), 10), 4);
    let events = drain(&mut c);
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|e| matches!(e, Event::LeaseExpired { peer: p, .. } if *p == peer(1))));
    assert!(c.leases_of(&peer(1)).is_empty());
    assert_eq!(c.leases_of(&peer(2)), other, "other peers keep theirs");
    assert_eq!(c.peer_down(peer(1), 10), 0, "nothing left to lapse");
    assert_eq!(c.reputation().get(&peer(1)).lapsed, 0, "a crash costs no reputation");
    // Its replicas are back in the pool at once, for others only.
    assert!(c.lease(peer(1), 10, 10).iter().all(|l| l.task == held[0].task));
    let retaken = c.lease(peer(3), 10, 10);
    assert_eq!(retaken.len(), 4);
    // The stale expiries of the dropped leases do nothing.
    c.tick(u64::MAX / 2);
    let expired: Vec<Event> = drain(&mut c);
    assert!(expired.iter().all(|e| !matches!(e, Event::LeaseExpired { peer: p, .. } if *p == peer(1))));
}

#[test]
fn leases_of_follows_reports_releases_verdicts_and_cancel() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(4, 2, 3)).unwrap();
    let a = c.lease(peer(1), 4, 0);
    let b = c.lease(peer(2), 4, 0);
    assert_eq!((a.len(), b.len()), (4, 4));
    assert_eq!(c.leases_of(&peer(1)).len(), 4);
    let t0 = TaskId { job: job(1), index: 0 };
    c.report(att(t0, peer(1), honest(0))).unwrap();
    c.release(TaskId { job: job(1), index: 1 }, peer(1), Release::Abandoned);
    assert_eq!(c.leases_of(&peer(1)).iter().map(|l| l.task.index).collect::<Vec<_>>(), vec![2, 3]);
    c.report(att(t0, peer(2), honest(0))).unwrap();
    assert_eq!(c.task(&t0).unwrap().state, TaskState::Verified);
    assert_eq!(c.leases_of(&peer(2)).len(), 3);
    assert!(c.cancel(&job(1)));
    assert!(c.leases_of(&peer(1)).is_empty());
    assert!(c.leases_of(&peer(2)).is_empty());
    assert_eq!(c.peer_down(peer(2), 0), 0);
}

#[test]
fn default_grace_is_five_seconds() {
    assert_eq!(CoordinatorConfig::default().lease_grace_ms, 5_000);
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(1, 1, 1)).unwrap();
    let l = c.lease(peer(1), 1, 100);
    assert_eq!(l[0].expires_at, 100 + Limits::default().timeout_ms + 5_000);
    assert_eq!(c.next_deadline(), Some(l[0].expires_at));
}

#[test]
fn lease_job_gives_only_tasks_of_that_job() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(5, 2, 3)).unwrap();
    c.submit(job(2), spec(5, 2, 3)).unwrap();
    let got = c.lease_job(&job(2), peer(1), 10, 0);
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|l| l.task.job == job(2)));
    assert!(c.lease_job(&job(9), peer(1), 10, 0).is_empty(), "unknown job");
    c.cancel(&job(1));
    assert!(c.lease_job(&job(1), peer(2), 10, 0).is_empty(), "cancelled job");
}

#[test]
fn one_peer_never_holds_more_leases_than_its_cap() {
    let mut c = Coordinator::new(CoordinatorConfig { max_leases_per_peer: 7, ..CoordinatorConfig::default() });
    c.submit(job(1), spec(20, 2, 3)).unwrap();
    c.submit(job(2), spec(20, 2, 3)).unwrap();
    assert_eq!(c.lease(peer(1), 100, 0).len(), 7);
    assert!(c.lease_job(&job(2), peer(1), 100, 0).is_empty(), "at its cap");
    assert_eq!(c.lease_count(&peer(1)), 7);
    assert_eq!(c.lease(peer(2), 100, 0).len(), 7, "the cap is per peer");
    let l = c.leases_of(&peer(1))[0];
    c.report(att(l.task, peer(1), honest(l.task.index))).unwrap();
    assert_eq!(c.lease(peer(1), 100, 0).len(), 1, "a report frees room for one more");
}

#[test]
fn later_agreeing_reports_forgive_lapses_but_not_lies() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(1, 2, 5)).unwrap();
    let mut s = spec(20, 2, 5);
    s.policy.limits.timeout_ms = 1_000;
    c.submit(job(2), s).unwrap();
    let lossy = peer(1);
    let wrong = ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId([66; 32]) };
    // It reports one replica, not yet judged (quorum 2)…
    let first = c.lease_job(&job(1), lossy, 1, 0);
    assert_eq!(first.len(), 1);
    assert_eq!(c.report(att(first[0].task, lossy, honest(0))), Ok(Reported::Recorded));
    // …then six lease answers of one lease each are lost: six lapses with blame, and a peer
    // with six lapses and no agreement is banned.
    let lost: Vec<_> = (0..6).flat_map(|i| c.lease_job(&job(2), lossy, 1, i)).collect();
    assert_eq!(lost.len(), 6);
    let now = lost[5].expires_at;
    c.tick(now);
    assert_eq!(c.reputation().get(&lossy), Standing { lapsed: 6, ..Standing::default() });
    assert!(c.reputation().is_banned(&lossy));
    assert!(c.lease(lossy, 1, now).is_empty());
    // Its report agrees with the verdict another peer completes: one lapse is forgiven.
    assert_eq!(c.lease_job(&job(1), peer(2), 1, now).len(), 1);
    assert_eq!(c.report(att(first[0].task, peer(2), honest(0))), Ok(Reported::Decided));
    assert_eq!(c.reputation().get(&lossy), Standing { agreed: 1, lapsed: 5, forgiven: 1, ..Standing::default() });
    assert!(!c.reputation().is_banned(&lossy));
    // Back at work: two agreeing reports forgive two more lapses, a wrong one forgives nothing.
    assert_eq!(c.lease_job(&job(2), peer(3), 20, now).len(), 20);
    let mine = c.lease_job(&job(2), lossy, 3, now);
    assert_eq!(mine.len(), 3);
    assert!(mine.iter().all(|l| !lost.iter().any(|x| x.task == l.task)), "never a task it let lapse");
    for (l, r) in mine.iter().zip([honest(mine[0].task.index), honest(mine[1].task.index), wrong]) {
        c.report(att(l.task, lossy, r)).unwrap();
        c.report(att(l.task, peer(3), honest(l.task.index))).unwrap();
    }
    assert_eq!(c.reputation().get(&lossy), Standing { agreed: 3, lapsed: 3, forgiven: 3, ..Standing::default() });
    let third = mine[2].task;
    assert!(c.lease_job(&job(2), peer(4), 20, now).iter().any(|l| l.task == third));
    assert_eq!(c.report(att(third, peer(4), honest(third.index))), Ok(Reported::Decided));
    let s = c.reputation().get(&lossy);
    assert_eq!(s, Standing { agreed: 3, disagreed: 1, lapsed: 3, forgiven: 3, ..Standing::default() });
    assert_eq!(s.lapses(), 6, "every lapse is still on record");
}

#[test]
fn the_leases_of_one_lost_answer_are_one_lapse() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(40, 2, 5)).unwrap();
    let p = peer(1);
    // Two answers of six leases each are lost: two lapses, not twelve, and no ban.
    let a = c.lease_job(&job(1), p, 6, 0);
    let b = c.lease_job(&job(1), p, 6, 10);
    assert_eq!((a.len(), b.len()), (6, 6));
    c.tick(b[0].expires_at);
    assert_eq!(c.reputation().get(&p).lapsed, 2);
    assert!(!c.reputation().is_banned(&p));
    // A silent peer is still banned, one lost answer at a time.
    for i in 0..4 {
        let l = c.lease_job(&job(1), p, 1, 1_000_000 * (i + 1));
        c.tick(l[0].expires_at);
    }
    assert!(c.reputation().is_banned(&p), "{:?}", c.reputation().get(&p));
}

#[test]
fn forget_drops_only_ended_jobs_and_their_leases() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(2, 2, 3)).unwrap();
    c.submit(job(2), spec(2, 1, 1)).unwrap();
    assert!(!c.forget(&job(1)), "a running job is never forgotten");
    assert!(!c.forget(&job(9)), "nor an unknown one");
    // Job 1 gets one replica per task, then is cancelled with its leases outstanding.
    let leased = c.lease(peer(1), 4, 0);
    assert!(leased.iter().any(|l| l.task.job == job(1)));
    assert!(c.cancel(&job(1)));
    assert!(c.forget(&job(1)));
    assert!(c.job(&job(1)).is_none());
    assert!(c.leases_of(&peer(1)).iter().all(|l| l.task.job != job(1)), "its leases are gone from the index");
    assert!(c.job(&job(2)).is_some(), "other jobs stay");
    // A forgotten job's id can be taken again (nothing of it is left).
    c.submit(job(1), spec(1, 1, 1)).unwrap();
}

/// Many keys on one network gain nothing: by default no two replicas of a task go to peers
/// whose requests came from one /24, so a quorum of two needs two networks.
#[test]
fn replicas_of_one_task_go_to_distinct_networks() {
    let net = |s: &str| NetPrefix::of(s.parse().expect("an address"));
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(4, 2, 5)).unwrap();
    c.note_prefix(peer(1), net("203.0.113.1"));
    c.note_prefix(peer(2), net("203.0.113.2"));
    c.note_prefix(peer(3), net("198.51.100.3"));
    let first = c.lease(peer(1), 100, 0);
    assert_eq!(first.len(), 4);
    assert!(c.lease(peer(2), 100, 0).is_empty(), "every task already has a replica in 203.0.113.0/24");
    // A report ends the lease, not the network's claim on the task.
    for l in &first {
        c.report(att(l.task, l.peer, honest(l.task.index))).unwrap();
    }
    assert!(c.lease(peer(2), 100, 0).is_empty(), "its neighbour ran every task");
    assert_eq!(c.lease(peer(3), 100, 0).len(), 4, "another network may");
    // A peer on a private network has no prefix: it is its own network.
    c.submit(job(2), spec(2, 2, 5)).unwrap();
    c.note_prefix(peer(4), net("10.0.0.4"));
    c.note_prefix(peer(5), net("10.0.0.5"));
    assert_eq!(c.lease_job(&job(2), peer(4), 100, 0).len(), 2);
    assert_eq!(c.lease_job(&job(2), peer(5), 100, 0).len(), 2);

    let mut off = Coordinator::new(CoordinatorConfig { diversity: Diversity::Off, ..CoordinatorConfig::default() });
    off.submit(job(1), spec(4, 2, 5)).unwrap();
    off.note_prefix(peer(1), net("203.0.113.1"));
    off.note_prefix(peer(2), net("203.0.113.2"));
    assert_eq!(off.lease(peer(1), 100, 0).len(), 4);
    assert_eq!(off.lease(peer(2), 100, 0).len(), 4, "diversity off: distinct keys suffice");
}

/// A job may ask for looser or stricter diversity than the coordinator's default: `Off` lets two
/// peers of one /24 run replicas of the same task where the default does not, `Wide` keeps
/// apart two /24s of one /16 that the default lets in.
#[test]
fn a_job_chooses_its_own_diversity() {
    let net = |s: &str| NetPrefix::of(s.parse().expect("an address"));
    let with = |d: Option<Diversity>| {
        let mut s = spec(4, 2, 5);
        s.policy.diversity = d;
        s
    };
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.note_prefix(peer(1), net("203.0.113.1"));
    c.note_prefix(peer(2), net("203.0.113.2"));
    c.note_prefix(peer(3), net("203.0.114.3"));
    c.submit(job(1), with(None)).unwrap();
    c.submit(job(2), with(Some(Diversity::Off))).unwrap();
    c.submit(job(3), with(Some(Diversity::Wide))).unwrap();
    for j in [job(1), job(2), job(3)] {
        assert_eq!(c.lease_job(&j, peer(1), 100, 0).len(), 4);
    }
    assert!(c.lease_job(&job(1), peer(2), 100, 0).is_empty(), "the default keeps one /24 to one replica");
    assert_eq!(c.lease_job(&job(2), peer(2), 100, 0).len(), 4, "a job asking off runs two replicas in one /24");
    assert_eq!(c.lease_job(&job(1), peer(3), 100, 0).len(), 4, "the default lets another /24 in");
    assert!(c.lease_job(&job(3), peer(3), 100, 0).is_empty(), "a job asking wide keeps one /16 to one replica");
    // The coordinator's default applies to jobs that do not ask, and only to them.
    let mut off = Coordinator::new(CoordinatorConfig { diversity: Diversity::Off, ..CoordinatorConfig::default() });
    off.note_prefix(peer(1), net("203.0.113.1"));
    off.note_prefix(peer(2), net("203.0.113.2"));
    off.submit(job(1), with(None)).unwrap();
    off.submit(job(2), with(Some(Diversity::Prefix))).unwrap();
    for j in [job(1), job(2)] {
        assert_eq!(off.lease_job(&j, peer(1), 100, 0).len(), 4);
    }
    assert_eq!(off.lease_job(&job(1), peer(2), 100, 0).len(), 4);
    assert!(off.lease_job(&job(2), peer(2), 100, 0).is_empty(), "a job asking prefix keeps it under a looser default");
}

/// A key with no record holds one lease batch at most; each agreeing result lets it hold more,
/// and what changed is handed to the driver to store once.
#[test]
fn a_fresh_key_holds_little_until_it_agrees() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(1_000, 1, 1)).unwrap();
    let first = c.lease(peer(1), 1_000, 0);
    assert_eq!(first.len(), Coordinator::NEW_KEY_LEASES);
    assert!(c.lease(peer(1), 1_000, 0).is_empty(), "at its quota");
    for l in &first[..10] {
        c.report(att(l.task, l.peer, honest(l.task.index))).unwrap();
    }
    assert_eq!(c.lease_quota(&peer(1)), Coordinator::NEW_KEY_LEASES + 10 * Coordinator::LEASES_PER_AGREEMENT);
    assert_eq!(c.lease(peer(1), 1_000, 0).len(), 10 + 10 * Coordinator::LEASES_PER_AGREEMENT, "room freed and earned");
    let changed = c.take_changed_standings();
    assert_eq!(changed, vec![(peer(1), Standing { agreed: 10, ..Standing::default() })]);
    assert!(c.take_changed_standings().is_empty(), "handed over once");
    c.set_standing(peer(2), Standing { agreed: 5, ..Standing::default() });
    assert!(c.take_changed_standings().is_empty(), "a restored standing is not a change");
}

/// Finding 9: the job cap counts jobs that have not ended, so finished jobs never make a peer
/// refuse new ones, and an ended job's task table can be let go while its status stays.
#[test]
fn the_job_cap_counts_unfinished_jobs_and_ended_ones_shed_their_tasks() {
    let mut c = Coordinator::new(CoordinatorConfig { max_jobs: 2, ..CoordinatorConfig::default() });
    c.submit(job(1), spec(3, 1, 1)).unwrap();
    c.submit(job(2), spec(1, 1, 1)).unwrap();
    assert_eq!(c.submit(job(3), spec(1, 1, 1)), Err(SubmitError::Full(2)), "two unfinished jobs fill it");
    assert_eq!((c.open_jobs(), c.max_jobs()), (2, 2));
    c.restore(job(9), spec(1, 1, 1), false).expect("a job taken back after a restart is never refused");
    assert_eq!(c.open_jobs(), 3);
    assert!(c.cancel(&job(9)));
    for l in c.lease_job(&job(1), peer(1), 10, 0) {
        c.report(att(l.task, l.peer, honest(l.task.index))).unwrap();
    }
    assert_eq!(c.job(&job(1)).unwrap().state, JobState::Completed);
    c.submit(job(3), spec(1, 1, 1)).expect("an ended job leaves room");
    assert!(!c.shed(&job(2)), "an unfinished job keeps its tasks");
    let before: Vec<TaskView> = (0..3).map(|index| c.task(&TaskId { job: job(1), index }).unwrap()).collect();
    assert!(c.shed(&job(1)));
    let policy = spec(3, 1, 1).policy;
    for v in &before {
        let again = TaskView::ended(v.id, v.verdict.clone(), v.verified_by.clone(), v.attestations, &policy);
        assert_eq!(&again, v, "a stored verdict shows as the table did");
    }
    assert!(c.is_shed(&job(1)));
    let v = c.job(&job(1)).expect("the status stays");
    assert_eq!((v.state, v.counts.verified, v.counts.total), (JobState::Completed, 3, 3));
    assert_eq!(c.task(&TaskId { job: job(1), index: 0 }), None, "its tasks are read from the driver's store");
    // A report that arrives after is taken as late.
    let t = TaskId { job: job(1), index: 1 };
    assert_eq!(c.report(att(t, peer(2), honest(1))), Ok(Reported::Late));
    assert!(c.lease(peer(2), 10, 0).iter().all(|l| l.task.job != job(1)), "nothing of it is leased");
    assert!(c.forget(&job(1)), "retention can still forget it");
}

/// A replica whose lease lapsed before the verdict reports late: refused (it holds no lease),
/// but a wrong answer counts against its peer, once (known gap 1 was that it went unjudged);
/// an agreeing one counts for nothing, since it could be copied from the verified output.
#[test]
fn a_wrong_report_after_a_lapse_and_a_verdict_counts_against_its_peer_once() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    let mut s = spec(2, 2, 5);
    s.policy.limits.timeout_ms = 1_000;
    c.submit(job(1), s).unwrap();
    let wrong = ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId([66; 32]) };
    let (slow, a, b) = (peer(1), peer(2), peer(3));
    let mine = c.lease(slow, 2, 0);
    assert_eq!(mine.len(), 2);
    let expiry = mine[0].expires_at;
    c.tick(expiry);
    let lapsed = c.reputation().get(&slow);
    for (p, now) in [(a, expiry), (b, expiry)] {
        for l in c.lease(p, 2, now) {
            c.report(att(l.task, p, honest(l.task.index))).unwrap();
        }
    }
    let (t0, t1) = (mine[0].task, mine[1].task);
    assert!(c.task(&t0).unwrap().verdict.agreed().is_some() && c.task(&t1).unwrap().verdict.agreed().is_some());
    // Agreeing, late: nothing gained.
    assert_eq!(c.report(att(t0, slow, honest(t0.index))), Err(ReportError::NoLease { task: t0, peer: slow }));
    assert_eq!(c.reputation().get(&slow), lapsed);
    // Wrong, late: judged, once.
    assert_eq!(c.report(att(t1, slow, wrong)), Err(ReportError::NoLease { task: t1, peer: slow }));
    assert_eq!(c.reputation().get(&slow).disagreed, lapsed.disagreed + 1);
    assert_eq!(c.report(att(t1, slow, wrong)), Err(ReportError::NoLease { task: t1, peer: slow }));
    assert_eq!(c.reputation().get(&slow).disagreed, lapsed.disagreed + 1);
    // A peer that never held a lease on it is refused unjudged, as before.
    assert_eq!(c.report(att(t1, peer(9), wrong)), Err(ReportError::NoLease { task: t1, peer: peer(9) }));
    assert_eq!(c.reputation().get(&peer(9)).disagreed, 0);
}

/// Leases that end before they expire leave entries that are swept once they pile up (past
/// 1,024): the sweep must keep every live lease, which still lapses on time.
#[test]
fn leases_still_lapse_on_time_after_ended_ones_are_swept() {
    let mut c = Coordinator::new(CoordinatorConfig::default());
    c.submit(job(1), spec(3_000, 1, 1)).unwrap();
    let mut live = Vec::new();
    for p in 1..=200u8 {
        let leases = c.lease(peer(p), 10, u64::from(p));
        assert!(!leases.is_empty(), "peer {p} got work");
        if p % 50 == 0 {
            // Kept: these four peers never report.
            live.extend(leases.iter().map(|l| (l.task, l.peer)));
            continue;
        }
        for l in leases {
            assert_eq!(c.report(att(l.task, l.peer, honest(l.task.index))), Ok(Reported::Decided));
        }
    }
    drain(&mut c);
    c.tick(u64::MAX / 2);
    let mut lapsed: Vec<(TaskId, PeerId)> = drain(&mut c)
        .into_iter()
        .filter_map(|e| match e {
            Event::LeaseExpired { task, peer } => Some((task, peer)),
            _ => None,
        })
        .collect();
    lapsed.sort();
    live.sort();
    assert_eq!(lapsed, live, "exactly the leases never reported lapsed");
    assert_eq!(c.next_deadline(), None, "nothing left to wake for");
}
