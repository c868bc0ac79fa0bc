//! Working for jobs other peers coordinate: ask a coordinator for a batch of leases (signed, so
//! nobody can take leases in another peer's name), fetch the module and inputs by hash (checked),
//! and report attestations back in batches (the protocol's [`Reporters`] decide when and where).

use std::time::Duration;

use futures::StreamExt;
use spare_protocol::{BlobId, JobId, Limits, PeerId, Release, TaskId};
use spare_proto as pb;
use spare_protocol::peer::reporters::{Handled, Reporters};
use spare_protocol::peer::reports::{Delivery, Sent};
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

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

/// A report on its way to the reporter: the coordinator's address, when the lease lapses (this
/// peer's clock), the message.
type Queued = (String, spare_protocol::Millis, ReportMsg);

/// Where replicas hand their reports to the reporter.
pub type ReportSender = mpsc::Sender<Queued>;

/// Reports handed over and not yet taken by the reporter; a replica waits for room past it.
const REPORT_HANDOFF: usize = 1024;

impl Node {
    /// Asks a coordinator of `job` for up to `max` replicas.
    pub(super) async fn lease_remote(&self, job: JobId, max: u32) -> anyhow::Result<Vec<RemoteReplica>> {
        let ad = self.job_ad(&job).ok_or_else(|| anyhow::anyhow!("no ad for job {job}"))?;
        let (to, addr) = ad
            .coordinators
            .iter()
            .find_map(|c| self.addr_of(c).map(|a| (*c, a)))
            .ok_or_else(|| anyhow::anyhow!("no live coordinator of job {}", job.short()))?;
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
                // Never what a peer sends (an empty input is `inline` with no bytes).
                None => anyhow::bail!("lease from {addr}: task {} came with no input source", t.index),
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
    /// peer's clock).
    pub(super) async fn send_report(&self, addr: &str, until: spare_protocol::Millis, msg: ReportMsg) {
        let _ = self.reporter().send((addr.to_string(), until, msg)).await;
    }

    /// The reporter's hand-off queue; the reporter is started if it is not running.
    fn reporter(&self) -> ReportSender {
        let mut slot = self.0.reporter.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(REPORT_HANDOFF);
        tokio::spawn(self.clone().reporter_loop(rx));
        *slot = Some(tx.clone());
        tx
    }

    /// The one owner of this peer's [`Reporters`]: queues what replicas report, sends each
    /// batch they say is due (to every coordinator at once, one batch out per coordinator),
    /// and gives each answer back, until the hand-off queue closes and everything queued went
    /// out or was given up.
    async fn reporter_loop(self, mut rx: mpsc::Receiver<Queued>) {
        let mut reports: Reporters<String, ReportMsg> = Reporters::default();
        let mut out: JoinSet<Delivery> = JoinSet::new();
        // Which coordinator each send is for, so a send that panicked is answered too.
        let mut sending: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut open = true;
        loop {
            let now = self.now();
            while let Some((addr, items)) = reports.poll_batch(now) {
                let req = self.report_request(items, self.peer_at(&addr));
                let node = self.clone();
                let to = addr.clone();
                let handle = out.spawn(async move { node.deliver_report(&to, req).await });
                sending.insert(handle.id(), addr);
            }
            if !open && reports.is_idle() && out.is_empty() {
                return;
            }
            let nap = reports.poll_timeout().map(|at| Duration::from_millis(at.saturating_sub(now)));
            tokio::select! {
                m = rx.recv(), if open => match m {
                    Some((addr, until, msg)) => {
                        let bytes = match &msg {
                            ReportMsg::Attestation(item) => item.output.len(),
                            ReportMsg::Release(_) => 0,
                        };
                        if reports.push(addr.clone(), msg, bytes, until, self.now()).is_err() {
                            tracing::warn!(%addr, "report dropped: too many wait for that coordinator");
                        }
                    }
                    None => open = false,
                },
                Some(done) = out.join_next_with_id(), if !out.is_empty() => {
                    let (id, delivery) = match done {
                        Ok((id, delivery)) => (id, delivery),
                        Err(e) => (e.id(), Delivery::Unreachable),
                    };
                    let Some(addr) = sending.remove(&id) else { continue };
                    match reports.handle_sent(&addr, delivery, self.now(), |m| self.report_target(m)) {
                        Some(Handled { sent: Sent::Dropped(items), .. }) => {
                            tracing::warn!(%addr, items = items.len(), ?delivery, "report given up");
                        }
                        Some(Handled { sent: Sent::Retry(_), moved }) => {
                            tracing::debug!(%addr, ?delivery, moved, "report failed, retrying until its leases lapse; reports of jobs led elsewhere now moved there");
                        }
                        _ => {}
                    }
                },
                _ = tokio::time::sleep(nap.unwrap_or_default()), if nap.is_some() => {}
            }
        }
    }

    /// The peer at `addr`: this one at its own address (its replicas report to it there when it
    /// leads), else the one a channel there must meet.
    fn peer_at(&self, addr: &str) -> Option<PeerId> {
        if addr == self.advertised_addr() { Some(self.peer_id()) } else { self.0.clients.expected(addr) }
    }

    /// The signed report request of one batch, for the coordinator `to` (the PeerId expected at
    /// its address; without one, the receiver refuses it).
    fn report_request(&self, items: &[ReportMsg], to: Option<PeerId>) -> pb::ReportRequest {
        let mut req = pb::ReportRequest { peer_id: self.peer_id().to_hex(), ..Default::default() };
        for m in items {
            match m {
                ReportMsg::Attestation(item) => req.items.push(item.clone()),
                ReportMsg::Release(r) => req.released.push(r.clone()),
            }
        }
        req.timestamp_ms = unix_ms();
        req.receiver = to.map(|p| p.to_hex()).unwrap_or_default();
        req.request_nonce = signing::request_nonce();
        req.signature = self.0.identity.sign(&signing::report(&req)).to_vec();
        req
    }

    /// Sends one signed report batch and says how it went.
    async fn deliver_report(&self, addr: &str, req: pb::ReportRequest) -> Delivery {
        let Some(mut client) = self.0.clients.mesh(addr) else { return Delivery::Refused };
        match client.report(req).await {
            Ok(_) => Delivery::Taken,
            Err(e) => {
                self.0.clients.forget(addr);
                tracing::debug!(%addr, "report failed: {e}");
                delivery_of(&e)
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
