//! The `spare` binary as a user runs it: a real `spare peer` process on loopback, and the
//! `submit`, `status` and `results` commands against it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wait_timeout::ChildExt;

const SPARE: &str = env!("CARGO_BIN_EXE_spare");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A `spare peer` process, stopped with SIGTERM when dropped.
struct Peer {
    child: Child,
    addr: String,
    /// Its PeerId, as it printed it.
    id: String,
}

impl Peer {
    fn start(data: &Path) -> Peer {
        Peer::start_on(data, "127.0.0.1:0")
    }

    /// A peer listening on `listen` (a host name works too).
    fn start_on(data: &Path, listen: &str) -> Peer {
        let mut child = Command::new(SPARE)
            .args(["peer", "--listen", listen, "--cpus", "2", "--data-dir"])
            .arg(data)
            .env("SPARE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spare peer starts");
        let stdout = child.stdout.take().expect("piped stdout");
        // The first line says where it listens; reading it is the readiness signal.
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("peer prints its address");
        let addr = line.split("listening on ").nth(1).and_then(|s| s.split_whitespace().next()).expect(&line).to_string();
        let id = line.strip_prefix("spare peer ").and_then(|s| s.split_whitespace().next()).expect(&line).to_string();
        Peer { child, addr, id }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        match self.child.wait_timeout(Duration::from_secs(30)).expect("wait") {
            Some(status) => status,
            None => panic!("peer did not stop on SIGTERM"),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spare(peer: &Peer, args: &[&str]) -> Output {
    Command::new(SPARE).args(args).env("SPARE_PEER", &peer.addr).output().expect("spare runs")
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn submit_status_and_results_against_a_real_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let peer = Peer::start(&tmp.path().join("peer"));
    let inputs = tmp.path().join("inputs");
    std::fs::create_dir(&inputs).unwrap();
    let ranges: Vec<(u64, u64)> = (0..12).map(|i| (i * 50_000, (i + 1) * 50_000)).collect();
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        std::fs::write(inputs.join(format!("{i:02}.txt")), format!("{lo} {hi}\n")).unwrap();
    }
    let module = root().join("examples/wasm/primes.wasm");
    let module = module.to_str().unwrap();

    // Without --wait: only the id, as JSON.
    let out = spare(&peer, &["submit", module, "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "1", "--json"]);
    let v = json(&out);
    let job = v["job_id"].as_str().expect("job_id").to_string();
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");

    // With --wait: the final status, with the network diversity the job asked for.
    let out =
        spare(&peer, &["submit", module, "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "1", "--diversity", "off", "--wait", "--json"]);
    let v = json(&out);
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["policy"]["diversity"], "off", "{v}");
    assert_eq!(v["tasks"]["verified"], 12);

    // The first job completes too; status shows every task and who verified it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let v = json(&spare(&peer, &["status", &job, "--tasks", "--json"]));
        if v["state"] == "completed" {
            break v;
        }
        assert!(Instant::now() < deadline, "job did not complete: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    for key in ["total", "pending", "running", "verified", "inconclusive", "failed"] {
        assert!(status["tasks"][key].is_u64(), "tasks.{key} missing: {status}");
    }
    assert_eq!(status["policy"]["diversity"], "prefix", "a job that does not ask carries the peer's default: {status}");
    let list = status["task_list"].as_array().expect("task_list");
    assert_eq!(list.len(), 12);
    for t in list {
        assert_eq!(t["state"], "verified");
        assert_eq!(t["verified_by"].as_array().map(Vec::len), Some(1));
        assert_eq!(t["output_hash"].as_str().map(str::len), Some(64));
        assert_eq!(t["error"], "");
    }

    // Results: one file per task, named by index, holding the verified output.
    let out_dir = tmp.path().join("out");
    let out = spare(&peer, &["results", &job, "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        let got = std::fs::read_to_string(out_dir.join(i.to_string())).unwrap();
        assert_eq!(got, format!("{}\n", spare_example_primes::count_primes(*lo, *hi)), "task {i}");
    }

    // --stdin-lines: one task per line. Failing tasks: --wait, status and results say why,
    // grouped by reason (the guest's last stderr line), and `logs` prints a task's stderr.
    let lines = tmp.path().join("lines.txt");
    std::fs::write(&lines, "0 1000\nnot numbers\n1000 2000\nx y\nx y\n").unwrap();
    let out = spare(&peer, &["submit", module, "--stdin-lines", lines.to_str().unwrap(), "--quorum", "1", "--wait"]);
    assert!(!out.status.success(), "a job with a failed task exits non-zero");
    let text = String::from_utf8_lossy(&out.stdout);
    let why_x = "2 tasks exited 2: LO is not an unsigned decimal integer: `x` (tasks 3, 4)";
    let why_not = "1 task exited 2: LO is not an unsigned decimal integer: `not` (task 1)";
    assert!(text.contains(why_x) && text.contains(why_not), "{text}");
    let failed_job = text.lines().next().and_then(|l| l.strip_prefix("job    ")).expect(&text).trim().to_string();
    let v = json(&spare(&peer, &["status", &failed_job, "--tasks", "--json"]));
    assert_eq!((v["tasks"]["verified"].as_u64(), v["tasks"]["failed"].as_u64()), (Some(2), Some(3)));
    assert_eq!(v["task_list"][1]["state"], "failed");
    assert!(v["task_list"][1]["error"].as_str().unwrap().contains("exit 2"), "{v}");
    assert_eq!(v["task_list"][1]["stderr_line"], "LO is not an unsigned decimal integer: `not`", "{v}");
    let out = spare(&peer, &["status", &failed_job]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(why_x), "{}", String::from_utf8_lossy(&out.stdout));
    let out = spare(&peer, &["results", &failed_job, "--out", tmp.path().join("out2").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tasks without a verified result: 3") && err.contains(why_x) && err.contains(why_not), "{err}");
    let out = spare(&peer, &["logs", &failed_job, "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "LO is not an unsigned decimal integer: `x`\n");
    let out = spare(&peer, &["logs", &failed_job]);
    let all = String::from_utf8_lossy(&out.stdout);
    assert_eq!(all.matches("── task").count(), 3, "only failed tasks, each once: {all}");

    // Clear errors for what does not exist.
    let out = spare(&peer, &["status", &"ab".repeat(32)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = spare(&peer, &["submit", "/nonexistent.wasm", "--input", "/etc/hostname"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.wasm"));

    assert!(peer.stop().success(), "SIGTERM stops the peer cleanly");
}

#[test]
fn sim_reports_what_the_run_cost_beside_the_seeded_figures() {
    let run = || Command::new(SPARE).args(["sim", "--peers", "20", "--tasks", "40", "--json"]).output().expect("spare runs");
    let (a, b) = (json(&run()), json(&run()));
    assert_eq!(a["completed"], true);
    assert!(a["wall_seconds"].as_f64().is_some_and(|s| s > 0.0), "{a}");
    assert!(a["cpu_seconds"].as_f64().is_some_and(|s| s >= 0.0), "{a}");
    assert!(a["peak_memory_bytes"].as_u64().is_some_and(|m| m > 1_000_000), "{a}");
    // The seeded report is the same twice; only the cost varies.
    let seeded = |v: &Value| {
        let mut v = v.clone();
        for k in ["wall_seconds", "cpu_seconds", "peak_memory_bytes"] {
            v.as_object_mut().expect("an object").remove(k);
        }
        v
    };
    assert_eq!(seeded(&a), seeded(&b));
}

#[test]
fn help_with_examples_is_there_for_every_command() {
    let commands = ["peer", "submit", "status", "jobs", "cancel", "whoami", "peers", "results", "logs", "new", "demo", "sim", "completions"];
    for cmd in commands {
        let out = Command::new(SPARE).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Usage: spare") && help.contains("Examples:\n  spare"), "{cmd}: {help}");
    }
    let out = Command::new(SPARE).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in commands {
        assert!(help.contains(&format!("\n  {cmd} ")), "`spare --help` lists {cmd}: {help}");
    }
    let out = Command::new(SPARE).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("_spare()"));
}

/// `spare compile-module`, a peer's compiler process, as the peer runs it: module bytes on
/// stdin, its compiled form into the cache directory. Bad input ends it with a status that says
/// whose fault it is (3: the module's, 1: the host's), the reason on stderr, and no file.
#[test]
fn the_compiler_process_writes_the_cache_or_says_why_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("modules");
    let primes = std::fs::read(root().join("examples/wasm/primes.wasm")).unwrap();
    let id = spare_protocol::BlobId::of(&primes).to_hex();
    let compile = |hash: &str, announced: usize, bytes: &[u8]| -> Output {
        let mut child = Command::new(SPARE)
            .arg("compile-module")
            .arg("--dir")
            .arg(&dir)
            .args(["--module", &id, "--engine-hash", hash, "--slots", "2", "--max-memory-bytes", "4294967296"])
            .args(["--bytes", &announced.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spare compile-module starts");
        let mut stdin = child.stdin.take().unwrap();
        // It may end before reading everything (a refusal): a broken pipe is no matter.
        let _ = std::io::Write::write_all(&mut stdin, bytes);
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    let cached = || -> Vec<String> {
        std::fs::read_dir(&dir).map_or_else(|_| Vec::new(), |d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
    };
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // Fewer bytes than announced, then another engine than this binary builds: the host's fault.
    let out = compile("0123456789abcdef", primes.len() + 1, &primes);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("stdin held {} bytes, not the {} announced", primes.len(), primes.len() + 1)), "{}", stderr(&out));
    let out = compile("0123456789abcdef", primes.len(), &primes);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let hash = err.split("builds engine ").nth(1).and_then(|r| r.split(',').next()).unwrap_or_else(|| panic!("{err}")).to_string();
    assert!(err.contains("not the peer's 0123456789abcdef"), "{err}");
    assert!(cached().iter().all(|f| !f.ends_with(".cwasm")), "{:?}", cached());

    // Bytes Cranelift cannot compile: the module's fault, and no file.
    let out = compile(&hash, 8, b"not wasm");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!stderr(&out).trim().is_empty());
    assert!(cached().iter().all(|f| !f.ends_with(".cwasm")), "{:?}", cached());

    // A module: its compiled form under the name the peer looks for, nothing left behind.
    let out = compile(&hash, primes.len(), &primes);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cached(), vec![format!("{id}-{hash}.cwasm")]);

    // Hidden from the help, which is for people.
    let out = Command::new(SPARE).arg("--help").output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("compile-module"));
}

/// `spare jobs` lists a job with what it waits for; `status --watch` off a terminal prints a
/// line saying so (instead of hanging silently) until `spare cancel` ends the job.
#[test]
fn jobs_watch_and_cancel_against_a_real_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let peer = Peer::start(&tmp.path().join("peer"));
    let module = root().join("examples/wasm/primes.wasm");
    let lines = tmp.path().join("lines.txt");
    std::fs::write(&lines, "0 1000\n1000 2000\n").unwrap();
    // Quorum 2 on a lone peer: the job cannot finish until another peer joins.
    let v = json(&spare(&peer, &["submit", module.to_str().unwrap(), "--stdin-lines", lines.to_str().unwrap(), "--label", "stuck", "--json"]));
    let job = v["job_id"].as_str().unwrap().to_string();
    let list = json(&spare(&peer, &["jobs", "--json"]));
    let listed = list.as_array().and_then(|l| l.iter().find(|j| j["job_id"] == job.as_str())).unwrap_or_else(|| panic!("{list}"));
    assert_eq!((listed["state"].as_str(), listed["label"].as_str(), listed["tasks"]["total"].as_u64()), (Some("running"), Some("stuck"), Some(2)));
    let table = String::from_utf8_lossy(&spare(&peer, &["jobs"]).stdout).into_owned();
    assert!(table.contains(&job[..12]) && table.contains("stuck"), "{table}");

    let mut watch = Command::new(SPARE)
        .args(["status", &job[..10], "--watch"])
        .env("SPARE_PEER", &peer.addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line, read on a thread so that a silent watch fails the test instead of hanging it.
    let stderr = BufReader::new(watch.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("status --watch prints a line within seconds");
    assert!(line.contains("0/2 tasks done") && line.contains("waiting for more peers: quorum 2 needs 2 distinct peers"), "{line}");

    let out = spare(&peer, &["cancel", &job[..10]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("cancelled job {job}")));
    let status = watch.wait_timeout(Duration::from_secs(30)).unwrap().expect("the watch ends with the job");
    assert!(!status.success(), "a watch of a job that did not complete exits non-zero");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut watch.stdout.take().unwrap(), &mut rest).unwrap();
    assert!(rest.contains("state  cancelled"), "{rest}");
    let out = spare(&peer, &["cancel", &job]);
    assert!(out.status.success(), "cancelling twice is fine");
}

/// A job belongs to the key that submitted it: `spare cancel` with another key (`--identity`,
/// or `SPARE_IDENTITY`) exits non-zero saying so, and the job runs on to the end; the owner's
/// cancel works. `spare whoami` makes the key on first use and prints it.
#[test]
fn only_the_owner_can_cancel_a_job() {
    let tmp = tempfile::tempdir().unwrap();
    let peer = Peer::start(&tmp.path().join("peer"));
    let (alice, bob) = (tmp.path().join("keys/alice.key"), tmp.path().join("bob.key"));
    let who = |key: &Path| json(&spare(&peer, &["whoami", "--json", "--identity", key.to_str().unwrap()]));
    let a = who(&alice);
    assert_eq!(a["path"].as_str(), alice.to_str(), "{a}");
    assert_eq!(a["key"].as_str().map(str::len), Some(64), "{a}");
    assert_eq!(who(&alice)["key"], a["key"], "made once, then kept");
    let out = Command::new(SPARE).args(["whoami"]).env("SPARE_IDENTITY", &bob).output().unwrap();
    assert!(out.status.success());
    let b = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(Some(b.as_str()), a["key"].as_str(), "another key file, another key");

    let module = root().join("examples/wasm/primes.wasm");
    let lines = tmp.path().join("lines.txt");
    std::fs::write(&lines, (0..8).map(|i| format!("{} {}\n", i * 200_000, (i + 1) * 200_000)).collect::<String>()).unwrap();
    let submit = |quorum: &str, label: &str| {
        let args = ["submit", module.to_str().unwrap(), "--stdin-lines", lines.to_str().unwrap(), "--quorum", quorum, "--label", label, "--json"];
        let v = json(&spare(&peer, &[&args[..], &["--identity", alice.to_str().unwrap()]].concat()));
        v["job_id"].as_str().unwrap().to_string()
    };
    let job = submit("1", "alice's");
    let out = Command::new(SPARE).args(["cancel", &job]).env("SPARE_PEER", &peer.addr).env("SPARE_IDENTITY", &bob).output().unwrap();
    assert!(!out.status.success(), "bob cannot cancel alice's job");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied") && err.contains("only the job's owner may cancel it"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = json(&spare(&peer, &["status", &job, "--json"]));
        if s["state"] == "completed" {
            assert_eq!(s["owner"].as_str(), a["key"].as_str(), "{s}");
            break;
        }
        assert_ne!(s["state"], "cancelled", "{s}");
        assert!(Instant::now() < deadline, "the job did not complete: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The owner can: quorum 2 on a lone peer keeps this one running until cancelled.
    let stuck = submit("2", "stuck");
    let out = spare(&peer, &["cancel", &stuck, "--identity", alice.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("cancelled job {stuck}")));
}

/// Off this machine (here asked for with `https://`) the client commands speak TLS: the PeerId
/// first met at an address is pinned in `known_peers` under the config directory, and another
/// peer at that address later is refused with a message naming both and the file.
#[test]
fn the_cli_pins_a_peer_on_first_use_and_refuses_another_there() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    let a = Peer::start(&tmp.path().join("a"));
    let url = format!("https://{}", a.addr);
    let peers = |url: &str| Command::new(SPARE).args(["peers", "--json", "--peer", url]).env("XDG_CONFIG_HOME", &config).output().unwrap();
    let out = peers(&url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let known = std::fs::read_to_string(config.join("spare/known_peers")).unwrap();
    assert_eq!(known.trim(), format!("{} {}", a.addr, a.id));
    assert!(peers(&url).status.success(), "the same peer again");
    let addr = a.addr.clone();
    assert!(a.stop().success());

    let b = Peer::start_on(&tmp.path().join("b"), &addr);
    let out = peers(&url);
    assert!(!out.status.success(), "another peer at a pinned address");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&b.id) && err.contains("known_peers") && err.contains("presented PeerId"), "{err}");
    // Given with its PeerId, the new peer is taken.
    let out = peers(&format!("{addr}@{}", b.id));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The `spare` binary a user builds from the workspace root (`cargo build --release --bin
/// spare`, `cargo run --release --bin spare`) has no test-only `chaos` code: those commands
/// select the workspace's default members, which leave out `spare-tests`, the one crate that
/// turns the feature on. Asked of cargo's feature resolver (what the build would use), not of a
/// release build, which would take minutes.
#[test]
fn a_users_build_has_no_chaos_feature() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let features = |extra: &[&str]| {
        let out = Command::new(&cargo)
            .args(["tree", "--offline", "--edges", "features", "--invert", "spare-peer", "--prefix", "none"])
            .args(extra)
            .current_dir(root())
            .output()
            .expect("cargo tree runs");
        assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let user = features(&[]);
    assert!(user.contains("spare-peer"), "{user}");
    assert!(!user.contains("feature \"chaos\""), "a plain build from the root gets chaos:\n{user}");
    // The whole workspace (what `scripts/test` builds) does get it, so the tests keep it.
    let tests = features(&["--workspace"]);
    assert!(tests.contains("spare-peer feature \"chaos\""), "{tests}");
}

/// Runs `spare` with `args` against `peer`, expecting failure, and returns its stderr.
fn refused(peer: &str, args: &[&str]) -> String {
    let out = Command::new(SPARE).args(args).env("SPARE_PEER", peer).output().expect("spare runs");
    assert!(!out.status.success(), "{args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A reader that leaves early (`spare completions bash | head -1`) ends a client command quietly,
/// with no panic; and a client whose peer connection closes under it still says why (it is not
/// killed by SIGPIPE, as `mistakes_are_refused_early_and_said_plainly` shows for a non-peer).
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let mut child = Command::new(SPARE)
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spare runs");
    // Closed before the command has started printing.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("spare ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert!(out.status.success() || out.status.code() == Some(141), "{:?}: {err}", out.status);
}

/// A local port where nothing listens.
fn closed_port() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

/// Mistakes are refused before anything is uploaded, each with one line that names the cause
/// and what to do; short job ids work wherever a job id is asked for.
#[test]
fn mistakes_are_refused_early_and_said_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let module = root().join("examples/wasm/primes.wasm");
    let module = module.to_str().unwrap();
    let lines = tmp.path().join("lines.txt");
    std::fs::write(&lines, "0 1000\n1000 2000\n").unwrap();
    let lines = lines.to_str().unwrap();
    // Nothing listens at `nowhere`: a check that ran after connecting would say so instead.
    let nowhere = closed_port();
    let submit = |extra: &[&str]| {
        let mut args = vec!["submit", module, "--stdin-lines", lines];
        args.extend_from_slice(extra);
        refused(&nowhere, &args)
    };
    let first_line = |s: &str| s.lines().next().unwrap_or("").to_string();
    assert!(first_line(&submit(&["--quorum", "0"])).contains("1 or more"));
    assert!(first_line(&submit(&["--fuel", "-5"])).contains("a whole number above 0"));
    assert!(first_line(&submit(&["--timeout", "soon"])).contains("30s"));
    let err = submit(&["--memory", "10"]);
    assert!(err.contains("--memory 10 B is below the 1.1 MiB") && err.contains("primes.wasm") && err.contains("--memory 2MiB"), "{err}");
    let err = refused(&nowhere, &["submit", lines, "--stdin-lines", lines]);
    assert!(err.starts_with(&format!("error: {lines} is not a module a peer can run")), "{err}");

    // Connection problems keep their cause and say what to do.
    let err = refused(&nowhere, &["status", "ab12"]);
    assert!(err.contains("Connection refused") && err.contains("spare peer") && err.contains("--peer"), "{err}");
    // https:// asks for TLS even to this machine: the cause is the same.
    let err = refused(&format!("https://{nowhere}"), &["status", "ab12"]);
    assert!(err.contains("Connection refused"), "{err}");
    let err = refused(&format!("{nowhere}@xyz"), &["status", "ab12"]);
    assert!(err.contains("is not a PeerId"), "{err}");
    // Something that is not a peer listens: it takes the connection, answers HTTP/1 and closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let not_a_peer = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let err = refused(&not_a_peer, &["status", "ab12"]);
    assert!(err.contains("Spare peer") && err.contains("spare peer --listen"), "{err}");

    // Against a real peer (listening on a host name): short ids, --out, and a quorum the mesh
    // cannot reach yet.
    let peer = Peer::start_on(&tmp.path().join("peer"), "localhost:0");
    let out = spare(&peer, &["submit", module, "--stdin-lines", lines, "--quorum", "1", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let job = text.lines().next().and_then(|l| l.strip_prefix("job    ")).expect(&text).trim().to_string();
    let v = json(&spare(&peer, &["status", &job[..8], "--json"]));
    assert_eq!(v["job_id"], job.as_str(), "a short id names the job");
    assert!(refused(&peer.addr, &["status", "0000000"]).contains("no job held at"));
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(out_dir.join("notes.txt"), "mine").unwrap();
    let err = refused(&peer.addr, &["results", &job[..8], "--out", out_dir.to_str().unwrap()]);
    assert!(err.contains("is not empty") && err.contains("--force"), "{err}");
    let out = spare(&peer, &["results", &job[..8], "--out", out_dir.to_str().unwrap(), "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out_dir.join("1").exists() && out_dir.join("notes.txt").exists());
    let out = spare(&peer, &["submit", module, "--stdin-lines", lines, "--quorum", "3"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: quorum 3 needs 3 distinct peers") && err.contains("1 alive"), "{err}");
}
