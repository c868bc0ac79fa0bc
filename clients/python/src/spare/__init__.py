"""spare-client: submit WebAssembly jobs to a Spare mesh and collect the results a quorum of
peers verified.

    from spare import Client
    with Client("127.0.0.1:7070") as client:
        job = client.submit("examples/wasm/primes.wasm", ["0 1000\\n", "1000 2000\\n"], quorum=2)
        final = client.wait(job)
        for r in client.results(job):
            print(r.index, r.output_text if r.is_verified else r.reason())
"""

from .client import BLOB_CHUNK_BYTES, MAX_MESSAGE_BYTES, Client, Signer
from .errors import (
    AddressError,
    ConnectError,
    DeadlineExceeded,
    InvalidArgument,
    InvalidId,
    InvalidJob,
    JobTooLarge,
    NotAPeer,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    SpareError,
    StatusError,
    Unavailable,
    UnknownJob,
)
from .failures import Failures, Reason, stderr_line
from .identity import ClientIdentity, IdentityError
from .ids import blob_id
from .progress import ProgressCounter
from .tls import PeerIdentityError
from .types import (
    Event,
    JobState,
    JobStatus,
    Limits,
    Outcome,
    OutcomeKind,
    PeerCaps,
    PeerInfo,
    Progress,
    TaskCounts,
    TaskResult,
    TaskState,
    TaskStatus,
)

__all__ = [
    "AddressError", "BLOB_CHUNK_BYTES", "Client", "ClientIdentity", "ConnectError", "DeadlineExceeded", "Event",
    "Failures", "IdentityError", "InvalidArgument", "InvalidId", "InvalidJob", "JobState", "JobStatus",
    "JobTooLarge", "Limits", "MAX_MESSAGE_BYTES", "NotAPeer", "NotFound", "Outcome",
    "OutcomeKind", "PeerCaps", "PeerIdentityError", "PeerInfo", "PermissionDenied", "Progress", "ProgressCounter",
    "ProtocolError", "Reason", "ResourceExhausted", "Signer", "SpareError", "StatusError",
    "TaskCounts", "TaskResult", "TaskState", "TaskStatus", "Unavailable", "UnknownJob",
    "blob_id", "stderr_line",
]
