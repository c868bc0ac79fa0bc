//! Connections to other peers, one lazily connected gRPC channel per address, shared by every
//! request to that peer (HTTP/2 multiplexes them).

use std::time::Duration;

use dashmap::DashMap;
use spare_proto as pb;
use tonic::transport::{Channel, Endpoint};

use crate::wire::MAX_MESSAGE_BYTES;

/// How long dialing a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one peer-to-peer request may take, streams excepted.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most peers with an open channel; past it the map is cleared (channels reconnect lazily).
const MAX_CHANNELS: usize = 4096;

/// The channel pool.
#[derive(Default)]
pub struct Clients {
    channels: DashMap<String, Channel>,
}

impl Clients {
    /// The channel to `addr` (`host:port`), made on first use.
    pub fn channel(&self, addr: &str) -> Option<Channel> {
        if let Some(c) = self.channels.get(addr) {
            return Some(c.clone());
        }
        if self.channels.len() >= MAX_CHANNELS {
            self.channels.clear();
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).ok()?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .connect_lazy();
        self.channels.insert(addr.to_string(), channel.clone());
        Some(channel)
    }

    /// Forgets the channel to `addr` (after it failed), so the next use dials again.
    pub fn forget(&self, addr: &str) {
        self.channels.remove(addr);
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
