//! What one client can make a peer hold (findings 9, 10, 11): ended jobs neither count against
//! the job cap nor keep their task tables in memory, also after a restart; one submitter's
//! inputs held are bounded in bytes; a big submission is refused past the per-job task cap, and
//! no task of a job is leased before its inputs are durable.

use futures::StreamExt;
use spare_peer::node::NewJob;
use spare_peer::node::limits::Bounds;
use spare_peer::store::StoredInput;
use spare_sdk::{Job, JobState, TaskState};
use spare_tests::*;

/// Finding 9: ten thousand finished one-task jobs made a lone peer refuse every later job, for
/// good. The cap counts unfinished jobs only; an ended job's tasks are served from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_leave_room_and_are_served_from_the_store_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.bounds = Bounds { max_unfinished_jobs: 2, ..Bounds::default() };
    let peer = spare_peer::Node::start(cfg.clone()).await.unwrap();
    let c = client(&peer).await;
    let job = |n: u64, quorum: u32| Job::builder().module_bytes(guest("primes")).range(n * 100..n * 100 + 30, 10).quorum(quorum).build().unwrap();
    let mut ended = Vec::new();
    for n in 0..3 {
        let id = c.submit(&job(n, 1)).await.expect("ended jobs do not count against the cap");
        assert_eq!(within("the job's end", c.wait(&id)).await.unwrap().state, JobState::Completed);
        ended.push(id);
    }
    let first: spare_protocol::JobId = ended[0].as_str().parse().unwrap();
    eventually("the ended job's tasks to be let go", || async { peer.node.core().coord().is_shed(&first).then_some(()) }).await;
    // And its attestation log: the store keeps it.
    assert!(peer.node.core().hosts.host(&first).is_some_and(|h| h.log().is_empty()), "the ended job's log is let go");
    let check = |s: spare_sdk::JobStatus| {
        assert_eq!((s.state, s.task_list.len()), (JobState::Completed, 3));
        for (i, t) in s.task_list.iter().enumerate() {
            assert_eq!((t.index as usize, t.state), (i, TaskState::Verified));
            assert!(!t.output_hash.is_empty() && t.verified_by.len() == 1, "{t:?}");
        }
    };
    check(c.status_with_tasks(&ended[0]).await.unwrap());
    let outputs: Vec<_> = within("results", c.results(&ended[0]).await.unwrap().map(|r| r.unwrap().output).collect()).await;
    assert_eq!(outputs, vec![primes_output(0, 10), primes_output(10, 20), primes_output(20, 30)]);
    peer.shutdown().await;

    // After a restart: the ended jobs are restored without their task tables, and leave room.
    let peer = spare_peer::Node::start(cfg).await.unwrap();
    let c = client(&peer).await;
    assert!(ended.iter().all(|id| {
        let core = peer.node.core();
        let job = id.as_str().parse().unwrap();
        core.coord().is_shed(&job) && core.hosts.host(&job).is_some_and(|h| h.log().is_empty())
    }));
    check(c.status_with_tasks(&ended[0]).await.unwrap());
    let a = c.submit(&job(7, 2)).await.expect("room after a restart");
    c.submit(&job(8, 2)).await.expect("room after a restart");
    let e = c.submit(&job(9, 1)).await.expect_err("two unfinished jobs fill it");
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("unfinished jobs"), "{e}");
    c.cancel(&a).await.unwrap();
    c.submit(&job(9, 1)).await.expect("a cancelled job leaves room");
    peer.shutdown().await;
}

/// Finding 10: one submitter's unfinished jobs hold at most `max_input_bytes_per_submitter`
/// bytes of inputs here; past it, a clear RESOURCE_EXHAUSTED, and room again once one ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitters_input_bytes_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.bounds = Bounds { max_input_bytes_per_submitter: 1 << 20, ..Bounds::default() };
    let peer = spare_peer::Node::start(cfg).await.unwrap();
    let c = client(&peer).await;
    // Quorum 2 on a lone peer: accepted jobs stay unfinished.
    let job = || Job::builder().module_bytes(guest("primes")).tasks((0..6).map(|i| vec![b'0' + i; 100 << 10])).quorum(2).build().unwrap();
    let first = c.submit(&job()).await.expect("600 KiB fits in 1 MiB");
    let e = c.submit(&job()).await.expect_err("1.2 MiB does not");
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("max_input_bytes_per_submitter"), "says which bound: {e}");
    c.cancel(&first).await.unwrap();
    c.submit(&job()).await.expect("room once the first ended");
    peer.shutdown().await;
}

/// A job as `Node::submit` takes it: `tasks` tiny inline inputs of the primes module.
async fn new_job(peer: &spare_peer::NodeHandle, tasks: u64) -> NewJob {
    let (module, _) = peer.node.store().blobs().put(&guest("primes")).await.unwrap();
    NewJob {
        module,
        inputs: (0..tasks).map(|i| StoredInput::Inline(format!("{i} {}\n", i + 1).into_bytes())).collect(),
        policy: spare_peer::wire::convert::policy(None),
        args: Vec::new(),
        env: Vec::new(),
        label: String::new(),
        nonce: Vec::new(),
        from_addr: None,
        owner: None,
    }
}

/// Finding 11: tasks of a submission whose write was not durable yet were leased thousands of
/// times ("no stored input"). The coordinator hears of a job only once all of it is stored; and
/// a job past the per-job task cap is refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_is_leased_before_its_job_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let peer = spare_peer::Node::start(config(dir.path(), 1)).await.unwrap();
    let cap = u64::from(spare_protocol::PolicyCaps::MAX_TASKS);
    let e = peer.node.submit(new_job(&peer, cap + 1).await).await.expect_err("past the cap");
    assert!(e.to_string().contains(&format!("cap of {cap}")), "{e}");
    let job = new_job(&peer, 50_000).await;
    let node = peer.node.clone();
    let submit = tokio::spawn(async move { node.submit(job).await });
    let mut seen = false;
    while !submit.is_finished() {
        let held: Vec<spare_protocol::JobId> = peer.node.core().coord().job_ids().copied().collect();
        for id in held {
            seen = true;
            assert!(peer.node.store().job(&id).unwrap().is_some(), "the coordinator holds job {id}, not stored yet");
            let last = spare_protocol::TaskId { job: id, index: 49_999 };
            assert!(peer.node.store().input(&last).unwrap().is_some(), "its last input is stored");
        }
        tokio::task::yield_now().await;
    }
    let id = submit.await.unwrap().expect("accepted");
    assert!(seen || peer.node.core().coord().job(&id).is_some());
    peer.shutdown().await;
}
