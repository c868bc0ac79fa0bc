//! Working for jobs other peers coordinate: ask a coordinator for a batch of leases (signed, so
//! nobody can take leases in another peer's name), fetch the module and inputs by hash (checked),
//! and report attestations back in batches.

use std::time::Duration;

use futures::StreamExt;
use spare_protocol::{BlobId, JobId, Limits, Release, TaskId};
use spare_proto as pb;
use spare_protocol::peer::reports::{Delivery, REPORT_QUEUE, ReportQueue, Sent};
use tokio::sync::mpsc;

use super::{Node, unix_ms};
use crate::wire::convert::parse_id;
use crate::wire::signing;

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
    pub expires_at: spare_protocol::Millis,
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

impl ReportMsg {
    /// The job it is about.
    fn job(&self) -> Option<JobId> {
        match self {
            ReportMsg::Attestation(i) => i.attestation.as_ref()?.job_id.parse().ok(),
            ReportMsg::Release(r) => r.job_id.parse().ok(),
        }
    }
}

/// Where a coordinator's reports wait before its reporter takes them: each with when its lease
/// lapses, on this peer's clock. Bounded like the reporter's own queue.
pub type Reporter = mpsc::Sender<(spare_protocol::Millis, ReportMsg)>;

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
            signature: self.0.identity.sign(&signing::lease(&job, max, ts)).to_vec(),
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
    pub(super) async fn send_report(&self, addr: &str, until: spare_protocol::Millis, msg: ReportMsg) {
        let _ = self.reporter_for(addr).send((until, msg)).await;
    }

    /// The queue of the reporter of the coordinator at `addr`, started if there is none.
    fn reporter_for(&self, addr: &str) -> Reporter {
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
    }

    /// Sends one coordinator's reports, batched and retried by the protocol's [`ReportQueue`],
    /// until the queue's sender is dropped and everything queued went out or was given up.
    async fn reporter(self, addr: String, mut rx: mpsc::Receiver<(spare_protocol::Millis, ReportMsg)>) {
        let mut queue: ReportQueue<ReportMsg> = ReportQueue::default();
        let mut open = true;
        loop {
            if let Some(batch) = queue.poll_batch(self.now()) {
                let (attempt, items) = (batch.attempt, batch.items.len());
                let delivery = self.deliver_report(&addr, &batch.items).await;
                match queue.handle_sent(batch, delivery, self.now()) {
                    Sent::Taken => {}
                    Sent::Retry(_) => {
                        if attempt == 1 {
                            tracing::warn!(%addr, ?delivery, "report failed, retrying until its leases lapse");
                        }
                        // Reports whose job another coordinator leads now go there.
                        let (moved, until) = queue.take_from_retry(|m| self.report_target(m).is_some_and(|a| a != addr));
                        for m in moved {
                            if let Some(to) = self.report_target(&m) {
                                tracing::debug!(from = %addr, %to, "a report follows its job's new coordinator");
                                // Not awaited: two reporters must never wait on each other.
                                if self.reporter_for(&to).try_send((until, m)).is_err() {
                                    tracing::warn!(%to, "report dropped: that coordinator's queue is full");
                                }
                            }
                        }
                    }
                    Sent::Dropped(_) => tracing::warn!(%addr, attempt, items, ?delivery, "report given up"),
                }
                continue;
            }
            if !open && queue.is_idle() {
                return;
            }
            let nap = queue.poll_timeout().map(|at| Duration::from_millis(at.saturating_sub(self.now())));
            tokio::select! {
                m = rx.recv(), if open && queue.waiting() < REPORT_QUEUE => match m {
                    Some((until, msg)) => {
                        let bytes = match &msg {
                            ReportMsg::Attestation(item) => item.output.len(),
                            ReportMsg::Release(_) => 0,
                        };
                        // Room was checked above.
                        let _ = queue.push(msg, bytes, until, self.now());
                    }
                    None => open = false,
                },
                _ = tokio::time::sleep(nap.unwrap_or_default()), if nap.is_some() => {}
            }
        }
    }

    /// Sends one signed report batch and says how it went.
    async fn deliver_report(&self, addr: &str, items: &[ReportMsg]) -> Delivery {
        let mut req = pb::ReportRequest { peer_id: self.peer_id().to_hex(), ..Default::default() };
        for m in items {
            match m {
                ReportMsg::Attestation(item) => req.items.push(item.clone()),
                ReportMsg::Release(r) => req.released.push(r.clone()),
            }
        }
        req.timestamp_ms = unix_ms();
        req.signature = self.0.identity.sign(&signing::report(&req)).to_vec();
        let Some(mut client) = self.0.clients.mesh(addr) else { return Delivery::Refused };
        match client.report(req).await {
            Ok(_) => Delivery::Taken,
            Err(e) => {
                self.0.clients.forget(addr);
                tracing::debug!(%addr, "report failed: {e}");
                delivery_of(e.code())
            }
        }
    }

    /// Where a report of `msg`'s job goes now: the first coordinator of the job's ad with a live
    /// address.
    fn report_target(&self, msg: &ReportMsg) -> Option<String> {
        let ad = self.job_ad(&msg.job()?)?;
        ad.coordinators.iter().find_map(|c| self.addr_of(c))
    }

    /// Hands a remote replica back without a result.
    pub(super) async fn release_remote(&self, r: &RemoteReplica, why: Release) {
        let msg = pb::Release { job_id: r.task.job.to_hex(), index: r.task.index, deadline: why == Release::Deadline };
        self.send_report(&r.coordinator, r.expires_at, ReportMsg::Release(msg)).await;
    }
}

/// How a failed call went, as the report rules see it: a coordinator that is unreachable,
/// restarting or timed out (a connection that timed out is CANCELLED) may take the batch later,
/// and so may a busy one; anything else is a refusal.
pub fn delivery_of(code: tonic::Code) -> Delivery {
    match code {
        tonic::Code::Ok => Delivery::Taken,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown | tonic::Code::Cancelled => {
            Delivery::Unreachable
        }
        tonic::Code::ResourceExhausted => Delivery::Busy,
        _ => Delivery::Refused,
    }
}
