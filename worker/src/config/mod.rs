//! `spare peer`'s configuration: every setting a volunteer or operator can give, with its
//! default, read in layers (built-in defaults < TOML file < `SPARE_*` environment < flags, see
//! [`layers`]) and checked into a [`NodeConfig`] before the peer starts. The names are the same
//! everywhere: `max_disk` in the file, `SPARE_MAX_DISK` in the environment, `--max-disk` on the
//! command line.

pub mod addr;
pub mod diversity;
pub mod layers;
pub mod units;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use spare_protocol::BlobId;

use crate::node::NodeConfig;
use crate::node::donation::{Donation, Hours, Net, TaskPriority};
use crate::node::limits::Bounds;
pub use addr::HostPort;
pub use diversity::DiversityName;
pub use units::{Size, Span};

/// Every setting of `spare peer`, as the layers give it. Unknown keys are refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Address to serve gRPC on (an IP address or a host name, with a port).
    pub listen: HostPort,
    /// The store, blobs, compiled modules and the peer's key.
    pub data_dir: Option<PathBuf>,
    /// The address other peers dial, when it is not the listening one.
    pub advertise: Option<String>,
    /// Peers to join the mesh through.
    pub bootstrap: Vec<String>,
    /// Tasks run at once.
    pub cpus: usize,
    /// Most memory one task may ask for.
    pub max_task_memory: Size,
    /// Most memory all running tasks may hold together (unset: `cpus` × `max_task_memory`).
    pub max_total_memory: Option<Size>,
    /// Most disk the data directory may use (unset: no cap).
    pub max_disk: Option<Size>,
    /// Finished jobs older than this are removed.
    pub retention: Span,
    /// `idle` (SCHED_IDLE, else nice 19) or `normal`.
    pub task_priority: TaskPriority,
    /// Pause taking work while other programs use more than this share of the CPUs (0 to 1).
    pub max_other_load: Option<f64>,
    /// Local hours when this peer takes work, `HH:MM-HH:MM` (unset: all day).
    pub hours: Option<Hours>,
    /// Submitter addresses or networks whose jobs are accepted (empty: everyone).
    pub allow_submitters: Vec<Net>,
    /// Module ids (hex) whose tasks are accepted and run (empty: every module).
    pub allow_modules: Vec<String>,
    /// Jobs with a smaller quorum are neither accepted nor run.
    pub min_quorum: u32,
    /// Network diversity of the jobs submitted here that do not ask for one: `prefix`, `wide`
    /// or `off`.
    pub diversity: DiversityName,
    /// Largest module accepted.
    pub max_module_bytes: Size,
    /// Largest blob accepted in one upload.
    pub max_blob_bytes: Size,
    /// Submissions checked at once.
    pub max_pending_submits: usize,
    /// Jobs one submitter may have running here at once.
    pub max_jobs_per_submitter: usize,
    /// Bytes of inputs of one submitter key's unfinished jobs held here at most.
    pub max_input_bytes_per_submitter: Size,
    /// Unfinished jobs coordinated here at most (ended ones do not count).
    pub max_unfinished_jobs: usize,
    /// Tasks of running jobs held here at most.
    pub max_held_tasks: u64,
    /// Live leases one peer may hold from this peer's coordinator.
    pub max_leases_per_peer: usize,
    /// Requests per second one peer may make on average.
    pub peer_rate: f64,
    /// Address to serve Prometheus metrics on, at `/metrics` (unset: off).
    pub metrics: Option<HostPort>,
    /// Address to serve the status page on (unset: off).
    pub web: Option<HostPort>,
}

/// Every key of [`PeerConfig`], in the order `--print-config` shows them.
pub const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "advertise",
    "bootstrap",
    "cpus",
    "max_task_memory",
    "max_total_memory",
    "max_disk",
    "retention",
    "task_priority",
    "max_other_load",
    "hours",
    "allow_submitters",
    "allow_modules",
    "min_quorum",
    "diversity",
    "max_module_bytes",
    "max_blob_bytes",
    "max_pending_submits",
    "max_jobs_per_submitter",
    "max_input_bytes_per_submitter",
    "max_unfinished_jobs",
    "max_held_tasks",
    "max_leases_per_peer",
    "peer_rate",
    "metrics",
    "web",
];

impl Default for PeerConfig {
    fn default() -> Self {
        let node = NodeConfig::new(crate::cli::DEFAULT_PEER.parse().expect("a literal address"), PathBuf::new());
        let donation = Donation::default();
        let bounds = Bounds::default();
        PeerConfig {
            listen: node.listen.into(),
            data_dir: None,
            advertise: None,
            bootstrap: Vec::new(),
            cpus: node.cpus,
            max_task_memory: Size(node.caps.limits.memory_bytes),
            max_total_memory: None,
            max_disk: None,
            retention: Span(donation.retention),
            task_priority: donation.task_priority,
            max_other_load: None,
            hours: None,
            allow_submitters: Vec::new(),
            allow_modules: Vec::new(),
            min_quorum: donation.min_quorum,
            diversity: DiversityName::default(),
            max_module_bytes: Size(node.max_module_bytes as u64),
            max_blob_bytes: Size(node.max_blob_bytes),
            max_pending_submits: bounds.max_pending_submits,
            max_jobs_per_submitter: bounds.max_jobs_per_submitter,
            max_input_bytes_per_submitter: Size(bounds.max_input_bytes_per_submitter),
            max_unfinished_jobs: bounds.max_unfinished_jobs,
            max_held_tasks: bounds.max_held_tasks,
            max_leases_per_peer: bounds.max_leases_per_peer,
            peer_rate: bounds.peer_rate,
            metrics: None,
            web: None,
        }
    }
}

/// A setting that cannot be used, by key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {why}")]
pub struct Invalid {
    /// The key, as written in the config file.
    pub key: &'static str,
    /// What is wrong with its value.
    pub why: String,
}

fn invalid(key: &'static str, why: impl Into<String>) -> Invalid {
    Invalid { key, why: why.into() }
}

impl PeerConfig {
    /// Checks every value and builds the peer's configuration. `data_dir` must be set.
    pub fn node_config(&self) -> Result<NodeConfig, Invalid> {
        let donation = self.donation()?;
        let data_dir = self.data_dir.clone().ok_or_else(|| {
            invalid("data_dir", "not set; give --data-dir DIR, SPARE_DATA_DIR or data_dir in the config file")
        })?;
        let listen = self.listen.resolve().map_err(|e| invalid("listen", e))?;
        let metrics = self.metrics.as_ref().map(HostPort::resolve).transpose().map_err(|e| invalid("metrics", e))?;
        let web = self.web.as_ref().map(HostPort::resolve).transpose().map_err(|e| invalid("web", e))?;
        if listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err(invalid(
                "advertise",
                format!("listening on {listen} needs an advertised HOST:PORT so other peers know where to dial"),
            ));
        }
        let positive = |key, v: f64| if v.is_finite() && v > 0.0 { Ok(v) } else { Err(invalid(key, format!("{v} must be above 0"))) };
        let at_least_one = |key, v: u64| if v >= 1 { Ok(()) } else { Err(invalid(key, "must be at least 1")) };
        at_least_one("cpus", self.cpus as u64)?;
        at_least_one("max_pending_submits", self.max_pending_submits as u64)?;
        at_least_one("max_jobs_per_submitter", self.max_jobs_per_submitter as u64)?;
        at_least_one("max_held_tasks", self.max_held_tasks)?;
        at_least_one("max_input_bytes_per_submitter", self.max_input_bytes_per_submitter.0)?;
        at_least_one("max_unfinished_jobs", self.max_unfinished_jobs as u64)?;
        at_least_one("max_leases_per_peer", self.max_leases_per_peer as u64)?;
        let peer_rate = positive("peer_rate", self.peer_rate)?;
        let max_module_bytes = usize::try_from(self.max_module_bytes.0).map_err(|_| invalid("max_module_bytes", "too large"))?;
        at_least_one("max_module_bytes", self.max_module_bytes.0)?;
        at_least_one("max_blob_bytes", self.max_blob_bytes.0)?;
        let mut c = NodeConfig::new(listen, data_dir);
        c.cpus = self.cpus;
        c.bootstrap = self.bootstrap.clone();
        c.advertise = self.advertise.clone();
        c.max_module_bytes = max_module_bytes;
        c.max_blob_bytes = self.max_blob_bytes.0;
        // A task may never ask for more than all tasks together may hold.
        c.caps.limits.memory_bytes = self.max_task_memory.0.min(donation.max_total_memory);
        c.bounds = Bounds {
            max_pending_submits: self.max_pending_submits,
            max_jobs_per_submitter: self.max_jobs_per_submitter,
            max_input_bytes_per_submitter: self.max_input_bytes_per_submitter.0,
            max_unfinished_jobs: self.max_unfinished_jobs,
            max_held_tasks: self.max_held_tasks,
            max_leases_per_peer: self.max_leases_per_peer,
            peer_rate,
            peer_burst: (peer_rate * 4.0).max(1.0),
        };
        c.donation = donation;
        c.diversity = self.diversity.into();
        c.metrics = metrics;
        c.web = web;
        Ok(c)
    }

    /// The volunteer's controls, checked.
    fn donation(&self) -> Result<Donation, Invalid> {
        if self.max_task_memory.0 < crate::node::donation::MEMORY_UNIT {
            return Err(invalid("max_task_memory", format!("{} is below 1 MiB", self.max_task_memory)));
        }
        let max_total_memory = match self.max_total_memory {
            Some(m) if m.0 < crate::node::donation::MEMORY_UNIT => {
                return Err(invalid("max_total_memory", format!("{m} is below 1 MiB")));
            }
            Some(m) => m.0,
            None => self.max_task_memory.0.saturating_mul(self.cpus as u64),
        };
        if let Some(l) = self.max_other_load
            && !(l.is_finite() && (0.0..=1.0).contains(&l))
        {
            return Err(invalid("max_other_load", format!("{l} is not a share of the CPUs between 0 and 1")));
        }
        if self.retention.0.is_zero() {
            return Err(invalid("retention", "must be longer than 0s"));
        }
        if self.min_quorum < 1 {
            return Err(invalid("min_quorum", "must be at least 1"));
        }
        let allow_modules = self
            .allow_modules
            .iter()
            .map(|m| m.parse::<BlobId>().map_err(|e| invalid("allow_modules", format!("{m:?} is not a module id: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Donation {
            max_total_memory,
            max_disk: self.max_disk.map(|s| s.0),
            retention: self.retention.0,
            task_priority: self.task_priority,
            max_other_load: self.max_other_load,
            hours: self.hours,
            allow_submitters: self.allow_submitters.clone(),
            allow_modules,
            min_quorum: self.min_quorum,
            ..Donation::default()
        })
    }

    /// Checks every value but `data_dir` (for `--print-config`, which needs no data directory).
    pub fn check(&self) -> Result<(), Invalid> {
        let mut c = self.clone();
        c.data_dir.get_or_insert_with(|| PathBuf::from("."));
        c.node_config().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_every_field() {
        let v = serde_json::to_value(PeerConfig::default()).unwrap();
        let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut keys = KEYS.to_vec();
        fields.sort();
        keys.sort();
        assert_eq!(fields, keys);
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = PeerConfig { data_dir: Some("/tmp/x".into()), ..PeerConfig::default() };
        let cases: Vec<(&str, PeerConfig)> = vec![
            ("cpus", PeerConfig { cpus: 0, ..base.clone() }),
            ("max_other_load", PeerConfig { max_other_load: Some(1.5), ..base.clone() }),
            ("allow_modules", PeerConfig { allow_modules: vec!["nothex".into()], ..base.clone() }),
            ("min_quorum", PeerConfig { min_quorum: 0, ..base.clone() }),
            ("max_total_memory", PeerConfig { max_total_memory: Some(Size(10)), ..base.clone() }),
            ("data_dir", PeerConfig { data_dir: None, ..base.clone() }),
            ("peer_rate", PeerConfig { peer_rate: -1.0, ..base.clone() }),
            ("listen", PeerConfig { listen: host("no-such-host.invalid:7070"), ..base.clone() }),
            ("metrics", PeerConfig { metrics: Some(host("no-such-host.invalid:9187")), ..base.clone() }),
            ("web", PeerConfig { web: Some(host("no-such-host.invalid:7080")), ..base.clone() }),
        ];
        for (key, c) in cases {
            let e = c.node_config().expect_err(key);
            assert_eq!(e.key, key, "{e}");
        }
        let c = base.node_config().expect("the defaults are valid");
        assert_eq!(c.donation.max_total_memory, base.max_task_memory.0 * base.cpus as u64);
    }

    fn host(s: &str) -> HostPort {
        s.parse().expect("HOST:PORT")
    }

    #[test]
    fn address_keys_take_host_names() {
        let c = PeerConfig {
            data_dir: Some("/tmp/x".into()),
            listen: host("localhost:7000"),
            metrics: Some(host("localhost:9187")),
            web: Some(host("localhost:7080")),
            ..PeerConfig::default()
        };
        let n = c.node_config().expect("names resolve");
        assert_eq!(n.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(n.metrics, Some("127.0.0.1:9187".parse().unwrap()));
        assert_eq!(n.web, Some("127.0.0.1:7080".parse().unwrap()));
        let e = PeerConfig { listen: host("no-such-host.invalid:7000"), ..c }.node_config().expect_err("no such host");
        assert_eq!(e.key, "listen");
        assert!(e.to_string().starts_with("listen: ") && e.to_string().contains("no-such-host.invalid"), "{e}");
    }

    #[test]
    fn a_task_never_asks_for_more_than_all_tasks_together() {
        let c = PeerConfig {
            data_dir: Some("/tmp/x".into()),
            max_total_memory: Some(Size(256 << 20)),
            ..PeerConfig::default()
        };
        assert_eq!(c.node_config().unwrap().caps.limits.memory_bytes, 256 << 20);
    }
}
