//! The hostile-network suite: two real `spare peer` processes, A (attacked) and B, and an
//! attacker in this process hitting A's port from addresses of its own (127.0.0.9 and up) with
//! garbage bytes, held-open and half-open TLS and HTTP/2 connections, slow senders, oversized
//! frames and messages, thousands of concurrent streams, a flood of uploads and of submits, and
//! a flood of adverts signed by fresh keys. Throughout, a sampler reads A's resident memory and
//! open descriptors from /proc and the test asserts their peaks stay under explicit bounds; after
//! each attack a normal quorum-2 job still completes on A and B, and once the attacker lets go,
//! A's descriptors come back to where they were. A starts with a soft limit of open files
//! below its hard one, and must have raised it.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use spare_peer::identity::Identity;
use spare_proto as pb;
use spare_protocol::records::{Advert, Record};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Most resident memory A may reach at any point of the suite.
const RSS_BOUND: u64 = 400 << 20;
/// Most descriptors A may hold at any point: its own (store, blobs, links: under 100), the
/// connections in their handshake (256), those admitted from one attacker address (64) each for
/// the few addresses used at once, and the uploads taken at once (64).
const FD_BOUND: u64 = 600;
/// Once the attacker lets go, A's descriptors come back to within this many of the baseline.
const FD_SETTLED: u64 = 24;
/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty HTTP/2 SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Resident bytes and open descriptors of process `pid`, from /proc.
fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    (rss_kib << 10, fds)
}

/// The soft and hard limits of open files of process `pid`, from /proc.
fn fd_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default().to_string();
    let mut fields = line.trim_start_matches("Max open files").split_whitespace();
    (fields.next().unwrap_or_default().to_string(), fields.next().unwrap_or_default().to_string())
}

/// Lowers this process's soft limit of open files to 1,024 (or less, under a lower hard limit).
fn lower_soft_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed, on this stack.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max.min(1024);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// Samples A's usage every 20 ms on a thread, keeping the peaks.
struct Sampler {
    rss: Arc<AtomicU64>,
    fds: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let (rss, fds, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let (r, f, s) = (rss.clone(), fds.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (rss, fds) = usage(pid);
                r.fetch_max(rss, Ordering::Relaxed);
                f.fetch_max(fds, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler { rss, fds, stop }
    }

    /// Asserts the peaks so far are within the bounds, and says what they were.
    fn check(&self, attack: &str) {
        let (rss, fds) = (self.rss.load(Ordering::Relaxed), self.fds.load(Ordering::Relaxed));
        eprintln!("{attack}: peak {} MiB resident, {fds} descriptors", rss >> 20);
        assert!(rss <= RSS_BOUND, "{attack}: A reached {} MiB resident (bound {} MiB)", rss >> 20, RSS_BOUND >> 20);
        assert!(fds <= FD_BOUND, "{attack}: A held {fds} descriptors (bound {FD_BOUND})");
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A TCP connection to `to` from the attacker address `from`.
async fn dial(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// Whether the other end closed `s` (EOF or reset) within `limit`, reading whatever it sends.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Pseudo-random bytes (xorshift), so the garbage differs per connection.
fn garbage(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Submits a quorum-2 job of `tasks` primes ranges at `a` and waits until every task is verified
/// by both peers.
fn normal_job(a: &Peer, dir: &Path, name: &str, tasks: u64) {
    let inputs = dir.join(name);
    primes_inputs(&inputs, tasks, 5_000);
    let out = a.spare(&["submit", primes_wasm().to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "2", "--json"]);
    let job = json_of("submit", &out)["job_id"].as_str().expect("job_id").to_string();
    eventually(&format!("the normal job after {name} to complete"), || {
        let s = a.status(&job)?;
        if verified_count(&s) == tasks { Ok(()) } else { Err(format!("{}", s["tasks"])) }
    });
}

/// A job that never ends (quorum 3 on two peers), for streams to watch.
fn waiting_job(a: &Peer, dir: &Path) -> String {
    let inputs = dir.join("waiting");
    primes_inputs(&inputs, 1, 100);
    let out = a.spare(&["submit", primes_wasm().to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "3", "--json"]);
    json_of("submit", &out)["job_id"].as_str().expect("job_id").to_string()
}

/// Waits until A's descriptors are back within [`FD_SETTLED`] of `baseline`.
fn settles(a: &Peer, baseline: u64, after: &str) {
    eventually(&format!("A's descriptors to come back after {after}"), || {
        let (_, fds) = usage(a.pid());
        if fds <= baseline + FD_SETTLED { Ok(()) } else { Err(format!("{fds} descriptors, baseline {baseline}")) }
    });
}

/// Garbage on the port, plaintext and as a TLS record: every connection is closed by the peer.
async fn attack_garbage(to: SocketAddr) {
    let conns = (0..100u64).map(|i| async move {
        let mut s = dial(ip("127.0.0.9"), to).await.expect("dial");
        let mut bytes = garbage(i + 1, 64 << 10);
        bytes[0] = if i % 2 == 0 { 0x16 } else { 0x42 };
        let _ = s.write_all(&bytes).await;
        closed_within(&mut s, Duration::from_secs(15)).await
    });
    let closed = futures::future::join_all(conns).await;
    assert!(closed.iter().all(|c| *c), "the peer closes every connection that sends garbage");
}

/// Connections held open: silent TCP, a TLS handshake begun and never finished, an HTTP/2
/// preface and SETTINGS then silence (never answering pings), and slow senders trickling the
/// preface a byte at a time. Returns once the peer has closed every one.
async fn attack_held_open(to: SocketAddr) {
    let mut held = Vec::new();
    for i in 0..300 {
        if let Ok(s) = dial(ip("127.0.0.10"), to).await {
            held.push((i, s));
        }
    }
    for (i, s) in held.iter_mut() {
        let _ = match *i % 3 {
            0 => Ok(()),
            1 => s.write_all(&[0x16, 0x03, 0x01]).await,
            _ => s.write_all(&[PREFACE, SETTINGS].concat()).await,
        };
    }
    let slow = (0..40).map(|_| async move {
        let Ok(mut s) = dial(ip("127.0.0.11"), to).await else { return true };
        let bytes = [PREFACE, SETTINGS].concat();
        for b in bytes.iter().cycle().take(400) {
            if s.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        closed_within(&mut s, Duration::from_secs(5)).await
    });
    let holders = held.into_iter().map(|(_, mut s)| async move { closed_within(&mut s, Duration::from_secs(45)).await });
    let (slow, holders) = tokio::join!(futures::future::join_all(slow), futures::future::join_all(holders));
    assert!(holders.iter().all(|c| *c), "the peer closes held-open connections");
    assert!(slow.iter().all(|c| *c), "the peer cuts slow senders off before they finish");
}

/// Oversized frames and messages: an HTTP/2 frame past the frame size, and a gRPC message past
/// 64 MiB.
async fn attack_oversized(to: SocketAddr) {
    let mut s = dial(ip("127.0.0.12"), to).await.expect("dial");
    // A DATA frame header announcing 16 MiB - 1 on stream 1, then bytes.
    let header = [0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1];
    s.write_all(&[PREFACE, SETTINGS, &header, &garbage(7, 1 << 16)].concat()).await.expect("write");
    assert!(closed_within(&mut s, Duration::from_secs(15)).await, "an oversized frame closes the connection");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}")).unwrap().local_address(Some(ip("127.0.0.12"))).connect().await.expect("connect");
    let mut blobs = pb::blob_service_client::BlobServiceClient::new(channel).max_encoding_message_size(usize::MAX);
    let big = pb::PutBlobRequest { expected_id: String::new(), chunk: vec![0u8; (64 << 20) + 1024] };
    let e = blobs.put(tokio_stream::iter(vec![big])).await.expect_err("a message past 64 MiB");
    assert!(matches!(e.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal), "{e:?}");
}

/// Thousands of concurrent streams: 2,000 `Watch` streams on a job that never ends, over 8
/// connections, each getting its first event; and 300 uploads held open at once, of which the
/// peer takes at most its bound and drops the stalled ones.
async fn attack_streams(to: SocketAddr, job: String) {
    let mut watches = Vec::new();
    for c in 0..8 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}")).unwrap().local_address(Some(ip("127.0.0.13"))).connect().await.expect("connect");
        for _ in 0..250 {
            let mut jobs = pb::job_service_client::JobServiceClient::new(channel.clone());
            let job = job.clone();
            watches.push(tokio::spawn(async move {
                let mut s = jobs.watch(pb::WatchRequest { job_id: job }).await.ok()?.into_inner();
                let first = s.message().await.ok()??;
                Some((first, s))
            }));
        }
        let _ = c;
    }
    let mut open = Vec::new();
    for w in watches {
        if let Ok(Some(s)) = w.await {
            open.push(s);
        }
    }
    assert_eq!(open.len(), 2000, "every watch stream is served");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}")).unwrap().local_address(Some(ip("127.0.0.14"))).connect().await.expect("connect");
    let puts = (0..300).map(|_| {
        let mut blobs = pb::blob_service_client::BlobServiceClient::new(channel.clone());
        async move { blobs.put(futures::stream::pending::<pb::PutBlobRequest>()).await.map(|_| ()).map_err(|e| e.code()) }
    });
    let answers = tokio::time::timeout(Duration::from_secs(40), futures::future::join_all(puts)).await.expect("every upload is answered");
    let refused = answers.iter().filter(|a| **a == Err(tonic::Code::ResourceExhausted)).count();
    let dropped = answers.iter().filter(|a| **a == Err(tonic::Code::DeadlineExceeded)).count();
    assert_eq!(refused + dropped, 300, "{answers:?}");
    assert!(dropped <= spare_peer::service::MAX_PUTS_AT_ONCE, "at most {} uploads held at once, {dropped} were", spare_peer::service::MAX_PUTS_AT_ONCE);
    drop(open);
}

/// A flood of submits: 200 at once, signed by 4 keys; each is taken or refused as too many.
async fn attack_submits(to: SocketAddr, receiver: [u8; 32]) {
    let client = spare_sdk::Client::connect(to.to_string()).await.expect("connect");
    let module = client.upload_blob(std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wasm/sha256.wasm")).unwrap()).await.expect("upload");
    let keys: Vec<_> = (0..4).map(|_| spare_sdk::ClientIdentity::generate().unwrap()).collect();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}")).unwrap().local_address(Some(ip("127.0.0.15"))).connect().await.expect("connect");
    let submits = (0..200).map(|i| {
        let mut jobs = pb::job_service_client::JobServiceClient::new(channel.clone());
        let mut req = pb::SubmitRequest {
            module_id: module.clone(),
            tasks: vec![pb::TaskInput { source: Some(pb::task_input::Source::Inline(format!("1\nflood {i}").into_bytes())) }],
            policy: Some(pb::Policy { quorum: 1, ..Default::default() }),
            ..Default::default()
        };
        keys[i % keys.len()].sign_submit(&mut req, &receiver).expect("sign");
        async move { jobs.submit(req).await.map(|_| ()).map_err(|e| e.code()) }
    });
    let answers = futures::future::join_all(submits).await;
    let odd: Vec<_> = answers.iter().filter(|a| !matches!(a, Ok(()) | Err(tonic::Code::ResourceExhausted))).collect();
    assert!(odd.is_empty(), "a submit is taken or refused as too many: {odd:?}");
}

/// A flood of adverts signed by 5,120 fresh keys, sent by 20 fresh peers over TLS.
async fn attack_adverts(to: SocketAddr) {
    for sender in 0..20 {
        let me = Identity::generate().expect("a key");
        let records: Vec<Vec<u8>> = (0..256)
            .map(|i| {
                let key = Identity::generate().expect("a key");
                let mut r = Record::Advert(Advert {
                    peer: key.peer_id(),
                    seq: 1,
                    addr: format!("10.9.{sender}.{i}:7070"),
                    cpus_total: 64,
                    cpus_free: 64,
                    memory_bytes: 1 << 40,
                    version: "0.0.0".into(),
                    reachable: true,
                    relays: Vec::new(),
                    signature: Vec::new(),
                    epoch: 0,
                });
                let signer: spare_protocol::records::Signer = Arc::new(move |b: &[u8]| key.sign(b).to_vec());
                r.sign(&signer);
                r.encode()
            })
            .collect();
        // Tag 1: a list of records sent directly.
        let data = [&[1u8][..], &postcard::to_stdvec(&records).expect("encode")].concat();
        let (cert, key) = me.tls_certificate().expect("a certificate");
        let (config, _) = spare_sdk::tls::client_config(None, Some((cert, key))).expect("TLS config");
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}"))
            .unwrap()
            .local_address(Some(ip("127.0.0.16")))
            .connect_with_connector(spare_sdk::tls::connector(Arc::new(config)))
            .await
            .expect("TLS to A");
        let mut mesh = pb::mesh_service_client::MeshServiceClient::new(channel);
        // Taken or refused (rate, malformed): either way the peer serves on.
        let _ = mesh.gossip(pb::GossipRequest { data, ..Default::default() }).await;
    }
}

#[test]
fn a_peer_under_attack_keeps_serving_within_its_bounds() {
    let tmp = scratch();
    // The peers inherit this process's limits: a soft limit of open files below the hard one,
    // as on most machines (1,024), which A must raise.
    lower_soft_fd_limit();
    let a = Peer::start(PeerSpec::new(&tmp.path().join("a"), "127.0.0.1:0").cpus(2));
    let b = Peer::start(PeerSpec::new(&tmp.path().join("b"), "127.0.0.2:0").cpus(2).bootstrap(&a.addr));
    wait_for_mesh(&[&a, &b]);
    normal_job(&a, tmp.path(), "warm-up", 4);
    // A peer raises its soft limit of open files to the hard one as it starts.
    let (soft, hard) = fd_limits(a.pid());
    assert!(!soft.is_empty() && soft == hard, "A's open-file limits: soft {soft}, hard {hard}");
    let (_, baseline) = usage(a.pid());
    let sampler = Sampler::start(a.pid());
    let to: SocketAddr = a.addr.parse().expect("A's address");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let receiver: [u8; 32] = hex::decode(&a.peer_id).expect("hex").try_into().expect("32 bytes");

    rt.block_on(attack_garbage(to));
    sampler.check("garbage");
    normal_job(&a, tmp.path(), "garbage", 4);

    rt.block_on(attack_oversized(to));
    sampler.check("oversized frames and messages");
    normal_job(&a, tmp.path(), "oversized", 4);

    // Held-open connections and slow senders take the longest: a job runs meanwhile.
    let held = rt.spawn(attack_held_open(to));
    normal_job(&a, tmp.path(), "held-open", 4);
    rt.block_on(held).expect("the held-open attack ran");
    sampler.check("held-open, half-open and slow connections");
    settles(&a, baseline, "held-open connections");

    let waiting = waiting_job(&a, tmp.path());
    let streams = rt.spawn(attack_streams(to, waiting));
    normal_job(&a, tmp.path(), "streams", 4);
    rt.block_on(streams).expect("the stream attack ran");
    sampler.check("thousands of streams and held uploads");

    rt.block_on(attack_submits(to, receiver));
    sampler.check("a flood of submits");
    normal_job(&a, tmp.path(), "submits", 4);

    rt.block_on(attack_adverts(to));
    sampler.check("a flood of fresh-key adverts");
    normal_job(&a, tmp.path(), "adverts", 4);
    wait_for_mesh(&[&a, &b]);
    settles(&a, baseline, "the whole suite");
}
