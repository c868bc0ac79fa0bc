//! Tests of the client against a fake in-process peer on loopback: a few lines of BlobService,
//! JobService and PeerService that record what the SDK sends and answer like a real peer would.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt, stream};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::{
    self, blob_service_server::BlobService, blob_service_server::BlobServiceServer,
    job_event::Event, job_service_server::JobService, job_service_server::JobServiceServer,
    peer_service_server::PeerService, peer_service_server::PeerServiceServer, task_input::Source,
};
use crate::{BLOB_CHUNK_BYTES, Client, Error, Job, JobId, JobState, TaskState, blob_id};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the fake peer stores and what it saw.
#[derive(Default)]
struct State {
    blobs: HashMap<String, Vec<u8>>,
    stats: usize,
    puts: usize,
    put_messages: Vec<(String, usize)>,
    submits: Vec<proto::SubmitRequest>,
}

#[derive(Clone, Default)]
struct FakePeer(Arc<Mutex<State>>);

impl FakePeer {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("fake peer lock")
    }

    fn job_status(&self, job_id: &str, state: JobState) -> proto::JobStatus {
        let total = self
            .state()
            .submits
            .last()
            .map_or(0, |s| s.tasks.len() as u32);
        proto::JobStatus {
            job_id: job_id.to_string(),
            state: state as i32,
            tasks: Some(proto::TaskCounts {
                total,
                verified: total,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl BlobService for FakePeer {
    async fn put(
        &self,
        request: Request<Streaming<proto::PutBlobRequest>>,
    ) -> Result<Response<proto::BlobInfo>, Status> {
        let mut messages = request.into_inner();
        let mut bytes = Vec::new();
        let mut expected = String::new();
        let mut seen = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message?;
            seen.push((message.expected_id.clone(), message.chunk.len()));
            if expected.is_empty() {
                expected = message.expected_id;
            }
            bytes.extend_from_slice(&message.chunk);
        }
        let id = blob_id(&bytes);
        if !expected.is_empty() && expected != id {
            return Err(Status::invalid_argument("hash mismatch"));
        }
        let mut state = self.state();
        state.puts += 1;
        state.put_messages = seen;
        let size = bytes.len() as u64;
        let existed = state.blobs.insert(id.clone(), bytes).is_some();
        Ok(Response::new(proto::BlobInfo {
            blob_id: id,
            size,
            existed,
        }))
    }

    type GetStream = BoxStream<proto::BlobChunk>;

    async fn get(
        &self,
        _: Request<proto::GetBlobRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn stat(
        &self,
        request: Request<proto::GetBlobRequest>,
    ) -> Result<Response<proto::BlobInfo>, Status> {
        let id = request.into_inner().blob_id;
        let mut state = self.state();
        state.stats += 1;
        match state.blobs.get(&id) {
            Some(bytes) => Ok(Response::new(proto::BlobInfo {
                size: bytes.len() as u64,
                blob_id: id,
                existed: true,
            })),
            None => Err(Status::not_found(format!("no blob {id}"))),
        }
    }
}

#[tonic::async_trait]
impl JobService for FakePeer {
    async fn submit(
        &self,
        request: Request<proto::SubmitRequest>,
    ) -> Result<Response<proto::SubmitResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state();
        if !state.blobs.contains_key(&request.module_id) {
            return Err(Status::failed_precondition("module not uploaded"));
        }
        for task in &request.tasks {
            if let Some(Source::BlobId(id)) = &task.source
                && !state.blobs.contains_key(id)
            {
                return Err(Status::failed_precondition(format!(
                    "input blob {id} not uploaded"
                )));
            }
        }
        let job_id = blake3::hash(&[request.module_id.as_bytes(), &request.nonce].concat())
            .to_hex()
            .to_string();
        state.submits.push(request);
        Ok(Response::new(proto::SubmitResponse { job_id }))
    }

    async fn get(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::JobStatus>, Status> {
        Ok(Response::new(self.job_status(
            &request.into_inner().job_id,
            JobState::Completed,
        )))
    }

    type WatchStream = BoxStream<proto::JobEvent>;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = request.into_inner().job_id;
        let events = vec![
            Event::Snapshot(self.job_status(&id, JobState::Running)),
            Event::TaskDone(proto::TaskStatus {
                index: 0,
                state: TaskState::Verified as i32,
                ..Default::default()
            }),
            Event::Finished(self.job_status(&id, JobState::Completed)),
        ];
        let events = events
            .into_iter()
            .map(|e| Ok(proto::JobEvent { event: Some(e) }));
        Ok(Response::new(Box::pin(stream::iter(events))))
    }

    type ResultsStream = BoxStream<proto::TaskResult>;

    async fn results(
        &self,
        request: Request<proto::ResultsRequest>,
    ) -> Result<Response<Self::ResultsStream>, Status> {
        let from = request.into_inner().from_index;
        let tasks = self
            .state()
            .submits
            .last()
            .map(|s| s.tasks.clone())
            .unwrap_or_default();
        // Echo each input back as its "output".
        let results: Vec<_> = tasks
            .into_iter()
            .enumerate()
            .skip(from as usize)
            .map(|(i, task)| {
                let output = match task.source {
                    Some(Source::Inline(bytes)) => bytes,
                    _ => b"blob".to_vec(),
                };
                Ok(proto::TaskResult {
                    index: i as u32,
                    state: TaskState::Verified as i32,
                    // A verified output comes with its hash, which the client checks.
                    output_hash: blake3::hash(&output).to_hex().to_string(),
                    output,
                    ..Default::default()
                })
            })
            .collect();
        Ok(Response::new(Box::pin(stream::iter(results))))
    }

    async fn cancel(
        &self,
        request: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::JobStatus>, Status> {
        Ok(Response::new(self.job_status(
            &request.into_inner().job_id,
            JobState::Cancelled,
        )))
    }

    async fn list(
        &self,
        _: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        Ok(Response::new(proto::ListJobsResponse::default()))
    }
}

#[tonic::async_trait]
impl PeerService for FakePeer {
    async fn info(
        &self,
        _: Request<proto::InfoRequest>,
    ) -> Result<Response<proto::PeerInfo>, Status> {
        Ok(Response::new(proto::PeerInfo {
            peer_id: "ff".repeat(32),
            cpus_total: 4,
            ..Default::default()
        }))
    }

    async fn peers(
        &self,
        _: Request<proto::PeersRequest>,
    ) -> Result<Response<proto::PeersResponse>, Status> {
        Ok(Response::new(proto::PeersResponse::default()))
    }
}

/// Starts the fake on a loopback port and connects a client to it.
async fn start() -> (FakePeer, Client) {
    let fake = FakePeer::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let router = tonic::transport::Server::builder()
        .add_service(BlobServiceServer::new(fake.clone()).max_decoding_message_size(64 << 20))
        .add_service(JobServiceServer::new(fake.clone()).max_decoding_message_size(64 << 20))
        .add_service(PeerServiceServer::new(fake.clone()));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    let client = Client::connect(addr.to_string())
        .await
        .expect("connect to fake peer")
        .with_identity(crate::ClientIdentity::generate().expect("a key"));
    (fake, client)
}

const WASM: &[u8] = b"\0asm\x01\0\0\0";

#[tokio::test]
async fn upload_is_chunked_then_deduplicated() {
    let (fake, client) = start().await;
    let bytes: Vec<u8> = (0..(2 * BLOB_CHUNK_BYTES + 10))
        .map(|i| (i % 13) as u8)
        .collect();
    let id = client.upload_blob(bytes.clone()).await.expect("upload");
    assert_eq!(id, blob_id(&bytes));
    {
        let state = fake.state();
        assert_eq!((state.stats, state.puts), (1, 1));
        assert_eq!(
            state.put_messages,
            [
                (id.clone(), BLOB_CHUNK_BYTES),
                (String::new(), BLOB_CHUNK_BYTES),
                (String::new(), 10)
            ]
        );
        assert_eq!(state.blobs[&id], bytes);
    }
    // The second upload of the same bytes stops at Stat.
    assert_eq!(client.upload_blob(&bytes[..]).await.expect("re-upload"), id);
    let state = fake.state();
    assert_eq!((state.stats, state.puts), (2, 1));
}

#[tokio::test]
async fn submit_places_inputs_and_follows_the_job() {
    let (fake, client) = start().await;
    let big = vec![7u8; 100 * 1024];
    let job = Job::builder()
        .module_bytes(WASM)
        .task("small")
        .task(big.clone())
        .task(big.clone())
        .quorum(1)
        .arg("-v")
        .env("K", "V")
        .label("fake")
        .build()
        .expect("job");
    let id = client.submit(&job).await.expect("submit");
    {
        let state = fake.state();
        // Module and the one distinct big input: one Put each.
        assert_eq!(state.puts, 2);
        let request = &state.submits[0];
        assert_eq!(request.module_id, job.module_id());
        assert_eq!(request.nonce.len(), 16);
        assert_eq!(request.args, ["-v"]);
        assert_eq!(
            request.env,
            [proto::EnvVar {
                key: "K".into(),
                value: "V".into()
            }]
        );
        assert_eq!(request.label, "fake");
        assert_eq!(request.policy.map(|p| p.quorum), Some(1));
        let sources: Vec<_> = request.tasks.iter().map(|t| t.source.clone()).collect();
        assert_eq!(
            sources,
            [
                Some(Source::Inline(b"small".to_vec())),
                Some(Source::BlobId(blob_id(&big))),
                Some(Source::BlobId(blob_id(&big)))
            ]
        );
    }

    // A second submit draws another nonce, hence another job; the module is not uploaded again.
    let again = client.submit(&job).await.expect("resubmit");
    assert_ne!(again, id);
    assert_eq!(fake.state().puts, 2);
    // A fixed nonce gives the same job id every time.
    let pinned = Job::builder()
        .module_bytes(WASM)
        .task("x")
        .nonce(vec![1; 16])
        .build()
        .expect("job");
    assert_eq!(
        client.submit(&pinned).await.expect("a"),
        client.submit(&pinned).await.expect("b")
    );

    let status = client.wait(&id).await.expect("wait");
    assert_eq!(status.state, JobState::Completed);
    let events: Vec<_> = client.watch(&id).await.expect("watch").collect().await;
    assert_eq!(events.len(), 3);
    // The fake answers Results with the inputs of the last job submitted (the pinned one).
    let results: Vec<_> = client.results(&id).await.expect("results").collect().await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].as_ref().expect("result").output, b"x");
    assert_eq!(
        client.cancel(&id).await.expect("cancel").state,
        JobState::Cancelled
    );
    assert_eq!(client.info().await.expect("info").cpus_total, 4);
    assert!(client.peers().await.expect("peers").is_empty());
    assert!(client.list(10).await.expect("list").is_empty());
}

#[tokio::test]
async fn refusals_are_status_errors() {
    let (_fake, client) = start().await;
    let id: JobId = "00".repeat(32).parse().expect("id");
    assert_eq!(
        client.status(&id).await.expect("status").job_id,
        id
    );
    let refused = client
        .jobs
        .clone()
        .submit(proto::SubmitRequest {
            module_id: "11".repeat(32),
            ..Default::default()
        })
        .await
        .map_err(Error::from)
        .expect_err("refused");
    assert_eq!(refused.code(), Some(tonic::Code::FailedPrecondition));
    assert_eq!(
        refused.to_string(),
        "failed precondition: module not uploaded"
    );
}

#[tokio::test]
async fn oversized_request_moves_inputs_to_blobs() {
    let (fake, client) = start().await;
    // 1000 distinct inputs of exactly 64 KiB: each may go inline, but not all of them together.
    let inputs = (0..1000u32).map(|i| {
        let mut input = vec![0u8; crate::plan::INLINE_MAX];
        input[..4].copy_from_slice(&i.to_le_bytes());
        input
    });
    let job = Job::builder()
        .module_bytes(WASM)
        .tasks(inputs)
        .build()
        .expect("job");
    client.submit(&job).await.expect("submit");
    let state = fake.state();
    let request = &state.submits[0];
    let blobs = request
        .tasks
        .iter()
        .filter(|t| matches!(t.source, Some(Source::BlobId(_))))
        .count();
    assert!(blobs > 0 && blobs < 1000, "{blobs} inputs as blobs");
    assert!(prost::Message::encoded_len(request) <= crate::plan::REQUEST_BUDGET);
    assert_eq!(state.puts, 1 + blobs);
}

/// The fake's Watch snapshot already counts every task, and task 0's event follows it (as when
/// a watch begins while a task ends). The old count, the snapshot's plus one per event, says
/// 4/3; `watch_progress` counts task 0 once.
#[tokio::test]
async fn watch_progress_counts_each_task_once() {
    let (_fake, client) = start().await;
    let job = Job::builder()
        .module_bytes(WASM)
        .tasks(["a", "b", "c"])
        .build()
        .expect("job");
    let id = client.submit(&job).await.expect("submit");
    let mut old = 0u64;
    let mut events = client.watch(&id).await.expect("watch");
    while let Some(event) = events.next().await {
        match event.expect("event") {
            crate::Event::Snapshot(s) => old = s.tasks.done(),
            crate::Event::TaskDone(_) => old += 1,
            crate::Event::Finished(_) => {}
        }
    }
    assert_eq!(old, 4, "the old logic over-counts");
    let seen: Vec<crate::Progress> = client
        .watch_progress(&id)
        .await
        .expect("watch_progress")
        .map(|item| item.expect("event").1)
        .collect()
        .await;
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|p| p.done <= p.total), "{seen:?}");
    assert_eq!(seen.last(), Some(&crate::Progress { done: 3, total: 3 }));
}
