//! `spare.v1.BlobService`: content-addressed uploads and downloads, deduplicated by BLAKE3.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use spare_protocol::BlobId;
use spare_proto as pb;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::wire::convert::parse_id;
use crate::node::Node;
use crate::store::BlobError;

/// Bytes per chunk of a download.
pub const CHUNK: usize = 1 << 20;
/// Uploads taken at once (each holds a temporary file); past it a Put is refused at once.
pub const MAX_PUTS_AT_ONCE: usize = 64;
/// Longest wait for the next message of an upload before it is dropped.
pub const PUT_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The BlobService of one peer.
pub struct BlobApi {
    node: Node,
    puts: std::sync::Arc<tokio::sync::Semaphore>,
}

impl BlobApi {
    /// The service over `node`.
    pub fn new(node: Node) -> BlobApi {
        BlobApi { node, puts: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PUTS_AT_ONCE)) }
    }
}

/// A blob error as a gRPC status.
pub fn blob_status(e: BlobError) -> Status {
    match e {
        BlobError::NotFound(_) => Status::not_found(e.to_string()),
        BlobError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        BlobError::HashMismatch { .. } => Status::invalid_argument(e.to_string()),
        BlobError::Corrupt(_) => Status::data_loss(e.to_string()),
        BlobError::Io { .. } => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl pb::blob_service_server::BlobService for BlobApi {
    async fn put(&self, req: Request<Streaming<pb::PutBlobRequest>>) -> Result<Response<pb::BlobInfo>, Status> {
        // Many streams held open must not hold as many files: uploads are bounded in number,
        // and one that stalls is dropped.
        let Ok(_upload) = self.puts.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "this peer takes at most {MAX_PUTS_AT_ONCE} uploads at once; try again shortly"
            )));
        };
        let mut stream = req.into_inner();
        let max = self.node.config().max_blob_bytes;
        let mut writer = self.node.store().blobs().writer(max).await.map_err(blob_status)?;
        let mut expected: Option<BlobId> = None;
        let mut first = true;
        loop {
            let next = tokio::time::timeout(PUT_IDLE, stream.next()).await.map_err(|_| {
                Status::deadline_exceeded(format!("no part of the upload arrived for {}s", PUT_IDLE.as_secs()))
            })?;
            let Some(msg) = next else { break };
            let msg = msg?;
            if first && !msg.expected_id.is_empty() {
                expected = Some(parse_id("expected_id", &msg.expected_id)?);
            } else if !first && !msg.expected_id.is_empty() {
                // Checking it would mean a different promise mid-upload; ignoring it silently
                // would hide a client's bug.
                return Err(Status::invalid_argument("expected_id is taken only on the first message of a Put"));
            }
            first = false;
            writer.write(&msg.chunk).await.map_err(blob_status)?;
        }
        if first {
            return Err(Status::invalid_argument(
                "a Put needs at least one message (an empty blob is one message with an empty chunk)",
            ));
        }
        let (id, size, existed) = writer.finish(expected).await.map_err(blob_status)?;
        Ok(Response::new(pb::BlobInfo { blob_id: id.to_hex(), size, existed }))
    }

    type GetStream = Pin<Box<dyn Stream<Item = Result<pb::BlobChunk, Status>> + Send>>;

    async fn get(&self, req: Request<pb::GetBlobRequest>) -> Result<Response<Self::GetStream>, Status> {
        let id: BlobId = parse_id("blob_id", &req.into_inner().blob_id)?;
        let blobs = self.node.store().blobs().clone();
        let mut file = blobs.open_read(&id).await.map_err(blob_status)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            // Hashed as it goes: bytes that no longer match the id end the stream with an error
            // (the receiver drops what it got) and are removed, so the next fetch goes elsewhere
            // and an upload can repair them.
            let mut hasher = blake3::Hasher::new();
            loop {
                let mut buf = vec![0u8; CHUNK];
                match file.read(&mut buf).await {
                    Ok(0) => {
                        if BlobId(*hasher.finalize().as_bytes()) != id {
                            blobs.remove_corrupt(&id);
                            let _ = tx.send(Err(blob_status(BlobError::Corrupt(id)))).await;
                        }
                        return;
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        hasher.update(&buf);
                        if tx.send(Ok(pb::BlobChunk { chunk: buf })).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("reading blob {id}: {e}")))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stat(&self, req: Request<pb::GetBlobRequest>) -> Result<Response<pb::BlobInfo>, Status> {
        let id: BlobId = parse_id("blob_id", &req.into_inner().blob_id)?;
        match self.node.store().blobs().size(&id).await {
            Some(size) => Ok(Response::new(pb::BlobInfo { blob_id: id.to_hex(), size, existed: true })),
            None => Err(Status::not_found(format!("blob {id} is not stored at this peer"))),
        }
    }
}
