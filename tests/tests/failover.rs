//! Replicated coordination in process: a job outlives the peer it was submitted to. The others
//! finish it, a new coordinator replaces the lost one, status and results are served by the
//! survivors, and a client that followed the job through the lost peer carries on by itself.

use std::collections::BTreeSet;

use futures::StreamExt;
use spare_protocol::records::{Record, RecordKey};
use spare_sdk::{Job, JobState, TaskState};
use spare_tests::*;

fn job_id(id: &spare_sdk::JobId) -> spare_protocol::JobId {
    id.as_str().parse().expect("a job id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_dies_mid_job_and_the_others_finish_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut peers = start_mesh(dir.path(), &honest_peers(4, 1)).await;
    let (tasks, chunk) = (80u64, 1_000_000u64);
    let through_origin = client(&peers[0]).await;
    let job = Job::builder().module_bytes(guest("primes")).range(0..tasks * chunk, chunk).quorum(2).build().unwrap();
    let id = through_origin.submit(&job).await.unwrap();
    let jid = job_id(&id);
    let origin = peers[0].node.peer_id();

    // The job has three coordinators, the origin first, and the backups hold it already.
    let coordinators = peers[0].node.core().coordinators(&jid).map(<[_]>::to_vec).unwrap();
    assert_eq!(coordinators.len(), 3);
    assert_eq!(coordinators[0], origin);
    let holders: Vec<usize> = (1..4).filter(|i| coordinators.contains(&peers[*i].node.peer_id())).collect();
    assert_eq!(holders.len(), 2);

    // Follow it through the origin, which dies once some (not all) tasks are verified.
    let waiter = {
        let c = through_origin.clone();
        let id = id.clone();
        tokio::spawn(async move { c.wait(&id).await })
    };
    let origin_node = peers[0].node.clone();
    eventually("some tasks verified", || {
        let c = origin_node.core().coord().job(&jid).map(|v| v.counts);
        async move { c.filter(|c| c.verified >= 4 && c.verified < c.total).map(|_| ()) }
    })
    .await;
    drop(origin_node);
    let lost = peers.remove(0);
    lost.shutdown().await;

    // The client carries on at another coordinator and sees the job complete.
    let status = within("the job completing after its origin died", waiter).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Completed, "{status:?}");
    let mut all = Vec::new();
    let mut stream = through_origin.results(&id).await.expect("results, through whichever coordinator answers");
    while let Some(r) = stream.next().await {
        all.push(r.unwrap());
    }
    assert_eq!(all.len(), tasks as usize);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.index as usize, i);
        assert_eq!(r.state, TaskState::Verified);
        let (lo, hi) = (i as u64 * chunk, (i as u64 + 1) * chunk);
        assert_eq!(r.output, format!("{}\n", spare_example_primes::count_primes(lo, hi)).into_bytes(), "task {i}");
        let by: BTreeSet<&String> = r.verified_by.iter().collect();
        assert_eq!(by.len(), 2, "task {i} verified by two distinct peers");
    }

    // Every survivor that coordinates the job answers for it, with the same results; a new
    // coordinator replaced the origin, and the job's ad now names the survivors.
    let survivors = coordinators[1..].to_vec();
    let ad = eventually("a job ad without the lost origin", || {
        let ad = peers[0].node.mesh().membership.record(&RecordKey::JobAd(jid));
        async move {
            match ad {
                Some(Record::JobAd(ad)) if !ad.coordinators.contains(&origin) => Some(ad),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(ad.origin, origin, "the ad still names who accepted the job");
    assert!(survivors.iter().all(|s| ad.coordinators.contains(s)), "{ad:?}");
    assert_eq!(ad.coordinators.len(), 3, "the lost coordinator was replaced: {ad:?}");
    for p in &peers {
        if ad.coordinators.contains(&p.node.peer_id()) {
            let c = client(p).await;
            // A backup holds the verdicts once the stream (or a catch-up) brings them, which may
            // trail the leader's announcement by a batch: wait for it.
            let at = p.node.peer_id();
            let role = if survivors.contains(&at) { "a backup" } else { "the new coordinator" };
            eventually_or(&format!("{role} {} to hold the job completed", at.short()), || {
                let c = c.clone();
                let id = id.clone();
                async move {
                    match c.status(&id).await {
                        Ok(s) if s.state == JobState::Completed => Ok(()),
                        Ok(s) => Err(format!("{:?} {:?} {}", s.state, s.tasks, s.message)),
                        Err(e) => Err(e.to_string()),
                    }
                }
            })
            .await;
            let mine: Vec<_> = within("results at a coordinator", c.results(&id).await.unwrap().map(|r| r.unwrap()).collect()).await;
            assert_eq!(mine, all, "the same results at every coordinator");
        }
    }
    stop_all(peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_reaches_every_coordinator_wherever_it_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let peers = start_mesh(dir.path(), &honest_peers(3, 1)).await;
    // Long enough to be running when cancelled.
    let (tasks, chunk) = (400u64, 20_000_000u64);
    let job = || Job::builder().module_bytes(guest("primes")).range(0..tasks * chunk, chunk).quorum(2);
    let at_origin = client(&peers[0]).await;
    for (n, asked) in [(0usize, 0usize), (1, 2)] {
        // A distinct job each round (the label is part of its content).
        let id = at_origin.submit(&job().label(format!("round {n}")).build().unwrap()).await.unwrap();
        let jid = job_id(&id);
        let coordinators = peers[0].node.core().coordinators(&jid).map(<[_]>::to_vec).unwrap();
        assert_eq!(coordinators.len(), 3, "with three peers, each coordinates");
        // Round 0 cancels at the origin (the active coordinator), round 1 at a backup.
        let status = client(&peers[asked]).await.cancel(&id).await.expect("cancel");
        assert_eq!(status.state, JobState::Cancelled, "{status:?}");
        for p in &peers {
            let node = p.node.clone();
            eventually(&format!("the job cancelled at {} (round {n})", node.peer_id().short()), || {
                let state = node.core().coord().job(&jid).map(|v| v.state);
                async move { (state == Some(spare_protocol::JobState::Cancelled)).then_some(()) }
            })
            .await;
            let s = client(p).await.status(&id).await.unwrap();
            assert_eq!(s.state, JobState::Cancelled, "status at {}: {s:?}", p.node.peer_id().short());
        }
    }
    stop_all(peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_failed_by_deadline_misses_is_failed_at_every_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let peers = start_mesh(dir.path(), &honest_peers(3, 1)).await;
    // One task far too long for its 1 s deadline: two replicas miss it and it fails. No
    // attestation says so, so the backups learn it by a catch-up from the active coordinator.
    let job = Job::builder()
        .module_bytes(guest("primes"))
        .range(0..1_000_000_000_000, 1_000_000_000_000)
        .quorum(2)
        .max_replicas(2)
        .timeout(std::time::Duration::from_secs(1))
        .build()
        .unwrap();
    let at_origin = client(&peers[0]).await;
    let id = at_origin.submit(&job).await.unwrap();
    let jid = job_id(&id);
    let status = within("the job failing", at_origin.wait(&id)).await.unwrap();
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    let coordinators = peers[0].node.core().coordinators(&jid).map(<[_]>::to_vec).unwrap();
    assert_eq!(coordinators.len(), 3);
    for p in &peers {
        let node = p.node.clone();
        let view = eventually(&format!("the job failed at {}", node.peer_id().short()), || {
            let v = node.core().coord().job(&jid);
            async move { v.filter(|v| v.state == spare_protocol::JobState::Failed) }
        })
        .await;
        assert_eq!(view.counts.failed, 1, "{:?}", view.counts);
        // An ended job's tasks are read from the store.
        let (t, _) = p.node.task_view(&spare_protocol::TaskId { job: jid, index: 0 }).unwrap();
        assert_eq!(t.verdict, spare_protocol::Verdict::Failed(spare_protocol::Failure::TimedOut(2)));
    }
    stop_all(peers).await;
}

/// Whether `node` is the active coordinator of `job`: first in its list, not in standby.
fn leads(node: &spare_peer::Node, job: &spare_protocol::JobId) -> bool {
    node.core().leads(job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_origin_takes_its_job_back_and_one_coordinator_leads() {
    let dir = tempfile::tempdir().unwrap();
    let mut peers = start_mesh(dir.path(), &honest_peers(3, 1)).await;
    let (tasks, chunk) = (300u64, 10_000_000u64);
    let job = Job::builder().module_bytes(guest("primes")).range(0..tasks * chunk, chunk).quorum(2).build().unwrap();
    let id = client(&peers[0]).await.submit(&job).await.unwrap();
    let jid = job_id(&id);
    let origin = peers[0].node.peer_id();
    let origin_node = peers[0].node.clone();
    eventually("some tasks verified", || {
        let c = origin_node.core().coord().job(&jid).map(|v| v.counts);
        async move { c.filter(|c| c.verified >= 4 && c.verified * 3 < c.total).map(|_| ()) }
    })
    .await;
    drop(origin_node);

    // The origin stops; another coordinator takes the job over.
    peers.remove(0).shutdown().await;
    eventually("another coordinator leading the job", || {
        let led = peers.iter().any(|p| leads(&p.node, &jid));
        async move { led.then_some(()) }
    })
    .await;

    // The origin comes back on its data directory. It outranks every other coordinator, so the
    // job ends up led by it alone.
    let mut c = config(&dir.path().join("peer-0"), 1);
    c.bootstrap = vec![peers[0].addr.to_string()];
    let back = spare_peer::Node::start(c).await.expect("the origin restarts");
    assert_eq!(back.node.peer_id(), origin);
    peers.insert(0, back);
    let done = eventually("the job completed at the restarted origin", || {
        let v = peers[0].node.core().coord().job(&jid);
        async move { v.filter(|v| v.state == spare_protocol::JobState::Completed) }
    })
    .await;
    assert_eq!(done.counts.verified, tasks as u32);
    let leaders: Vec<String> = peers.iter().filter(|p| leads(&p.node, &jid)).map(|p| p.node.peer_id().short()).collect();
    assert!(leaders.len() <= 1, "one active coordinator at most: {leaders:?}");
    let mut stream = client(&peers[0]).await.results(&id).await.expect("results at the origin");
    let mut n = 0;
    while let Some(r) = stream.next().await {
        let r = r.unwrap();
        let (lo, hi) = (u64::from(r.index) * chunk, (u64::from(r.index) + 1) * chunk);
        assert_eq!(r.state, TaskState::Verified, "task {}", r.index);
        assert_eq!(r.output, primes_output(lo, hi), "task {}", r.index);
        n += 1;
    }
    assert_eq!(n, tasks);
    stop_all(peers).await;
}
