//! The peer's upkeep for its volunteer: every [`Donation::sample_every`] it looks at the other
//! programs' load, the hour and the data directory's size, pauses or resumes taking new work
//! by [`donation::pause`], and says so in its log.
//!
//! [`Donation::sample_every`]: super::donation::Donation::sample_every

use std::path::Path;

use super::Node;
use super::donation::{self, Sample};

/// Runs until the peer shuts down.
pub(super) async fn run(node: Node) {
    let mut stop = node.shutdown_signal();
    let every = node.config().donation.sample_every;
    loop {
        let d = &node.config().donation;
        let disk_used = if d.max_disk.is_some() { disk_usage(&node.config().data_dir).await } else { 0 };
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
