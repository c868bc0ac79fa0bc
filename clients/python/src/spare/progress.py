"""Counting a job's finished tasks while following it, each task once (the Rust SDK's
`ProgressCounter`, sdk/src/progress.rs).

A Watch stream starts with a snapshot (counts, no indices), then one event per task that ends;
a task that ends while the watch begins may be both in the snapshot's counts and get an event,
so adding events to the snapshot's count over-counts (126/100). The counter reads which tasks
were final once the snapshot is in, then counts a task when it is among those or had an event.
"""

from __future__ import annotations

from typing import Set

from .types import JobStatus, Progress


class ProgressCounter:
    """Counts a job's finished tasks from its statuses and watch events, each task once."""

    def __init__(self) -> None:
        self._counted = 0
        self._total = 0
        self._seen: Set[int] = set()

    def update(self, status: JobStatus) -> None:
        """Takes a status's counts (a snapshot, a fresh status, the final one)."""
        self._counted = status.counts.done
        self._total = status.counts.total

    def count_final(self, status: JobStatus) -> None:
        """Counts the final tasks of a status read with its task list."""
        self.update(status)
        self._seen.update(t.index for t in status.tasks if t.state.is_final)

    def task_done(self, index: int) -> bool:
        """Counts a task's final event; False when it was counted already."""
        if index in self._seen:
            return False
        self._seen.add(index)
        return True

    def progress(self) -> Progress:
        """Tasks finished so far: never one twice, never more than the job has."""
        return Progress(min(max(self._counted, len(self._seen)), self._total), self._total)
