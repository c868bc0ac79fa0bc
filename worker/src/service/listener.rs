//! The peer's one port, for peers and clients alike: a connection whose first byte is a TLS
//! handshake record (0x16) is TLS 1.3 with the peer's certificate (a dialling peer presents its
//! own, which names its PeerId); any other is plaintext HTTP/2, taken only from this machine
//! (loopback). Handshakes are bounded in number and time. Each connection carries a
//! [`ConnInfo`] that the services read: where it came from, and which peer, if one, is on the
//! other end.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use spare_protocol::PeerId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

/// How long a connection may take to say what it is and finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in their handshake at once; past it new ones are closed.
const MAX_HANDSHAKES: usize = 256;
/// Connections ready for the server, not yet taken.
const READY_QUEUE: usize = 64;
/// Pause after a failed accept (descriptors exhausted), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// What the services know of a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    /// The address it came from.
    pub remote: SocketAddr,
    /// The PeerId its TLS certificate carries (`None`: plaintext, or a client without one).
    pub peer: Option<PeerId>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection.
pub struct Conn {
    io: Io,
    info: ConnInfo,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The connections `listener` accepts, told apart and (for TLS) handshaken with `config`,
/// until the server stops taking them.
pub fn incoming(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::debug!(%remote, "too many connections in their handshake; closed");
                continue;
            };
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                let ready = tokio::time::timeout(HANDSHAKE_TIMEOUT, classify(tcp, remote, &acceptor)).await;
                drop(permit);
                if let Ok(Some(conn)) = ready {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// TLS by its first byte, or plaintext from this machine; `None` closes the connection.
async fn classify(tcp: TcpStream, remote: SocketAddr, acceptor: &tokio_rustls::TlsAcceptor) -> Option<Conn> {
    // No Nagle: streams of small events would otherwise stall on delayed ACKs.
    let _ = tcp.set_nodelay(true);
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.ok()? == 0 {
        return None;
    }
    if first[0] == spare_sdk::tls::TLS_HANDSHAKE_BYTE {
        let tls = match acceptor.accept(tcp).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(%remote, "TLS handshake failed: {e}");
                return None;
            }
        };
        let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(spare_sdk::tls::peer_id_of).map(PeerId);
        return Some(Conn { io: Io::Tls(Box::new(tls)), info: ConnInfo { remote, peer } });
    }
    if remote.ip().to_canonical().is_loopback() {
        return Some(Conn { io: Io::Plain(tcp), info: ConnInfo { remote, peer: None } });
    }
    tracing::debug!(%remote, "plaintext refused: off this machine, only TLS is taken");
    None
}

/// Where a request came from.
pub fn remote_of<T>(req: &Request<T>) -> Option<SocketAddr> {
    req.extensions().get::<ConnInfo>().map(|c| c.remote)
}

/// The peer whose certificate the request's TLS link presented, if any.
pub fn link_peer<T>(req: &Request<T>) -> Option<PeerId> {
    req.extensions().get::<ConnInfo>().and_then(|c| c.peer)
}

/// Refuses a mesh call that did not come over TLS from the peer that signed it (`sender`).
pub fn require_peer<T>(req: &Request<T>, sender: &PeerId) -> Result<(), Status> {
    match req.extensions().get::<ConnInfo>().and_then(|c| c.peer) {
        Some(p) if p == *sender => Ok(()),
        Some(p) => Err(Status::unauthenticated(format!(
            "this connection is peer {}'s, and the request is signed by {}",
            p.short(),
            sender.short()
        ))),
        None => Err(Status::unauthenticated(
            "mesh calls are taken only over TLS from the peer that signs them, presenting its certificate",
        )),
    }
}
