//! Connections to other peers, one lazily connected gRPC channel per address, shared by every
//! request to that peer (HTTP/2 multiplexes them). Every one is TLS 1.3: this peer presents its
//! certificate, and the other's must carry the PeerId expected at that address (from its signed
//! advert or `--bootstrap ADDR@PEERID`; any peer's at an address not yet tied to one).

use std::time::Duration;

use dashmap::DashMap;
use rustls::pki_types::CertificateDer;
use spare_proto as pb;
use spare_protocol::PeerId;
use tonic::transport::{Channel, Endpoint};

use crate::wire::MAX_MESSAGE_BYTES;

/// How long dialing a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one peer-to-peer request may take, streams excepted.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most peers with an open channel; past it the map is cleared (channels reconnect lazily).
const MAX_CHANNELS: usize = 4096;

/// The channel pool.
pub struct Clients {
    channels: DashMap<String, Channel>,
    /// The PeerId expected at each address.
    expected: DashMap<String, PeerId>,
    /// This peer's certificate and PKCS#8 key, presented to every peer it dials.
    identity: (CertificateDer<'static>, Vec<u8>),
}

impl Clients {
    /// A pool that dials as the peer with this certificate and key.
    pub fn new(cert: CertificateDer<'static>, key: Vec<u8>) -> Clients {
        Clients { channels: DashMap::new(), expected: DashMap::new(), identity: (cert, key) }
    }

    /// Ties `addr` to `peer`: a channel there must meet that PeerId. A channel made for
    /// another is dropped.
    pub fn expect(&self, addr: &str, peer: PeerId) {
        if self.expected.get(addr).is_some_and(|p| *p == peer) {
            return;
        }
        if self.expected.len() >= MAX_CHANNELS {
            self.expected.clear();
        }
        self.expected.insert(addr.to_string(), peer);
        self.channels.remove(addr);
    }

    /// The channel to `addr` (`host:port`), made on first use.
    pub fn channel(&self, addr: &str) -> Option<Channel> {
        if let Some(c) = self.channels.get(addr) {
            return Some(c.clone());
        }
        if self.channels.len() >= MAX_CHANNELS {
            self.channels.clear();
        }
        let expected = self.expected.get(addr).map(|p| *p.as_bytes());
        let (config, _) = spare_sdk::tls::client_config(expected, Some(self.identity.clone()))
            .map_err(|e| tracing::error!("TLS client configuration: {e}"))
            .ok()?;
        // `http://` tells tonic not to do TLS itself: the connector does.
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).ok()?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .connect_with_connector_lazy(spare_sdk::tls::connector(std::sync::Arc::new(config)));
        self.channels.insert(addr.to_string(), channel.clone());
        Some(channel)
    }

    /// Forgets the channel to `addr` (after it failed), so the next use dials again.
    /// A mesh client of its own (not pooled) whose connection to `addr` is made from the local
    /// address `local`: a dial-back question asked from the address this peer advertises, so the
    /// asked peer dials that address back. `None` when `local` is not this machine's.
    pub fn mesh_from(&self, addr: &str, local: std::net::IpAddr) -> Option<pb::mesh_service_client::MeshServiceClient<Channel>> {
        // Binding a socket to an address this machine does not have fails at once.
        std::net::UdpSocket::bind((local, 0)).ok()?;
        let expected = self.expected.get(addr).map(|p| *p.as_bytes());
        let (config, _) = spare_sdk::tls::client_config(expected, Some(self.identity.clone())).ok()?;
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .connect_with_connector_lazy(spare_sdk::tls::connector_from(std::sync::Arc::new(config), Some(local)));
        Some(pb::mesh_service_client::MeshServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub fn forget(&self, addr: &str) {
        self.channels.remove(addr);
    }

    /// Dials `addr` afresh (no pooled channel) and completes a TLS handshake that must meet
    /// `expected`: a dial-back, proving that `expected` can be dialed there. Unbounded in time:
    /// the caller bounds it.
    pub async fn dial_back(&self, addr: std::net::SocketAddr, expected: PeerId) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let (config, _) = spare_sdk::tls::client_config(Some(*expected.as_bytes()), Some(self.identity.clone()))
            .map_err(|e| format!("TLS client configuration: {e}"))?;
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let name = rustls::pki_types::ServerName::try_from(spare_sdk::tls::SERVER_NAME).map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let _ = tls.shutdown().await;
        Ok(())
    }

    /// MeshService of the peer at `addr`.
    pub fn mesh(&self, addr: &str) -> Option<pb::mesh_service_client::MeshServiceClient<Channel>> {
        self.channel(addr).map(|c| {
            pb::mesh_service_client::MeshServiceClient::new(c)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        })
    }

    /// BlobService of the peer at `addr`.
    pub fn blobs(&self, addr: &str) -> Option<pb::blob_service_client::BlobServiceClient<Channel>> {
        self.channel(addr).map(|c| {
            pb::blob_service_client::BlobServiceClient::new(c)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        })
    }

    /// JobService of the peer at `addr`.
    pub fn jobs(&self, addr: &str) -> Option<pb::job_service_client::JobServiceClient<Channel>> {
        self.channel(addr).map(|c| {
            pb::job_service_client::JobServiceClient::new(c)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        })
    }
}
