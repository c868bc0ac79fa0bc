//! The volunteer's controls on a peer in this process: it takes no work while other programs
//! load the machine (the load is set by hand) and resumes when the load falls; its running
//! tasks never hold more memory together than `max_total_memory`; it refuses modules and
//! quorums it does not serve with a clear error, also when another peer hands it such a job to
//! coordinate or it takes one over.

use std::sync::Arc;
use std::time::Duration;

use spare_peer::node::donation::{ManualLoad, Pause};
use spare_sdk::{Job, JobState};
use spare_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_pauses_under_other_load_and_resumes_when_it_falls() {
    let dir = tempfile::tempdir().unwrap();
    let load = Arc::new(ManualLoad::default());
    load.set(0.9);
    let mut c = config(dir.path(), 2);
    c.donation.max_other_load = Some(0.5);
    c.donation.load = load.clone();
    c.donation.sample_every = Duration::from_millis(50);
    let peer = spare_peer::Node::start(c).await.expect("peer starts");
    eventually("the peer to pause", || async { matches!(peer.node.paused(), Some(Pause::Load { .. })).then_some(()) }).await;

    let client = client(&peer).await;
    let job = Job::builder().module_bytes(guest("primes")).range(0..40_000, 10_000).quorum(1).build().unwrap();
    let id = client.submit(&job).await.expect("a paused peer still accepts jobs");
    // The peer looks at the load several more times and still runs nothing.
    let seen = load.reads();
    eventually("the peer to look at the load again", || async { (load.reads() >= seen + 5).then_some(()) }).await;
    let s = client.status(&id).await.unwrap();
    assert_eq!(s.state, JobState::Queued, "no task has started: {s:?}");
    assert_eq!(s.tasks.verified, 0, "no task runs while other programs load the machine");
    assert_eq!(peer.node.running(), 0);

    // Just under the threshold is not enough to resume (hysteresis); well under is.
    load.set(0.45);
    let seen = load.reads();
    eventually("another look", || async { (load.reads() >= seen + 3).then_some(()) }).await;
    assert!(peer.node.paused().is_some(), "a load hovering at the threshold does not resume the peer");
    load.set(0.1);
    let status = within("job end", client.wait(&id)).await.unwrap();
    assert_eq!(status.state, JobState::Completed, "{status:?}");
    assert_eq!(peer.node.paused(), None);
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_tasks_together_stay_under_the_total_memory_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 3);
    // Room for two 64 MiB tasks at once, though there are three slots.
    c.donation.max_total_memory = 128 << 20;
    let peer = spare_peer::Node::start(c).await.expect("peer starts");
    let client = client(&peer).await;
    let job = Job::builder()
        .module_bytes(guest("primes"))
        .range(0..600_000, 50_000)
        .memory_bytes(64 << 20)
        .quorum(1)
        .build()
        .unwrap();
    let id = client.submit(&job).await.unwrap();
    let status = within("job end", client.wait(&id)).await.unwrap();
    assert_eq!(status.state, JobState::Completed, "{status:?}");
    // The gate records the most its tasks ever held together.
    let peak = peer.node.task_memory_peak();
    assert!(peak > 0, "tasks were seen holding memory");
    assert!(peak <= 128 << 20, "running tasks held {peak} bytes together");
    assert_eq!(peer.node.task_memory_held(), 0, "every task gave its memory back");
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_and_quorums_not_served_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 1);
    let primes = Job::builder().module_bytes(guest("primes")).range(0..10, 10).quorum(2).build().unwrap();
    c.donation.allow_modules = vec![primes.module_id().parse().unwrap()];
    c.donation.min_quorum = 2;
    let peer = spare_peer::Node::start(c).await.expect("peer starts");
    let client = client(&peer).await;

    let other = Job::builder().module_bytes(guest("sha256")).task(b"1\nx".to_vec()).quorum(2).build().unwrap();
    let e = client.submit(&other).await.expect_err("a module not on the list");
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    assert!(e.to_string().contains("allow_modules"), "{e}");

    let low = Job::builder().module_bytes(guest("primes")).range(0..10, 10).quorum(1).build().unwrap();
    let e = client.submit(&low).await.expect_err("a quorum below min_quorum");
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    assert!(e.to_string().contains("min_quorum"), "{e}");

    client.submit(&primes).await.expect("an allowed module with enough quorum");
    peer.shutdown().await;
}

/// A config on `dir` whose peer runs only the sha256 guest (so never the primes guest).
fn serving_only_sha256(dir: &std::path::Path) -> spare_peer::NodeConfig {
    let mut c = config(dir, 1);
    let sha = Job::builder().module_bytes(guest("sha256")).task(b"1\nx".to_vec()).build().unwrap();
    c.donation.allow_modules = vec![sha.module_id().parse().unwrap()];
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_does_not_adopt_a_job_whose_module_it_does_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    let a = spare_peer::Node::start(config(&dir.path().join("a"), 1)).await.expect("peer a starts");
    let mut cb = serving_only_sha256(&dir.path().join("b"));
    cb.bootstrap = vec![a.addr.to_string()];
    let b = spare_peer::Node::start(cb).await.expect("peer b starts");
    let peers = vec![a, b];
    wait_until_joined(&peers).await;

    let client = client(&peers[0]).await;
    let job = Job::builder().module_bytes(guest("primes")).range(0..20_000, 10_000).quorum(1).build().unwrap();
    let id = client.submit(&job).await.unwrap();
    // Submit returns once the hand-overs to the other coordinators are done or refused.
    let jid: spare_protocol::JobId = id.as_str().parse().unwrap();
    assert!(!peers[1].node.core().jobs.contains_key(&jid), "b refuses to coordinate a module it does not run");
    let status = within("job end", client.wait(&id)).await.unwrap();
    assert_eq!(status.state, JobState::Completed, "{status:?}");
    assert!(!peers[1].node.core().jobs.contains_key(&jid), "nor does it adopt it later");
    assert_eq!(peers[1].node.metrics().runs(), (0, 0), "b ran none of its tasks");
    stop_all(peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_leaves_a_job_it_does_not_serve_to_other_peers_slots() {
    let dir = tempfile::tempdir().unwrap();
    // Both peers hold the job but run nothing (other programs load the machine).
    let busy = Arc::new(ManualLoad::default());
    busy.set(0.9);
    let paused = |name: &str| {
        let mut c = config(&dir.path().join(name), 1);
        c.donation.max_other_load = Some(0.5);
        c.donation.load = busy.clone();
        c.donation.sample_every = Duration::from_millis(50);
        c
    };
    let a = spare_peer::Node::start(paused("a")).await.expect("peer a starts");
    let mut cb = paused("b");
    cb.bootstrap = vec![a.addr.to_string()];
    let b = spare_peer::Node::start(cb).await.expect("peer b starts");
    let peers = vec![a, b];
    wait_until_joined(&peers).await;
    let job = Job::builder().module_bytes(guest("primes")).range(0..20_000, 10_000).quorum(1).build().unwrap();
    let id = client(&peers[0]).await.submit(&job).await.unwrap();
    let jid: spare_protocol::JobId = id.as_str().parse().unwrap();
    assert!(peers[1].node.core().jobs.contains_key(&jid), "b adopted the job while it served every module");
    let mut peers = peers.into_iter();
    let a = peers.next().expect("a");
    // Killed, not stopped: a stop would leave the mesh and a would drop b from the job's
    // coordinators at once.
    peers.next().expect("b").crash().await;

    // b comes back, now serving only another module, idle; then a stops: b takes the job over
    // but leases none of its tasks to its own slots.
    let load = Arc::new(ManualLoad::default());
    let mut cb = serving_only_sha256(&dir.path().join("b"));
    cb.bootstrap = vec![a.addr.to_string()];
    cb.donation.max_other_load = Some(0.5);
    cb.donation.load = load.clone();
    cb.donation.sample_every = Duration::from_millis(50);
    let b = spare_peer::Node::start(cb).await.expect("peer b restarts");
    let peers = vec![a, b];
    wait_until_joined(&peers).await;
    let mut peers = peers.into_iter();
    peers.next().expect("a").shutdown().await;
    let b = peers.next().expect("b");
    let me = b.node.peer_id();
    eventually("b to lead the job", || async { b.node.core().leads(&jid).then_some(()) }).await;
    let seen = load.reads();
    eventually("b to look at the load several more times", || async { (load.reads() >= seen + 10).then_some(()) }).await;
    assert_eq!(b.node.metrics().runs(), (0, 0), "b ran none of the job's tasks");
    assert_eq!(b.node.core().coord().lease_count(&me), 0, "b leased none to itself");
    b.shutdown().await;
}
