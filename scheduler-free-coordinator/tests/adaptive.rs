//! Adaptive replication: lone leases go only to trusted peers, spot checks come at about the
//! asked rate and cannot be told apart by the peer, a disagreement ends trust (and the lone
//! leases in hand), a lapsed lone lease sends its task back to normal, and a replay that carries
//! the recorder's lone marks reaches exactly its verdicts, whatever the replaying coordinator's
//! own reputation table says.

mod common;

use common::*;
use proptest::prelude::*;
use spare_protocol::*;

/// A job that lets peers with `min_agreed` agreements run tasks alone, spot-checking `per_mille`.
fn adaptive(tasks: u32, min_agreed: u32, per_mille: u32) -> JobSpec {
    let mut s = spec(tasks, 2, 5);
    s.policy.adaptive = Some(Adaptive { min_agreed, spot_check_per_mille: per_mille });
    s.policy.limits.timeout_ms = 10_000;
    s
}

fn coordinator(secret: u8) -> Coordinator {
    Coordinator::new(CoordinatorConfig { secret: [secret; 32], lease_grace_ms: 1_000, ..CoordinatorConfig::default() })
}

/// Gives each of `peers` `n` agreements with quorum verdicts, through a job (`id`) they all run.
fn warm_up(c: &mut Coordinator, id: JobId, peers: &[PeerId], n: u32) {
    let q = peers.len() as u32;
    c.submit(id, spec(n, q, q)).unwrap();
    for p in peers {
        for l in c.lease_job(&id, *p, n as usize, 0) {
            c.report(att(l.task, l.peer, honest(l.task.index))).unwrap();
        }
    }
    assert_eq!(c.job(&id).unwrap().state, JobState::Completed);
    for p in peers {
        assert_eq!(c.reputation().get(p).agreed, u64::from(n));
    }
}

fn task(j: JobId, index: u32) -> TaskId {
    TaskId { job: j, index }
}

#[test]
fn lone_leases_go_only_to_trusted_peers() {
    let mut c = coordinator(1);
    warm_up(&mut c, job(9), &[peer(1), peer(2)], 10);
    warm_up(&mut c, job(8), &[peer(3), peer(4)], 9);
    c.submit(job(1), adaptive(6, 10, 0)).unwrap();
    // Peer 3 has 9 agreements: one short. Its tasks want a second replica.
    let short = c.lease_job(&job(1), peer(3), 2, 0);
    assert_eq!(short.len(), 2);
    // Peer 1 is trusted: it takes the untouched tasks first, each alone.
    let lone = c.lease_job(&job(1), peer(1), 4, 0);
    assert_eq!(lone.len(), 4);
    assert!(lone.iter().all(|l| !short.iter().any(|s| s.task == l.task)), "untouched tasks first");
    // Peer 2, trusted too, finds only the second replicas of peer 3's tasks.
    let mut second: Vec<TaskId> = c.lease_job(&job(1), peer(2), 10, 0).iter().map(|l| l.task).collect();
    let mut wanted: Vec<TaskId> = short.iter().map(|l| l.task).collect();
    second.sort_unstable();
    wanted.sort_unstable();
    assert_eq!(second, wanted);
    for l in &lone {
        assert_eq!(c.report(att(l.task, l.peer, honest(l.task.index))), Ok(Reported::Decided));
        let v = c.task(&l.task).unwrap();
        assert!(v.lone && v.state == TaskState::Verified && v.verified_by == vec![peer(1)], "{v:?}");
    }
    for l in &short {
        assert_eq!(c.report(att(l.task, l.peer, honest(l.task.index))), Ok(Reported::Recorded));
        assert_eq!(c.report(att(l.task, peer(2), honest(l.task.index))), Ok(Reported::Decided));
        assert!(!c.task(&l.task).unwrap().lone);
    }
    assert_eq!(c.job(&job(1)).unwrap().state, JobState::Completed);
    // A lone verdict is no evidence: peer 1's record did not move, peer 2's and 3's did.
    assert_eq!(c.reputation().get(&peer(1)).agreed, 10);
    assert_eq!(c.reputation().get(&peer(2)).agreed, 12);
    assert_eq!(c.reputation().get(&peer(3)).agreed, 11);
    // The same trusted peer on a job without adaptive replication gets ordinary leases.
    c.submit(job(2), spec(2, 2, 5)).unwrap();
    for l in c.lease_job(&job(2), peer(1), 2, 0) {
        assert_eq!(c.report(att(l.task, l.peer, honest(l.task.index))), Ok(Reported::Recorded));
    }
}

#[test]
fn spot_checks_come_at_about_the_rate_and_depend_on_the_secret() {
    let checked = |secret: u8| -> Vec<u32> {
        let mut c = coordinator(secret);
        // 200 trusted peers (in pairs, through jobs 100..200), each leasing 10 tasks: fewer
        // than its budget of lone leases, so every task that is not a spot check goes alone.
        for k in 0..100u8 {
            warm_up(&mut c, job(100 + k), &[peer(2 * k), peer(2 * k + 1)], 10);
        }
        c.submit(job(1), adaptive(2_000, 10, 200)).unwrap();
        for p in 0..=199u8 {
            assert_eq!(c.lease_job(&job(1), peer(p), 10, 0).len(), 10);
        }
        // What a peer without trust can still get is exactly what the others hold as spot checks
        // (one disagreement keeps it untrusted; its long record lifts its lease quota).
        c.set_standing(peer(250), Standing { agreed: 1_000, disagreed: 1, ..Standing::default() });
        let mut idx: Vec<u32> = c.lease_job(&job(1), peer(250), 2_000, 0).iter().map(|l| l.task.index).collect();
        idx.sort_unstable();
        idx
    };
    let a = checked(1);
    // 2,000 tasks at 20%: 400 expected, standard deviation 17.9; five of them either way.
    assert!((310..=490).contains(&a.len()), "{} spot checks", a.len());
    let b = checked(2);
    assert!((310..=490).contains(&b.len()), "{} spot checks", b.len());
    let common = a.iter().filter(|i| b.binary_search(i).is_ok()).count();
    // Independent choices overlap on about 20% of them (80); the same choice would be 100%.
    assert!(common < a.len() / 2, "another secret, other spot checks: {common} of {} shared", a.len());
}

#[test]
fn a_disagreement_ends_trust_and_the_lone_leases_in_hand() {
    let mut c = coordinator(1);
    warm_up(&mut c, job(9), &[peer(1), peer(2), peer(3)], 10);
    c.submit(job(1), adaptive(4, 10, 0)).unwrap();
    let lone = c.lease_job(&job(1), peer(1), 4, 0);
    assert_eq!(lone.len(), 4);
    assert!(c.lease_job(&job(1), peer(2), 4, 0).is_empty(), "lone tasks get no second replica");
    // Peer 1 lies on a quorum task elsewhere and is caught.
    c.submit(job(2), spec(1, 2, 5)).unwrap();
    let t = task(job(2), 0);
    for p in [peer(1), peer(2)] {
        assert_eq!(c.lease_job(&job(2), p, 1, 0).len(), 1);
    }
    c.report(att(t, peer(1), honest(99))).unwrap();
    c.report(att(t, peer(2), honest(0))).unwrap();
    assert_eq!(c.lease_job(&job(2), peer(3), 1, 0).len(), 1);
    assert_eq!(c.report(att(t, peer(3), honest(0))), Ok(Reported::Decided));
    assert_eq!(c.reputation().get(&peer(1)).disagreed, 1);
    assert!(!c.reputation().is_trusted(&peer(1), 10));
    // Its lone leases are ordinary now: each task gets a second replica, and its reports on
    // them no longer decide anything alone.
    assert_eq!(c.lease_job(&job(1), peer(2), 4, 0).len(), 4);
    for l in &lone {
        assert_eq!(c.report(att(l.task, l.peer, honest(99))), Ok(Reported::Recorded));
        assert_eq!(c.report(att(l.task, peer(2), honest(l.task.index))), Ok(Reported::Recorded));
        assert!(!c.task(&l.task).unwrap().lone);
    }
    // And it gets no lone lease again, however much it agrees afterwards.
    let mut c2 = coordinator(1);
    warm_up(&mut c2, job(9), &[peer(1), peer(2)], 10);
    c2.penalize(peer(1));
    c2.submit(job(1), adaptive(1, 10, 0)).unwrap();
    let l = c2.lease_job(&job(1), peer(1), 1, 0);
    assert_eq!(c2.report(att(l[0].task, peer(1), honest(0))), Ok(Reported::Recorded), "an invalid record ends trust too");
}

#[test]
fn a_spot_check_gets_its_next_replicas_before_untouched_tasks() {
    let mut c = coordinator(1);
    warm_up(&mut c, job(9), &[peer(1), peer(2)], 10);
    // Every task a trusted peer takes is a spot check.
    c.submit(job(1), adaptive(20, 10, 1_000)).unwrap();
    let checks = c.lease_job(&job(1), peer(1), 2, 0);
    // An untrusted peer is handed the checks' second replicas before any untouched task.
    let next = c.lease_job(&job(1), peer(3), 2, 0);
    let mut a: Vec<TaskId> = checks.iter().map(|l| l.task).collect();
    let mut b: Vec<TaskId> = next.iter().map(|l| l.task).collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    // The trusted peer lies on one and is caught by the third replica, which also goes first.
    c.report(att(checks[0].task, peer(1), honest(99))).unwrap();
    c.report(att(checks[0].task, peer(3), honest(checks[0].task.index))).unwrap();
    let third = c.lease_job(&job(1), peer(4), 1, 0);
    assert_eq!(third[0].task, checks[0].task);
    assert_eq!(c.report(att(third[0].task, peer(4), honest(third[0].task.index))), Ok(Reported::Decided));
    assert!(!c.reputation().is_trusted(&peer(1), 10));
}

#[test]
fn a_lapsed_or_released_lone_lease_sends_its_task_back_to_normal() {
    let mut c = coordinator(1);
    warm_up(&mut c, job(9), &[peer(1), peer(2)], 10);
    c.submit(job(1), adaptive(2, 10, 0)).unwrap();
    let lone = c.lease_job(&job(1), peer(1), 2, 0);
    assert_eq!(lone.len(), 2);
    c.release(lone[0].task, peer(1), Release::Abandoned);
    // Task 0 is untouched again: peer 2 (trusted) takes it alone.
    let l2 = c.lease_job(&job(1), peer(2), 2, 1);
    assert_eq!(l2.iter().map(|l| l.task).collect::<Vec<_>>(), vec![lone[0].task]);
    // Task 1's lone lease lapses: the task wants its replicas again, and peer 1 never gets it.
    c.tick(lone[1].expires_at);
    assert!(c.lease_job(&job(1), peer(1), 2, lone[1].expires_at).is_empty());
    assert_eq!(c.report(att(lone[1].task, peer(1), honest(1))), Err(ReportError::NoLease { task: lone[1].task, peer: peer(1) }));
    let l3 = c.lease_job(&job(1), peer(3), 2, lone[1].expires_at);
    assert_eq!(l3.iter().map(|l| l.task).collect::<Vec<_>>(), vec![lone[1].task]);
    assert_eq!(c.report(att(lone[1].task, peer(3), honest(1))), Ok(Reported::Recorded), "peer 3 is not trusted");
}

#[test]
fn lone_marks_are_refused_where_they_cannot_be() {
    let mut c = coordinator(1);
    c.submit(job(1), spec(1, 2, 5)).unwrap();
    c.submit(job(2), adaptive(1, 10, 0)).unwrap();
    let t1 = task(job(1), 0);
    assert_eq!(c.restore_attestation_lone(att(t1, peer(1), honest(0)), true), Err(ReportError::NotLone(t1)));
    let t2 = task(job(2), 0);
    assert_eq!(c.restore_attestation_lone(att(t2, peer(1), honest(0)), false), Ok(Reported::Recorded));
    assert_eq!(c.restore_attestation_lone(att(t2, peer(2), honest(0)), true), Err(ReportError::NotLone(t2)));
    let mut d = coordinator(2);
    d.submit(job(2), adaptive(1, 10, 0)).unwrap();
    assert_eq!(d.restore_attestation_lone(att(t2, peer(1), honest(0)), true), Ok(Reported::Decided));
    assert!(d.task(&t2).unwrap().lone);
}

#[derive(Clone, Debug)]
enum Op {
    Lease { peer: u8, max: u8 },
    Report { nth: u16 },
    Lapse { nth: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..8, 1u8..6).prop_map(|(peer, max)| Op::Lease { peer, max }),
        4 => any::<u16>().prop_map(|nth| Op::Report { nth }),
        1 => any::<u16>().prop_map(|nth| Op::Lapse { nth }),
    ]
}

/// Peer 7 lies once it is trusted (a sleeper), each lie its own wrong answer.
fn answer(c: &Coordinator, p: PeerId, index: u32) -> ResultKey {
    if p == peer(7) && c.reputation().is_trusted(&p, 10) {
        ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId([7; 32]) }
    } else {
        honest(index)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the order of leases, reports and lapses, a standby that replays the recorded
    /// attestations with their lone marks, holding none of the active one's reputation, reaches
    /// the same verdicts; every lone verdict rests on the first attestation of a peer that was
    /// trusted then; quorum verdicts still need a quorum.
    #[test]
    fn replay_with_lone_marks_reaches_identical_verdicts(
        tasks in 1u32..30,
        per_mille in prop_oneof![Just(0u32), Just(300), Just(1_000)],
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let mut a = coordinator(1);
        warm_up(&mut a, job(9), &[peer(1), peer(2), peer(3), peer(7)], 10);
        a.submit(job(1), adaptive(tasks, 10, per_mille)).unwrap();
        let mut out: Vec<Lease> = Vec::new();
        let mut log: Vec<(Attestation, bool)> = Vec::new();
        let now = 0;
        for op in ops {
            match op {
                Op::Lease { peer: p, max } => out.extend(a.lease_job(&job(1), peer(p), max as usize, now)),
                Op::Report { nth } if !out.is_empty() => {
                    let l = out.swap_remove(nth as usize % out.len());
                    let trusted = a.reputation().is_trusted(&l.peer, 10);
                    let x = att(l.task, l.peer, answer(&a, l.peer, l.task.index));
                    let before = a.task(&l.task).unwrap().attestations;
                    if let Ok(Reported::Recorded | Reported::Decided) = a.report(x.clone()) {
                        let v = a.task(&l.task).unwrap();
                        // The mark is only ever on a task's first attestation, and that decides it.
                        let lone = v.lone && before == 0;
                        if lone {
                            prop_assert!(trusted, "a lone verdict from an untrusted peer");
                            prop_assert!(v.state.is_final() && v.attestations == 1);
                        } else if v.state == TaskState::Verified {
                            prop_assert!(v.verified_by.len() >= 2, "no quorum: {v:?}");
                        }
                        log.push((x, lone));
                    }
                }
                Op::Lapse { nth } if !out.is_empty() => {
                    let l = out.swap_remove(nth as usize % out.len());
                    a.release(l.task, l.peer, Release::Abandoned);
                }
                _ => {}
            }
        }
        let mut b = coordinator(2);
        b.submit(job(1), adaptive(tasks, 10, per_mille)).unwrap();
        b.set_standby(&job(1), true);
        for (x, lone) in &log {
            prop_assert!(b.restore_attestation_lone(x.clone(), *lone).is_ok());
        }
        for i in 0..tasks {
            let (va, vb) = (a.task(&task(job(1), i)).unwrap(), b.task(&task(job(1), i)).unwrap());
            prop_assert_eq!(&va.verdict, &vb.verdict);
            prop_assert_eq!(va.lone, vb.lone);
            prop_assert_eq!(&va.verified_by, &vb.verified_by);
        }
        prop_assert_eq!(a.job(&job(1)).unwrap().counts.verified, b.job(&job(1)).unwrap().counts.verified);
    }
}

#[test]
fn a_trusted_peer_gets_no_more_lone_leases_than_its_budget_between_checks() {
    let mut c = coordinator(1);
    warm_up(&mut c, job(9), &[peer(1), peer(2)], 10);
    // No spot checks at all: every task would go alone, but for the budget.
    c.submit(job(1), adaptive(100, 10, 0)).unwrap();
    let leases = c.lease_job(&job(1), peer(1), 100, 0);
    assert_eq!(leases.len(), 100);
    let budget = Coordinator::LONE_BUDGET as usize;
    // Report everything; only the budget's worth is decided alone, the rest waits for a quorum.
    let mut decided_alone = 0;
    for l in &leases {
        if c.report(att(l.task, l.peer, honest(l.task.index))) == Ok(Reported::Decided) {
            assert!(c.task(&l.task).unwrap().lone);
            decided_alone += 1;
        }
    }
    assert_eq!(decided_alone, budget);
    // Peer 2 completes one of the others: a replicated verdict peer 1 agrees with renews its
    // budget.
    let open = c.lease_job(&job(1), peer(2), 1, 0);
    assert_eq!(c.report(att(open[0].task, peer(2), honest(open[0].task.index))), Ok(Reported::Decided));
    c.submit(job(2), adaptive(100, 10, 0)).unwrap();
    let again = c.lease_job(&job(2), peer(1), 100, 0);
    let mut alone = 0;
    for l in &again {
        if c.report(att(l.task, l.peer, honest(l.task.index))) == Ok(Reported::Decided) {
            alone += 1;
        }
    }
    assert_eq!(alone, budget);
}
