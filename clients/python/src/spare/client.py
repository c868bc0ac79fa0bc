"""`Client`: a connection to one Spare peer, and every call a submitter makes: submit a job,
follow it, collect its verified results, cancel it, list jobs.

It follows the Rust SDK (sdk/src/client.rs, submit.rs): the module is uploaded once (skipped
when the peer has it) under its BLAKE3 id, small inputs travel inline and large ones as blobs,
and errors are typed (`spare.errors`).
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import grpc

from . import errors, tls
from .errors import InvalidJob, ProtocolError, UnknownJob
from .identity import ClientIdentity
from .ids import ID_HEX_LEN, blob_id, job_id
from .plan import BLOB, plan_inputs
from .progress import ProgressCounter
from .types import Event, JobStatus, Limits, PeerInfo, TaskResult, TaskStatus
from .v1 import blob_pb2, blob_pb2_grpc, common_pb2, job_pb2, job_pb2_grpc, peer_pb2, peer_pb2_grpc

#: Largest gRPC message the client sends or accepts: 64 MiB (the peers' cap).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Size of each blob upload chunk: 1 MiB.
BLOB_CHUNK_BYTES = 1024 * 1024
#: Length of the random nonce drawn for each submit.
NONCE_BYTES = 16
#: Network diversities a job may ask for, by name ("": the peer's default).
DIVERSITIES = {
    "": common_pb2.DIVERSITY_UNSPECIFIED,
    "prefix": common_pb2.DIVERSITY_PREFIX,
    "wide": common_pb2.DIVERSITY_WIDE,
    "off": common_pb2.DIVERSITY_OFF,
}
#: Most jobs `find_job` looks through (the peer's cap on a list).
MAX_LISTED = 1000

#: Metadata a `Signer` adds to a call: (key, value) pairs.
Metadata = Sequence[Tuple[str, Union[str, bytes]]]

#: A signing hook for the calls that act on a job (Submit, Cancel): given the method's full
#: name ("/spare.v1.JobService/Submit") and the request message, it may set fields of the
#: request (a signature) and returns metadata to send with it (may be empty).
Signer = Callable[[str, object], Metadata]

Module = Union[bytes, str, "os.PathLike[str]"]
Input = Union[bytes, str]


def _on_loopback(target: str) -> bool:
    try:
        return tls.is_loopback_host(tls.split_host_port(target)[0])
    except errors.AddressError:
        return False


class Client:
    """A connection to one Spare peer, which accepts jobs and answers for every job it coordinates.

    ``Client("127.0.0.1:7070")`` talks plaintext gRPC to a peer on this machine (a loopback
    address or ``localhost``). Any other address, or one given with its PeerId
    (``host:port@PEERID``) or ``https://``, is spoken to over TLS 1.3, checking that the peer's
    certificate carries the PeerId given, else the one pinned for the address in
    ``~/.config/spare/known_peers`` (the file `spare` uses; the first PeerId met at an address is
    pinned): another one there raises `PeerIdentityError`. For TLS of your own pass
    ``credentials=grpc.ssl_channel_credentials(…)``.

    Submit and Cancel are signed with the client's key (`identity`; by default the one `spare`
    uses, ``~/.config/spare/client.key`` or ``$SPARE_IDENTITY``, made on first use): a job's
    owner is the key that submitted it, and only it may cancel it.
    A `Signer` adds metadata to those two calls besides. A client is cheap; close it (or use it
    as a context manager) to close the channel.
    """

    def __init__(
        self,
        addr: str = "127.0.0.1:7070",
        *,
        credentials: Optional[grpc.ChannelCredentials] = None,
        signer: Optional[Signer] = None,
        channel: Optional[grpc.Channel] = None,
        identity: Optional[ClientIdentity] = None,
    ) -> None:
        self.addr = addr
        self._signer = signer
        self._identity = identity
        # The peer's id, which signatures name (asked once).
        self._receiver: Optional[bytes] = None
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Watch and Results streams can sit idle for long: keep NATs from dropping them.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ]
        target, pinned, https = tls.parse_target(addr)
        self._tunnel: Optional[tls.Tunnel] = None
        if channel is None and credentials is None and (pinned is not None or https or not _on_loopback(target)):
            # Off this machine: TLS, checking the peer's PeerId (given, else pinned on first use),
            # through a loopback tunnel (grpcio's TLS cannot speak to a peer: see `spare.tls`).
            self._receiver = tls.check_peer(target, pinned)
            self._tunnel = tls.Tunnel(target, self._receiver)
            options.append(("grpc.default_authority", target))
            target = self._tunnel.local
        if channel is not None:
            self._channel = channel
        elif credentials is not None:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._jobs = job_pb2_grpc.JobServiceStub(self._channel)
        self._blobs = blob_pb2_grpc.BlobServiceStub(self._channel)
        self._peers = peer_pb2_grpc.PeerServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel; streams still open end."""
        self._channel.close()
        if self._tunnel is not None:
            self._tunnel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- calls ------------------------------------------------------------------------------

    def _call(self, fn, request, *, timeout: Optional[float] = None, method: str = ""):
        metadata: List[Tuple[str, Union[str, bytes]]] = []
        if method and self._signer is not None:
            metadata.extend(self._signer(method, request))
        try:
            return fn(request, timeout=timeout, metadata=metadata or None)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, self.addr) from None

    @property
    def identity(self) -> ClientIdentity:
        """The key Submit and Cancel are signed with (loaded or made on first use)."""
        if self._identity is None:
            self._identity = ClientIdentity.load_default()
        return self._identity

    def _receiver_id(self) -> bytes:
        """The id of the peer this client talks to, as signatures name it."""
        if self._receiver is None:
            peer_id = self.info().peer_id
            try:
                self._receiver = bytes.fromhex(peer_id)
            except ValueError:
                raise ProtocolError(f"the peer gave a malformed peer id {peer_id!r}") from None
        return self._receiver

    def _stream(self, call) -> Iterator:
        try:
            yield from call
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, self.addr) from None

    # --- peers ------------------------------------------------------------------------------

    def info(self) -> PeerInfo:
        """What the peer says about itself, with its caps (`PeerInfo.caps`)."""
        return PeerInfo.from_pb(self._call(self._peers.Info, peer_pb2.InfoRequest()))

    def peers(self) -> List[PeerInfo]:
        """The peers this peer knows (itself included)."""
        reply = self._call(self._peers.Peers, peer_pb2.PeersRequest())
        return [PeerInfo.from_pb(p) for p in reply.peers]

    # --- blobs and submitting ---------------------------------------------------------------

    def upload_blob(self, data: bytes) -> str:
        """Stores `data` on the peer and returns its id (hex BLAKE3); skipped when the peer holds
        it already."""
        bid = blob_id(data)
        try:
            info = self._blobs.Stat(blob_pb2.GetBlobRequest(blob_id=bid))
            if info.size == len(data):
                return bid
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
                raise errors.from_rpc_error(e, self.addr) from None

        def chunks() -> Iterator[blob_pb2.PutBlobRequest]:
            yield blob_pb2.PutBlobRequest(expected_id=bid, chunk=data[:BLOB_CHUNK_BYTES])
            for start in range(BLOB_CHUNK_BYTES, len(data), BLOB_CHUNK_BYTES):
                yield blob_pb2.PutBlobRequest(chunk=data[start : start + BLOB_CHUNK_BYTES])

        info = self._call(self._blobs.Put, chunks())
        if info.blob_id.lower() != bid:
            raise ProtocolError(f"uploaded blob {bid} but the peer stored it as {info.blob_id!r}")
        return bid

    def submit(
        self,
        module: Module,
        inputs: Iterable[Input],
        *,
        quorum: int = 0,
        max_replicas: int = 0,
        limits: Optional[Limits] = None,
        priority: int = 0,
        diversity: str = "",
        args: Sequence[str] = (),
        env: Optional[Dict[str, str]] = None,
        label: str = "",
        nonce: Optional[bytes] = None,
    ) -> str:
        """Submits a job and returns its id.

        `module` is a WASI preview 1 command module: its bytes or a path to it. `inputs` holds
        one stdin per task (``str`` is sent as UTF-8). ``quorum`` distinct peers must agree on a
        task's output (0: the peer's default, 2); ``limits`` bound each task (zero fields take
        the peer's defaults). ``diversity`` is how far apart the networks of a task's replicas
        must be: ``"prefix"`` (no two in one /24 or /48), ``"wide"`` (nor one /16 or /32) or
        ``"off"`` (distinct keys only); empty: the peer's default. Raises `InvalidJob` before
        anything is sent when the module is not WebAssembly, there are no tasks or the diversity
        is not one of those, and a `StatusError` when the peer refuses it.
        """
        code = _read_module(module)
        tasks = [i.encode("utf-8") if isinstance(i, str) else bytes(i) for i in inputs]
        if not tasks:
            raise InvalidJob("the job has no tasks")
        if quorum and max_replicas and quorum > max_replicas:
            raise InvalidJob(f"quorum {quorum} exceeds max_replicas {max_replicas}")
        if diversity not in DIVERSITIES:
            raise InvalidJob(f"diversity {diversity!r} is not one of prefix, wide, off")
        limits = limits or Limits()
        request = job_pb2.SubmitRequest(
            module_id="",
            policy=common_pb2.Policy(
                quorum=quorum,
                max_replicas=max_replicas,
                limits=common_pb2.Limits(
                    memory_bytes=limits.memory_bytes,
                    fuel=limits.fuel,
                    timeout_ms=limits.timeout_ms,
                    output_bytes=limits.output_bytes,
                ),
                priority=priority,
                diversity=DIVERSITIES[diversity],
            ),
            args=list(args),
            env=[common_pb2.EnvVar(key=k, value=v) for k, v in (env or {}).items()],
            label=label,
            nonce=nonce if nonce is not None else os.urandom(NONCE_BYTES),
        )
        request.module_id = self.upload_blob(code)
        plan = plan_inputs([len(t) for t in tasks], request.ByteSize())
        uploaded: Dict[str, str] = {}
        for data, placement in zip(tasks, plan):
            if placement == BLOB:
                bid = blob_id(data)
                if bid not in uploaded:
                    uploaded[bid] = self.upload_blob(data)
                request.tasks.append(common_pb2.TaskInput(blob_id=bid))
            else:
                request.tasks.append(common_pb2.TaskInput(inline=data))
        self.identity.sign_submit(request, self._receiver_id())
        reply = self._call(self._jobs.Submit, request, method="/spare.v1.JobService/Submit")
        try:
            return job_id(reply.job_id)
        except errors.InvalidId:
            raise ProtocolError(f"the peer answered Submit with a malformed job id {reply.job_id!r}") from None

    # --- following a job --------------------------------------------------------------------

    def status(self, job: str, *, tasks: bool = False) -> JobStatus:
        """A job's status; with ``tasks=True`` every task's state and failure line too (the
        first `PeerCaps.max_task_list` tasks; read a larger job's with `results`)."""
        request = job_pb2.GetJobRequest(job_id=job_id(job), include_tasks=tasks)
        return JobStatus.from_pb(self._call(self._jobs.Get, request))

    def watch(self, job: str) -> Iterator[Event]:
        """Follows a job: a ``snapshot`` first, then a ``task_done`` per finished task, then
        ``finished``, after which it ends. Each event carries the progress, every task counted
        once."""
        request = job_pb2.WatchRequest(job_id=job_id(job))
        counter = ProgressCounter()
        try:
            stream = self._jobs.Watch(request)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, self.addr) from None
        for ev in self._stream(stream):
            which = ev.WhichOneof("event")
            if which == "snapshot":
                status = JobStatus.from_pb(ev.snapshot)
                counter.update(status)
                # Which tasks the snapshot counted: their events may follow it.
                counter.count_final(self.status(job, tasks=True))
                yield Event("snapshot", counter.progress(), status=status)
            elif which == "task_done":
                task = TaskStatus.from_pb(ev.task_done)
                counter.task_done(task.index)
                yield Event("task_done", counter.progress(), task=task)
            elif which == "finished":
                status = JobStatus.from_pb(ev.finished)
                counter.update(status)
                yield Event("finished", counter.progress(), status=status)

    def wait(self, job: str, *, timeout: Optional[float] = None) -> JobStatus:
        """Waits until the job ends (completed, failed or cancelled) and returns its final
        status with every task (so `JobStatus.failures` says why tasks failed). Raises
        `DeadlineExceeded` (a `TimeoutError`) when `timeout` seconds pass first."""
        request = job_pb2.WatchRequest(job_id=job_id(job))
        try:
            stream = self._jobs.Watch(request, timeout=timeout)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, self.addr) from None
        for ev in self._stream(stream):
            which = ev.WhichOneof("event")
            if which == "finished" or (which == "snapshot" and JobStatus.from_pb(ev.snapshot).is_final):
                stream.cancel()
                break
        final = self.status(job, tasks=True)
        if not final.is_final:
            raise ProtocolError(f"the watch stream of job {final.job_id} ended before the job finished")
        return final

    def results(self, job: str, *, from_index: int = 0, wait: bool = True) -> Iterator[TaskResult]:
        """Final results in task order, from task `from_index`: waiting for tasks not final yet
        until the job ends, or (``wait=False``) only those final now."""
        request = job_pb2.ResultsRequest(job_id=job_id(job), from_index=from_index, no_wait=not wait)
        try:
            stream = self._jobs.Results(request)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, self.addr) from None
        for r in self._stream(stream):
            result = TaskResult.from_pb(r)
            # A peer that stored or sent other bytes is caught here, not written out as verified.
            if result.is_verified and blob_id(result.output) != result.output_hash.lower():
                raise ProtocolError(
                    f"task {result.index}: the peer served {len(result.output)} bytes of output "
                    f"that do not hash to the verified result {result.output_hash}"
                )
            yield result

    def cancel(self, job: str) -> JobStatus:
        """Cancels a job; returns its status afterwards. Only the job's owner (the key that
        submitted it) may: anyone else gets `PermissionDenied`. A job that ended keeps its state."""
        request = job_pb2.CancelRequest(job_id=job_id(job))
        self.identity.sign_cancel(request, self._receiver_id())
        return JobStatus.from_pb(self._call(self._jobs.Cancel, request, method="/spare.v1.JobService/Cancel"))

    def jobs(self, limit: int = 0) -> List[JobStatus]:
        """Jobs this peer holds, newest first: at most `limit` (0: the peer's default of 100;
        its cap is `PeerCaps.max_list`)."""
        reply = self._call(self._jobs.List, job_pb2.ListJobsRequest(limit=limit))
        return [JobStatus.from_pb(j) for j in reply.jobs]

    def find_job(self, id_or_prefix: str) -> str:
        """The job id a job id or a unique prefix of one names (as `spare` and peer logs print
        them shortened), among the jobs this peer holds. Raises `UnknownJob` when none or
        several match."""
        prefix = id_or_prefix.strip().rstrip("….").lower()
        if len(prefix) == ID_HEX_LEN:
            return job_id(prefix)
        if not prefix or len(prefix) > ID_HEX_LEN or any(c not in "0123456789abcdef" for c in prefix):
            raise UnknownJob(
                f"{id_or_prefix!r} is not a job id: give the one `submit` returned, or a unique start of it (hex digits)"
            )
        found = [j.job_id for j in self.jobs(MAX_LISTED) if j.job_id.startswith(prefix)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise UnknownJob(
                f"no job held at {self.addr} starts with {prefix}; give the whole job id, or ask a peer that coordinates it"
            )
        shown = "…, ".join(f[: len(prefix) + 4] for f in found[:3])
        raise UnknownJob(f"{prefix} is the start of {len(found)} jobs ({shown}…); give more of the id")


def _read_module(module: Module) -> bytes:
    """The module's bytes; refuses what is not WebAssembly, naming the file."""
    if isinstance(module, (bytes, bytearray, memoryview)):
        code, where = bytes(module), "the module"
    else:
        where = os.fspath(module)
        try:
            with open(where, "rb") as f:
                code = f.read()
        except OSError as e:
            raise InvalidJob(f"{where}: {e.strerror or e}") from None
    if not code:
        raise InvalidJob(f"{where} is empty")
    if code[:4] != b"\0asm":
        raise InvalidJob(
            f"{where} is not a WebAssembly module (it does not start with \\0asm); "
            "build the task for wasm32-wasip1 and give the .wasm file"
        )
    return code
