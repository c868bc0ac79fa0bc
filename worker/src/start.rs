//! Starting a peer: open its node (store, sandbox, protocol state, loops) and serve gRPC on its
//! address; and stopping it. The `spare peer` command and the in-process tests both use it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::node::{Node, NodeConfig};

/// How long a shutdown lets requests in flight finish before cutting them.
const SERVER_GRACE: Duration = Duration::from_secs(2);
/// How long a shutdown lets the slots hand back what they hold before they are cut.
const HAND_BACK_GRACE: Duration = Duration::from_secs(2);
/// How long a shutdown waits for the reports and replication still queued to go out before it
/// leaves the mesh (then at most 1 s more for the leave notices).
const FLUSH_GRACE: Duration = Duration::from_secs(2);
/// How long a shutdown waits for requests in flight to let go of the peer.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Node {
    /// Opens the data directory, restores the jobs it holds, and starts serving.
    pub async fn start(config: NodeConfig) -> anyhow::Result<NodeHandle> {
        let (metrics, web) = (config.metrics, config.web);
        let (node, listener, loops) = Node::open(config).await?;
        let (leaving, mut tasks) = (loops.leaving, loops.others);
        let addr = listener.local_addr()?;
        let metrics_addr = match metrics {
            Some(at) => {
                let (bound, task) = crate::service::metrics::serve(node.clone(), at).await?;
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };
        let web_addr = match web {
            Some(at) => {
                let (bound, task) = crate::service::web::serve(node.clone(), at).await?;
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };
        let server = tokio::spawn(crate::service::serve(node.clone(), listener, node.shutdown_signal()));
        Ok(NodeHandle { node, addr, metrics_addr, web_addr, server, leaving, tasks })
    }
}

/// A started peer: its address, and how to stop it.
pub struct NodeHandle {
    /// The node itself, for in-process use.
    pub node: Node,
    /// The address gRPC is served on.
    pub addr: SocketAddr,
    /// The address Prometheus metrics are served on, if they are.
    pub metrics_addr: Option<SocketAddr>,
    /// The address the status page is served on, if it is.
    pub web_addr: Option<SocketAddr>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    /// Loops that end by themselves at shutdown, once they handed back and left.
    leaving: Vec<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NodeHandle {
    /// Stops serving and running, and waits for the server to close.
    pub async fn shutdown(self) {
        self.node.begin_shutdown();
        // The server stops taking requests at once and lets those in flight finish, but a
        // client following a job (Watch, Results) would keep it open for as long as the job
        // runs: past a short grace, such streams are cut.
        let mut server = self.server;
        let server_done = async {
            if tokio::time::timeout(SERVER_GRACE, &mut server).await.is_err() {
                server.abort();
                let _ = (&mut server).await;
            }
        };
        // Meanwhile the slots hand back unfinished replicas; past the grace they are cut.
        let mut leaving = self.leaving;
        let loops_done = async {
            let _ = tokio::time::timeout(HAND_BACK_GRACE, async {
                // Each popped once it ended: a finished handle must not be awaited again below.
                while let Some(t) = leaving.last_mut() {
                    let _ = t.await;
                    leaving.pop();
                }
            })
            .await;
        };
        tokio::join!(server_done, loops_done);
        for t in leaving.into_iter().chain(self.tasks) {
            t.abort();
            let _ = t.await;
        }
        // Report and replication batchers end when their queues close.
        // Leaving comes last: the other coordinators of this peer's jobs must hold what it did
        // (replicated, handed back) before they hear it is gone and take over, or its late
        // messages would meet them leading. The batchers hold the node until they are done.
        let flushed = Instant::now() + FLUSH_GRACE;
        while self.node.handles() > 1 && Instant::now() < flushed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.node.stops_cleanly() {
            self.node.leave_mesh().await;
        }
        // Streams still draining to clients hold the node; once they are gone, dropping the last
        // handle closes the store, so the data directory can be opened again at once.
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.node.handles() > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.node.handles() > 1 {
            tracing::warn!("peer stopped with requests still holding it; its store closes when they end");
        }
    }

    /// Stops as a killed process looks to the other peers: its replicas are not handed back and
    /// it does not leave the mesh (they find it dead by SWIM), though its store is closed
    /// cleanly. For in-process tests of restarts and takeovers.
    pub async fn crash(self) {
        self.node.set_crash();
        self.shutdown().await;
    }

    /// Resolves when the server stops, which it only does on its own when it fails.
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        (&mut self.server).await.context("server task")?.context("gRPC server")?;
        anyhow::bail!("the gRPC server stopped")
    }
}

