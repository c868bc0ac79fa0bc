//! Jobs have owners: the client key that signed the Submit. Only that key cancels the job,
//! wherever the Cancel is sent; a signed request is refused when replayed or sent to another
//! peer; a client cannot forge the markers peers put on requests they pass on; quotas count
//! keys; and a cancel never changes the state of a job that has ended, also after a restart.

use spare_proto as pb;
use spare_sdk::{Client, ClientIdentity, Job, JobState};
use spare_tests::*;
use tonic::Code;

fn job_id(id: &spare_sdk::JobId) -> spare_protocol::JobId {
    id.as_str().parse().unwrap()
}

async fn client_as(peer: &spare_peer::NodeHandle, key: &ClientIdentity) -> Client {
    Client::connect(peer.addr.to_string()).await.unwrap().with_identity(key.clone())
}

fn state_at(peer: &spare_peer::NodeHandle, job: &spare_protocol::JobId) -> Option<spare_protocol::JobState> {
    peer.node.core().coord().job(job).map(|v| v.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_cancels_wherever_it_asks() {
    let dir = tempfile::tempdir().unwrap();
    let peers = start_mesh(dir.path(), &honest_peers(4, 1)).await;
    // Long enough to be running throughout.
    let (tasks, chunk) = (400u64, 20_000_000u64);
    let job = Job::builder().module_bytes(guest("primes")).range(0..tasks * chunk, chunk).quorum(2).build().unwrap();
    let id = client(&peers[0]).await.submit(&job).await.unwrap();
    let jid = job_id(&id);
    let coordinators = peers[0].node.core().coordinators(&jid).map(<[_]>::to_vec).unwrap();
    assert_eq!(coordinators.len(), 3, "three of the four peers coordinate");
    let by_id = |p: &spare_protocol::PeerId| peers.iter().find(|h| h.node.peer_id() == *p).unwrap();
    let backup = by_id(&coordinators[1]);
    let outsider = peers.iter().find(|h| !coordinators.contains(&h.node.peer_id())).unwrap();
    eventually("the outsider to hear the job's ad", || {
        let heard = outsider.node.job_ad(&jid).is_some();
        async move { heard.then_some(()) }
    })
    .await;

    // Another key is refused at the origin, at a backup (which knows the owner), and at a peer
    // that only passes the request on.
    let stranger = ClientIdentity::generate().unwrap();
    for (name, p) in [("origin", &peers[0]), ("backup", backup), ("outsider", outsider)] {
        let e = client_as(p, &stranger).await.cancel(&id).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::PermissionDenied), "at the {name}: {e}");
        assert!(e.to_string().contains("only the job's owner may cancel it"), "at the {name}: {e}");
    }
    for p in &peers[..] {
        assert_ne!(state_at(p, &jid), Some(spare_protocol::JobState::Cancelled), "nothing was cancelled");
    }

    // The owner, through the outsider: forwarded, checked by the coordinator, cancelled everywhere.
    let status = client(outsider).await.cancel(&id).await.expect("the owner cancels");
    assert_eq!(status.state, JobState::Cancelled, "{status:?}");
    assert_eq!(status.owner, test_key().public_hex(), "the status names the owner");
    for c in &coordinators {
        let p = by_id(c);
        eventually(&format!("the job cancelled at {}", c.short()), || {
            let s = state_at(p, &jid);
            async move { (s == Some(spare_protocol::JobState::Cancelled)).then_some(()) }
        })
        .await;
    }
    stop_all(peers).await;
}

fn one_task(module_id: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        module_id: module_id.to_string(),
        tasks: vec![pb::TaskInput { source: Some(pb::task_input::Source::Inline(b"0 1000".to_vec())) }],
        policy: Some(pb::Policy { quorum: 1, ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_are_not_taken_twice_nor_elsewhere_nor_forged() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), 1).await;
    let b = start(&dir.path().join("b"), 1).await;
    let module = client(&a).await.upload_blob(guest("primes")).await.unwrap();
    let mut jobs_a = pb::job_service_client::JobServiceClient::connect(format!("http://{}", a.addr)).await.unwrap();
    let mut jobs_b = pb::job_service_client::JobServiceClient::connect(format!("http://{}", b.addr)).await.unwrap();
    let key = ClientIdentity::generate().unwrap();
    let for_a = a.node.peer_id();

    let unsigned = one_task(&module);
    let e = jobs_a.submit(unsigned.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("must be signed"), "{}", e.message());

    let mut submit = unsigned.clone();
    key.sign_submit(&mut submit, for_a.as_bytes()).unwrap();
    let job = jobs_a.submit(submit.clone()).await.expect("a signed submit").into_inner().job_id;
    let e = jobs_a.submit(submit.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "the same signed submit again");
    assert!(e.message().contains("replay"), "{}", e.message());
    let e = jobs_b.submit(submit.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "signed for another peer");
    assert!(e.message().contains("does not verify"), "{}", e.message());
    let mut changed = submit.clone();
    changed.label = "not what was signed".into();
    assert_eq!(jobs_a.submit(changed).await.unwrap_err().code(), Code::Unauthenticated);

    // An empty job nonce is drawn at random (the proto's promise): the same content twice,
    // each signed afresh, makes two jobs, not ALREADY_EXISTS.
    assert!(submit.nonce.is_empty());
    let mut again = unsigned.clone();
    key.sign_submit(&mut again, for_a.as_bytes()).unwrap();
    let second = jobs_a.submit(again).await.expect("the same content again").into_inner().job_id;
    assert_ne!(second, job);

    // Cancel: a replay is refused too.
    let mut cancel = pb::CancelRequest { job_id: job.clone(), ..Default::default() };
    key.sign_cancel(&mut cancel, for_a.as_bytes()).unwrap();
    jobs_a.cancel(cancel.clone()).await.expect("the owner's cancel");
    let e = jobs_a.cancel(cancel.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("replay"), "{}", e.message());

    // What peers add to requests they pass on, forged by a client, is refused.
    let mut get = tonic::Request::new(pb::GetJobRequest { job_id: job.clone(), include_tasks: false });
    get.metadata_mut().insert("spare-proxied", tonic::metadata::MetadataValue::from_static("1"));
    let e = jobs_a.get(get).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let fake_peer = spare_peer::identity::Identity::generate().unwrap();
    // Even correctly signed by a peer key (keys are free), a header is taken only from that
    // peer's own TLS connection.
    let ts = spare_peer::node::unix_ms();
    let mut signed = b"spare.v1.proxied\0".to_vec();
    signed.extend_from_slice(for_a.as_bytes());
    signed.extend_from_slice(&ts.to_le_bytes());
    let header = format!("{}.{ts}.{}", fake_peer.peer_id().to_hex(), hex::encode(fake_peer.sign(&signed)));
    let mut get = tonic::Request::new(pb::GetJobRequest { job_id: job.clone(), include_tasks: false });
    get.metadata_mut().insert("spare-proxied", header.parse().unwrap());
    let e = jobs_a.get(get).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut forged = pb::CancelRequest { job_id: second.clone(), ..Default::default() };
    key.sign_cancel(&mut forged, fake_peer.peer_id().as_bytes()).unwrap();
    forged.forwarded.push(pb::Forward {
        peer_id: fake_peer.peer_id().to_hex(),
        timestamp_ms: spare_peer::node::unix_ms(),
        signature: vec![0; 64],
    });
    let e = jobs_a.cancel(forged).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_count_submitter_keys() {
    use spare_peer::node::limits::Bounds;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.bounds = Bounds { max_jobs_per_submitter: 1, ..Bounds::default() };
    let peer = spare_peer::Node::start(cfg).await.unwrap();
    // Quorum 2 on a lone peer: the job stays running.
    let job = |n: u64| Job::builder().module_bytes(guest("primes")).range(0..n * 10, 10).quorum(2).build().unwrap();
    let alice = client_as(&peer, &ClientIdentity::generate().unwrap()).await;
    alice.submit(&job(2)).await.unwrap();
    let e = alice.submit(&job(3)).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("submitter key"), "{e}");
    // Another key from the same address is another submitter.
    let bob = client_as(&peer, &ClientIdentity::generate().unwrap()).await;
    bob.submit(&job(3)).await.expect("another key's first job");
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_never_changes_an_ended_job_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("peer");
    let peer = start(&data, 2).await;
    let c = client(&peer).await;
    let id = c.submit(&Job::builder().module_bytes(guest("primes")).range(0..2_000, 1_000).quorum(1).build().unwrap()).await.unwrap();
    let done = within("the job", c.wait(&id)).await.unwrap();
    assert_eq!(done.state, JobState::Completed);
    let after = c.cancel(&id).await.expect("a cancel of an ended job is answered");
    assert_eq!(after.state, JobState::Completed, "{after:?}");
    peer.shutdown().await;

    let peer = start(&data, 2).await;
    let s = client(&peer).await.status(&id).await.unwrap();
    assert_eq!(s.state, JobState::Completed, "after a restart: {s:?}");
    assert_eq!(s.owner, test_key().public_hex(), "the owner is kept");
    peer.shutdown().await;
}
