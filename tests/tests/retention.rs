//! Retention on a peer in this process: an ended job goes once it has been over for
//! `retention`, with the blobs only it named, while a running job stays; at the `max_disk` cap
//! the peer pauses, keeps an ended job whose results nobody fetched, and removes it (oldest
//! first) once they are fetched, then resumes; the fetch is remembered across a restart.

use std::time::Duration;

use futures::StreamExt;
use spare_peer::node::donation::Pause;
use spare_sdk::{Job, JobState};
use spare_tests::*;

/// Whether the peer stores blob `id`.
async fn blob_exists(peer: &spare_peer::NodeHandle, id: &str) -> bool {
    peer.node.store().blobs().has(&id.parse().expect("blob id")).await
}

async fn gone(client: &spare_sdk::Client, id: &spare_sdk::JobId) -> bool {
    client.status(id).await.is_err_and(|e| e.code() == Some(tonic::Code::NotFound))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_go_after_retention_and_running_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 2);
    c.donation.retention = Duration::from_millis(500);
    c.donation.sample_every = Duration::from_millis(50);
    let peer = spare_peer::Node::start(c).await.expect("peer starts");
    let client = client(&peer).await;
    // Quorum 2 on a lone peer: runs once per task and then waits for ever.
    let running = Job::builder().module_bytes(guest("primes")).range(0..2_000, 1_000).quorum(2).build().unwrap();
    let running_id = client.submit(&running).await.unwrap();
    let ended = Job::builder().module_bytes(guest("sha256")).tasks((0..3).map(|i| format!("10\nseed {i}").into_bytes())).quorum(1).build().unwrap();
    let ended_id = client.submit(&ended).await.unwrap();
    assert_eq!(within("job end", client.wait(&ended_id)).await.unwrap().state, JobState::Completed);
    eventually("the ended job to be removed", || async { gone(&client, &ended_id).await.then_some(()) }).await;
    // The same pass then removes the module only the removed job named.
    eventually("the removed job's module to go", || async { (!blob_exists(&peer, &ended.module_id()).await).then_some(()) }).await;
    // With its compiled form; the running job's stays.
    let compiled = |module: String| {
        let modules = dir.path().join("modules");
        std::fs::read_dir(&modules).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(&format!("{module}-")))
    };
    assert!(!compiled(ended.module_id()), "the removed module's compiled form is gone");
    assert!(compiled(running.module_id()), "the running job's compiled module stays");
    let s = client.status(&running_id).await.expect("the running job stays");
    assert_eq!(s.state, JobState::Running);
    assert!(blob_exists(&peer, &running.module_id()).await, "a running job's module stays");
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_disk_cap_fetched_jobs_go_first_and_work_resumes() {
    let dir = tempfile::tempdir().unwrap();
    // A first run measures what the data directory holds with the module compiled.
    let warm = Job::builder().module_bytes(guest("sha256")).task(b"1\nwarm".to_vec()).quorum(1).build().unwrap();
    let base = {
        let peer = start(dir.path(), 1).await;
        let client = client(&peer).await;
        let id = client.submit(&warm).await.unwrap();
        within("warm-up", client.wait(&id)).await.unwrap();
        let used = peer.node.disk_used().await;
        peer.shutdown().await;
        used
    };
    const MIB: u64 = 1 << 20;
    let mut c = config(dir.path(), 1);
    c.donation.max_disk = Some(base + 6 * MIB);
    c.donation.sample_every = Duration::from_millis(50);
    let peer = spare_peer::Node::start(c).await.expect("peer starts");
    let client = client(&peer).await;
    // A job with 3 MiB of inputs (blobs) ends; nobody has fetched its results yet.
    let big = |seed: u8| [b"1\n".as_slice(), &vec![seed; MIB as usize]].concat();
    let job = Job::builder().module_bytes(guest("sha256")).tasks((0..3).map(big)).quorum(1).build().unwrap();
    let id = client.submit(&job).await.unwrap();
    assert_eq!(within("job end", client.wait(&id)).await.unwrap().state, JobState::Completed);
    assert_eq!(peer.node.paused(), None);
    // 4 MiB more (an upload with no job yet) passes the cap: the peer pauses, and keeps the job.
    client.upload_blob(vec![7u8; 4 * MIB as usize]).await.unwrap();
    eventually("the peer to pause at the disk cap", || async { matches!(peer.node.paused(), Some(Pause::Disk { .. })).then_some(()) }).await;
    let next = Job::builder().module_bytes(guest("sha256")).task(b"1\nlater".to_vec()).quorum(1).build().unwrap();
    let e = client.submit(&next).await.expect_err("no new jobs at the disk cap");
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("max_disk"), "{e}");
    assert!(!gone(&client, &id).await, "results nobody fetched are kept within retention");
    // Once its results are fetched, the job goes, its input blobs with it, and work resumes.
    let fetched: Vec<_> = within("results", client.results(&id).await.unwrap().collect::<Vec<_>>()).await;
    assert_eq!(fetched.len(), 3);
    eventually("the fetched job to be removed", || async { gone(&client, &id).await.then_some(()) }).await;
    // Said on a timeout: what the peer counts against its cap, and what takes the room.
    eventually_or("the peer to resume", || async {
        match peer.node.paused() {
            None => Ok(()),
            Some(why) => Err(format!("{why}; the data directory holds {:?}", sizes(dir.path()))),
        }
    })
    .await;
    let later = client.submit(&next).await.expect("work is taken again");
    assert_eq!(within("job end", client.wait(&later)).await.unwrap().state, JobState::Completed);
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_job_is_still_known_as_fetched_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::builder().module_bytes(guest("sha256")).tasks((0..2).map(|i| format!("1\nseed {i}").into_bytes())).quorum(1).build().unwrap();
    let id = {
        let peer = start(dir.path(), 1).await;
        let client = client(&peer).await;
        let id = client.submit(&job).await.unwrap();
        assert_eq!(within("job end", client.wait(&id)).await.unwrap().state, JobState::Completed);
        let fetched: Vec<_> = within("results", client.results(&id).await.unwrap().collect::<Vec<_>>()).await;
        assert_eq!(fetched.len(), 2);
        let jid: spare_protocol::JobId = id.as_str().parse().unwrap();
        eventually("the fetch to be stored", || async { peer.node.store().fetched().unwrap().contains(&jid).then_some(()) }).await;
        peer.shutdown().await;
        id
    };
    // Back on the same directory, at once over its disk cap: the job fetched before the restart
    // is the one retention removes.
    let mut c = config(dir.path(), 1);
    c.donation.max_disk = Some(1);
    c.donation.sample_every = Duration::from_millis(50);
    let peer = spare_peer::Node::start(c).await.expect("peer restarts");
    let client = client(&peer).await;
    eventually("the fetched job to be removed after the restart", || async { gone(&client, &id).await.then_some(()) }).await;
    peer.shutdown().await;
}

/// The compiled forms of `module` in the data directory (both engines').
fn compiled_forms(dir: &std::path::Path, module: &str) -> usize {
    compiled_files(dir, module).len()
}

/// The disk blocks the compiled forms of `module` take, in bytes (as the peer counts its disk).
fn compiled_bytes(dir: &std::path::Path, module: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    compiled_files(dir, module).iter().filter_map(|e| e.metadata().ok()).map(|m| m.blocks() * 512).sum()
}

fn compiled_files(dir: &std::path::Path, module: &str) -> Vec<std::fs::DirEntry> {
    ["modules", "modules/fuel"]
        .iter()
        .filter_map(|d| std::fs::read_dir(dir.join(d)).ok())
        .flat_map(|r| r.flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{module}-")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_disk_cap_the_least_recently_used_compiled_modules_go() {
    let dir = tempfile::tempdir().unwrap();
    // Two jobs, two modules compiled: primes used first, sha256 last; nobody fetches results.
    let primes = Job::builder().module_bytes(guest("primes")).range(0..2_000, 1_000).quorum(1).build().unwrap();
    let sha = Job::builder().module_bytes(guest("sha256")).task(b"1\nlast".to_vec()).quorum(1).build().unwrap();
    let (base, ids) = {
        let peer = start(dir.path(), 1).await;
        let client = client(&peer).await;
        let mut ids = Vec::new();
        for job in [&primes, &sha] {
            let id = client.submit(job).await.unwrap();
            assert_eq!(within("job end", client.wait(&id)).await.unwrap().state, JobState::Completed);
            ids.push(id);
        }
        let used = peer.node.disk_used().await;
        peer.shutdown().await;
        (used, ids)
    };
    assert_eq!(compiled_forms(dir.path(), &primes.module_id()), 1);
    assert_eq!(compiled_forms(dir.path(), &sha.module_id()), 1);
    // Back over its cap by half the older compiled module: no job may go (none was fetched), so
    // compiled code does, the least recently used first, and only as much as needed. (Half a
    // module of margin, not a few KiB: the store's size moves a little between runs.)
    let mut c = config(dir.path(), 1);
    c.donation.max_disk = Some(base - compiled_bytes(dir.path(), &primes.module_id()) / 2);
    c.donation.sample_every = Duration::from_millis(50);
    let peer = spare_peer::Node::start(c).await.expect("peer restarts");
    eventually("the older compiled module to go", || async { (compiled_forms(dir.path(), &primes.module_id()) == 0).then_some(()) }).await;
    eventually("the peer to resume under its cap", || async { peer.node.paused().is_none().then_some(()) }).await;
    assert_eq!(compiled_forms(dir.path(), &sha.module_id()), 1, "the most recently used compiled module stays");
    let client = client(&peer).await;
    for id in &ids {
        assert!(!gone(&client, id).await, "jobs nobody fetched stay");
    }
    peer.shutdown().await;
}

/// Every file under `dir` with the disk blocks it takes, largest first.
fn sizes(dir: &std::path::Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => out.push((e.path().strip_prefix(dir).unwrap_or(&e.path()).display().to_string(), m.blocks() * 512)),
                Err(_) => {}
            }
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.1));
    out
}
