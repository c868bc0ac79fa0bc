//! Property tests: whatever the order, duplication and timing of messages, lapses and peers
//! declared down, no task is verified without a quorum of distinct agreeing peers, no peer holds
//! two replicas of one task or gets back a task it let lapse, every verified output is the honest
//! one while liars are fewer than the quorum (or do not collude), a final verdict never changes,
//! counts add up, and fresh honest peers can always finish what is left.

mod common;
#[path = "properties/mesh.rs"]
mod mesh;

use std::collections::HashSet;

use common::*;
use mesh::{Mesh, Model, TIMEOUT_MS, World, shape, step};
use proptest::prelude::*;
use spare_protocol::*;

#[derive(Clone, Debug)]
enum Op {
    Lease { peer: u8, max: u8 },
    /// Report the `nth` outstanding lease of the model (modulo their count).
    Report { nth: u16 },
    /// Report something again (a duplicated message).
    Replay { nth: u16 },
    Release { nth: u16 },
    Advance { ms: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..7, 1u8..5).prop_map(|(peer, max)| Op::Lease { peer, max }),
        5 => any::<u16>().prop_map(|nth| Op::Report { nth }),
        1 => any::<u16>().prop_map(|nth| Op::Replay { nth }),
        1 => any::<u16>().prop_map(|nth| Op::Release { nth }),
        1 => (0u32..40_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// Peers 5 and 6 lie, each with its own wrong answer (no collusion).
fn answer(p: PeerId, index: u32) -> ResultKey {
    if p.0[0] >= 5 {
        ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId([p.0[0]; 32]) }
    } else {
        honest(index)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn safety_holds_for_any_message_order(
        quorum in 2u32..4,
        extra in 0u32..3,
        tasks in 1u32..12,
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let mut c = Coordinator::new(CoordinatorConfig { lease_grace_ms: 1_000, ..CoordinatorConfig::default() });
        let mut s = spec(tasks, quorum, quorum + extra);
        s.policy.limits.timeout_ms = 10_000;
        c.submit(job(1), s).unwrap();
        let mut now: Millis = 0;
        let mut out: Vec<Lease> = Vec::new();
        let mut sent: Vec<Attestation> = Vec::new();
        let mut attested: HashSet<(PeerId, u32)> = HashSet::new();
        for op in ops {
            match op {
                Op::Lease { peer: p, max } => {
                    for l in c.lease(peer(p), max as usize, now) {
                        prop_assert!(!attested.contains(&(l.peer, l.task.index)), "lease for a task the peer attested");
                        prop_assert!(
                            !out.iter().any(|o| o.peer == l.peer && o.task == l.task && o.expires_at > now),
                            "two live leases of one task on one peer"
                        );
                        out.push(l);
                    }
                }
                Op::Report { nth } if !out.is_empty() => {
                    let l = out.swap_remove(nth as usize % out.len());
                    // A peer's claim on a task is one: reporting ends every lease it had on it.
                    out.retain(|o| !(o.peer == l.peer && o.task == l.task));
                    let a = att(l.task, l.peer, answer(l.peer, l.task.index));
                    if c.report(a.clone()).is_ok() {
                        attested.insert((l.peer, l.task.index));
                    }
                    sent.push(a);
                }
                Op::Replay { nth } if !sent.is_empty() => {
                    // A duplicate counts only if the peer holds a fresh lease on the task again.
                    let a = sent[nth as usize % sent.len()].clone();
                    let fresh = out.iter().any(|o| o.peer == a.peer && o.task == a.task && o.expires_at > now);
                    let key = (a.peer, a.task.index);
                    if c.report(a).is_ok() {
                        prop_assert!(fresh && !attested.contains(&key), "a duplicate was accepted");
                        attested.insert(key);
                        out.retain(|o| !(o.peer == key.0 && o.task.index == key.1));
                    }
                }
                Op::Release { nth } if !out.is_empty() => {
                    let l = out.swap_remove(nth as usize % out.len());
                    out.retain(|o| !(o.peer == l.peer && o.task == l.task));
                    c.release(l.task, l.peer, Release::Deadline);
                }
                Op::Advance { ms } => {
                    now += u64::from(ms);
                    c.tick(now);
                }
                _ => {}
            }
            while c.poll_event().is_some() {}
        }
        // Check every verdict against the attestations that were accepted.
        let mut verified = 0;
        for i in 0..tasks {
            let t = c.task(&TaskId { job: job(1), index: i }).unwrap();
            if let Verdict::Verified(k) = t.verdict {
                verified += 1;
                prop_assert_eq!(k, honest(i), "a wrong output was verified");
                let distinct: HashSet<_> = t.verified_by.iter().collect();
                prop_assert!(distinct.len() as u32 >= quorum);
                prop_assert_eq!(distinct.len(), t.verified_by.len());
                for p in &t.verified_by {
                    prop_assert!(attested.contains(&(*p, i)));
                }
            }
        }
        let counts = c.job(&job(1)).unwrap().counts;
        prop_assert_eq!(counts.verified, verified);
        prop_assert_eq!(counts.total, counts.pending + counts.running + counts.verified + counts.failed + counts.inconclusive);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_mesh_with_liars_keeps_every_rule(
        n in 3u8..=8,
        liars in any::<u8>(),
        collude in any::<bool>(),
        shapes in prop::collection::vec(shape(), 1..=2),
        steps in prop::collection::vec(step(), 1..400),
    ) {
        let mut w = World {
            c: Coordinator::new(CoordinatorConfig::default()),
            mesh: Mesh { n, liars, collude },
            jobs: Vec::new(),
            m: Model::default(),
        };
        for (k, (tasks, q, max)) in shapes.into_iter().enumerate() {
            let mut s = spec(tasks, q, max);
            s.policy.limits.timeout_ms = TIMEOUT_MS;
            w.c.submit(job(k as u8 + 1), s.clone()).unwrap();
            w.jobs.push((job(k as u8 + 1), s));
        }
        for s in steps {
            w.run(s)?;
        }
        w.finish()?;
    }
}
