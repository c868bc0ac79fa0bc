//! A job's policy (quorum, replica bound, sandbox limits, priority, adaptive replication), its
//! defaults, and the caps a coordinator enforces on what submitters may ask for.

use serde::{Deserialize, Serialize};

use crate::prefix::Diversity;

/// Per-task sandbox limits. Every field is explicit once a job is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Linear memory a task may grow to, in bytes.
    pub memory_bytes: u64,
    /// Deterministic instruction budget (`--fuel`). [`Limits::NO_FUEL_BUDGET`], the default,
    /// is none: only the wall deadline stops a task, and its code runs without fuel metering.
    pub fuel: u64,
    /// Wall-clock deadline per replica, in milliseconds (not deterministic: a miss is retried).
    pub timeout_ms: u64,
    /// Largest stdout a task may write.
    pub output_bytes: u64,
}

/// How a job's results are trusted and bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Distinct peers that must agree bit for bit.
    pub quorum: u32,
    /// Most replicas (attestations) one task may get before it is inconclusive.
    pub max_replicas: u32,
    /// Sandbox limits of every task.
    pub limits: Limits,
    /// Higher is served first.
    pub priority: i32,
    /// Adaptive replication: trusted peers may get single-replica tasks. Off (`None`) by default.
    pub adaptive: Option<Adaptive>,
    /// How far apart the networks of one task's replicas must be (`None`: the coordinator's
    /// default, `CoordinatorConfig::diversity`). Not in the serde form, so the postcard bytes of
    /// a policy (in job ads, stored jobs, job ids) stay what peers and stores of before read:
    /// a store keeps it beside the job and a job id covers it explicitly.
    #[serde(skip)]
    pub diversity: Option<Diversity>,
}

/// Adaptive replication, as BOINC does it: a peer with a long record of agreeing results (in
/// this coordinator's reputation) may get a task alone, and its one attestation decides it. A
/// share of the tasks it takes still gets the full quorum (spot checks); a disagreement there,
/// or any other evidence against it, ends its trust at once. The submitter trades replicas for
/// the risk of accepting a wrong result from a peer that behaved until it was trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adaptive {
    /// Attestations a peer must have seen agree with quorum verdicts here, with no disagreement
    /// and no invalid record, before it may run a task alone. At least [`Adaptive::MIN_AGREED`].
    pub min_agreed: u32,
    /// Out of 1,000 tasks a trusted peer takes first, how many still get the full quorum. The
    /// choice is a keyed hash of the coordinator's secret and the task, so no peer can tell a
    /// spot check from a lone task. 0..=1000; 0 never checks a trusted peer again.
    pub spot_check_per_mille: u32,
}

impl Adaptive {
    /// The least `min_agreed` a coordinator accepts: a peer must show at least this much.
    pub const MIN_AGREED: u32 = 10;
    /// The spot-check rate when a submitter asks for adaptive replication without one (10%).
    pub const DEFAULT_SPOT_CHECK_PER_MILLE: u32 = 100;
}

impl Limits {
    /// `fuel` meaning "no budget": more instructions than any task runs within the longest
    /// timeout a peer accepts, so a run with it can only end by itself or by its deadline.
    /// It is also the cap ([`PolicyCaps`]), so no job asks for more.
    pub const NO_FUEL_BUDGET: u64 = u64::MAX / 2;

    /// Whether the job set a deterministic instruction budget: its tasks then run with fuel
    /// metering (and can end `out_of_fuel`); otherwise without it, at full speed.
    pub fn has_fuel_budget(&self) -> bool {
        self.fuel < Self::NO_FUEL_BUDGET
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            fuel: Limits::NO_FUEL_BUDGET,
            timeout_ms: 60_000,
            output_bytes: 16 << 20,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy { quorum: 2, max_replicas: 5, limits: Limits::default(), priority: 0, adaptive: None, diversity: None }
    }
}

/// The most a coordinator accepts; submissions beyond are refused with a [`PolicyError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCaps {
    /// Largest quorum.
    pub max_quorum: u32,
    /// Largest max_replicas.
    pub max_replicas: u32,
    /// Largest limits a task may ask for.
    pub limits: Limits,
    /// Most tasks in one job ([`PolicyCaps::MAX_TASKS`] by default): a job's tasks are held in
    /// memory by each of its coordinators and its inputs written at submission, so one
    /// submission must not be able to occupy a peer for long.
    pub max_tasks: u32,
}

impl Default for PolicyCaps {
    fn default() -> Self {
        PolicyCaps {
            max_quorum: 16,
            max_replicas: 32,
            limits: Limits {
                memory_bytes: 4 << 30,
                fuel: Limits::NO_FUEL_BUDGET,
                timeout_ms: 24 * 3600 * 1000,
                output_bytes: 64 << 20,
            },
            max_tasks: Self::MAX_TASKS,
        }
    }
}

/// Why a policy or job shape was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Quorum of zero cannot verify anything.
    #[error("quorum must be at least 1")]
    ZeroQuorum,
    /// Quorum above the cap.
    #[error("quorum {quorum} is above this peer's cap of {max}")]
    QuorumTooLarge { quorum: u32, max: u32 },
    /// max_replicas below quorum could never verify.
    #[error("max_replicas {max_replicas} is below quorum {quorum}")]
    ReplicasBelowQuorum { max_replicas: u32, quorum: u32 },
    /// max_replicas above the cap.
    #[error("max_replicas {max_replicas} is above this peer's cap of {max}")]
    TooManyReplicas { max_replicas: u32, max: u32 },
    /// A limit is zero after defaults, or above the cap.
    #[error("limit {name} = {value} is outside 1..={max}")]
    LimitOutOfRange { name: &'static str, value: u64, max: u64 },
    /// A job must have at least one task.
    #[error("a job needs at least one task")]
    NoTasks,
    /// Too many tasks for one job.
    #[error("{count} tasks is above this peer's cap of {max} per job")]
    TooManyTasks { count: u64, max: u32 },
    /// Adaptive replication asked to trust peers on too little evidence.
    #[error("adaptive min_agreed {min_agreed} is below the floor of {min}")]
    TrustTooCheap { min_agreed: u32, min: u32 },
    /// A spot-check rate is a share of 1,000.
    #[error("spot_check_per_mille {0} is above 1000")]
    SpotCheckOutOfRange(u32),
}

impl PolicyCaps {
    /// The default cap on tasks per job. More work is more jobs.
    pub const MAX_TASKS: u32 = 100_000;

    /// Checks a complete policy and a task count against these caps.
    pub fn check(&self, policy: &Policy, tasks: u64) -> Result<(), PolicyError> {
        if tasks == 0 {
            return Err(PolicyError::NoTasks);
        }
        if tasks > u64::from(self.max_tasks) {
            return Err(PolicyError::TooManyTasks { count: tasks, max: self.max_tasks });
        }
        if policy.quorum == 0 {
            return Err(PolicyError::ZeroQuorum);
        }
        if policy.quorum > self.max_quorum {
            return Err(PolicyError::QuorumTooLarge { quorum: policy.quorum, max: self.max_quorum });
        }
        if policy.max_replicas < policy.quorum {
            return Err(PolicyError::ReplicasBelowQuorum {
                max_replicas: policy.max_replicas,
                quorum: policy.quorum,
            });
        }
        if policy.max_replicas > self.max_replicas {
            return Err(PolicyError::TooManyReplicas {
                max_replicas: policy.max_replicas,
                max: self.max_replicas,
            });
        }
        let l = &policy.limits;
        let c = &self.limits;
        for (name, value, max) in [
            ("memory_bytes", l.memory_bytes, c.memory_bytes),
            ("fuel", l.fuel, c.fuel),
            ("timeout_ms", l.timeout_ms, c.timeout_ms),
            ("output_bytes", l.output_bytes, c.output_bytes),
        ] {
            if value == 0 || value > max {
                return Err(PolicyError::LimitOutOfRange { name, value, max });
            }
        }
        if let Some(a) = policy.adaptive {
            if a.min_agreed < Adaptive::MIN_AGREED {
                return Err(PolicyError::TrustTooCheap { min_agreed: a.min_agreed, min: Adaptive::MIN_AGREED });
            }
            if a.spot_check_per_mille > 1_000 {
                return Err(PolicyError::SpotCheckOutOfRange(a.spot_check_per_mille));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_passes_default_caps() {
        assert_eq!(PolicyCaps::default().check(&Policy::default(), 10), Ok(()));
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let caps = PolicyCaps::default();
        let p = Policy { quorum: 3, max_replicas: 2, ..Policy::default() };
        assert_eq!(
            caps.check(&p, 1),
            Err(PolicyError::ReplicasBelowQuorum { max_replicas: 2, quorum: 3 })
        );
        assert_eq!(caps.check(&Policy::default(), 0), Err(PolicyError::NoTasks));
        let p = Policy { quorum: 0, ..Policy::default() };
        assert_eq!(caps.check(&p, 1), Err(PolicyError::ZeroQuorum));
    }

    #[test]
    fn adaptive_replication_is_bounded() {
        let caps = PolicyCaps::default();
        let with = |min_agreed, spot_check_per_mille| Policy {
            adaptive: Some(Adaptive { min_agreed, spot_check_per_mille }),
            ..Policy::default()
        };
        assert_eq!(caps.check(&with(10, 0), 1), Ok(()));
        assert_eq!(caps.check(&with(1_000, 1_000), 1), Ok(()));
        assert_eq!(caps.check(&with(9, 100), 1), Err(PolicyError::TrustTooCheap { min_agreed: 9, min: 10 }));
        assert_eq!(caps.check(&with(10, 1_001), 1), Err(PolicyError::SpotCheckOutOfRange(1_001)));
    }
}
