//! Helpers shared by the tests that run real `spare` processes through crashes and partitions
//! (`crash.rs`, `partition.rs`): a peer process that can be stopped, SIGKILLed and started again
//! on its data directory, optionally inside a network namespace; the `spare` command line run
//! against a peer with a time limit; polling with a deadline.
//!
//! Modelled on `mesh_cli.rs` (which keeps its own copy, so this module can grow without touching
//! it). Each peer's log (`SPARE_LOG=info`) goes to a file, so a test can tell when something
//! happened (a takeover, a peer declared down) and a failing test prints the end of every log.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use wait_timeout::ChildExt;

pub const SPARE: &str = env!("CARGO_BIN_EXE_spare");
/// How long any one condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// How long one `spare` command may run before it is killed and counted as failed.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(20);
/// What a peer logs (to its log file), unless `SPARE_TEST_LOG` says otherwise.
const LOG_FILTER: &str = "warn,spare_peer=info,spare_protocol=info";

/// A scratch directory for one test (data directories, logs, inputs, results), removed at the
/// end unless `SPARE_TEST_KEEP` is set (then its path is printed, to read the peers' logs).
pub fn scratch() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().expect("a temporary directory");
    if std::env::var_os("SPARE_TEST_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

pub fn primes_wasm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wasm/primes.wasm")
}

/// Writes one primes input per task (`LO HI`, ranges of `width` numbers from 0) into `dir`,
/// named so that file-name order is task order, and returns the ranges.
pub fn primes_inputs(dir: &Path, tasks: u64, width: u64) -> Vec<(u64, u64)> {
    std::fs::create_dir_all(dir).unwrap();
    let ranges: Vec<(u64, u64)> = (0..tasks).map(|i| (i * width, (i + 1) * width)).collect();
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        std::fs::write(dir.join(format!("{i:05}.txt")), format!("{lo} {hi}\n")).unwrap();
    }
    ranges
}

/// The output the primes module must give for a range.
pub fn primes_output(lo: u64, hi: u64) -> String {
    format!("{}\n", spare_example_primes::count_primes(lo, hi))
}

/// How to start a peer.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    pub data: PathBuf,
    pub listen: String,
    pub bootstrap: Option<String>,
    pub cpus: usize,
    /// Network namespace to run in (`ip netns exec NS spare peer …`).
    pub netns: Option<String>,
    /// More flags of `spare peer`.
    pub args: Vec<String>,
    /// `SPARE_LOG` of the peer (default: the suite's filter, or `SPARE_TEST_LOG`).
    pub log: Option<String>,
    /// The `spare` executable the peer runs (default: this package's).
    pub binary: Option<PathBuf>,
}

impl PeerSpec {
    pub fn new(data: &Path, listen: &str) -> PeerSpec {
        PeerSpec {
            data: data.to_path_buf(),
            listen: listen.to_string(),
            bootstrap: None,
            cpus: 1,
            netns: None,
            args: Vec::new(),
            log: None,
            binary: None,
        }
    }

    pub fn binary(mut self, path: &Path) -> PeerSpec {
        self.binary = Some(path.to_path_buf());
        self
    }

    pub fn bootstrap(mut self, addr: &str) -> PeerSpec {
        self.bootstrap = Some(addr.to_string());
        self
    }

    pub fn cpus(mut self, n: usize) -> PeerSpec {
        self.cpus = n;
        self
    }

    /// Sets the peer's `SPARE_LOG`.
    pub fn log(mut self, filter: &str) -> PeerSpec {
        self.log = Some(filter.to_string());
        self
    }

    /// Adds flags to `spare peer`.
    pub fn args(mut self, args: &[&str]) -> PeerSpec {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn netns(mut self, ns: &str) -> PeerSpec {
        self.netns = Some(ns.to_string());
        self
    }

    /// The log file of a peer on this data directory (kept beside it, appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        let mut name = self.data.file_name().expect("data dir has a name").to_os_string();
        name.push(".log");
        self.data.with_file_name(name)
    }
}

/// A `Command` for `program`, run inside `netns` if given.
pub fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// A running `spare peer`: killed (SIGKILL) if dropped still running.
pub struct Peer {
    pub spec: PeerSpec,
    child: Child,
    /// The address it listens on, as it printed it.
    pub addr: String,
    /// Its PeerId, as it printed it.
    pub peer_id: String,
    /// When it printed that it listens.
    pub started: Instant,
    /// Kept open so the peer never writes to a closed pipe.
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Peer {
    /// Starts `spare peer` and returns once it has printed its id and the address it listens on
    /// (its first stdout line: `spare peer ID listening on ADDR (…)`).
    pub fn start(spec: PeerSpec) -> Peer {
        let log = File::options().create(true).append(true).open(spec.log_path()).expect("open the peer's log");
        let binary = spec.binary.as_ref().map_or(SPARE.to_string(), |b| b.display().to_string());
        let mut cmd = command_in(spec.netns.as_deref(), &binary);
        cmd.args(["peer", "--listen", &spec.listen, "--cpus", &spec.cpus.to_string(), "--data-dir"]).arg(&spec.data);
        if let Some(b) = &spec.bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        cmd.args(&spec.args);
        let mut child = cmd
            .env("SPARE_LOG", spec.log.clone().or_else(|| std::env::var("SPARE_TEST_LOG").ok()).unwrap_or_else(|| LOG_FILTER.to_string()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spare peer starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        // Read the first line on a thread, so a peer that never prints fails the test instead
        // of hanging it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut line = String::new();
            let r = stdout.read_line(&mut line).map(|_| line);
            let _ = tx.send((r, stdout));
        });
        let (line, stdout) = match rx.recv_timeout(DEADLINE) {
            Ok((Ok(line), stdout)) => (line, stdout),
            Ok((Err(e), _)) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("reading the first line of spare peer on {}: {e}\n{}", spec.listen, log_tail(&spec.log_path(), 30));
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("spare peer on {} printed nothing in {DEADLINE:?}\n{}", spec.listen, log_tail(&spec.log_path(), 30));
            }
        };
        let parsed = line.strip_prefix("spare peer ").and_then(|rest| {
            let (id, rest) = rest.split_once(' ')?;
            let addr = rest.strip_prefix("listening on ")?.split_whitespace().next()?;
            Some((id.to_string(), addr.to_string()))
        });
        let Some((peer_id, addr)) = parsed else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "spare peer on {} did not say who it is and where it listens: {line:?}\n{}",
                spec.listen,
                log_tail(&spec.log_path(), 30)
            );
        };
        assert_eq!(peer_id.len(), 64, "a PeerId is 64 hex characters: {line:?}");
        assert!(addr.starts_with(spec.listen.trim_end_matches(":0")), "{} -> {addr}", spec.listen);
        Peer { spec, child, addr, peer_id, started: Instant::now(), _stdout: Some(stdout) }
    }

    /// The process id (of `spare peer` itself: `ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill9(&mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        let sent = Command::new("kill").args(["-KILL", &pid]).status().expect("kill runs");
        assert!(sent.success(), "SIGKILL sent to {pid}");
        self.wait_exit("SIGKILL")
    }

    /// SIGTERM, and waits for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM sent to {pid}");
        self.wait_exit("SIGTERM")
    }

    fn wait_exit(&mut self, after: &str) -> ExitStatus {
        match self.child.wait_timeout(DEADLINE).expect("wait for the peer") {
            Some(status) => status,
            None => panic!("peer {} did not exit within {DEADLINE:?} after {after}", self.addr),
        }
    }

    /// Runs `spare <args> --peer <this peer>` (inside its namespace, if it has one).
    pub fn spare(&self, args: &[&str]) -> Output {
        let mut cmd = command_in(self.spec.netns.as_deref(), SPARE);
        // The test's own client config (key, known peers), never the user's: peers of another
        // run reuse these addresses with other identities.
        let config = self.spec.data.parent().map_or_else(|| self.spec.data.join("client-config"), |d| d.join("client-config"));
        cmd.args(args).args(["--peer", &self.addr]).env("SPARE_LOG", "warn").env("XDG_CONFIG_HOME", config).env_remove("SPARE_IDENTITY");
        run_limited(cmd, COMMAND_LIMIT)
    }

    /// `spare status JOB --tasks --json` at this peer.
    pub fn status(&self, job: &str) -> Result<Value, String> {
        try_json_of("spare status --tasks --json", &self.spare(&["status", job, "--tasks", "--json"]))
    }

    /// `spare peers --json` at this peer.
    pub fn peers(&self) -> Result<Vec<Value>, String> {
        let v = try_json_of("spare peers --json", &self.spare(&["peers", "--json"]))?;
        v.as_array().cloned().ok_or_else(|| format!("not an array: {v}"))
    }

    /// The end of this peer's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.spec.log_path(), lines)
    }

    /// The lines of this peer's log (all its runs on this data directory) that contain `what`.
    pub fn log_lines(&self, what: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.spec.log_path()).unwrap_or_default();
        text.lines().filter(|l| l.contains(what)).map(String::from).collect()
    }

    /// When this peer first logged a line containing `what` at or after `since` (Unix ms).
    pub fn logged_at(&self, what: &str, since: u64) -> Option<u64> {
        self.log_lines(what).iter().filter_map(|l| log_time_ms(l)).find(|t| *t >= since)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- log of peer {} ({}) ----\n{}", self.addr, &self.peer_id[..8], self.log_tail(40));
        }
    }
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The time of a log line (`2026-01-02T03:04:05.678901Z  INFO …`, UTC), in Unix ms.
pub fn log_time_ms(line: &str) -> Option<u64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min, sec) = (t.next()?.parse::<u64>().ok()?, t.next()?.parse::<u64>().ok()?, t.next()?.parse::<f64>().ok()?);
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(((days * 86_400 + h * 3_600 + min * 60) as f64 * 1000.0 + sec * 1000.0) as u64)
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd` to its end, or kills it after `limit` (its output then says so on stderr and its
/// status is a failure).
pub fn run_limited(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spare runs");
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let (status, killed) = match child.wait_timeout(limit).expect("wait for spare") {
        Some(s) => (s, false),
        None => {
            let _ = child.kill();
            (child.wait().expect("wait for spare"), true)
        }
    };
    let stdout = out.join().unwrap_or_default();
    let mut stderr = err.join().unwrap_or_default();
    if killed {
        stderr.extend_from_slice(format!("\n[killed after {limit:?}: {cmd:?}]").as_bytes());
    }
    Output { status, stdout, stderr }
}

/// The JSON a successful command printed, or why there is none.
pub fn try_json_of(what: &str, out: &Output) -> Result<Value, String> {
    if !out.status.success() {
        return Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{what}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// The JSON a command printed; fails the test if it failed.
pub fn json_of(what: &str, out: &Output) -> Value {
    try_json_of(what, out).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `check` until it gives `Ok`, failing after `limit` with the last thing seen.
pub fn eventually_within<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}; last: {last}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`eventually_within`] [`DEADLINE`].
pub fn eventually<T>(what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    eventually_within(DEADLINE, what, check)
}

/// Waits until every peer lists all of `peers` alive (by address).
pub fn wait_for_mesh(peers: &[&Peer]) {
    let want: std::collections::BTreeSet<&str> = peers.iter().map(|p| p.addr.as_str()).collect();
    for p in peers {
        eventually(&format!("{} to see the whole mesh alive", p.addr), || {
            let list = p.peers()?;
            let alive: std::collections::BTreeSet<&str> =
                list.iter().filter(|e| e["state"] == "alive").filter_map(|e| e["addr"].as_str()).collect();
            if alive == want { Ok(()) } else { Err(format!("{list:?}")) }
        });
    }
}

/// Tasks of a `status --tasks --json` answer, by index.
pub fn tasks_of(status: &Value) -> BTreeMap<u64, Value> {
    status["task_list"]
        .as_array()
        .map(|l| l.iter().map(|t| (t["index"].as_u64().expect("task index"), t.clone())).collect())
        .unwrap_or_default()
}

/// How many tasks a status counts as verified.
pub fn verified_count(status: &Value) -> u64 {
    status["tasks"]["verified"].as_u64().unwrap_or(0)
}

/// The peers that verified a task (as listed in `status --tasks --json`).
pub fn verified_by(task: &Value) -> Vec<String> {
    task["verified_by"].as_array().map(|l| l.iter().filter_map(|p| p.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// The files `spare results --out DIR` wrote, by task index.
pub fn read_results(dir: &Path) -> BTreeMap<u64, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        let index: u64 = name.parse().unwrap_or_else(|_| panic!("unexpected file {name} in {}", dir.display()));
        out.insert(index, std::fs::read(e.path()).unwrap());
    }
    out
}

/// `program` on this machine, installed with apt (package `package`) when missing.
pub fn ensure_tool(program: &str, package: &str) {
    if Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success()) {
        return;
    }
    let install = || Command::new("apt-get").args(["install", "-y", "-q", package]).env("DEBIAN_FRONTEND", "noninteractive").output();
    let mut out = install().expect("apt-get runs");
    if !out.status.success() {
        // A fresh machine has no package lists yet.
        let _ = Command::new("apt-get").args(["update", "-q"]).output();
        out = install().expect("apt-get runs");
    }
    assert!(out.status.success(), "installing {package}: {}", String::from_utf8_lossy(&out.stderr));
}
