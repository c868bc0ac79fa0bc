"""The client against three real `spare peer` processes: submit, follow, results, failures,
cancel, list, caps, reflection, and the errors a user meets first."""

import http.server
import socket
import threading

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import spare
from conftest import eventually


def count_primes(lo: int, hi: int) -> int:
    sieve = bytearray([1]) * hi
    sieve[:2] = b"\0\0"[: min(2, hi)]
    for n in range(2, int(hi**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytearray(len(range(n * n, hi, n)))
    return sum(sieve[lo:hi])


def test_a_job_runs_on_three_peers_and_is_verified(client, primes):
    ranges = [(i * 10_000, (i + 1) * 10_000) for i in range(6)]
    # Off: the peers share one machine, so this asks for what the default gives them anyway.
    job = client.submit(primes, [f"{lo} {hi}\n" for lo, hi in ranges], quorum=2, diversity="off", label="python primes")
    events = list(client.watch(job))
    assert events[0].kind == "snapshot" and events[-1].kind == "finished"
    assert all(e.progress.done <= e.progress.total == 6 for e in events)
    assert events[-1].progress == spare.Progress(6, 6)
    final = client.wait(job)
    assert final.state == spare.JobState.COMPLETED, final
    assert final.counts.verified == 6 and final.label == "python primes" and final.diversity == "off"
    assert final.module_id == spare.blob_id(primes.read_bytes())
    results = list(client.results(job))
    assert [r.index for r in results] == list(range(6))
    for r, (lo, hi) in zip(results, ranges):
        assert r.is_verified and r.reason() is None
        assert r.output_text == f"{count_primes(lo, hi)}\n"
        assert len(set(r.verified_by)) >= 2, "a quorum of distinct peers"
    assert job in [j.job_id for j in client.jobs()]
    assert client.find_job(job[:12]) == job


def test_a_failing_task_says_why(client, primes):
    job = client.submit(primes, ["0 100\n", "x y\n", "also bad\n"], quorum=2)
    final = client.wait(job, timeout=60)
    assert final.state == spare.JobState.FAILED
    assert (final.counts.verified, final.counts.failed) == (1, 2)
    lines = final.failures().lines()
    assert len(lines) == 2 and all(" task exited 2: " in l for l in lines), lines
    bad = [r for r in client.results(job) if not r.is_verified]
    assert [r.index for r in bad] == [1, 2]
    for r in bad:
        assert r.outcome == spare.Outcome(spare.OutcomeKind.EXITED, 2)
        assert r.stderr.strip(), "the guest's stderr is kept"
        why = r.reason()
        assert why.ended == "exited 2" and why.detail == spare.stderr_line(r.stderr), why
    by_status = {t.index: str(t.reason()) for t in final.tasks if t.reason()}
    assert by_status == {r.index: str(r.reason()) for r in bad}


def test_only_its_owner_can_cancel_a_job(client, primes):
    base = 10**12
    inputs = [f"{base + i * 10**8} {base + (i + 1) * 10**8}\n" for i in range(200)]
    job = client.submit(primes, inputs, quorum=2)
    assert client.status(job).owner == client.identity.public_hex
    # Only the key that submitted it may cancel it.
    with spare.Client(client.addr, identity=spare.ClientIdentity.generate()) as stranger:
        with pytest.raises(spare.PermissionDenied):
            stranger.cancel(job)
    assert not client.status(job).is_final
    client.cancel(job)
    final = eventually("the job is cancelled", lambda: (s := client.status(job)).is_final and s)
    assert final.state == spare.JobState.CANCELLED
    assert client.wait(job).state == spare.JobState.CANCELLED


def test_peers_on_one_network_are_reachable(client):
    # Each peer asks the others to dial it back; on one machine they all can.
    def all_reachable():
        peers = client.peers()
        return peers if all(p.reachability == "reachable" for p in peers) else None

    peers = eventually("every peer to be reachable", all_reachable)
    assert len(peers) == 3 and all(p.state == "alive" for p in peers), peers


def test_the_peer_reports_its_caps(client):
    info = client.info()
    caps = info.caps
    assert caps is not None and caps.max_message_bytes == spare.MAX_MESSAGE_BYTES
    assert caps.max_quorum >= 2 and caps.max_tasks > 0 and caps.max_list == 1000
    assert caps.default_limits.memory_bytes > 0 and caps.max_limits.memory_bytes >= caps.default_limits.memory_bytes
    with pytest.raises(spare.InvalidArgument, match="quorum"):
        client.submit(b"\0asm\x01\0\0\0", ["x"], quorum=caps.max_quorum + 1)


def test_reflection_answers_v1alpha(mesh):
    with grpc.insecure_channel(mesh[0].addr) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"spare.v1.JobService", "spare.v1.BlobService", "spare.v1.PeerService"} <= names


def test_mistakes_are_said_plainly(client, tmp_path):
    not_wasm = tmp_path / "task.py"
    not_wasm.write_text("print('hi')\n")
    with pytest.raises(spare.InvalidJob, match=f"{not_wasm} is not a WebAssembly module"):
        client.submit(not_wasm, ["x"])
    with pytest.raises(spare.InvalidJob, match="no tasks"):
        client.submit(b"\0asm\x01\0\0\0", [])
    with pytest.raises(spare.InvalidJob, match="diversity 'narrow'"):
        client.submit(b"\0asm\x01\0\0\0", ["x"], diversity="narrow")
    with pytest.raises(spare.NotFound):
        client.status("ab" * 32)
    with pytest.raises(spare.InvalidId):
        client.status("not-an-id")
    with pytest.raises(spare.UnknownJob, match="no job held"):
        client.find_job("ffffffffffff")
    with pytest.raises(spare.AddressError, match="not a PeerId"):
        spare.Client("127.0.0.1:1@abc")
    with pytest.raises(spare.AddressError, match="unknown scheme"):
        spare.Client("ftp://127.0.0.1:1")


def test_an_unreachable_peer_is_named_with_its_cause():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with spare.Client(f"127.0.0.1:{port}") as c:
        with pytest.raises(spare.ConnectError) as e:
            c.info()
    assert "refused" in str(e.value).lower() and "spare peer" in str(e.value), e.value


def test_a_web_server_is_not_a_peer():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with spare.Client(f"127.0.0.1:{server.server_address[1]}") as c:
            with pytest.raises(spare.NotAPeer, match="is not a Spare peer: it does not answer gRPC"):
                c.info()
    finally:
        server.shutdown()
