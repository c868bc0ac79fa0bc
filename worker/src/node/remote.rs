//! Working for jobs other peers coordinate: ask a coordinator for a batch of leases (signed, so
//! nobody can take leases in another peer's name), fetch the module and inputs by hash (checked),
//! and report attestations back in batches.

use std::time::Duration;

use futures::StreamExt;
use spare_coordinator::{BlobId, JobId, Limits, Release, TaskId};
use spare_proto as pb;
use tokio::sync::mpsc;

use super::{Node, unix_ms};
use crate::service::convert::parse_id;

/// A replica leased from another peer's coordinator.
#[derive(Clone, Debug)]
pub struct RemoteReplica {
    /// The coordinator's address.
    pub coordinator: String,
    /// The task.
    pub task: TaskId,
    /// The module to run.
    pub module: BlobId,
    /// Its input: inline bytes or a blob to fetch.
    pub input: RemoteInput,
    /// argv[1..].
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Sandbox limits.
    pub limits: Limits,
    /// When the lease lapses, on this peer's clock.
    pub expires_at: spare_coordinator::Millis,
}

/// Where a remote replica's input is.
#[derive(Clone, Debug)]
pub enum RemoteInput {
    /// In the lease reply.
    Inline(Vec<u8>),
    /// A blob at the coordinator.
    Blob(BlobId),
}

/// One thing a reporter sends to a coordinator.
#[derive(Debug)]
pub enum ReportMsg {
    /// A signed attestation with its output.
    Attestation(pb::ReportItem),
    /// A replica handed back without a result.
    Release(pb::Release),
}

/// Where a coordinator's reports wait: each with when its lease lapses, on this peer's clock.
pub type ReportQueue = mpsc::Sender<(spare_coordinator::Millis, ReportMsg)>;

/// Reports batched per coordinator: at most this many per request…
const REPORT_BATCH: usize = 256;
/// …or this many output bytes…
const REPORT_BYTES: usize = 4 << 20;
/// …or this long after the first one waits.
const REPORT_LINGER: Duration = Duration::from_millis(5);
/// Reports waiting per coordinator before new ones wait their turn.
const REPORT_QUEUE: usize = 4096;
/// Longest wait between attempts at a report batch. A batch is retried while the coordinator is
/// unreachable (restarting, or across a split) until the first of its leases lapses, when the
/// coordinator has put those replicas back in the pool and would refuse it.
const REPORT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Leases a worker asks for are refused when their timestamp is this far from the coordinator's clock.
pub const LEASE_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// The bytes a lease request's signature covers.
pub fn lease_signing_bytes(job: &JobId, max: u32, timestamp_ms: u64) -> Vec<u8> {
    let mut b = b"spare.v1.lease\0".to_vec();
    b.extend_from_slice(job.as_bytes());
    b.extend_from_slice(&max.to_le_bytes());
    b.extend_from_slice(&timestamp_ms.to_le_bytes());
    b
}

/// The bytes a report batch's signature covers.
pub fn report_signing_bytes(req: &pb::ReportRequest) -> Vec<u8> {
    use prost::Message;
    let mut unsigned = req.clone();
    unsigned.signature.clear();
    let mut b = b"spare.v1.report\0".to_vec();
    b.extend_from_slice(blake3::hash(&unsigned.encode_to_vec()).as_bytes());
    b
}

/// The bytes a gossip message's signature covers.
pub fn gossip_signing_bytes(data: &[u8]) -> Vec<u8> {
    let mut b = b"spare.v1.gossip\0".to_vec();
    b.extend_from_slice(blake3::hash(data).as_bytes());
    b
}

impl Node {
    /// Asks a coordinator of `job` for up to `max` replicas.
    pub(super) async fn lease_remote(&self, job: JobId, max: u32) -> anyhow::Result<Vec<RemoteReplica>> {
        let ad = self.job_ad(&job).ok_or_else(|| anyhow::anyhow!("no ad for job {job}"))?;
        let addr = ad
            .coordinators
            .iter()
            .find_map(|c| self.addr_of(c))
            .ok_or_else(|| anyhow::anyhow!("no live coordinator of job {}", job.short()))?;
        let ts = unix_ms();
        let req = pb::LeaseRequest {
            peer_id: self.peer_id().to_hex(),
            job_id: job.to_hex(),
            max,
            timestamp_ms: ts,
            signature: self.0.identity.sign(&lease_signing_bytes(&job, max, ts)).to_vec(),
        };
        let mut client = self.0.clients.mesh(&addr).ok_or_else(|| anyhow::anyhow!("bad address {addr}"))?;
        let asked = self.now();
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
        let mut out = Vec::with_capacity(reply.tasks.len());
        for t in reply.tasks.into_iter().take(max as usize) {
            let input = match t.input.and_then(|i| i.source) {
                Some(pb::task_input::Source::Inline(b)) => RemoteInput::Inline(b),
                Some(pb::task_input::Source::BlobId(s)) => {
                    RemoteInput::Blob(parse_id("blob_id", &s).map_err(|e| anyhow::anyhow!("{}", e.message()))?)
                }
                None => RemoteInput::Inline(Vec::new()),
            };
            out.push(RemoteReplica {
                coordinator: addr.clone(),
                task: TaskId { job, index: t.index },
                module,
                input,
                args: reply.args.clone(),
                env: env.clone(),
                limits,
                // Counted from when it was asked for: the reply's own travel time is unknown.
                expires_at: asked + t.expires_in_ms,
            });
        }
        Ok(out)
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

    /// Queues a report for the coordinator at `addr`, of a lease that lapses at `until` (this
    /// peer's clock); batches go out from one task per coordinator.
    pub(super) async fn send_report(&self, addr: &str, until: spare_coordinator::Millis, msg: ReportMsg) {
        let tx = {
            let mut reporters = self.0.reporters.lock().unwrap_or_else(|p| p.into_inner());
            reporters.retain(|_, tx| !tx.is_closed());
            reporters
                .entry(addr.to_string())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(REPORT_QUEUE);
                    tokio::spawn(self.clone().reporter(addr.to_string(), rx));
                    tx
                })
                .clone()
        };
        let _ = tx.send((until, msg)).await;
    }

    async fn reporter(self, addr: String, mut rx: mpsc::Receiver<(spare_coordinator::Millis, ReportMsg)>) {
        while let Some(first) = rx.recv().await {
            let mut req = pb::ReportRequest { peer_id: self.peer_id().to_hex(), ..Default::default() };
            // Retried until the first lease in the batch lapses.
            let mut until = spare_coordinator::Millis::MAX;
            let mut add = |(u, m): (spare_coordinator::Millis, ReportMsg), req: &mut pb::ReportRequest| {
                until = until.min(u);
                match m {
                    ReportMsg::Attestation(item) => req.items.push(item),
                    ReportMsg::Release(r) => req.released.push(r),
                }
            };
            let bytes = |req: &pb::ReportRequest| req.items.iter().map(|i| i.output.len()).sum::<usize>();
            add(first, &mut req);
            let linger = tokio::time::sleep(REPORT_LINGER);
            tokio::pin!(linger);
            while req.items.len() + req.released.len() < REPORT_BATCH && bytes(&req) < REPORT_BYTES {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => add(m, &mut req),
                        None => break,
                    },
                    _ = &mut linger => break,
                }
            }
            req.timestamp_ms = unix_ms();
            req.signature = self.0.identity.sign(&report_signing_bytes(&req)).to_vec();
            self.deliver_report(&addr, req, until).await;
        }
    }

    /// Sends one report batch, retrying while the coordinator is unreachable and the batch's
    /// leases last.
    async fn deliver_report(&self, addr: &str, req: pb::ReportRequest, until: spare_coordinator::Millis) {
        let mut wait = Duration::from_millis(200);
        for attempt in 1u32.. {
            let Some(mut client) = self.0.clients.mesh(addr) else { return };
            let e = match client.report(req.clone()).await {
                Ok(_) => return,
                Err(e) => e,
            };
            self.0.clients.forget(addr);
            // Only an unreachable or busy coordinator may take it later; a refusal is final.
            // (A connection that timed out is CANCELLED.)
            let transient = matches!(
                e.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
            );
            if !transient || self.now() + wait.as_millis() as u64 >= until {
                tracing::warn!(%addr, attempt, items = req.items.len(), "report given up: {e}");
                return;
            }
            if attempt == 1 {
                tracing::warn!(%addr, "report failed, retrying until its leases lapse: {e}");
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(REPORT_BACKOFF_MAX);
        }
    }

    /// Hands a remote replica back without a result.
    pub(super) async fn release_remote(&self, r: &RemoteReplica, why: Release) {
        let msg = pb::Release { job_id: r.task.job.to_hex(), index: r.task.index, deadline: why == Release::Deadline };
        self.send_report(&r.coordinator, r.expires_at, ReportMsg::Release(msg)).await;
    }
}
