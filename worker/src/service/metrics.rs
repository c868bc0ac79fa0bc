//! The Prometheus endpoint: `GET /metrics` on the address of `spare peer --metrics ADDR`, in
//! the Prometheus text format. Off unless asked for; plain HTTP/1.1.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::node::Node;

/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` and serves `/metrics` until shutdown; returns the bound address and the task.
pub async fn serve(node: Node, addr: SocketAddr) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let mut stop: watch::Receiver<bool> = node.shutdown_signal();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let node = node.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], node.scrape()).into_response() }
        }),
    );
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!("metrics server stopped: {e}");
        }
    });
    tracing::info!("serving Prometheus metrics on http://{bound}/metrics");
    Ok((bound, task))
}
