//! A volunteer behind NAT, for real: real `spare peer` processes in network namespaces, one public
//! and one behind a masquerading router (nftables) that accepts no inbound connection. The peer
//! behind it learns by dial-back that nobody can dial it, attaches to the public peer as its
//! relay, shows alive and unreachable there, and verifies a quorum-2 job with it; it refuses a
//! submission (it does not coordinate). A second peer behind the same NAT then joins: the two
//! reach each other through the public peer (gossip for an unreachable peer goes through its
//! relay), and once the first stops the others declare it dead.
//!
//! The namespaces are this test's own: `pub` (the public peer, 10.88.1.1/24), `rtr` (the router:
//! `wan` 10.88.1.254/24 towards `pub`, `lan` 192.168.88.1/24 towards `nat`, forwarding, masquerade
//! out of `wan`, new connections in from `wan` dropped) and `nat` (the peers behind it,
//! 192.168.88.2 and .3/24, default route through the router). Nothing is added to the machine's
//! own namespace. Needs root; installs nftables and curl with apt when missing (iproute2 likewise).
//!
//! A second test gives a peer two links, its default route leaving by the one it does not advertise:
//! it asks for dial-backs from the address it advertises, and is found reachable there.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use support::*;

const PORT: u16 = 7070;
const PUBLIC: &str = "10.88.1.1";
const ROUTER_WAN: &str = "10.88.1.254";
const BEHIND: &str = "192.168.88.2";
const BEHIND_TOO: &str = "192.168.88.3";
/// Where the public peer serves metrics.
const METRICS: &str = "10.88.1.1:9187";

/// The router's rules: masquerade what leaves by `wan`, forward only what `lan` started (and its
/// replies), and take no new connection arriving on `wan`.
const RULES: &str = r#"
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
  }
}
table ip filter {
  chain forwarding {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
  }
  chain incoming {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state new drop
  }
}
"#;

/// Runs a command, failing the test with what it said when it fails.
fn must(program: &str, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "`{program} {}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
}

/// The three namespaces; deleted when dropped, also when the test panics.
struct Net {
    public: String,
    router: String,
    behind: String,
}

impl Net {
    fn create() -> Net {
        ensure_tool("ip", "iproute2");
        ensure_tool("nft", "nftables");
        ensure_tool("curl", "curl");
        let tag = std::process::id();
        let net = Net { public: format!("spnat{tag}-pub"), router: format!("spnat{tag}-rtr"), behind: format!("spnat{tag}-nat") };
        for ns in [&net.public, &net.router, &net.behind] {
            must("ip", &["netns", "add", ns], None);
            must("ip", &["-n", ns, "link", "set", "lo", "up"], None);
        }
        let (p, r, b) = (net.public.as_str(), net.router.as_str(), net.behind.as_str());
        // Router to the public side, and to the side behind it.
        must("ip", &["-n", r, "link", "add", "wan", "type", "veth", "peer", "name", "eth0", "netns", p], None);
        must("ip", &["-n", r, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", b], None);
        for (ns, dev, addr) in [(r, "wan", "10.88.1.254/24"), (r, "lan", "192.168.88.1/24"), (p, "eth0", "10.88.1.1/24"), (b, "eth0", "192.168.88.2/24")] {
            must("ip", &["-n", ns, "addr", "add", addr, "dev", dev], None);
            must("ip", &["-n", ns, "link", "set", dev, "up"], None);
        }
        must("ip", &["-n", b, "addr", "add", "192.168.88.3/24", "dev", "eth0"], None);
        must("ip", &["-n", b, "route", "add", "default", "via", "192.168.88.1"], None);
        must("ip", &["netns", "exec", r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], None);
        must("ip", &["netns", "exec", r, "nft", "-f", "-"], Some(RULES));
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.public, &self.router, &self.behind] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A counter the public peer serves (its value; 0 when absent).
fn counter(net: &Net, name: &str) -> Result<f64, String> {
    let out = command_in(Some(&net.public), "curl").args(["-sS", "--max-time", "5", &format!("http://{METRICS}/metrics")]).output();
    let out = out.map_err(|e| format!("curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .unwrap_or(0.0))
}

/// `spare peers --json` at `p`, as (peer id → (state, reachability)).
fn seen_by(p: &Peer) -> Result<Vec<(String, String, String)>, String> {
    Ok(p.peers()?
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("peer_id"), s("state"), s("reachability"))
        })
        .collect())
}

#[test]
fn a_peer_behind_nat_joins_through_a_relay_and_verifies_a_quorum_2_job() {
    let net = Net::create();
    let tmp = scratch();

    // The NAT takes no connection from outside: a dial from the public side to the router's
    // address, at the port the peer behind it listens on, gets no answer.
    let probe = run_limited(
        {
            let mut c = command_in(Some(&net.public), "timeout");
            c.args(["3", "bash", "-c", &format!("exec 3<>/dev/tcp/{ROUTER_WAN}/{PORT}")]);
            c
        },
        COMMAND_LIMIT,
    );
    assert!(!probe.status.success(), "the NAT must refuse inbound connections: {probe:?}");

    let public = Peer::start(
        PeerSpec::new(&tmp.path().join("public"), &format!("{PUBLIC}:{PORT}")).netns(&net.public).cpus(2).args(&["--metrics", METRICS]),
    );
    let behind = Peer::start(
        PeerSpec::new(&tmp.path().join("behind"), &format!("{BEHIND}:{PORT}"))
            .netns(&net.behind)
            .cpus(2)
            .bootstrap(&public.addr),
    );

    // At the public peer: the peer behind the NAT is alive and unreachable, reached through its
    // stream (the public peer is its relay).
    eventually("the public peer to list the peer behind NAT alive and unreachable", || {
        let seen = seen_by(&public)?;
        let row = seen.iter().find(|(id, _, _)| *id == behind.peer_id).cloned();
        match row {
            Some((_, state, reach)) if state == "alive" && reach == "unreachable" => Ok(()),
            other => Err(format!("{other:?} in {seen:?}")),
        }
    });
    eventually("the peer behind NAT to list the public peer alive", || {
        let seen = seen_by(&behind)?;
        let me = seen.iter().find(|(id, _, _)| *id == behind.peer_id).map(|r| r.2.clone());
        let public_row = seen.iter().find(|(id, _, _)| *id == public.peer_id).map(|r| r.1.clone());
        if me.as_deref() == Some("unreachable") && public_row.as_deref() == Some("alive") {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    assert!(!behind.log_lines("reachability: unreachable").is_empty(), "the peer behind NAT logs its verdict");
    assert!(!public.log_lines("an unreachable peer attached to this relay").is_empty(), "the public peer relays for it");

    // A quorum-2 job at the public peer: every task verified by both (the peer behind NAT leases,
    // fetches the module and reports over connections it opened).
    let inputs = tmp.path().join("inputs");
    let ranges = primes_inputs(&inputs, 8, 20_000);
    let module = primes_wasm();
    let v = json_of(
        "spare submit",
        &public.spare(&["submit", module.to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--quorum", "2", "--json"]),
    );
    let job = v["job_id"].as_str().expect("job_id").to_string();
    let status = eventually("the job to complete", || {
        let s = public.status(&job)?;
        if s["state"] == "completed" { Ok(s) } else { Err(format!("{} {}", s["state"], s["tasks"])) }
    });
    let both: BTreeSet<String> = [public.peer_id.clone(), behind.peer_id.clone()].into();
    let tasks = tasks_of(&status);
    assert_eq!(tasks.len(), ranges.len());
    for (i, t) in &tasks {
        assert_eq!(t["state"], "verified", "task {i}: {t}");
        let by: BTreeSet<String> = verified_by(t).into_iter().collect();
        assert_eq!(by, both, "task {i} verified by both peers: {t}");
        let (lo, hi) = ranges[*i as usize];
        let hash = blake3::hash(primes_output(lo, hi).as_bytes()).to_hex();
        assert_eq!(t["output_hash"].as_str(), Some(hash.as_str()), "task {i}: {t}");
    }

    // The peer behind NAT coordinates nothing: a submission there is refused, naming why.
    let out = behind.spare(&["submit", module.to_str().unwrap(), "--inputs-dir", inputs.to_str().unwrap(), "--json"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("unreachable"), "a submission behind NAT is refused: {said}");
    assert!(said.contains(&public.addr), "the refusal names a reachable peer: {said}");

    // A second peer behind the same NAT: each of the two is unreachable, so each sends its gossip
    // for the other through the public peer, their relay (and never dials the other, whose
    // advertised address only its own network could reach).
    let too = Peer::start(
        PeerSpec::new(&tmp.path().join("behind-too"), &format!("{BEHIND_TOO}:{PORT}")).netns(&net.behind).bootstrap(&public.addr),
    );
    for (p, other) in [(&public, &too), (&behind, &too), (&too, &behind)] {
        eventually(&format!("{} to list {} alive and unreachable", p.addr, other.addr), || {
            let seen = seen_by(p)?;
            match seen.iter().find(|(id, _, _)| *id == other.peer_id) {
                Some((_, state, reach)) if state == "alive" && reach == "unreachable" => Ok(()),
                row => Err(format!("{row:?} in {seen:?}")),
            }
        });
    }
    eventually("gossip between the two to pass through the public peer", || {
        let n = counter(&net, "spare_gossip_relayed_total")?;
        if n > 0.0 { Ok(()) } else { Err(format!("{n} relayed")) }
    });

    // Liveness is judged through the streams: once the first stops, the others declare it dead.
    let mut behind = behind;
    let stopped = behind.stop();
    assert!(stopped.success(), "the peer behind NAT stops cleanly: {stopped}");
    for p in [&public, &too] {
        eventually(&format!("{} to declare the stopped peer dead", p.addr), || {
            let seen = seen_by(p)?;
            match seen.iter().find(|(id, _, _)| *id == behind.peer_id) {
                Some((_, state, _)) if state == "alive" || state == "suspect" => Err(format!("{seen:?}")),
                _ => Ok(()),
            }
        });
    }
    drop(too);
    drop(public);
    drop(net);
}

/// The namespaces of the multi-homed test; deleted when dropped, also when the test panics.
struct Homes {
    hub: String,
    public: String,
    multi: String,
}

impl Homes {
    /// `hub` routes between `public` (10.87.1.0/24: the public peers at .1 and .2) and `multi`,
    /// which has two links to it: `eth0` 10.87.2.2/24, its default route, and `eth1` 10.87.3.2/24,
    /// the address its peer advertises. Reverse-path filtering is off, since `multi` answers
    /// from one address out of the other link.
    fn create() -> Homes {
        ensure_tool("ip", "iproute2");
        let tag = std::process::id();
        let h = Homes { hub: format!("sphome{tag}-hub"), public: format!("sphome{tag}-pub"), multi: format!("sphome{tag}-mh") };
        for ns in [&h.hub, &h.public, &h.multi] {
            must("ip", &["netns", "add", ns], None);
            must("ip", &["-n", ns, "link", "set", "lo", "up"], None);
            for key in ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"] {
                must("ip", &["netns", "exec", ns, "sysctl", "-q", "-w", key], None);
            }
        }
        let (hub, p, m) = (h.hub.as_str(), h.public.as_str(), h.multi.as_str());
        must("ip", &["-n", hub, "link", "add", "hp0", "type", "veth", "peer", "name", "eth0", "netns", p], None);
        must("ip", &["-n", hub, "link", "add", "hm0", "type", "veth", "peer", "name", "eth0", "netns", m], None);
        must("ip", &["-n", hub, "link", "add", "hm1", "type", "veth", "peer", "name", "eth1", "netns", m], None);
        for (ns, dev, addr) in [
            (hub, "hp0", "10.87.1.254/24"),
            (hub, "hm0", "10.87.2.254/24"),
            (hub, "hm1", "10.87.3.254/24"),
            (p, "eth0", "10.87.1.1/24"),
            (m, "eth0", "10.87.2.2/24"),
            (m, "eth1", "10.87.3.2/24"),
        ] {
            must("ip", &["-n", ns, "addr", "add", addr, "dev", dev], None);
            must("ip", &["-n", ns, "link", "set", dev, "up"], None);
        }
        must("ip", &["-n", p, "addr", "add", "10.87.1.2/24", "dev", "eth0"], None);
        must("ip", &["-n", p, "route", "add", "default", "via", "10.87.1.254"], None);
        must("ip", &["-n", m, "route", "add", "default", "via", "10.87.2.254"], None);
        must("ip", &["netns", "exec", hub, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], None);
        h
    }
}

impl Drop for Homes {
    fn drop(&mut self) {
        for ns in [&self.hub, &self.public, &self.multi] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A volunteer's machine with two links whose default route leaves by the one it does not
/// advertise: other peers dial back the IP a question comes from, so the peer asks from the
/// address it advertises, and is found reachable there (it was judged unreachable before).
#[test]
fn a_multi_homed_peer_is_dialed_back_at_the_address_it_advertises() {
    let homes = Homes::create();
    let tmp = scratch();
    let first = Peer::start(PeerSpec::new(&tmp.path().join("first"), &format!("10.87.1.1:{PORT}")).netns(&homes.public));
    let second =
        Peer::start(PeerSpec::new(&tmp.path().join("second"), &format!("10.87.1.2:{PORT}")).netns(&homes.public).bootstrap(&first.addr));
    let advertised = format!("10.87.3.2:{PORT}");
    let multi = Peer::start(
        PeerSpec::new(&tmp.path().join("multi"), &format!("0.0.0.0:{PORT}"))
            .netns(&homes.multi)
            .bootstrap(&first.addr)
            .args(&["--advertise", &advertised]),
    );
    // Its first verdict (an advert says reachable until one), from the two public peers' dial-backs.
    let verdict = eventually_within(std::time::Duration::from_secs(90), "the multi-homed peer's reachability verdict", || {
        let said = multi.log_lines("reachability: ");
        said.iter().find(|l| l.contains("reachability: reachable") || l.contains("reachability: unreachable")).cloned().ok_or(format!("{said:?}"))
    });
    assert!(verdict.contains("reachability: reachable"), "dialed back at the address it advertises: {verdict}");
    for p in [&first, &second] {
        eventually(&format!("{} to list the multi-homed peer alive and reachable", p.addr), || {
            let seen = seen_by(p)?;
            match seen.iter().find(|(id, _, _)| *id == multi.peer_id) {
                Some((_, state, reach)) if state == "alive" && reach == "reachable" => Ok(()),
                row => Err(format!("{row:?} in {seen:?}")),
            }
        });
    }
    drop(multi);
    drop(second);
    drop(first);
    drop(homes);
}
