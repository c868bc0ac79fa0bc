"""The client's errors: every way connecting, building, submitting or following a job can fail.

Mirrors the Rust SDK's `Error` (sdk/src/error.rs): a peer's gRPC error keeps its code and
message, an unreachable peer keeps the transport's cause and a hint, and something that answers
without being a Spare peer is named as such.
"""

from __future__ import annotations

from typing import Optional

import grpc


class SpareError(Exception):
    """Base of every error this package raises."""


class AddressError(SpareError):
    """The peer address cannot be used as given (e.g. ``https://`` without TLS credentials)."""

    def __init__(self, addr: str, reason: str):
        super().__init__(f"cannot use the peer address {addr}: {reason}")
        self.addr = addr
        self.reason = reason


class ConnectError(SpareError):
    """Nothing answered at the address. The message keeps the transport's cause and says what
    to do."""

    def __init__(self, addr: str, cause: str):
        super().__init__(
            f"cannot connect to {addr}: {cause}; is a peer running there? Start one with "
            "`spare peer --data-dir DIR`, or give the address of one"
        )
        self.addr = addr
        self.cause = cause


class NotAPeer(SpareError):
    """Something answered at the address, but not as a Spare peer (plain HTTP, not gRPC)."""

    def __init__(self, addr: str, answer: str):
        super().__init__(
            f"the server at {addr} is not a Spare peer: {answer} "
            "(is the address the one `spare peer --listen` serves?)"
        )
        self.addr = addr
        self.answer = answer


class StatusError(SpareError):
    """The peer answered with a gRPC error, shown as ``"{code}: {message}"``."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code_name(code)}: {message}")
        self.code = code
        self.message = message


class NotFound(StatusError):
    """The peer does not hold the job or blob (``NOT_FOUND``)."""


class InvalidArgument(StatusError):
    """The peer refused the request as malformed or beyond a cap (``INVALID_ARGUMENT``)."""


class PermissionDenied(StatusError):
    """The peer's volunteer does not serve this submitter, module or quorum."""


class ResourceExhausted(StatusError):
    """The peer is full (tasks held, submissions in flight, disk); try later or another peer."""


class Unavailable(StatusError):
    """The peer stopped answering (``UNAVAILABLE``)."""


class DeadlineExceeded(StatusError, TimeoutError):
    """A call's timeout passed (``DEADLINE_EXCEEDED``), e.g. ``wait(job, timeout=…)``."""


class UnknownJob(SpareError):
    """No job, or more than one, matches a shortened job id."""


class InvalidId(SpareError, ValueError):
    """A string that should be a job id (64 hex characters) is not one."""

    def __init__(self, given: str):
        super().__init__(
            f"not a job id (64 hex characters): {given!r}; give the id `submit` returned, "
            "or resolve a short one with Client.find_job"
        )
        self.given = given


class InvalidJob(SpareError, ValueError):
    """The job cannot be submitted as described (no tasks, an empty or non-WASM module, a
    quorum above max_replicas…)."""


class JobTooLarge(InvalidJob):
    """Even with every input uploaded as a blob, the submit request exceeds the message budget."""

    def __init__(self, tasks: int, size: int):
        super().__init__(
            f"job too large to submit: {tasks} tasks need a {size}-byte request even with every input as a blob"
        )
        self.tasks = tasks
        self.size = size


class ProtocolError(SpareError):
    """The peer sent something the protocol does not allow (a malformed id, a stream that ended
    early)."""


_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}

# What gRPC's C core says when no connection could be made at all.
_NO_CONNECTION = ("failed to connect to all addresses", "connection refused", "dns resolution failed")
# What it says when a server that is not gRPC answered: an HTTP/1 server, or HTTP/2 without gRPC.
_NOT_GRPC = ("failed parsing http/2", "received http2 header with status", "grpc-status header missing")


def from_rpc_error(e: grpc.RpcError, addr: str) -> SpareError:
    """The error a failed call stands for (``e`` is a ``grpc.Call`` for every call this
    package makes)."""
    code: Optional[grpc.StatusCode] = e.code() if hasattr(e, "code") else None
    details: str = (e.details() if hasattr(e, "details") else None) or str(e)
    low = details.lower()
    if any(s in low for s in _NOT_GRPC):
        return NotAPeer(addr, f"it does not answer gRPC ({_deepest(details)})")
    if code == grpc.StatusCode.UNAVAILABLE and any(s in low for s in _NO_CONNECTION):
        return ConnectError(addr, _deepest(details))
    if code is None:
        return StatusError(grpc.StatusCode.UNKNOWN, details)
    return _BY_CODE.get(code, StatusError)(code, details)


def _deepest(details: str) -> str:
    """The last clause of a C-core error chain (``…: Connection refused``), which says what
    actually went wrong."""
    tail = details.rstrip().rsplit(": ", 1)[-1].strip()
    return tail or details


def code_name(code: grpc.StatusCode) -> str:
    """A short lowercase name for a gRPC status code (``not found``), as the Rust SDK shows it."""
    return code.name.lower().replace("_", " ")
