//! A real `spare peer`'s slot processes: against a task that never ends, its slot process is
//! killed at the task's deadline (a miss is not a result, so the task fails after its replicas
//! all miss), a new slot process is started for what comes next, and the peer's next job
//! completes as usual; and a peer whose executable was replaced on disk (an upgrade under a
//! running service) still starts slot and compiler processes of its own build.

mod support;

use support::*;

#[test]
fn a_task_that_runs_forever_is_stopped_at_its_deadline_and_the_peer_goes_on() {
    let tmp = scratch();
    let peer = Peer::start(PeerSpec::new(&tmp.path().join("peer"), "127.0.0.1:0").cpus(1).log("info,spare_peer::sandbox=debug"));
    let spin = tmp.path().join("spin.wasm");
    std::fs::write(&spin, wat::parse_str(r#"(module (func (export "_start") (loop (br 0))))"#).expect("WAT")).expect("write");
    let input = tmp.path().join("input");
    std::fs::write(&input, b"").expect("write");
    let (spin, input) = (spin.to_str().expect("path"), input.to_str().expect("path"));

    let out = peer.spare(&["submit", spin, "--input", input, "--quorum", "1", "--max-replicas", "2", "--timeout", "300ms", "--wait", "--json"]);
    let job = try_json_of("submit", &out).unwrap_or_else(|_| serde_json::from_slice(&out.stdout).expect("status JSON"));
    assert_eq!(job["state"], "failed", "{job}");
    let id = job["job_id"].as_str().expect("job_id").to_string();
    let status = eventually("the failed task's status", || peer.status(&id));
    let task = tasks_of(&status).remove(&0).expect("task 0");
    assert!(task.to_string().contains("deadline"), "{task}");

    // Both replicas missed their deadline on the one slot: two kills.
    let kills = peer.log_lines("a slot process killed at a run's deadline");
    assert_eq!(kills.len(), 2, "{kills:?}\n{}", peer.log_tail(30));

    // A new slot process runs the next job.
    let inputs = tmp.path().join("inputs");
    let ranges = primes_inputs(&inputs, 3, 1000);
    let out = peer.spare(&["submit", primes_wasm().to_str().expect("path"), "--inputs-dir", inputs.to_str().expect("path"), "--quorum", "1", "--wait", "--json"]);
    let job = json_of("submit --wait", &out);
    assert_eq!(job["state"], "completed", "{job}");
    let results = tmp.path().join("results");
    let out = peer.spare(&["results", job["job_id"].as_str().expect("job_id"), "--out", results.to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = read_results(&results);
    assert_eq!(got.len(), 3);
    for (i, (lo, hi)) in ranges.into_iter().enumerate() {
        assert_eq!(String::from_utf8_lossy(&got[&(i as u64)]), primes_output(lo, hi), "task {i}");
    }
}

#[test]
fn a_peer_whose_binary_was_replaced_still_runs_tasks() {
    let tmp = scratch();
    let binary = tmp.path().join("spare");
    std::fs::copy(SPARE, &binary).expect("copy the binary");
    let peer = Peer::start(PeerSpec::new(&tmp.path().join("peer"), "127.0.0.1:0").cpus(1).binary(&binary));
    // What a package upgrade does: a new file where the old one was (here one that cannot run).
    std::fs::remove_file(&binary).expect("remove");
    std::fs::write(&binary, "#!/bin/sh\nexit 1\n").expect("write");
    let inputs = tmp.path().join("inputs");
    let ranges = primes_inputs(&inputs, 2, 1000);
    let out = peer.spare(&["submit", primes_wasm().to_str().expect("path"), "--inputs-dir", inputs.to_str().expect("path"), "--quorum", "1", "--wait", "--json"]);
    let job = json_of("submit --wait", &out);
    assert_eq!(job["state"], "completed", "{job}\n{}", peer.log_tail(20));
    let results = tmp.path().join("results");
    let out = peer.spare(&["results", job["job_id"].as_str().expect("job_id"), "--out", results.to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = read_results(&results);
    for (i, (lo, hi)) in ranges.into_iter().enumerate() {
        assert_eq!(String::from_utf8_lossy(&got[&(i as u64)]), primes_output(lo, hi), "task {i}");
    }
    // Compiled in a compiler process (of the old build), not in the peer.
    assert!(!peer.log_lines("module compiled in a compiler process").is_empty(), "{}", peer.log_tail(20));
}
