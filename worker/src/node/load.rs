//! Where the volunteer's controls read the machine: the other programs' share of the CPUs
//! (from /proc, or set by hand in tests through [`ManualLoad`]) and the local time of day.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The local minute of the day now.
pub fn local_minute() -> u32 {
    match local_now() {
        (_, Some(tm)) => (tm.tm_hour * 60 + tm.tm_min).clamp(0, 1439) as u32,
        (now, None) => ((now / 60) % 1440) as u32,
    }
}

/// The local calendar day now, as the number YYYYMMDD (20261130): what "today" means on the
/// status page.
pub fn local_day() -> u32 {
    match local_now() {
        (_, Some(tm)) => u32::try_from((tm.tm_year + 1900) * 10_000 + (tm.tm_mon + 1) * 100 + tm.tm_mday).unwrap_or(0),
        // No local time: the UTC day number since 1970 stands in (still one key per day).
        (now, None) => u32::try_from(now / 86_400).unwrap_or(0),
    }
}

/// Unix seconds now, and the local time they are (`None` if the C library cannot tell).
fn local_now() -> (u64, Option<libc::tm>) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let t = libc::time_t::try_from(now).unwrap_or(0);
    // SAFETY: localtime_r reads `t` and writes only into `tm`, which lives on this stack.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    (now, ok.then_some(tm))
}

/// Where the other programs' load comes from.
pub trait LoadSource: Send + Sync + fmt::Debug {
    /// Share of the machine's CPUs (0..=1) used by other programs since the last call; `None`
    /// when it cannot be told (the first call, or no /proc).
    fn other_load(&self) -> Option<f64>;
}

/// The machine's load from /proc: CPU time of every process but this one and its children
/// (the slot processes that run its tasks, its compiler processes), between two calls.
#[derive(Debug, Default)]
pub struct MachineLoad {
    last: Mutex<Option<(u64, u64, u64)>>,
}

impl MachineLoad {
    /// (busy, total) jiffies of all CPUs, and the jiffies of this process and its children.
    fn read() -> Option<(u64, u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let total: u64 = cpu.iter().take(8).sum();
        let idle = cpu.get(3)? + cpu.get(4).copied().unwrap_or(0);
        // Its own time, and its ended children's once waited for (`cutime`, `cstime`), so that a
        // slot process killed between two reads moves from the running children to here.
        let own = jiffies("self", 4)? + running_children_jiffies();
        Some((total.saturating_sub(idle), total, own))
    }
}

/// The sum of `fields` fields of process `pid`'s stat from `utime` on: 2 is `utime + stime`,
/// 4 adds its waited-for children's `cutime + cstime`.
fn jiffies(pid: &str, fields: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // utime is field 14.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().skip(11).take(fields).map(|f| f.parse::<u64>().ok()).sum()
}

/// CPU time of this process's running children, from the lists of children its threads keep.
fn running_children_jiffies() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|pid| jiffies(pid, 2)).collect::<Vec<_>>())
        .sum()
}

impl LoadSource for MachineLoad {
    fn other_load(&self) -> Option<f64> {
        let now = MachineLoad::read()?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let before = last.replace(now)?;
        let total = now.1.saturating_sub(before.1);
        if total == 0 {
            return None;
        }
        let busy = now.0.saturating_sub(before.0).saturating_sub(now.2.saturating_sub(before.2));
        Some((busy as f64 / total as f64).clamp(0.0, 1.0))
    }
}

/// A load a test sets by hand; it counts how often the peer looked.
#[derive(Debug, Default)]
pub struct ManualLoad {
    share: AtomicU64,
    reads: AtomicU64,
}

impl ManualLoad {
    /// Sets the other programs' share of the CPUs.
    pub fn set(&self, share: f64) {
        self.share.store(share.to_bits(), Ordering::Relaxed);
    }

    /// How many times the load was read so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

impl LoadSource for ManualLoad {
    fn other_load(&self) -> Option<f64> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Some(f64::from_bits(self.share.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A slot process's CPU is this peer's, not other programs' load the donor's
    /// `--max-other-load` backs off from.
    #[test]
    fn a_busy_child_counts_as_this_process() {
        let mut child = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("sh");
        let pid = child.id().to_string();
        let child_before = jiffies(&pid, 2).expect("the child's stat");
        let before = MachineLoad::read().expect("/proc").2;
        let deadline = Instant::now() + Duration::from_secs(60);
        let child_mid = loop {
            let j = jiffies(&pid, 2).expect("the child's stat");
            if j >= child_before + 20 {
                break j;
            }
            assert!(Instant::now() < deadline, "the child never ran");
            std::thread::sleep(Duration::from_millis(10));
        };
        let after = MachineLoad::read().expect("/proc").2;
        let _ = child.kill();
        let _ = child.wait();
        assert!(after - before >= child_mid - child_before, "own {before}..{after}, child {child_before}..{child_mid}");
    }
}
