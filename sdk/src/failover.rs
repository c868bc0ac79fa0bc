//! Following a job across the loss of a peer. A job has several coordinators (its status lists
//! their addresses); when the peer a [`Client`] follows a job through stops answering,
//! [`Client::wait`] and [`Client::results`] carry on at another coordinator by themselves.

use std::collections::VecDeque;

use futures::{Stream, StreamExt};

use crate::{Client, Error, JobId, JobStatus, Result};

/// Whether an error means the peer is gone (rather than that the request was wrong).
pub fn is_unreachable(e: &Error) -> bool {
    match e {
        Error::Connect { .. } => true,
        Error::Status(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        // A watch stream that ended before the job did.
        Error::Protocol(_) => true,
        _ => false,
    }
}

/// Where to go next when the current peer is lost.
struct Fallbacks {
    tried: Vec<String>,
    next: VecDeque<String>,
}

impl Fallbacks {
    fn learn(&mut self, status: &JobStatus) {
        for addr in &status.coordinators {
            if !self.tried.contains(addr) && !self.next.contains(addr) {
                self.next.push_back(addr.clone());
            }
        }
    }

    /// A client of the next coordinator that answers for the job.
    async fn next_client(&mut self, job: &JobId) -> Option<Client> {
        while let Some(addr) = self.next.pop_front() {
            self.tried.push(addr.clone());
            let Ok(client) = Client::connect(addr).await else { continue };
            if let Ok(status) = client.status(job).await {
                self.learn(&status);
                return Some(client.with_known(known_of(&status)));
            }
        }
        None
    }
}

fn known_of(status: &JobStatus) -> (String, Vec<String>) {
    (status.job_id.to_string(), status.coordinators.clone())
}

impl Client {
    fn with_known(self, (job, coordinators): (String, Vec<String>)) -> Client {
        if let Ok(mut k) = self.known.lock() {
            k.insert(job, coordinators);
        }
        self
    }

    async fn fallbacks(&self, job: &JobId) -> Fallbacks {
        let mut f = Fallbacks { tried: vec![self.addr().to_string()], next: VecDeque::new() };
        if let Ok(status) = self.status(job).await {
            f.learn(&status);
        }
        // What earlier statuses said, in case this peer is already gone.
        let known = self.known.lock().ok().and_then(|k| k.get(job.as_str()).cloned()).unwrap_or_default();
        for addr in known {
            if !f.tried.contains(&addr) && !f.next.contains(&addr) {
                f.next.push_back(addr);
            }
        }
        f
    }

    /// Waits until the job ends (completed, failed or cancelled) and returns its final status.
    ///
    /// Follows [`watch`](Self::watch). If this peer stops answering, carries on at another of the
    /// job's coordinators.
    ///
    /// # Errors
    /// The last error when no coordinator of the job answers, or any error that is not about a
    /// lost peer.
    pub async fn wait(&self, job: &JobId) -> Result<JobStatus> {
        let mut fallbacks = self.fallbacks(job).await;
        let mut client = self.clone();
        loop {
            match client.wait_here(job).await {
                Ok(status) => return Ok(status),
                Err(e) if is_unreachable(&e) => match fallbacks.next_client(job).await {
                    Some(next) => client = next,
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// Verified results in task order, waiting for tasks not yet final; ends when the job ends.
    /// If this peer stops answering, the stream carries on at another of the job's coordinators
    /// from the next task.
    pub async fn results(&self, job: &JobId) -> Result<impl Stream<Item = Result<crate::TaskResult>> + Send + Unpin + 'static> {
        let mut fallbacks = self.fallbacks(job).await;
        let mut client = self.clone();
        let first = loop {
            match client.results_from(job, 0).await {
                Ok(s) => break s.boxed(),
                Err(e) if is_unreachable(&e) => match fallbacks.next_client(job).await {
                    Some(c) => client = c,
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            }
        };
        let state = (Some(first), client, fallbacks, job.clone(), 0u32);
        Ok(Box::pin(futures::stream::unfold(state, |(mut stream, mut client, mut fallbacks, job, mut next)| async move {
            loop {
                let current = match stream.as_mut() {
                    Some(s) => s,
                    None => return None,
                };
                match current.next().await {
                    Some(Ok(r)) => {
                        next = r.index + 1;
                        return Some((Ok(r), (stream, client, fallbacks, job, next)));
                    }
                    None => return None,
                    Some(Err(e)) if is_unreachable(&e) => {
                        let resumed = match fallbacks.next_client(&job).await {
                            Some(c) => {
                                client = c;
                                client.results_from(&job, next).await.map(|s| s.boxed())
                            }
                            None => Err(e),
                        };
                        match resumed {
                            Ok(s) => stream = Some(s),
                            Err(e) => return Some((Err(e), (None, client, fallbacks, job, next))),
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (None, client, fallbacks, job, next))),
                }
            }
        })))
    }
}
