//! `spare.v1.JobService`: submit, status, watch, results, cancel, list.

use std::collections::HashSet;
use std::pin::Pin;

use futures::Stream;
use spare_protocol::{BlobId, JobId, PeerId, TaskId, TaskState};
use spare_sdk::identity::{SignedMethod, cancel_body, submit_body};
use spare_proto as pb;
use spare_proto::job_event::Event as Ev;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::{self, MAX_FORWARDS, forwarded};
use crate::wire::convert::{self, parse_id};
use crate::node::{Change, NewJob, Node, SubmitFailure};
use crate::store::StoredInput;

/// Most tasks listed in one status reply; larger jobs are read with Results.
pub(crate) const MAX_TASK_LIST: u32 = 100_000;
/// Most jobs one List reply holds, and how many when the request says 0.
pub(crate) const MAX_LIST: u32 = 1000;
const DEFAULT_LIST: u32 = 100;
/// Results read from the store per round.
const RESULTS_CHUNK: usize = 256;
/// Messages buffered per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 64;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The JobService of one peer.
pub struct JobApi {
    node: Node,
}

impl JobApi {
    /// The service over `node`.
    pub fn new(node: Node) -> JobApi {
        JobApi { node }
    }
}

/// Task `i` of a request came with no input source: refused, as the proto says.
pub(super) fn no_source(i: usize) -> Status {
    Status::invalid_argument(format!("tasks[{i}] has no source; an empty input is `inline` set to no bytes"))
}

fn not_found(id: &JobId) -> Status {
    Status::not_found(format!("job {id} is not known at this peer"))
}

/// Where to forward a request about a job this peer does not hold: a live coordinator named in
/// the job's ad. `Err` says which peers to ask when forwarding is not possible (`proxied`: the
/// request was forwarded here already).
fn coordinator_of(node: &Node, id: &JobId, proxied: bool) -> Result<(PeerId, JobClient), Status> {
    let Some(ad) = node.job_ad(id) else { return Err(not_found(id)) };
    let known: Vec<(PeerId, String)> = ad.coordinators.iter().filter_map(|c| node.addr_of(c).map(|a| (*c, a))).collect();
    let addrs: Vec<String> = known.iter().map(|(_, a)| a.clone()).collect();
    if proxied || known.is_empty() {
        let who: Vec<String> = ad.coordinators.iter().map(|c| c.short()).collect();
        return Err(Status::not_found(format!(
            "job {id} is coordinated by peer(s) {} at {}; ask there",
            who.join(", "),
            if addrs.is_empty() { "no known address".to_string() } else { addrs.join(", ") }
        )));
    }
    let (peer, addr) = &known[0];
    let client = node.client_jobs(addr).ok_or_else(|| Status::unavailable("no channel to the job's coordinator"))?;
    Ok((*peer, client))
}

/// The active coordinator of `id` as this peer knows it (the first live one of its list), when
/// that is another peer and the request may still be forwarded.
fn active_of(node: &Node, id: &JobId, proxied: bool) -> Option<(PeerId, JobClient)> {
    if proxied {
        return None;
    }
    let me = node.peer_id();
    let list = node.core().coordinators(id).map(<[PeerId]>::to_vec)?;
    let (peer, addr) = list.iter().find_map(|c| if *c == me { Some(None) } else { node.addr_of(c).map(|a| Some((*c, a))) })??;
    Some((peer, node.client_jobs(&addr)?))
}

type JobClient = pb::job_service_client::JobServiceClient<tonic::transport::Channel>;

/// Where a request about `id` is answered: here (`None`) when this peer is one of the job's
/// coordinators, or holds the job and cannot forward; otherwise by a coordinator the job's ad
/// names (a peer that holds a job it no longer coordinates may be behind, e.g. the losing side
/// of a healed split).
fn route(node: &Node, id: &JobId, proxied: bool) -> Result<Option<(PeerId, JobClient)>, Status> {
    let me = node.peer_id();
    let (held, named) = node.core().coordinators(id).map_or((false, false), |list| (true, list.contains(&me)));
    if named {
        return Ok(None);
    }
    match coordinator_of(node, id, proxied) {
        Ok(client) => Ok(Some(client)),
        Err(_) if held => Ok(None),
        Err(e) => Err(e),
    }
}

/// The status of a job, with its tasks when asked.
pub fn status(node: &Node, id: &JobId, include_tasks: bool) -> Result<pb::JobStatus, Status> {
    let (mut s, views, coordinators, owner, n, undurable, lone) = {
        let core = node.core();
        let view = core.coord().job(id).ok_or_else(|| not_found(id))?;
        let mut s = convert::job_status(&view);
        // Verdicts not durable yet count as running: a crash could still take them back.
        let undurable: HashSet<u32> = core.undurable.iter().filter(|t| t.job == *id).map(|t| t.index).collect();
        if !undurable.is_empty() {
            let states = undurable.iter().filter_map(|&index| core.coord().task(&TaskId { job: *id, index }).map(|t| t.state));
            as_running(&mut s, states);
        }
        let coordinators = core.coordinators(id).map(<[PeerId]>::to_vec).unwrap_or_default();
        // Until another peer takes the job, it lives on one peer's disk: the submitter hears so.
        let lone = !view.state.is_final() && coordinators.len() == 1;
        let owner = core.jobs.get(id).and_then(|m| m.owner);
        let n = if include_tasks { view.spec.task_count.min(MAX_TASK_LIST) } else { 0 };
        // An ended job's tasks are in the store (`node::ended`), read below without the lock.
        let views: Vec<_> = if core.coord().is_shed(id) {
            Vec::new()
        } else {
            (0..n).filter_map(|index| core.coord().task(&TaskId { job: *id, index })).collect()
        };
        (s, views, coordinators, owner, n, undurable, lone)
    };
    if lone {
        let note = "one coordinator so far (no other peer has taken the job yet): it stops while that peer is down";
        s.message = if s.message.is_empty() { note.to_string() } else { format!("{}; {note}", s.message) };
    }
    s.owner = owner.map(|o| o.to_hex()).unwrap_or_default();
    s.coordinators = coordinators.iter().filter_map(|c| node.addr_of(c)).collect();
    if include_tasks && s.tasks.as_ref().is_some_and(|c| c.total > MAX_TASK_LIST) {
        let note = format!("task_list holds the first {MAX_TASK_LIST} tasks; read the rest with Results");
        s.message = if s.message.is_empty() { note } else { format!("{}; {note}", s.message) };
    }
    if let Some(ended) = node.shed_task_views(id, n).filter(|_| include_tasks) {
        let ended = ended.map_err(|e| Status::internal(format!("reading the tasks of job {id}: {e}")))?;
        s.task_list = ended.iter().map(|(v, stored)| convert::task_status(v, stored.as_ref())).collect();
        return Ok(s);
    }
    for v in &views {
        // Only failures carry a stored detail worth a read.
        let stored = match v.state {
            TaskState::Failed | TaskState::Inconclusive => node.store().result(&v.id).ok().flatten(),
            _ => None,
        };
        let mut t = convert::task_status(v, stored.as_ref());
        if undurable.contains(&v.id.index) {
            t = pb::TaskStatus { index: t.index, state: pb::TaskState::Running as i32, attestations: t.attestations, ..Default::default() };
        }
        s.task_list.push(t);
    }
    Ok(s)
}

/// Counts the tasks whose final `states` are not durable yet as running, and the job as running
/// if its end rests on them.
fn as_running(s: &mut pb::JobStatus, states: impl Iterator<Item = TaskState>) {
    let mut any = false;
    if let Some(c) = s.tasks.as_mut() {
        for state in states {
            let count = match state {
                TaskState::Verified => &mut c.verified,
                TaskState::Failed => &mut c.failed,
                TaskState::Inconclusive => &mut c.inconclusive,
                TaskState::Pending | TaskState::Running => continue,
            };
            *count = count.saturating_sub(1);
            c.running += 1;
            any = true;
        }
    }
    if any && matches!(pb::JobState::try_from(s.state), Ok(pb::JobState::Completed | pb::JobState::Failed)) {
        s.state = pb::JobState::Running as i32;
    }
}

fn task_done(node: &Node, task: &TaskId) -> Option<pb::TaskStatus> {
    let (view, stored) = node.task_view(task)?;
    Some(convert::task_status(&view, stored.as_ref()))
}

fn is_final(node: &Node, id: &JobId) -> bool {
    node.is_finished(id)
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for JobApi {
    async fn submit(&self, req: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let from_addr = super::listener::remote_of(&req).map(|a| a.ip());
        if self.node.reachability() == spare_protocol::reachability::Verdict::Unreachable {
            // A job's origin coordinates it and serves its module: peers must be able to dial it.
            let hint = self.node.some_reachable_addr().map(|a| format!(", such as {a}")).unwrap_or_default();
            return Err(Status::failed_precondition(format!(
                "this peer is unreachable (no other peer could dial it back: behind NAT or a firewall), so it \
                 does not coordinate jobs; submit at a reachable peer{hint}"
            )));
        }
        let r = req.into_inner();
        let owner = auth::check_client(&self.node, SignedMethod::Submit, &submit_body(&r), r.auth.as_ref(), &self.node.peer_id())?;
        let module: BlobId = parse_id("module_id", &r.module_id)?;
        if r.tasks.is_empty() {
            return Err(Status::invalid_argument("a job needs at least one task; tasks is empty"));
        }
        let mut inputs = Vec::with_capacity(r.tasks.len());
        for (i, t) in r.tasks.into_iter().enumerate() {
            inputs.push(match t.source {
                Some(pb::task_input::Source::Inline(b)) => StoredInput::Inline(b),
                Some(pb::task_input::Source::BlobId(s)) => StoredInput::Blob(parse_id(&format!("tasks[{i}].blob_id"), &s)?),
                // An empty input is `inline` set to no bytes; no source at all is a client's bug.
                None => return Err(no_source(i)),
            });
        }
        let job = NewJob {
            module,
            inputs,
            // A job that does not ask for a network diversity carries this origin's default, so
            // every coordinator of it applies the same.
            policy: {
                let mut p = convert::policy(r.policy.as_ref());
                p.diversity.get_or_insert(self.node.config().diversity);
                p
            },
            args: r.args,
            env: r.env.into_iter().map(|e| (e.key, e.value)).collect(),
            label: r.label,
            nonce: r.nonce,
            from_addr,
            owner: Some(owner),
        };
        match self.node.submit(job).await {
            Ok(id) => Ok(Response::new(pb::SubmitResponse { job_id: id.to_hex() })),
            Err(SubmitFailure::Invalid(m)) => Err(Status::invalid_argument(m)),
            Err(SubmitFailure::Missing(m)) => Err(Status::failed_precondition(m)),
            Err(SubmitFailure::Exists(m)) => Err(Status::already_exists(m)),
            Err(SubmitFailure::Full(m)) => Err(Status::resource_exhausted(m)),
            Err(SubmitFailure::Refused(m)) => Err(Status::permission_denied(m)),
            Err(SubmitFailure::Internal(e)) => Err(Status::internal(format!("{e:#}"))),
        }
    }

    async fn get(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::JobStatus>, Status> {
        let id: JobId = parse_id("job_id", &req.get_ref().job_id)?;
        if let Some((to, mut client)) = route(&self.node, &id, auth::proxied(&self.node, &req)?)? {
            let held = self.node.core().jobs.contains_key(&id);
            match client.get(forwarded(&self.node, req.get_ref().clone(), &to)).await {
                Ok(r) => return Ok(r),
                Err(e) if !held => return Err(e),
                // Unreachable: what this peer knows is better than nothing.
                Err(_) => {}
            }
        }
        let r = req.into_inner();
        Ok(Response::new(status(&self.node, &id, r.include_tasks)?))
    }

    type WatchStream = BoxStream<pb::JobEvent>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let id: JobId = parse_id("job_id", &req.get_ref().job_id)?;
        if let Some((to, mut client)) = route(&self.node, &id, auth::proxied(&self.node, &req)?)? {
            let stream = client.watch(forwarded(&self.node, req.into_inner(), &to)).await?.into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        // Subscribe first, then look whether the job has ended, then take the snapshot: a job
        // that had not ended is followed until its end arrives on the subscription, and every
        // verdict announced after subscribing arrives before it (announcements are in order);
        // verdicts announced before are in the snapshot, which the coordinator keeps ahead.
        let mut changes = self.node.subscribe();
        let ended = is_final(&self.node, &id);
        let snapshot = status(&self.node, &id, false)?;
        let node = self.node.clone();
        let mut stop = self.node.shutdown_signal();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let event = |e| Ok(pb::JobEvent { event: Some(e) });
            if tx.send(event(Ev::Snapshot(snapshot))).await.is_err() {
                return;
            }
            if ended {
                if let Ok(s) = status(&node, &id, false) {
                    let _ = tx.send(event(Ev::Finished(s))).await;
                }
                return;
            }
            loop {
                let next = tokio::select! {
                    c = changes.recv() => c,
                    _ = tx.closed() => return,
                    // The peer is stopping: end the stream so the client goes elsewhere.
                    _ = stop.wait_for(|s| *s) => return,
                };
                match next {
                    Ok(Change::TaskFinal(task)) if task.job == id => {
                        if let Some(t) = task_done(&node, &task)
                            && tx.send(event(Ev::TaskDone(t))).await.is_err() {
                                return;
                            }
                    }
                    Ok(Change::JobFinished(job)) if job == id => {
                        if let Ok(s) = status(&node, &id, false) {
                            let _ = tx.send(event(Ev::Finished(s))).await;
                        }
                        return;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind: a fresh snapshot stands for what was missed.
                        let Ok(s) = status(&node, &id, false) else { return };
                        let done = is_final(&node, &id);
                        let e = if done { Ev::Finished(s) } else { Ev::Snapshot(s) };
                        if tx.send(event(e)).await.is_err() || done {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ResultsStream = BoxStream<pb::TaskResult>;

    async fn results(&self, req: Request<pb::ResultsRequest>) -> Result<Response<Self::ResultsStream>, Status> {
        let id: JobId = parse_id("job_id", &req.get_ref().job_id)?;
        if let Some((to, mut client)) = route(&self.node, &id, auth::proxied(&self.node, &req)?)? {
            let stream = client.results(forwarded(&self.node, req.into_inner(), &to)).await?.into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        let r = req.into_inner();
        let total = self.node.core().coord().job(&id).ok_or_else(|| not_found(&id))?.spec.task_count;
        let mut changes = self.node.subscribe();
        let node = self.node.clone();
        let mut stop = self.node.shutdown_signal();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let mut next = r.from_index;
            let from_start = r.from_index == 0;
            // Waiting mode sends in strict task order; once the job has ended (or with
            // no_wait) it sends whatever is there, skipping tasks that never got a result.
            let mut gaps_ok = r.no_wait;
            while next < total {
                let rows = match node.store().results(&id, next, RESULTS_CHUNK) {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                let mut progressed = false;
                for (index, result) in rows {
                    if index != next && !gaps_ok {
                        break; // results go out in task order; wait for `next`
                    }
                    if tx.send(Ok(convert::task_result(index, result))).await.is_err() {
                        return;
                    }
                    next = index + 1;
                    progressed = true;
                }
                if progressed {
                    continue;
                }
                if gaps_ok {
                    break;
                }
                if is_final(&node, &id) {
                    gaps_ok = true;
                    continue;
                }
                tokio::select! {
                    _ = changes.recv() => {}
                    _ = tx.closed() => return,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            // Everything the job will have was sent: retention may count it as fetched.
            if from_start && is_final(&node, &id) {
                node.note_fetched(id);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::JobStatus>, Status> {
        // Forwarding is in the signed message, never in headers a client could set.
        let me = self.node.peer_id();
        let signed_for = auth::check_forwards(&req, req.get_ref(), &me)?;
        let r = req.into_inner();
        let id: JobId = parse_id("job_id", &r.job_id)?;
        let key = auth::check_client(&self.node, SignedMethod::Cancel, &cancel_body(&r), r.auth.as_ref(), &signed_for)?;
        if let Some(owner) = self.node.owner_of(&id)
            && owner != key
        {
            return Err(Status::permission_denied(format!(
                "only the job's owner may cancel it: job {} belongs to submitter key {}, and this request is signed by key {} (see `spare whoami`)",
                id.short(),
                owner.short(),
                key.short()
            )));
        }
        let may_forward = r.forwarded.len() < MAX_FORWARDS;
        if let Some((to, mut client)) = route(&self.node, &id, !may_forward)? {
            let mut next = r;
            auth::add_forward(&self.node, &mut next, &to);
            return client.cancel(next).await;
        }
        // A backup coordinator passes a cancellation to the active one, which tells the others.
        if let Some((to, mut client)) = active_of(&self.node, &id, !may_forward) {
            let mut next = r.clone();
            auth::add_forward(&self.node, &mut next, &to);
            if let Ok(r) = client.cancel(next).await {
                return Ok(r);
            }
        }
        match self.node.cancel(&id).await {
            Ok(true) => Ok(Response::new(status(&self.node, &id, false)?)),
            Ok(false) => Err(not_found(&id)),
            Err(e) => Err(Status::internal(format!("{e:#}"))),
        }
    }

    async fn list(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let limit = match req.into_inner().limit {
            0 => DEFAULT_LIST,
            n => n.min(MAX_LIST),
        } as usize;
        let core = self.node.core();
        let mut views: Vec<_> = core.jobs.keys().filter_map(|id| core.coord().job(id)).collect();
        views.sort_by_key(|v| std::cmp::Reverse((v.spec.submitted_at_ms, v.id)));
        let jobs = views
            .iter()
            .take(limit)
            .map(|v| {
                let mut s = convert::job_status(v);
                s.owner = core.jobs.get(&v.id).and_then(|m| m.owner).map(|o| o.to_hex()).unwrap_or_default();
                s
            })
            .collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_not_durable_count_as_running_and_hold_the_job_open() {
        let counts = pb::TaskCounts { total: 3, pending: 0, running: 0, verified: 2, inconclusive: 0, failed: 1 };
        let mut s = pb::JobStatus { state: pb::JobState::Failed as i32, tasks: Some(counts), ..Default::default() };
        as_running(&mut s, [TaskState::Verified, TaskState::Failed].into_iter());
        assert_eq!(s.tasks, Some(pb::TaskCounts { total: 3, pending: 0, running: 2, verified: 1, inconclusive: 0, failed: 0 }));
        assert_eq!(s.state, pb::JobState::Running as i32);

        let mut done = pb::JobStatus { state: pb::JobState::Completed as i32, tasks: Some(counts), ..Default::default() };
        as_running(&mut done, std::iter::empty());
        assert_eq!(done.state, pb::JobState::Completed as i32, "nothing in flight: the job's end stands");
    }
}
