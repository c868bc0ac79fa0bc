//! Shared helpers of Spare's integration tests: start peers in this process, load the example
//! guests, wait on conditions with a deadline.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spare_worker::{Node, NodeConfig, NodeHandle};

/// How long any condition in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A built example guest, `examples/wasm/<name>.wasm`.
pub fn guest(name: &str) -> Vec<u8> {
    let path = root().join("examples/wasm").join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A peer config on a free loopback port with `slots` slots and data in `dir`.
pub fn config(dir: &Path, slots: usize) -> NodeConfig {
    let mut c = NodeConfig::new("127.0.0.1:0".parse().expect("literal address"), dir.to_path_buf());
    c.cpus = slots;
    c
}

/// Starts a peer on `dir`.
pub async fn start(dir: &Path, slots: usize) -> NodeHandle {
    Node::start(config(dir, slots)).await.expect("peer starts")
}

/// A client of the peer.
pub async fn client(handle: &NodeHandle) -> spare_sdk::Client {
    spare_sdk::Client::connect(handle.addr.to_string()).await.expect("client connects")
}

/// Polls `check` until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `fut` with the test deadline.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}
