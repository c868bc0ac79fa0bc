//! Deterministic tests of [`Hosts`]: a few hosts joined by an in-memory network that delivers at
//! once (or loses what crosses a cut), in virtual time, with no sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{Adopt, Host, Hosts, Members, Notice, Recorded, ReportItem, Transmit, Write};
use crate::rendezvous::DEFAULT_COORDINATORS;
use crate::peer::replication::{REPLICATE_PAUSE_MS, REPLICATE_TRIES};
use crate::peer::takeover::SYNC_TIMEOUT_MS;
use crate::records::{JobAd, Verifier};
use crate::{Attestation, BlobId, Detail, JobId, JobState, Release, Millis, Outcome, PeerId, Policy, ResultKey, TaskId};

/// The origin: `test_coordinator`'s jobs name it.
const A: PeerId = PeerId([9; 32]);
const B: PeerId = PeerId([2; 32]);
const C: PeerId = PeerId([3; 32]);
const D: PeerId = PeerId([4; 32]);
/// A worker (not a member that could coordinate).
const W: PeerId = PeerId([21; 32]);

/// Virtual time a test may run before it is taken for a loop.
const MAX_STEPS: usize = 100_000;

fn verifier() -> Verifier {
    Arc::new(|_, _, _| true)
}

fn att(task: TaskId, peer: PeerId, output: &[u8]) -> Attestation {
    let result = ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId::of(output) };
    Attestation { task, peer, result, fuel_used: 0, signature: vec![1] }
}

/// What one host knows of the mesh: every member but those it holds dead, and those whose
/// adverts say they are unreachable.
struct View(Vec<PeerId>, BTreeSet<PeerId>);

impl Members for View {
    fn is_live(&self, peer: &PeerId) -> bool {
        self.0.contains(peer)
    }
    fn live_peers(&self) -> usize {
        self.0.len() + 1
    }
    fn active_members(&self) -> usize {
        self.0.len()
    }
    fn live(&self) -> Vec<PeerId> {
        self.0.clone()
    }
    fn may_coordinate(&self, peer: &PeerId) -> bool {
        !self.1.contains(peer)
    }
}

/// The hosts, the network between them, and what came out.
struct Net {
    now: Millis,
    job: JobId,
    hosts: BTreeMap<PeerId, Hosts>,
    /// Every member that could coordinate.
    members: Vec<PeerId>,
    /// Pairs whose messages are lost.
    cut: BTreeSet<(PeerId, PeerId)>,
    /// Members crashed.
    down: BTreeSet<PeerId>,
    /// Members whose calls get no answer at all (neither an answer nor a failure).
    silent: BTreeSet<PeerId>,
    /// Members whose adoptions wait in `parked` until [`Net::unpark`] delivers them.
    slow: BTreeSet<PeerId>,
    parked: Vec<(PeerId, Transmit)>,
    /// Members whose adverts say they are unreachable (they may not coordinate).
    unreachable: BTreeSet<PeerId>,
    /// Who each host holds dead.
    dead: BTreeMap<PeerId, BTreeSet<PeerId>>,
    /// Each announcer's latest ad.
    ads: BTreeMap<PeerId, JobAd>,
    seq: u64,
    notices: Vec<(PeerId, Notice)>,
    answers: Vec<(PeerId, u32, u32)>,
    /// Every write each host asked for, in order.
    writes: Vec<(PeerId, Write)>,
}

impl Net {
    /// A job of `tasks` tasks at A, offered to B, C and D (three coordinators in all).
    fn new(tasks: u32) -> Net {
        let (coord, job) = crate::peer::test_coordinator(tasks, Policy::default());
        let mut net = Net {
            now: 0,
            job,
            hosts: BTreeMap::new(),
            members: vec![A, B, C, D],
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            silent: BTreeSet::new(),
            slow: BTreeSet::new(),
            parked: Vec::new(),
            unreachable: BTreeSet::new(),
            dead: BTreeMap::new(),
            ads: BTreeMap::new(),
            seq: 0,
            notices: Vec::new(),
            answers: Vec::new(),
            writes: Vec::new(),
        };
        let mut hosts = Hosts::new(A, coord, verifier());
        hosts.coordinate(job, vec![A], 0);
        net.hosts.insert(A, hosts);
        net.call(A, |h, _, _| {
            h.offer(&job, &[B, C, D]);
            h.look_at_roles(&job, 0);
        });
        net
    }

    /// `p`'s host of the job.
    fn host(&self, p: PeerId) -> &Host {
        self.hosts[&p].host(&self.job).expect("the job is held")
    }

    fn view(&self, me: PeerId) -> View {
        let dead = self.dead.get(&me);
        View(self.members.iter().copied().filter(|p| *p != me && dead.is_none_or(|d| !d.contains(p))).collect(), self.unreachable.clone())
    }

    /// Whether a message from `a` reaches `b`.
    fn reachable(&self, a: PeerId, b: PeerId) -> bool {
        !self.down.contains(&b) && !self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn split(&mut self, a: PeerId, others: &[PeerId]) {
        for &b in others {
            self.cut.insert((a.min(b), a.max(b)));
        }
    }

    /// `me` holds `who` dead (or live again).
    fn believe(&mut self, me: PeerId, who: PeerId, dead: bool) {
        let set = self.dead.entry(me).or_default();
        if dead {
            set.insert(who);
        } else {
            set.remove(&who);
        }
        let live = self.view(me).live_peers();
        let now = self.now;
        self.call(me, |h, _, _| h.handle_members(live, dead.then_some(who), now));
    }

    /// Runs `f` on `who`'s host, then delivers everything that came out of any host.
    fn call<R>(&mut self, who: PeerId, f: impl FnOnce(&mut Hosts, &View, Millis) -> R) -> Option<R> {
        let mut host = self.hosts.remove(&who)?;
        let r = f(&mut host, &self.view(who), self.now);
        self.hosts.insert(who, host);
        self.settle();
        Some(r)
    }

    fn settle(&mut self) {
        for _ in 0..MAX_STEPS {
            // Every store is durable at once here.
            for (id, h) in &mut self.hosts {
                while let Some((n, w)) = h.poll_persist() {
                    h.handle_durable(n);
                    self.writes.push((*id, w));
                }
            }
            let out = self.hosts.iter_mut().find_map(|(id, h)| {
                h.poll_transmit().map(|t| (*id, Ok(t))).or_else(|| h.poll_notice().map(|(_, n)| (*id, Err(n))))
            });
            match out {
                None => return,
                Some((from, Ok(t))) => self.deliver(from, t),
                Some((from, Err(n))) => self.notice(from, n),
            }
        }
        panic!("the hosts kept talking");
    }

    fn deliver(&mut self, from: PeerId, t: Transmit) {
        let now = self.now;
        match t {
            Transmit::ReportAnswer { to, accepted, rejected, .. } => self.answers.push((to, accepted, rejected)),
            Transmit::Replicate { to, job, items } => {
                let ok = self.reachable(from, to) && self.hosts.get_mut(&to).is_some_and(|h| h.handle_replicate(from, job, items, now).is_ok());
                self.call(from, |h, _, now| h.handle_replicated(&job, to, ok, now));
            }
            Transmit::Adopt { to, .. } if self.silent.contains(&to) => {}
            Transmit::Adopt { to, .. } if self.slow.contains(&to) => self.parked.push((from, t)),
            Transmit::Adopt { to, job, coordinators, log, kind, .. } => {
                // What the driver adds from the sender's coordinator, as the peer's request does.
                let sender = self.hosts[&from].coordinator();
                let cancelled = sender.job(&job).is_some_and(|j| j.state == JobState::Cancelled);
                let timed_out = sender.timed_out(&job);
                let missing = self.reachable(from, to).then(|| {
                    let fresh = !self.hosts.contains_key(&to);
                    if fresh {
                        let (mut coord, _) = crate::peer::test_coordinator(self.task_count(), Policy::default());
                        coord.set_standby(&job, true);
                        let mut hosts = Hosts::new(to, coord, verifier());
                        hosts.coordinate(job, coordinators.clone(), now);
                        self.hosts.insert(to, hosts);
                    }
                    let log = log.into_iter().map(Recorded::bare).collect();
                    let adopt = Adopt { from, job, coordinators, log, kind, timed_out, cancelled };
                    self.call(to, |h, _, now| h.handle_adopt(adopt, fresh, now)).unwrap_or_default()
                });
                let missing = missing.map(|m| m.into_iter().map(Recorded::bare).collect());
                self.call(from, |h, v, now| h.handle_adopted(&job, to, missing, kind, now, v));
            }
        }
    }

    /// `who`'s adoptions are delivered from now on, those parked first.
    fn unpark(&mut self, who: PeerId) {
        self.slow.remove(&who);
        let (due, keep) = std::mem::take(&mut self.parked).into_iter().partition(|(_, t)| matches!(t, Transmit::Adopt { to, .. } if *to == who));
        self.parked = keep;
        for (from, t) in due {
            self.deliver(from, t);
        }
    }

    fn task_count(&self) -> u32 {
        self.hosts.values().next().and_then(|h| h.coordinator().job(&self.job)).map_or(1, |j| j.spec.task_count)
    }

    fn notice(&mut self, from: PeerId, n: Notice) {
        if let Notice::Announce { done } = &n {
            self.seq += 1;
            let coordinators = self.host(from).coordinators().to_vec();
            let ad = JobAd {
                job: self.job,
                origin: A,
                announcer: from,
                seq: self.seq,
                module: BlobId([3; 32]),
                task_count: 1,
                policy: Policy::default(),
                coordinators,
                submitted_at_ms: 0,
                done: *done,
                content_digest: [0; 32],
                nonce: Vec::new(),
                origin_named: Vec::new(),
                origin_signature: Vec::new(),
                chain: Vec::new(),
                signature: Vec::new(),
            };
            self.ads.insert(from, ad);
            self.spread(from);
        }
        self.notices.push((from, n));
    }

    /// Gossips `announcer`'s latest ad to every host it reaches: a newer ad where the receiver
    /// names the announcer, a rival ad otherwise (as membership tells them apart).
    fn spread(&mut self, announcer: PeerId) {
        let Some(ad) = self.ads.get(&announcer).cloned() else { return };
        let to: Vec<PeerId> = self.hosts.keys().copied().filter(|h| *h != announcer && self.reachable(announcer, *h)).collect();
        for h in to {
            let named = self.host(h).coordinators().contains(&announcer);
            self.call(h, |host, _, _| if named { host.handle_ad(&ad) } else { host.handle_rival(&ad) });
        }
    }

    /// Every latest ad goes round again (gossip after a cut heals).
    fn gossip(&mut self) {
        for a in self.ads.keys().copied().collect::<Vec<_>>() {
            self.spread(a);
        }
    }

    /// Runs every timer due until `until`.
    fn run_until(&mut self, until: Millis) {
        for _ in 0..MAX_STEPS {
            let next = self.hosts.values().filter_map(|h| h.poll_timeout()).min();
            let Some(at) = next.filter(|at| *at <= until) else {
                self.now = until;
                return;
            };
            self.now = self.now.max(at);
            let due: Vec<PeerId> = self.hosts.iter().filter(|(_, h)| h.poll_timeout().is_some_and(|t| t <= self.now)).map(|(id, _)| *id).collect();
            for id in due {
                self.call(id, |h, v, now| h.handle_timeout(now, v));
            }
            if self.hosts.values().filter_map(|h| h.poll_timeout()).min().is_some_and(|t| t <= self.now) {
                // A timer that stays due makes no progress at this instant: let time pass.
                self.now += 1;
            }
        }
        panic!("timers kept firing");
    }

    fn leaders(&self) -> Vec<PeerId> {
        self.hosts.iter().filter(|(_, h)| h.leads(&self.job)).map(|(id, _)| *id).collect()
    }

    /// Leases one replica to W at `at` and returns its task.
    fn lease(&mut self, at: PeerId) -> TaskId {
        let job = self.job;
        let granted = self.call(at, |h, _, now| h.handle_lease(&job, W, 1, None, now)).flatten().expect("host");
        granted.leases.first().expect("a lease").task
    }

    fn report(&mut self, at: PeerId, task: TaskId) -> (u32, u32) {
        let batch = vec![ReportItem::Attest(att(task, W, b"42"), b"42".to_vec(), Detail::default())];
        let tally = self.call(at, |h, _, now| h.handle_report(W, 0, batch, now)).expect("host");
        (tally.accepted, tally.rejected)
    }

    /// Crashes `who`: its host is gone, everybody else holds it dead.
    fn crash(&mut self, who: PeerId) -> Hosts {
        let host = self.hosts.remove(&who).expect("host");
        self.down.insert(who);
        for h in self.hosts.keys().copied().collect::<Vec<_>>() {
            self.believe(h, who, true);
        }
        host
    }
}

/// The job settles at A with the two of B, C and D that rank highest as its backups.
fn formed() -> (Net, Vec<PeerId>) {
    let mut net = Net::new(4);
    net.run_until(10_000);
    assert_eq!(net.leaders(), vec![A]);
    let list = net.host(A).coordinators().to_vec();
    assert_eq!(list.len(), DEFAULT_COORDINATORS, "A and its backups");
    (net, list[1..].to_vec())
}

#[test]
fn a_new_job_is_adopted_by_its_backups_and_announced_with_them() {
    let (net, backups) = formed();
    for b in &backups {
        assert!(!net.hosts[b].is_active(&net.job), "{b:?} stands by");
        assert_eq!(net.host(*b).coordinators(), net.host(A).coordinators());
    }
    assert_eq!(net.ads[&A].coordinators, net.host(A).coordinators());
    let list = net.host(A).coordinators().to_vec();
    assert!(net.writes.contains(&(A, Write::Coordinators { job: net.job, list })), "the settled list is stored");
}

#[test]
fn a_report_is_answered_once_a_backup_holds_it() {
    let (mut net, backups) = formed();
    let task = net.lease(A);
    assert_eq!(net.report(A, task), (1, 0));
    assert!(net.answers.is_empty(), "held until a backup has it");
    net.run_until(net.now + 1_000);
    assert_eq!(net.answers, vec![(W, 1, 0)]);
    for b in &backups {
        assert_eq!(net.host(*b).log().len(), 1, "{b:?} replayed it");
    }
}

#[test]
fn takeover_when_the_leader_dies_and_reports_follow_it() {
    let (mut net, _) = formed();
    let task = net.lease(A);
    // The lease reaches the backups before A dies.
    net.run_until(net.now + 1_000);
    net.crash(A);
    net.run_until(net.now + 10_000);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1, "one backup took over: {leaders:?}");
    let leader = leaders[0];
    assert_eq!(net.host(leader).coordinators()[0], leader);
    assert!(net.notices.iter().any(|(p, n)| *p == leader && *n == Notice::TookOver));
    // W's report of A's lease is taken by the new leader: the backups held the lease.
    assert_eq!(net.report(leader, task), (1, 0));
}

#[test]
fn two_leaders_meeting_after_a_split_settle_to_one() {
    let (mut net, _) = formed();
    net.split(A, &[B, C, D]);
    for b in [B, C, D] {
        net.believe(b, A, true);
    }
    net.run_until(net.now + 10_000);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 2, "A on its side, a backup on the other: {leaders:?}");
    let other = leaders.iter().copied().find(|p| *p != A).expect("a second leader");
    // The cut heals; the ads of both sides go round.
    net.cut.clear();
    for b in [B, C, D] {
        net.believe(b, A, false);
    }
    net.gossip();
    net.run_until(net.now + 10_000);
    assert_eq!(net.leaders(), vec![A], "the origin outranks {other:?}");
    assert!(net.notices.iter().any(|(p, n)| *p == other && *n == Notice::HandedOver { to: A }));
    assert!(!net.hosts[&other].is_active(&net.job));
}

#[test]
fn a_backup_is_caught_up_after_a_lost_replication_batch() {
    let (mut net, backups) = formed();
    let (b, c) = (backups[0], backups[1]);
    net.split(A, &[b]);
    let task = net.lease(A);
    net.report(A, task);
    // Every try of the batch to B is lost: it is given up and B is to be caught up.
    net.run_until(net.now + u64::from(REPLICATE_TRIES) * (REPLICATE_PAUSE_MS + 50));
    assert!(net.notices.iter().any(|(p, n)| *p == A && *n == Notice::ReplicationDropped));
    assert!(net.host(b).log().is_empty());
    assert_eq!(net.host(c).log().len(), 1);
    net.cut.clear();
    net.run_until(net.now + 5_000);
    assert_eq!(net.host(b).log().len(), 1, "the catch-up brought {b:?} the attestation");
}

#[test]
fn a_restarted_leader_beside_its_replacement_leads_again() {
    let (mut net, _) = formed();
    let task = net.lease(A);
    net.report(A, task);
    net.run_until(net.now + 1_000);
    let (_, list, log) = net.crash(A).stored().into_iter().next().expect("A held the job");
    net.run_until(net.now + 10_000);
    let replacement = net.leaders();
    assert_eq!(replacement.len(), 1);
    // A starts again on what it stored, in standby, while the replacement leads.
    let (coord, job) = crate::peer::test_coordinator(4, Policy::default());
    let mut hosts = Hosts::new(A, coord, verifier());
    hosts.restore(job, list, log, net.now);
    assert!(!hosts.is_active(&job));
    hosts.look_at_roles(&job, net.now + 1_000);
    net.hosts.insert(A, hosts);
    net.down.remove(&A);
    for h in [B, C, D] {
        net.believe(h, A, false);
    }
    net.run_until(net.now + 10_000);
    net.gossip();
    net.run_until(net.now + 10_000);
    assert_eq!(net.leaders(), vec![A], "the origin leads again, {:?} handed back", replacement[0]);
    assert_eq!(net.host(A).log().len(), 1);
    assert!(net.hosts.iter().filter(|(id, _)| **id != A).all(|(_, h)| !h.is_active(&net.job)));
}

#[test]
fn a_takeover_leads_when_a_backup_never_answers_its_sync() {
    let (mut net, backups) = formed();
    let (next, mute) = (backups[0], backups[1]);
    net.silent.insert(mute);
    net.crash(A);
    net.run_until(net.now + 1_500);
    assert!(net.leaders().is_empty(), "{next:?} waits for {mute:?}'s sync answer");
    net.run_until(net.now + SYNC_TIMEOUT_MS + 1_500);
    assert_eq!(net.leaders(), vec![next], "it leads once the sync timed out");
}

#[test]
fn what_a_new_leader_records_while_it_syncs_reaches_the_backups() {
    let (mut net, backups) = formed();
    let (next, slow) = (backups[0], backups[1]);
    let task = net.lease(A);
    net.run_until(net.now + 1_000);
    net.slow.insert(slow);
    net.crash(A);
    net.run_until(net.now + 1_500);
    assert!(net.leaders().is_empty(), "{next:?} waits for {slow:?}'s sync answer");
    // W reports A's lease to the peer it now takes for the leader, before the sync is over:
    // the sync's adoption, sent already, does not carry it, and the stream is not yet running.
    assert_eq!(net.report(next, task), (1, 0));
    net.unpark(slow);
    assert_eq!(net.leaders(), vec![next], "the sync is over");
    net.run_until(net.now + 5_000);
    assert_eq!(net.host(slow).log().len(), 1, "{slow:?} caught up with what {next:?} recorded meanwhile");
    assert_eq!(net.host(slow).log(), net.host(next).log());
}

#[test]
fn a_leader_found_unreachable_stands_by_and_a_reachable_one_takes_over() {
    let (mut net, _) = formed();
    // A's advert now says others cannot dial it: it may not coordinate, though alive.
    net.unreachable.insert(A);
    net.run_until(net.now + 20_000);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
    assert_ne!(leaders[0], A);
    assert!(!net.hosts[&A].is_active(&net.job), "A stands by");
    let list = net.host(leaders[0]).coordinators().to_vec();
    assert!(!list.contains(&A), "the new leader's list leaves A out: {list:?}");
}

/// Twin of `tests/tests/failover.rs`' cancellation test: a job cancelled at its leader is
/// cancelled at every coordinator, by the catch-up the cancellation sends.
#[test]
fn a_cancellation_reaches_every_coordinator() {
    let (mut net, backups) = formed();
    let job = net.job;
    assert_eq!(net.call(A, |h, _, now| h.cancel(&job, now)), Some(Some(true)));
    net.run_until(net.now + 5_000);
    for p in [A, backups[0], backups[1]] {
        let state = net.hosts[&p].coordinator().job(&job).map(|j| j.state);
        assert_eq!(state, Some(JobState::Cancelled), "at {p:?}");
        assert!(net.writes.contains(&(p, Write::Cancelled { job })), "{p:?} stores it");
    }
}

/// Twin of `tests/tests/failover.rs`' deadline test: a task whose replicas all miss their
/// deadline fails by deadline misses at every coordinator, the releases streamed to the backups.
#[test]
fn a_task_failed_by_deadline_misses_is_failed_at_every_coordinator() {
    let (mut net, backups) = formed();
    let (job, max) = (net.job, Policy::default().max_replicas);
    let mut task = None;
    for w in 0..max {
        let worker = PeerId([40 + w as u8; 32]);
        let t = task;
        let granted = net.call(A, |h, _, now| h.handle_lease(&job, worker, 1, None, now)).flatten().expect("held");
        let leased = granted.leases.iter().map(|l| l.task).find(|l| t.is_none_or(|t| t == *l));
        let Some(leased) = leased else { break };
        task = Some(leased);
        net.call(A, |h, _, now| h.handle_report(worker, u64::from(w), vec![ReportItem::Release(leased, Release::Deadline)], now));
        net.run_until(net.now + 1_000);
    }
    let task = task.expect("a task was leased");
    for p in [A, backups[0], backups[1]] {
        let verdict = net.hosts[&p].coordinator().task(&task).map(|t| t.verdict);
        assert!(matches!(verdict, Some(crate::Verdict::Failed(crate::Failure::TimedOut(_)))), "at {p:?}: {verdict:?}");
    }
}
