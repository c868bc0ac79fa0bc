//! The peer's decisions composed, in virtual time and without sockets: the scenarios the
//! real-process tests (`worker/tests/crash.rs`, `partition.rs`, `tests/tests/failover.rs`) exercise,
//! decided by the same `spare_protocol::peer` rules both the peer and the simulator run.

use std::collections::BTreeSet;

use spare_protocol::membership::MemberState;
use spare_protocol::peer::catchup::{CATCH_UP_AFTER_MS, CatchUps};
use spare_protocol::peer::heal::{self, FollowAd, Held, Settle};
use spare_protocol::peer::replication::{REPLICATE_TRIES, ReplicationQueue, Replicated};
use spare_protocol::peer::reports::{Delivery, REPORT_LINGER_MS, ReportQueue, Sent};
use spare_protocol::peer::roles::{RoleChange, RoleView, Roles, UNKNOWN_IS_ALIVE_MS};
use spare_protocol::peer::slots::RunTimes;
use spare_protocol::records::JobAd;
use spare_protocol::{BlobId, JobId, PeerId, Policy};

const JOB: JobId = JobId([3; 32]);

fn p(n: u8) -> PeerId {
    PeerId([n; 32])
}

fn ad(announcer: PeerId, coordinators: Vec<PeerId>) -> JobAd {
    JobAd {
        job: JOB,
        origin: p(1),
        announcer,
        seq: 1,
        module: BlobId([0; 32]),
        task_count: 10,
        policy: Policy::default(),
        coordinators,
        submitted_at_ms: 0,
        done: false,
        content_digest: [0; 32],
        nonce: Vec::new(),
        origin_named: Vec::new(),
        origin_signature: Vec::new(),
        signature: Vec::new(),
        chain: Vec::new(),
    }
}

/// The origin (peer 1) dies: the first live backup takes over, the other waits for it, and the
/// one taking over re-announces the job with itself first.
#[test]
fn takeover_when_the_leader_dies() {
    let list = [p(1), p(2), p(3)];
    let dead = |q: &PeerId| *q != p(1);
    let mut b1 = Roles::new(0);
    let mut b2 = Roles::new(0);
    let now = UNKNOWN_IS_ALIVE_MS + 1;
    let view = RoleView { job: JOB, coordinators: &list, standby: true };
    let changes = b1.evaluate(p(2), [view], dead, 2, now);
    assert_eq!(changes, vec![RoleChange::TakeOver { job: JOB, list: vec![p(2), p(3)] }]);
    assert!(b2.evaluate(p(3), [view], dead, 2, now).is_empty(), "the second backup waits for the first");
    // Next look: peer 2 leads with its new list, live backups only; it re-announces on its clock.
    let led = [p(2), p(3)];
    let next = b1.evaluate(p(2), [RoleView { job: JOB, coordinators: &led, standby: false }], dead, 2, now + 1_000);
    assert!(next.is_empty(), "nothing more to do until a re-announce or a top-up is due: {next:?}");
}

/// A restarted origin comes back in standby, leads again (its stored list puts it first), and
/// meets the backup that replaced it: both sides decide the origin leads.
#[test]
fn a_restarted_leader_beside_its_replacement() {
    let stored = [p(1), p(2), p(3)];
    let mut origin = Roles::new(0);
    // Soon after its restart it has heard of nobody: unknown peers count as live, and it is first.
    let live = |_: &PeerId| true;
    let changes = origin.evaluate(p(1), [RoleView { job: JOB, coordinators: &stored, standby: true }], live, 3, 1_000);
    assert_eq!(changes, vec![RoleChange::TakeOver { job: JOB, list: vec![p(1), p(2), p(3)] }]);
    // The replacement leads [2, 3, 4]; the origin hears its ad, the replacement hears the origin's.
    let named_at_origin: BTreeSet<PeerId> = stored.into();
    let named_at_2: BTreeSet<PeerId> = [p(1), p(2), p(3), p(4)].into();
    let theirs = vec![p(2), p(3), p(4)];
    let at_origin = Held { job: JOB, origin: p(1), leads: true, coordinators: &stored, named: &named_at_origin, restarted: false };
    assert_eq!(heal::newer_ad(&p(1), at_origin, &ad(p(2), theirs.clone())), FollowAd::Announce);
    let at_2 = Held { job: JOB, origin: p(1), leads: true, coordinators: &theirs, named: &named_at_2, restarted: false };
    assert_eq!(heal::rival_ad(&p(2), Some(at_2), &ad(p(1), stored.to_vec())), Settle::HandOver(stored.to_vec()));
}

/// Two leaders of one job meet after a split; neither is the origin. The higher rendezvous weight
/// wins on both sides, whichever ad each hears first.
#[test]
fn two_leaders_meeting_after_a_split() {
    let (a, b) = (p(5), p(6));
    let (hi, lo) = if heal::outranks(&JOB, &p(1), &a, &b) { (a, b) } else { (b, a) };
    let named: BTreeSet<PeerId> = [p(1), a, b].into();
    let hi_list = [hi, p(7)];
    let lo_list = [lo, p(8)];
    let at_hi = Held { job: JOB, origin: p(1), leads: true, coordinators: &hi_list, named: &named, restarted: false };
    let at_lo = Held { job: JOB, origin: p(1), leads: true, coordinators: &lo_list, named: &named, restarted: false };
    // Rival ads, both ways.
    assert_eq!(heal::rival_ad(&hi, Some(at_hi), &ad(lo, lo_list.to_vec())), Settle::Announce);
    assert_eq!(heal::rival_ad(&lo, Some(at_lo), &ad(hi, hi_list.to_vec())), Settle::HandOver(hi_list.to_vec()));
    // Or newer ads naming the other first: the same outcome.
    assert_eq!(heal::newer_ad(&hi, at_hi, &ad(lo, lo_list.to_vec())), FollowAd::Announce);
    assert_eq!(heal::newer_ad(&lo, at_lo, &ad(hi, hi_list.to_vec())), FollowAd::HandOver(hi_list.to_vec()));
}

/// A backup that does not take a replication batch is tried a few times, then caught up with
/// the whole job once, 2 s later, however many batches of the job failed.
#[test]
fn a_catch_up_after_a_lost_replication_batch() {
    let backup = p(2);
    let mut stream = ReplicationQueue::default();
    let mut catch_ups = CatchUps::default();
    for i in 0..300 {
        stream.push(JOB, i, 0);
    }
    let mut now = 0;
    let mut tries = 0;
    loop {
        let Some(batch) = stream.poll_batch(now) else {
            now = stream.poll_timeout(now).expect("a retry is scheduled");
            continue;
        };
        tries += 1;
        match stream.handle_sent(batch, false, now) {
            Replicated::Retry(at) => now = at,
            Replicated::Failed { items, catch_up } => {
                assert_eq!(items.len(), 300, "the batch and everything queued behind it");
                for job in catch_up {
                    catch_ups.request(job, backup, now);
                }
                break;
            }
            Replicated::Taken(_) => unreachable!("the backup takes nothing"),
        }
    }
    assert_eq!(tries, REPLICATE_TRIES);
    assert!(!catch_ups.request(JOB, backup, now + 10), "coalesced");
    assert_eq!(catch_ups.poll_due(now + CATCH_UP_AFTER_MS - 1), None);
    assert_eq!(catch_ups.poll_due(now + CATCH_UP_AFTER_MS), Some((JOB, backup)));
    assert!(stream.is_idle());
}

/// A coordinator unreachable for a second (a short cut, a restart) still gets the reports of
/// leases that outlive the cut: none is dropped.
#[test]
fn report_retries_across_a_short_cut() {
    let mut q = ReportQueue::default();
    for i in 0..10 {
        q.push(i, 100, 30_000, 0).expect("room");
    }
    let cut_until = 1_000;
    let mut now = REPORT_LINGER_MS;
    let mut delivered = Vec::new();
    while !q.is_idle() {
        let Some(batch) = q.poll_batch(now) else {
            now = q.poll_timeout().expect("something is due");
            continue;
        };
        let delivery = if now < cut_until { Delivery::Unreachable } else { Delivery::Taken };
        let items = batch.items.clone();
        match q.handle_sent(batch, delivery, now) {
            Sent::Taken => delivered.extend(items),
            Sent::Retry(at) => now = at,
            Sent::Dropped(_) => panic!("dropped across a short cut"),
        }
    }
    assert_eq!(delivered, (0..10).collect::<Vec<_>>());
    assert!(now >= cut_until && now < cut_until + 2_000, "retried soon after the cut: {now}");
}

/// Replicas held per slot follow how long runs take here.
#[test]
fn replica_sizing_by_run_time() {
    let mut t = RunTimes::default();
    let slots = 4;
    let before = t.capacity(slots);
    for _ in 0..40 {
        t.note(300);
    }
    assert!(t.capacity(slots) > before, "quick runs: more replicas at hand");
    for _ in 0..40 {
        t.note(2_000_000);
    }
    assert_eq!(t.capacity(slots), 2 * slots, "slow runs: two per slot");
}

/// A coordinator a peer's membership declares dead stops counting as live at once; one it has
/// not heard of counts as live only soon after its start.
#[test]
fn liveness_as_the_role_rules_count_it() {
    let roles = Roles::new(0);
    assert!(!roles.counts_as_live(Some(MemberState::Dead), 10));
    assert!(roles.counts_as_live(None, 10));
    assert!(!roles.counts_as_live(None, UNKNOWN_IS_ALIVE_MS));
}
