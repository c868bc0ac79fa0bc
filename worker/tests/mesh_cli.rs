//! A mesh of real `spare peer` processes on three loopback addresses, driven with the `spare`
//! command line: `peers` at each lists the whole mesh alive, a quorum-2 job submitted at the first
//! completes, its results are written from the third and its status read at the second.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wait_timeout::ChildExt;

const SPARE: &str = env!("CARGO_BIN_EXE_spare");
/// How long any condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

fn primes_wasm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wasm/primes.wasm")
}

/// A running `spare peer`: SIGTERM with [`MeshPeer::stop`], killed if dropped still running.
struct MeshPeer {
    child: Child,
    addr: String,
    /// Kept open so the peer never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl MeshPeer {
    /// Starts a peer with one slot listening on `listen`, joining through `bootstrap` if given,
    /// and returns once it has printed the address it listens on.
    fn start(data: &Path, listen: &str, bootstrap: Option<&str>) -> MeshPeer {
        MeshPeer::start_with(data, listen, bootstrap, &[])
    }

    /// [`MeshPeer::start`] with extra `spare peer` arguments.
    fn start_with(data: &Path, listen: &str, bootstrap: Option<&str>, extra: &[&str]) -> MeshPeer {
        let mut cmd = Command::new(SPARE);
        cmd.args(["peer", "--listen", listen, "--cpus", "1", "--data-dir"]).arg(data).args(extra);
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        let mut child = cmd
            .env("SPARE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spare peer starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the peer's first line");
        let Some(addr) = line.split("listening on ").nth(1).and_then(|s| s.split_whitespace().next()) else {
            let _ = child.kill();
            panic!("spare peer on {listen} did not say where it listens: {line:?}");
        };
        let addr = addr.to_string();
        assert!(addr.starts_with(listen.trim_end_matches(":0")), "{listen} -> {addr}");
        MeshPeer { child, addr, _stdout: stdout }
    }

    /// SIGTERM, then waits (with [`DEADLINE`]) for the process to exit.
    fn stop(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM sent to {pid}");
        match self.child.wait_timeout(DEADLINE).expect("wait for the peer") {
            Some(status) => status,
            None => panic!("peer {} did not stop on SIGTERM", self.addr),
        }
    }
}

impl Drop for MeshPeer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `spare <args> --peer <peer>`.
fn spare_at(peer: &MeshPeer, args: &[&str]) -> Output {
    Command::new(SPARE).args(args).args(["--peer", &peer.addr]).output().expect("spare runs")
}

fn json_of(what: &str, out: &Output) -> Value {
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Polls `check` until it gives `Some`, failing after [`DEADLINE`] with the last thing seen.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}; last: {last}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_peer_processes_verify_a_job_by_quorum_and_answer_from_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let first = MeshPeer::start(&tmp.path().join("p1"), "127.0.0.1:0", None);
    let second = MeshPeer::start(&tmp.path().join("p2"), "127.0.0.2:0", Some(&first.addr));
    let third = MeshPeer::start(&tmp.path().join("p3"), "127.0.0.3:0", Some(&first.addr));
    let mut peers = [first, second, third];
    let addrs: BTreeSet<String> = peers.iter().map(|p| p.addr.clone()).collect();
    assert_eq!(addrs.len(), 3);

    // `spare peers` at each: all three, alive, with their one slot advertised.
    let mut ids = BTreeSet::new();
    for p in &peers {
        let listed = eventually(&format!("`spare peers` at {} to list the mesh", p.addr), || {
            let v = json_of("spare peers --json", &spare_at(p, &["peers", "--json"]));
            let list = v.as_array().cloned().unwrap_or_default();
            let seen: BTreeSet<String> = list.iter().filter_map(|e| e["addr"].as_str().map(String::from)).collect();
            let ok = list.len() == 3
                && seen == addrs
                && list.iter().all(|e| e["state"] == "alive" && e["cpus_total"] == 1);
            if ok { Ok(list) } else { Err(v.to_string()) }
        });
        assert_eq!(listed[0]["addr"], p.addr.as_str(), "a peer lists itself first");
        let these: BTreeSet<String> = listed.iter().map(|e| e["peer_id"].as_str().expect("peer_id").to_string()).collect();
        assert_eq!(these.len(), 3, "three distinct peer ids");
        if ids.is_empty() {
            ids = these;
        } else {
            assert_eq!(these, ids, "every peer lists the same peers");
        }
    }

    // A quorum-2 job submitted at the first peer.
    let inputs = tmp.path().join("inputs");
    std::fs::create_dir(&inputs).unwrap();
    let ranges: Vec<(u64, u64)> = (0..30).map(|i| (i * 20_000, (i + 1) * 20_000)).collect();
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        std::fs::write(inputs.join(format!("{i:02}.txt")), format!("{lo} {hi}\n")).unwrap();
    }
    let module = primes_wasm();
    let out = spare_at(
        &peers[0],
        &["submit", module.to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "2", "--wait", "--json"],
    );
    let v = json_of("spare submit --wait", &out);
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["tasks"]["verified"], ranges.len() as u64, "{v}");
    let job = v["job_id"].as_str().expect("job_id").to_string();

    // Results written from the third peer, which does not hold the job.
    let out_dir = tmp.path().join("out");
    let out = spare_at(&peers[2], &["results", &job, "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "spare results at the third peer: {}", String::from_utf8_lossy(&out.stderr));
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        let got = std::fs::read_to_string(out_dir.join(i.to_string())).unwrap_or_else(|e| panic!("result {i}: {e}"));
        assert_eq!(got, format!("{}\n", spare_example_primes::count_primes(*lo, *hi)), "task {i}");
    }

    // Status at the second: every task verified by two distinct peers of the mesh.
    let v = json_of("spare status --tasks", &spare_at(&peers[1], &["status", &job, "--tasks", "--json"]));
    assert_eq!(v["state"], "completed", "{v}");
    let list = v["task_list"].as_array().expect("task_list");
    assert_eq!(list.len(), ranges.len());
    for (i, t) in list.iter().enumerate() {
        assert_eq!(t["state"], "verified", "task {i}: {t}");
        let by: Vec<String> = t["verified_by"].as_array().expect("verified_by").iter().map(|p| p.as_str().unwrap().to_string()).collect();
        let distinct: BTreeSet<String> = by.iter().cloned().collect();
        assert_eq!((by.len(), distinct.len()), (2, 2), "task {i}: two distinct peers: {by:?}");
        assert!(distinct.is_subset(&ids), "task {i}: verified by peers of the mesh: {by:?}");
    }

    for p in &mut peers {
        let status = p.stop();
        assert!(status.success(), "peer {} stopped cleanly on SIGTERM: {status}", p.addr);
    }
}

/// With a lying peer among four, no wrong result is ever returned as verified. Needs the
/// `chaos` feature, which the workspace's test suite turns on (through `spare-tests`).
#[cfg(feature = "chaos")]
#[test]
fn a_lying_peer_process_never_gets_a_wrong_result_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let first = MeshPeer::start(&tmp.path().join("p1"), "127.0.0.1:0", None);
    let boot = first.addr.clone();
    let mut peers = vec![
        first,
        MeshPeer::start(&tmp.path().join("p2"), "127.0.0.2:0", Some(&boot)),
        MeshPeer::start(&tmp.path().join("p3"), "127.0.0.3:0", Some(&boot)),
        MeshPeer::start_with(&tmp.path().join("liar"), "127.0.0.4:0", Some(&boot), &["--chaos", "lie"]),
    ];
    eventually("the four peers to see each other", || {
        let v = json_of("spare peers --json", &spare_at(&peers[3], &["peers", "--json"]));
        let alive = v.as_array().map_or(0, |l| l.iter().filter(|e| e["state"] == "alive").count());
        if alive == 4 { Ok(()) } else { Err(v.to_string()) }
    });
    let liar = json_of("spare peers --json", &spare_at(&peers[3], &["peers", "--json"]))[0]["peer_id"]
        .as_str()
        .expect("peer_id")
        .to_string();
    let inputs = tmp.path().join("inputs");
    std::fs::create_dir(&inputs).unwrap();
    let ranges: Vec<(u64, u64)> = (0..40).map(|i| (i * 10_000, (i + 1) * 10_000)).collect();
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        std::fs::write(inputs.join(format!("{i:02}.txt")), format!("{lo} {hi}\n")).unwrap();
    }
    let module = primes_wasm();
    let v = json_of(
        "spare submit --wait",
        &spare_at(&peers[0], &["submit", module.to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--wait", "--json"]),
    );
    assert_eq!(v["state"], "completed", "{v}");
    let job = v["job_id"].as_str().expect("job_id").to_string();
    let out_dir = tmp.path().join("out");
    let out = spare_at(&peers[1], &["results", &job, "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        let got = std::fs::read_to_string(out_dir.join(i.to_string())).unwrap();
        assert_eq!(got, format!("{}\n", spare_example_primes::count_primes(*lo, *hi)), "task {i}");
    }
    let v = json_of("spare status --tasks", &spare_at(&peers[2], &["status", &job, "--tasks", "--json"]));
    for t in v["task_list"].as_array().expect("task_list") {
        let by: Vec<&str> = t["verified_by"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
        assert!(!by.contains(&liar.as_str()), "the liar verified a task: {t}");
    }
    for p in &mut peers {
        assert!(p.stop().success());
    }
}
