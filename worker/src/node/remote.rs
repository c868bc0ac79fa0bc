//! The calls the worker loop (`work.rs`) makes to other peers' coordinators: a lease request
//! (signed, so nobody can take leases in another peer's name), a blob fetch by hash (checked),
//! a signed report batch; and how a failed call counts for the report rules.

use futures::StreamExt;
use spare_proto as pb;
use spare_protocol::peer::reports::Delivery;
use spare_protocol::{BlobId, JobId, Limits, Millis, PeerId};

use super::{Node, unix_ms};
use crate::wire::convert::parse_id;
use crate::wire::signing;

/// What a remote replica needs to run beyond what [`Work`](spare_protocol::peer::work::Work)
/// decides with: kept by the worker loop from the lease reply until the replica runs.
#[derive(Clone, Debug)]
pub struct Payload {
    /// Its input: inline bytes or a blob to fetch.
    pub input: RemoteInput,
    /// argv[1..].
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Sandbox limits.
    pub limits: Limits,
    /// When the lease lapses, on this peer's clock (the entry is forgotten then).
    pub expires_at: Millis,
}

/// Where a replica's input is.
#[derive(Clone, Debug)]
pub enum RemoteInput {
    /// In the lease reply (or this peer's store).
    Inline(Vec<u8>),
    /// A blob (at the coordinator, for a remote replica).
    Blob(BlobId),
}

/// A lease reply: the job's module and deadline, and each task granted with the time its lease
/// had left when sent and its payload (whose `expires_at` the caller sets).
pub struct Granted {
    pub module: BlobId,
    pub timeout_ms: u64,
    pub tasks: Vec<(u32, u64, Payload)>,
}

impl Node {
    /// Asks coordinator `to` for up to `max` replicas of `job`.
    pub(super) async fn lease_from(&self, to: PeerId, job: JobId, max: u32) -> anyhow::Result<Granted> {
        let addr = self.addr_of(&to).ok_or_else(|| anyhow::anyhow!("no address for coordinator {}", to.short()))?;
        let (ts, nonce) = (unix_ms(), signing::request_nonce());
        let req = pb::LeaseRequest {
            peer_id: self.peer_id().to_hex(),
            job_id: job.to_hex(),
            max,
            timestamp_ms: ts,
            signature: self.0.identity.sign(&signing::lease(&job, max, ts, &to, &nonce)).to_vec(),
            receiver: to.to_hex(),
            request_nonce: nonce,
        };
        let mut client = self.0.clients.mesh(&addr).ok_or_else(|| anyhow::anyhow!("bad address {addr}"))?;
        let reply = match client.lease(req).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                self.0.clients.forget(&addr);
                anyhow::bail!("lease from {addr}: {e}");
            }
        };
        let module: BlobId = parse_id("module_id", &reply.module_id).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let l = reply.limits.unwrap_or_default();
        let limits = Limits { memory_bytes: l.memory_bytes, fuel: l.fuel, timeout_ms: l.timeout_ms, output_bytes: l.output_bytes };
        let env: Vec<(String, String)> = reply.env.into_iter().map(|e| (e.key, e.value)).collect();
        let mut tasks = Vec::with_capacity(reply.tasks.len());
        for t in reply.tasks.into_iter().take(max as usize) {
            let input = match t.input.and_then(|i| i.source) {
                Some(pb::task_input::Source::Inline(b)) => RemoteInput::Inline(b),
                Some(pb::task_input::Source::BlobId(s)) => {
                    RemoteInput::Blob(parse_id("blob_id", &s).map_err(|e| anyhow::anyhow!("{}", e.message()))?)
                }
                // Never what a peer sends (an empty input is `inline` with no bytes).
                None => anyhow::bail!("lease from {addr}: task {} came with no input source", t.index),
            };
            let payload = Payload { input, args: reply.args.clone(), env: env.clone(), limits, expires_at: 0 };
            tasks.push((t.index, t.expires_in_ms, payload));
        }
        Ok(Granted { module, timeout_ms: limits.timeout_ms, tasks })
    }

    /// Makes sure blob `id` is stored here, fetching it from `addr` (and checking its hash).
    pub(crate) async fn fetch_blob(&self, addr: &str, id: &BlobId, max: u64) -> anyhow::Result<()> {
        if self.store().blobs().has(id).await {
            return Ok(());
        }
        let mut client = self.0.clients.blobs(addr).ok_or_else(|| anyhow::anyhow!("bad address {addr}"))?;
        let mut stream = client.get(pb::GetBlobRequest { blob_id: id.to_hex() }).await?.into_inner();
        let mut writer = self.store().blobs().writer(max).await?;
        while let Some(chunk) = stream.next().await {
            writer.write(&chunk?.chunk).await?;
        }
        writer.finish(Some(*id)).await?;
        Ok(())
    }

    /// Sends one signed report batch to coordinator `to` and says how it went.
    pub(super) async fn deliver_report(&self, to: PeerId, req: pb::ReportRequest) -> Delivery {
        let Some(addr) = self.addr_of(&to) else { return Delivery::Unreachable };
        let Some(mut client) = self.0.clients.mesh(&addr) else { return Delivery::Refused };
        match client.report(req).await {
            Ok(_) => Delivery::Taken,
            Err(e) => {
                self.0.clients.forget(&addr);
                tracing::debug!(%addr, "report failed: {e}");
                delivery_of(&e)
            }
        }
    }
}

/// How a failed call went, as the report rules see it: a call that failed in transport (no
/// answer from the coordinator, e.g. its connection closed with GOAWAY as it shut down, which
/// tonic reports as INTERNAL) or was unreachable, restarting or timed out (a connection that
/// timed out is CANCELLED) may be taken later, and so may one a busy coordinator refused;
/// anything the coordinator answered otherwise is a refusal.
pub fn delivery_of(status: &tonic::Status) -> Delivery {
    if std::error::Error::source(status).is_some() {
        return Delivery::Unreachable;
    }
    match status.code() {
        tonic::Code::Ok => Delivery::Taken,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown | tonic::Code::Cancelled => {
            Delivery::Unreachable
        }
        tonic::Code::ResourceExhausted => Delivery::Busy,
        _ => Delivery::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_cut_in_transport_is_retried_and_an_answer_is_not() {
        // As tonic reports a connection closed by GOAWAY under a call: INTERNAL, with the
        // transport error as its source.
        let mut cut = tonic::Status::internal("h2 protocol error: http2 error");
        cut.set_source(std::sync::Arc::new(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "GOAWAY")));
        assert_eq!(delivery_of(&cut), Delivery::Unreachable);
        assert_eq!(delivery_of(&tonic::Status::internal("the coordinator failed")), Delivery::Refused);
        assert_eq!(delivery_of(&tonic::Status::unavailable("down")), Delivery::Unreachable);
        assert_eq!(delivery_of(&tonic::Status::resource_exhausted("slow down")), Delivery::Busy);
        assert_eq!(delivery_of(&tonic::Status::permission_denied("bad signature")), Delivery::Refused);
    }
}
