//! Bounds on the connections the gRPC port holds once they are past their handshake: at most
//! [`MAX_CONNECTIONS_PER_SOURCE`] from one address and [`MAX_CONNECTIONS`] in all (fewer when
//! the descriptor limit is low), past which new ones are closed at once; and a connection from
//! which nothing is read for [`IDLE_TIMEOUT`] is closed. Healthy ones are never idle that long:
//! the server pings every connection every [`KEEPALIVE_INTERVAL`] and the other side answers.
//! So held-open, half-open and silent connections cannot exhaust descriptors or memory.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

/// Connections held at once from one address (peers need a few each; clients one).
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 64;
/// Connections held at once in all, before the descriptor limit lowers it.
pub const MAX_CONNECTIONS: usize = 4096;
/// A connection from which nothing arrives for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the server pings each connection (HTTP/2 PING), which a live peer answers.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts of the connections held, in all and per source address.
#[derive(Debug)]
pub struct Limits {
    max_total: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Limits {
    /// Bounds for a process that may open `fd_limit` descriptors: connections take at most
    /// half of them (the store, blobs and outgoing links need the rest).
    pub fn new(fd_limit: u64) -> Arc<Limits> {
        let max_total = usize::try_from(fd_limit / 2).unwrap_or(usize::MAX).clamp(16, MAX_CONNECTIONS);
        Arc::new(Limits { max_total, held: Mutex::new((0, HashMap::new())) })
    }

    /// The most connections held at once.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// A place for a connection from `ip`, or `None` when its source or the port is full.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let from = held.1.get(&ip).copied().unwrap_or(0);
        if held.0 >= self.max_total || from >= MAX_CONNECTIONS_PER_SOURCE {
            return None;
        }
        held.0 += 1;
        held.1.insert(ip, from + 1);
        Some(Slot { limits: self.clone(), ip })
    }
}

/// A connection's place in [`Limits`], given back when the connection closes.
struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.limits.held.lock().unwrap_or_else(|p| p.into_inner());
        held.0 = held.0.saturating_sub(1);
        if let Some(n) = held.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.1.remove(&self.ip);
            }
        }
    }
}

/// A connection within the bounds, closed when idle.
pub struct Guarded<C> {
    inner: C,
    idle: Pin<Box<Sleep>>,
    _slot: Slot,
}

/// The connections of `incoming` that fit in `limits` (the others are closed), each closed
/// once idle. `source` says where a connection came from.
pub fn guard<C, E, S>(
    incoming: S,
    limits: Arc<Limits>,
    source: impl Fn(&C) -> IpAddr + Send + 'static,
) -> impl Stream<Item = Result<Guarded<C>, E>>
where
    S: Stream<Item = Result<C, E>>,
{
    incoming.filter_map(move |c| {
        let out = match c {
            Ok(conn) => {
                let ip = source(&conn);
                match limits.admit(ip) {
                    Some(slot) => Some(Ok(Guarded { inner: conn, idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)), _slot: slot })),
                    None => {
                        tracing::debug!(%ip, "connection refused: its source or the port holds as many as it may");
                        None
                    }
                }
            }
            Err(e) => Some(Err(e)),
        };
        std::future::ready(out)
    })
}

impl<C: Connected> Connected for Guarded<C> {
    type ConnectInfo = C::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Guarded<C> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.idle.as_mut().reset(Instant::now() + IDLE_TIMEOUT);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection closed"))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Guarded<C> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raises this process's soft limit of open descriptors to its hard limit (a peer holds a
/// descriptor per connection, blob and store file; the usual soft 1,024 runs out under load),
/// and returns the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed, on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_the_port_are_capped_and_closing_frees_a_place() {
        let limits = Limits::new(100); // 50 in all
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<Slot> = (0..MAX_CONNECTIONS_PER_SOURCE.min(50)).map_while(|_| limits.admit(a)).collect();
        assert_eq!(held.len(), 50, "one source fills the port up to the total");
        assert!(limits.admit("10.0.0.2".parse().unwrap()).is_none(), "the port is full");
        drop(held);
        let big = Limits::new(1 << 20);
        let held: Vec<Slot> = (0..MAX_CONNECTIONS_PER_SOURCE).map(|_| big.admit(a).expect("a place")).collect();
        assert!(big.admit(a).is_none(), "one source holds at most its share");
        assert!(big.admit("10.0.0.2".parse().unwrap()).is_some(), "another source still gets in");
        drop(held);
        assert!(big.admit(a).is_some(), "closing gives the places back");
        assert!(raise_fd_limit() >= 16);
    }
}
