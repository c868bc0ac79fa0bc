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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A JobService stand-in whose answers wait for `release`, counting the requests that reach
    /// it (where the real one would decode them).
    #[derive(Clone)]
    struct Held {
        calls: Arc<AtomicUsize>,
        release: Arc<Semaphore>,
    }

    impl NamedService for Held {
        const NAME: &'static str = "spare.v1.JobService";
    }

    impl Service<http::Request<Body>> for Held {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Infallible>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let release = self.release.clone();
            Box::pin(async move {
                let _ = release.acquire().await.map(|p| p.forget());
                Ok(http::Response::new(Body::default()))
            })
        }
    }

    fn request(method: &str) -> http::Request<Body> {
        http::Request::builder().uri(format!("http://peer/spare.v1.JobService/{method}")).body(Body::default()).expect("a request")
    }

    /// Finding 10: past the bound a submission is refused before it reaches the service that
    /// would decode its message; other methods pass; a finished submission makes room.
    #[tokio::test]
    async fn submissions_past_the_bound_are_refused_unread() {
        let inner = Held { calls: Default::default(), release: Arc::new(Semaphore::new(0)) };
        let mut gate = SubmitGate::new(inner.clone(), 1);
        let first = tokio::spawn(gate.call(request("Submit")));
        let refused = gate.call(request("Submit")).await.expect("an answer");
        let status = tonic::Status::from_header_map(refused.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("1 submissions"), "{}", status.message());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1, "the refused one was never read");
        let other = tokio::spawn(gate.call(request("Get")));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2, "other methods are not counted");
        inner.release.add_permits(2);
        first.await.expect("joined").expect("answered");
        other.await.expect("joined").expect("answered");
        let again = tokio::spawn(gate.call(request("Submit")));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3, "room once the first was answered");
        inner.release.add_permits(1);
        again.await.expect("joined").expect("answered");
    }
}
