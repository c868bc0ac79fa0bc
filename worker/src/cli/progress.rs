//! A live progress bar that follows a job's Watch stream until the job ends. Drawn on stderr,
//! and only when stderr is a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use spare_sdk::proto::{self, job_event::Event};
use spare_sdk::{Client, JobId, state_name};

/// A bar for `total` tasks, hidden when stderr is not a terminal or `quiet` is set.
pub fn bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} tasks done {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn done(c: &proto::TaskCounts) -> u64 {
    u64::from(c.verified + c.failed + c.inconclusive)
}

fn show(bar: &ProgressBar, s: &proto::JobStatus) {
    let c = s.tasks.unwrap_or_default();
    bar.set_length(u64::from(c.total));
    bar.set_position(done(&c));
    let mut msg = format!("· {}", state_name(s.state()));
    if c.failed + c.inconclusive > 0 {
        msg.push_str(&format!(" · {} failed, {} inconclusive", c.failed, c.inconclusive));
    }
    if !s.message.is_empty() {
        msg.push_str(&format!(" · {}", s.message));
    }
    bar.set_message(msg);
}

/// Follows the job until it ends and returns its final status.
pub async fn follow(client: &Client, id: &JobId, bar: &ProgressBar) -> anyhow::Result<proto::JobStatus> {
    let err = |e: spare_sdk::Error| anyhow::anyhow!("{e}");
    let mut events = client.watch(id).await.map_err(err)?;
    while let Some(event) = events.next().await {
        match event.map_err(err)?.event {
            Some(Event::Snapshot(s)) => {
                show(bar, &s);
            }
            Some(Event::TaskDone(_)) => {
                bar.inc(1);
                // Refresh counts and the note now and then, not per task.
                if bar.position().is_multiple_of(64)
                    && let Ok(s) = client.status(id, false).await
                {
                    show(bar, &s);
                }
            }
            Some(Event::Finished(s)) => {
                show(bar, &s);
                bar.finish_and_clear();
                return Ok(s);
            }
            None => {}
        }
    }
    bar.finish_and_clear();
    let s = client.status(id, false).await.map_err(err)?;
    if spare_sdk::is_final(s.state()) {
        return Ok(s);
    }
    anyhow::bail!("lost the job's event stream before it ended; `spare status {id}` shows where it is")
}
