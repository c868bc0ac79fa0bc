//! The random mesh of the property tests: peers (some lying, alone or together), the steps they
//! take in any order, and a model of what the coordinator must do, checked after every step.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use proptest::prelude::*;
use spare_protocol::*;

use crate::common::*;

/// One step of a random mesh: requests, runs and messages in any order, with loss of leases.
#[derive(Clone, Debug)]
pub enum Step {
    /// A peer asks for work.
    Lease { peer: u8, max: u8 },
    /// A worker finishes the `nth` replica it holds; its attestation goes on the wire.
    Run { nth: u16 },
    /// The wire delivers its `nth` message, in any order; `dup` leaves a copy on the wire.
    Deliver { nth: u16, dup: bool },
    /// An already delivered attestation arrives again.
    Replay { nth: u16 },
    /// A worker hands back the `nth` replica it holds.
    Release { nth: u16, deadline: bool },
    /// Time passes; the coordinator ticks.
    Advance { ms: u32 },
    /// The membership layer declares a peer dead (rightly or not).
    Down { peer: u8 },
}

pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<u8>(), 1u8..4).prop_map(|(peer, max)| Step::Lease { peer, max }),
        6 => any::<u16>().prop_map(|nth| Step::Run { nth }),
        6 => (any::<u16>(), prop::bool::weighted(0.2)).prop_map(|(nth, dup)| Step::Deliver { nth, dup }),
        1 => any::<u16>().prop_map(|nth| Step::Replay { nth }),
        1 => (any::<u16>(), any::<bool>()).prop_map(|(nth, deadline)| Step::Release { nth, deadline }),
        2 => (0u32..3_000).prop_map(|ms| Step::Advance { ms }),
        1 => (0u32..20_000).prop_map(|ms| Step::Advance { ms }),
        1 => any::<u8>().prop_map(|peer| Step::Down { peer }),
    ]
}

pub const TIMEOUT_MS: u64 = 10_000;

/// The peers and who lies. Peers are 1..=n; fresh honest peers (100..) join at the end.
pub struct Mesh {
    pub n: u8,
    pub liars: u8,
    pub collude: bool,
}

impl Mesh {
    fn is_liar(&self, p: PeerId) -> bool {
        p.0[0] <= self.n && self.liars & (1 << (p.0[0] - 1)) != 0
    }

    fn liar_count(&self) -> u32 {
        (1..=self.n).filter(|&p| self.is_liar(peer(p))).count() as u32
    }

    /// The honest result: some tasks honestly trap, so agreed failures happen too.
    fn truth(task: TaskId) -> ResultKey {
        let outcome = if task.index % 5 == 4 { Outcome::Trapped } else { Outcome::Exited(0) };
        let mut b = task.job.0.to_vec();
        b.extend_from_slice(&task.index.to_le_bytes());
        ResultKey { outcome, output_hash: BlobId::of(&b) }
    }

    /// What `p` reports: the truth, its own wrong hash, or the colluders' shared wrong hash.
    fn answer(&self, p: PeerId, task: TaskId) -> ResultKey {
        if !self.is_liar(p) {
            return Mesh::truth(task);
        }
        let who = if self.collude { 0 } else { p.0[0] };
        let mut b = vec![0xee, who, task.job.0[0]];
        b.extend_from_slice(&task.index.to_le_bytes());
        ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId::of(&b) }
    }
}

/// What the test knows, independently of the coordinator's insides.
#[derive(Default)]
pub struct Model {
    now: Millis,
    /// Live leases as the coordinator must see them: (peer, task) → expiry.
    held: BTreeMap<(PeerId, TaskId), Millis>,
    /// Replicas the workers believe they hold (some lapsed meanwhile).
    workers: Vec<Lease>,
    wire: Vec<Attestation>,
    delivered: Vec<Attestation>,
    attested: HashSet<(PeerId, TaskId)>,
    /// Lapsed peers per task, newest last, bounded as documented.
    lapsed: HashMap<TaskId, VecDeque<PeerId>>,
    finals: HashMap<TaskId, Verdict>,
}

pub struct World {
    pub c: Coordinator,
    pub mesh: Mesh,
    pub jobs: Vec<(JobId, JobSpec)>,
    pub m: Model,
}

impl World {
    fn policy(&self, task: TaskId) -> Policy {
        self.jobs.iter().find(|(id, _)| *id == task.job).map(|(_, s)| s.policy).unwrap_or_default()
    }

    /// Drains events into the model, checking each is allowed.
    fn absorb(&mut self) -> Result<(), TestCaseError> {
        while let Some(e) = self.c.poll_event() {
            match e {
                Event::TaskFinal { task, verdict } => {
                    prop_assert!(verdict.is_final());
                    prop_assert!(self.m.finals.insert(task, verdict).is_none(), "a task became final twice");
                    self.m.held.retain(|(_, t), _| *t != task);
                }
                Event::LeaseExpired { task, peer } => {
                    prop_assert!(self.m.held.remove(&(peer, task)).is_some(), "a lease lapsed that was not held");
                    let bound = (self.policy(task).max_replicas + Coordinator::LAPSED_SLACK) as usize;
                    let q = self.m.lapsed.entry(task).or_default();
                    q.push_back(peer);
                    while q.len() > bound {
                        q.pop_front();
                    }
                }
                Event::JobFinished { state, .. } => prop_assert!(state.is_final()),
            }
        }
        Ok(())
    }

    /// A lease the coordinator handed out: never a second replica, never a lapsed task.
    fn leased(&mut self, l: Lease) -> Result<(), TestCaseError> {
        let key = (l.peer, l.task);
        prop_assert!(!self.m.held.contains_key(&key), "two leases of one task on one peer");
        prop_assert!(!self.m.attested.contains(&key), "a lease for a task the peer attested");
        prop_assert!(!self.m.lapsed.get(&l.task).is_some_and(|q| q.contains(&l.peer)), "a lapsed task came back");
        prop_assert!(!self.m.finals.contains_key(&l.task), "a lease on a final task");
        prop_assert_eq!(l.expires_at, self.m.now + TIMEOUT_MS + CoordinatorConfig::default().lease_grace_ms);
        self.m.held.insert(key, l.expires_at);
        Ok(())
    }

    /// Delivers an attestation: accepted exactly when its peer holds the lease.
    fn deliver(&mut self, a: Attestation) -> Result<(), TestCaseError> {
        let key = (a.peer, a.task);
        let expected = self.m.held.contains_key(&key);
        let got = self.c.report(a.clone());
        prop_assert_eq!(got.is_ok(), expected, "report {:?} gave {:?}", key, got);
        if got.is_ok() {
            self.m.held.remove(&key);
            self.m.attested.insert(key);
        }
        self.m.delivered.push(a);
        self.absorb()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let honest_wins = self.mesh.liar_count() < 1 || !self.mesh.collude;
        for (id, spec) in &self.jobs {
            let q = spec.policy.quorum;
            let view = self.c.job(id).unwrap();
            let n = view.counts;
            prop_assert_eq!(n.total, spec.task_count);
            prop_assert_eq!(n.total, n.pending + n.running + n.verified + n.failed + n.inconclusive);
            let mut by_state = TaskCounts { total: n.total, ..TaskCounts::default() };
            for index in 0..spec.task_count {
                let task = TaskId { job: *id, index };
                let t = self.c.task(&task).unwrap();
                match t.state {
                    TaskState::Pending => by_state.pending += 1,
                    TaskState::Running => by_state.running += 1,
                    TaskState::Verified => by_state.verified += 1,
                    TaskState::Failed => by_state.failed += 1,
                    TaskState::Inconclusive => by_state.inconclusive += 1,
                }
                prop_assert_eq!(self.m.finals.get(&task), t.verdict.is_final().then_some(&t.verdict));
                prop_assert_eq!(t.state == TaskState::Running, self.m.held.keys().any(|(_, x)| *x == task));
                if let Some(key) = t.verdict.agreed() {
                    let distinct: HashSet<_> = t.verified_by.iter().collect();
                    prop_assert_eq!(distinct.len(), t.verified_by.len());
                    prop_assert!(distinct.len() as u32 >= q, "verified without a quorum");
                    for p in &t.verified_by {
                        prop_assert!(self.m.attested.contains(&(*p, task)));
                        prop_assert_eq!(&self.mesh.answer(*p, task), key);
                    }
                    if self.mesh.liar_count() < q || (honest_wins && q >= 2) {
                        prop_assert_eq!(key, &Mesh::truth(task), "a wrong output was agreed");
                    }
                }
            }
            prop_assert_eq!(by_state, n);
        }
        for p in (1..=self.mesh.n).map(peer).chain((100..108).map(peer)) {
            let got: Vec<(TaskId, Millis)> = self.c.leases_of(&p).iter().map(|l| (l.task, l.expires_at)).collect();
            let want: Vec<(TaskId, Millis)> =
                self.m.held.iter().filter(|((x, _), _)| *x == p).map(|((_, t), e)| (*t, *e)).collect();
            prop_assert_eq!(got, want);
        }
        Ok(())
    }

    pub fn run(&mut self, s: Step) -> Result<(), TestCaseError> {
        let pick = |nth: u16, len: usize| nth as usize % len;
        match s {
            Step::Lease { peer: p, max } => {
                let p = peer(p % self.mesh.n + 1);
                for l in self.c.lease(p, max as usize, self.m.now) {
                    self.leased(l)?;
                    self.m.workers.push(l);
                }
            }
            Step::Run { nth } if !self.m.workers.is_empty() => {
                let l = self.m.workers.swap_remove(pick(nth, self.m.workers.len()));
                self.m.wire.push(att(l.task, l.peer, self.mesh.answer(l.peer, l.task)));
            }
            Step::Deliver { nth, dup } if !self.m.wire.is_empty() => {
                let i = pick(nth, self.m.wire.len());
                let a = if dup { self.m.wire[i].clone() } else { self.m.wire.swap_remove(i) };
                self.deliver(a)?;
            }
            Step::Replay { nth } if !self.m.delivered.is_empty() => {
                self.deliver(self.m.delivered[pick(nth, self.m.delivered.len())].clone())?;
            }
            Step::Release { nth, deadline } if !self.m.workers.is_empty() => {
                let l = self.m.workers.swap_remove(pick(nth, self.m.workers.len()));
                let why = if deadline { Release::Deadline } else { Release::Abandoned };
                self.c.release(l.task, l.peer, why);
                self.m.held.remove(&(l.peer, l.task));
                self.absorb()?;
            }
            Step::Advance { ms } => {
                self.m.now += u64::from(ms);
                self.c.tick(self.m.now);
                self.absorb()?;
                prop_assert!(self.m.held.values().all(|&e| e > self.m.now), "a lease outlived its expiry");
            }
            Step::Down { peer: p } => {
                let p = peer(p % self.mesh.n + 1);
                let had = self.m.held.keys().filter(|(x, _)| *x == p).count();
                prop_assert_eq!(self.c.peer_down(p, self.m.now), had);
                self.absorb()?;
                prop_assert!(!self.m.held.keys().any(|(x, _)| *x == p));
            }
            _ => {}
        }
        self.check()
    }

    /// Fresh honest peers join after every old lease lapsed: every task must reach a verdict.
    pub fn finish(&mut self) -> Result<(), TestCaseError> {
        self.m.now += TIMEOUT_MS + CoordinatorConfig::default().lease_grace_ms + 1;
        self.c.tick(self.m.now);
        self.absorb()?;
        for _round in 0..16 {
            let mut progress = false;
            for p in (100..108).map(peer) {
                for l in self.c.lease(p, 64, self.m.now) {
                    progress = true;
                    self.leased(l)?;
                    self.deliver(att(l.task, p, Mesh::truth(l.task)))?;
                }
            }
            self.check()?;
            if !progress {
                break;
            }
        }
        for (id, spec) in &self.jobs {
            for index in 0..spec.task_count {
                prop_assert!(self.m.finals.contains_key(&TaskId { job: *id, index }), "task {} never finished", index);
            }
            prop_assert!(self.c.job(id).unwrap().state.is_final());
        }
        Ok(())
    }
}

pub fn shape() -> impl Strategy<Value = (u32, u32, u32)> {
    (1u32..=30, 1u32..=3, 0u32..=4).prop_map(|(tasks, q, extra)| (tasks, q, q + extra))
}
