//! Tests of [`Hosts`] with more than one job at one peer: the jobs share its coordinator, so
//! its events go to their own job's host, and a report batch spanning jobs gets one answer.

use std::sync::Arc;

use super::{Hosts, Notice, ReportItem, Transmit};
use crate::{Attestation, BlobId, Detail, Event, JobId, JobSpec, Millis, Outcome, PeerId, Policy, ResultKey, TaskId};

const A: PeerId = PeerId([9; 32]);
const B: PeerId = PeerId([2; 32]);
const W: PeerId = PeerId([21; 32]);
const J2: JobId = JobId([2; 32]);

/// Peer A coordinating two jobs of 4 tasks (`[1; 32]` and [`J2`]), each with `list`.
fn two_jobs(list: &[PeerId]) -> (Hosts, JobId) {
    let (mut coord, j1) = crate::peer::test_coordinator(4, Policy::default());
    let spec = JobSpec { module: BlobId([4; 32]), task_count: 4, policy: Policy::default(), origin: A, submitted_at_ms: 0, label: String::new() };
    coord.submit(J2, spec).expect("second job accepted");
    while coord.poll_event().is_some() {}
    let mut hosts = Hosts::new(A, coord, Arc::new(|_, _, _| true));
    hosts.coordinate(j1, list.to_vec(), 0);
    hosts.coordinate(J2, list.to_vec(), 0);
    (hosts, j1)
}

fn attest(job: JobId, index: u32) -> ReportItem {
    let task = TaskId { job, index };
    let result = ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId::of(b"42") };
    ReportItem::Attest(Attestation { task, peer: W, result, fuel_used: 0, signature: vec![1] }, b"42".to_vec(), Detail::default())
}

fn lease(hosts: &mut Hosts, job: &JobId, now: Millis) -> u32 {
    hosts.handle_lease(job, W, 1, None, now).expect("held").leases[0].task.index
}

fn drain(hosts: &mut Hosts) -> (Vec<Transmit>, Vec<(JobId, Notice)>) {
    while let Some((id, _)) = hosts.poll_persist() {
        hosts.handle_durable(id);
    }
    (std::iter::from_fn(|| hosts.poll_transmit()).collect(), std::iter::from_fn(|| hosts.poll_notice()).collect())
}

fn answers(transmits: &[Transmit]) -> Vec<(u64, u32, u32)> {
    transmits.iter().filter_map(|t| if let Transmit::ReportAnswer { batch, accepted, rejected, .. } = t { Some((*batch, *accepted, *rejected)) } else { None }).collect()
}

#[test]
fn a_batch_spanning_jobs_gets_one_answer_with_what_every_job_took() {
    let (mut hosts, j1) = two_jobs(&[A]);
    let (t1, t2) = (lease(&mut hosts, &j1, 0), lease(&mut hosts, &J2, 0));
    let stranger = JobId([7; 32]);
    let tally = hosts.handle_report(W, 41, vec![attest(j1, t1), attest(J2, t2), attest(stranger, 0)], 10);
    assert_eq!((tally.accepted, tally.rejected), (2, 1), "the job held nowhere here is turned down");
    let (transmits, _) = drain(&mut hosts);
    assert_eq!(answers(&transmits), vec![(41, 2, 1)], "one answer, under the driver's id");
}

#[test]
fn a_held_answer_spanning_jobs_waits_for_each_jobs_backup() {
    let (mut hosts, j1) = two_jobs(&[A, B]);
    let (t1, t2) = (lease(&mut hosts, &j1, 0), lease(&mut hosts, &J2, 0));
    hosts.handle_report(W, 7, vec![attest(j1, t1), attest(J2, t2)], 10);
    let at = hosts.poll_timeout().expect("a stream batch is due");
    hosts.handle_timeout(at, &NoMembers);
    let (transmits, _) = drain(&mut hosts);
    let sent: Vec<JobId> = transmits.iter().filter_map(|t| if let Transmit::Replicate { to: B, job, .. } = t { Some(*job) } else { None }).collect();
    assert_eq!(sent, vec![j1, J2], "each job streams to its backup");
    assert!(answers(&transmits).is_empty(), "held until B holds both");
    hosts.handle_replicated(&j1, B, true, at + 5);
    assert!(answers(&drain(&mut hosts).0).is_empty(), "one job's part is not the answer");
    hosts.handle_replicated(&J2, B, true, at + 6);
    assert_eq!(answers(&drain(&mut hosts).0), vec![(7, 2, 0)]);
}

#[test]
fn a_dead_workers_leases_come_back_in_every_job_each_to_its_own_host() {
    let (mut hosts, j1) = two_jobs(&[A]);
    let (t1, t2) = (lease(&mut hosts, &j1, 0), lease(&mut hosts, &J2, 0));
    drain(&mut hosts);
    hosts.handle_members(2, Some(W), 50);
    let (_, notices) = drain(&mut hosts);
    let lapsed: Vec<(JobId, u32)> = notices
        .iter()
        .filter_map(|(job, n)| match n {
            Notice::Coordinator { event: Event::LeaseExpired { task, .. }, .. } if task.job == *job => Some((*job, task.index)),
            _ => None,
        })
        .collect();
    assert_eq!(lapsed, vec![(j1, t1), (J2, t2)]);
    let wakes: Vec<JobId> = notices.iter().filter(|(_, n)| *n == Notice::Wake).map(|(j, _)| *j).collect();
    assert_eq!(wakes, vec![j1, J2], "each job wakes the slots");
}

/// A mesh with nobody else in it.
pub(super) struct NoMembers;

impl super::Members for NoMembers {
    fn is_live(&self, _: &PeerId) -> bool {
        false
    }
    fn live_peers(&self) -> usize {
        1
    }
    fn active_members(&self) -> usize {
        0
    }
    fn live(&self) -> Vec<PeerId> {
        Vec::new()
    }
}

#[test]
fn a_batch_verifier_checks_a_reports_attestations_at_once() {
    let (hosts, j1) = two_jobs(&[A]);
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    // Refuses every attestation of task 1 in whichever job, in one call per report.
    let mut hosts = hosts.with_batch_verifier(Arc::new(move |atts: &[&Attestation]| {
        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        atts.iter().map(|a| a.task.index != 1).collect()
    }));
    let mut tasks = Vec::new();
    for job in [j1, J2] {
        let granted = hosts.handle_lease(&job, W, 2, None, 0).expect("held");
        tasks.extend(granted.leases.iter().map(|l| l.task));
    }
    let items = tasks.iter().map(|t| attest(t.job, t.index)).collect();
    let tally = hosts.handle_report(W, 1, items, 10);
    let refused = tasks.iter().filter(|t| t.index == 1).count() as u32;
    assert!(refused > 0, "some attestation is refused: {tasks:?}");
    assert_eq!((tally.accepted, tally.rejected), (tasks.len() as u32 - refused, refused));
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1, "one check for the whole report");
}

/// Peers `live` besides A, every one of them heard from.
struct Mesh(Vec<PeerId>);

impl super::Members for Mesh {
    fn is_live(&self, p: &PeerId) -> bool {
        *p == A || self.0.contains(p)
    }
    fn live_peers(&self) -> usize {
        1 + self.0.len()
    }
    fn active_members(&self) -> usize {
        1
    }
    fn live(&self) -> Vec<PeerId> {
        self.0.clone()
    }
}

/// A job submitted while its origin was alone (once known gap 8) gets a backup as soon as a
/// peer comes up, not at the next periodic top-up 30 s on.
#[test]
fn a_lone_coordinator_offers_its_jobs_as_soon_as_a_peer_comes_up() {
    let (mut hosts, j1) = two_jobs(&[A]);
    hosts.look_at_roles(&j1, 0);
    hosts.look_at_roles(&J2, 0);
    hosts.handle_timeout(0, &Mesh(Vec::new()));
    let offered = |t: &[Transmit]| t.iter().filter(|t| matches!(t, Transmit::Adopt { to: B, .. })).count();
    assert_eq!(offered(&drain(&mut hosts).0), 0, "nobody to offer them to");
    hosts.handle_members(2, None, 1_500);
    // Roles are looked at every second; the periodic top-up would come 30 s after the first.
    let mut sent = Vec::new();
    while let Some(at) = hosts.poll_timeout().filter(|at| *at <= 2_000) {
        hosts.handle_timeout(at, &Mesh(vec![B]));
        sent.extend(drain(&mut hosts).0);
    }
    assert_eq!(offered(&sent), 2, "both jobs offered to the newcomer within a second");
}
