//! The peer's upkeep for its volunteer: every [`Donation::sample_every`] it looks at the other
//! programs' load, the hour and the data directory's size, pauses or resumes taking new work
//! by [`donation::pause`], and says so in its log; it applies retention while the disk is at
//! its cap (then trims compiled modules if still over), and otherwise a few times per retention
//! period.
//!
//! [`Donation::sample_every`]: super::donation::Donation::sample_every

use std::path::Path;
use std::time::{Duration, Instant};

use super::Node;
use super::donation::{self, Sample};

/// Runs until the peer shuts down.
pub(super) async fn run(node: Node) {
    let mut stop = node.shutdown_signal();
    let every = node.config().donation.sample_every;
    // Retention by age runs a few times per retention period, at most once a minute.
    let age_every = (node.config().donation.retention / 4).clamp(every, RETENTION_AT_MOST_EVERY);
    let mut aged = Instant::now();
    let mut runs_trimmed = 0;
    loop {
        // Once idle after work, the heap that work freed goes back to the system (glibc's malloc
        // keeps it otherwise): an idle volunteer's peer stays small.
        let runs = node.metrics().runs().0;
        if runs != runs_trimmed && node.running() == 0 {
            runs_trimmed = runs;
            give_back_freed_memory();
        }
        let d = &node.config().donation;
        let mut disk_used = if d.max_disk.is_some() { node.disk_used().await } else { 0 };
        let at_cap = d.max_disk.is_some_and(|cap| disk_used >= cap);
        if at_cap || aged.elapsed() >= age_every {
            aged = Instant::now();
            match node.retain(at_cap).await {
                Ok(r) if at_cap && (r.jobs > 0 || r.blobs > 0) => disk_used = node.disk_used().await,
                Ok(_) => {}
                Err(e) => tracing::warn!("retention pass failed: {e:#}"),
            }
            // Still over: compiled modules are only a saving, the least recently used go.
            if let Some(cap) = d.max_disk.filter(|cap| at_cap && disk_used >= *cap) {
                let t = node.sandbox().trim_compiled(disk_used - cap + 1);
                if t.files > 0 {
                    tracing::info!("retention: removed {} compiled modules, least recently used first ({} bytes); they are compiled again when needed", t.files, t.bytes);
                    disk_used = node.disk_used().await;
                }
            }
        }
        let sample = Sample { other_load: d.load.other_load(), minute: donation::local_minute(), disk_used };
        let now = donation::pause(d, sample, node.0.donation.paused());
        if let Some(before) = node.0.donation.set_pause(now.clone()) {
            match (&now, before) {
                (Some(why), _) => tracing::info!("pausing: no new work while {why}; running tasks finish"),
                (None, Some(why)) => {
                    tracing::info!("resuming: taking work again (paused while {why})");
                    node.0.work.notify_one();
                }
                (None, None) => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Returns the freed heap to the system (`malloc_trim`; nothing to do under another allocator).
fn give_back_freed_memory() {
    // SAFETY: malloc_trim only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Retention by age runs at most this far apart.
const RETENTION_AT_MOST_EVERY: Duration = Duration::from_secs(60);

impl Node {
    /// Bytes the data directory holds: its files, less the database's pages free for reuse.
    pub async fn disk_used(&self) -> u64 {
        let files = disk_usage(&self.config().data_dir).await;
        let store = self.store().clone();
        let reusable = tokio::task::spawn_blocking(move || store.reusable_bytes().unwrap_or(0)).await.unwrap_or(0);
        files.saturating_sub(reusable)
    }
}

/// Bytes the files under `dir` take on disk (blocks allocated, not lengths).
pub(super) async fn disk_usage(dir: &Path) -> u64 {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || walk(&dir)).await.unwrap_or(0)
}

fn walk(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut total = 0u64;
    for e in entries.flatten() {
        let Ok(md) = e.metadata() else { continue };
        total = total.saturating_add(if md.is_dir() { walk(&e.path()) } else { md.blocks() * 512 });
    }
    total
}
