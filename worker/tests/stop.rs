//! A real `spare peer` stopped with SIGTERM in the middle of a job (finding 17): it hands back
//! the replicas it was running and tells the mesh it leaves, so the others hold it dead at once
//! (not after SWIM's probe and suspicion, over 5 s), its tasks run elsewhere rather than wait for
//! their leases to lapse (10 minutes on here), and it exits 0.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

/// Numbers per task: a run of the primes module takes about a second, so the stopped peer is
/// in the middle of one.
const WIDTH: u64 = 500_000_000;
/// Within this the others must hold the stopped peer dead: less than SWIM needs to find a
/// silent peer (a 1 s probe period, then 4 s of suspicion).
const LEFT_WITHIN: Duration = Duration::from_secs(3);

/// A gauge from the peer's Prometheus endpoint.
fn gauge(metrics: &str, name: &str) -> Result<f64, String> {
    let mut s = TcpStream::connect(metrics).map_err(|e| format!("connect {metrics}: {e}"))?;
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no {name} in {text}"))
}

#[test]
fn a_peer_stopped_mid_job_hands_its_work_back_and_leaves() {
    let tmp = scratch();
    let first = Peer::start(PeerSpec::new(&tmp.path().join("p1"), "127.0.0.1:0").cpus(1));
    let boot = first.addr.clone();
    let second = Peer::start(PeerSpec::new(&tmp.path().join("p2"), "127.0.0.2:0").cpus(1).bootstrap(&boot));
    let mut third =
        Peer::start(PeerSpec::new(&tmp.path().join("p3"), "127.0.0.3:0").cpus(2).bootstrap(&boot).args(&["--metrics", "127.0.0.3:0"]));
    wait_for_mesh(&[&first, &second, &third]);
    let metrics = eventually("the third peer's metrics address in its log", || {
        let line = third.log_lines("serving Prometheus metrics on http://").pop().ok_or("not yet")?;
        let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).ok_or(line.clone())?;
        Ok(addr.to_string())
    });

    // Four long tasks, each replica leased for 10 minutes (its 600 s limit plus grace).
    let inputs = tmp.path().join("inputs");
    let ranges = primes_inputs(&inputs, 4, WIDTH);
    let module = primes_wasm();
    let v = json_of(
        "spare submit",
        &first.spare(&["submit", module.to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "2", "--timeout", "600", "--json"]),
    );
    let job = v["job_id"].as_str().expect("job_id").to_string();

    // Stopped while it runs replicas.
    eventually("the third peer to run replicas", || {
        let n = gauge(&metrics, "spare_tasks_running")?;
        if n >= 1.0 { Ok(()) } else { Err(format!("{n} running")) }
    });
    let status = third.stop();
    assert!(status.success(), "the third peer exits 0 on SIGTERM: {status}");
    let handed = third.log_lines("handing back unfinished replicas");
    assert_eq!(handed.len(), 1, "it handed back the replicas it was running:\n{}", third.log_tail(20));
    assert_eq!(third.log_lines("left the mesh delivered=true").len(), 1, "{}", third.log_tail(20));

    // The others hold it dead at once.
    for p in [&first, &second] {
        eventually_within(LEFT_WITHIN, &format!("{} to hold the stopped peer dead", p.addr), || {
            let list = p.peers()?;
            let state = list.iter().find(|e| e["addr"] == third.addr.as_str()).map(|e| e["state"].clone());
            if state.as_ref().is_some_and(|s| s == "dead") { Ok(()) } else { Err(format!("{state:?}")) }
        });
    }

    // Its tasks run at the other two long before its leases would have lapsed: the job
    // completes, every task verified by the first and the second.
    let done = eventually("the job to complete without the stopped peer", || {
        let s = first.status(&job)?;
        if s["state"] == "completed" { Ok(s) } else { Err(format!("{} {}", s["state"], s["tasks"])) }
    });
    let tasks = tasks_of(&done);
    assert_eq!(tasks.len(), ranges.len());
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        let t = &tasks[&(i as u64)];
        assert_eq!(t["output_hash"].as_str(), Some(blake3::hash(primes_output(*lo, *hi).as_bytes()).to_hex().as_str()), "task {i}");
    }

    let mut rest = [first, second];
    for p in &mut rest {
        let status = p.stop();
        assert!(status.success(), "peer {} stopped cleanly on SIGTERM: {status}", p.addr);
    }
}
