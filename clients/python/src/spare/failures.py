"""Why tasks failed, in words: one `Reason` per failed or inconclusive task, and `Failures`,
which groups tasks that failed for the same reason (one line per cause, not one per task).

The wording is the Rust SDK's (sdk/src/failures.rs), so the CLI, the Rust SDK and this client
say the same thing about the same task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

#: Longest `stderr_line`, in bytes (``TaskStatus.stderr_line`` has the same bound).
STDERR_LINE_BYTES = 160

#: Most task indices kept per reason (the count stays exact).
_INDICES_KEPT = 5


def stderr_line(stderr: str) -> str:
    """The line of a task's stderr that says what went wrong: its last non-empty line, without
    Rust's ``note: run with `RUST_BACKTRACE=1``` hint, trimmed, at most `STDERR_LINE_BYTES`."""
    for line in reversed(stderr.splitlines()):
        line = line.strip()
        if line and not line.startswith("note: run with `RUST_BACKTRACE"):
            raw = line.encode("utf-8")[:STDERR_LINE_BYTES]
            return raw.decode("utf-8", errors="ignore")
    return ""


@dataclass(frozen=True, order=True)
class Reason:
    """Why one task has no verified result: how it ended, and its own words for it."""

    #: How it ended, as a past-tense phrase: ``exited 2``, ``trapped``, ``ran out of fuel``…
    ended: str
    #: The last line it wrote to stderr, or else the sandbox's note; empty when neither.
    detail: str = ""

    @staticmethod
    def of(state_name: str, outcome: "Optional[object]", details: Sequence[str]) -> "Reason":
        """`details`: the first that is not blank is the detail. `outcome` is a
        `spare.Outcome` or None."""
        if state_name == "inconclusive":
            ended = "ended inconclusive"
        elif outcome is not None:
            ended = outcome.ended()  # type: ignore[attr-defined]
        else:
            ended = f"ended {state_name}"
        detail = next((d.strip() for d in details if d.strip()), "")
        return Reason(ended, detail)

    def __str__(self) -> str:
        if not self.detail:
            return self.ended
        if "`" in self.detail:
            return f"{self.ended}: {self.detail}"
        return f"{self.ended}: `{self.detail}`"


@dataclass
class Failures:
    """Failed tasks grouped by `Reason`."""

    _groups: Dict[Reason, Tuple[int, List[int]]] = field(default_factory=dict)

    def add(self, reason: Reason, index: int) -> None:
        """Counts task `index` under `reason`."""
        count, indices = self._groups.get(reason, (0, []))
        if len(indices) < _INDICES_KEPT:
            indices.append(index)
        self._groups[reason] = (count + 1, indices)

    def total(self) -> int:
        """Tasks counted."""
        return sum(n for n, _ in self._groups.values())

    def __bool__(self) -> bool:
        return bool(self._groups)

    def lines(self, most: int = 10) -> List[str]:
        """One line per reason, the most frequent first, at most `most` of them (then one line
        counting the rest): ``37 tasks exited 2: `bad input` (tasks 0, 4, 9, 12, 13, …)``."""
        groups = sorted(self._groups.items(), key=lambda g: (-g[1][0], g[0]))
        out = []
        for reason, (count, indices) in groups[:most]:
            more = ", …" if count > len(indices) else ""
            tasks = "task" if count == 1 else "tasks"
            out.append(f"{count} {tasks} {reason} ({tasks} {', '.join(map(str, indices))}{more})")
        if len(groups) > most:
            rest = sum(n for _, (n, _) in groups[most:])
            out.append(f"{rest} more tasks failed for {len(groups) - most} other reasons")
        return out
