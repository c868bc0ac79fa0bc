"""Which task inputs travel inline in the submit request and which are uploaded as blobs: the
Rust SDK's rule (sdk/src/plan.rs). Inputs above `INLINE_MAX` are blobs; if the inline ones would
push the encoded request over `REQUEST_BUDGET`, the largest become blobs until it fits."""

from __future__ import annotations

from typing import List, Sequence

from .errors import JobTooLarge
from .ids import ID_HEX_LEN

#: Largest input sent inline in the submit request: 64 KiB.
INLINE_MAX = 64 * 1024
#: Largest encoded submit request sent: 60 MiB, under the peers' 64 MiB message cap.
REQUEST_BUDGET = 60 * 1024 * 1024

INLINE, BLOB = "inline", "blob"


def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def task_entry_len(placement: str, input_len: int) -> int:
    """Encoded length of one `TaskInput` entry of `SubmitRequest.tasks`."""
    if placement == INLINE:
        body = 1 + _varint_len(input_len) + input_len
    else:
        body = 1 + _varint_len(ID_HEX_LEN) + ID_HEX_LEN
    return 1 + _varint_len(body) + body


def plan_inputs(sizes: Sequence[int], base_len: int, inline_max: int = INLINE_MAX, budget: int = REQUEST_BUDGET) -> List[str]:
    """A placement (`INLINE` or `BLOB`) per input size. Raises `JobTooLarge` when even the
    smallest request exceeds `budget`."""
    plan = [BLOB if n > inline_max else INLINE for n in sizes]
    total = base_len + sum(task_entry_len(p, n) for p, n in zip(plan, sizes))
    if total <= budget:
        return plan
    inline = sorted((i for i, p in enumerate(plan) if p == INLINE), key=lambda i: -sizes[i])
    for i in inline:
        saved = max(0, task_entry_len(INLINE, sizes[i]) - task_entry_len(BLOB, sizes[i]))
        if saved == 0:
            break
        plan[i] = BLOB
        total -= saved
        if total <= budget:
            return plan
    raise JobTooLarge(len(sizes), total)
