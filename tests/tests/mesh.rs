//! Meshes of in-process peers on loopback: jobs verified by a quorum of distinct peers, peers that
//! lie, forge signatures, hoard leases or die mid-job, status and results asked of a peer that
//! does not hold the job, why failed tasks failed, and the mesh as `spare peers` shows it.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use futures::StreamExt;
use spare_proto as pb;
use spare_sdk::{Client, Event, Job, JobState, TaskState};
use spare_tests::*;

/// A primes job of `tasks` tasks of `chunk` numbers each, from 0.
fn primes_job(tasks: u64, chunk: u64, quorum: u32) -> spare_sdk::JobBuilder {
    Job::builder().module_bytes(guest("primes")).range(0..tasks * chunk, chunk).quorum(quorum)
}

/// Every result of a job, in task order, waiting for the job to end.
async fn results(client: &Client, id: &spare_sdk::JobId) -> Vec<spare_sdk::TaskResult> {
    let stream = client.results(id).await.expect("results");
    within("results", stream.map(|r| r.expect("result")).collect()).await
}

/// Every event of a Watch, to its end.
async fn watch_all(client: &Client, id: &spare_sdk::JobId) -> Vec<Event> {
    let stream = client.watch(id).await.expect("watch");
    within("watch", stream.map(|e| e.expect("event")).collect()).await
}

/// Waits for the job to end and returns its status with every task.
async fn finished(client: &Client, id: &spare_sdk::JobId) -> spare_sdk::JobStatus {
    let end = within("job end", client.wait(id)).await.expect("wait");
    assert!(spare_sdk::is_final(end.state), "{end:?}");
    client.status_with_tasks(id).await.expect("status with tasks")
}

/// Checks a completed primes job: every task verified by exactly `quorum` distinct peers, none of
/// them in `never`; every result in task order and equal to the native count. Returns the peers
/// that took part in some verdict.
fn check_primes(
    status: &spare_sdk::JobStatus,
    all: &[spare_sdk::TaskResult],
    tasks: u64,
    chunk: u64,
    quorum: usize,
    never: &[String],
) -> BTreeSet<String> {
    assert_eq!(status.state, JobState::Completed, "{status:?}");
    let counts = status.tasks;
    assert_eq!((counts.total, counts.verified, counts.failed, counts.inconclusive), (tasks as u32, tasks as u32, 0, 0));
    assert_eq!(status.task_list.len(), tasks as usize);
    let mut workers = BTreeSet::new();
    for (i, t) in status.task_list.iter().enumerate() {
        assert_eq!(t.index as usize, i);
        assert_eq!(t.state, TaskState::Verified, "task {i}: {t:?}");
        let by: BTreeSet<&String> = t.verified_by.iter().collect();
        assert_eq!(t.verified_by.len(), quorum, "task {i} verified by {:?}", t.verified_by);
        assert_eq!(by.len(), quorum, "task {i}: verifying peers must be distinct: {:?}", t.verified_by);
        for bad in never {
            assert!(!by.contains(bad), "task {i} verified by misbehaving peer {bad}: {t:?}");
        }
        workers.extend(t.verified_by.iter().cloned());
    }
    assert_eq!(all.len(), tasks as usize, "one result per task");
    for (i, r) in all.iter().enumerate() {
        let (lo, hi) = (i as u64 * chunk, (i as u64 + 1) * chunk);
        assert_eq!(r.index as usize, i, "results come in task order");
        assert_eq!(r.state, TaskState::Verified, "task {i}");
        assert_eq!(r.output, primes_output(lo, hi), "task {i}: the output must equal the native count");
        assert_eq!(r.output_hash, blake3::hash(&r.output).to_hex().to_string(), "task {i}");
        assert_eq!(r.verified_by, status.task_list[i].verified_by, "task {i}: results and status agree");
    }
    workers
}

/// The coordinator's id of a job the SDK named.
fn job_id(id: &spare_sdk::JobId) -> spare_protocol::JobId {
    id.to_string().parse().expect("a job id")
}

/// Whether peer `p` holds (coordinates) the job itself.
fn holds(p: &spare_peer::NodeHandle, id: &spare_sdk::JobId) -> bool {
    p.node.core().jobs.contains_key(&job_id(id))
}

fn hex(p: &spare_peer::NodeHandle) -> String {
    p.node.peer_id().to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_verify_every_task_by_two_distinct_peers() {
    let dir = tempfile::tempdir().unwrap();
    let peers = start_mesh(dir.path(), &honest_peers(3, 1)).await;
    let (tasks, chunk) = (200, 2_000);
    let origin = client(&peers[0]).await;
    let job = primes_job(tasks, chunk, 2).build().unwrap();
    assert_eq!(job.task_count(), tasks as usize);
    let id = origin.submit(&job).await.unwrap();

    let status = finished(&origin, &id).await;
    let all = results(&origin, &id).await;
    let workers = check_primes(&status, &all, tasks, chunk, 2, &[]);
    // A quorum of two needs two peers per task, all of them of this mesh. (The third usually
    // pulls work too, but tasks of microseconds can all be done before it asks.)
    let everyone: BTreeSet<String> = peers.iter().map(hex).collect();
    assert!(workers.len() >= 2 && workers.is_subset(&everyone), "verdicts by peers of the mesh: {workers:?}");
    let total: u64 = all.iter().map(|r| String::from_utf8_lossy(&r.output).trim().parse::<u64>().unwrap()).sum();
    assert_eq!(total, spare_example_primes::count_primes(0, tasks * chunk));

    // Every peer is a coordinator of the job in a mesh of three (origin plus two by rendezvous),
    // and each serves the same results from its own replicated copy.
    for p in &peers[1..] {
        assert!(holds(p, &id), "a mesh of three gives the job three coordinators");
        let other = client(p).await;
        assert_eq!(results(&other, &id).await, all, "results at another coordinator are identical");
    }
    stop_all(peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liar_is_outvoted_never_verifies_and_loses_reputation() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [PeerSpec::honest(1), PeerSpec::honest(1), PeerSpec::honest(1), PeerSpec::chaotic(1, Chaos::Lie)];
    let peers = start_mesh(dir.path(), &specs).await;
    let liar = hex(&peers[3]);
    let (tasks, chunk) = (120, 2_000);
    let origin = client(&peers[0]).await;
    let id = origin.submit(&primes_job(tasks, chunk, 2).build().unwrap()).await.unwrap();

    let status = finished(&origin, &id).await;
    let all = results(&origin, &id).await;
    let workers = check_primes(&status, &all, tasks, chunk, 2, std::slice::from_ref(&liar));
    assert!(!workers.contains(&liar));

    // The origin's coordinator saw the liar's wrong answers and ranks it lowest.
    let liar_id = peers[3].node.peer_id();
    let records: Vec<_> = peers[0].node.core().coord().reputation().iter().map(|(p, r)| (*p, *r)).collect();
    let liar_rec = records.iter().find(|(p, _)| *p == liar_id).map(|(_, r)| *r).expect("the liar has a record");
    assert!(liar_rec.disagreed > 0, "the liar attested and was outvoted: {liar_rec:?}");
    assert_eq!(liar_rec.agreed, 0, "a liar never agrees: {liar_rec:?}");
    let honest: Vec<_> = records.iter().filter(|(p, _)| *p != liar_id).collect();
    assert!(honest.len() >= 2, "the honest peers have records too: {records:?}");
    for (peer, rec) in honest {
        assert_eq!(rec.disagreed, 0, "honest peer {} disagreed: {rec:?}", peer.short());
        assert!(rec.score() > liar_rec.score(), "peer {} ({rec:?}) ranks above the liar ({liar_rec:?})", peer.short());
    }
    stop_all(peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_attestations_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [PeerSpec::honest(1), PeerSpec::honest(1), PeerSpec::chaotic(1, Chaos::Forge), PeerSpec::honest(1)];
    let peers = start_mesh(dir.path(), &specs).await;
    let forger = hex(&peers[2]);
    let (tasks, chunk) = (60, 2_000);
    let origin = client(&peers[0]).await;
    // A forger's leases end only when they lapse: a short timeout keeps that to ~6 s.
    let job = primes_job(tasks, chunk, 2).timeout(Duration::from_secs(1)).build().unwrap();
    let id = origin.submit(&job).await.unwrap();

    let status = finished(&origin, &id).await;
    let all = results(&origin, &id).await;
    check_primes(&status, &all, tasks, chunk, 2, std::slice::from_ref(&forger));

    assert!(peers[0].node.invalid_count() > 0, "the origin dropped forged attestations");
    let rec = peers[0].node.core().coord().reputation().get(&peers[2].node.peer_id());
    assert!(rec.invalid > 0, "the forger is held to account: {rec:?}");
    assert_eq!(rec.agreed, 0, "no forged attestation counted: {rec:?}");
    stop_all(peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_holding_leases_does_not_stop_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [PeerSpec::honest(1), PeerSpec::honest(1), PeerSpec::honest(1), PeerSpec::chaotic(1, Chaos::Silent)];
    let peers = start_mesh(dir.path(), &specs).await;
    let silent = hex(&peers[3]);
    let (tasks, chunk) = (60, 2_000);
    let origin = client(&peers[0]).await;
    // Leases last timeout + 5 s grace: the silent peer's lapse after ~6 s.
    let job = primes_job(tasks, chunk, 2).timeout(Duration::from_secs(1)).build().unwrap();
    let id = origin.submit(&job).await.unwrap();

    let status = finished(&origin, &id).await;
    let all = results(&origin, &id).await;
    check_primes(&status, &all, tasks, chunk, 2, std::slice::from_ref(&silent));
    let rec = peers[0].node.core().coord().reputation().get(&peers[3].node.peer_id());
    assert!(rec.lapsed > 0, "the silent peer took leases and let them lapse: {rec:?}");
    assert_eq!((rec.agreed, rec.disagreed), (0, 0), "{rec:?}");
    stop_all(peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_mid_job_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut peers = start_mesh(dir.path(), &honest_peers(3, 1)).await;
    let (tasks, chunk) = (200, 200_000);
    let origin = client(&peers[0]).await;
    // Leases that outlive the test: only the victim being declared dead frees its replicas.
    let job = primes_job(tasks, chunk, 2).timeout(Duration::from_secs(600)).build().unwrap();
    let id = origin.submit(&job).await.unwrap();
    let job_id = job_id(&id);
    let victim_id = peers[2].node.peer_id();

    // Some tasks verified, not all, and the victim holding leases on some of the rest.
    let origin_node = peers[0].node.clone();
    eventually("the job half done with the victim holding leases", || {
        let core = origin_node.core();
        let c = core.coord().job(&job_id).expect("job held").counts;
        let held = core.coord().leases_of(&victim_id).len();
        async move { (c.verified > 0 && c.verified < c.total && held > 0).then_some(()) }
    })
    .await;
    let victim = peers.remove(2);
    victim.shutdown().await;

    let status = finished(&origin, &id).await;
    let all = results(&origin, &id).await;
    check_primes(&status, &all, tasks, chunk, 2, &[]);
    // Its leases went back either when it handed them back on the way down or when it was
    // declared dead; either way the origin declares it dead soon.
    eventually("the origin declares the victim dead", || {
        let state = origin_node.peers().into_iter().find(|v| v.peer == victim_id).map(|v| v.state);
        async move { (state == Some(spare_protocol::membership::MemberState::Dead)).then_some(()) }
    })
    .await;
    assert!(origin_node.core().coord().leases_of(&victim_id).is_empty(), "the dead peer holds no lease");
    let rec = origin_node.core().coord().reputation().get(&victim_id);
    assert_eq!(rec.lapsed, 0, "a crash is not held against the peer: {rec:?}");
    drop(origin_node); // a held clone would keep the origin from closing
    stop_all(peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_and_results_work_from_any_peer() {
    let dir = tempfile::tempdir().unwrap();
    // Four peers: the job gets three coordinators, so one peer does not hold it and forwards.
    let peers = start_mesh(dir.path(), &honest_peers(4, 1)).await;
    let (tasks, chunk) = (40, 20_000);
    let origin = client(&peers[0]).await;
    let id = origin.submit(&primes_job(tasks, chunk, 2).build().unwrap()).await.unwrap();
    let outsider = peers.iter().position(|p| !holds(p, &id)).expect("one peer is not a coordinator");
    let other = client(&peers[outsider]).await;

    // Once the job's ad reaches it, a peer that does not hold the job forwards to the origin.
    let first = eventually("the job known through peer 1", || async {
        match other.status(&id).await {
            Ok(s) => Some(s),
            Err(e) if e.is_not_found() => None,
            Err(e) => panic!("status through peer 1: {e}"),
        }
    })
    .await;
    assert_eq!(first.job_id, id);
    assert_eq!(first.tasks.total, tasks as u32);
    assert!(!holds(&peers[outsider], &id), "the outsider does not hold the job");

    // Watch through peer 1: a snapshot, task events, then the end (whether every task has its
    // event is `watch_reports_every_task_before_the_end`'s business).
    let events = watch_all(&other, &id).await;
    let Some(Event::Snapshot(snap)) = events.first() else { panic!("no snapshot first: {events:?}") };
    assert_eq!(snap.job_id, id);
    let Some(Event::Finished(end)) = events.last() else { panic!("no finished event last: {events:?}") };
    assert_eq!(end.state, JobState::Completed);
    for e in &events[1..events.len() - 1] {
        let Event::TaskDone(t) = e else { panic!("only task events between snapshot and end: {events:?}") };
        assert!(t.index < tasks as u32 && t.state == TaskState::Verified && t.verified_by.len() == 2, "{t:?}");
    }

    let here = finished(&origin, &id).await;
    let there = other.status_with_tasks(&id).await.unwrap();
    assert_eq!(there, here, "Get through peer 1 is the origin's answer");
    assert_eq!(there.origin, hex(&peers[0]), "the status names the origin");
    let all = results(&origin, &id).await;
    check_primes(&here, &all, tasks, chunk, 2, &[]);
    assert_eq!(results(&other, &id).await, all, "Results through peer 1");
    let now: Vec<_> = other.results_now(&id).await.unwrap().map(|r| r.unwrap()).collect().await;
    assert_eq!(now, all, "Results without waiting through peer 1");

    // A job nobody knows: NOT_FOUND everywhere, for every call.
    let unknown: spare_sdk::JobId = hex::encode([9u8; 32]).parse().unwrap();
    for p in &peers {
        let c = client(p).await;
        assert!(c.status(&unknown).await.unwrap_err().is_not_found());
        assert!(c.watch(&unknown).await.err().expect("watch of an unknown job fails").is_not_found());
        assert!(c.results(&unknown).await.err().expect("results of an unknown job fail").is_not_found());
    }
    stop_all(peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_peer_lists_the_whole_mesh_alive_with_its_slots() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [PeerSpec::honest(2), PeerSpec::honest(1), PeerSpec::honest(1)];
    let peers = start_mesh(dir.path(), &specs).await;
    let want: HashSet<(String, String, u32)> =
        peers.iter().zip(&specs).map(|(p, s)| (hex(p), p.addr.to_string(), s.cpus as u32)).collect();
    for (i, p) in peers.iter().enumerate() {
        let c = client(p).await;
        // Adverts spread by gossip; each peer lists itself first.
        let listed = eventually(&format!("peer {i} to list the mesh with adverts"), || async {
            let list = c.peers().await.expect("peers");
            let seen: HashSet<(String, String, u32)> =
                list.iter().map(|v| (v.peer_id.clone(), v.addr.clone(), v.cpus_total)).collect();
            (list.len() == specs.len() && seen == want && list.iter().all(|v| v.state() == pb::PeerState::Alive))
                .then_some(list)
        })
        .await;
        assert_eq!(listed[0].peer_id, hex(p), "a peer lists itself first");
        for v in &listed {
            assert!(v.cpus_free <= v.cpus_total, "{v:?}");
            assert!(!v.version.is_empty(), "{v:?}");
        }
    }
    stop_all(peers).await;
}

/// The Watch contract (sdk `Client::watch`, docs/architecture.md): a snapshot, then an event per
/// task that finishes after it, then `finished`. With several peers reporting, verdicts come in
/// bursts; the stream must still carry every task before its end, at the origin and through a
/// peer that forwards.
///
/// PRODUCT BUG (reported, not fixed here): this fails most runs. `JobService.Watch`
/// (worker/src/service/job.rs, the loop in `watch`) checks `is_final` before draining the
/// changes already queued for it, so it sends `finished` and stops while `TaskFinal` changes
/// are still waiting in its receiver; and `Node::publish` (worker/src/node/mod.rs), run in a
/// task spawned per report, can announce a job's `JobFinished` before an earlier verdict's
/// `TaskFinal`, so even a drained receiver can see the end first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_every_task_before_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let peers = start_mesh(dir.path(), &honest_peers(3, 1)).await;
    let tasks = 300u32;
    let origin = client(&peers[0]).await;
    let other = client(&peers[1]).await;
    let id = origin.submit(&primes_job(u64::from(tasks), 500, 2).build().unwrap()).await.unwrap();
    eventually("the job known through peer 1", || async { other.status(&id).await.ok() }).await;
    let (a, b, c, d) = tokio::join!(watch_all(&origin, &id), watch_all(&other, &id), watch_all(&origin, &id), watch_all(&other, &id));
    for (who, events) in [("origin", a), ("peer 1", b), ("origin", c), ("peer 1", d)] {
        let Some(Event::Snapshot(snap)) = events.first() else { panic!("{who}: no snapshot first: {events:?}") };
        let Some(Event::Finished(end)) = events.last() else { panic!("{who}: no finished event last: {events:?}") };
        assert_eq!(end.state, JobState::Completed, "{who}");
        let done: BTreeSet<u32> =
            events.iter().filter_map(|e| if let Event::TaskDone(t) = e { Some(t.index) } else { None }).collect();
        let before = snap.tasks.verified;
        assert!(
            done.len() as u32 + before >= tasks,
            "{who}: {} tasks were verified in the snapshot and {} had an event before `finished`, of {tasks}",
            before,
            done.len()
        );
    }
    stop_all(peers).await;
}

/// A failing task's stderr tail is kept with its verdict (whichever peer ran the deciding
/// replica), returned by every coordinator of the job (it travels with the replication stream),
/// and never splits a quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_a_task_failed_reaches_every_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let peers = start_mesh(dir.path(), &honest_peers(3, 1)).await;
    let origin = client(&peers[0]).await;
    let job = Job::builder().module_bytes(guest("primes")).lines("0 100\nx y\n100 200\nnot numbers\n").quorum(2).build().unwrap();
    let id = origin.submit(&job).await.unwrap();
    let end = finished(&origin, &id).await;
    assert_eq!(end.state, JobState::Failed);
    let failed = &end.task_list[1];
    assert_eq!(failed.state, TaskState::Failed, "{failed:?}");
    assert_eq!(failed.verified_by.len(), 2, "two peers agreed on the failure: {failed:?}");
    assert_eq!(failed.stderr_line, "LO is not an unsigned decimal integer: `x`");
    assert_eq!(end.task_list[0].stderr_line, "", "a verified task has no failure line");
    let why = |rs: &[spare_sdk::TaskResult]| rs.iter().map(|r| (r.index, r.state, r.stderr.clone())).collect::<Vec<_>>();
    let expected = vec![
        (0, TaskState::Verified, String::new()),
        (1, TaskState::Failed, "LO is not an unsigned decimal integer: `x`\n".to_string()),
        (2, TaskState::Verified, String::new()),
        (3, TaskState::Failed, "LO is not an unsigned decimal integer: `not`\n".to_string()),
    ];
    assert_eq!(why(&results(&origin, &id).await), expected);
    // Each peer coordinates the job (three peers, three coordinators) and answers from its own
    // store; the backups have it once the replication stream reaches them.
    for p in &peers[1..] {
        assert!(holds(p, &id));
        let c = client(p).await;
        eventually("a backup with every verdict and its stderr", || async {
            let now: Vec<_> = c.results_now(&id).await.ok()?.filter_map(|r| async { r.ok() }).collect().await;
            (why(&now) == expected).then_some(())
        })
        .await;
    }
    stop_all(peers).await;
}
