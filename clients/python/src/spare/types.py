"""What the client hands out: typed job statuses, task statuses, results, events and peer
info, made from the spare.v1 wire messages (the Rust SDK's types, sdk/src/result.rs, in Python).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List, Optional

from .failures import Failures, Reason, stderr_line


class JobState(enum.Enum):
    """Where a job stands; the value is the name the CLI shows."""

    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    RUNNING = "running"
    #: Every task is verified.
    COMPLETED = "completed"
    #: Every task ended, and at least one is failed or inconclusive.
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for the states a job never leaves: completed, failed, cancelled."""
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)

    @staticmethod
    def from_pb(value: int) -> "JobState":
        return _JOB_STATES.get(value, JobState.UNSPECIFIED)


class TaskState(enum.Enum):
    """Where a task stands; the value is the name the CLI shows."""

    UNSPECIFIED = "unspecified"
    PENDING = "pending"
    RUNNING = "running"
    VERIFIED = "verified"
    INCONCLUSIVE = "inconclusive"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """True for the states a task never leaves: verified, inconclusive, failed."""
        return self in (TaskState.VERIFIED, TaskState.INCONCLUSIVE, TaskState.FAILED)

    @staticmethod
    def from_pb(value: int) -> "TaskState":
        return _TASK_STATES.get(value, TaskState.UNSPECIFIED)


# Wire enum numbers (spare.v1.JobState / TaskState) to the enums above.
_JOB_STATES = {i: s for i, s in enumerate(JobState)}
_TASK_STATES = {i: s for i, s in enumerate(TaskState)}


class OutcomeKind(enum.Enum):
    """How a task's run ended (spare.v1.OutcomeKind)."""

    EXITED = 1
    TRAPPED = 2
    OUT_OF_FUEL = 3
    MEMORY_LIMIT = 4
    OUTPUT_TOO_LARGE = 5
    DEADLINE = 6
    INVALID_MODULE = 7


@dataclass(frozen=True)
class Outcome:
    """How a task's run ended, as the peers that decided it agreed."""

    kind: OutcomeKind
    #: For EXITED: the exit code (0 on a normal return from ``_start``).
    exit_code: int = 0

    @property
    def is_success(self) -> bool:
        """True for an exit with code 0."""
        return self.kind == OutcomeKind.EXITED and self.exit_code == 0

    def ended(self) -> str:
        """How the run ended, as a past-tense phrase (the Rust SDK's wording)."""
        return {
            OutcomeKind.EXITED: f"exited {self.exit_code}",
            OutcomeKind.TRAPPED: "trapped",
            OutcomeKind.OUT_OF_FUEL: "ran out of fuel (raise --fuel)",
            OutcomeKind.MEMORY_LIMIT: "hit the memory limit (raise --memory)",
            OutcomeKind.OUTPUT_TOO_LARGE: "wrote more output than allowed (raise --output-bytes)",
            OutcomeKind.DEADLINE: "kept missing the deadline (raise --timeout)",
            OutcomeKind.INVALID_MODULE: "could not run the module",
        }[self.kind]

    @staticmethod
    def from_pb(o) -> "Optional[Outcome]":
        """The outcome a wire ``Outcome`` carries (None when unset)."""
        if o is None or o.kind == 0:
            return None
        try:
            return Outcome(OutcomeKind(o.kind), o.exit_code)
        except ValueError:
            return None


@dataclass(frozen=True)
class Limits:
    """Per-task sandbox limits; a zero field takes the peer's default (`PeerCaps.default_limits`)."""

    #: Linear memory a task may grow to, in bytes.
    memory_bytes: int = 0
    #: Deterministic instruction budget; running out is a result like any other.
    fuel: int = 0
    #: Wall-clock deadline per replica, in milliseconds (a miss is retried elsewhere).
    timeout_ms: int = 0
    #: Largest stdout a task may write, in bytes.
    output_bytes: int = 0

    @staticmethod
    def from_pb(l) -> "Limits":
        return Limits(l.memory_bytes, l.fuel, l.timeout_ms, l.output_bytes)


@dataclass(frozen=True)
class TaskCounts:
    """A job's tasks by state."""

    total: int = 0
    pending: int = 0
    running: int = 0
    verified: int = 0
    inconclusive: int = 0
    failed: int = 0

    @property
    def done(self) -> int:
        """Tasks that reached a final state."""
        return self.verified + self.inconclusive + self.failed


@dataclass(frozen=True)
class TaskStatus:
    """One task of a job's status (`Client.status(job, tasks=True)`, a watch event)."""

    index: int
    state: TaskState
    #: Hex BLAKE3 of the agreed output (empty until decided).
    output_hash: str = ""
    #: Peers whose attestations make up the quorum.
    verified_by: List[str] = field(default_factory=list)
    outcome: Optional[Outcome] = None
    #: The sandbox's note on the outcome (which trap or limit).
    message: str = ""
    #: Why the task failed or waits.
    error: str = ""
    #: Attestations received so far, agreeing or not.
    attestations: int = 0
    #: The verdict rests on one trusted peer alone (adaptive replication).
    lone: bool = False
    #: The last line its deciding run wrote to stderr (failed or inconclusive tasks).
    stderr_line: str = ""

    def reason(self) -> Optional[Reason]:
        """Why it failed (None unless it failed or is inconclusive)."""
        if self.state not in (TaskState.FAILED, TaskState.INCONCLUSIVE):
            return None
        return Reason.of(self.state.value, self.outcome, [self.stderr_line, self.message, self.error])

    @staticmethod
    def from_pb(t) -> "TaskStatus":
        has = t.HasField("outcome")
        return TaskStatus(
            index=t.index,
            state=TaskState.from_pb(t.state),
            output_hash=t.output_hash,
            verified_by=list(t.verified_by),
            outcome=Outcome.from_pb(t.outcome) if has else None,
            message=t.outcome.message if has else "",
            error=t.error,
            attestations=t.attestations,
            lone=t.lone,
            stderr_line=t.stderr_line,
        )


@dataclass(frozen=True)
class JobStatus:
    """A job's status: state, counts, policy, and what it waits for."""

    job_id: str
    state: JobState
    counts: TaskCounts
    #: Every task, when asked for (`status(job, tasks=True)`); empty otherwise.
    tasks: List[TaskStatus] = field(default_factory=list)
    quorum: int = 0
    max_replicas: int = 0
    limits: Limits = Limits()
    priority: int = 0
    #: Network diversity of its replicas: "prefix", "wide", "off", or "" (the coordinator's default).
    diversity: str = ""
    module_id: str = ""
    label: str = ""
    #: Unix milliseconds.
    submitted_at_ms: int = 0
    #: Why the job waits or failed, in words.
    message: str = ""
    #: Peer id of the peer that accepted the job.
    origin: str = ""
    #: Addresses of the peers coordinating the job, the active one first.
    coordinators: List[str] = field(default_factory=list)
    #: Hex key of the submitter that owns the job (the only key that may cancel it).
    owner: str = ""

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    def failures(self) -> Failures:
        """Its failed tasks grouped by reason (needs `tasks=True`)."""
        f = Failures()
        for t in self.tasks:
            why = t.reason()
            if why is not None:
                f.add(why, t.index)
        return f

    @staticmethod
    def from_pb(s) -> "JobStatus":
        c = s.tasks
        p = s.policy
        return JobStatus(
            job_id=s.job_id,
            state=JobState.from_pb(s.state),
            counts=TaskCounts(c.total, c.pending, c.running, c.verified, c.inconclusive, c.failed),
            tasks=[TaskStatus.from_pb(t) for t in s.task_list],
            quorum=p.quorum,
            max_replicas=p.max_replicas,
            limits=Limits.from_pb(p.limits),
            priority=p.priority,
            diversity={1: "prefix", 2: "wide", 3: "off"}.get(p.diversity, ""),
            module_id=s.module_id,
            label=s.label,
            submitted_at_ms=s.submitted_at_ms,
            message=s.message,
            origin=s.origin,
            coordinators=list(s.coordinators),
            owner=s.owner,
        )


@dataclass(frozen=True)
class TaskResult:
    """One task's final result."""

    index: int
    state: TaskState
    #: The verified stdout (empty unless verified).
    output: bytes = b""
    output_hash: str = ""
    outcome: Optional[Outcome] = None
    #: The sandbox's note on it: which trap or which limit (empty for a plain exit).
    message: str = ""
    #: The tail of what the deciding run wrote to stderr (at most 4 KiB).
    stderr: str = ""
    verified_by: List[str] = field(default_factory=list)

    @property
    def is_verified(self) -> bool:
        """True when a quorum verified its output."""
        return self.state == TaskState.VERIFIED

    @property
    def output_text(self) -> str:
        """The output as text (invalid UTF-8 replaced)."""
        return self.output.decode("utf-8", errors="replace")

    def reason(self) -> Optional[Reason]:
        """Why it has no verified result (None when it has one)."""
        if self.is_verified:
            return None
        return Reason.of(self.state.value, self.outcome, [stderr_line(self.stderr), self.message])

    @staticmethod
    def from_pb(r) -> "TaskResult":
        has = r.HasField("outcome")
        return TaskResult(
            index=r.index,
            state=TaskState.from_pb(r.state),
            output=bytes(r.output),
            output_hash=r.output_hash,
            outcome=Outcome.from_pb(r.outcome) if has else None,
            message=r.outcome.message if has else "",
            stderr=r.stderr,
            verified_by=list(r.verified_by),
        )


@dataclass(frozen=True)
class Progress:
    """Tasks of a job that ended, out of all of them."""

    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class Event:
    """One step of `Client.watch`: ``kind`` is ``"snapshot"`` (the job as it stands, first),
    ``"task_done"`` (one task ended: `task`) or ``"finished"`` (the job ended; the last event).
    ``status`` is set for snapshot and finished; ``progress`` counts every task once."""

    kind: str
    progress: Progress
    status: Optional[JobStatus] = None
    task: Optional[TaskStatus] = None


@dataclass(frozen=True)
class PeerCaps:
    """A peer's bounds: requests beyond one are refused naming it."""

    max_message_bytes: int
    max_module_bytes: int
    max_blob_bytes: int
    max_tasks: int
    max_quorum: int
    max_replicas: int
    max_limits: Limits
    default_limits: Limits
    max_args_bytes: int
    max_task_list: int
    max_list: int

    @staticmethod
    def from_pb(c) -> "PeerCaps":
        return PeerCaps(
            c.max_message_bytes,
            c.max_module_bytes,
            c.max_blob_bytes,
            c.max_tasks,
            c.max_quorum,
            c.max_replicas,
            Limits.from_pb(c.max_limits),
            Limits.from_pb(c.default_limits),
            c.max_args_bytes,
            c.max_task_list,
            c.max_list,
        )


@dataclass(frozen=True)
class PeerInfo:
    """What a peer says about itself (`Client.info`) or another peer (`Client.peers`)."""

    peer_id: str
    addr: str
    version: str
    state: str
    cpus_total: int
    cpus_free: int
    jobs: int
    #: This peer's bounds (`Client.info` only; None for other peers).
    caps: Optional[PeerCaps] = None
    #: Whether other peers can dial it: "reachable", "unreachable" (behind NAT: it works through
    #: relays and coordinates nothing) or "unknown" (not found out yet, or no advert heard).
    reachability: str = "unknown"

    @staticmethod
    def from_pb(p) -> "PeerInfo":
        states = {1: "alive", 2: "suspect", 3: "dead"}
        return PeerInfo(
            peer_id=p.peer_id,
            addr=p.addr,
            version=p.version,
            state=states.get(p.state, "unspecified"),
            cpus_total=p.cpus_total,
            cpus_free=p.cpus_free,
            jobs=p.jobs,
            caps=PeerCaps.from_pb(p.caps) if p.HasField("caps") else None,
            reachability={1: "reachable", 2: "unreachable"}.get(p.reachability, "unknown"),
        )
