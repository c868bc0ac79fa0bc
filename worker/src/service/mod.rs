//! The gRPC server of a peer: JobService, BlobService and PeerService of `spare.v1`, plus gRPC
//! health (`grpc.health.v1`) and server reflection, so `grpcurl -plaintext HOST:PORT list`
//! works.

mod auth;
mod blob;
pub mod conns;
mod gate;
pub mod listener;
mod job;
pub mod mesh;
pub mod metrics;
pub mod web;
mod peer;
mod replica;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use blob::{BlobApi, MAX_PUTS_AT_ONCE};
pub use job::{JobApi, status};
pub use peer::PeerApi;

use crate::node::Node;
use spare_proto as pb;

pub use crate::wire::MAX_MESSAGE_BYTES;
/// Requests served at once per connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Serves the API on `listener` until `shutdown` turns true.
pub async fn serve(node: Node, listener: TcpListener, mut shutdown: watch::Receiver<bool>) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::job_service_server::JobServiceServer<JobApi>>().await;
    health.set_serving::<pb::blob_service_server::BlobServiceServer<BlobApi>>().await;
    health.set_serving::<pb::peer_service_server::PeerServiceServer<PeerApi>>().await;
    health.set_serving::<pb::mesh_service_server::MeshServiceServer<mesh::MeshApi>>().await;
    // Both versions of reflection: v1alpha is all that Python's grpcio-reflection and older
    // grpcurl ask for.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| tracing::error!("reflection v1 disabled: {e}")).ok();
    let reflection_v1alpha =
        reflection().build_v1alpha().map_err(|e| tracing::error!("reflection v1alpha disabled: {e}")).ok();
    let jobs = pb::job_service_server::JobServiceServer::new(JobApi::new(node.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Submissions are counted before their message is decoded (`gate.rs`).
    let jobs = gate::SubmitGate::new(jobs, node.config().bounds.max_pending_submits);
    let blobs = pb::blob_service_server::BlobServiceServer::new(BlobApi::new(node.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let peers = pb::peer_service_server::PeerServiceServer::new(PeerApi::new(node.clone()));
    let tls = node.tls_server_config();
    let mesh = pb::mesh_service_server::MeshServiceServer::new(mesh::MeshApi::new(node))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Connections past their handshake are capped per source and in all, and closed when idle
    // (`conns.rs`); the pings keep live ones from ever looking idle, and close dead ones.
    let limits = conns::Limits::new(conns::raise_fd_limit());
    let incoming = conns::guard(listener::incoming(listener, tls), limits, |c: &listener::Conn| {
        tonic::transport::server::Connected::connect_info(c).remote.ip().to_canonical()
    });
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // Pings find connections whose other end vanished without closing them (a relay's
        // `Attach` streams to peers behind NAT stay open otherwise), keep NAT mappings alive,
        // and keep live connections from looking idle to `conns.rs`.
        .http2_keepalive_interval(Some(conns::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(conns::KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(jobs)
        .add_service(blobs)
        .add_service(peers)
        .add_service(mesh)
        // TLS, or plaintext from this machine (`listener.rs`).
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}
