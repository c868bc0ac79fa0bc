//! Bounds the `Submit` requests being received at once, before their messages (up to
//! `MAX_MESSAGE_BYTES` each) are decoded: tonic caps the size of one message, not how many are
//! decoded together, and 32 concurrent 60 MiB submissions held 3.6 GB (finding 10). Past the
//! bound a submission is refused at once with `RESOURCE_EXHAUSTED`, its body never read.

use std::convert::Infallible;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::NamedService;

/// A service whose `Submit` calls take a permit before their request is decoded, and hold it
/// until the answer is ready.
#[derive(Clone)]
pub struct SubmitGate<S> {
    inner: S,
    permits: Arc<Semaphore>,
    max: usize,
    path: String,
}

impl<S: NamedService> SubmitGate<S> {
    /// `inner` (the JobService) with at most `max` submissions received and checked at once.
    pub fn new(inner: S, max: usize) -> Self {
        let max = max.max(1);
        SubmitGate { inner, permits: Arc::new(Semaphore::new(max)), max, path: format!("/{}/Submit", S::NAME) }
    }
}

impl<S: NamedService> NamedService for SubmitGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for SubmitGate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != self.path {
            return Box::pin(self.inner.call(req));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let status = tonic::Status::resource_exhausted(format!(
                "this peer is already receiving or checking {} submissions; try again shortly",
                self.max
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let answer = self.inner.call(req);
        Box::pin(async move {
            let answer = answer.await;
            drop(permit);
            answer
        })
    }
}
