//! One peer, in this process, driven through the SDK and the raw gRPC API: a correct 100-task
//! job, the lone-peer quorum rule, restart durability, clear errors for bad requests, hostile
//! modules, Watch, health and reflection.

use futures::StreamExt;
use spare_proto as pb;
use spare_sdk::{Event, Job, JobState, TaskState};
use spare_tests::*;

async fn results(client: &spare_sdk::Client, id: &spare_sdk::JobId) -> Vec<spare_sdk::TaskResult> {
    let stream = client.results(id).await.expect("results");
    within("results", stream.map(|r| r.expect("result")).collect()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_task_primes_job_is_verified_and_correct() {
    let dir = tempfile::tempdir().unwrap();
    let peer = start(dir.path(), 2).await;
    let client = client(&peer).await;
    let job = Job::builder().module_bytes(guest("primes")).range(0..2_000_000, 20_000).quorum(1).build().unwrap();
    assert_eq!(job.task_count(), 100);
    let id = client.submit(&job).await.unwrap();
    let status = within("job end", client.wait(&id)).await.unwrap();
    assert_eq!(status.state, JobState::Completed, "{status:?}");
    let counts = status.tasks;
    assert_eq!((counts.total, counts.verified, counts.failed), (100, 100, 0));

    let me = peer.node.peer_id().to_hex();
    let all = results(&client, &id).await;
    assert_eq!(all.len(), 100);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.index as usize, i, "results come in task order");
        assert_eq!(r.state, TaskState::Verified);
        let (lo, hi) = (i as u64 * 20_000, (i as u64 + 1) * 20_000);
        assert_eq!(r.output, format!("{}\n", spare_example_primes::count_primes(lo, hi)).into_bytes(), "task {i}");
        assert_eq!(r.output_hash, blake3::hash(&r.output).to_hex().to_string());
        assert_eq!(r.verified_by, vec![me.clone()]);
    }
    let total: u64 = all.iter().map(|r| String::from_utf8_lossy(&r.output).trim().parse::<u64>().unwrap()).sum();
    assert_eq!(total, 148_933, "primes below two million");
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_two_on_a_lone_peer_waits_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let peer = start(dir.path(), 2).await;
    let client = client(&peer).await;
    let job = Job::builder().module_bytes(guest("primes")).range(0..3_000, 1_000).quorum(2).build().unwrap();
    let id = client.submit(&job).await.unwrap();
    // Each task runs once here, then waits for a second, distinct peer.
    let status = eventually("every task attested once", || async {
        let s = client.status_with_tasks(&id).await.unwrap();
        s.task_list.iter().all(|t| t.attestations == 1 && t.state == TaskState::Pending).then_some(s)
    })
    .await;
    assert_eq!(status.state, JobState::Running);
    assert_eq!(status.tasks.pending, 3);
    assert!(status.message.contains("needs 2 distinct peers"), "{}", status.message);
    // The submitter hears that the job has one coordinator so far.
    assert!(status.message.contains("one coordinator so far"), "{}", status.message);
    for t in &status.task_list {
        assert!(t.error.contains("more peers"), "{t:?}");
        assert!(t.verified_by.is_empty());
    }
    let now: Vec<_> = client.results_now(&id).await.unwrap().collect().await;
    assert!(now.is_empty(), "nothing is verified without a quorum");
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_survive_a_restart_on_the_same_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let peer = start(dir.path(), 2).await;
    let me = peer.node.peer_id();
    let c = client(&peer).await;
    let job = Job::builder().module_bytes(guest("sha256")).tasks((0..20).map(|i| format!("100\nseed {i}").into_bytes())).quorum(1).build().unwrap();
    let id = c.submit(&job).await.unwrap();
    assert_eq!(within("job end", c.wait(&id)).await.unwrap().state, JobState::Completed);
    let before = results(&c, &id).await;
    // A second job that can never finish here: it must come back still waiting.
    let waiting = Job::builder().module_bytes(guest("primes")).range(0..100, 50).quorum(2).build().unwrap();
    let waiting = c.submit(&waiting).await.unwrap();
    peer.shutdown().await;

    let peer = start(dir.path(), 2).await;
    assert_eq!(peer.node.peer_id(), me, "the identity is kept");
    let c = client(&peer).await;
    let status = c.status_with_tasks(&id).await.unwrap();
    assert_eq!(status.state, JobState::Completed);
    assert_eq!(status.tasks.verified, 20);
    assert_eq!(results(&c, &id).await, before, "the same results, byte for byte");
    let status = c.status(&waiting).await.unwrap();
    assert!(!spare_sdk::is_final(status.state), "{status:?}");
    let listed: Vec<_> = c.list(0).await.unwrap().into_iter().map(|j| j.job_id).collect();
    assert!(listed.contains(&id) && listed.contains(&waiting));
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_failed_by_its_deadline_stays_failed_after_a_restart() {
    // No attestation records a deadline miss: the verdict comes back from the stored result.
    let dir = tempfile::tempdir().unwrap();
    let peer = start(dir.path(), 2).await;
    let c = client(&peer).await;
    let job = Job::builder()
        .module_bytes(guest("primes"))
        .tasks([b"0 100".to_vec(), b"0 1000000000000".to_vec()])
        .quorum(1)
        .max_replicas(1)
        .timeout(std::time::Duration::from_secs(1))
        .build()
        .unwrap();
    let id = c.submit(&job).await.unwrap();
    let status = within("job end", c.wait(&id)).await.unwrap();
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    peer.shutdown().await;

    let peer = start(dir.path(), 2).await;
    let c = client(&peer).await;
    let status = c.status_with_tasks(&id).await.unwrap();
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    let counts = status.tasks;
    assert_eq!((counts.verified, counts.failed, counts.pending), (1, 1, 0), "{counts:?}");
    let jid: spare_protocol::JobId = id.as_str().parse().unwrap();
    // An ended job's tasks are read from the store.
    let (t, _) = peer.node.task_view(&spare_protocol::TaskId { job: jid, index: 1 }).unwrap();
    assert_eq!(t.verdict, spare_protocol::Verdict::Failed(spare_protocol::Failure::TimedOut(1)));
    peer.shutdown().await;
}

/// `req` signed by a fresh client key for `peer`, as every Submit must be.
fn signed(peer: &spare_peer::NodeHandle, mut req: pb::SubmitRequest) -> pb::SubmitRequest {
    let key = spare_sdk::ClientIdentity::generate().unwrap();
    key.sign_submit(&mut req, peer.node.peer_id().as_bytes()).unwrap();
    req
}

fn raw_submit(module_id: String, tasks: usize, quorum: u32) -> pb::SubmitRequest {
    pb::SubmitRequest {
        module_id,
        tasks: (0..tasks).map(|_| pb::TaskInput { source: Some(pb::task_input::Source::Inline(b"1 2".to_vec())) }).collect(),
        policy: Some(pb::Policy { quorum, ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.max_blob_bytes = 1 << 20;
    let peer = spare_peer::Node::start(cfg).await.unwrap();
    let c = client(&peer).await;
    let url = format!("http://{}", peer.addr);
    let mut jobs = pb::job_service_client::JobServiceClient::connect(url.clone()).await.unwrap();

    // An empty module: stored fine (it is just bytes), refused at submission.
    let empty = c.upload_blob(Vec::new()).await.unwrap();
    let e = jobs.submit(signed(&peer, raw_submit(empty, 1, 1))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("WebAssembly") || e.message().contains("wasm"), "{}", e.message());

    // Bytes that are not WASM.
    let junk = c.upload_blob(b"#!/bin/sh\necho hi\n".to_vec()).await.unwrap();
    let e = jobs.submit(signed(&peer, raw_submit(junk, 1, 1))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // An upload past the peer's blob cap.
    let e = c.upload_blob(vec![7u8; (1 << 20) + 1]).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("cap"), "{e}");

    // Zero tasks.
    let module = c.upload_blob(guest("primes")).await.unwrap();
    let e = jobs.submit(signed(&peer, raw_submit(module.clone(), 0, 1))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("at least one task"), "{}", e.message());

    // A quorum above the replica bound.
    let mut req = raw_submit(module.clone(), 1, 3);
    req.policy.as_mut().unwrap().max_replicas = 2;
    let e = jobs.submit(signed(&peer, req)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("max_replicas 2 is below quorum 3"), "{}", e.message());

    // A memory limit below what the module starts with: every task would fail, so it is
    // refused whatever client sent it (the CLI checks it too, before uploading).
    let mut req = raw_submit(module.clone(), 1, 1);
    req.policy.as_mut().unwrap().limits = Some(pb::Limits { memory_bytes: 10, ..Default::default() });
    let e = jobs.submit(signed(&peer, req)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("below the") && e.message().contains("MiB"), "{}", e.message());

    // A module that was never uploaded.
    let e = jobs.submit(signed(&peer, raw_submit(hex::encode([5u8; 32]), 1, 1))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("upload it"), "{}", e.message());

    // Unknown and malformed job ids.
    let unknown: spare_sdk::JobId = hex::encode([9u8; 32]).parse().unwrap();
    let e = c.status(&unknown).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let e = jobs.get(pb::GetJobRequest { job_id: "nope".into(), include_tasks: false }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("job_id"), "{}", e.message());
    let mut blobs = pb::blob_service_client::BlobServiceClient::connect(url).await.unwrap();
    let e = blobs.stat(pb::GetBlobRequest { blob_id: hex::encode([1u8; 32]) }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // SDK-side checks say what is wrong before anything is sent.
    assert!(matches!(Job::builder().module_bytes(guest("primes")).build(), Err(spare_sdk::Error::NoTasks)));
    peer.shutdown().await;
}

const WASI_START: &str = r#"(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))"#;

fn wat(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {WASI_START} (memory (export \"memory\") 1) {body})")).expect("valid WAT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_modules_get_typed_outcomes_and_the_peer_carries_on() {
    use pb::OutcomeKind as K;
    let dir = tempfile::tempdir().unwrap();
    let peer = start(dir.path(), 2).await;
    let c = client(&peer).await;
    let cases: Vec<(&str, Vec<u8>, K)> = vec![
        ("infinite loop", wat(r#"(func (export "_start") (loop (br 0)))"#), K::OutOfFuel),
        (
            "memory bomb",
            wat(r#"(func (export "_start") (loop (br_if 0 (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable)"#),
            K::MemoryLimit,
        ),
        ("deep recursion", wat(r#"(func $f (export "_start") (call $f))"#), K::Trapped),
        ("unreachable", wat(r#"(func (export "_start") unreachable)"#), K::Trapped),
    ];
    for (name, module, kind) in cases {
        let job = Job::builder().module_bytes(module).task(Vec::new()).quorum(1).fuel(50_000_000).memory_bytes(8 << 20).build().unwrap();
        let id = c.submit(&job).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let status = within(name, c.wait(&id)).await.unwrap();
        assert_eq!(status.state, JobState::Failed, "{name}: {status:?}");
        let task = &c.status_with_tasks(&id).await.unwrap().task_list[0];
        assert_eq!(task.state, TaskState::Failed, "{name}");
        assert_eq!(task.outcome.as_ref().map(|o| o.kind()), Some(kind), "{name}: {task:?}");
        assert!(!task.error.is_empty(), "{name}: a failed task says why");
    }
    // A wall-clock deadline: not a result, so the task fails only after max_replicas misses.
    let spin = wat(r#"(func (export "_start") (loop (br 0)))"#);
    let job = Job::builder().module_bytes(spin).task(Vec::new()).quorum(1).max_replicas(2).timeout(std::time::Duration::from_millis(200)).build().unwrap();
    let id = c.submit(&job).await.unwrap();
    let status = within("deadline job", c.wait(&id)).await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    let task = &c.status_with_tasks(&id).await.unwrap().task_list[0];
    assert_eq!(task.outcome.as_ref().map(|o| o.kind()), Some(K::Deadline), "{task:?}");
    assert!(task.error.contains("deadline"), "{}", task.error);

    // Refused at submission: an import outside the ABI, named in the error.
    let bad = wat::parse_str(r#"(module (import "env" "open_socket" (func)) (func (export "_start")))"#).unwrap();
    let job = Job::builder().module_bytes(bad).task(Vec::new()).quorum(1).build().unwrap();
    let e = c.submit(&job).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument));
    assert!(e.to_string().contains("open_socket"), "{e}");

    // The peer still serves a normal job.
    let job = Job::builder().module_bytes(guest("primes")).range(0..100_000, 10_000).quorum(1).build().unwrap();
    let id = c.submit(&job).await.unwrap();
    assert_eq!(within("normal job", c.wait(&id)).await.unwrap().state, JobState::Completed);
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_a_snapshot_each_task_and_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let peer = start(dir.path(), 2).await;
    let c = client(&peer).await;
    let job = Job::builder().module_bytes(guest("primes")).range(0..50_000, 5_000).quorum(1).build().unwrap();
    let id = c.submit(&job).await.unwrap();
    let events: Vec<_> = within("watch", c.watch(&id).await.unwrap().map(|e| e.unwrap()).collect::<Vec<_>>()).await;
    assert!(matches!(events.first(), Some(Event::Snapshot(_))), "{events:?}");
    let Some(Event::Finished(end)) = events.last() else { panic!("no finished event: {events:?}") };
    assert_eq!(end.state, JobState::Completed);
    let mut done: Vec<u32> =
        events.iter().filter_map(|e| if let Event::TaskDone(t) = e { Some(t.index) } else { None }).collect();
    done.sort();
    done.dedup();
    // Every task is counted in the snapshot or has its own event (a task that finished while
    // the watch began may be in both).
    let Some(Event::Snapshot(first)) = events.first() else { unreachable!() };
    assert!(done.len() as u32 + first.tasks.verified >= 10, "{events:?}");
    assert!(done.iter().all(|i| *i < 10));

    // Watching a job that has ended: its snapshot, then the end.
    let events: Vec<_> = within("watch", c.watch(&id).await.unwrap().map(|e| e.unwrap()).collect::<Vec<_>>()).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(&events[1], Event::Finished(s) if s.state == JobState::Completed));
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let dir = tempfile::tempdir().unwrap();
    let peer = start(dir.path(), 1).await;
    let url = format!("http://{}", peer.addr);
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest { service: "spare.v1.JobService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);

    let mut refl = ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = refl.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else { panic!("{reply:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["spare.v1.JobService", "spare.v1.BlobService", "spare.v1.PeerService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_uploads_and_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let peer = start(dir.path(), 1).await;
    let url = format!("http://{}", peer.addr);
    let mut blobs = pb::blob_service_client::BlobServiceClient::connect(url.clone()).await.unwrap();
    let mut jobs = pb::job_service_client::JobServiceClient::connect(url).await.unwrap();

    // A Put stream with no message at all.
    let e = blobs.put(tokio_stream::iter(Vec::<pb::PutBlobRequest>::new())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("at least one message"), "{}", e.message());
    // An expected_id on a later message is refused, not silently ignored.
    let wrong = hex::encode([1u8; 32]);
    let msgs = vec![
        pb::PutBlobRequest { expected_id: String::new(), chunk: b"abc".to_vec() },
        pb::PutBlobRequest { expected_id: wrong, chunk: b"def".to_vec() },
    ];
    let e = blobs.put(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("first message"), "{}", e.message());
    // An empty blob is one message with an empty chunk, and still fine.
    let empty = blobs.put(tokio_stream::iter(vec![pb::PutBlobRequest::default()])).await.expect("an empty blob");
    assert_eq!(empty.into_inner().size, 0);

    // A task input with no source is a client's bug, not an empty input.
    let module = client(&peer).await.upload_blob(guest("primes")).await.unwrap();
    let mut req = raw_submit(module, 2, 1);
    req.tasks[1].source = None;
    let e = jobs.submit(signed(&peer, req)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("tasks[1] has no source"), "{}", e.message());
    peer.shutdown().await;
}
