//! What a volunteer gives and to whom: the controls of `spare peer` that decide whether this
//! peer takes new work now (other load, donation hours, disk), how much memory its running
//! tasks may hold together, and which submitters, modules and quorums it serves. The rules are
//! small pure functions; the node samples the machine and applies them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use spare_protocol::{BlobId, Policy};

pub use super::load::{LoadSource, MachineLoad, ManualLoad, local_day, local_minute};

/// The share of `max_other_load` the other load must fall below before a paused peer resumes,
/// so a load hovering at the threshold does not flip the peer on and off at every sample.
pub const RESUME_BELOW: f64 = 0.8;
/// How often the machine's load (and the hour, and the disk) is looked at.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// The volunteer's controls, as `spare peer` was started with them.
#[derive(Clone, Debug)]
pub struct Donation {
    /// Memory all running tasks may hold together (their limits summed), in bytes.
    pub max_total_memory: u64,
    /// Bytes the data directory may use; past it no new work is taken and old jobs are removed.
    pub max_disk: Option<u64>,
    /// Finished jobs older than this are removed.
    pub retention: Duration,
    /// Scheduling priority of the task threads.
    pub task_priority: TaskPriority,
    /// Pause taking work while other programs use more than this share (0..=1) of the CPUs.
    pub max_other_load: Option<f64>,
    /// Local hours of the day when this peer takes work (`None`: all day).
    pub hours: Option<Hours>,
    /// Submitters (by address) whose jobs this peer accepts; empty: everyone.
    pub allow_submitters: Vec<Net>,
    /// Modules whose tasks this peer accepts and runs; empty: every module.
    pub allow_modules: Vec<BlobId>,
    /// Jobs with a smaller quorum are neither accepted nor run here.
    pub min_quorum: u32,
    /// Where the other load is read from (the machine, or a test's hand).
    pub load: Arc<dyn LoadSource>,
    /// How often the load, the hour and the disk are looked at (and retention applied).
    pub sample_every: Duration,
}

impl Default for Donation {
    fn default() -> Self {
        Donation {
            max_total_memory: u64::MAX,
            max_disk: None,
            retention: Duration::from_secs(3 * 86_400),
            task_priority: TaskPriority::Idle,
            max_other_load: None,
            hours: None,
            allow_submitters: Vec::new(),
            allow_modules: Vec::new(),
            min_quorum: 1,
            load: Arc::new(MachineLoad::default()),
            sample_every: SAMPLE_EVERY,
        }
    }
}

/// Scheduling priority of the threads that run tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TaskPriority {
    /// `SCHED_IDLE` (nice 19 where that is refused): only CPU nobody else wants.
    Idle,
    /// The peer's own priority.
    Normal,
}

/// Why this peer takes no new work now.
#[derive(Clone, Debug, PartialEq)]
pub enum Pause {
    /// Other programs use more of the CPUs than the volunteer allows.
    Load { other: f64, max: f64 },
    /// Outside the donation hours.
    Hours(Hours),
    /// The data directory is at its cap.
    Disk { used: u64, cap: u64 },
}

impl fmt::Display for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pause::Load { other, max } => {
                write!(f, "other programs use {:.0}% of the CPUs, above max_other_load {:.0}%", other * 100.0, max * 100.0)
            }
            Pause::Hours(h) => write!(f, "outside the donation hours {h}"),
            Pause::Disk { used, cap } => write!(f, "the data directory uses {used} bytes, at its max_disk of {cap}"),
        }
    }
}

/// What the pause rule looks at.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Share of the CPUs other programs used lately (`None`: unknown).
    pub other_load: Option<f64>,
    /// Local minute of the day, 0..1440.
    pub minute: u32,
    /// Bytes the data directory uses.
    pub disk_used: u64,
}

/// Whether to stop taking new work, and why. `paused` is the decision of the last sample: a
/// peer paused for load resumes only once the load is under [`RESUME_BELOW`] of the threshold.
pub fn pause(d: &Donation, s: Sample, paused: bool) -> Option<Pause> {
    if let Some(h) = d.hours
        && !h.contains(s.minute)
    {
        return Some(Pause::Hours(h));
    }
    if let Some(cap) = d.max_disk
        && s.disk_used >= cap
    {
        return Some(Pause::Disk { used: s.disk_used, cap });
    }
    if let (Some(max), Some(other)) = (d.max_other_load, s.other_load) {
        let limit = if paused { max * RESUME_BELOW } else { max };
        if other > limit {
            return Some(Pause::Load { other, max });
        }
    }
    None
}

/// Why a job is not served here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The submitter is not on `allow_submitters`.
    #[error("this peer serves only the submitters on its allow_submitters list, and {0} is not on it")]
    Submitter(IpAddr),
    /// The module is not on `allow_modules`.
    #[error("this peer runs only the modules on its allow_modules list, and {0} is not on it")]
    Module(BlobId),
    /// The quorum is below `min_quorum`.
    #[error("this peer serves only jobs with a quorum of at least {min} (min_quorum); this job asks for {quorum}")]
    Quorum { quorum: u32, min: u32 },
}

/// An address or a network: `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net(pub ipnet::IpNet);

impl Net {
    /// Whether `ip` is in it.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Net, String> {
        let s = s.trim();
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(Net)
            .map_err(|_| format!("{s:?} is neither an address nor a network (write 192.0.2.7 or 10.0.0.0/8)"))
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Net {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Net, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether a submitter may submit here (`None`: an address unknown, as in-process, is local).
pub fn admits_submitter(d: &Donation, submitter: Option<IpAddr>) -> Result<(), Refusal> {
    match submitter {
        Some(ip) if !d.allow_submitters.is_empty() && !d.allow_submitters.iter().any(|n| n.contains(&ip)) => {
            Err(Refusal::Submitter(ip))
        }
        _ => Ok(()),
    }
}

/// Whether this peer runs (and accepts) a job of `module` under `policy`.
pub fn serves(d: &Donation, module: &BlobId, policy: &Policy) -> Result<(), Refusal> {
    if !d.allow_modules.is_empty() && !d.allow_modules.contains(module) {
        return Err(Refusal::Module(*module));
    }
    if policy.quorum < d.min_quorum {
        return Err(Refusal::Quorum { quorum: policy.quorum, min: d.min_quorum });
    }
    Ok(())
}

/// Whether the slot loop takes no new replicas: while paused, or while replicas already wait
/// for memory (taking more would only hold leases others could run). The protocol's `Slots`
/// carry it out (`set_allowance`).
pub fn held_back(paused: bool, waiting_for_memory: usize) -> bool {
    paused || waiting_for_memory > 0
}

/// Units the memory gate counts in: a task's limit is rounded up to whole MiB.
pub const MEMORY_UNIT: u64 = 1 << 20;

/// The memory gate's units for a task with `limit` bytes, at most the whole gate (`total`).
pub fn memory_units(limit: u64, total: u32) -> u32 {
    u32::try_from(limit.div_ceil(MEMORY_UNIT)).unwrap_or(u32::MAX).clamp(1, total.max(1))
}

/// Hours of the local day, `HH:MM-HH:MM`; a window past midnight (`22:00-07:00`) wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hours {
    /// First minute of the day inside.
    pub from: u32,
    /// First minute of the day outside again.
    pub to: u32,
}

impl Hours {
    /// Whether the minute of the day `m` is inside.
    pub fn contains(&self, m: u32) -> bool {
        if self.from <= self.to { (self.from..self.to).contains(&m) } else { m >= self.from || m < self.to }
    }
}

impl FromStr for Hours {
    type Err = String;
    fn from_str(s: &str) -> Result<Hours, String> {
        let bad = || format!("{s:?} is not a span of hours; write e.g. 22:00-07:00 (local time)");
        let minute = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
            (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (from, to) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if from == to {
            return Err(format!("{s:?} is an empty span of hours"));
        }
        Ok(Hours { from: from % 1440, to: if to == 1440 { 1440 } else { to } })
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}-{:02}:{:02}", self.from / 60, self.from % 60, self.to / 60, self.to % 60)
    }
}

impl Serialize for Hours {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Hours {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hours, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What the node keeps of the controls while it runs: whether it is paused, and the memory
/// gate the running tasks pass.
pub(crate) struct State {
    paused: AtomicBool,
    why: Mutex<Option<Pause>>,
    memory: tokio::sync::Semaphore,
    memory_units: u32,
    /// The most memory the running tasks ever held together, in bytes.
    memory_peak: std::sync::atomic::AtomicU64,
    waiting: std::sync::atomic::AtomicUsize,
}

impl State {
    pub(crate) fn new(d: &Donation) -> State {
        let units = u32::try_from(d.max_total_memory / MEMORY_UNIT).unwrap_or(u32::MAX).clamp(1, u32::MAX >> 4);
        State {
            paused: AtomicBool::new(false),
            why: Mutex::new(None),
            memory: tokio::sync::Semaphore::new(units as usize),
            memory_units: units,
            memory_peak: Default::default(),
            waiting: Default::default(),
        }
    }

    /// Whether new work is refused now.
    pub(crate) fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Why new work is refused now.
    pub(crate) fn pause_reason(&self) -> Option<Pause> {
        self.why.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a pause decision; returns the previous one when it changed.
    pub(crate) fn set_pause(&self, why: Option<Pause>) -> Option<Option<Pause>> {
        let mut cur = self.why.lock().unwrap_or_else(|p| p.into_inner());
        self.paused.store(why.is_some(), Ordering::Relaxed);
        // Load figures move at every sample; only a change of kind is news.
        let changed = cur.as_ref().map(std::mem::discriminant) != why.as_ref().map(std::mem::discriminant);
        let before = std::mem::replace(&mut *cur, why);
        changed.then_some(before)
    }

    /// Replicas waiting for memory now.
    pub(crate) fn waiting_for_memory(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Bytes of task memory held by running tasks now.
    pub fn memory_held(&self) -> u64 {
        u64::from(self.memory_units).saturating_sub(self.memory.available_permits() as u64) * MEMORY_UNIT
    }

    /// The most memory the running tasks ever held together, in bytes.
    pub fn memory_peak(&self) -> u64 {
        self.memory_peak.load(Ordering::Relaxed)
    }

    /// Waits until a task with a `limit`-byte memory limit fits beside the running ones, and
    /// holds its share until the permit is dropped.
    pub(crate) async fn admit_memory(&self, limit: u64) -> anyhow::Result<tokio::sync::SemaphorePermit<'_>> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = self.memory.acquire_many(memory_units(limit, self.memory_units)).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let permit = permit.map_err(|_| anyhow::anyhow!("the memory gate is closed"))?;
        self.memory_peak.fetch_max(self.memory_held(), Ordering::Relaxed);
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(other: f64, minute: u32, disk: u64) -> Sample {
        Sample { other_load: Some(other), minute, disk_used: disk }
    }

    #[test]
    fn load_pauses_above_the_threshold_and_resumes_below_the_margin() {
        let d = Donation { max_other_load: Some(0.5), ..Donation::default() };
        assert_eq!(pause(&d, sample(0.3, 0, 0), false), None);
        assert_eq!(pause(&d, sample(0.6, 0, 0), false), Some(Pause::Load { other: 0.6, max: 0.5 }));
        assert!(pause(&d, sample(0.45, 0, 0), true).is_some(), "still too close to resume");
        assert_eq!(pause(&d, sample(0.35, 0, 0), true), None);
        let unknown = Sample { other_load: None, minute: 0, disk_used: 0 };
        assert_eq!(pause(&d, unknown, false), None, "an unknown load does not pause");
        assert_eq!(pause(&Donation::default(), sample(1.0, 0, 0), false), None, "no threshold, no pause");
        let low = Donation { max_other_load: Some(0.05), ..Donation::default() };
        assert_eq!(pause(&low, sample(0.03, 0, 0), true), None, "a small threshold can still be resumed from");
    }

    #[test]
    fn hours_and_disk_pause() {
        let night: Hours = "22:00-07:00".parse().unwrap();
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(6 * 60 + 59));
        assert!(!night.contains(7 * 60) && !night.contains(12 * 60));
        let d = Donation { hours: Some(night), max_disk: Some(1000), ..Donation::default() };
        assert_eq!(pause(&d, sample(0.0, 12 * 60, 0), false), Some(Pause::Hours(night)));
        assert_eq!(pause(&d, sample(0.0, 23 * 60, 999), false), None);
        assert_eq!(pause(&d, sample(0.0, 23 * 60, 1000), false), Some(Pause::Disk { used: 1000, cap: 1000 }));
        let day: Hours = "09:00-17:30".parse().unwrap();
        assert!(day.contains(9 * 60) && !day.contains(17 * 60 + 30));
        assert_eq!(day.to_string(), "09:00-17:30");
        assert!("9-5".parse::<Hours>().is_err() && "10:00-10:00".parse::<Hours>().is_err() && "25:00-01:00".parse::<Hours>().is_err());
    }

    #[test]
    fn allow_lists_and_quorum() {
        let module = BlobId::of(b"allowed");
        let d = Donation {
            allow_submitters: vec!["10.0.0.0/8".parse().unwrap(), "192.0.2.7".parse().unwrap()],
            allow_modules: vec![module],
            min_quorum: 2,
            ..Donation::default()
        };
        assert_eq!(admits_submitter(&d, Some("10.1.2.3".parse().unwrap())), Ok(()));
        assert_eq!(admits_submitter(&d, Some("192.0.2.7".parse().unwrap())), Ok(()));
        let stranger: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(admits_submitter(&d, Some(stranger)), Err(Refusal::Submitter(stranger)));
        assert_eq!(admits_submitter(&Donation::default(), Some(stranger)), Ok(()), "empty list: everyone");
        let mut policy = Policy { quorum: 2, ..Policy::default() };
        assert_eq!(serves(&d, &module, &policy), Ok(()));
        let other = BlobId::of(b"other");
        assert_eq!(serves(&d, &other, &policy), Err(Refusal::Module(other)));
        policy.quorum = 1;
        assert_eq!(serves(&d, &module, &policy), Err(Refusal::Quorum { quorum: 1, min: 2 }));
    }

    #[test]
    fn no_new_work_while_paused_or_waiting_for_memory() {
        assert!(!held_back(false, 0));
        assert!(held_back(true, 0));
        assert!(held_back(false, 1));
        assert_eq!(memory_units(64 << 20, 1024), 64);
        assert_eq!(memory_units(1, 1024), 1);
        assert_eq!(memory_units(8 << 30, 1024), 1024, "never more than the whole gate");
    }

    #[tokio::test]
    async fn the_memory_gate_holds_the_sum_of_running_limits_under_the_cap() {
        let s = State::new(&Donation { max_total_memory: 100 << 20, ..Donation::default() });
        let a = s.admit_memory(60 << 20).await.unwrap();
        assert_eq!(s.memory_held(), 60 << 20);
        // A second 60 MiB task does not fit beside the first: it waits until the first ends.
        let second = s.admit_memory(60 << 20);
        tokio::pin!(second);
        assert!(futures::poll!(second.as_mut()).is_pending());
        assert_eq!(s.waiting_for_memory(), 1);
        drop(a);
        let _b = second.await.unwrap();
        assert_eq!(s.memory_held(), 60 << 20);
        assert_eq!(s.waiting_for_memory(), 0);
        assert_eq!(s.memory_peak(), 60 << 20, "never both at once");
    }
}
