//! The status page in a real browser: three `spare peer` processes, one serving `--web`,
//! a job submitted, and headless Chromium (Debian's `chromium`, installed when missing) loading
//! the page until the job shows as completed with its verifiers and the tasks this peer ran
//! today, the whole mesh alive. A
//! screenshot is saved as `target/status-page.png` for a person to look at.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// Debian's Chromium, installed when missing.
fn chromium() -> &'static str {
    const BROWSER: &str = "chromium";
    if Command::new(BROWSER).arg("--version").output().is_err() {
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        let ok = Command::new("apt-get").args(["install", "-y", "--no-install-recommends", BROWSER]).env("DEBIAN_FRONTEND", "noninteractive").status();
        assert!(ok.is_ok_and(|s| s.success()), "installing {BROWSER}");
    }
    BROWSER
}

/// Chromium, headless, as root (hence no sandbox), running the page's script for a while.
fn browser(profile: &Path) -> Command {
    let mut c = Command::new(chromium());
    c.args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,900", "--virtual-time-budget=3000"])
        .arg(format!("--user-data-dir={}", profile.display()));
    c
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from)
}

#[test]
fn the_status_page_shows_a_job_reach_completed_across_three_peers() {
    let tmp = scratch();
    let first = Peer::start(PeerSpec::new(&tmp.path().join("p1"), "127.0.0.1:0").args(&["--web", "127.0.0.1:0"]));
    let second = Peer::start(PeerSpec::new(&tmp.path().join("p2"), "127.0.0.2:0").bootstrap(&first.addr));
    wait_for_mesh(&[&first, &second]);
    let line = eventually("the status page's address", || first.log_lines("serving the status page on http://").pop().ok_or_else(|| first.log_tail(5)));
    let url = line.split("on ").last().expect("a URL").trim().to_string();

    // Quorum 3 with two peers: every task runs twice and waits for a third peer.
    let inputs = tmp.path().join("inputs");
    primes_inputs(&inputs, 12, 20_000);
    let out = first.spare(&["submit", primes_wasm().to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "3", "--json"]);
    let job = json_of("submit", &out)["job_id"].as_str().expect("job_id").to_string();

    // Load the page as a person would, again and again, reading the job's row.
    let profile = tmp.path().join("chromium");
    let load = |want: &str| {
        let out = browser(&profile).arg("--dump-dom").arg(&url).output().map_err(|e| e.to_string())?;
        let dom = String::from_utf8_lossy(&out.stdout).to_string();
        let row = dom.split(&format!("data-job=\"{job}\"")).nth(1).ok_or_else(|| format!("no row for the job: {}", &dom[..dom.len().min(400)]))?;
        let state = row.split("data-state=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("").to_string();
        if state == want { Ok(dom) } else { Err(format!("state {state}")) }
    };
    let waiting = eventually("the page to show the job running", || load("running"));
    assert!(waiting.contains("0 verified, 0 failed"), "nothing is verified before a third peer comes");
    let third = Peer::start(PeerSpec::new(&tmp.path().join("p3"), "127.0.0.3:0").bootstrap(&first.addr));
    wait_for_mesh(&[&first, &second, &third]);
    let dom = eventually("the page to show the job completed", || load("completed"));
    assert!(dom.contains("12 verified, 0 failed, 0 running of 12"), "progress counts the tasks");
    assert_eq!(dom.matches("badge alive").count(), 3, "the page lists the three peers alive");
    let verified_by = dom.split(&format!("data-job=\"{job}\"")).nth(1).unwrap_or("");
    assert!(verified_by.contains('×'), "the row says who verified the tasks");
    // Quorum 3 on three peers: this peer ran each of the 12 tasks once, today.
    eventually("the page to count today's tasks", || {
        let dom = load("completed")?;
        let today = "<dt>tasks run today</dt><dd>12 (0 did not succeed)</dd>";
        if dom.contains(today) { Ok(()) } else { Err(dom.split("<dt>tasks run").nth(1).unwrap_or("no count").chars().take(80).collect::<String>()) }
    });

    let shot = target_dir().join("status-page.png");
    let out = browser(&profile).arg(format!("--screenshot={}", shot.display())).arg(&url).output().expect("chromium runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot at {}", shot.display());
    eprintln!("screenshot: {}", shot.display());
}
