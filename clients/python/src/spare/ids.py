"""Ids as the mesh names things: a blob (a module, a large input) is the hex BLAKE3 of its
bytes, a job id is 64 hex characters the peer derives. The same as the Rust SDK's
`blob_id` (sdk/src/submit.rs) and `JobId` (sdk/src/id.rs)."""

from __future__ import annotations

import blake3

from .errors import InvalidId

#: Length of a job id (and of a blob id) in hex characters: a 32-byte hash.
ID_HEX_LEN = 64

_HEX = frozenset("0123456789abcdefABCDEF")


def blob_id(data: bytes) -> str:
    """The hex BLAKE3 id of `data`, as the mesh names blobs (module ids included)."""
    return blake3.blake3(data).hexdigest()


def is_hex_id(s: str) -> bool:
    """True when `s` is a 32-byte id in hex (either case)."""
    return len(s) == ID_HEX_LEN and all(c in _HEX for c in s)


def job_id(s: str) -> str:
    """`s` as a job id: trimmed, lower case. Raises `InvalidId` when it is not 64 hex characters."""
    t = s.strip()
    if not is_hex_id(t):
        raise InvalidId(s)
    return t.lower()
