//! A mesh of real `spare peer` processes, one per network namespace, split in two by a network
//! partition in the middle of a quorum-2 job and then healed.
//!
//! The namespaces are this test's own: a hub namespace holds two bridges (left and right) joined
//! by a veth pair, the trunk; each peer's namespace is joined to one bridge by a veth pair and
//! has an address in 10.77.0.0/24. Nothing is added to the machine's own namespace, so the test's
//! traffic never leaves the namespaces it made. Taking the trunk down splits the mesh into a left
//! side (the origin and one more peer) and a right side (two peers), each big enough for quorum 2;
//! bringing it up heals it.
//!
//! Needs root and iproute2 (`ip`); fails, naming what is missing, without them. The same
//! namespaces show that peers take no plaintext from another machine and send none to each
//! other (a packet capture; curl and tcpdump are installed with apt when missing).

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use support::*;

/// Peers per side of the cut.
const LEFT: usize = 2;
const RIGHT: usize = 2;
/// The port every peer listens on, each on its own address.
const PORT: u16 = 7070;

/// Runs `ip ARGS`; `Err` with what it said when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// `ip ARGS`, failing the test if it fails.
fn must_ip(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// The namespaces of one test run; deleted when dropped, also when the test panics.
struct Net {
    hub: String,
    /// One namespace per peer, left side first.
    peers: Vec<String>,
}

impl Net {
    /// Makes the hub with its two bridges and the trunk between them, and one namespace per peer
    /// (`LEFT` on the left bridge, `RIGHT` on the right one), the n-th at 10.77.0.n/24.
    fn create() -> Net {
        let version = Command::new("ip").arg("-V").output();
        if !matches!(&version, Ok(o) if o.status.success()) {
            panic!(
                "this test needs iproute2's `ip` (and root) to make network namespaces; install it with \
                 `apt-get install -y iproute2` ({version:?})"
            );
        }
        // Unique per test as well as per process: the tests of this file run at once.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tag = format!("spare{}t{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut net = Net { hub: format!("{tag}hub"), peers: Vec::new() };
        if let Err(e) = ip(&["netns", "add", &net.hub]) {
            panic!(
                "cannot make a network namespace on this machine (this test needs root, or CAP_SYS_ADMIN and \
                 CAP_NET_ADMIN, and a kernel that allows `ip netns add`): {e}"
            );
        }
        let hub = net.hub.clone();
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "brL", "type", "bridge"],
            vec!["link", "add", "brR", "type", "bridge"],
            vec!["link", "add", "trunkL", "type", "veth", "peer", "name", "trunkR"],
            vec!["link", "set", "trunkL", "master", "brL"],
            vec!["link", "set", "trunkR", "master", "brR"],
            vec!["link", "set", "brL", "up"],
            vec!["link", "set", "brR", "up"],
            vec!["link", "set", "trunkL", "up"],
            vec!["link", "set", "trunkR", "up"],
        ] {
            must_ip(&[&["-n", &hub][..], &args].concat());
        }
        for n in 1..=LEFT + RIGHT {
            let ns = format!("{tag}n{n}");
            must_ip(&["netns", "add", &ns]);
            net.peers.push(ns.clone());
            let port = format!("p{n}");
            let bridge = if n <= LEFT { "brL" } else { "brR" };
            let addr = format!("10.77.0.{n}/24");
            must_ip(&["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            must_ip(&["-n", &hub, "link", "set", &port, "master", bridge]);
            must_ip(&["-n", &hub, "link", "set", &port, "up"]);
            must_ip(&["-n", &ns, "link", "set", "lo", "up"]);
            must_ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            must_ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        net
    }

    /// The address of the n-th peer (from 1).
    fn addr(n: usize) -> String {
        format!("10.77.0.{n}:{PORT}")
    }

    /// Takes the trunk down: the sides no longer reach each other.
    fn cut(&self) {
        must_ip(&["-n", &self.hub, "link", "set", "trunkL", "down"]);
        must_ip(&["-n", &self.hub, "link", "set", "trunkR", "down"]);
    }

    /// Brings the trunk back.
    fn heal(&self) {
        must_ip(&["-n", &self.hub, "link", "set", "trunkL", "up"]);
        must_ip(&["-n", &self.hub, "link", "set", "trunkR", "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and with them their peers.
        for ns in self.peers.iter().chain([&self.hub]) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}

/// Which peers (by address) `p` lists alive.
fn alive_at(p: &Peer) -> Result<BTreeSet<String>, String> {
    Ok(p.peers()?.iter().filter(|e| e["state"] == "alive").filter_map(|e| e["addr"].as_str().map(String::from)).collect())
}

/// A job's state at one peer, with the tasks that are not verified yet.
fn describe(status: &Result<Value, String>) -> String {
    match status {
        Err(e) => e.clone(),
        Ok(s) => {
            let open: Vec<String> = tasks_of(s)
                .values()
                .filter(|t| t["state"] != "verified")
                .take(4)
                .map(|t| format!("#{} {} attestations={} by={:?}", t["index"], t["state"], t["attestations"], verified_by(t)))
                .collect();
            // Who this peer follows: the first of its list leads the job.
            format!("{} {} coordinators={} open: {open:?}", s["state"], s["tasks"], s["coordinators"])
        }
    }
}

#[test]
fn a_partition_and_its_healing_lose_nothing_and_verify_nothing_twice_differently() {
    let net = Net::create();
    let tmp = scratch();
    let boot = Net::addr(1);
    let mut peers: Vec<Peer> = Vec::new();
    for (i, ns) in net.peers.iter().enumerate() {
        let n = i + 1;
        let mut spec = PeerSpec::new(&tmp.path().join(format!("p{n}")), &Net::addr(n)).netns(ns);
        if n > 1 {
            spec = spec.bootstrap(&boot);
        }
        peers.push(Peer::start(spec));
    }
    wait_for_mesh(&peers.iter().collect::<Vec<_>>());
    let ids: BTreeSet<String> = peers.iter().map(|p| p.peer_id.clone()).collect();
    assert_eq!(ids.len(), LEFT + RIGHT);
    let (left, right) = peers.split_at(LEFT);
    let left_addrs: BTreeSet<String> = left.iter().map(|p| p.addr.clone()).collect();
    let right_addrs: BTreeSet<String> = right.iter().map(|p| p.addr.clone()).collect();

    // A quorum-2 job submitted at the first peer (the CLI runs in its namespace), long enough to
    // outlast the cut. A replica lost in the cut is leased again when its lease lapses: a 10 s
    // limit per replica keeps that wait short (the tasks take well under a second).
    let inputs = tmp.path().join("inputs");
    let ranges = primes_inputs(&inputs, 400, 20_000_000);
    let total = ranges.len() as u64;
    let module = primes_wasm();
    let v = json_of(
        "spare submit",
        &peers[0].spare(&["submit", module.to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "2", "--timeout", "10", "--json"]),
    );
    let job = v["job_id"].as_str().expect("job_id").to_string();
    let submitted_at = Instant::now();
    // Tasks get their replicas fewest first, so the first verdicts come only once every task has
    // run once, about half the job's work: on a loaded machine that can take longer than one
    // condition usually may.
    eventually_within(3 * DEADLINE, "some tasks verified before the cut", || {
        let s = peers[0].status(&job)?;
        if verified_count(&s) >= 4 { Ok(()) } else { Err(s["tasks"].to_string()) }
    });

    // The cut. Each side comes to see the other as dead (SWIM: suspect, then down).
    let before_cut: Vec<String> = peers.iter().map(|p| describe(&p.status(&job))).collect();
    eprintln!("{:?} from the submission to the cut; before it: {before_cut:#?}", submitted_at.elapsed());
    let cut_at = Instant::now();
    let cut_ms = unix_ms();
    net.cut();
    for (p, own) in [(&left[0], &left_addrs), (&right[0], &right_addrs)] {
        eventually(&format!("{} to see only its own side alive", p.addr), || {
            let alive = alive_at(p)?;
            if &alive == own { Ok(()) } else { Err(format!("{alive:?}")) }
        });
    }
    let split_seen = cut_at.elapsed();
    // Each side carries on alone for a while: wait until both have verified more tasks after
    // the split was seen, as the holders of the job on each side report it. (Every peer holds
    // the job here or has it forwarded to a coordinator on its own side.)
    let at_split: Vec<u64> = peers.iter().map(|p| p.status(&job).map(|s| verified_count(&s)).unwrap_or(0)).collect();
    let progress = eventually("both sides to make progress while split", || {
        let now: Vec<Result<Value, String>> = peers.iter().map(|p| p.status(&job)).collect();
        let counts: Vec<u64> = now.iter().map(|s| s.as_ref().map(verified_count).unwrap_or(0)).collect();
        let moved = |range: std::ops::Range<usize>| range.clone().any(|i| counts[i] >= at_split[i] + 3);
        if moved(0..LEFT) && moved(LEFT..LEFT + RIGHT) {
            Ok(counts)
        } else {
            Err(format!("at the split {at_split:?}, now {counts:?}; {:?}", now.iter().map(|s| s.as_ref().map(|s| s["state"].clone())).collect::<Vec<_>>()))
        }
    });
    let split_for = cut_at.elapsed();

    // The heal: every peer sees all four alive again.
    net.heal();
    let healed_at = Instant::now();
    let all: BTreeSet<String> = peers.iter().map(|p| p.addr.clone()).collect();
    for p in &peers {
        eventually(&format!("{} to see the whole mesh again after the heal", p.addr), || {
            let alive = alive_at(p)?;
            if alive == all { Ok(()) } else { Err(format!("{alive:?}")) }
        });
    }
    let rejoined_after = healed_at.elapsed();

    // The job completes, as every peer reports it.
    // The rest of the job's work, at least half of it: as long as the first verdicts may take.
    let statuses = eventually_within(3 * DEADLINE, "the job to complete at every peer after the heal", || {
        let now: Vec<Result<Value, String>> = peers.iter().map(|p| p.status(&job)).collect();
        if now.iter().all(|s| s.as_ref().is_ok_and(|s| s["state"] == "completed")) {
            return Ok(now.into_iter().map(Result::unwrap).collect::<Vec<Value>>());
        }
        Err(peers.iter().zip(&now).map(|(p, s)| format!("\n  {}: {}", p.addr, describe(s))).collect::<String>())
    });
    let completed_after = healed_at.elapsed();
    let mut roles = Vec::new();
    for p in &peers {
        if let Some(t) = p.logged_at("active coordinator of the job", cut_ms) {
            roles.push(format!("{} active {} ms after the cut", p.addr, t - cut_ms));
        }
    }
    eprintln!(
        "split seen after {split_seen:?}; split for {split_for:?} (verified at the split {at_split:?}, then {progress:?}); \
         whole mesh alive again {rejoined_after:?} after the heal; completed everywhere {completed_after:?} after it; \
         takeovers: {roles:?}"
    );

    // The split healed into one active coordinator: the origin's side won (the origin outranks
    // any other coordinator), so every hand-over went to the origin.
    let origin_id = peers[0].peer_id.clone();
    let mut handovers = Vec::new();
    for p in &peers {
        for line in p.log_lines("handed the job over") {
            handovers.push(format!("{}: {line}", p.addr));
            assert!(line.contains(&format!("to={}", &origin_id[..8])), "{} handed the job to another than the origin: {line}", p.addr);
        }
        let ignored = p.log_lines("ignored an ad of the job");
        assert!(ignored.is_empty(), "{}: {ignored:#?}", p.addr);
    }
    eprintln!("hand-overs after the heal: {handovers:#?}");

    // No task verified twice with different outputs: every peer's status gives every task the
    // output hash of the right count, verified by two distinct peers of the mesh.
    let expected: Vec<String> = ranges.iter().map(|(lo, hi)| primes_output(*lo, *hi)).collect();
    for (p, s) in peers.iter().zip(&statuses) {
        let tasks = tasks_of(s);
        assert_eq!(tasks.len() as u64, total, "{}: {}", p.addr, s["tasks"]);
        for (i, t) in &tasks {
            assert_eq!(t["state"], "verified", "{}: task {i}: {t}", p.addr);
            let hash = blake3::hash(expected[*i as usize].as_bytes()).to_hex();
            assert_eq!(t["output_hash"].as_str(), Some(hash.as_str()), "{}: task {i} verified with a wrong output: {t}", p.addr);
            let by = verified_by(t);
            let distinct: BTreeSet<String> = by.iter().cloned().collect();
            assert!(by.len() >= 2 && distinct.len() == by.len() && distinct.is_subset(&ids), "{}: task {i}: {by:?}", p.addr);
        }
    }

    // Results, written from each side (the CLI inside that peer's namespace): every count right.
    for p in [&left[LEFT - 1], &right[RIGHT - 1]] {
        let out_dir = tmp.path().join(format!("out-{}", p.addr));
        let out = p.spare(&["results", &job, "--out", out_dir.to_str().unwrap()]);
        assert!(out.status.success(), "spare results at {}: {}", p.addr, String::from_utf8_lossy(&out.stderr));
        let results = read_results(&out_dir);
        assert_eq!(results.len() as u64, total, "results at {}", p.addr);
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(String::from_utf8_lossy(&results[&(i as u64)]), *want, "{}: task {i}", p.addr);
        }
    }

    // An honest mesh blames nobody: no peer dropped another's record as forged.
    for p in &peers {
        let blamed = p.log_lines("dropped a record");
        assert!(blamed.is_empty(), "{} blamed an honest peer after the heal: {blamed:#?}", p.addr);
    }

    for p in &mut peers {
        let status = p.stop();
        assert!(status.success(), "peer {} stopped cleanly on SIGTERM: {status}", p.addr);
    }
    drop(net);
}

/// Off its own machine a peer takes TLS only: plaintext HTTP/2 (a gRPC call, by curl) from
/// another namespace gets its connection closed unanswered, while the CLI there, speaking TLS
/// and pinning the peer's id, is answered.
#[test]
fn a_peer_refuses_plaintext_from_another_machine() {
    ensure_tool("curl", "curl");
    let net = Net::create();
    let tmp = scratch();
    let peer = Peer::start(PeerSpec::new(&tmp.path().join("p1"), &Net::addr(1)).netns(&net.peers[0]));
    let url = format!("http://{}/spare.v1.PeerService/Info", Net::addr(1));
    let out = command_in(Some(&net.peers[1]), "curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "10", "-X", "POST", "-H", "content-type: application/grpc"])
        .args(["--data-binary", "", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .output()
        .expect("curl runs");
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!out.status.success() && code == "000", "plaintext from another namespace must get no answer: {out:?}");

    let out = command_in(Some(&net.peers[1]), SPARE)
        .args(["peers", "--json", "--peer", &format!("{}@{}", peer.addr, peer.peer_id)])
        .env("XDG_CONFIG_HOME", tmp.path().join("client-config"))
        .env("SPARE_LOG", "warn")
        .output()
        .expect("spare runs");
    assert!(out.status.success(), "TLS from there is answered: {}", String::from_utf8_lossy(&out.stderr));
    let listed = json_of("spare peers --json", &out);
    assert!(listed.to_string().contains(&peer.peer_id), "{listed}");
}

/// No plaintext between peers: a capture of the link of one of two peers in namespaces, while
/// they verify a quorum-2 job, holds none of the job's input bytes (tcpdump is installed when
/// missing).
#[test]
fn a_capture_between_two_peers_holds_no_input_bytes() {
    use std::io::{BufRead, BufReader};
    ensure_tool("tcpdump", "tcpdump");
    let net = Net::create();
    let tmp = scratch();
    let first = Peer::start(PeerSpec::new(&tmp.path().join("p1"), &Net::addr(1)).netns(&net.peers[0]));
    let second = Peer::start(PeerSpec::new(&tmp.path().join("p2"), &Net::addr(2)).netns(&net.peers[1]).bootstrap(&Net::addr(1)));
    wait_for_mesh(&[&first, &second]);

    // The second peer's link, as the hub sees it: everything between the two peers.
    let pcap = tmp.path().join("link.pcap");
    let mut tcpdump = Command::new("ip")
        .args(["netns", "exec", &net.hub, "tcpdump", "-i", "p2", "--immediate-mode", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump starts");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = tcpdump.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listening = rx.recv_timeout(DEADLINE).expect("tcpdump says it listens");
    assert!(listening.contains("listening on"), "{listening}");

    let marker = format!("spare-capture-marker-{}", std::process::id());
    let inputs = tmp.path().join("inputs");
    std::fs::create_dir(&inputs).unwrap();
    for i in 0..4 {
        std::fs::write(inputs.join(format!("{i}")), format!("1000\n{marker} {i}")).unwrap();
    }
    let module = root_path("examples/wasm/sha256.wasm");
    let v = json_of(
        "spare submit",
        &first.spare(&["submit", module.to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "2", "--json"]),
    );
    let job = v["job_id"].as_str().expect("job_id").to_string();
    let status = eventually("the job verified by both peers", || {
        let s = first.status(&job)?;
        if s["state"] == "completed" { Ok(s) } else { Err(s["tasks"].to_string()) }
    });
    for t in tasks_of(&status).values() {
        assert_eq!(verified_by(t).len(), 2, "{t}");
    }
    // The job's traffic (leases, reports, the adoption with every input) is written out.
    eventually("the capture to hold the job's traffic", || {
        let len = std::fs::metadata(&pcap).map_or(0, |m| m.len());
        if len > 10_000 { Ok(()) } else { Err(format!("{len} bytes")) }
    });
    let _ = Command::new("kill").args(["-INT", &tcpdump.id().to_string()]).status();
    let _ = tcpdump.wait();
    let captured = std::fs::read(&pcap).expect("the capture");
    assert!(!captured.windows(marker.len()).any(|w| w == marker.as_bytes()), "the input bytes crossed the link in clear");
}

/// A path under the workspace root.
fn root_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}
