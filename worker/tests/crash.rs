//! Real `spare peer` processes killed with SIGKILL in the middle of a job.
//!
//! - The origin of a quorum-2 job among three peers dies: another coordinator takes over, the job
//!   completes, every result is right and verified by two distinct peers.
//! - A lone peer dies under load and is started again on the same data directory: it is the same
//!   peer (same id, same blobs), every result it had reported verified is still there byte for
//!   byte, and the job then completes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Verified tasks to wait for before the kill, so the job is well under way.
const VERIFIED_BEFORE_KILL: u64 = 6;

#[test]
fn the_origin_killed_mid_job_another_coordinator_completes_it() {
    let tmp = scratch();
    let first = Peer::start(PeerSpec::new(&tmp.path().join("p1"), "127.0.0.1:0"));
    let boot = first.addr.clone();
    let second = Peer::start(PeerSpec::new(&tmp.path().join("p2"), "127.0.0.2:0").bootstrap(&boot));
    let third = Peer::start(PeerSpec::new(&tmp.path().join("p3"), "127.0.0.3:0").bootstrap(&boot));
    wait_for_mesh(&[&first, &second, &third]);
    let ids: BTreeSet<String> = [&first, &second, &third].iter().map(|p| p.peer_id.clone()).collect();
    assert_eq!(ids.len(), 3, "three distinct peers");

    // A quorum-2 job, slow enough (~300 runs of a 20M-number sieve on three slots) to be
    // running several seconds after it starts.
    let ranges = primes_inputs(&tmp.path().join("inputs"), 150, 20_000_000);
    let module = primes_wasm();
    let inputs = tmp.path().join("inputs");
    let v = json_of(
        "spare submit",
        // A short limit per replica: a report the origin took but died before streaming to its
        // backups leaves that lease running at the successor until it lapses (the limit plus 5 s).
        &first.spare(&["submit", module.to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "2", "--timeout", "10", "--json"]),
    );
    let job = v["job_id"].as_str().expect("job_id").to_string();

    // Some tasks verified, as the second sees it (it holds the job as a standby coordinator:
    // with three peers every peer coordinates).
    let before = eventually("some tasks verified at the second peer", || {
        let s = second.status(&job)?;
        if verified_count(&s) >= VERIFIED_BEFORE_KILL { Ok(s) } else { Err(s["tasks"].to_string()) }
    });
    assert_eq!(before["origin"], first.peer_id.as_str(), "the first peer is the job's origin");
    let total = ranges.len() as u64;
    assert!(
        verified_count(&before) < total / 2,
        "the job must still be running when its origin is killed (make the tasks longer): {}",
        before["tasks"]
    );

    let mut first = first;
    let killed_at = Instant::now();
    let killed_ms = unix_ms();
    first.kill9();
    let verified_at_kill = verified_count(&second.status(&job).unwrap_or(before.clone()));

    // The job completes at the second without its origin.
    let mut progressed_after: Option<Duration> = None;
    let done = eventually("the job to complete at the second peer after its origin died", || {
        let s = second.status(&job)?;
        if progressed_after.is_none() && verified_count(&s) > verified_at_kill + 2 {
            progressed_after = Some(killed_at.elapsed());
        }
        if s["state"] == "completed" { Ok(s) } else { Err(format!("{} {}", s["state"], s["tasks"])) }
    });
    let completed_after = killed_at.elapsed();
    // When the survivors noticed, and which of them took the job over (from their logs).
    let first_addr = first.addr.clone();
    let mut takeover = Vec::new();
    for p in [&second, &third] {
        let down = p.log_lines("peer down").iter().filter(|l| l.contains(&first_addr)).filter_map(|l| log_time_ms(l)).find(|t| *t >= killed_ms);
        let active = p.logged_at("active coordinator of the job", killed_ms);
        eprintln!(
            "{}: origin declared down {:?} ms after the kill; active coordinator {:?} ms after it",
            p.addr,
            down.map(|t| t - killed_ms),
            active.map(|t| t - killed_ms)
        );
        if active.is_some() {
            takeover.push(p.addr.clone());
        }
    }
    eprintln!(
        "origin killed with {verified_at_kill}/{total} verified; verified count moving again {:?} after the kill, job completed {completed_after:?} after it; taken over by {takeover:?}",
        progressed_after
    );
    assert_eq!(takeover.len(), 1, "exactly one surviving coordinator takes the job over: {takeover:?}");

    // Every task verified by two distinct peers of the mesh, with the same verdict before and
    // after the kill.
    let tasks = tasks_of(&done);
    assert_eq!(tasks.len() as u64, total, "{}", done["tasks"]);
    for (i, t) in &tasks {
        assert_eq!(t["state"], "verified", "task {i}: {t}");
        let by = verified_by(t);
        let distinct: BTreeSet<String> = by.iter().cloned().collect();
        assert_eq!((by.len(), distinct.len()), (2, 2), "task {i}: two distinct peers: {by:?}");
        assert!(distinct.is_subset(&ids), "task {i}: verified by peers of the mesh: {by:?}");
    }
    for (i, t) in tasks_of(&before) {
        if t["state"] == "verified" {
            assert_eq!(tasks[&i]["output_hash"], t["output_hash"], "task {i} changed its verified output after the kill");
        }
    }
    // The third, the other surviving coordinator, agrees.
    let at_third = eventually("the job completed at the third peer", || {
        let s = third.status(&job)?;
        if s["state"] == "completed" { Ok(s) } else { Err(format!("{} {}", s["state"], s["tasks"])) }
    });
    for (i, t) in tasks_of(&at_third) {
        assert_eq!(t["output_hash"], tasks[&i]["output_hash"], "task {i}: the second and third disagree");
    }

    // Results written from the third: every count right.
    let out_dir = tmp.path().join("out");
    let out = third.spare(&["results", &job, "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "spare results at the third peer: {}", String::from_utf8_lossy(&out.stderr));
    let results = read_results(&out_dir);
    assert_eq!(results.len(), ranges.len());
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        let got = String::from_utf8_lossy(&results[&(i as u64)]).to_string();
        assert_eq!(got, primes_output(*lo, *hi), "task {i}");
        assert_eq!(
            tasks[&(i as u64)]["output_hash"].as_str(),
            Some(blake3::hash(got.as_bytes()).to_hex().as_str()),
            "task {i}: the status's output hash is the hash of the result"
        );
    }

    let mut rest = [second, third];
    for p in &mut rest {
        let status = p.stop();
        assert!(status.success(), "peer {} stopped cleanly on SIGTERM: {status}", p.addr);
    }
}

/// Verified results as `status --tasks --json` lists them: index → the task's entry.
fn verified_tasks(status: &Value) -> BTreeMap<u64, Value> {
    tasks_of(status).into_iter().filter(|(_, t)| t["state"] == "verified").collect()
}

/// `spare results --no-wait` into `dir`: what the peer returns as verified now.
fn results_now(peer: &Peer, job: &str, dir: &std::path::Path) -> BTreeMap<u64, Vec<u8>> {
    let out = peer.spare(&["results", job, "--out", dir.to_str().unwrap(), "--no-wait"]);
    // It exits non-zero while tasks are unfinished; it says how many outputs it wrote.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrote "), "spare results --no-wait: {}: {stderr}", out.status);
    read_results(dir)
}

#[test]
fn a_peer_killed_under_load_restarts_on_its_data_with_every_verified_result() {
    // One peer alone, two slots, quorum 1: it is the job's only coordinator and worker, so
    // whatever survives the kill survives on its disk alone.
    let tmp = scratch();
    let data = tmp.path().join("p1");
    let mut peer = Peer::start(PeerSpec::new(&data, "127.0.0.1:0").cpus(2));
    let ranges = primes_inputs(&tmp.path().join("inputs"), 120, 20_000_000);
    let total = ranges.len() as u64;
    let module = primes_wasm();
    let inputs = tmp.path().join("inputs");
    let v = json_of(
        "spare submit",
        &peer.spare(&["submit", module.to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "1", "--json"]),
    );
    let job = v["job_id"].as_str().expect("job_id").to_string();

    eventually("some tasks verified", || {
        let s = peer.status(&job)?;
        if verified_count(&s) >= VERIFIED_BEFORE_KILL { Ok(()) } else { Err(s["tasks"].to_string()) }
    });
    // What the peer reports verified, last thing before the kill: the results it returns
    // (durable by design) and the verdicts its status shows.
    let before_results = results_now(&peer, &job, &tmp.path().join("before"));
    let before_status = peer.status(&job).expect("status before the kill");
    peer.kill9();
    let before_tasks = verified_tasks(&before_status);
    assert_eq!(before_status["state"], "running", "the job must still be running at the kill (make it longer)");
    assert!(before_tasks.len() as u64 >= VERIFIED_BEFORE_KILL && (before_tasks.len() as u64) < total, "{}", before_status["tasks"]);
    assert!(before_results.len() as u64 >= VERIFIED_BEFORE_KILL, "results before the kill: {}", before_results.len());
    for (i, bytes) in &before_results {
        let (lo, hi) = ranges[*i as usize];
        assert_eq!(String::from_utf8_lossy(bytes), primes_output(lo, hi), "task {i} before the kill");
    }

    // The module's blob is on disk, whole, as the crash left it.
    let module_id = before_status["module_id"].as_str().expect("module_id").to_string();
    let module_bytes = std::fs::read(&module).unwrap();
    assert_eq!(module_id, blake3::hash(&module_bytes).to_hex().as_str(), "the module id is the module's BLAKE3");
    let blob = data.join("blobs").join(&module_id[..2]).join(&module_id);
    assert_eq!(std::fs::read(&blob).ok().as_deref(), Some(&module_bytes[..]), "the module's blob {} after the kill", blob.display());

    // Started again on the same data directory: the same peer.
    let old_id = peer.peer_id.clone();
    drop(peer);
    let restarted_at = Instant::now();
    let peer = Peer::start(PeerSpec::new(&data, "127.0.0.1:0").cpus(2));
    assert_eq!(peer.peer_id, old_id, "the peer keeps its identity across the crash");

    // Every verdict reported before the kill is there, unchanged: state, output hash, the peers
    // that verified it; and every result it returned, byte for byte.
    let after_status = peer.status(&job).expect("status after the restart");
    let after_tasks = tasks_of(&after_status);
    for (i, t) in &before_tasks {
        let a = &after_tasks[i];
        assert_eq!(
            (&a["state"], &a["output_hash"], &a["verified_by"]),
            (&t["state"], &t["output_hash"], &t["verified_by"]),
            "task {i} was reported verified before the kill; after the restart: {a}"
        );
    }
    let after_results = results_now(&peer, &job, &tmp.path().join("after"));
    for (i, bytes) in &before_results {
        assert_eq!(after_results.get(i), Some(bytes), "result {i} after the restart");
        let hash = blake3::hash(bytes).to_hex();
        assert_eq!(after_tasks[i]["output_hash"].as_str(), Some(hash.as_str()), "task {i}: output hash after the restart");
    }

    // The job then completes, every result right, and the earlier ones still the same.
    let done = eventually("the job to complete after the restart", || {
        let s = peer.status(&job)?;
        if s["state"] == "completed" { Ok(s) } else { Err(format!("{} {}", s["state"], s["tasks"])) }
    });
    eprintln!(
        "killed with {} verified ({} results returned); completed {:?} after the restart",
        before_tasks.len(),
        before_results.len(),
        restarted_at.elapsed()
    );
    let done_tasks = tasks_of(&done);
    for (i, t) in &before_tasks {
        assert_eq!(done_tasks[i]["output_hash"], t["output_hash"], "task {i}");
    }
    let out_dir = tmp.path().join("out");
    let out = peer.spare(&["results", &job, "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "spare results: {}", String::from_utf8_lossy(&out.stderr));
    let results = read_results(&out_dir);
    assert_eq!(results.len() as u64, total);
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        assert_eq!(String::from_utf8_lossy(&results[&(i as u64)]), primes_output(*lo, *hi), "task {i}");
        if let Some(b) = before_results.get(&(i as u64)) {
            assert_eq!(&results[&(i as u64)], b, "task {i}: the result changed");
        }
    }

    // The module stays cached: a second job with it completes without the blob being written
    // again (an upload would replace the file with a new one).
    let inode = std::fs::metadata(&blob).expect("module blob").ino();
    let small = tmp.path().join("small");
    let small_ranges = primes_inputs(&small, 3, 1_000);
    let v = json_of(
        "spare submit (the same module again)",
        &peer.spare(&["submit", module.to_str().unwrap(), "--inputs-dir", small.to_str().unwrap(), "--quorum", "1", "--wait", "--json"]),
    );
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["module_id"], module_id.as_str());
    assert_eq!(v["tasks"]["verified"], small_ranges.len() as u64, "{v}");
    assert_eq!(std::fs::metadata(&blob).expect("module blob").ino(), inode, "the module was uploaded again");

    let mut peer = peer;
    assert!(peer.stop().success(), "the restarted peer stops cleanly");
}
