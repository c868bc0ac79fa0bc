//! Shared helpers of Spare's integration tests: start peers in this process, load the example
//! guests, wait on conditions with a deadline.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spare_peer::{Node, NodeConfig, NodeHandle};

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

/// The client key every [`client`] of this test process signs with (one owner for all of them,
/// as one user's `spare` commands share one key; kept in memory, not in the user's files).
pub fn test_key() -> spare_sdk::ClientIdentity {
    static KEY: std::sync::OnceLock<spare_sdk::ClientIdentity> = std::sync::OnceLock::new();
    KEY.get_or_init(|| spare_sdk::ClientIdentity::generate().expect("a client key")).clone()
}

/// A client of the peer, signing with [`test_key`].
pub async fn client(handle: &NodeHandle) -> spare_sdk::Client {
    spare_sdk::Client::connect(handle.addr.to_string()).await.expect("client connects").with_identity(test_key())
}

/// A `MeshService` client of the peer at `addr`, over TLS as the peer `as_peer` (which is how
/// every mesh call must come), checking the other end is `expected` when given.
pub async fn mesh_client(
    addr: std::net::SocketAddr,
    as_peer: &spare_peer::identity::Identity,
    expected: Option<spare_protocol::PeerId>,
) -> Result<spare_proto::mesh_service_client::MeshServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
    let (cert, key) = as_peer.tls_certificate().expect("a certificate");
    let (config, _) = spare_sdk::tls::client_config(expected.map(|p| p.0), Some((cert, key))).expect("a TLS configuration");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("an endpoint")
        .connect_with_connector(spare_sdk::tls::connector(std::sync::Arc::new(config)))
        .await?;
    Ok(spare_proto::mesh_service_client::MeshServiceClient::new(channel))
}

/// Polls `check` until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(what, || {
        let fut = check();
        async move { fut.await.ok_or(None) }
    })
    .await
}

/// Polls `check` until it returns `Ok`, failing the test after [`DEADLINE`] with what the last
/// `Err` said (why the condition did not hold yet).
pub async fn eventually_or<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    poll_until(what, || {
        let fut = check();
        async move { fut.await.map_err(Some) }
    })
    .await
}

/// The one polling loop: `check` every 20 ms until `Ok`, failing after [`DEADLINE`] with the
/// last reason given, if any.
async fn poll_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Option<String>>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) if start.elapsed() >= DEADLINE => match why {
                Some(why) => panic!("timed out waiting for {what}: {why}"),
                None => panic!("timed out waiting for {what}"),
            },
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `fut` with the test deadline.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------------------------------------
// Meshes of in-process peers.

pub use spare_peer::node::Chaos;

/// One peer of a mesh to start: its slots, and how it misbehaves (if it does).
#[derive(Clone, Copy, Debug)]
pub struct PeerSpec {
    /// Task slots (`NodeConfig::cpus`).
    pub cpus: usize,
    /// Misbehaviour, or `None` for an honest peer.
    pub chaos: Option<Chaos>,
}

impl PeerSpec {
    /// An honest peer with `cpus` slots.
    pub fn honest(cpus: usize) -> PeerSpec {
        PeerSpec { cpus, chaos: None }
    }

    /// A peer with `cpus` slots that misbehaves as `chaos` says.
    pub fn chaotic(cpus: usize, chaos: Chaos) -> PeerSpec {
        PeerSpec { cpus, chaos: Some(chaos) }
    }
}

/// `n` honest peers with `cpus` slots each.
pub fn honest_peers(n: usize, cpus: usize) -> Vec<PeerSpec> {
    vec![PeerSpec::honest(cpus); n]
}

/// Starts one peer per spec, each on a free loopback port with data in `dir/peer-<i>`: the
/// first alone, every other with `bootstrap = [first.addr]`. Waits (with [`DEADLINE`]) until
/// every peer sees all the others alive, and returns them in spec order.
pub async fn start_mesh(dir: &Path, specs: &[PeerSpec]) -> Vec<NodeHandle> {
    assert!(!specs.is_empty(), "a mesh needs at least one peer");
    log_if_asked();
    let mut peers: Vec<NodeHandle> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let mut c = config(&dir.join(format!("peer-{i}")), spec.cpus);
        c.chaos = spec.chaos;
        if let Some(first) = peers.first() {
            c.bootstrap = vec![first.addr.to_string()];
        }
        peers.push(Node::start(c).await.unwrap_or_else(|e| panic!("peer {i} starts: {e:#}")));
    }
    wait_until_joined(&peers).await;
    peers
}

/// Logs the peers' tracing events to the test's output when `RUST_LOG` is set (e.g.
/// `RUST_LOG=spare_peer=debug`), to see what a failing test's peers did; silent otherwise.
pub fn log_if_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        // Another test of this binary may have installed it already.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Whether `node` sees every peer of `ids` other than itself as alive.
pub fn sees_alive(node: &Node, ids: &[spare_protocol::PeerId]) -> bool {
    let me = node.peer_id();
    let view = node.peers();
    ids.iter().filter(|id| **id != me).all(|id| {
        view.iter().any(|v| v.peer == *id && v.state == spare_protocol::membership::MemberState::Alive)
    })
}

/// Waits (with [`DEADLINE`]) until every peer sees the other `peers.len() - 1` as alive.
pub async fn wait_until_joined(peers: &[NodeHandle]) {
    let ids: Vec<_> = peers.iter().map(|p| p.node.peer_id()).collect();
    eventually("every peer to see all the others alive", || {
        let done = peers.iter().all(|p| sees_alive(&p.node, &ids));
        async move { done.then_some(()) }
    })
    .await;
}

/// Stops every peer (all at once) and waits for them to close.
pub async fn stop_all(peers: Vec<NodeHandle>) {
    futures::future::join_all(peers.into_iter().map(NodeHandle::shutdown)).await;
}

/// The output the primes guest gives for numbers in `lo..hi`, computed natively.
pub fn primes_output(lo: u64, hi: u64) -> Vec<u8> {
    format!("{}\n", spare_example_primes::count_primes(lo, hi)).into_bytes()
}
