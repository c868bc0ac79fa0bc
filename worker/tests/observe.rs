//! Watching a real `spare peer`: its Prometheus endpoint gives valid text whose counters move
//! with a job; its log says, one line each, which jobs were accepted, completed and failed (and
//! why), has no colour codes when it goes to a file, shows only Spare's own lines at
//! `SPARE_LOG=debug`, and warns when the bootstrap peer cannot be reached. It compiles modules
//! in a compiler process, not in itself, and runs tasks in slot processes.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::*;

/// `GET /metrics` at `addr`, parsed.
fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(COMMAND_LIMIT)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{body}"))
}

/// The value of a sample, matching `labels` (name, value) if given; 0 when absent.
fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn metrics_and_log_lines_follow_a_job() {
    let tmp = scratch();
    let peer = Peer::start(PeerSpec::new(&tmp.path().join("peer"), "127.0.0.1:0").cpus(2).args(&["--metrics", "127.0.0.1:0"]));
    let line = eventually("the peer to say where metrics are", || {
        peer.log_lines("serving Prometheus metrics on http://").pop().ok_or_else(|| peer.log_tail(5))
    });
    let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).expect("an address").to_string();

    let before = scrape(&addr);
    for name in ["spare_tasks_running", "spare_peers_alive", "spare_paused", "spare_jobs_accepted_total", "spare_sandbox_seconds_total", "spare_unreachable", "spare_peers_attached"] {
        assert!(before.samples.iter().any(|s| s.metric == name), "{name} is served");
    }
    assert_eq!(value(&before, "spare_jobs_accepted_total", None), 0.0);

    let inputs = tmp.path().join("inputs");
    primes_inputs(&inputs, 4, 1000);
    let out = peer.spare(&["submit", primes_wasm().to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "1", "--wait", "--json"]);
    let job = json_of("submit --wait", &out);
    assert_eq!(job["state"], "completed", "{job}");
    let job_id = job["job_id"].as_str().expect("job_id").to_string();

    let after = scrape(&addr);
    assert_eq!(value(&after, "spare_jobs_accepted_total", None), 1.0);
    assert_eq!(value(&after, "spare_tasks_run_total", Some(("outcome", "success"))), 4.0);
    assert_eq!(value(&after, "spare_tasks_decided_total", Some(("verdict", "verified"))), 4.0);
    assert!(value(&after, "spare_sandbox_seconds_total", None) > 0.0);
    assert!(value(&after, "spare_store_writes_total", None) > value(&before, "spare_store_writes_total", None));

    // The module was compiled once, by another process (the compiler process), into the disk
    // cache the peer then loaded it from.
    let compiled = |s: &prometheus_parse::Scrape, p| value(s, "spare_modules_compiled_total", Some(("process", p)));
    assert_eq!((compiled(&before, "compiler"), compiled(&before, "peer")), (0.0, 0.0));
    assert_eq!((compiled(&after, "compiler"), compiled(&after, "peer")), (1.0, 0.0));
    let module = spare_protocol::BlobId::of(&std::fs::read(primes_wasm()).unwrap());
    let line = peer.log_lines("module compiled in a compiler process").pop().unwrap_or_else(|| peer.log_tail(20));
    assert!(line.contains(&format!("module={}", module.short())), "{line}");
    let pid: u32 = line.split("pid=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|p| p.parse().ok()).expect(&line);
    assert_ne!(pid, peer.pid(), "{line}");
    let cached: Vec<String> = std::fs::read_dir(peer.spec.data.join("modules"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    assert!(cached.len() == 1 && cached[0].starts_with(&module.to_hex()), "{cached:?}");

    // The tasks ran in slot processes (at most one per slot, started at its first run), which
    // are the peer's children and still up a moment after.
    let started = value(&after, "spare_slot_processes_started_total", None);
    assert!((1.0..=2.0).contains(&started), "{started} slot processes started");
    let running = value(&after, "spare_slot_processes", None);
    assert!((1.0..=started).contains(&running), "{running} running");
    let children = std::fs::read_to_string(format!("/proc/{}/task/{}/children", peer.pid(), peer.pid())).unwrap_or_default();
    let slots = std::fs::read_dir(format!("/proc/{}/task", peer.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("children")).ok())
        .chain([children])
        .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default().windows(12).any(|w| w == b"sandbox-slot"))
        .collect::<std::collections::HashSet<_>>();
    assert_eq!(slots.len() as f64, running, "the peer's slot processes: {slots:?}");

    // A job whose second task cannot parse its input fails, and the log says which and why.
    let lines = tmp.path().join("lines.txt");
    std::fs::write(&lines, "0 1000\nnot numbers\n").unwrap();
    let out = peer.spare(&["submit", primes_wasm().to_str().unwrap(), "--stdin-lines", lines.to_str().unwrap(), "--quorum", "1", "--wait", "--json"]);
    let failed = try_json_of("submit", &out).unwrap_or_else(|_| serde_json::from_slice(&out.stdout).expect("status JSON"));
    let failed_id = failed["job_id"].as_str().expect("job_id").to_string();
    let failed_line = eventually("the failed job's line", || peer.log_lines(&format!("job={failed_id}")).into_iter().find(|l| l.contains("job failed")).ok_or_else(|| peer.log_tail(5)));
    assert!(failed_line.contains("1 of 2 tasks failed") && failed_line.contains("task 1 failed, exit"), "{failed_line}");

    let for_job = peer.log_lines(&format!("job={job_id}"));
    assert!(for_job.iter().any(|l| l.contains(" INFO ") && l.contains("job accepted")), "{for_job:?}");
    assert!(for_job.iter().any(|l| l.contains(" INFO ") && l.contains("job completed: 4 tasks verified")), "{for_job:?}");
    let log = std::fs::read_to_string(peer.spec.log_path()).unwrap();
    assert!(!log.contains('\u{1b}'), "no colour codes in a log file");
}

#[test]
fn debug_shows_spares_lines_only_and_an_unreachable_bootstrap_is_warned_about() {
    let tmp = scratch();
    // Port 1 on loopback: nobody answers there.
    let peer = Peer::start(PeerSpec::new(&tmp.path().join("peer"), "127.0.0.1:0").bootstrap("127.0.0.1:1").log("debug"));
    let warning = eventually("the bootstrap warning", || peer.log_lines("cannot reach the mesh").pop().ok_or_else(|| peer.log_tail(5)));
    assert!(warning.contains(" WARN ") && warning.contains("127.0.0.1:1"), "{warning}");
    let out = peer.spare(&["status", &"0".repeat(64)]);
    assert!(!out.status.success(), "an unknown job");
    let log = std::fs::read_to_string(peer.spec.log_path()).unwrap();
    let debug: Vec<&str> = log.lines().filter(|l| l.contains(" DEBUG ") || l.contains(" TRACE ")).collect();
    assert!(!debug.is_empty(), "debug lines are shown");
    for l in debug {
        let target = l.split_whitespace().nth(2).unwrap_or("");
        assert!(target.starts_with("spare"), "only Spare's own debug lines: {l}");
    }
}
