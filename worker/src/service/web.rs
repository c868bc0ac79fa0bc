//! The status page (`spare peer --web ADDR`): plain HTML, CSS and JavaScript built into the
//! binary (no build step, no CDN), and `status.json`, which the page fetches every second: this
//! peer (CPUs given, tasks run today, controls in force, paused and why), the mesh, and the jobs
//! held here with their progress and who verified them. "Today" is the local calendar day; its
//! count is kept in the store (`store/runs.rs`), so it survives a restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

use crate::node::Node;

const INDEX: &str = include_str!("web/index.html");
const STYLE: &str = include_str!("web/style.css");
const SCRIPT: &str = include_str!("web/app.js");

/// Jobs shown, newest first.
const MAX_JOBS: usize = 50;
/// Results looked through per job to say who verified it.
const MAX_RESULTS_SCANNED: usize = 1000;

#[derive(Serialize)]
struct Status {
    peer: Me,
    controls: BTreeMap<&'static str, String>,
    mesh: Vec<MeshPeer>,
    jobs: Vec<JobRow>,
}

#[derive(Serialize)]
struct Me {
    id: String,
    addr: String,
    cpus: usize,
    running: usize,
    /// Replicas run on the local calendar day, and how many of them did not succeed.
    tasks_run_today: u64,
    tasks_not_ok_today: u64,
    task_memory: String,
    uptime: String,
    paused: Option<String>,
    /// Commits the store lost at start (a rollback, logged as an error), when it lost any.
    store_rolled_back_commits: Option<u64>,
}

#[derive(Serialize)]
struct MeshPeer {
    id: String,
    addr: String,
    state: &'static str,
    /// Whether other peers can dial it: reachable, unreachable or unknown.
    reachability: &'static str,
    cpus_total: u32,
    cpus_free: u32,
    me: bool,
}

#[derive(Serialize)]
struct JobRow {
    id: String,
    label: String,
    state: &'static str,
    total: u32,
    verified: u32,
    failed: u32,
    running: u32,
    verified_by: Vec<Verifier>,
}

#[derive(Serialize)]
struct Verifier {
    peer: String,
    tasks: u32,
}

/// A duration as a person reads it: humantime's "3days 4h" with word units spaced, "3 days 4h".
fn readable(d: std::time::Duration) -> String {
    let mut out = String::new();
    for (i, token) in humantime::format_duration(d).to_string().split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let digits = token.find(|c: char| !c.is_ascii_digit()).unwrap_or(token.len());
        let (n, unit) = token.split_at(digits);
        out.push_str(n);
        // "days", "months", "years" read as words; "h", "m", "s", "ms" stay as symbols.
        if unit.len() > 2 {
            out.push(' ');
        }
        out.push_str(unit);
    }
    out
}

fn status(node: &Node) -> Status {
    use spare_protocol::JobState;
    use spare_protocol::membership::MemberState;
    let c = node.config();
    let d = &c.donation;
    let (runs, not_ok) = node.store().runs_on(crate::node::donation::local_day()).unwrap_or_default();
    let size = |b: u64| crate::config::Size(b).to_string();
    let mut controls = BTreeMap::new();
    controls.insert("cpus", c.cpus.to_string());
    controls.insert("max_task_memory", size(c.caps.limits.memory_bytes));
    controls.insert("max_total_memory", if d.max_total_memory == u64::MAX { "no cap".into() } else { size(d.max_total_memory) });
    controls.insert("max_disk", d.max_disk.map_or("no cap".into(), size));
    controls.insert("retention", readable(d.retention));
    controls.insert("task_priority", format!("{:?}", d.task_priority).to_lowercase());
    controls.insert("max_other_load", d.max_other_load.map_or("never pause".into(), |l| format!("{:.0}% of the CPUs", l * 100.0)));
    controls.insert("hours", d.hours.map_or("all day".into(), |h| h.to_string()));
    let list = |n: usize| if n == 0 { "everyone".to_string() } else { format!("{n} on the list") };
    controls.insert("allow_submitters", list(d.allow_submitters.len()));
    controls.insert("allow_modules", if d.allow_modules.is_empty() { "every module".into() } else { format!("{} on the list", d.allow_modules.len()) });
    controls.insert("min_quorum", d.min_quorum.to_string());
    let me_id = node.peer_id();
    let mesh = node
        .peers()
        .into_iter()
        .map(|p| MeshPeer {
            id: p.peer.to_hex(),
            addr: p.addr,
            state: match p.state {
                MemberState::Alive => "alive",
                MemberState::Suspect => "suspect",
                MemberState::Dead => "dead",
            },
            reachability: match (p.peer == me_id, &p.advert) {
                (true, _) => match node.reachability() {
                    spare_protocol::reachability::Verdict::Reachable => "reachable",
                    spare_protocol::reachability::Verdict::Unreachable => "unreachable",
                    spare_protocol::reachability::Verdict::Unknown => "unknown",
                },
                (false, Some(a)) if a.reachable => "reachable",
                (false, Some(_)) => "unreachable",
                (false, None) => "unknown",
            },
            cpus_total: p.advert.as_ref().map_or(0, |a| a.cpus_total),
            cpus_free: p.advert.as_ref().map_or(0, |a| a.cpus_free),
            me: p.peer == me_id,
        })
        .collect();
    let mut views: Vec<_> = {
        let core = node.core();
        core.jobs.keys().filter_map(|id| core.coord().job(id)).collect()
    };
    views.sort_by_key(|v| std::cmp::Reverse((v.spec.submitted_at_ms, v.id)));
    let jobs = views
        .into_iter()
        .take(MAX_JOBS)
        .map(|v| {
            let mut by: BTreeMap<String, u32> = BTreeMap::new();
            for (_, r) in node.store().results(&v.id, 0, MAX_RESULTS_SCANNED).unwrap_or_default() {
                for p in r.verified_by {
                    *by.entry(p.to_hex()).or_default() += 1;
                }
            }
            JobRow {
                id: v.id.to_hex(),
                label: v.spec.label.clone(),
                state: match v.state {
                    JobState::Queued => "queued",
                    JobState::Running => "running",
                    JobState::Completed => "completed",
                    JobState::Failed => "failed",
                    JobState::Cancelled => "cancelled",
                },
                total: v.counts.total,
                verified: v.counts.verified,
                failed: v.counts.failed + v.counts.inconclusive,
                running: v.counts.running,
                verified_by: by.into_iter().map(|(peer, tasks)| Verifier { peer, tasks }).collect(),
            }
        })
        .collect();
    Status {
        peer: Me {
            id: me_id.to_hex(),
            addr: node.advertised_addr(),
            cpus: c.cpus,
            running: node.running(),
            tasks_run_today: runs,
            tasks_not_ok_today: not_ok,
            task_memory: size(node.task_memory_held()),
            uptime: readable(std::time::Duration::from_secs(node.uptime().as_secs())),
            paused: node.paused().map(|p| p.to_string()),
            store_rolled_back_commits: node.store().rollback().map(|r| r.lost()),
        },
        controls,
        mesh,
        jobs,
    }
}

/// Binds `addr` and serves the page until shutdown; returns the bound address and the task.
pub async fn serve(node: Node, addr: SocketAddr) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot serve the status page on {addr}"))?;
    let bound = listener.local_addr()?;
    let mut stop = node.shutdown_signal();
    let page = |body: &'static str, kind: &'static str| move || async move { ([(header::CONTENT_TYPE, kind)], body).into_response() };
    let app = Router::new()
        .route("/", get(page(INDEX, "text/html; charset=utf-8")))
        .route("/style.css", get(page(STYLE, "text/css; charset=utf-8")))
        .route("/app.js", get(page(SCRIPT, "text/javascript; charset=utf-8")))
        .route(
            "/status.json",
            get(move || {
                let node = node.clone();
                async move { axum::Json(status(&node)).into_response() }
            }),
        );
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!("status page server stopped: {e}");
        }
    });
    tracing::info!("serving the status page on http://{bound}/");
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations_read_as_words_where_units_are_words() {
        assert_eq!(super::readable(Duration::from_secs(3 * 86_400)), "3 days");
        assert_eq!(super::readable(Duration::from_secs(86_400 + 3_600 + 5)), "1 day 1h 5s");
        assert_eq!(super::readable(Duration::from_secs(42)), "42s");
        assert_eq!(super::readable(Duration::ZERO), "0s");
    }
}
