//! Uploading blobs (deduplicated, in 1 MiB chunks) and submitting jobs.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt, stream};
use prost::Message;

use crate::plan::{INLINE_MAX, Placement, REQUEST_BUDGET, plan_inputs};
use crate::proto::{self, task_input::Source};
use crate::{Client, Error, Job, JobId, Result};

/// Size of each `PutBlobRequest` chunk: 1 MiB.
pub const BLOB_CHUNK_BYTES: usize = 1024 * 1024;

/// Length of the random nonce drawn for each submit.
const NONCE_BYTES: usize = 16;

/// Input blobs uploaded at once while submitting.
const PARALLEL_UPLOADS: usize = 4;

/// The hex BLAKE3 id of `bytes`, as the mesh names blobs.
pub fn blob_id(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The `PutBlobRequest` messages of an upload: 1 MiB chunks, `expected_id` on the first. An empty
/// blob is one message with an empty chunk.
fn put_messages(
    bytes: Arc<[u8]>,
    id: String,
) -> impl futures::Stream<Item = proto::PutBlobRequest> + Send + 'static {
    let chunks = bytes.len().div_ceil(BLOB_CHUNK_BYTES).max(1);
    let mut expected_id = Some(id);
    stream::iter((0..chunks).map(move |i| {
        let start = i * BLOB_CHUNK_BYTES;
        let end = (start + BLOB_CHUNK_BYTES).min(bytes.len());
        proto::PutBlobRequest {
            expected_id: expected_id.take().unwrap_or_default(),
            chunk: bytes[start..end].to_vec(),
        }
    }))
}

impl Client {
    /// Stores `bytes` on the peer as a blob and returns its id (hex BLAKE3).
    ///
    /// Asks `BlobService.Stat` first and skips the upload when the peer already holds the blob;
    /// otherwise streams it with `BlobService.Put` in 1 MiB chunks, the first naming the expected id.
    ///
    /// # Errors
    /// [`Error::Status`] from the peer, or [`Error::Protocol`] if it stored the bytes under
    /// another id.
    pub async fn upload_blob(&self, bytes: impl Into<Arc<[u8]>>) -> Result<String> {
        self.upload_shared(bytes.into()).await
    }

    pub(crate) async fn upload_shared(&self, bytes: Arc<[u8]>) -> Result<String> {
        let id = blob_id(&bytes);
        let stat = self
            .blobs
            .clone()
            .stat(proto::GetBlobRequest {
                blob_id: id.clone(),
            })
            .await;
        match stat {
            Ok(info) if info.get_ref().size == bytes.len() as u64 => return Ok(id),
            // Present with another size should not happen; upload again and let the peer decide.
            Ok(_) => {}
            // A peer without Stat can still take the upload.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound | tonic::Code::Unimplemented
                ) => {}
            Err(status) => return Err(status.into()),
        }
        let info = self
            .blobs
            .clone()
            .put(put_messages(bytes, id.clone()))
            .await?
            .into_inner();
        if !info.blob_id.eq_ignore_ascii_case(&id) {
            return Err(Error::Protocol(format!(
                "uploaded blob {id} but the peer stored it as {:?}",
                info.blob_id
            )));
        }
        Ok(id)
    }

    /// Submits a job and returns its id.
    ///
    /// Uploads the module (skipped when the peer has it), uploads inputs larger than 64 KiB (and
    /// more if the request would exceed 60 MiB, see [`plan`](crate::plan)) as blobs, sends the
    /// rest inline, and calls `JobService.Submit` with the job's nonce or a fresh random one.
    ///
    /// # Errors
    /// [`Error::Status`] from the peer (the job is refused, a limit is too high...),
    /// [`Error::JobTooLarge`], [`Error::Protocol`] for a malformed job id in the reply, or
    /// [`Error::Random`] if no nonce could be drawn.
    pub async fn submit(&self, job: &Job) -> Result<JobId> {
        let module_id = self.upload_shared(job.shared_module().clone()).await?;
        let nonce = match job.nonce() {
            Some(nonce) => nonce.to_vec(),
            None => {
                let mut nonce = vec![0u8; NONCE_BYTES];
                getrandom::fill(&mut nonce).map_err(Error::Random)?;
                nonce
            }
        };
        let mut request = proto::SubmitRequest {
            module_id,
            tasks: Vec::new(),
            policy: Some(*job.policy()),
            args: job.args().to_vec(),
            env: job
                .env()
                .iter()
                .map(|(key, value)| proto::EnvVar {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            label: job.label().to_string(),
            nonce,
            auth: None,
        };
        let inputs = job.shared_tasks();
        let sizes: Vec<usize> = inputs.iter().map(|t| t.len()).collect();
        let plan = plan_inputs(&sizes, request.encoded_len(), INLINE_MAX, REQUEST_BUDGET)?;
        request.tasks = self.place_inputs(inputs, &plan).await?;
        let receiver = self.receiver().await?;
        self.identity()?.sign_submit(&mut request, &receiver)?;
        let reply = self.jobs.clone().submit(request).await?.into_inner();
        reply.job_id.parse().map_err(|_| {
            Error::Protocol(format!(
                "the peer answered Submit with a malformed job id {:?}",
                reply.job_id
            ))
        })
    }

    /// Turns inputs into `TaskInput`s as `plan` says, uploading each distinct blob input once, a
    /// few at a time.
    async fn place_inputs(
        &self,
        inputs: &[Arc<[u8]>],
        plan: &[Placement],
    ) -> Result<Vec<proto::TaskInput>> {
        let mut uploads: HashMap<String, Arc<[u8]>> = HashMap::new();
        let tasks = inputs
            .iter()
            .zip(plan)
            .map(|(input, placement)| {
                let source = match placement {
                    Placement::Inline => Source::Inline(input.to_vec()),
                    Placement::Blob => {
                        let id = blob_id(input);
                        uploads.entry(id.clone()).or_insert_with(|| input.clone());
                        Source::BlobId(id)
                    }
                };
                proto::TaskInput {
                    source: Some(source),
                }
            })
            .collect();
        stream::iter(uploads.into_values())
            .map(|bytes| self.upload_shared(bytes))
            .buffer_unordered(PARALLEL_UPLOADS)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        Ok(tasks)
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on_stream;

    use super::*;
    use crate::id::is_hex_id;

    fn collect(bytes: &[u8]) -> Vec<proto::PutBlobRequest> {
        let id = blob_id(bytes);
        block_on_stream(Box::pin(put_messages(bytes.into(), id))).collect()
    }

    #[test]
    fn chunks_carry_the_id_first_and_reassemble() {
        let bytes: Vec<u8> = (0..(2 * BLOB_CHUNK_BYTES + 5))
            .map(|i| (i % 251) as u8)
            .collect();
        let messages = collect(&bytes);
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0].expected_id, blob_id(&bytes));
        assert!(messages[1..].iter().all(|m| m.expected_id.is_empty()));
        assert_eq!(messages[2].chunk.len(), 5);
        let joined: Vec<u8> = messages.into_iter().flat_map(|m| m.chunk).collect();
        assert_eq!(joined, bytes);
    }

    #[test]
    fn exact_multiple_and_empty() {
        assert_eq!(collect(&vec![1u8; BLOB_CHUNK_BYTES]).len(), 1);
        let empty = collect(&[]);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].chunk.is_empty());
        assert_eq!(empty[0].expected_id, blob_id(&[]));
    }

    #[test]
    fn blob_id_is_hex_blake3() {
        let id = blob_id(b"spare");
        assert!(is_hex_id(&id));
        assert_eq!(id, blake3::hash(b"spare").to_hex().as_str());
    }
}
