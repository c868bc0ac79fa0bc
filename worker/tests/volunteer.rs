//! `spare peer` as a volunteer runs it: settings from a TOML file, the environment and flags,
//! `--print-config` saying where each came from, bad settings refused at start by name, a
//! submitter not on the allow-list refused with a clear error, and task threads at idle
//! scheduling priority (read from /proc).

mod support;

use std::process::Command;

use support::*;

fn spare_peer(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(SPARE);
    cmd.arg("peer").args(args).env("SPARE_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_limited(cmd, COMMAND_LIMIT)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn print_config_shows_each_value_and_where_it_came_from() {
    let tmp = scratch();
    let file = tmp.path().join("spare.toml");
    std::fs::write(&file, "cpus = 3\nmax_disk = \"2 GiB\"\nretention = \"1day\"\nmin_quorum = 2\n").unwrap();
    let out = spare_peer(
        &["--config", file.to_str().unwrap(), "--print-config", "--cpus", "1"],
        &[("SPARE_MIN_QUORUM", "3"), ("SPARE_MAX_TOTAL_MEMORY", "512 MiB")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let line = |key: &str| printed.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_else(|| panic!("{key}:\n{printed}")).to_string();
    assert!(line("cpus").contains("= 1") && line("cpus").ends_with("# flag --cpus"), "{printed}");
    assert!(line("min_quorum").contains("= 3") && line("min_quorum").ends_with("# env SPARE_MIN_QUORUM"), "{printed}");
    assert!(line("max_total_memory").contains("\"512 MiB\""), "{printed}");
    assert!(line("max_disk").contains("\"2 GiB\"") && line("max_disk").contains(&format!("# file {}", file.display())), "{printed}");
    assert!(line("retention").contains("\"1day\""), "{printed}");
    assert!(line("peer_rate").ends_with("# default"), "{printed}");
    assert!(printed.contains("# hours = (unset)"), "{printed}");
}

#[test]
fn the_packaged_example_is_a_valid_configuration() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/spare.toml");
    let out = spare_peer(&["--config", example.to_str().unwrap(), "--print-config"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("# file"), "{}", text(&out.stdout));
}

#[test]
fn unknown_keys_and_bad_values_stop_the_peer_at_start_naming_the_key() {
    let tmp = scratch();
    let data = tmp.path().join("data");
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, &str, Env); 4] = [
        ("max_dsik = \"1 GiB\"\n", "max_dsik", &[]),
        ("max_disk = \"lots\"\n", "max_disk", &[]),
        ("max_other_load = 1.5\n", "max_other_load", &[]),
        ("", "SPARE_CPUS", &[("SPARE_CPUS", "many")]),
    ];
    for (i, (toml, key, env)) in cases.iter().enumerate() {
        let file = tmp.path().join(format!("{i}.toml"));
        std::fs::write(&file, toml).unwrap();
        let out = spare_peer(&["--config", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"], env);
        assert!(!out.status.success(), "{toml:?} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(key), "the error names {key}: {err}");
        assert!(out.stdout.is_empty(), "the peer never started: {}", text(&out.stdout));
    }
    assert!(!data.exists(), "nothing was created for a refused configuration");
}

#[test]
fn a_submitter_not_on_the_allow_list_is_refused_clearly() {
    let tmp = scratch();
    let peer = Peer::start(PeerSpec::new(&tmp.path().join("peer"), "127.0.0.1:0").args(&["--allow-submitters", "192.0.2.0/24,198.51.100.7"]));
    let inputs = tmp.path().join("inputs");
    primes_inputs(&inputs, 2, 1000);
    let out = peer.spare(&["submit", primes_wasm().to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "1"]);
    assert!(!out.status.success(), "the submission was accepted: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("allow_submitters") && err.contains("127.0.0.1"), "{err}");
}

#[test]
fn task_threads_run_at_idle_priority() {
    let tmp = scratch();
    let peer = Peer::start(PeerSpec::new(&tmp.path().join("peer"), "127.0.0.1:0").cpus(2));
    let tasks = std::path::PathBuf::from(format!("/proc/{}/task", peer.pid()));
    // The slot threads start and take their names as the sandbox comes up: look until both are
    // there (or the deadline passes), checking every thread each time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut sandbox_threads = 0;
        for t in std::fs::read_dir(&tasks).expect("/proc lists the peer's threads").flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // Fields after the command name; the policy is field 41 of stat, nice field 19.
            let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
            let (nice, policy) = (fields.get(16).copied().unwrap_or(""), fields.get(38).copied().unwrap_or(""));
            // Slot threads are `spare-sandbox-N`; the sandbox's epoch ticker is another thread.
            let slot = comm.trim().strip_prefix("spare-sandbox-").is_some_and(|n| n.parse::<u32>().is_ok());
            if slot {
                sandbox_threads += 1;
                assert!(policy == "5" || nice == "19", "{} runs with policy {policy}, nice {nice}", comm.trim());
            } else if comm.trim() == "spare" {
                assert_eq!(policy, "0", "the peer's main thread keeps its normal priority");
            }
        }
        if sandbox_threads == 2 || std::time::Instant::now() > deadline {
            assert_eq!(sandbox_threads, 2, "one sandbox thread per CPU given");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `systemd-analyze`, installed from Debian's `systemd` package when missing (CI's fresh image).
fn systemd_analyze() -> &'static str {
    const TOOL: &str = "systemd-analyze";
    if Command::new(TOOL).arg("--version").output().is_err() {
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        let ok = Command::new("apt-get").args(["install", "-y", "--no-install-recommends", "systemd"]).status();
        assert!(ok.is_ok_and(|s| s.success()), "installing systemd for {TOOL}");
    }
    TOOL
}

#[test]
fn the_packaged_service_unit_is_valid_and_agrees_with_the_example_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("packaging/spare.service")).unwrap();
    let tmp = scratch();
    // The unit as installed, but starting the binary under test.
    let path = tmp.path().join("spare.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/spare", SPARE)).unwrap();
    let out = Command::new(systemd_analyze()).arg("verify").arg(&path).output().expect("systemd-analyze runs");
    assert!(out.status.success() && out.stderr.is_empty(), "{}{}", text(&out.stdout), text(&out.stderr));
    for line in ["NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=spare", "DynamicUser=yes", "ExecStart=/usr/local/bin/spare peer --config /etc/spare/spare.toml"] {
        assert!(unit.lines().any(|l| l == line), "the unit has {line}");
    }
    // MemoryMax leaves the peer room above what its tasks may hold together.
    let max: u64 = unit.lines().find_map(|l| l.strip_prefix("MemoryMax=")?.strip_suffix('M')?.parse().ok()).expect("MemoryMax=NM");
    let example = spare_peer(&["--config", root.join("packaging/spare.toml").to_str().unwrap(), "--print-config"], &[]);
    let printed = text(&example.stdout);
    let total = printed.lines().find_map(|l| l.strip_prefix("max_total_memory = \"")?.split('"').next().map(String::from)).expect("max_total_memory");
    let total: spare_peer::config::Size = total.parse().unwrap();
    assert!(max << 20 >= total.bytes() + (256 << 20), "MemoryMax={max}M leaves too little above max_total_memory {total}");
}
