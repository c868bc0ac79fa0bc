//! `spare new`: the project it writes builds with scripts/build-guests' toolchain (build.sh
//! chooses it the same way) and its task runs on a real peer unchanged, failures explained.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

/// How long building the new task may take: a first build with Debian's toolchain builds std.
const BUILD_LIMIT: Duration = Duration::from_secs(600);

#[test]
fn a_new_task_builds_and_runs_on_a_peer() {
    let tmp = scratch();
    let project = tmp.path().join("word-count");
    let mut new = Command::new(SPARE);
    new.arg("new").arg(&project);
    let out = run_limited(new, COMMAND_LIMIT);
    assert!(out.status.success(), "spare new: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("./build.sh"));

    // The std that Debian's toolchain builds is kept under the workspace's target directory, so
    // only the first run pays for it.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-template");
    let mut build = Command::new(project.join("build.sh"));
    build.env("CARGO_TARGET_DIR", &target);
    let out = run_limited(build, BUILD_LIMIT);
    assert!(out.status.success(), "build.sh: {}", String::from_utf8_lossy(&out.stderr));
    let wasm = project.join("word-count.wasm");
    assert!(std::fs::read(&wasm).expect("build.sh wrote word-count.wasm").starts_with(b"\0asm"));

    let peer = Peer::start(PeerSpec::new(&tmp.path().join("peer"), "127.0.0.1:0").cpus(2));
    let (good, empty) = (tmp.path().join("good.txt"), tmp.path().join("empty.txt"));
    std::fs::write(&good, "one two\nthree\n").unwrap();
    std::fs::write(&empty, "  \n").unwrap();
    let (wasm, good, empty) = (wasm.to_str().unwrap(), good.to_str().unwrap(), empty.to_str().unwrap());
    // A failed task makes `submit --wait` exit non-zero; its status is printed all the same.
    let out = peer.spare(&["submit", wasm, "--input", good, "--input", empty, "--quorum", "1", "--wait", "--json"]);
    assert!(!out.status.success(), "a task failed: {out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!((status["tasks"]["verified"].as_u64(), status["tasks"]["failed"].as_u64()), (Some(1), Some(1)), "{status}");
    let job = status["job_id"].as_str().expect("job_id");

    let results = tmp.path().join("out");
    let out = peer.spare(&["results", job, "--out", results.to_str().unwrap()]);
    assert!(!out.status.success(), "results names the task without a verified result");
    assert_eq!(read_results(&results).get(&0).map(Vec::as_slice), Some(&b"2 3 14\n"[..]));
    let out = peer.spare(&["logs", job, "1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("empty input: give some text"), "{out:?}");
}
